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
mod progress;
pub mod state;

pub use progress::Progress;

use anyhow::{bail, Context, Result};
use dfdx::prelude::*;
use layerwise_core::checkpoint::{
    checkpoint_bytes, hidden_name, load_checkpoint, CheckpointMeta, Dense, Mlp, CHECKPOINT_VERSION,
};
use layerwise_core::config::{Augment, Decoder, HeadMode, Objective, Regime, TrainConfig};
use layerwise_core::dataset::{Dataset, Split};
use layerwise_core::metrics::{EpochMetrics, PretrainEpoch, Sealed, TrainHistory, TRAIN_SCHEMA, TRAIN_VERSION};
use layerwise_core::{atomic, hash, mix_seed};
use layerwise_nn::device::DeviceKind;
use layerwise_nn::{glorot_dense, Adam, AeDecoder, Backend, Layer, Matrix};
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

/// The network a regime trains, on the host: frozen layers, trainable layers, the output
/// layer and whether it trains. The regime is data: one epoch loop trains any of them.
struct Plan {
    depth: usize,
    prefix: Vec<Dense>,
    trainable: Vec<Dense>,
    head: Dense,
    head_trains: bool,
}

/// Build what `opts.regime` trains from the parent (if any).
fn plan(opts: &TrainOptions, ds: &Dataset, parent: Option<&(Mlp, CheckpointMeta)>) -> Result<Plan> {
    let cfg = &opts.config;
    let classes = ds.meta.num_classes();
    let rows = ds.meta.split_sizes.train + ds.meta.split_sizes.val;
    // Refuse what would not fit in memory before allocating any of it.
    let fits = |depth: usize, inputs: usize, width: usize, cached: bool| {
        check_memory(depth, inputs, width, cfg.batch_size, if cached { rows } else { 0 })
    };
    if cfg.objective == Objective::Autoencoder {
        if opts.regime != Regime::Grow {
            bail!(
                "the autoencoder objective pretrains one new layer without labels, so it needs --regime grow; \
                 `{}` trains with the labels end to end: use --objective supervised for it (fine-tune an \
                 autoencoder-pretrained checkpoint with --regime finetune --objective supervised)",
                opts.regime.name()
            );
        }
        if classes < 2 {
            bail!(
                "{}: the dataset names {classes} classes, but the autoencoder objective's probe is trained with the \
                 labels: prepare a dataset with its labels",
                opts.data.display()
            );
        }
    }
    if opts.depth.is_some() && opts.regime != Regime::Scratch {
        bail!("--depth sets the size of a `scratch` network; `{}` takes its depth from --from", opts.regime.name());
    }
    match (opts.regime, parent) {
        (Regime::Grow, None) => {
            let width = cfg.width_at(1);
            fits(1, ds.meta.input_size(), width, false)?;
            let seed = |layer: u64| mix_seed(cfg.seed, &[1, layer]);
            Ok(Plan {
                depth: 1,
                prefix: Vec::new(),
                trainable: vec![glorot_dense(ds.meta.input_size(), width, seed(0))],
                head: glorot_dense(width, classes, seed(1)),
                head_trains: true,
            })
        }
        (Regime::Grow, Some((model, meta))) => {
            let depth = model.depth() + 1;
            let seed = |layer: u64| mix_seed(cfg.seed, &[depth as u64, layer]);
            let last = model.hidden.last().map_or(model.input_size(), |l| l.outputs);
            let width = cfg.width_at(depth);
            fits(depth, last, width, true)?;
            let new_layer = glorot_dense(last, width, seed(0));
            let (head, head_trains) = match cfg.head {
                // The autoencoder objective's probe is a new output layer at every depth.
                _ if cfg.objective == Objective::Autoencoder => (glorot_dense(width, classes, seed(1)), true),
                HeadMode::Fresh => (glorot_dense(width, classes, seed(1)), true),
                mode => {
                    if model.head.inputs != width {
                        bail!(
                            "head mode `{}` keeps the depth-{} output layer, which takes {} inputs, but the new layer is {} wide: \
                             use --width {} or --head fresh",
                            mode.name(), meta.depth, model.head.inputs, width, model.head.inputs
                        );
                    }
                    (model.head.clone(), mode == HeadMode::Retrain)
                }
            };
            Ok(Plan { depth, prefix: model.hidden.clone(), trainable: vec![new_layer], head, head_trains })
        }
        (Regime::Finetune, Some((model, _))) => {
            for l in &model.hidden {
                fits(model.depth(), l.inputs, l.outputs, false)?;
            }
            Ok(Plan {
                depth: model.depth(),
                prefix: Vec::new(),
                trainable: model.hidden.clone(),
                head: model.head.clone(),
                head_trains: true,
            })
        }
        (Regime::Finetune, None) => bail!("--regime finetune trains a checkpoint end to end: give it with --from"),
        (Regime::Scratch, Some(_)) => {
            bail!("--regime scratch trains a fresh network: drop --from (and give its size with --depth)")
        }
        (Regime::Scratch, None) => {
            let depth = opts.depth.unwrap_or(1);
            if depth == 0 {
                bail!("--depth must be at least 1");
            }
            layerwise_core::config::check_limit("depth", depth, layerwise_core::config::MAX_DEPTH)?;
            let seed = |layer: u64| mix_seed(cfg.seed, &[depth as u64, 100 + layer]);
            // Layer i takes the previous layer's width (the images, first).
            let shapes: Vec<(usize, usize)> = (1..=depth)
                .scan(ds.meta.input_size(), |inputs, d| {
                    let shape = (*inputs, cfg.width_at(d));
                    *inputs = shape.1;
                    Some(shape)
                })
                .collect();
            for &(inputs, width) in &shapes {
                fits(depth, inputs, width, false)?;
            }
            let trainable = shapes
                .iter()
                .enumerate()
                .map(|(i, &(inputs, width))| glorot_dense(inputs, width, seed(i as u64)))
                .collect();
            Ok(Plan {
                depth,
                prefix: Vec::new(),
                trainable,
                head: glorot_dense(cfg.width_at(depth), classes, seed(99)),
                head_trains: true,
            })
        }
    }
}

