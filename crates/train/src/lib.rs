//! The training stage: one run trains exactly one depth of the greedy loop, from a
//! checkpoint on disk (or nothing, at depth 1) to a checkpoint on disk.
//!
//! # Brief overview
//! - [`TrainOptions`]: dataset, parent checkpoint, output folder, [`TrainConfig`], device.
//! - [`train`]: grows the parent by one hidden layer, trains what the head mode says is
//!   trainable, and writes `model.safetensors` and `train.json`.
//!
//! The frozen layers' outputs are computed once per depth ([`TrainOutcome::prefix_rows`]
//! counts the rows pushed through them), so training depth d costs the same as depth 2.
//! Frozen weights are copied from the parent checkpoint, never round-tripped through the
//! device, so they stay bit-identical.
#![deny(missing_docs)]

pub mod cli;
mod conv;
mod inputs;
mod outputs;
mod plan;
mod pretrain;
mod progress;
mod resume;
pub mod state;
mod supervised;

pub use plan::{memory_available, memory_needed};
pub use progress::Progress;
pub use resume::STOP_AFTER_EPOCH_ENV;

use plan::{plan, Plan};
use resume::stop_if_asked;
use supervised::Inputs;

use anyhow::{bail, Context, Result};
use layerwise_core::checkpoint::{checkpoint_bytes, load_checkpoint, CheckpointMeta, Dense, Mlp, CHECKPOINT_VERSION};
use layerwise_core::config::{Augment, Decoder, HeadMode, Objective, Regime, TrainConfig};
use layerwise_core::dataset::{Dataset, Split};
use layerwise_core::metrics::{EpochMetrics, PretrainEpoch, Sealed, TrainHistory, TRAIN_SCHEMA, TRAIN_VERSION};
use layerwise_core::names::TensorPath;
use layerwise_core::{atomic, hash, mix_seed};
use layerwise_nn::device::DeviceKind;
use layerwise_nn::{glorot_dense, Backend};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use layerwise_core::features::{write_features, Features, FeaturesMeta, FEATURES_FILE, FEATURES_VERSION};
use layerwise_core::run::{HISTORY_FILE, MODEL_FILE};

/// What to train.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Prepared dataset.
    pub data: PathBuf,
    /// The parent checkpoint: grown by one layer (`grow`, None trains depth 1) or trained
    /// end to end (`finetune`); none for `scratch`.
    pub from: Option<PathBuf>,
    /// Output folder (gets `model.safetensors` and `train.json`).
    pub out: PathBuf,
    /// Settings.
    pub config: TrainConfig,
    /// Device.
    pub device: DeviceKind,
    /// How to show progress.
    pub progress: Progress,
    /// What grows and what trains.
    pub regime: Regime,
    /// Hidden layers of a `scratch` network.
    pub depth: Option<usize>,
    /// Settings given as flags beside a pipeline (`lr=0.002`): recorded in the
    /// checkpoint's metadata, so a model says where it left its pipeline.
    pub overrides: Vec<String>,
}

/// What a training run produced.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// The checkpoint written.
    pub checkpoint: PathBuf,
    /// Its metadata.
    pub meta: CheckpointMeta,
    /// The history written to `train.json`.
    pub history: TrainHistory,
    /// Rows pushed through the frozen layers (train + val size when the cache works).
    pub prefix_rows: usize,
    /// Whether it continued from the state an interrupted run left.
    pub resumed: bool,
}

/// A convolutional parent given without a stage list: fine-tuning takes the architecture
/// its checkpoint records (`config.cnn` set from it); growing needs the list, since the
/// next stage is not in the file, and is refused saying so. Anything else is left as it
/// is (a parent that cannot be read is reported by the loader that reads it).
pub fn adopt_parent_architecture(config: &mut TrainConfig, from: Option<&Path>, regime: Regime) -> Result<()> {
    let Some(p) = from.filter(|_| config.cnn.is_none()) else { return Ok(()) };
    let Some(c) = layerwise_core::checkpoint::read_checkpoint_meta(p).ok().and_then(|m| m.cnn) else {
        return Ok(());
    };
    if regime == Regime::Grow {
        bail!(
            "{} holds a convolutional network of {}: growing it needs the whole stage list, its {} and the next: \
             pass --stages (e.g. --stages {},OUT) or run a pipeline with [model] kind = \"cnn\"",
            p.display(),
            layerwise_core::plural(c.stages.len(), "stage"),
            c.stages.len(),
            c.stages.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(",")
        );
    }
    config.cnn = Some(layerwise_core::cnn::CnnSpec { stages: c.stages, head_convs: c.head.convs });
    Ok(())
}

