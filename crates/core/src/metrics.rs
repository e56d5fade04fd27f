//! Metrics JSON documents: the training history of one depth (`train.json`) and an
//! evaluation (`eval.json`). Each carries `schema` and `version` so a reader can refuse a
//! document it does not understand.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::dataset::Split;

/// `schema` of a training history.
pub const TRAIN_SCHEMA: &str = "layerwise-train-history";
/// `schema` of an evaluation.
pub const EVAL_SCHEMA: &str = "layerwise-evaluation";
/// Version of the training history: 2 added `pretraining` (the autoencoder objective's
/// epochs), 3 the `content_sha256` seal. Older histories read as they are.
pub const TRAIN_VERSION: u32 = 3;
/// Version of the evaluation: 2 added the `content_sha256` seal.
pub const EVAL_VERSION: u32 = 2;
/// The first version of each document that carries (and must carry) its seal.
const SEALED_FROM: [(&str, u32); 2] = [(TRAIN_SCHEMA, 3), (EVAL_SCHEMA, 2)];

/// One epoch of unsupervised pretraining (the autoencoder objective): the mean squared
/// error between the clean input and its reconstruction from the corrupted input, on the
/// training split (weights changing, as Keras reports) and on the validation split after
/// the epoch (with fixed masks, the same every epoch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainEpoch {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean reconstruction loss over the epoch's batches.
    pub reconstruction_loss: f64,
    /// Reconstruction loss of the validation split after the epoch.
    pub val_reconstruction_loss: f64,
    /// Wall seconds of the epoch.
    pub seconds: f64,
}

/// One epoch of training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches (weights changing, as Keras reports).
    pub train_loss: f64,
    /// Training accuracy over the epoch.
    pub train_accuracy: f64,
    /// Validation loss after the epoch.
    pub val_loss: f64,
    /// Validation accuracy after the epoch.
    pub val_accuracy: f64,
    /// Wall seconds of the epoch (training and validation).
    pub seconds: f64,
    /// Training samples per second.
    pub samples_per_second: f64,
}

/// The training history of one depth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainHistory {
    /// [`TRAIN_SCHEMA`].
    pub schema: String,
    /// [`TRAIN_VERSION`].
    pub version: u32,
    /// Depth trained.
    pub depth: usize,
    /// SHA-256 of the checkpoint this run wrote.
    pub checkpoint_sha256: String,
    /// Dataset fingerprint.
    pub dataset_fingerprint: String,
    /// Trainable parameters.
    pub trainable_params: usize,
    /// All parameters.
    pub total_params: usize,
    /// Seconds spent on frozen features: reading (or computing) the new layer's input
    /// once per depth, and computing and writing its output for the next depth.
    pub frozen_features_seconds: f64,
    /// Wall seconds of the whole run.
    pub seconds: f64,
    /// Device used.
    pub device: String,
    /// The machine that trained this depth (its host name), when known. Absent in
    /// histories written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The Slurm job that trained this depth (`SLURM_JOB_ID`), when it ran under Slurm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm_job_id: Option<String>,
    /// The regime that trained it (histories written before regimes existed: grow).
    #[serde(default)]
    pub regime: crate::config::Regime,
    /// The tensors that trained, named as in the checkpoint (`hidden.2.weight`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trained_tensors: Vec<String>,
    /// The epoch whose weights the checkpoint holds, when not the last (fine-tuning keeps
    /// the epoch with the best validation accuracy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_epoch: Option<usize>,
    /// The autoencoder objective's pretraining epochs (no labels read), before `epochs`,
    /// which are then its probe's. Empty for the supervised objective.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pretraining: Vec<PretrainEpoch>,
    /// One entry per supervised epoch (the probe's, after autoencoder pretraining).
    pub epochs: Vec<EpochMetrics>,
    /// The seal: SHA-256 of the document as written without it (see [`Sealed`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_sha256: Option<String>,
}

/// An evaluation of one checkpoint on one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// [`EVAL_SCHEMA`].
    pub schema: String,
    /// [`EVAL_VERSION`].
    pub version: u32,
    /// Split evaluated.
    pub split: Split,
    /// Depth of the checkpoint.
    pub depth: usize,
    /// SHA-256 of the checkpoint evaluated.
    pub checkpoint_sha256: String,
    /// Dataset fingerprint.
    pub dataset_fingerprint: String,
    /// Images evaluated.
    pub samples: usize,
    /// Mean softmax cross-entropy.
    pub loss: f64,
    /// Fraction correct.
    pub accuracy: f64,
    /// Class names, index = label.
    pub classes: Vec<String>,
    /// Accuracy per true class.
    pub per_class_accuracy: Vec<f64>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<u64>>,
    /// Wall seconds.
    pub seconds: f64,
    /// The seal: SHA-256 of the document as written without it (see [`Sealed`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_sha256: Option<String>,
}

/// A JSON document that carries a hash of its own content, `content_sha256`: the SHA-256
/// of its pretty-printed JSON without that field. Its reader prints the document again
/// without the field and compares: a value changed by hand or by damage is refused, while
/// a file re-indented by an editor still reads. (serde_json prints every float so that it
/// parses back to the same bits, so the print is exact.)
pub trait Sealed: Serialize + Sized {
    /// The seal's field.
    fn seal_field(&mut self) -> &mut Option<String>;

    /// The hash of the document without its seal.
    fn content_hash(&self) -> Result<String>
    where
        Self: Clone,
    {
        let mut bare = self.clone();
        *bare.seal_field() = None;
        let text = serde_json::to_string_pretty(&bare).context("cannot serialize a metrics document")?;
        Ok(crate::hash::sha256_hex(text.as_bytes()))
    }

