//! The prepared dataset: one safetensors file with three splits, written by the prepare
//! stage and read (memory-mapped) by training and evaluation.
//!
//! Tensors: `{train,val,test}.images` (f32 `[N, C*H*W]`, CHW order) and
//! `{train,val,test}.labels` (u8 `[N]`). Metadata: [`DatasetMeta`].

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::path::Path;

use crate::st::{write_safetensors, MappedSafetensors, OutTensor};

/// `layerwise.format` of a prepared dataset.
pub const DATASET_FORMAT: &str = "layerwise-dataset";
/// Version of [`DatasetMeta`].
pub const DATASET_VERSION: u32 = 1;

/// The three splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Training images (the first part of the official training set).
    Train,
    /// Validation images (the last `val_fraction` of the official training set).
    Val,
    /// The official test set.
    Test,
}

impl Split {
    /// All splits, in file order.
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];
    /// `train`, `val` or `test`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Split {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "train" => Ok(Split::Train),
            "val" => Ok(Split::Val),
            "test" => Ok(Split::Test),
            _ => bail!("unknown split `{s}`: use train, val or test"),
        }
    }
}

/// How pixels were mapped to floats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// `unit` (x/255) or `standardize` ((x/255 - mean[c]) / std[c], train split statistics).
    pub kind: crate::config::Normalize,
    /// Per-channel mean subtracted after /255 (zeros for `unit`).
    pub mean: Vec<f64>,
    /// Per-channel standard deviation divided by (ones for `unit`).
    pub std: Vec<f64>,
}

impl Normalization {
    /// x / 255.
    pub fn unit() -> Self {
        Self { kind: crate::config::Normalize::Unit, mean: vec![0.0; 3], std: vec![1.0; 3] }
    }
}

/// A source file the dataset was made from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceFile {
    /// Name inside the source (e.g. `data_batch_1.bin`).
    pub name: String,
    /// Hex SHA-256 of its bytes.
    pub sha256: String,
}

/// Everything a prepared dataset says about itself (the `meta` of the `layerwise` metadata key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetMeta {
    /// Always [`DATASET_VERSION`] when written by this version.
    pub version: u32,
    /// Dataset name, e.g. `cifar-10`.
    pub name: String,
    /// Class names, index = label.
    pub classes: Vec<String>,
    /// `[channels, height, width]`.
    pub image_shape: [usize; 3],
    /// Pixel normalization.
    pub normalization: Normalization,
    /// Fraction of the training images held out for validation.
    pub val_fraction: f64,
    /// Images per split: train, val, test.
    pub split_sizes: SplitSizes,
    /// Where the source came from (`binary-folder`, `python-tarball`, ...).
    pub source_kind: String,
    /// Source files and their hashes.
    pub sources: Vec<SourceFile>,
    /// Hex SHA-256 over every tensor's bytes (in file order) and the normalization:
    /// the identity that checkpoints and metrics refer to.
    pub fingerprint: String,
}

/// Images per split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitSizes {
    /// Training images.
    pub train: usize,
    /// Validation images.
    pub val: usize,
    /// Test images.
    pub test: usize,
}

impl SplitSizes {
    /// Size of one split.
    pub fn get(&self, split: Split) -> usize {
        match split {
            Split::Train => self.train,
            Split::Val => self.val,
            Split::Test => self.test,
        }
    }
}

impl DatasetMeta {
    /// Values per image (C*H*W).
    pub fn input_size(&self) -> usize {
        self.image_shape.iter().product()
    }
    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }
}

/// One split held in memory, ready to be written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SplitData {
    /// `[n * input_size]` floats.
    pub images: Vec<f32>,
    /// `[n]` labels.
    pub labels: Vec<u8>,
}

/// Fingerprint of a dataset's content: SHA-256 over the normalization and each split's
/// images and labels, so two files with the same numbers share a fingerprint.
pub fn fingerprint(norm: &Normalization, splits: [&SplitData; 3]) -> String {
    fingerprint_of(norm, splits.map(|s| (&s.images[..], &s.labels[..])))
}

/// [`fingerprint`] over borrowed `(images, labels)` of the three splits.
fn fingerprint_of(norm: &Normalization, splits: [(&[f32], &[u8]); 3]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(serde_json::to_string(norm).unwrap_or_default().as_bytes());
    for (images, labels) in splits {
        h.update((labels.len() as u64).to_le_bytes());
        h.update(bytemuck::cast_slice::<f32, u8>(images));
        h.update(labels);
    }
    hex::encode(h.finalize())
}

