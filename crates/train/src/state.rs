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
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::path::Path;

/// File name inside the depth's output folder (the run folder's layout, in core).
pub use layerwise_core::run::STATE_FILE;
/// What the file says it is.
pub const STATE_FORMAT: &str = "layerwise-train-state";
/// Its layout's version: 3 added the SHA-256 trailer, 4 made the training an enum of the
/// supervised loop and the autoencoder's pretraining and probe.
pub const STATE_VERSION: u32 = 5;
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

/// Where a depth's training is: the supervised loop, or the autoencoder objective's
/// pretraining followed by its probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Training {
    /// The supervised loop (the `supervised` objective).
    Supervised(Supervised),
    /// The `autoencoder` objective: pretraining after `pretrained.epoch` epochs, and once
    /// it is finished, the probe's supervised loop (none before its first epoch).
    Autoencoder {
        /// The pretraining.
        pretrained: Pretrained,
        /// The probe, once begun.
        probe: Option<Supervised>,
    },
    /// A convolutional network's stages and head.
    Conv(ConvLoop),
}

/// Named tensors in the checkpoint's names and layouts.
pub type Named = Vec<(String, Vec<f32>)>;

/// A convolutional loop after `epoch` epochs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConvLoop {
    /// Epochs finished.
    pub epoch: usize,
    /// Every tensor of the stages being trained and of the head (BatchNorm's running
    /// statistics too).
    pub tensors: Named,
    /// The optimizer's step count.
    pub optimizer_t: i32,
    /// The optimizer's state per trained tensor (SGD: the momentum buffer, the second empty).
    pub optimizer: layerwise_nn::Moments,
    /// The history of the finished epochs.
    pub epochs: Vec<EpochMetrics>,
    /// The best epoch so far and its tensors, where the regime keeps them.
    pub best: Option<(usize, f64, Named)>,
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

/// A supervised loop after `epoch` epochs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Supervised {
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

/// What a state of the network being trained must hold.
#[derive(Debug, Clone)]
pub struct Expect {
    /// Epochs of the supervised loop (the probe's, after pretraining).
    pub epochs: usize,
    /// Batches per epoch (Adam steps once per batch).
    pub batches: usize,
    /// `(outputs, inputs)` of each trainable hidden layer.
    pub layers: Vec<(usize, usize)>,
    /// `(outputs, inputs)` of the output layer.
    pub head: (usize, usize),
    /// The supervised loop's trainable tensors, by name, with their sizes: the
    /// optimizer's state.
    pub tensors: Vec<(String, usize)>,
    /// Whether the optimizer keeps a second buffer per tensor (Adam's second moment).
    pub second: bool,
    /// The autoencoder objective's pretraining, when it has one.
    pub pretrain: Option<ExpectPretrain>,
}

/// What the pretraining part of a state must hold.
#[derive(Debug, Clone)]
pub struct ExpectPretrain {
    /// Pretraining epochs.
    pub epochs: usize,
    /// `(outputs, inputs)` of the encoder.
    pub encoder: (usize, usize),
    /// Values of the decoder's weight (0 when tied) and bias.
    pub decoder: (usize, usize),
    /// Pretraining's tensors, by name, with their sizes: Adam's moments.
    pub tensors: Vec<(String, usize)>,
}

impl Expect {
    /// The most bytes a state of this network can take: its tensors (weights, two
    /// moments and a best copy each), the pretraining's, and the histories, with room.
    pub fn max_bytes(&self) -> u64 {
        let sized =
            |t: &[(String, usize)]| t.iter().map(|(n, v)| 3 * (n.len() as u64 + 16) + 4 * *v as u64).sum::<u64>();
        let pretrain = self.pretrain.as_ref().map_or(0, |p| 3 * sized(&p.tensors) + 64 * p.epochs as u64);
        4 * sized(&self.tensors) + pretrain + 128 * self.epochs as u64 + (1 << 20)
    }
}

fn finite(what: &str, values: &[f32]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(i) => bail!("{what}: value {i} is {} (not finite)", values[i]),
        None => Ok(()),
    }
}

fn pair(what: &str, (outputs, inputs): (usize, usize), (w, b): &(Vec<f32>, Vec<f32>)) -> Result<()> {
    if w.len() != outputs * inputs || b.len() != outputs {
        bail!("{what} has {}+{} values, the network's has {}+{outputs}", w.len(), b.len(), outputs * inputs);
    }
    finite(&format!("{what}'s weight"), w)?;
    finite(&format!("{what}'s bias"), b)
}

