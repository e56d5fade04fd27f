//! Frozen features: a grown depth's output over the train and validation splits, written
//! beside its checkpoint (`features.safetensors`), so the next depth applies one layer to
//! them instead of running the whole frozen stack from the images again. The cost of the
//! frozen features then stays one layer's, whatever the depth.
//!
//! The file is an artifact like the others: written atomically, and bound to the
//! checkpoint it was computed with (its SHA-256) and the dataset (its fingerprint). Its
//! metadata carries the SHA-256 of its values (`content_sha256`), checked on every open, so
//! one changed value is found; and its reader in the training stage recomputes a few rows
//! from the images with the parent checkpoint and compares, so a file of another run whose
//! metadata was rewritten is found too. A reader that finds it missing, of another
//! checkpoint or dataset, or damaged, says so and recomputes the features from the images:
//! the file only ever saves time.

use crate::dataset::Split;
use crate::st::{write_safetensors, MappedSafetensors, OutTensor};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::path::Path;

/// What the file says it is.
pub const FEATURES_FORMAT: &str = "layerwise-features";
/// Its name inside a depth folder.
pub const FEATURES_FILE: &str = "features.safetensors";
/// Its layout's version: 2 added `content_sha256`.
pub const FEATURES_VERSION: u32 = 2;

/// The metadata of a features file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeaturesMeta {
    /// [`FEATURES_VERSION`].
    pub version: u32,
    /// The depth whose output these are.
    pub depth: usize,
    /// Values per row (that depth's width).
    pub width: usize,
    /// SHA-256 of the checkpoint they were computed with.
    pub checkpoint_sha256: String,
    /// The dataset's fingerprint.
    pub dataset_fingerprint: String,
    /// Rows of the train split.
    pub train_rows: usize,
    /// Rows of the validation split.
    pub val_rows: usize,
    /// SHA-256 of the values: the train split's little-endian floats, then the validation
    /// split's ([`content_sha256`]).
    pub content_sha256: String,
}

/// The hash a features file's metadata carries for its `train` and `val` values.
pub fn content_sha256(train: &[f32], val: &[f32]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(crate::st::f32_le_bytes(train));
    h.update(crate::st::f32_le_bytes(val));
    hex::encode(h.finalize())
}

/// Write the features of `meta`'s depth (`train` and `val`, row-major) atomically. The
/// file's `content_sha256` is computed here from the values, whatever `meta` holds.
pub fn write_features(path: &Path, meta: &FeaturesMeta, train: &[f32], val: &[f32]) -> Result<()> {
    if train.len() != meta.train_rows * meta.width || val.len() != meta.val_rows * meta.width {
        bail!("internal: features do not match their metadata");
    }
    let meta = FeaturesMeta { content_sha256: content_sha256(train, val), ..meta.clone() };
    let tensors = vec![
        OutTensor::F32("train.features".into(), vec![meta.train_rows, meta.width], train),
        OutTensor::F32("val.features".into(), vec![meta.val_rows, meta.width], val),
    ];
    write_safetensors(path, FEATURES_FORMAT, &meta, tensors)
}

/// A features file, memory-mapped and checked against what its reader expects.
pub struct Features {
    file: MappedSafetensors,
    /// Its metadata.
    pub meta: FeaturesMeta,
}

impl Features {
    /// Open `path` for a reader that needs the output of the checkpoint with SHA-256
    /// `checkpoint_sha256` on the dataset `fingerprint`: `width` values per row,
    /// `train_rows` and `val_rows` rows. `Err` says why the file cannot be used.
    pub fn open_for(
        path: &Path,
        checkpoint_sha256: &str,
        fingerprint: &str,
        width: usize,
        train_rows: usize,
        val_rows: usize,
    ) -> Result<Self> {
        let file = MappedSafetensors::open(path, FEATURES_FORMAT, "features file")?;
        let meta: FeaturesMeta = file.meta()?;
        if meta.version != FEATURES_VERSION {
            bail!("{}: features version {} (this layerwise reads {FEATURES_VERSION})", path.display(), meta.version);
        }
        if meta.checkpoint_sha256 != checkpoint_sha256 {
            bail!("{} belongs to another checkpoint than {checkpoint_sha256:.12}…", path.display());
        }
        if meta.dataset_fingerprint != fingerprint {
            bail!("{} was computed on another dataset", path.display());
        }
        if (meta.width, meta.train_rows, meta.val_rows) != (width, train_rows, val_rows) {
            bail!(
                "{} holds {}+{} rows of {} values, expected {train_rows}+{val_rows} of {width}",
                path.display(),
                meta.train_rows,
                meta.val_rows,
                meta.width
            );
        }
        let features = Self { file, meta };
        let (train, val) = (features.split(Split::Train)?, features.split(Split::Val)?);
        if content_sha256(&train, &val) != features.meta.content_sha256 {
            bail!(
                "{}: its values do not match their `content_sha256` (the file was changed or damaged after it was \
                 written)",
                path.display()
            );
        }
        for (split, values) in [(Split::Train, &train), (Split::Val, &val)] {
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                bail!("{}: {split} value {i} is not finite (damaged)", path.display());
            }
        }
        drop((train, val));
        Ok(features)
    }

    /// One split's features (`train` or `val`), borrowed from the map when aligned.
    pub fn split(&self, split: Split) -> Result<Cow<'_, [f32]>> {
        let rows = match split {
            Split::Train => self.meta.train_rows,
            Split::Val => self.meta.val_rows,
            Split::Test => bail!("a features file holds the train and validation splits only"),
        };
        self.file.f32s(&format!("{split}.features"), &[rows, self.meta.width])
    }
}