/// Train one depth (or fine-tune one, or train a network from scratch).
pub fn train(opts: &TrainOptions) -> Result<TrainOutcome> {
    let mut config = opts.config.clone();
    adopt_parent_architecture(&mut config, opts.from.as_deref(), opts.regime)?;
    if config.cnn != opts.config.cnn {
        return train(&TrainOptions { config, ..opts.clone() });
    }
    opts.config.validate()?;
    // A device this build lacks is refused before any folder is made.
    if opts.device == DeviceKind::Cuda && !layerwise_nn::device::CUDA_BUILT {
        return Err(layerwise_nn::device::cuda_missing());
    }
    // Fail on an unwritable output folder now, not after the training.
    check_out_dir(&opts.out)?;
    // Nor after an epoch on something in the training state's place that it cannot replace.
    let state_path = opts.out.join(state::STATE_FILE);
    if let Some(what) = layerwise_core::fsread::not_regular(&state_path) {
        bail!(
            "{} is {what}: the training stage keeps its resumable state in that file after each epoch, and cannot \
             replace {what}; remove it and rerun",
            state_path.display()
        );
    }
    let started = Instant::now();
    let ds = Dataset::open(&opts.data)?;
    let cfg = &opts.config;
    if let Some(spec) = &cfg.cnn {
        return conv::train_cnn(opts, &ds, spec, started);
    }
    let (parent, parent_sha) = match &opts.from {
        None => (None, None),
        Some(p) => {
            let (model, meta) = load_checkpoint(p)?;
            meta.check_dataset(p, &ds.meta, &opts.data)?;
            (Some((model, meta)), Some(hash::sha256_file(p)?))
        }
    };
    let plan = plan(opts, &ds, parent.as_ref())?;
    let depth = plan.depth;
    let state_key =
        state::RunKey::new(cfg, &ds.meta.fingerprint, parent_sha.as_deref(), depth, opts.device.name(), opts.regime);
    let run = Run { ds: &ds, plan: &plan, depth, opts, state_key, parent_sha: parent_sha.clone() };
    let trained = layerwise_nn::with_device!(opts.device, cfg.seed, |dev| run.go(&dev))?;

    outputs::write(&run, trained, started)
}

struct Run<'a> {
    ds: &'a Dataset,
    plan: &'a Plan,
    depth: usize,
    opts: &'a TrainOptions,
    state_key: state::RunKey,
    parent_sha: Option<String>,
}

struct Trained {
    layers: Vec<Dense>,
    head: Dense,
    epochs: Vec<EpochMetrics>,
    best_epoch: Option<usize>,
    prefix_rows: usize,
    prefix_seconds: f64,
    /// Whether a saved state was used.
    resumed: bool,
    /// The autoencoder objective's pretraining: its epochs and the decoder (weight, empty
    /// when tied, and bias).
    pretrained: Option<state::Pretrained>,
    /// The new layer's output over the train and validation splits, for the next depth
    /// (grown depths without augmentation).
    next_features: Option<(Vec<f32>, Vec<f32>)>,
}

use layerwise_nn::CHUNK;

/// A saved `(weight, bias)` pair as a layer of `outputs × inputs`, refusing a pair of
/// other sizes (a state file of another network).
fn restore((outputs, inputs): (usize, usize), (weight, bias): &(Vec<f32>, Vec<f32>), from: &Path) -> Result<Dense> {
    if weight.len() != outputs * inputs || bias.len() != outputs {
        bail!("{}: its tensors do not fit this network", from.display());
    }
    Ok(Dense { inputs, outputs, weight: weight.clone(), bias: bias.clone() })
}

/// An epoch's line of the history: the training sums of its steps, the validation sums,
/// its seconds, over `n` training images.
fn epoch_metrics(
    epoch: usize,
    train: &layerwise_nn::EvalSums,
    val: &layerwise_nn::EvalSums,
    seconds: f64,
    n: usize,
) -> EpochMetrics {
    EpochMetrics {
        epoch,
        train_loss: train.loss(),
        train_accuracy: train.accuracy(),
        val_loss: val.loss(),
        val_accuracy: val.accuracy(),
        seconds,
        samples_per_second: n as f64 / seconds,
    }
}

/// Shuffle streams: each loop shuffles (and draws its noise) with its own seeds.
const GROW_STREAM: u64 = 1000;
const FINETUNE_STREAM: u64 = 3000;
const SCRATCH_STREAM: u64 = 5000;
const PRETRAIN_STREAM: u64 = 7000;
const PROBE_STREAM: u64 = 9000;

