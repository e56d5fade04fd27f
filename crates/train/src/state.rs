//! Mid-depth resume. After each epoch but the last, the training stage writes the state
//! of the depth it trains to `OUT/.train-state.bin` (bincode, atomically): the epoch, the
//! trainable tensors, Adam's step count and moments, and the history so far. Shuffling is
//! seeded per epoch, so that is all a rerun of the same command needs to continue from the
//! last finished epoch and write the same checkpoint bytes as an uninterrupted run. The
//! file is keyed by everything that decides the result (settings, dataset, parent,
//! device, version): a state of another command is not used. It is removed once the
//! depth's checkpoint is written.
//!
//! A state is never trusted because its key matches: the file ends with the SHA-256 of
//! everything before it (one flipped bit and it is refused), and [`validate`] checks what
//! it holds against the network being trained before any of it is used: every shape, every
//! value finite, second moments not negative, the epoch and Adam's step count in range
//! and consistent with the history. A state that fails is not used: the depth trains from
//! epoch 1, saying why, and the next epoch's state replaces it.

use anyhow::{bail, Context, Result};
use bincode::Options;
use layerwise_core::metrics::{EpochMetrics, PretrainEpoch};
use layerwise_nn::{Moments, Named};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::path::Path;

/// File name inside the depth's output folder (the run folder's layout, in core).
pub use layerwise_core::run::STATE_FILE;
/// What the file says it is.
pub const STATE_FORMAT: &str = "layerwise-train-state";
/// Its layout's version: 3 added the SHA-256 trailer, 4 made the training an enum of the
/// supervised loop and the autoencoder's pretraining and probe, 5 recorded the settings,
/// 6 made every loop's state one type ([`LoopState`]: tensors by name) for every network.
pub const STATE_VERSION: u32 = 6;
/// Bytes of the trailer: the SHA-256 of the bincode body before it.
const TRAILER: usize = 32;

/// A depth's training, saved between epochs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// [`STATE_FORMAT`].
    pub format: String,
    /// [`STATE_VERSION`].
    pub version: u32,
    /// [`RunKey::key`] of the run that wrote it.
    pub key: String,
    /// [`RunKey::settings`] of the run that wrote it: what a refused resume names.
    pub settings: String,
    /// Where the training is.
    pub training: Training,
}

/// Where a depth's training is: the supervised loop (an MLP's or a convolutional
/// network's), or the autoencoder objective's pretraining followed by its probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Training {
    /// The supervised loop (the `supervised` objective; every convolutional stage).
    Supervised(LoopState<EpochMetrics>),
    /// The `autoencoder` objective: pretraining after `pretrained.epoch` epochs, and once
    /// it is finished, the probe's supervised loop (none before its first epoch).
    Autoencoder {
        /// The pretraining.
        pretrained: Pretrained,
        /// The probe, once begun.
        probe: Option<LoopState<EpochMetrics>>,
    },
}

/// An autoencoder layer's pretraining: its tensors are the encoder's (the new hidden
/// layer) and the decoder's; a finished one keeps no optimizer state.
pub type Pretrained = LoopState<PretrainEpoch>;

/// One epoch loop after `epoch` epochs, whatever the network: its tensors by checkpoint
/// name, the optimizer's step count and state, the history, and the best epoch so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoopState<R> {
    /// Epochs finished.
    pub epoch: usize,
    /// Every tensor of the trained part, by checkpoint name, in the checkpoint's layout.
    pub tensors: Named,
    /// The optimizer's step count.
    pub optimizer_t: i32,
    /// The optimizer's state per tensor (empty once a pretraining is finished).
    pub optimizer: Moments,
    /// The history of the finished epochs.
    pub epochs: Vec<R>,
    /// The best epoch so far and its tensors, where the regime keeps them (fine-tuning).
    pub best: Option<Best>,
}

/// The tensors of the epoch with the best validation accuracy so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Best {
    /// The epoch.
    pub epoch: usize,
    /// Its validation accuracy.
    pub val_accuracy: f64,
    /// Its tensors, as [`LoopState::tensors`].
    pub tensors: Named,
}

