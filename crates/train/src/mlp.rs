//! An MLP's depth: its inputs (the frozen prefix's output, read from the parent's features
//! file or computed once), then the supervised loop, or the autoencoder objective's
//! pretraining and probe, through the one learner.

use crate::learner::{Learner, Loop};
use crate::options::{TrainOptions, TrainOutcome};
use crate::outputs::{self, Trained};
use crate::plan::plan;
use crate::run::Run;
use crate::state::{self, LoopState, Pretrained, TrainState, Training};
use crate::supervised::{RawBatches, Supervised};
use anyhow::{bail, Result};
use layerwise_core::checkpoint::{load_checkpoint, Dense};
use layerwise_core::config::{Augment, Objective, Regime};
use layerwise_core::dataset::{Dataset, Split};
use layerwise_core::hash;
use layerwise_core::metrics::EpochMetrics;
use layerwise_core::names::TensorPath;
use layerwise_nn::{dense_step, Backend, DenseSpec, Frozen, Named};
use std::borrow::Cow;
use std::time::Instant;

/// Train one MLP depth (or fine-tune one, or train a network from scratch) and write its
/// checkpoint and history.
pub(crate) fn train_mlp(opts: &TrainOptions, ds: &Dataset, started: Instant) -> Result<TrainOutcome> {
    let cfg = &opts.config;
    let (parent, parent_sha) = match &opts.from {
        None => (None, None),
        Some(p) => {
            let (model, meta) = load_checkpoint(p)?;
            meta.check_dataset(p, &ds.meta, &opts.data)?;
            (Some((model, meta)), Some(hash::sha256_file(p)?))
        }
    };
    let plan = plan(opts, ds, parent.as_ref())?;
    let depth = plan.depth;
    let state_key =
        state::RunKey::new(cfg, &ds.meta.fingerprint, parent_sha.as_deref(), depth, opts.device.name(), opts.regime);
    let run = Run { ds, plan: &plan, depth, opts, state_key, parent_sha: parent_sha.clone() };
    let trained = layerwise_nn::with_device!(opts.device, cfg.seed, |dev| run.go(&dev))?;
    outputs::write(&run, trained, started)
}

/// The layer `like` with the tensors `named` holds for `path` (checked to fit by the
/// state's validation; refused here too rather than trusted).
pub(crate) fn dense_from(named: &Named, path: &TensorPath, like: &Dense) -> Result<Dense> {
    let get = |name: String, len: usize| -> Result<Vec<f32>> {
        match named.iter().find(|(n, _)| *n == name) {
            Some((_, v)) if v.len() == len => Ok(v.clone()),
            _ => bail!("internal: no tensor `{name}` of {len} values"),
        }
    };
    let [w, b] = path.pair();
    Ok(Dense {
        inputs: like.inputs,
        outputs: like.outputs,
        weight: get(w, like.inputs * like.outputs)?,
        bias: get(b, like.outputs)?,
    })
}

/// What a supervised loop trained.
struct SupervisedOut {
    prefix_rows: usize,
    prefix_seconds: f64,
    layers: Vec<Dense>,
    head: Dense,
    epochs: Vec<EpochMetrics>,
    best_epoch: Option<usize>,
}

/// A supervised loop's inputs: the fixed input of its first trainable layer, on the host,
/// for the train and validation splits, and the frozen layers to apply per batch (only
/// when augmentation changes the images every batch).
struct Inputs<'x> {
    x_train: &'x [f32],
    y_train: &'x [u8],
    x_val: &'x [f32],
    y_val: &'x [u8],
    per_batch: &'x [Dense],
}

