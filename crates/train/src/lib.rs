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
use layerwise_core::config::{HeadMode, TrainConfig};
use layerwise_core::dataset::{Dataset, Split};
use layerwise_core::metrics::{EpochMetrics, TrainHistory, METRICS_VERSION, TRAIN_SCHEMA};
use layerwise_core::{atomic, hash, mix_seed};
use layerwise_nn::device::DeviceKind;
use layerwise_nn::{features_host, glorot_dense, Adam, Backend, EvalSums, Layer, Matrix};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use layerwise_core::run::{HISTORY_FILE, MODEL_FILE};

/// What to train.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Prepared dataset.
    pub data: PathBuf,
    /// Checkpoint of depth d-1; None trains depth 1.
    pub from: Option<PathBuf>,
    /// Output folder (gets `model.safetensors` and `train.json`).
    pub out: PathBuf,
    /// Settings.
    pub config: TrainConfig,
    /// Device.
    pub device: DeviceKind,
    /// How to show progress.
    pub progress: Progress,
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
}

/// Train one depth.
pub fn train(opts: &TrainOptions) -> Result<TrainOutcome> {
    opts.config.validate()?;
    // Fail on an unwritable output folder now, not after the training.
    check_out_dir(&opts.out)?;
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
    let depth = parent.as_ref().map_or(1, |(m, _)| m.depth() + 1);
    let inputs =
        parent.as_ref().map_or(ds.meta.input_size(), |(m, _)| m.hidden.last().map_or(m.input_size(), |l| l.outputs));
    check_memory(depth, inputs, cfg.width, cfg.batch_size, ds.meta.split_sizes.train + ds.meta.split_sizes.val)?;
    let seed = |layer: u64| mix_seed(cfg.seed, &[depth as u64, layer]);
    let classes = ds.meta.num_classes();
    // The grown model, on the host: frozen prefix, new layer, head.
    let (prefix, new_layer, head, head_trains) = match &parent {
        None => {
            let h = glorot_dense(ds.meta.input_size(), cfg.width, seed(0));
            (Vec::new(), h, glorot_dense(cfg.width, classes, seed(1)), true)
        }
        Some((model, meta)) => {
            let last = model.hidden.last().map_or(model.input_size(), |l| l.outputs);
            let new_layer = glorot_dense(last, cfg.width, seed(0));
            let (head, trains) = match cfg.head {
                HeadMode::Fresh => (glorot_dense(cfg.width, classes, seed(1)), true),
                mode => {
                    if model.head.inputs != cfg.width {
                        bail!(
                            "head mode `{}` keeps the depth-{} output layer, which takes {} inputs, but the new layer is {} wide: \
                             use --width {} or --head fresh",
                            mode.name(), meta.depth, model.head.inputs, cfg.width, model.head.inputs
                        );
                    }
                    (model.head.clone(), mode == HeadMode::Retrain)
                }
            };
            (model.hidden.clone(), new_layer, head, trains)
        }
    };
    let state_key = state::state_key(&serde_json::json!({
        "config": cfg,
        "dataset": ds.meta.fingerprint,
        "parent": parent_sha,
        "depth": depth,
        "device": opts.device.name(),
    }));
    let run = Run { ds: &ds, prefix: &prefix, new_layer: &new_layer, head: &head, head_trains, depth, opts, state_key };
    let trained = layerwise_nn::with_device!(opts.device, cfg.seed, |dev| run.go(&dev))?;

    let mut hidden = prefix;
    hidden.push(trained.new_layer);
    let model = Mlp { hidden, head: if head_trains { trained.head } else { head } };
    let mut frozen: Vec<String> = (0..depth - 1).map(hidden_name).collect();
    let mut trained_names = vec![hidden_name(depth - 1)];
    if head_trains {
        trained_names.push("head".into())
    } else {
        frozen.push("head".into())
    }
    let trainable_params = model.hidden[depth - 1].num_params() + if head_trains { model.head.num_params() } else { 0 };
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
    };
    let bytes = checkpoint_bytes(&model, &meta)?;
    let history = TrainHistory {
        schema: TRAIN_SCHEMA.into(),
        version: METRICS_VERSION,
        depth,
        checkpoint_sha256: hash::sha256_hex(&bytes),
        dataset_fingerprint: ds.meta.fingerprint.clone(),
        trainable_params,
        total_params: model.num_params(),
        frozen_features_seconds: trained.prefix_seconds,
        seconds: started.elapsed().as_secs_f64(),
        device: opts.device.name().into(),
        host: layerwise_core::metrics::host_name(),
        slurm_job_id: std::env::var("SLURM_JOB_ID").ok(),
        epochs: trained.epochs,
    };
    // train.json first, the checkpoint last: a checkpoint on disk always has its history.
    let checkpoint = opts.out.join(MODEL_FILE);
    atomic::write_json_atomic(&opts.out.join(HISTORY_FILE), &history)?;
    atomic::write_bytes_atomic(&checkpoint, &bytes)?;
    // The depth is complete: an interrupted run's state is of no more use.
    let _ = std::fs::remove_file(opts.out.join(state::STATE_FILE));
    Ok(TrainOutcome { checkpoint, meta, history, prefix_rows: trained.prefix_rows })
}