/// An epoch's line of a loop's history, as validation sees it.
pub trait Record {
    /// Its epoch number (1-based).
    fn epoch(&self) -> usize;
    /// Whether its values are in range (finite, accuracies in [0, 1]).
    fn in_range(&self) -> bool;
    /// Its validation accuracy, where it has one (what the best epoch is chosen by).
    fn val_accuracy(&self) -> Option<f64>;
}

impl Record for EpochMetrics {
    fn epoch(&self) -> usize {
        self.epoch
    }

    fn in_range(&self) -> bool {
        let acc = |a: f64| (0.0..=1.0).contains(&a);
        let pos = |x: f64| x.is_finite() && x >= 0.0;
        acc(self.train_accuracy)
            && acc(self.val_accuracy)
            && pos(self.train_loss)
            && pos(self.val_loss)
            && pos(self.seconds)
    }

    fn val_accuracy(&self) -> Option<f64> {
        Some(self.val_accuracy)
    }
}

impl Record for PretrainEpoch {
    fn epoch(&self) -> usize {
        self.epoch
    }

    fn in_range(&self) -> bool {
        let ok = |x: f64| x.is_finite() && x >= 0.0;
        ok(self.reconstruction_loss) && ok(self.val_reconstruction_loss) && ok(self.seconds)
    }

    fn val_accuracy(&self) -> Option<f64> {
        None
    }
}

impl TrainState {
    /// A state of this version, for the run `key` names.
    pub fn new(key: &RunKey, training: Training) -> Self {
        Self {
            format: STATE_FORMAT.into(),
            version: STATE_VERSION,
            key: key.key.clone(),
            settings: key.settings.clone(),
            training,
        }
    }
}

/// What decides a training run's result (its settings, dataset, parent checkpoint, depth,
/// device and regime), and its key: the same for every network, so a state is resumed
/// only by the command that wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunKey {
    /// SHA-256 over the settings and this version.
    pub key: String,
    /// The settings as JSON text.
    pub settings: String,
}

impl RunKey {
    /// The key of a run of `config` on the dataset `dataset` (its fingerprint), from the
    /// parent checkpoint `parent` (its SHA-256), at `depth`, on `device`, in `regime`.
    pub fn new(
        config: &layerwise_core::config::TrainConfig,
        dataset: &str,
        parent: Option<&str>,
        depth: usize,
        device: &str,
        regime: layerwise_core::config::Regime,
    ) -> Self {
        let parts = serde_json::json!({
            "config": config,
            "dataset": dataset,
            "parent": parent,
            "depth": depth,
            "device": device,
            "regime": regime.name(),
        });
        Self { key: state_key(&parts), settings: parts.to_string() }
    }
}

/// The settings that differ between two [`RunKey::settings`], as `config.lr 0.001 → 0.002`
/// (at most five; more are counted).
fn changed_settings(saved: &str, now: &str) -> Vec<String> {
    fn walk(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        match (a, b) {
            (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                    let null = serde_json::Value::Null;
                    walk(&p, x.get(k).unwrap_or(&null), y.get(k).unwrap_or(&null), out);
                }
            }
            _ if a != b => out.push(format!("{path} {a} → {b}")),
            _ => {}
        }
    }
    let (Ok(a), Ok(b)) = (serde_json::from_str(saved), serde_json::from_str(now)) else { return Vec::new() };
    let mut out = Vec::new();
    walk("", &a, &b, &mut out);
    if out.len() > 5 {
        let more = out.len() - 5;
        out.truncate(5);
        out.push(format!("and {more} more"));
    }
    out
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

/// Write the state atomically: the bincode body, then its SHA-256.
pub fn save(path: &Path, state: &TrainState) -> Result<()> {
    let mut bytes = options().serialize(state).context("cannot serialize the training state")?;
    let digest = sha2::Sha256::digest(&bytes);
    bytes.extend_from_slice(&digest);
    layerwise_core::atomic::write_bytes_atomic(path, &bytes)
}