impl Run<'_> {
    fn say(&self, text: &str) {
        if self.opts.progress != Progress::Quiet {
            layerwise_core::progress::println(&format!("depth {}: {text}", self.depth));
        }
    }

    fn go<D: Backend + 'static>(&self, dev: &D) -> Result<Trained> {
        let cfg = &self.opts.config;
        let plan = self.plan;
        let t0 = Instant::now();
        let prefix = layerwise_nn::Frozen::new(dev, &plan.prefix);
        let mut prefix_rows = 0;
        // Augmented images change every batch: the frozen layers' outputs cannot be cached,
        // so they are recomputed per batch from the augmented images.
        let augment = cfg.augment == Augment::FlipCrop;
        // The parent's output, when it left it, is the new layer's input: one layer was
        // computed per depth, not the whole frozen stack.
        let cached = if augment { None } else { self.parent_features(&prefix) };
        let labels = |split| -> Result<Vec<u8>> { Ok(self.ds.split(split)?.labels.to_vec()) };
        let (x_train, y_train) = if let Some(f) = &cached {
            (f.split(Split::Train)?, labels(Split::Train)?)
        } else if augment {
            let view = self.ds.split(Split::Train)?;
            if !prefix.is_empty() {
                self.say(&format!(
                    "augmentation ({}) is on: the frozen layers' outputs are recomputed for every batch",
                    cfg.augment.name()
                ));
            }
            (view.images, view.labels.to_vec())
        } else {
            self.features(&prefix, Split::Train, &mut prefix_rows)?
        };
        let (x_val, y_val) = match &cached {
            Some(f) => (f.split(Split::Val)?, labels(Split::Val)?),
            None => self.features(&prefix, Split::Val, &mut prefix_rows)?,
        };
        let per_batch_prefix = layerwise_nn::Frozen::new(dev, if augment { &plan.prefix[..] } else { &[] });
        let prefix_seconds = t0.elapsed().as_secs_f64();
        if y_train.is_empty() {
            bail!("{}: the train split is empty", self.ds.path().display());
        }
        let saved = self.saved_state().map(|s| s.training);
        let resumed = saved.is_some();
        match cfg.objective {
            Objective::Supervised => {
                let inputs =
                    Inputs { x_train: &x_train, y_train: &y_train, x_val: &x_val, y_val: &y_val, per_batch_prefix };
                let saved = match saved {
                    Some(state::Training::Supervised(s)) => Some(s),
                    _ => None,
                };
                let s = self.supervised(dev, &inputs, &plan.trainable, &plan.head, plan.head_trains, saved, None)?;
                // The new layer's output, for the next depth (frozen-feature time too).
                let t1 = Instant::now();
                let next_features = (self.opts.regime == Regime::Grow && !augment).then(|| {
                    let layer = layerwise_nn::Frozen::new(dev, &s.layers[..1]);
                    (layer.apply(&x_train, y_train.len()), layer.apply(&x_val, y_val.len()))
                });
                let prefix_seconds = prefix_seconds + t1.elapsed().as_secs_f64();
                Ok(Trained {
                    next_features,
                    layers: s.layers,
                    head: s.head,
                    epochs: s.epochs,
                    best_epoch: s.best_epoch,
                    prefix_rows: prefix_rows + s.prefix_rows,
                    prefix_seconds,
                    resumed,
                    pretrained: None,
                })
            }
            Objective::Autoencoder => {
                let (saved_pretraining, saved_probe) = match saved {
                    Some(state::Training::Autoencoder { pretrained, probe }) => (Some(pretrained), probe),
                    _ => (None, None),
                };
                // Pretraining reads the inputs, never the labels.
                let pretrained = self.pretrain(dev, &x_train, &x_val, saved_pretraining.as_ref())?;
                let (weight, bias) = pretrained.encoder.clone();
                let like = &plan.trainable[0];
                let encoder = Dense { inputs: like.inputs, outputs: like.outputs, weight, bias };
                let layer = [encoder.clone()];
                let layer = layerwise_nn::Frozen::new(dev, &layer);
                // The probe: a softmax layer on the frozen stack's features, with labels.
                let (n_train, n_val) = (y_train.len(), y_val.len());
                let t1 = Instant::now();
                let f_train = layer.apply(&x_train, n_train);
                let f_val = layer.apply(&x_val, n_val);
                let prefix_seconds = prefix_seconds + t1.elapsed().as_secs_f64();
                drop((x_train, x_val));
                let per_batch_prefix = layerwise_nn::Frozen::new(dev, &[]);
                let inputs =
                    Inputs { x_train: &f_train, y_train: &y_train, x_val: &f_val, y_val: &y_val, per_batch_prefix };
                let s = self.supervised(dev, &inputs, &[], &plan.head, true, saved_probe, Some(&pretrained))?;
                Ok(Trained {
                    next_features: Some((f_train, f_val)),
                    layers: vec![encoder],
                    head: s.head,
                    epochs: s.epochs,
                    best_epoch: s.best_epoch,
                    prefix_rows,
                    prefix_seconds,
                    resumed,
                    pretrained: Some(pretrained),
                })
            }
        }
    }
}

/// Create the output folder, so an unwritable one fails before any training.
fn check_out_dir(out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create output folder {}", out.display()))
}
