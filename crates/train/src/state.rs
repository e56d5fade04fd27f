//! Mid-depth resume. After each epoch but the last, the training stage writes the state
//! of the depth it trains to `OUT/.train-state.bin` (bincode, atomically): the epoch, the
//! trainable tensors, Adam's step count and moments, and the history so far. Shuffling is
//! seeded per epoch, so that is all a rerun of the same command needs to continue from the
//! last finished epoch and write the same checkpoint bytes as an uninterrupted run. The
//! file is keyed by everything that decides the result (settings, dataset, parent,
//! device, version): a state of another command is not used. It is removed once the
//! depth's checkpoint is written.

use anyhow::{bail, Context, Result};
use bincode::Options;
use layerwise_core::metrics::{EpochMetrics, PretrainEpoch};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// File name inside the depth's output folder.
pub const STATE_FILE: &str = ".train-state.bin";
/// What the file says it is.
pub const STATE_FORMAT: &str = "layerwise-train-state";
/// Its layout's version.
pub const STATE_VERSION: u32 = 2;

/// A depth's training, after `epoch` epochs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// [`STATE_FORMAT`].
    pub format: String,
    /// [`STATE_VERSION`].
    pub version: u32,
    /// [`state_key`] of the run that wrote it.
    pub key: String,
    /// Epochs finished.
    pub epoch: usize,
    /// Each trainable hidden layer's weight and bias.
    pub layers: Vec<(Vec<f32>, Vec<f32>)>,
    /// The output layer's weight and bias.
    pub head: (Vec<f32>, Vec<f32>),
    /// Adam's step count.
    pub adam_t: i32,
    /// Adam's moments per tensor.
    pub adam: layerwise_nn::Moments,
    /// The history of the finished epochs.
    pub epochs: Vec<EpochMetrics>,
    /// The best epoch so far and its weights, where the regime keeps them (fine-tuning).
    pub best: Option<Best>,
    /// The autoencoder objective's pretraining: in progress (`epoch` is then 0), or done
    /// and followed by the probe's `epoch` epochs.
    pub pretrained: Option<Pretrained>,
}

/// An autoencoder layer's pretraining after `epoch` epochs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pretrained {
    /// Pretraining epochs finished.
    pub epoch: usize,
    /// The encoder's (the new hidden layer's) weight and bias.
    pub encoder: (Vec<f32>, Vec<f32>),
    /// The decoder's weight (empty when tied) and bias.
    pub decoder: (Vec<f32>, Vec<f32>),
    /// Adam's step count (while pretraining).
    pub adam_t: i32,
    /// Adam's moments (while pretraining; empty once done).
    pub adam: layerwise_nn::Moments,
    /// The history of the finished pretraining epochs.
    pub epochs: Vec<PretrainEpoch>,
}

/// The weights of the epoch with the best validation accuracy so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Best {
    /// The epoch.
    pub epoch: usize,
    /// Its validation accuracy.
    pub val_accuracy: f64,
    /// Each trainable hidden layer's weight and bias after it.
    pub layers: Vec<(Vec<f32>, Vec<f32>)>,
    /// The output layer's weight and bias after it.
    pub head: (Vec<f32>, Vec<f32>),
}

/// The key of a training run: SHA-256 over what decides its result.
pub fn state_key(parts: &serde_json::Value) -> String {
    let with_version = serde_json::json!({
        "layerwise": env!("CARGO_PKG_VERSION"),
        "state_version": STATE_VERSION,
        "run": parts,
    });
    layerwise_core::hash::sha256_hex(with_version.to_string().as_bytes())
}

fn options() -> impl Options {
    bincode::DefaultOptions::new()
}

/// Write the state atomically.
pub fn save(path: &Path, state: &TrainState) -> Result<()> {
    let bytes = options().serialize(state).context("cannot serialize the training state")?;
    layerwise_core::atomic::write_bytes_atomic(path, &bytes)
}

/// The state at `path` if there is one and it belongs to the run with `key`; `Err` says why
/// a state that is there is not used.
pub fn load(path: &Path, key: &str) -> Result<Option<TrainState>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    // Allocations are bounded by the file's own size: a damaged length cannot ask for more.
    let state: TrainState = options()
        .with_limit(bytes.len() as u64)
        .deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("{} is damaged or from another version of layerwise ({e})", path.display()))?;
    if state.format != STATE_FORMAT || state.version != STATE_VERSION {
        bail!(
            "{} is a `{}` v{} file, not a training state v{STATE_VERSION}",
            path.display(),
            state.format,
            state.version
        );
    }
    if state.key != key {
        bail!(
            "{} was written by another training command (other settings, dataset, parent checkpoint, device or \
             version)",
            path.display()
        );
    }
    Ok(Some(state))
}
