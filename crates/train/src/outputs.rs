//! What a training run leaves: the checkpoint (its metadata, the frozen and the trained
//! tensors), the new layer's features for the next depth, and `train.json`, written in an
//! order that never leaves a checkpoint without its history.

use crate::options::{TrainOptions, TrainOutcome};
use crate::pretrain::decoder_of;
use crate::run::Run;
use crate::state::{self, Pretrained};
use anyhow::Result;
use layerwise_core::atomic;
use layerwise_core::checkpoint::{checkpoint_bytes, CheckpointMeta, Dense, Mlp, CHECKPOINT_VERSION};
use layerwise_core::dataset::Dataset;
use layerwise_core::features::{write_features, FeaturesMeta, FEATURES_FILE, FEATURES_VERSION};
use layerwise_core::hash;
use layerwise_core::metrics::{EpochMetrics, Sealed, TrainHistory, TRAIN_SCHEMA, TRAIN_VERSION};
use layerwise_core::names::TensorPath;
use layerwise_core::run::{HISTORY_FILE, MODEL_FILE};
use std::time::Instant;

/// What an MLP depth trained, for its outputs.
pub(crate) struct Trained {
    /// The trained hidden layers.
    pub(crate) layers: Vec<Dense>,
    /// The output layer after training (the plan's when it is frozen).
    pub(crate) head: Dense,
    /// The history.
    pub(crate) epochs: Vec<EpochMetrics>,
    /// The epoch kept, where the loop keeps its best.
    pub(crate) best_epoch: Option<usize>,
    /// Rows pushed through the frozen layers, and their seconds.
    pub(crate) prefix_rows: usize,
    pub(crate) prefix_seconds: f64,
    /// Whether a saved state was used.
    pub(crate) resumed: bool,
    /// The autoencoder objective's pretraining: its epochs and the decoder.
    pub(crate) pretrained: Option<Pretrained>,
    /// The new layer's output over the train and validation splits, for the next depth
    /// (grown depths without augmentation).
    pub(crate) next_features: Option<(Vec<f32>, Vec<f32>)>,
}

/// Assemble and write the outputs of `run`, which trained `trained`, started at `started`.
pub(crate) fn write(run: &Run<'_>, trained: Trained, started: Instant) -> Result<TrainOutcome> {
    let Run { ds, plan, depth, opts, parent_sha, .. } = run;
    let (ds, plan, depth, opts, parent_sha) = (*ds, *plan, *depth, *opts, parent_sha.clone());
    let cfg = &opts.config;
    let first = plan.prefix.len();
    let n_trained = trained.layers.len();
    let mut hidden = plan.prefix.clone();
    hidden.extend(trained.layers);
    let model = Mlp { hidden, head: if plan.head_trains { trained.head } else { plan.head.clone() } };
    let mut frozen: Vec<TensorPath> = (0..first).map(TensorPath::hidden).collect();
    let mut trained_names: Vec<TensorPath> = (first..first + n_trained).map(TensorPath::hidden).collect();
    if plan.head_trains {
        trained_names.push(TensorPath::head())
    } else {
        frozen.push(TensorPath::head())
    }
    let mut trained_tensors = trained_names.iter().flat_map(TensorPath::pair).collect::<Vec<_>>();
    let (frozen, trained_names): (Vec<String>, Vec<String>) =
        (frozen.into_iter().map(String::from).collect(), trained_names.into_iter().map(String::from).collect());
    // The autoencoder's decoder goes into the checkpoint too (evaluation ignores it): a
    // bias, and a weight of its own when untied.
    let decoder_values = trained.pretrained.as_ref().map(|p| decoder_of(p, first));
    let decoder = decoder_values.as_ref().map(|(weight, bias)| {
        let [w, b] = TensorPath::decoder(first).pair();
        let (inputs, width) = (model.hidden[first].inputs, model.hidden[first].outputs);
        let mut t = Vec::new();
        if !weight.is_empty() {
            t.push((w, vec![inputs, width], weight.as_slice()));
        }
        t.push((b, vec![inputs], bias.as_slice()));
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
        input: Some(layerwise_core::input::InputContract::of_dataset(&ds.meta)),
        cnn: None,
        overrides: opts.overrides.clone(),
        schedule: None,
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
    let record = DepthRecord {
        depth,
        trainable_params,
        total_params: model.num_params(),
        frozen_features_seconds: trained.prefix_seconds + features_seconds,
        trained_tensors,
        best_epoch: trained.best_epoch,
        pretraining: trained.pretrained.as_ref().map(|p| p.epochs.clone()).unwrap_or_default(),
        epochs: trained.epochs,
        prefix_rows: trained.prefix_rows,
        resumed: trained.resumed,
    };
    write_depth(opts, ds, &bytes, checkpoint_sha, meta, record, started)
}

/// What a finished depth's history records that depends on the network and its loop.
pub(crate) struct DepthRecord {
    pub(crate) depth: usize,
    pub(crate) trainable_params: usize,
    pub(crate) total_params: usize,
    pub(crate) frozen_features_seconds: f64,
    pub(crate) trained_tensors: Vec<String>,
    pub(crate) best_epoch: Option<usize>,
    pub(crate) pretraining: Vec<layerwise_core::metrics::PretrainEpoch>,
    pub(crate) epochs: Vec<EpochMetrics>,
    /// Rows pushed through the frozen layers.
    pub(crate) prefix_rows: usize,
    /// Whether the run continued from an interrupted one's state.
    pub(crate) resumed: bool,
}

/// Write a finished depth, MLP or convolutional: `train.json` first, then the checkpoint
/// (`bytes`, hashing to `checkpoint_sha`), so a checkpoint on disk always has its history;
/// then the interrupted run's state goes, being of no more use.
pub(crate) fn write_depth(
    opts: &TrainOptions,
    ds: &Dataset,
    bytes: &[u8],
    checkpoint_sha: String,
    meta: CheckpointMeta,
    r: DepthRecord,
    started: Instant,
) -> Result<TrainOutcome> {
    let history = TrainHistory {
        schema: TRAIN_SCHEMA.into(),
        version: TRAIN_VERSION,
        depth: r.depth,
        checkpoint_sha256: checkpoint_sha,
        dataset_fingerprint: ds.meta.fingerprint.clone(),
        trainable_params: r.trainable_params,
        total_params: r.total_params,
        frozen_features_seconds: r.frozen_features_seconds,
        seconds: started.elapsed().as_secs_f64(),
        device: opts.device.name().into(),
        host: layerwise_core::metrics::host_name(),
        slurm_job_id: std::env::var("SLURM_JOB_ID").ok(),
        regime: opts.regime,
        trained_tensors: r.trained_tensors,
        best_epoch: r.best_epoch,
        pretraining: r.pretraining,
        epochs: r.epochs,
        content_sha256: None,
    }
    .sealed()?;
    let checkpoint = opts.out.join(MODEL_FILE);
    atomic::write_json_atomic(&opts.out.join(HISTORY_FILE), &history)?;
    atomic::write_bytes_atomic(&checkpoint, bytes)?;
    let _ = std::fs::remove_file(opts.out.join(state::STATE_FILE));
    Ok(TrainOutcome { checkpoint, meta, history, prefix_rows: r.prefix_rows, resumed: r.resumed })
}