    /// The document with its seal set, ready to write.
    fn sealed(mut self) -> Result<Self>
    where
        Self: Clone,
    {
        *self.seal_field() = Some(self.content_hash()?);
        Ok(self)
    }
}

impl Sealed for TrainHistory {
    fn seal_field(&mut self) -> &mut Option<String> {
        &mut self.content_sha256
    }
}

impl Sealed for Evaluation {
    fn seal_field(&mut self) -> &mut Option<String> {
        &mut self.content_sha256
    }
}

/// Write a metrics document atomically, sealed.
pub fn write_sealed<T: Sealed + Clone>(path: &Path, doc: &T) -> Result<()> {
    crate::atomic::write_json_atomic(path, &doc.clone().sealed()?)
}

/// This machine's host name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`), recorded in
/// `train.json` so a report can say where each depth ran.
pub fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// Where patience stops a greedy loop: given the `(depth, validation accuracy)` pairs
/// trained so far (in depth order), whether the loop stops after the last of them, and
/// the best depth it stops on. It stops once the best depth lies `patience` depths back
/// (patience 0 never stops) and the last depth is below `max_depth`. The local loop and
/// the Slurm gate both decide with this, so a chain stops where a local run does.
pub fn patience_stop(depths: &[(usize, f64)], patience: usize, max_depth: usize) -> Option<usize> {
    let &(last, _) = depths.last()?;
    let (best, _) = best_by_validation(depths.iter().copied())?;
    (patience > 0 && last - best >= patience && last < max_depth).then_some(best)
}

/// The best of `(depth, validation accuracy)` pairs: the highest accuracy, the first one
/// on a tie (a deeper network must strictly improve to be preferred). The greedy loop and
/// the report both choose with this, on validation accuracy, never on test accuracy.
pub fn best_by_validation(depths: impl IntoIterator<Item = (usize, f64)>) -> Option<(usize, f64)> {
    depths.into_iter().fold(None, |best, (d, acc)| match best {
        Some((_, b)) if b >= acc => best,
        _ => Some((d, acc)),
    })
}

/// Read a JSON document of `schema`, versions 1 to `newest` (each version only adds
/// optional fields, so older documents read as they are); a newer one is refused.
fn read_json<T: serde::de::DeserializeOwned + Sealed + Clone>(
    path: &Path,
    schema: &str,
    newest: u32,
    get: fn(&T) -> (&str, u32),
) -> Result<T> {
    let text = crate::fsread::read_text_capped(path, schema, crate::fsread::MAX_JSON_BYTES)?;
    let value: T = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a layerwise `{schema}` document (or is damaged)", path.display()))?;
    let (found, version) = get(&value);
    if found != schema {
        bail!("{}: schema `{found}`, expected `{schema}`", path.display());
    }
    if !(1..=newest).contains(&version) {
        bail!(
            "{}: `{schema}` version {version}, but this layerwise reads versions 1 to {newest}: it was written by a \
             newer layerwise; update layerwise to read it",
            path.display()
        );
    }
    let sealed_from = SEALED_FROM.iter().find(|(s, _)| *s == schema).map_or(u32::MAX, |&(_, v)| v);
    let mut value = value;
    match value.seal_field().clone() {
        None if version >= sealed_from => bail!(
            "{}: its `content_sha256` seal is missing (a `{schema}` v{version} always has one): the file was \
             edited or damaged; rerun the stage that wrote it",
            path.display()
        ),
        None => {}
        Some(seal) if value.content_hash()? != seal => bail!(
            "{}: its content does not match its `content_sha256` seal: the file was edited or damaged after it was \
             written; rerun the stage that wrote it",
            path.display()
        ),
        Some(_) => {}
    }
    Ok(value)
}

impl TrainHistory {
    /// Read and check a `train.json`.
    pub fn read(path: &Path) -> Result<Self> {
        read_json(path, TRAIN_SCHEMA, TRAIN_VERSION, |h: &Self| (h.schema.as_str(), h.version))
    }
    /// The last epoch, if any.
    pub fn last(&self) -> Option<&EpochMetrics> {
        self.epochs.last()
    }

    /// The epoch whose weights the checkpoint holds: the best one where the run kept it
    /// (fine-tuning), else the last.
    pub fn kept(&self) -> Option<&EpochMetrics> {
        self.best_epoch.and_then(|b| self.epochs.get(b.wrapping_sub(1))).or(self.last())
    }
}

impl Evaluation {
    /// Read and check an `eval.json`.
    pub fn read(path: &Path) -> Result<Self> {
        read_json(path, EVAL_SCHEMA, EVAL_VERSION, |e: &Self| (e.schema.as_str(), e.version))
    }
}

#[cfg(test)]
mod tests {
    use super::{best_by_validation, patience_stop};

    #[test]
    fn patience_stops_once_the_best_lies_patience_depths_back() {
        let accs = [(1, 0.40), (2, 0.51), (3, 0.50), (4, 0.49)];
        assert_eq!(patience_stop(&accs[..3], 2, 10), None);
        assert_eq!(patience_stop(&accs, 2, 10), Some(2));
        assert_eq!(patience_stop(&accs, 0, 10), None, "patience 0 never stops");
        assert_eq!(patience_stop(&accs, 2, 4), None, "the last depth is no early stop");
        assert_eq!(patience_stop(&[], 1, 10), None);
    }

    #[test]
    fn best_depth_is_the_first_highest_validation_accuracy() {
        assert_eq!(best_by_validation([(1, 0.40), (2, 0.51), (3, 0.51), (4, 0.49)]), Some((2, 0.51)));
        assert_eq!(best_by_validation([(3, 0.2)]), Some((3, 0.2)));
        assert_eq!(best_by_validation([]), None);
    }
}