/// Train one depth (or fine-tune one, or train a network from scratch).
pub fn train(opts: &TrainOptions) -> Result<TrainOutcome> {
    opts.config.validate()?;
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
    let state_key = state::state_key(&serde_json::json!({
        "config": cfg,
        "dataset": ds.meta.fingerprint,
        "parent": parent_sha,
        "depth": depth,
        "device": opts.device.name(),
        "regime": opts.regime.name(),
    }));
    let run = Run { ds: &ds, plan: &plan, depth, opts, state_key, parent_sha: parent_sha.clone() };
    let trained = layerwise_nn::with_device!(opts.device, cfg.seed, |dev| run.go(&dev))?;

    let first = plan.prefix.len();
    let n_trained = trained.layers.len();
    let mut hidden = plan.prefix.clone();
    hidden.extend(trained.layers);
    let model = Mlp { hidden, head: if plan.head_trains { trained.head } else { plan.head.clone() } };
    let mut frozen: Vec<String> = (0..first).map(hidden_name).collect();
    let mut trained_names: Vec<String> = (first..first + n_trained).map(hidden_name).collect();
    if plan.head_trains {
        trained_names.push("head".into())
    } else {
        frozen.push("head".into())
    }
    let mut trained_tensors = trained_names.iter().flat_map(|n| tensor_names(n)).collect::<Vec<_>>();
    // The autoencoder's decoder goes into the checkpoint too (evaluation ignores it): a
    // bias, and a weight of its own when untied.
    let decoder = trained.pretrained.as_ref().map(|p| {
        let [w, b] = tensor_names(&decoder_name(first));
        let (inputs, width) = (model.hidden[first].inputs, model.hidden[first].outputs);
        let mut t = Vec::new();
        if !p.decoder.0.is_empty() {
            t.push((w, vec![inputs, width], p.decoder.0.as_slice()));
        }
        t.push((b, vec![inputs], p.decoder.1.as_slice()));
        t
    });
    let decoder = decoder.unwrap_or_default();
    trained_tensors.extend(decoder.iter().map(|(name, ..)| name.clone()));
    let trainable_params = model.hidden[first..].iter().map(Dense::num_params).sum::<usize>()
        + if plan.head_trains { model.head.num_params() } else { 0 }
        + decoder.iter().map(|(_, _, v)| v.len()).sum::<usize>();
    let meta = CheckpointMeta {
        version: CHECKPOINT_VERSION,
        depth,
        input_size: model.input_size(),
        widths: model.widths(),
        activation: "relu".into(),
        classes: ds.meta.classes.clone(),
        frozen,
        trained: trained_names,
        trainable_params,
        dataset_fingerprint: ds.meta.fingerprint.clone(),
        dataset_name: ds.meta.name.clone(),
        parent_sha256: parent_sha,
        config: cfg.clone(),
        device: opts.device.name().into(),
        regime: opts.regime,
    };
    let bytes = checkpoint_bytes(&model, &meta, &decoder)?;
    // The new layer's output for the next depth, bound to this checkpoint, first; then
    // train.json; the checkpoint last: a checkpoint on disk always has its history.
    let checkpoint_sha = hash::sha256_hex(&bytes);
    let t_features = Instant::now();
    let features_path = opts.out.join(FEATURES_FILE);
    match &trained.next_features {
        Some((train, val)) => {
            let meta = FeaturesMeta {
                version: FEATURES_VERSION,
                depth,
                width: model.hidden[depth - 1].outputs,
                checkpoint_sha256: checkpoint_sha.clone(),
                dataset_fingerprint: ds.meta.fingerprint.clone(),
                train_rows: ds.meta.split_sizes.train,
                val_rows: ds.meta.split_sizes.val,
                content_sha256: String::new(),
            };
            write_features(&features_path, &meta, train, val)?;
        }
        None => {
            let _ = std::fs::remove_file(&features_path);
        }
    }
    let features_seconds = t_features.elapsed().as_secs_f64();
    let history = TrainHistory {
        schema: TRAIN_SCHEMA.into(),
        version: TRAIN_VERSION,
        depth,
        checkpoint_sha256: checkpoint_sha,
        dataset_fingerprint: ds.meta.fingerprint.clone(),
        trainable_params,
        total_params: model.num_params(),
        frozen_features_seconds: trained.prefix_seconds + features_seconds,
        seconds: started.elapsed().as_secs_f64(),
        device: opts.device.name().into(),
        host: layerwise_core::metrics::host_name(),
        slurm_job_id: std::env::var("SLURM_JOB_ID").ok(),
        regime: opts.regime,
        trained_tensors,
        best_epoch: trained.best_epoch,
        pretraining: trained.pretrained.as_ref().map(|p| p.epochs.clone()).unwrap_or_default(),
        epochs: trained.epochs,
        content_sha256: None,
    }
    .sealed()?;
    let checkpoint = opts.out.join(MODEL_FILE);
    atomic::write_json_atomic(&opts.out.join(HISTORY_FILE), &history)?;
    atomic::write_bytes_atomic(&checkpoint, &bytes)?;
    // The depth is complete: an interrupted run's state is of no more use.
    let _ = std::fs::remove_file(opts.out.join(state::STATE_FILE));
    Ok(TrainOutcome { checkpoint, meta, history, prefix_rows: trained.prefix_rows, resumed: trained.resumed })
}