/// Trainable layers and the output layer, each of the network's shape and finite.
fn network(what: &str, ex: &Expect, layers: &[(Vec<f32>, Vec<f32>)], head: &(Vec<f32>, Vec<f32>)) -> Result<()> {
    if layers.len() != ex.layers.len() {
        bail!("{what}: {} trainable layers, the network trains {}", layers.len(), ex.layers.len());
    }
    for (i, (shape, saved)) in ex.layers.iter().zip(layers).enumerate() {
        pair(&format!("{what}: trainable layer {}", i + 1), *shape, saved)?;
    }
    pair(&format!("{what}: the output layer"), ex.head, head)
}

/// An optimizer's state: exactly the expected tensors, each buffer of its size (the
/// second empty unless `second`), finite, the second moments not negative. Every
/// network's state is checked here.
fn moments(what: &str, found: &layerwise_nn::Moments, expected: &[(String, usize)], second: bool) -> Result<()> {
    if found.len() != expected.len() {
        bail!("{what}: moments of {} tensors, the network trains {}", found.len(), expected.len());
    }
    for (name, size) in expected {
        let Some((_, m, v)) = found.iter().find(|(n, ..)| n == name) else {
            bail!("{what}: no moments for `{name}`");
        };
        if m.len() != *size || v.len() != if second { *size } else { 0 } {
            bail!("{what}: the moments of `{name}` have {}/{} values, the tensor {size}", m.len(), v.len());
        }
        finite(&format!("{what}: `{name}`'s first moment"), m)?;
        finite(&format!("{what}: `{name}`'s second moment"), v)?;
        if let Some(i) = v.iter().position(|&x| x < 0.0) {
            bail!("{what}: `{name}`'s second moment {i} is negative ({})", v[i]);
        }
    }
    Ok(())
}

fn metrics_in_range(e: &EpochMetrics) -> bool {
    let acc = |a: f64| (0.0..=1.0).contains(&a);
    let pos = |x: f64| x.is_finite() && x >= 0.0;
    acc(e.train_accuracy) && acc(e.val_accuracy) && pos(e.train_loss) && pos(e.val_loss) && pos(e.seconds)
}

/// Check that `st` fits the network `ex` describes before any of it is used; `Err` says
/// what does not (and the depth then trains from epoch 1).
pub fn validate(st: &TrainState, ex: &Expect) -> Result<()> {
    let steps = |epoch: usize| (epoch as i64) * (ex.batches as i64);
    let (p, xp, probe) = match (&st.training, &ex.pretrain) {
        (Training::Supervised(s), None) => return supervised(s, ex),
        (Training::Conv(_), _) => bail!("it holds a convolutional network's training, but this depth trains an MLP"),
        (Training::Autoencoder { .. }, None) => {
            bail!("it holds an autoencoder pretraining, but this depth trains with the labels only")
        }
        (Training::Supervised(_), Some(_)) => {
            bail!("it holds no pretraining, but this depth pretrains an autoencoder first")
        }
        (Training::Autoencoder { pretrained, probe }, Some(xp)) => (pretrained, xp, probe),
    };
    if p.epoch == 0 || p.epoch > xp.epochs {
        bail!("pretraining epoch {} is outside 1..={}", p.epoch, xp.epochs);
    }
    if p.epochs.len() != p.epoch || p.epochs.iter().enumerate().any(|(i, e)| e.epoch != i + 1) {
        bail!("its pretraining history does not hold epochs 1..={}", p.epoch);
    }
    let ok = |x: f64| x.is_finite() && x >= 0.0;
    if p.epochs.iter().any(|e| !ok(e.reconstruction_loss) || !ok(e.val_reconstruction_loss) || !ok(e.seconds)) {
        bail!("its pretraining history holds a value out of range");
    }
    pair("the encoder", xp.encoder, &p.encoder)?;
    if p.decoder.0.len() != xp.decoder.0 || p.decoder.1.len() != xp.decoder.1 {
        bail!("its decoder does not fit this network");
    }
    finite("the decoder's weight", &p.decoder.0)?;
    finite("the decoder's bias", &p.decoder.1)?;
    if i64::from(p.adam_t) != steps(p.epoch) {
        bail!("pretraining's Adam step count is {}, {} epochs make {}", p.adam_t, p.epoch, steps(p.epoch));
    }
    if p.epoch < xp.epochs {
        moments("pretraining", &p.adam, &xp.tensors, ex.second)?;
        if probe.is_some() {
            bail!("it records probe epochs while pretraining is unfinished");
        }
    } else if !p.adam.is_empty() {
        bail!("finished pretraining keeps no moments, this one has {}", p.adam.len());
    }
    // Pretraining just finished with the probe not begun: nothing more to check.
    probe.as_ref().map_or(Ok(()), |s| supervised(s, ex))
}

