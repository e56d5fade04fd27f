//! Convolutional stages (`[model] kind = "cnn"`): the regimes for a network of conv
//! stages with an auxiliary head. `grow` loads the parent, freezes its stages (BatchNorm in
//! inference mode), appends the next stage of the stage list and a fresh head, and trains
//! those; `finetune` trains every stage and the head; `scratch` a fresh network of
//! `--depth` stages. The frozen stages' output is computed once and cached when
//! augmentation is off and it fits in memory, else recomputed for every batch.

use crate::learner::{Learner, Loop};
use crate::options::{TrainOptions, TrainOutcome};
use crate::outputs;
use crate::plan;
use crate::progress::Progress;
use crate::state::{self, TrainState, Training};
use crate::supervised::{RawBatches, Supervised};
use anyhow::{bail, Context, Result};
use layerwise_core::checkpoint::{cnn_checkpoint_bytes, load_cnn, CheckpointMeta, CnnMeta, CNN_CHECKPOINT_VERSION};
use layerwise_core::cnn::{Cnn, CnnHead, CnnSpec, ConvStage, HEAD_POOL};
use layerwise_core::config::{Augment, Regime, TrainConfig};
use layerwise_core::dataset::{Dataset, Split};
use layerwise_core::features::FEATURES_FILE;
use layerwise_core::metrics::EpochMetrics;
use layerwise_core::names::TensorPath;
use layerwise_core::{hash, mix_seed};
use layerwise_nn::convnet::{self, cnn_tensors, cnn_with_tensors, ConvNet, ConvSettings};
use layerwise_nn::Backend;
use std::borrow::Cow;
use std::time::Instant;

/// A convolutional run's network: what it starts from, and the first stage it trains.
pub(crate) struct ConvPlan {
    pub(crate) depth: usize,
    pub(crate) net: Cnn,
    pub(crate) first: usize,
    pub(crate) parent_sha: Option<String>,
}

/// A fresh auxiliary head on `channels` channels for depth `depth`: the same seeds for
/// every schedule.
pub(crate) fn fresh_head(cfg: &TrainConfig, spec: &CnnSpec, classes: usize, channels: usize, depth: usize) -> CnnHead {
    CnnHead {
        convs: (0..spec.head_convs)
            .map(|j| convnet::new_block(channels, channels, mix_seed(cfg.seed, &[depth as u64, 300 + j as u64])))
            .collect(),
        linear: convnet::new_linear(
            channels * HEAD_POOL * HEAD_POOL,
            classes,
            mix_seed(cfg.seed, &[depth as u64, 399]),
        ),
    }
}

/// Stage `i` (0-based) of the stage list, fresh, its block on `shapes[i]` (the stages'
/// block inputs, [`CnnSpec::conv_inputs`]), from `seed`.
pub(crate) fn fresh_stage(spec: &CnnSpec, shapes: &[[usize; 3]], i: usize, seed: u64) -> ConvStage {
    ConvStage {
        downsample: spec.stages[i].downsample,
        conv: convnet::new_block(shapes[i][0], spec.stages[i].out, seed),
    }
}

/// The seed of stage `i`'s fresh block when depth `i + 1` grows it.
pub(crate) fn grown_stage_seed(cfg: &TrainConfig, i: usize) -> u64 {
    mix_seed(cfg.seed, &[i as u64 + 1, 200])
}