struct Run<'a> {
    ds: &'a Dataset,
    plan: &'a Plan,
    depth: usize,
    opts: &'a TrainOptions,
    state_key: String,
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

/// What a supervised loop trained.
struct Supervised {
    prefix_rows: usize,
    layers: Vec<Dense>,
    head: Dense,
    epochs: Vec<EpochMetrics>,
    best_epoch: Option<usize>,
}

/// The inputs of a supervised loop: the fixed input of its first trainable layer, on the
/// host, for the train and validation splits, and the frozen layers to apply per batch
/// (only when augmentation changes the images every batch).
struct Inputs<'a, D: Backend> {
    x_train: &'a [f32],
    y_train: &'a [u8],
    x_val: &'a [f32],
    y_val: &'a [u8],
    per_batch_prefix: layerwise_nn::Frozen<'a, D>,
}

use layerwise_nn::CHUNK;

fn host_pair<D: Backend>(l: &Layer<D>) -> (Vec<f32>, Vec<f32>) {
    (l.weight.as_vec(), l.bias.as_vec())
}

/// A saved `(weight, bias)` pair as a layer of `outputs × inputs`, refusing a pair of
/// other sizes (a state file of another network).
fn restore((outputs, inputs): (usize, usize), (weight, bias): &(Vec<f32>, Vec<f32>), from: &Path) -> Result<Dense> {
    if weight.len() != outputs * inputs || bias.len() != outputs {
        bail!("{}: its tensors do not fit this network", from.display());
    }
    Ok(Dense { inputs, outputs, weight: weight.clone(), bias: bias.clone() })
}

/// The checkpoint names of a layer's tensors.
fn tensor_names(layer: &str) -> [String; 2] {
    [format!("{layer}.weight"), format!("{layer}.bias")]
}

/// The checkpoint name of hidden layer `i`'s autoencoder decoder.
fn decoder_name(i: usize) -> String {
    format!("decoder.{i}")
}

/// The environment variable that stops a training run right after it saved the state of
/// that epoch, as an interrupted run would leave it: how the tests and `cargo xtask fuzz`
/// get a real state without killing a process at a lucky moment.
pub const STOP_AFTER_EPOCH_ENV: &str = "LAYERWISE_STOP_AFTER_EPOCH";

fn stop_if_asked(epoch: usize, what: &str) -> Result<()> {
    if std::env::var(STOP_AFTER_EPOCH_ENV).ok().and_then(|v| v.parse::<usize>().ok()) == Some(epoch) {
        bail!("stopped after {what} {epoch}, its state saved, as {STOP_AFTER_EPOCH_ENV} asks");
    }
    Ok(())
}

/// Rows of each split the training stage recomputes from the images to check a parent's
/// features file against the parent checkpoint.
const SPOT_ROWS: usize = 16;

/// Shuffle streams: each loop shuffles (and draws its noise) with its own seeds.
const GROW_STREAM: u64 = 1000;
const FINETUNE_STREAM: u64 = 3000;
const SCRATCH_STREAM: u64 = 5000;
const PRETRAIN_STREAM: u64 = 7000;
const PROBE_STREAM: u64 = 9000;

