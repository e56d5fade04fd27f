//! The data stage: a dataset (CIFAR-10 in whatever official form it is found, CIFAR-100,
//! MNIST or Fashion-MNIST IDX files, or a folder of images per class) becomes one
//! normalized safetensors file (the `layerwise-core` dataset format) with train,
//! validation and test splits.
//!
//! # Brief overview
//! - [`PrepareOptions`] says where the data is, where the output goes and how to split
//!   and normalize; [`prepare`] does the work and returns the written metadata.
//! - [`source`] detects a source and reads CIFAR-10's four official forms; [`cifar100`],
//!   [`idx`] and [`folder`] read the others; [`fetch`] finds CIFAR-10 on the machine or
//!   downloads the official tarball.
//!
//! The split follows Keras' `validation_split`: validation is the LAST fraction of the
//! training images, `train = floor(n * (1 - fraction))`.
#![deny(missing_docs)]

pub mod cifar100;
pub mod cli;
pub mod fetch;
pub mod folder;
pub mod idx;
pub mod pickle_scan;
pub mod pickles;
pub mod release;
pub mod source;

use anyhow::{bail, Result};
use layerwise_core::dataset::{write_dataset_streamed, ByteSplit, DatasetMeta, Normalization, SplitSizes};
use std::path::{Path, PathBuf};

pub use layerwise_core::config::Normalize;

/// What to prepare.
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// A dataset folder or tarball (see [`source::detect`]); None = search for CIFAR-10,
    /// then download it.
    pub source: Option<PathBuf>,
    /// Output safetensors file.
    pub out: PathBuf,
    /// Pixel normalization.
    pub normalize: Normalize,
    /// Fraction of training images held out for validation (the last ones).
    pub val_fraction: f64,
    /// Keep only the first N training images (before splitting).
    pub limit_train: Option<usize>,
    /// Keep only the first N test images.
    pub limit_test: Option<usize>,
    /// Folder searched for data and where a download is kept.
    pub artifacts: PathBuf,
    /// Download settings.
    pub fetch: fetch::FetchOptions,
    /// CIFAR-100's labels, an image folder's size.
    pub read: source::ReadOptions,
}

impl PrepareOptions {
    /// Options with the tutorial's defaults.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Self {
            source: None,
            out: out.into(),
            normalize: Normalize::Unit,
            val_fraction: 0.2,
            limit_train: None,
            limit_test: None,
            artifacts: PathBuf::from("artifacts"),
            fetch: fetch::FetchOptions::default(),
            read: source::ReadOptions::default(),
        }
    }
}

/// Resolve the source: the given path, else a local copy, else a download.
pub fn locate_source(opts: &PrepareOptions) -> Result<PathBuf> {
    match &opts.source {
        Some(p) => Ok(p.clone()),
        None => match fetch::find_local(&opts.artifacts)? {
            Some(p) => Ok(p),
            None => fetch::download(&opts.artifacts, &opts.fetch),
        },
    }
}

/// Number of training images kept when `n` are split with `fraction` held out (Keras).
pub fn train_count(n: usize, fraction: f64) -> usize {
    (n as f64 * (1.0 - fraction)).floor() as usize
}

/// Prepare the dataset and write it atomically; returns its metadata.
pub fn prepare(opts: &PrepareOptions) -> Result<DatasetMeta> {
    if !(opts.val_fraction > 0.0 && opts.val_fraction < 1.0) {
        bail!("--val-fraction is {}: it must be strictly between 0 and 1", opts.val_fraction);
    }
    let path = locate_source(opts)?;
    let (kind, path) = source::detect(&path)?;
    let mut raw = source::read_with(kind, &path, opts.read)?;
    let d: usize = raw.image_shape.iter().product();
    if let Some(n) = opts.limit_train {
        let n = n.min(raw.train_labels.len());
        raw.train_labels.truncate(n);
        raw.train_images.truncate(n * d);
    }
    if let Some(n) = opts.limit_test {
        let n = n.min(raw.test_labels.len());
        raw.test_labels.truncate(n);
        raw.test_images.truncate(n * d);
    }
    let n = raw.train_labels.len();
    let n_train = train_count(n, opts.val_fraction);
    if n_train == 0 || n_train == n || raw.test_labels.is_empty() {
        bail!(
            "{n} training and {} test images with validation fraction {} leave an empty split: use more images or another fraction",
            raw.test_labels.len(),
            opts.val_fraction
        );
    }
    let norm = normalization(opts.normalize, &raw.train_images[..n_train * d], raw.image_shape);
    // The floats are made while the file is written (never all in memory at once), and
    // the fingerprint is computed beside the write, on the other core.
    let train = ByteSplit { images: &raw.train_images[..n_train * d], labels: &raw.train_labels[..n_train] };
    let val = ByteSplit { images: &raw.train_images[n_train * d..], labels: &raw.train_labels[n_train..] };
    let test = ByteSplit { images: &raw.test_images, labels: &raw.test_labels };
    let sizes = SplitSizes { train: train.labels.len(), val: val.labels.len(), test: test.labels.len() };
    let meta = DatasetMeta::describe_sizes(
        &raw.name,
        raw.image_shape,
        raw.classes.clone(),
        norm,
        opts.val_fraction,
        kind.name(),
        raw.sources.clone(),
        sizes,
    );
    let meta = write_dataset_streamed(&opts.out, meta, [train, val, test])?;
    Ok(meta)
}

fn normalization(kind: Normalize, train: &[u8], [channels, h, w]: [usize; 3]) -> Normalization {
    match kind {
        Normalize::Unit => Normalization::unit(channels),
        Normalize::Standardize => {
            let plane = h * w;
            let mut sum = vec![0f64; channels];
            let mut sq = vec![0f64; channels];
            for img in train.chunks_exact(plane * channels) {
                for c in 0..channels {
                    for &b in &img[c * plane..(c + 1) * plane] {
                        let x = b as f64 / 255.0;
                        sum[c] += x;
                        sq[c] += x * x;
                    }
                }
            }
            let count = (train.len() / channels).max(1) as f64;
            let mean: Vec<f64> = sum.iter().map(|s| s / count).collect();
            let std: Vec<f64> = (0..channels).map(|c| (sq[c] / count - mean[c] * mean[c]).max(1e-12).sqrt()).collect();
            Normalization { kind: Normalize::Standardize, mean, std }
        }
    }
}

/// The prepared dataset at `out`, if it was made with these settings (normalization,
/// split, limits) and, when `source` is given, from exactly that source's files (their
/// SHA-256 are compared with the ones the dataset records). Used to skip re-preparing.
pub fn matches_existing(
    out: &Path,
    normalize: Normalize,
    val_fraction: f64,
    limits: (Option<usize>, Option<usize>),
    source: Option<&Path>,
) -> Result<Option<DatasetMeta>> {
    let Ok(ds) = layerwise_core::dataset::Dataset::open(out) else { return Ok(None) };
    let m = ds.meta;
    let n = m.split_sizes.train + m.split_sizes.val;
    let settings = m.normalization.kind == normalize
        && m.val_fraction == val_fraction
        && limits.0.is_none_or(|l| l == n)
        && limits.1.is_none_or(|l| l == m.split_sizes.test);
    if !settings {
        return Ok(None);
    }
    if let Some(src) = source {
        let (kind, path) = source::detect(src)?;
        if source::hashes(kind, &path)? != m.sources {
            return Ok(None);
        }
    }
    Ok(Some(m))
}