/// Check a supervised loop's state against the network.
fn supervised(st: &Supervised, ex: &Expect) -> Result<()> {
    let steps = |epoch: usize| (epoch as i64) * (ex.batches as i64);
    if st.epoch == 0 || st.epoch >= ex.epochs {
        bail!("epoch {} is outside 1..{} (a state is kept between epochs only)", st.epoch, ex.epochs);
    }
    if st.epochs.len() != st.epoch || st.epochs.iter().enumerate().any(|(i, e)| e.epoch != i + 1) {
        bail!("its history does not hold epochs 1..={}", st.epoch);
    }
    if let Some(e) = st.epochs.iter().find(|e| !metrics_in_range(e)) {
        bail!("its history's epoch {} holds a value out of range", e.epoch);
    }
    network("its weights", ex, &st.layers, &st.head)?;
    if i64::from(st.adam_t) != steps(st.epoch) {
        bail!("Adam's step count is {}, {} epochs make {}", st.adam_t, st.epoch, steps(st.epoch));
    }
    moments("the optimizer", &st.adam, &ex.tensors, ex.second)?;
    if let Some(b) = &st.best {
        let recorded = st.epochs.get(b.epoch.wrapping_sub(1)).map(|e| e.val_accuracy);
        if recorded != Some(b.val_accuracy) {
            bail!("its best epoch {} does not match its history", b.epoch);
        }
        network("its best epoch's weights", ex, &b.layers, &b.head)?;
    }
    Ok(())
}

/// What the state of a convolutional loop must hold: its epochs and batches, every tensor
/// by name and size, and the optimizer's tensors (`second`: whether it keeps a second
/// moment, as Adam does).
pub struct ExpectConv {
    /// Epochs.
    pub epochs: usize,
    /// Batches per epoch.
    pub batches: usize,
    /// Every saved tensor.
    pub tensors: Vec<(String, usize)>,
    /// The optimizer's tensors.
    pub optimized: Vec<(String, usize)>,
    /// Whether the optimizer keeps a second moment.
    pub second: bool,
}

impl ExpectConv {
    /// The most bytes such a state can take.
    pub fn max_bytes(&self) -> u64 {
        let sized =
            |t: &[(String, usize)]| t.iter().map(|(n, v)| 3 * (n.len() as u64 + 16) + 4 * *v as u64).sum::<u64>();
        2 * sized(&self.tensors) + 2 * sized(&self.optimized) + 128 * self.epochs as u64 + (1 << 20)
    }
}

fn named(what: &str, found: &Named, expected: &[(String, usize)]) -> Result<()> {
    if found.len() != expected.len() || found.iter().zip(expected).any(|((n, v), (en, es))| n != en || v.len() != *es) {
        bail!("{what}: its tensors are not this network's");
    }
    for (n, v) in found {
        finite(&format!("{what}: `{n}`"), v)?;
    }
    Ok(())
}

/// Check a convolutional loop's state against the network.
pub fn validate_conv(st: &TrainState, ex: &ExpectConv) -> Result<()> {
    let Training::Conv(c) = &st.training else {
        bail!("it holds an MLP's training, but this depth trains a convolutional stage")
    };
    if c.epoch == 0 || c.epoch >= ex.epochs {
        bail!("epoch {} is outside 1..{} (a state is kept between epochs only)", c.epoch, ex.epochs);
    }
    if c.epochs.len() != c.epoch || c.epochs.iter().enumerate().any(|(i, e)| e.epoch != i + 1 || !metrics_in_range(e)) {
        bail!("its history does not hold epochs 1..={} in range", c.epoch);
    }
    named("its weights", &c.tensors, &ex.tensors)?;
    if i64::from(c.optimizer_t) != c.epoch as i64 * ex.batches as i64 {
        bail!("the optimizer's step count is {}, {} epochs make {}", c.optimizer_t, c.epoch, c.epoch * ex.batches);
    }
    moments("the optimizer", &c.optimizer, &ex.optimized, ex.second)?;
    if let Some((epoch, acc, tensors)) = &c.best {
        if c.epochs.get(epoch.wrapping_sub(1)).map(|e| e.val_accuracy) != Some(*acc) {
            bail!("its best epoch {epoch} does not match its history");
        }
        named("its best epoch's weights", tensors, &ex.tensors)?;
    }
    Ok(())
}
