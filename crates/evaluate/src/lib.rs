//! The evaluation stage: one checkpoint on one split of a prepared dataset, written as
//! JSON (`loss`, `accuracy`, `per_class_accuracy`, `confusion`), without a tape and in
//! large batches.
//!
//! # Brief overview
//! - [`EvaluateOptions`] names the checkpoint, dataset, split and output file.
//! - [`evaluate`] refuses a checkpoint trained on another dataset, then writes the
//!   [`Evaluation`] atomically.
#![deny(missing_docs)]

pub mod cli;
use anyhow::Result;
use layerwise_core::checkpoint::{load_network, Network};
use layerwise_core::dataset::{Dataset, Split};
use layerwise_core::hash::sha256_file;
use layerwise_core::metrics::{write_sealed, Evaluation, EVAL_SCHEMA, EVAL_VERSION};
use layerwise_nn::device::DeviceKind;
use layerwise_nn::{Backend, EvalSums};
use std::path::PathBuf;
use std::time::Instant;

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct EvaluateOptions {
    /// Checkpoint.
    pub model: PathBuf,
    /// Prepared dataset.
    pub data: PathBuf,
    /// Split.
    pub split: Split,
    /// Output JSON (None: only return the result).
    pub out: Option<PathBuf>,
    /// Device.
    pub device: DeviceKind,
}

/// Evaluate and (if asked) write the JSON.
pub fn evaluate(opts: &EvaluateOptions) -> Result<Evaluation> {
    let start = Instant::now();
    let ds = Dataset::open(&opts.data)?;
    let (model, meta) = load_network(&opts.model)?;
    meta.check_dataset(&opts.model, &ds.meta, &opts.data)?;
    let split = ds.split(opts.split)?;
    if split.labels.is_empty() {
        anyhow::bail!(
            "{}: its {} split holds no images: nothing to evaluate (prepare the dataset with that split, or \
             evaluate another one with --split)",
            opts.data.display(),
            opts.split
        );
    }
    let sums = match &model {
        Network::Mlp(mlp) => layerwise_nn::with_device!(opts.device, 0, |dev| Ok::<_, anyhow::Error>(run(
            &dev,
            mlp,
            &split.images,
            split.labels
        )))?,
        Network::Cnn(cnn) => layerwise_nn::with_device!(opts.device, 0, |dev| Ok::<_, anyhow::Error>(
            layerwise_nn::convnet::evaluate_cnn(&dev, cnn, &split.images, split.labels)
        ))?,
    };
    // A NaN or infinite loss means the network computes garbage (a damaged or crafted
    // checkpoint: a running variance of 0 with a huge γ, say): never a result to record.
    if !sums.loss().is_finite() {
        anyhow::bail!(
            "{}: its loss on the {} split of {} is {} (accuracy {:.4}): the network's outputs are not finite numbers, so \
             this is no evaluation; the checkpoint is damaged or its weights diverged (retrain it, or check it with \
             scripts/cnn-forward.py)",
            opts.model.display(),
            opts.split,
            opts.data.display(),
            sums.loss(),
            sums.accuracy()
        );
    }
    let per_class_accuracy = sums
        .confusion
        .iter()
        .enumerate()
        .map(|(c, row)| row[c] as f64 / row.iter().sum::<u64>().max(1) as f64)
        .collect();
    let eval = Evaluation {
        schema: EVAL_SCHEMA.into(),
        version: EVAL_VERSION,
        split: opts.split,
        depth: meta.depth,
        checkpoint_sha256: sha256_file(&opts.model)?,
        dataset_fingerprint: ds.meta.fingerprint.clone(),
        samples: sums.samples as usize,
        loss: sums.loss(),
        accuracy: sums.accuracy(),
        classes: ds.meta.classes.clone(),
        per_class_accuracy,
        confusion: sums.confusion,
        seconds: start.elapsed().as_secs_f64(),
        content_sha256: None,
    };
    if let Some(out) = &opts.out {
        write_sealed(out, &eval)?;
    }
    Ok(eval)
}

fn run<D: Backend + 'static>(
    dev: &D,
    model: &layerwise_core::checkpoint::Mlp,
    images: &[f32],
    labels: &[u8],
) -> EvalSums {
    layerwise_nn::evaluate_dense(dev, &model.hidden, &model.head, images, labels)
}