/// The state at `path` if there is one and it belongs to the run with `key`, read no
/// further than `max_bytes` (what a state of this network can hold, [`Expect::max_bytes`]);
/// `Err` says why a state that is there is not used.
pub fn load(path: &Path, key: &RunKey, max_bytes: u64) -> Result<Option<TrainState>> {
    if !path.exists() {
        return Ok(None);
    }
    let bytes = layerwise_core::fsread::read_capped(path, "training state", max_bytes)?;
    if bytes.len() < TRAILER {
        bail!("{} is too short to be a training state (truncated)", path.display());
    }
    let (body, trailer) = bytes.split_at(bytes.len() - TRAILER);
    if sha2::Sha256::digest(body).as_slice() != trailer {
        bail!(
            "{}: its content does not match its SHA-256 (damaged, truncated, or from an older layerwise)",
            path.display()
        );
    }
    // Allocations are bounded by the file's own size: a damaged length cannot ask for more.
    let state: TrainState = options()
        .with_limit(body.len() as u64)
        .deserialize(body)
        .map_err(|e| anyhow::anyhow!("{} is damaged or from another version of layerwise ({e})", path.display()))?;
    if state.format != STATE_FORMAT || state.version != STATE_VERSION {
        bail!(
            "{} is a `{}` v{} file, not a training state v{STATE_VERSION}",
            path.display(),
            state.format,
            state.version
        );
    }
    if state.key != key.key {
        let changed = changed_settings(&state.settings, &key.settings);
        bail!(
            "{} was written by another training command ({})",
            path.display(),
            if changed.is_empty() {
                "another version of layerwise".to_string()
            } else {
                format!("changed: {}", changed.join("; "))
            }
        );
    }
    Ok(Some(state))
}

/// What the state of one epoch loop must hold: its epochs and batches, every tensor by
/// name and size, and the optimizer's tensors (`second`: whether it keeps a second
/// buffer, as Adam does). One type for every network and loop.
#[derive(Debug, Clone)]
pub struct Expect {
    /// Epochs of the loop.
    pub epochs: usize,
    /// Batches per epoch (the optimizer steps once per batch).
    pub batches: usize,
    /// Every saved tensor, by name, with its size.
    pub tensors: Vec<(String, usize)>,
    /// The optimizer's tensors, by name, with their sizes.
    pub optimized: Vec<(String, usize)>,
    /// Whether the optimizer keeps a second buffer per tensor.
    pub second: bool,
}

/// What a depth's state must hold: its loop (the supervised loop, or the autoencoder's
/// probe) and the autoencoder's pretraining before it, when the depth has one.
#[derive(Debug, Clone)]
pub struct ExpectRun {
    /// The supervised loop (or the probe).
    pub main: Expect,
    /// The pretraining, for the autoencoder objective.
    pub pretrain: Option<Expect>,
}

impl ExpectRun {
    /// The most bytes a state of this network can take: its tensors (values, two
    /// buffers and a best copy each), the pretraining's, and the histories, with room.
    pub fn max_bytes(&self) -> u64 {
        let sized =
            |t: &[(String, usize)]| t.iter().map(|(n, v)| 3 * (n.len() as u64 + 16) + 4 * *v as u64).sum::<u64>();
        let one = |e: &Expect| 4 * sized(&e.tensors) + 128 * e.epochs as u64;
        one(&self.main) + self.pretrain.as_ref().map_or(0, one) + (1 << 20)
    }
}

fn finite(what: &str, values: &[f32]) -> Result<()> {
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        bail!("{what} holds a non-finite value at {i} ({})", values[i]);
    }
    Ok(())
}

/// Saved tensors: exactly the expected ones, in order, each of its size and finite.
fn named(what: &str, found: &Named, expected: &[(String, usize)]) -> Result<()> {
    if found.len() != expected.len() || found.iter().zip(expected).any(|((n, v), (en, es))| n != en || v.len() != *es) {
        bail!("{what}: its tensors are not this network's");
    }
    for (n, v) in found {
        finite(&format!("{what}: `{n}`"), v)?;
    }
    Ok(())
}