fn plan(opts: &TrainOptions, ds: &Dataset, spec: &CnnSpec) -> Result<ConvPlan> {
    let cfg = &opts.config;
    let image = ds.meta.image_shape;
    let shapes = spec.conv_inputs(image).context("the pipeline's [model] stages do not fit the dataset's images")?;
    let classes = ds.meta.num_classes();
    let fresh_head = |channels: usize, depth: usize| fresh_head(cfg, spec, classes, channels, depth);
    let stage = |i: usize, seed: u64| fresh_stage(spec, &shapes, i, seed);
    let parent = match &opts.from {
        None => None,
        Some(p) => {
            let (model, meta) = load_cnn(p)?;
            meta.check_dataset(p, &ds.meta, &opts.data)?;
            Some((model, hash::sha256_file(p)?, p))
        }
    };
    if opts.depth.is_some() && opts.regime != Regime::Scratch {
        bail!("--depth sets the size of a `scratch` network; `{}` takes its depth from --from", opts.regime.name());
    }
    let too_deep = |depth: usize| {
        anyhow::anyhow!(
            "depth {depth} needs stage {depth} of the stage list, but `model.stages` lists {}: list more stages",
            layerwise_core::plural(spec.stages.len(), "stage")
        )
    };
    match (opts.regime, parent) {
        (Regime::Grow, None) => Ok(ConvPlan {
            depth: 1,
            net: Cnn {
                input: image,
                stages: vec![stage(0, grown_stage_seed(cfg, 0))],
                head: fresh_head(spec.stages[0].out, 1),
            },
            first: 0,
            parent_sha: None,
        }),
        (Regime::Grow, Some((model, sha, path))) => {
            let depth = model.depth() + 1;
            if depth > spec.stages.len() {
                return Err(too_deep(depth));
            }
            let have = model.spec().stages;
            if have[..] != spec.stages[..depth - 1] {
                bail!(
                    "{} has the stages {}, but the stage list begins {}: grow it with the stage list it was trained \
                     with",
                    path.display(),
                    list(&have),
                    list(&spec.stages[..depth - 1])
                );
            }
            let mut stages = model.stages;
            stages.push(stage(depth - 1, grown_stage_seed(cfg, depth - 1)));
            Ok(ConvPlan {
                depth,
                net: Cnn { input: image, stages, head: fresh_head(spec.stages[depth - 1].out, depth) },
                first: depth - 1,
                parent_sha: Some(sha),
            })
        }
        (Regime::Finetune, Some((model, sha, _))) => {
            Ok(ConvPlan { depth: model.depth(), net: model, first: 0, parent_sha: Some(sha) })
        }
        (Regime::Finetune, None) | (Regime::Scratch, Some(_)) => Err(plan::wrong_from(opts.regime)),
        (Regime::Scratch, None) => {
            let depth = plan::scratch_depth(opts)?;
            if depth > spec.stages.len() {
                return Err(too_deep(depth));
            }
            let stages = (0..depth).map(|i| stage(i, mix_seed(cfg.seed, &[depth as u64, 500 + i as u64]))).collect();
            Ok(ConvPlan {
                depth,
                net: Cnn { input: image, stages, head: fresh_head(spec.stages[depth - 1].out, depth) },
                first: 0,
                parent_sha: None,
            })
        }
    }
}

fn list(stages: &[layerwise_core::cnn::StageSpec]) -> String {
    format!("[{}]", stages.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", "))
}

/// Train one convolutional depth (or fine-tune one, or a network from scratch) and write
/// its checkpoint (version 2) and history.
pub(crate) fn train_cnn(opts: &TrainOptions, ds: &Dataset, spec: &CnnSpec, started: Instant) -> Result<TrainOutcome> {
    let p = plan(opts, ds, spec)?;
    layerwise_nn::with_device!(opts.device, opts.config.seed, |dev| train_on(&dev, opts, ds, spec, &p, started))
}