impl Run<'_> {
    /// The frozen prefix's output for a split, on the host: the images themselves when
    /// nothing is frozen (borrowed from the memory map), else computed once, here.
    fn features<D: Backend>(
        &self,
        prefix: &layerwise_nn::Frozen<'_, D>,
        split: Split,
        rows: &mut usize,
    ) -> Result<(Cow<'_, [f32]>, Vec<u8>)> {
        let view = self.ds.split(split)?;
        let n = view.len();
        let feats = if prefix.is_empty() {
            view.images
        } else {
            *rows += n;
            Cow::Owned(prefix.apply(&view.images, n))
        };
        Ok((feats, view.labels.to_vec()))
    }

    /// The parent depth's `features.safetensors`, when it is there, belongs to the parent
    /// checkpoint and this dataset, matches its content hash, and agrees with `prefix`
    /// (the frozen stack) on sample rows recomputed from the images; says why one that is
    /// there is not used.
    fn parent_features<D: Backend>(&self, prefix: &layerwise_nn::Frozen<'_, D>) -> Option<Features> {
        let plan = self.plan;
        let (from, sha, last) = (self.opts.from.as_ref()?, self.parent_sha.as_deref()?, plan.prefix.last()?);
        if self.opts.regime != Regime::Grow {
            return None;
        }
        let path = from.parent().unwrap_or(Path::new(".")).join(FEATURES_FILE);
        if !path.exists() && layerwise_core::fsread::not_regular(&path).is_none() {
            return None;
        }
        let sizes = &self.ds.meta.split_sizes;
        let checked = Features::open_for(&path, sha, &self.ds.meta.fingerprint, last.outputs, sizes.train, sizes.val)
            .and_then(|f| self.spot_check(&f, prefix).map(|()| f));
        match checked {
            Ok(f) => {
                self.say(&format!("frozen features read from {}", path.display()));
                Some(f)
            }
            Err(e) => {
                self.say(&format!(
                    "not using {} ({e:#}): computing the frozen features from the images",
                    path.display()
                ));
                None
            }
        }
    }

    /// Recompute [`SPOT_ROWS`] rows of each split through the frozen stack from the
    /// images and compare them with the features file: a file computed with other weights
    /// (another run's, its metadata rewritten) is refused.
    fn spot_check<D: Backend>(&self, f: &Features, prefix: &layerwise_nn::Frozen<'_, D>) -> Result<()> {
        for split in [Split::Train, Split::Val] {
            let view = self.ds.split(split)?;
            let (n, dim, width) = (view.len(), self.ds.meta.input_size(), f.meta.width);
            if n == 0 {
                continue;
            }
            let rows: Vec<usize> = (0..SPOT_ROWS.min(n)).map(|i| i * (n - 1) / (SPOT_ROWS - 1).max(1)).collect();
            let images: Vec<f32> = rows.iter().flat_map(|&r| view.images[r * dim..(r + 1) * dim].iter().copied()).collect();
            let recomputed = prefix.apply(&images, rows.len());
            let stored = f.split(split)?;
            for (k, &r) in rows.iter().enumerate() {
                let (a, b) = (&stored[r * width..(r + 1) * width], &recomputed[k * width..(k + 1) * width]);
                if let Some(j) = a.iter().zip(b).position(|(x, y)| (x - y).abs() > 1e-4 * (1.0 + y.abs())) {
                    bail!(
                        "{split} row {r}, value {j}: the file holds {}, the parent checkpoint gives {} (the file was \
                         computed with other weights)",
                        a[j],
                        b[j]
                    );
                }
            }
        }
        Ok(())
    }

    fn say(&self, text: &str) {
        if self.opts.progress != Progress::Quiet {
            layerwise_core::progress::println(&format!("depth {}: {text}", self.depth));
        }
    }

    /// The state an interrupted run of this same command left, if any, once it is
    /// verified and validated against the network this run trains.
    fn saved_state(&self) -> Option<state::TrainState> {
        let path = self.opts.out.join(state::STATE_FILE);
        let expect = self.expect();
        match state::load(&path, &self.state_key, expect.max_bytes()) {
            Ok(Some(st)) => match state::validate(&st, &expect) {
                Ok(()) => Some(st),
                Err(why) => {
                    self.say(&format!("not resuming ({}: {why:#}); training from epoch 1", path.display()));
                    None
                }
            },
            Ok(None) => None,
            Err(why) => {
                self.say(&format!("not resuming ({why:#}); training from epoch 1"));
                None
            }
        }
    }

    /// What a training state of this run must hold.
    fn expect(&self) -> state::Expect {
        let (cfg, plan) = (&self.opts.config, self.plan);
        let n = self.ds.meta.split_sizes.train;
        let batches = n.div_ceil(cfg.batch_size.min(n).max(1));
        let first = plan.prefix.len();
        let sized = |names: [String; 2], l: &Dense| vec![(names[0].clone(), l.inputs * l.outputs), (names[1].clone(), l.outputs)];
        let shape = |l: &Dense| (l.outputs, l.inputs);
        let head = sized(tensor_names("head"), &plan.head);
        match cfg.objective {
            Objective::Supervised => {
                let mut tensors: Vec<_> = plan
                    .trainable
                    .iter()
                    .enumerate()
                    .flat_map(|(i, l)| sized(tensor_names(&hidden_name(first + i)), l))
                    .collect();
                if plan.head_trains {
                    tensors.extend(head);
                }
                state::Expect {
                    epochs: cfg.epochs,
                    batches,
                    layers: plan.trainable.iter().map(shape).collect(),
                    head: shape(&plan.head),
                    tensors,
                    pretrain: None,
                }
            }
            Objective::Autoencoder => {
                let enc = &plan.trainable[0];
                let tied = cfg.decoder == Decoder::Tied;
                let [dw, db] = tensor_names(&decoder_name(first));
                let mut tensors = sized(tensor_names(&hidden_name(first)), enc);
                if !tied {
                    tensors.push((dw, enc.inputs * enc.outputs));
                }
                tensors.push((db, enc.inputs));
                state::Expect {
                    epochs: cfg.probe_epochs(),
                    batches,
                    layers: Vec::new(),
                    head: shape(&plan.head),
                    tensors: head,
                    pretrain: Some(state::ExpectPretrain {
                        epochs: cfg.epochs,
                        encoder: shape(enc),
                        decoder: (if tied { 0 } else { enc.inputs * enc.outputs }, enc.inputs),
                        tensors,
                    }),
                }
            }
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
        let saved = self.saved_state();
        let resumed = saved.is_some();
        match cfg.objective {
            Objective::Supervised => {
                let inputs =
                    Inputs { x_train: &x_train, y_train: &y_train, x_val: &x_val, y_val: &y_val, per_batch_prefix };
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
                // Pretraining reads the inputs, never the labels.
                let pretrained = self.pretrain(dev, &x_train, &x_val, saved.as_ref())?;
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
                let saved = saved.filter(|s| s.pretrained.as_ref().is_some_and(|p| p.epoch >= cfg.epochs));
                let s = self.supervised(dev, &inputs, &[], &plan.head, true, saved, Some(&pretrained))?;
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

    /// Train the new layer as the encoder of a denoising autoencoder of its input `x_train`
    /// (validated on `x_val`), for `epochs` epochs, from a saved state when there is one.
    fn pretrain<D: Backend>(
        &self,
        dev: &D,
        x_train: &[f32],
        x_val: &[f32],
        saved: Option<&state::TrainState>,
    ) -> Result<state::Pretrained> {
        let cfg = &self.opts.config;
        let plan = self.plan;
        let index = plan.prefix.len();
        let [ew, eb] = tensor_names(&hidden_name(index));
        let [dw, db] = tensor_names(&decoder_name(index));
        let like = &plan.trainable[0];
        let dim = like.inputs;
        let (n, n_val) = (x_train.len() / dim, x_val.len() / dim);
        let mut encoder = Layer::from_dense(like, dev);
        let seed = |parts: &[u64]| mix_seed(cfg.seed, &[&[self.depth as u64], parts].concat());
        let mut decoder = AeDecoder::new(&encoder, cfg.decoder == Decoder::Tied, seed(&[2]), dev);
        let mut adam = Adam::new(cfg.lr, cfg.beta1, cfg.beta2, cfg.epsilon);
        let mut history = Vec::new();
        let mut first_epoch = 1;
        let state_path = self.opts.out.join(state::STATE_FILE);
        if let Some(p) = saved.and_then(|s| s.pretrained.as_ref()) {
            if p.epoch >= cfg.epochs {
                self.say(&format!("pretraining finished in an interrupted run ({}): kept", state_path.display()));
                return Ok(p.clone());
            }
            encoder = Layer::from_dense(&restore((like.outputs, like.inputs), &p.encoder, &state_path)?, dev);
            decoder = match decoder {
                AeDecoder::Tied { .. } if p.decoder.0.is_empty() && p.decoder.1.len() == dim => {
                    AeDecoder::Tied { bias: dev.tensor_from_vec(p.decoder.1.clone(), (dim,)) }
                }
                AeDecoder::Untied(l) => {
                    AeDecoder::Untied(Layer::from_dense(&restore(*l.weight.shape(), &p.decoder, &state_path)?, dev))
                }
                _ => bail!("{}: its decoder does not fit this network", state_path.display()),
            };
            adam.restore(p.adam_t, p.adam.clone());
            history = p.epochs.clone();
            first_epoch = p.epoch + 1;
            self.say(&format!(
                "resuming at epoch {first_epoch} of {} of pretraining from the state an interrupted run left ({})",
                cfg.epochs,
                state_path.display()
            ));
        }
        let bs = cfg.batch_size.min(n);
        let batches = n.div_ceil(bs);
        let mut order: Vec<usize> = (0..n).collect();
        let epoch_rng = |epoch: usize| rand_chacha::ChaCha8Rng::seed_from_u64(seed(&[PRETRAIN_STREAM + epoch as u64]));
        for epoch in 1..first_epoch {
            order.shuffle(&mut epoch_rng(epoch));
        }
        let mut bar = self.opts.progress.start(format!("depth {} pretraining", self.depth), cfg.epochs, batches);
        let mut rows = Vec::with_capacity(bs * dim);
        for epoch in first_epoch..=cfg.epochs {
            let te = Instant::now();
            order.shuffle(&mut epoch_rng(epoch));
            let mut loss_sum = 0f64;
            for (b, chunk) in order.chunks(bs).enumerate() {
                rows.clear();
                for &i in chunk {
                    rows.extend_from_slice(&x_train[i * dim..(i + 1) * dim]);
                }
                let noisy = layerwise_nn::masking_noise(
                    &rows,
                    cfg.corruption,
                    seed(&[PRETRAIN_STREAM + epoch as u64, 3, b as u64]),
                );
                let noisy: Matrix<D> = dev.tensor_from_vec(noisy, (chunk.len(), dim));
                let clean: Matrix<D> = dev.tensor_from_vec(rows.clone(), (chunk.len(), dim));
                adam.set_lr(cfg.lr_at((epoch - 1) * batches + b, cfg.epochs * batches, batches));
                let g = layerwise_nn::autoencoder_gradients(&encoder, &decoder, noisy, clean);
                if !g.loss.is_finite() {
                    bail!(
                        "depth {}: the reconstruction loss became {} at pretraining epoch {epoch}, batch {} of \
                         {batches}: training diverged; lower the learning rate (--lr) or check the dataset; no \
                         checkpoint was written",
                        self.depth,
                        g.loss,
                        b + 1
                    );
                }
                loss_sum += g.loss as f64 * chunk.len() as f64;
                adam.tick();
                adam.update_decayed(&ew, &mut encoder.weight, &g.encoder_weight, cfg.weight_decay)?;
                adam.update(&eb, &mut encoder.bias, &g.encoder_bias)?;
                match (&mut decoder, &g.decoder_weight) {
                    (AeDecoder::Untied(l), Some(gw)) => {
                        adam.update_decayed(&dw, &mut l.weight, gw, cfg.weight_decay)?;
                        adam.update(&db, &mut l.bias, &g.decoder_bias)?;
                    }
                    (AeDecoder::Tied { bias }, None) => adam.update(&db, bias, &g.decoder_bias)?,
                    _ => bail!("internal: decoder and its gradients disagree"),
                }
                let seen = (b * bs + chunk.len()) as f64;
                bar.batch(b + 1, || format!("reconstruction {:.5}", loss_sum / seen));
            }
            // The same objective on the validation split, with fixed masks (the same every epoch).
            let noise = (cfg.corruption, seed(&[PRETRAIN_STREAM, 4]));
            let val = layerwise_nn::reconstruction_loss(dev, &encoder, &decoder, x_val, n_val, noise, CHUNK);
            let m = PretrainEpoch {
                epoch,
                reconstruction_loss: loss_sum / n as f64,
                val_reconstruction_loss: val,
                seconds: te.elapsed().as_secs_f64(),
            };
            bar.pretrain_epoch(&m);
            history.push(m);
            // The state after every epoch, the last one too: the probe follows.
            let (adam_t, adam_moments) = adam.state();
            let decoder_host = match &decoder {
                AeDecoder::Tied { bias } => (Vec::new(), bias.as_vec()),
                AeDecoder::Untied(l) => host_pair(l),
            };
            let p = state::Pretrained {
                epoch,
                encoder: host_pair(&encoder),
                decoder: decoder_host,
                adam_t,
                adam: if epoch < cfg.epochs { adam_moments } else { Vec::new() },
                epochs: history.clone(),
            };
            let st = state::TrainState {
                format: state::STATE_FORMAT.into(),
                version: state::STATE_VERSION,
                key: self.state_key.clone(),
                epoch: 0,
                layers: Vec::new(),
                head: (Vec::new(), Vec::new()),
                adam_t: 0,
                adam: Vec::new(),
                epochs: Vec::new(),
                best: None,
                pretrained: Some(p.clone()),
            };
            state::save(&state_path, &st)?;
            stop_if_asked(epoch, "pretraining epoch")?;
            if epoch == cfg.epochs {
                bar.finish();
                return Ok(p);
            }
        }
        bar.finish();
        bail!("internal: pretraining ran no epoch")
    }

    /// The supervised loop: train `trainable` (and `head` when `head_trains`) with the
    /// labels, from a saved state when there is one. `pretrained` (the autoencoder
    /// objective's, for its probe) goes into every state written.
    #[allow(clippy::too_many_arguments)]
    fn supervised<D: Backend + 'static>(
        &self,
        dev: &D,
        inputs: &Inputs<'_, D>,
        trainable: &[Dense],
        head0: &Dense,
        head_trains: bool,
        saved: Option<state::TrainState>,
        pretrained: Option<&state::Pretrained>,
    ) -> Result<Supervised> {
        let cfg = &self.opts.config;
        let probe = pretrained.is_some();
        let total_epochs = if probe { cfg.probe_epochs() } else { cfg.epochs };
        let Inputs { x_train, y_train, x_val, y_val, per_batch_prefix } = inputs;
        let n = y_train.len();
        let dim = x_train.len() / n;
        let image_shape = self.ds.meta.image_shape;
        let augment = cfg.augment == Augment::FlipCrop;
        let mut prefix_rows = 0;
        let bs = cfg.batch_size.min(n);
        let batches = n.div_ceil(bs);

        // An interrupted run of this same command left its state: continue from there.
        let state_path = self.opts.out.join(state::STATE_FILE);
        let saved = saved.filter(|st| st.epoch >= 1 && st.epoch < total_epochs && st.layers.len() == trainable.len());
        let fit = |like: &Dense, saved: &(Vec<f32>, Vec<f32>)| restore((like.outputs, like.inputs), saved, &state_path);
        let (start_layers, start_head, restored) = match &saved {
            Some(st) => (
                trainable.iter().zip(&st.layers).map(|(l, t)| fit(l, t)).collect::<Result<Vec<_>>>()?,
                fit(head0, &st.head)?,
                Some((st.adam_t, st.adam.clone())),
            ),
            None => (trainable.to_vec(), head0.clone(), None),
        };
        let first = self.plan.prefix.len();
        let mut net = layerwise_nn::trainer(
            dev,
            layerwise_nn::TrainerSpec {
                trainable: &start_layers,
                head: &start_head,
                head_trains,
                names: (first..first + trainable.len()).map(|i| tensor_names(&hidden_name(i))).collect(),
                dropout: cfg.dropout,
                weight_decay: cfg.weight_decay,
                adam: [cfg.lr, cfg.beta1, cfg.beta2, cfg.epsilon],
                batch: bs,
                restored,
            },
        );
        let mut epochs = Vec::with_capacity(total_epochs);
        // End-to-end training (fine-tuning, from scratch) keeps the weights of its best
        // epoch by validation accuracy: early stopping, the same for both.
        let keep_best = self.opts.regime != Regime::Grow;
        let mut best: Option<state::Best> = None;
        let mut first_epoch = 1;
        if let Some(st) = saved {
            epochs = st.epochs;
            best = st.best;
            first_epoch = st.epoch + 1;
            self.say(&format!(
                "resuming at {}epoch {first_epoch} of {total_epochs} from the state an interrupted run left ({})",
                if probe { "probe " } else { "" },
                state_path.display()
            ));
        }
        // Each loop shuffles with its own stream (grow's is the one it always had).
        let stream = match (self.opts.regime, probe) {
            (_, true) => PROBE_STREAM,
            (Regime::Grow, false) => GROW_STREAM,
            (Regime::Finetune, false) => FINETUNE_STREAM,
            (Regime::Scratch, false) => SCRATCH_STREAM,
        };
        let epoch_rng = |epoch: usize| {
            rand_chacha::ChaCha8Rng::seed_from_u64(mix_seed(cfg.seed, &[self.depth as u64, stream + epoch as u64]))
        };
        // Each epoch shuffles the previous epoch's order: a resumed run replays the
        // shuffles of the epochs it skips, so its batches are the uninterrupted run's.
        let mut order: Vec<usize> = (0..n).collect();
        for epoch in 1..first_epoch {
            order.shuffle(&mut epoch_rng(epoch));
        }
        let what = format!("depth {}{}", self.depth, if probe { " probe" } else { "" });
        let mut bar = self.opts.progress.start(what, total_epochs, batches);
        // Without augmentation the trainer keeps the split (a GPU: resident) and gathers
        // each batch itself; augmented batches are made here, on the host.
        let made_here = augment || !per_batch_prefix.is_empty();
        if !made_here {
            net.load_split(x_train, y_train)?;
        }
        let diverged = |loss: f64, when: String| {
            anyhow::anyhow!(
                "depth {}: the loss became {loss} {when}: training diverged; lower the learning rate (--lr) or check \
                 the dataset; no checkpoint was written",
                self.depth
            )
        };
        // Host batches, gathered into buffers allocated once.
        let mut rows: Vec<f32> = Vec::with_capacity(if made_here { bs * dim } else { 0 });
        let mut labels: Vec<u8> = Vec::with_capacity(bs);
        for epoch in first_epoch..=total_epochs {
            let te = Instant::now();
            order.shuffle(&mut epoch_rng(epoch));
            for (b, chunk) in order.chunks(bs).enumerate() {
                let batch_seed =
                    |purpose: u64| mix_seed(cfg.seed, &[self.depth as u64, stream + epoch as u64, purpose, b as u64]);
                let lr = cfg.lr_at((epoch - 1) * batches + b, total_epochs * batches, batches);
                let loss = if made_here {
                    rows.clear();
                    labels.clear();
                    for &i in chunk {
                        rows.extend_from_slice(&x_train[i * dim..(i + 1) * dim]);
                        labels.push(y_train[i]);
                    }
                    if augment {
                        layerwise_nn::flip_crop(&mut rows, image_shape, 4, batch_seed(1));
                    }
                    if per_batch_prefix.is_empty() {
                        net.step(&rows, &labels, batch_seed(2), lr)?
                    } else {
                        prefix_rows += chunk.len() * self.plan.prefix.len();
                        let features = per_batch_prefix.apply(&rows, chunk.len());
                        net.step(&features, &labels, batch_seed(2), lr)?
                    }
                } else {
                    net.step_rows(chunk, batch_seed(2), lr)?
                };
                if let Some(loss) = loss.filter(|l| !l.is_finite()) {
                    return Err(diverged(loss as f64, format!("at epoch {epoch}, batch {} of {batches}", b + 1)));
                }
                bar.batch(b + 1, || net.running().map_or(String::new(), |(l, a)| format!("loss {l:.4} acc {a:.4}")));
            }
            let sums = net.take_sums();
            if !sums.loss().is_finite() {
                return Err(diverged(sums.loss(), format!("during epoch {epoch}")));
            }
            let val = net.evaluate(x_val, y_val);
            let seconds = te.elapsed().as_secs_f64();
            let m = EpochMetrics {
                epoch,
                train_loss: sums.loss(),
                train_accuracy: sums.accuracy(),
                val_loss: val.loss(),
                val_accuracy: val.accuracy(),
                seconds,
                samples_per_second: n as f64 / seconds,
            };
            bar.epoch(&m);
            // One copy of the weights to the host per epoch, for the best epoch and the state.
            let improved = keep_best && best.as_ref().is_none_or(|b| m.val_accuracy > b.val_accuracy);
            let resumable = epoch < total_epochs;
            let snapshot = (improved || resumable).then(|| net.snapshot());
            if let (true, Some((layers, head))) = (improved, &snapshot) {
                best = Some(state::Best {
                    epoch,
                    val_accuracy: m.val_accuracy,
                    layers: layers.clone(),
                    head: head.clone(),
                });
            }
            epochs.push(m);
            if let (true, Some((layers, head))) = (resumable, snapshot) {
                let (adam_t, adam_moments) = net.adam_state();
                let st = state::TrainState {
                    format: state::STATE_FORMAT.into(),
                    version: state::STATE_VERSION,
                    key: self.state_key.clone(),
                    epoch,
                    layers,
                    head,
                    adam_t,
                    adam: adam_moments,
                    epochs: epochs.clone(),
                    best: best.clone(),
                    pretrained: pretrained.cloned(),
                };
                state::save(&state_path, &st)?;
                stop_if_asked(epoch, "epoch")?;
            }
        }
        bar.finish();
        let dense = |(weight, bias): (Vec<f32>, Vec<f32>), like: &Dense| Dense {
            inputs: like.inputs,
            outputs: like.outputs,
            weight,
            bias,
        };
        let (kept, best_epoch) = match best {
            Some(b) if keep_best => ((b.layers, b.head), Some(b.epoch)),
            _ => (net.snapshot(), None),
        };
        Ok(Supervised {
            prefix_rows,
            layers: kept.0.into_iter().zip(trainable).map(|(t, like)| dense(t, like)).collect(),
            head: dense(kept.1, head0),
            epochs,
            best_epoch,
        })
    }
}

/// Bytes a layer's training needs, roughly: its weights six times over (parameters,
/// gradient, Adam's two moments, the fused host update's copies), the activations of a
/// batch and of an evaluation chunk, and `cached_rows` rows of cached frozen features.
pub fn memory_needed(inputs: usize, width: usize, batch: usize, cached_rows: usize) -> f64 {
    let (i, w) = (inputs as f64, width as f64);
    4.0 * (6.0 * i * w + 6.0 * batch as f64 * w + 2.0 * CHUNK as f64 * w + cached_rows as f64 * i)
}

/// Memory this machine can still give (`MemAvailable`, or a cgroup's limit when lower);
/// `None` where it cannot be read.
pub fn memory_available() -> Option<f64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: f64 = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?.split_whitespace().nth(1)?.parse().ok()?;
    let mut avail = kib * 1024.0;
    if let Some(limit) =
        std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok().and_then(|t| t.trim().parse::<f64>().ok())
    {
        avail = avail.min(limit);
    }
    Some(avail)
}

/// Refuse a width whose training would not fit in memory, before allocating anything
/// (a huge width would otherwise abort on allocation, or be killed by the kernel). The
/// advice names what takes the most: the layer (width), the batch, or the cached features.
fn check_memory(depth: usize, inputs: usize, width: usize, batch: usize, rows: usize) -> Result<()> {
    let need = memory_needed(inputs, width, batch, rows);
    let gib = |b: f64| b / (1u64 << 30) as f64;
    if let Some(avail) = memory_available() {
        if need > avail {
            let layer = memory_needed(inputs, width, 0, 0);
            let batch_part = memory_needed(0, width, batch, 0) - memory_needed(0, width, 0, 0);
            let cache = memory_needed(inputs, 0, 0, rows);
            let advice = if batch_part >= layer && batch_part >= cache {
                format!("the batch of {batch} takes {:.1} GiB of it: use a smaller --batch-size (`batch_size`)", gib(batch_part))
            } else if cache >= layer {
                format!(
                    "the cached input of {rows} rows takes {:.1} GiB of it: use fewer images (`data.limit_train`) or a \
                     narrower previous layer",
                    gib(cache)
                )
            } else {
                format!("the {inputs}×{width} layer and its state take {:.1} GiB of it: use a smaller --width", gib(layer))
            };
            bail!(
                "depth {depth} with width {width} and batch size {batch} needs about {:.1} GiB of memory, but this \
                 machine has {:.1} GiB available; {advice}",
                gib(need),
                gib(avail)
            );
        }
    }
    Ok(())
}

/// Create the output folder, so an unwritable one fails before any training.
fn check_out_dir(out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create output folder {}", out.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_memory_advice_names_what_takes_the_memory() {
        // A batch too large is the batch size's fault, not the width's (RELIABILITY.md).
        let err = format!("{:#}", super::check_memory(2, 256, 1 << 16, 1 << 20, 0).unwrap_err());
        assert!(err.contains("--batch-size") && !err.contains("--width"), "{err}");
        let err = format!("{:#}", super::check_memory(2, 1 << 20, 1 << 20, 1, 0).unwrap_err());
        assert!(err.contains("--width"), "{err}");
        let err = format!("{:#}", super::check_memory(2, 1 << 20, 1, 1, 1 << 20).unwrap_err());
        assert!(err.contains("limit_train"), "{err}");
    }
}