/// An optimizer's state: exactly the expected tensors, each buffer of its size (the
/// second empty unless `second`), finite, the second moments not negative.
fn moments(what: &str, found: &Moments, expected: &[(String, usize)], second: bool) -> Result<()> {
    if found.len() != expected.len() {
        bail!("{what}: state of {} tensors, the network trains {}", found.len(), expected.len());
    }
    for (name, size) in expected {
        let Some((_, m, v)) = found.iter().find(|(n, ..)| n == name) else {
            bail!("{what}: no state for `{name}`");
        };
        if m.len() != *size || v.len() != if second { *size } else { 0 } {
            bail!("{what}: the state of `{name}` has {}/{} values, the tensor {size}", m.len(), v.len());
        }
        finite(&format!("{what}: `{name}`'s first buffer"), m)?;
        finite(&format!("{what}: `{name}`'s second buffer"), v)?;
        if let Some(i) = v.iter().position(|&x| x < 0.0) {
            bail!("{what}: `{name}`'s second moment {i} is negative ({})", v[i]);
        }
    }
    Ok(())
}

/// Check one loop's state against what it must hold. `finished` allows the last epoch
/// (a pretraining, kept for the probe that follows: it keeps no optimizer state); other
/// loops keep a state between epochs only.
fn check_loop<R: Record>(what: &str, st: &LoopState<R>, ex: &Expect, finished: bool) -> Result<()> {
    let last = if finished { ex.epochs } else { ex.epochs.saturating_sub(1) };
    if st.epoch == 0 || st.epoch > last {
        bail!("{what}: epoch {} is outside 1..={last}", st.epoch);
    }
    if st.epochs.len() != st.epoch || st.epochs.iter().enumerate().any(|(i, e)| e.epoch() != i + 1) {
        bail!("{what}: its history does not hold epochs 1..={}", st.epoch);
    }
    if let Some(e) = st.epochs.iter().find(|e| !e.in_range()) {
        bail!("{what}: its history's epoch {} holds a value out of range", e.epoch());
    }
    named(what, &st.tensors, &ex.tensors)?;
    let steps = (st.epoch as i64) * (ex.batches as i64);
    if i64::from(st.optimizer_t) != steps {
        bail!("{what}: the optimizer's step count is {}, {} epochs make {steps}", st.optimizer_t, st.epoch);
    }
    if st.epoch < ex.epochs {
        moments(what, &st.optimizer, &ex.optimized, ex.second)?;
    } else if !st.optimizer.is_empty() {
        bail!("{what}: a finished loop keeps no optimizer state, this one has {}", st.optimizer.len());
    }
    if let Some(b) = &st.best {
        if st.epochs.get(b.epoch.wrapping_sub(1)).and_then(Record::val_accuracy) != Some(b.val_accuracy) {
            bail!("{what}: its best epoch {} does not match its history", b.epoch);
        }
        named(&format!("{what}: its best epoch"), &b.tensors, &ex.tensors)?;
    }
    Ok(())
}

/// Check one supervised loop's state (a decoupled stage's, `finished`: it may be its
/// last epoch's, kept to write the checkpoint from) against what it must hold.
pub fn validate_loop(st: &LoopState<EpochMetrics>, ex: &Expect, finished: bool) -> Result<()> {
    check_loop("the training", st, ex, finished)
}

/// Check that `st` fits the network `ex` describes before any of it is used; `Err` says
/// what does not (and the depth then trains from epoch 1). The one validator of every
/// network's state.
pub fn validate(st: &TrainState, ex: &ExpectRun) -> Result<()> {
    match (&st.training, &ex.pretrain) {
        (Training::Supervised(s), None) => check_loop("the training", s, &ex.main, false),
        (Training::Autoencoder { .. }, None) => {
            bail!("it holds an autoencoder pretraining, but this depth trains with the labels only")
        }
        (Training::Supervised(_), Some(_)) => {
            bail!("it holds no pretraining, but this depth pretrains an autoencoder first")
        }
        (Training::Autoencoder { pretrained, probe }, Some(xp)) => {
            check_loop("the pretraining", pretrained, xp, true)?;
            match probe {
                Some(_) if pretrained.epoch < xp.epochs => {
                    bail!("it records probe epochs while pretraining is unfinished")
                }
                Some(p) => check_loop("the probe", p, &ex.main, false),
                // Pretraining just finished with the probe not begun: nothing more to check.
                None => Ok(()),
            }
        }
    }
}