/// [`train_cnn`] on device `dev` (the host kernels on the CPU; see
/// [`convnet::conv_step`]).
fn train_on<D: Backend + 'static>(
    dev: &D,
    opts: &TrainOptions,
    ds: &Dataset,
    spec: &CnnSpec,
    p: &ConvPlan,
    started: Instant,
) -> Result<TrainOutcome> {
    let cfg = &opts.config;
    let (depth, first) = (p.depth, p.first);
    convnet::keep_buffers_resident();
    let say = |text: &str| {
        if opts.progress != Progress::Quiet {
            layerwise_core::progress::println(&format!("depth {depth}: {text}"));
        }
    };
    let state_key =
        state::RunKey::new(cfg, &ds.meta.fingerprint, p.parent_sha.as_deref(), depth, opts.device.name(), opts.regime);
    let n = ds.meta.split_sizes.train;
    if n == 0 {
        bail!("{}: the train split is empty", ds.path().display());
    }
    let bs = cfg.batch_size.min(n);
    let batches = n.div_ceil(bs);
    let total_epochs = cfg.epochs;
    // The frozen stages' output: cached (train and validation) when the images do not
    // change per batch and it fits; else recomputed per batch from the images.
    let augment = cfg.augment == Augment::FlipCrop;
    let shapes = spec.conv_inputs(ds.meta.image_shape)?;
    let per_image: usize = shapes[first].iter().product();
    let cache_bytes = 4.0 * per_image as f64 * (n + ds.meta.split_sizes.val) as f64;
    let batch_bytes = batch_memory(&p.net, &shapes, first, bs);
    plan::fits_memory(depth, cache_bytes, batch_bytes, bs)?;
    let cache = !augment;
    if first > 0 && augment {
        say(&format!(
            "augmentation ({}) is on: the frozen stages' outputs are recomputed for every batch",
            cfg.augment.name()
        ));
    }

    // The optimizer, and a state an interrupted run of this command left.
    let settings = ConvSettings::of(cfg);
    // The optimizer's tensors are saved tensors, of the same sizes (the trainers' layouts
    // only reorder them).
    let saved_sizes: Vec<(String, usize)> = cnn_tensors(&p.net, first).into_iter().map(|(n, v)| (n, v.len())).collect();
    let optimized: Vec<(String, usize)> = convnet::trainable_names(p.net.depth(), first, spec.head_convs)
        .into_iter()
        .map(|n| {
            let len = saved_sizes.iter().find(|(s, _)| *s == n).map_or(0, |(_, len)| *len);
            (n, len)
        })
        .collect();
    let expect = state::ExpectRun {
        main: state::Expect {
            epochs: total_epochs,
            batches,
            tensors: saved_sizes,
            optimized,
            second: cfg.optimizer_spec().buffers() == 2,
        },
        pretrain: None,
    };
    let state_path = opts.out.join(state::STATE_FILE);
    let saved = match state::load(&state_path, &state_key, expect.max_bytes())
        .and_then(|s| s.map(|st| state::validate(&st, &expect).map(|()| st)).transpose())
    {
        Ok(Some(TrainState { training: Training::Supervised(c), .. })) => Some(c),
        Ok(_) => None,
        Err(why) => {
            say(&format!("not resuming ({why:#}); training from epoch 1"));
            None
        }
    };
    let resumed = saved.is_some();
    let (net, restored) = match &saved {
        Some(c) => (cnn_with_tensors(&p.net, first, &c.tensors)?, Some((c.optimizer_t, c.optimizer.clone()))),
        None => (p.net.clone(), None),
    };
    let mut step = convnet::conv_step(dev, D::KERNELS, ConvNet::from_cnn(&net), first, &settings, restored);
    let t_prefix = Instant::now();
    let train_view = ds.split(Split::Train)?;
    let val_view = ds.split(Split::Val)?;
    let val_x = step.prefix(&val_view.images, val_view.len());
    step.keep_val(Cow::Owned(val_x), val_view.labels)?;
    if cache {
        let x = step.prefix(&train_view.images, n);
        step.keep_train(Cow::Owned(x), train_view.labels)?;
    }
    let prefix_rows = if first > 0 { val_view.len() + if cache { n } else { 0 } } else { 0 };
    let prefix_seconds = t_prefix.elapsed().as_secs_f64();

    let learner = Learner {
        config: cfg,
        depth,
        kind: Loop::Conv(opts.regime),
        epochs: total_epochs,
        rows: n,
        progress: opts.progress,
        state_path: &state_path,
    };
    let raw = (!cache).then(|| RawBatches {
        x: &train_view.images,
        labels: train_view.labels,
        flip_crop: augment.then_some(ds.meta.image_shape),
        prefix_cost: usize::from(first > 0),
    });
    let mut l = Supervised::new(step.as_mut(), raw, n);
    let learned = learner
        .run(&mut l, saved, |st| state::save(&state_path, &TrainState::new(&state_key, Training::Supervised(st))))?;
    let (prefix_rows, prefix_seconds) = (prefix_rows + l.prefix_rows, prefix_seconds + l.prefix_seconds);
    let epochs = learned.epochs.clone();
    let (kept, best_epoch) = learned.kept();
    let model = cnn_with_tensors(&p.net, first, &kept)?;
    write(opts, ds, p, model, epochs, best_epoch, (prefix_rows, prefix_seconds, resumed), started, None)
}