struct Run<'a> {
    ds: &'a Dataset,
    prefix: &'a [Dense],
    new_layer: &'a Dense,
    head: &'a Dense,
    head_trains: bool,
    depth: usize,
    opts: &'a TrainOptions,
    state_key: String,
}

struct Trained {
    new_layer: Dense,
    head: Dense,
    epochs: Vec<EpochMetrics>,
    prefix_rows: usize,
    prefix_seconds: f64,
}

/// Rows per chunk when pushing data through frozen layers or evaluating.
const CHUNK: usize = 2500;

impl Run<'_> {
    /// The frozen prefix's output for a split, on the host: the images themselves at
    /// depth 1 (borrowed from the memory map), else computed once, here.
    fn features<D: Backend>(
        &self,
        dev: &D,
        prefix: &[Layer<D>],
        split: Split,
        rows: &mut usize,
    ) -> Result<(Cow<'_, [f32]>, Vec<u8>)> {
        let view = self.ds.split(split)?;
        let n = view.len();
        let feats = if prefix.is_empty() {
            view.images
        } else {
            *rows += n;
            Cow::Owned(features_host(dev, prefix, &view.images, n, CHUNK))
        };
        Ok((feats, view.labels.to_vec()))
    }

    fn go<D: Backend>(&self, dev: &D) -> Result<Trained> {
        let cfg = &self.opts.config;
        let classes = self.head.outputs;
        let t0 = Instant::now();
        let prefix: Vec<Layer<D>> = self.prefix.iter().map(|l| Layer::from_dense(l, dev)).collect();
        let mut prefix_rows = 0;
        let (x_train, y_train) = self.features(dev, &prefix, Split::Train, &mut prefix_rows)?;
        let (x_val, y_val) = self.features(dev, &prefix, Split::Val, &mut prefix_rows)?;
        drop(prefix);
        let prefix_seconds = t0.elapsed().as_secs_f64();
        let n = y_train.len();
        if n == 0 {
            bail!("{}: the train split is empty", self.ds.path().display());
        }
        let dim = x_train.len() / n;

        let mut layer = Layer::from_dense(self.new_layer, dev);
        let mut head = Layer::from_dense(self.head, dev);
        let mut adam = Adam::new(cfg.lr, cfg.beta1, cfg.beta2, cfg.epsilon);
        let mut order: Vec<usize> = (0..n).collect();
        let bs = cfg.batch_size.min(n);
        let batches = n.div_ceil(bs);
        let mut epochs = Vec::with_capacity(cfg.epochs);
        // An interrupted run of this same command left its state: continue from there.
        let state_path = self.opts.out.join(state::STATE_FILE);
        let mut first_epoch = 1;
        match state::load(&state_path, &self.state_key) {
            Ok(Some(st)) if st.epoch < cfg.epochs => {
                let restore = |l: &Layer<D>, (weight, bias): (Vec<f32>, Vec<f32>)| -> Result<Layer<D>> {
                    let (outputs, inputs) = *l.weight.shape();
                    if weight.len() != outputs * inputs || bias.len() != outputs {
                        bail!("{}: its tensors do not fit this depth", state_path.display());
                    }
                    Ok(Layer::from_dense(&Dense { inputs, outputs, weight, bias }, dev))
                };
                layer = restore(&layer, st.layer)?;
                head = restore(&head, st.head)?;
                adam.restore(st.adam_t, st.adam);
                epochs = st.epochs;
                first_epoch = st.epoch + 1;
                layerwise_core::progress::println(&format!(
                    "depth {}: resuming at epoch {first_epoch} of {} from the state an interrupted run left ({})",
                    self.depth,
                    cfg.epochs,
                    state_path.display()
                ));
            }
            Ok(_) => {}
            Err(why) => layerwise_core::progress::println(&format!(
                "depth {}: not resuming ({why:#}); training from epoch 1",
                self.depth
            )),
        }
        let mut bar = self.opts.progress.start(self.depth, cfg.epochs, batches);
        let epoch_rng = |epoch: usize| {
            rand_chacha::ChaCha8Rng::seed_from_u64(mix_seed(cfg.seed, &[self.depth as u64, 1000 + epoch as u64]))
        };
        // Each epoch shuffles the previous epoch's order: a resumed run replays the
        // shuffles of the epochs it skips, so its batches are the uninterrupted run's.
        for epoch in 1..first_epoch {
            order.shuffle(&mut epoch_rng(epoch));
        }
        for epoch in first_epoch..=cfg.epochs {
            let te = Instant::now();
            order.shuffle(&mut epoch_rng(epoch));
            let mut sums = EvalSums::new(classes);
            for (b, chunk) in order.chunks(bs).enumerate() {
                // Batches are gathered on the host and sent to the device whole: a memcpy
                // per row here, one transfer per batch on a GPU.
                let mut rows = Vec::with_capacity(chunk.len() * dim);
                let mut onehot = vec![0f32; chunk.len() * classes];
                for (j, &i) in chunk.iter().enumerate() {
                    rows.extend_from_slice(&x_train[i * dim..(i + 1) * dim]);
                    onehot[j * classes + y_train[i] as usize] = 1.0;
                }
                let xb: Matrix<D> = dev.tensor_from_vec(rows, (chunk.len(), dim));
                let yb: Matrix<D> = dev.tensor_from_vec(onehot, (chunk.len(), classes));
                // The new layer's pre-activation is computed without a tape and traced from
                // there: its weight gradient is then one product, gzᵀ·x, and no gradient is
                // ever computed for the input.
                let z = layer.apply(xb.clone());
                let zt = z.clone().traced(Gradients::leaky());
                let logits = head.apply_traced(zt.relu(), self.head_trains);
                let (logits, tape) = logits.split_tape();
                let host_logits = logits.as_vec();
                let batch_labels: Vec<u8> = chunk.iter().map(|&i| y_train[i]).collect();
                sums.add(&host_logits, &batch_labels);
                let loss = cross_entropy_with_logits_loss(logits.put_tape(tape), yb);
                let loss_value = loss.as_vec()[0];
                if !loss_value.is_finite() {
                    bail!(
                        "depth {}: the loss became {loss_value} at epoch {epoch}, batch {} of {batches}: training diverged; \
                         lower the learning rate (--lr) or check the dataset; no checkpoint was written",
                        self.depth, b + 1
                    );
                }
                let grads = loss.backward();
                let gz: Matrix<D> = grads.get(&z);
                let gw = gz.clone().permute().matmul(xb);
                let gb = gz.sum::<(usize,), Axis<0>>();
                adam.tick();
                adam.update(0, &mut layer.weight, &gw)?;
                adam.update(1, &mut layer.bias, &gb)?;
                if self.head_trains {
                    let (gw, gb) = (grads.get(&head.weight), grads.get(&head.bias));
                    adam.update(2, &mut head.weight, &gw)?;
                    adam.update(3, &mut head.bias, &gb)?;
                }
                bar.batch(b + 1, sums.loss(), sums.accuracy());
            }
            let val = layerwise_nn::evaluate(dev, std::slice::from_ref(&layer), &head, &x_val, &y_val, CHUNK);
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
            epochs.push(m);
            if epoch < cfg.epochs {
                let (adam_t, adam_moments) = adam.state();
                let (l, h) = (layer.to_dense(), head.to_dense());
                let st = state::TrainState {
                    format: state::STATE_FORMAT.into(),
                    version: state::STATE_VERSION,
                    key: self.state_key.clone(),
                    epoch,
                    layer: (l.weight, l.bias),
                    head: (h.weight, h.bias),
                    adam_t,
                    adam: adam_moments,
                    epochs: epochs.clone(),
                };
                state::save(&state_path, &st)?;
            }
        }
        bar.finish();
        Ok(Trained { new_layer: layer.to_dense(), head: head.to_dense(), epochs, prefix_rows, prefix_seconds })
    }
}

/// Bytes a depth's training needs, roughly: the new layer's weights six times over
/// (parameters, gradient, Adam's two moments, the fused host update's copies), the
/// activations of a batch and of an evaluation chunk, and the cached frozen features.
pub fn memory_needed(depth: usize, inputs: usize, width: usize, batch: usize, rows: usize) -> f64 {
    let (i, w) = (inputs as f64, width as f64);
    let features = if depth > 1 { rows as f64 * i } else { 0.0 };
    4.0 * (6.0 * i * w + 6.0 * batch as f64 * w + 2.0 * CHUNK as f64 * w + features)
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
/// (a huge width would otherwise abort on allocation, or be killed by the kernel).
fn check_memory(depth: usize, inputs: usize, width: usize, batch: usize, rows: usize) -> Result<()> {
    let need = memory_needed(depth, inputs, width, batch, rows);
    let gib = |b: f64| b / (1u64 << 30) as f64;
    if let Some(avail) = memory_available() {
        if need > avail {
            bail!(
                "depth {depth} with width {width} needs about {:.1} GiB of memory (a {inputs}×{width} layer, its gradient \
                 and Adam state, and the activations), but this machine has {:.1} GiB available: use a smaller --width",
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