impl Run<'_> {
    pub(crate) fn go<D: Backend + 'static>(&self, dev: &D) -> Result<Trained> {
        let cfg = &self.opts.config;
        let plan = self.plan;
        let t0 = Instant::now();
        let prefix = Frozen::new(dev, &plan.prefix);
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
        let prefix_seconds = t0.elapsed().as_secs_f64();
        if y_train.is_empty() {
            bail!("{}: the train split is empty", self.ds.path().display());
        }
        let saved = self.saved_state().map(|s| s.training);
        let resumed = saved.is_some();
        let per_batch = if augment { &plan.prefix[..] } else { &[] };
        match cfg.objective {
            Objective::Supervised => {
                let inputs = Inputs { x_train: &x_train, y_train: &y_train, x_val: &x_val, y_val: &y_val, per_batch };
                let saved = match saved {
                    Some(Training::Supervised(s)) => Some(s),
                    _ => None,
                };
                let s = self.supervised(dev, &inputs, &plan.trainable, &plan.head, plan.head_trains, saved, None)?;
                // The new layer's output, for the next depth (frozen-feature time too).
                let t1 = Instant::now();
                let next_features = (self.opts.regime == Regime::Grow && !augment).then(|| {
                    let layer = Frozen::new(dev, &s.layers[..1]);
                    (layer.apply(&x_train, y_train.len()), layer.apply(&x_val, y_val.len()))
                });
                let prefix_seconds = prefix_seconds + s.prefix_seconds + t1.elapsed().as_secs_f64();
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
                    Some(Training::Autoencoder { pretrained, probe }) => (Some(pretrained), probe),
                    _ => (None, None),
                };
                // Pretraining reads the inputs, never the labels.
                let pretrained = self.pretrain(dev, &x_train, &x_val, saved_pretraining)?;
                let like = &plan.trainable[0];
                let encoder = dense_from(&pretrained.tensors, &TensorPath::hidden(plan.prefix.len()), like)?;
                let layer = [encoder.clone()];
                let layer = Frozen::new(dev, &layer);
                // The probe: a softmax layer on the frozen stack's features, with labels.
                let (n_train, n_val) = (y_train.len(), y_val.len());
                let t1 = Instant::now();
                let f_train = layer.apply(&x_train, n_train);
                let f_val = layer.apply(&x_val, n_val);
                let prefix_seconds = prefix_seconds + t1.elapsed().as_secs_f64();
                drop((x_train, x_val));
                let inputs =
                    Inputs { x_train: &f_train, y_train: &y_train, x_val: &f_val, y_val: &y_val, per_batch: &[] };
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

    /// The supervised loop: train `trainable` (and `head` when `head_trains`) with the
    /// labels, from a saved state when there is one. `pretrained` (the autoencoder
    /// objective's, for its probe) goes into every state written.
    #[allow(clippy::too_many_arguments)]
    fn supervised<D: Backend + 'static>(
        &self,
        dev: &D,
        inputs: &Inputs<'_>,
        trainable: &[Dense],
        head0: &Dense,
        head_trains: bool,
        saved: Option<LoopState<EpochMetrics>>,
        pretrained: Option<&Pretrained>,
    ) -> Result<SupervisedOut> {
        let cfg = &self.opts.config;
        let probe = pretrained.is_some();
        let total_epochs = if probe { cfg.probe_epochs() } else { cfg.epochs };
        let Inputs { x_train, y_train, x_val, y_val, per_batch } = *inputs;
        let n = y_train.len();
        let first = self.plan.prefix.len();
        let paths: Vec<TensorPath> = (first..first + trainable.len()).map(TensorPath::hidden).collect();
        // An interrupted run of this same command left its state: continue from there.
        let saved = saved.filter(|st| st.epoch >= 1 && st.epoch < total_epochs);
        let (start_layers, start_head, restored) = match &saved {
            Some(st) => (
                trainable.iter().zip(&paths).map(|(l, p)| dense_from(&st.tensors, p, l)).collect::<Result<Vec<_>>>()?,
                dense_from(&st.tensors, &TensorPath::head(), head0)?,
                Some((st.optimizer_t, st.optimizer.clone())),
            ),
            None => (trainable.to_vec(), head0.clone(), None),
        };
        let state_path = self.opts.out.join(state::STATE_FILE);
        let learner = Learner {
            config: cfg,
            depth: self.depth,
            kind: if probe { Loop::Probe } else { Loop::Dense(self.opts.regime) },
            epochs: total_epochs,
            rows: n,
            progress: self.opts.progress,
            state_path: &state_path,
        };
        let mut step = dense_step(
            dev,
            D::KERNELS,
            DenseSpec {
                frozen: per_batch,
                trainable: &start_layers,
                head: &start_head,
                head_trains,
                names: paths.iter().map(TensorPath::pair).collect(),
                dropout: cfg.dropout,
                weight_decay: cfg.weight_decay,
                optimizer: cfg.optimizer_spec(),
                batch: learner.batches().0,
                restored,
            },
        );
        // Without augmentation the step keeps the split (a GPU: resident) and gathers each
        // batch itself; augmented batches are made on the host.
        let augment = cfg.augment == Augment::FlipCrop;
        let raw = augment.then(|| RawBatches {
            x: x_train,
            labels: y_train,
            flip_crop: Some(self.ds.meta.image_shape),
            prefix_cost: per_batch.len(),
        });
        if raw.is_none() {
            step.keep_train(Cow::Borrowed(x_train), y_train)?;
        }
        step.keep_val(Cow::Borrowed(x_val), y_val)?;
        let mut l = Supervised::new(step.as_mut(), raw, n);
        let learned = learner.run(&mut l, saved, |st| {
            let training = match pretrained {
                Some(p) => Training::Autoencoder { pretrained: p.clone(), probe: Some(st) },
                None => Training::Supervised(st),
            };
            state::save(&state_path, &TrainState::new(&self.state_key, training))
        })?;
        let (prefix_rows, prefix_seconds) = (l.prefix_rows, l.prefix_seconds);
        let epochs = learned.epochs.clone();
        let (kept, best_epoch) = learned.kept();
        Ok(SupervisedOut {
            prefix_rows,
            prefix_seconds,
            layers: trainable.iter().zip(&paths).map(|(l, p)| dense_from(&kept, p, l)).collect::<Result<_>>()?,
            head: dense_from(&kept, &TensorPath::head(), head0)?,
            epochs,
            best_epoch,
        })
    }
}