/// Bytes one training batch takes, roughly: per trained block its patches, its
/// convolution's output, BatchNorm's and ReLU's, and their gradients.
fn batch_memory(net: &Cnn, shapes: &[[usize; 3]], first: usize, batch: usize) -> f64 {
    let mut total = 0.0;
    for (s, [c, h, w]) in net.stages.iter().zip(shapes).skip(first) {
        let px = (batch * h * w) as f64;
        total += 4.0 * px * (2.0 * 9.0 * *c as f64 + 5.0 * s.conv.outputs as f64);
    }
    total
}

/// Write depth `p.depth`'s checkpoint and history; `schedule` says how the greedy loop
/// trained it where not one depth after another.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write(
    opts: &TrainOptions,
    ds: &Dataset,
    p: &ConvPlan,
    model: Cnn,
    epochs: Vec<EpochMetrics>,
    best_epoch: Option<usize>,
    (prefix_rows, prefix_seconds, resumed): (usize, f64, bool),
    started: Instant,
    schedule: Option<String>,
) -> Result<TrainOutcome> {
    let cfg = &opts.config;
    let first = p.first;
    let frozen: Vec<String> = (0..first).map(|i| TensorPath::stage(i).into()).collect();
    let mut trained: Vec<String> = (first..model.depth()).map(|i| TensorPath::stage(i).into()).collect();
    trained.push(TensorPath::head().into());
    let trained_tensors = convnet::trainable_names(model.depth(), first, model.head.convs.len());
    let trainable_params = model.stages[first..].iter().map(|s| s.conv.num_params()).sum::<usize>()
        + model.head.convs.iter().map(|b| b.num_params()).sum::<usize>()
        + model.head.linear.num_params();
    let meta = CheckpointMeta {
        version: CNN_CHECKPOINT_VERSION,
        depth: model.depth(),
        input_size: model.input_size(),
        widths: model.widths(),
        activation: "relu".into(),
        classes: ds.meta.classes.clone(),
        frozen,
        trained,
        trainable_params,
        dataset_fingerprint: ds.meta.fingerprint.clone(),
        dataset_name: ds.meta.name.clone(),
        parent_sha256: p.parent_sha.clone(),
        config: cfg.clone(),
        device: opts.device.name().into(),
        regime: opts.regime,
        input: Some(layerwise_core::input::InputContract::of_dataset(&ds.meta)),
        cnn: Some(CnnMeta::of(&model)),
        overrides: opts.overrides.clone(),
        schedule,
    };
    let bytes = cnn_checkpoint_bytes(&model, &meta)?;
    let checkpoint_sha = hash::sha256_hex(&bytes);
    // A convolutional depth leaves no features file: the next depth recomputes the frozen
    // stages from the images.
    let _ = std::fs::remove_file(opts.out.join(FEATURES_FILE));
    let record = outputs::DepthRecord {
        depth: p.depth,
        trainable_params,
        total_params: model.num_params(),
        frozen_features_seconds: prefix_seconds,
        trained_tensors,
        best_epoch,
        pretraining: Vec::new(),
        epochs,
        prefix_rows,
        resumed,
    };
    outputs::write_depth(opts, ds, &bytes, checkpoint_sha, meta, record, started)
}