impl DatasetMeta {
    /// Describe CIFAR-shaped (3×32×32) splits: sizes and fingerprint are computed here.
    pub fn describe(
        name: &str,
        classes: Vec<String>,
        normalization: Normalization,
        val_fraction: f64,
        source_kind: &str,
        sources: Vec<SourceFile>,
        splits: [&SplitData; 3],
    ) -> Self {
        let [train, val, test] = splits;
        Self {
            version: DATASET_VERSION,
            name: name.into(),
            classes,
            image_shape: [3, 32, 32],
            fingerprint: fingerprint(&normalization, splits),
            normalization,
            val_fraction,
            split_sizes: SplitSizes { train: train.labels.len(), val: val.labels.len(), test: test.labels.len() },
            source_kind: source_kind.into(),
            sources,
        }
    }
}

/// Write a prepared dataset atomically. `meta.split_sizes` must match the data.
pub fn write_dataset(path: &Path, meta: &DatasetMeta, splits: [&SplitData; 3]) -> Result<()> {
    let dim = meta.input_size();
    let mut tensors = Vec::new();
    for (split, data) in Split::ALL.iter().zip(splits) {
        let n = data.labels.len();
        if n != meta.split_sizes.get(*split) || data.images.len() != n * dim {
            bail!(
                "internal: split {split} holds {n} labels and {} floats, metadata says {} images of {dim}",
                data.images.len(),
                meta.split_sizes.get(*split)
            );
        }
        tensors.push(OutTensor::F32(format!("{split}.images"), vec![n, dim], &data.images));
        tensors.push(OutTensor::U8(format!("{split}.labels"), vec![n], &data.labels));
    }
    write_safetensors(path, DATASET_FORMAT, meta, tensors)
}

/// A prepared dataset, memory-mapped.
pub struct Dataset {
    file: MappedSafetensors,
    /// Its metadata.
    pub meta: DatasetMeta,
}

/// One split of an opened dataset.
pub struct SplitView<'a> {
    /// `[n * input_size]` floats (borrowed from the map when possible).
    pub images: Cow<'a, [f32]>,
    /// `[n]` labels.
    pub labels: &'a [u8],
}

impl SplitView<'_> {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// Whether the split is empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

impl Dataset {
    /// Open and check a prepared dataset.
    pub fn open(path: &Path) -> Result<Self> {
        let file = MappedSafetensors::open(path, DATASET_FORMAT, "dataset")?;
        let meta: DatasetMeta = file.meta()?;
        if meta.version != DATASET_VERSION {
            bail!(
                "{}: dataset format version {} is not supported (this layerwise reads version {DATASET_VERSION}); \
                 prepare the dataset again with this version",
                path.display(),
                meta.version
            );
        }
        let ds = Self { file, meta };
        // Check every tensor's shape, and every value's finiteness, up front: a dataset
        // that opens is usable (one NaN pixel would otherwise train to NaN weights).
        let dim = ds.meta.input_size();
        for split in Split::ALL {
            let view = ds.split(split)?;
            if let Some(i) = view.images.iter().position(|v| !v.is_finite()) {
                bail!(
                    "{}: {split} image {} holds {} at value {}: the file is corrupt; prepare the dataset again \
                     (layerwise-prepare --verify checks a dataset file)",
                    path.display(),
                    i / dim.max(1),
                    view.images[i],
                    i % dim.max(1)
                );
            }
        }
        Ok(ds)
    }

    /// The file it was opened from.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Recompute the content fingerprint and compare it with the recorded one: catches a
    /// changed value that opening (shapes, finiteness, labels) cannot.
    pub fn verify(&self) -> Result<()> {
        let views = [self.split(Split::Train)?, self.split(Split::Val)?, self.split(Split::Test)?];
        let found = fingerprint_of(&self.meta.normalization, views.each_ref().map(|v| (&v.images[..], v.labels)));
        if found != self.meta.fingerprint {
            bail!(
                "{}: its contents do not match its recorded fingerprint ({} recorded, {} found): the file was changed \
                 or damaged after it was written; prepare it again",
                self.path().display(),
                &self.meta.fingerprint[..12.min(self.meta.fingerprint.len())],
                &found[..12]
            );
        }
        Ok(())
    }

    /// One split, checked against the metadata.
    pub fn split(&self, split: Split) -> Result<SplitView<'_>> {
        let n = self.meta.split_sizes.get(split);
        let images = self.file.f32s(&format!("{split}.images"), &[n, self.meta.input_size()])?;
        let labels = self.file.u8s(&format!("{split}.labels"), &[n])?;
        let classes = self.meta.num_classes();
        if let Some(i) = labels.iter().position(|&l| l as usize >= classes) {
            bail!("{}: {split} label {i} is {}, but there are {classes} classes", self.path().display(), labels[i]);
        }
        Ok(SplitView { images, labels })
    }
}
