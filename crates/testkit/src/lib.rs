//! Test fixtures for every layerwise crate: synthetic CIFAR-10 releases in the four
//! official forms ([`synthetic`]) and ready-made prepared datasets ([`prepared_dataset`]),
//! so that stage tests never need another stage (or the real data).
#![deny(missing_docs)]

pub mod synthetic;

use anyhow::Result;
use layerwise_core::dataset::{
    fingerprint, write_dataset, DatasetMeta, Normalization, SplitData, SplitSizes, DATASET_VERSION,
};
use std::path::Path;

/// Bytes per image (3 × 32 × 32).
pub const IMAGE_BYTES: usize = 3072;
/// The official class names.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Write a prepared dataset (unit normalization) of synthetic images: `train`, `val` and
/// `test` images, drawn with `seed`. Returns its metadata.
pub fn prepared_dataset(
    path: &Path,
    train: usize,
    val: usize,
    test: usize,
    seed: u64,
) -> Result<DatasetMeta> {
    let split = |n: usize, s: u64| {
        let (imgs, labels) = synthetic::images(n, s);
        SplitData {
            images: imgs.iter().map(|&b| b as f32 / 255.0).collect(),
            labels,
        }
    };
    let (tr, va, te) = (
        split(train, seed),
        split(val, seed + 1),
        split(test, seed + 2),
    );
    let norm = Normalization {
        kind: "unit".into(),
        mean: vec![0.0; 3],
        std: vec![1.0; 3],
    };
    let meta = DatasetMeta {
        version: DATASET_VERSION,
        name: "synthetic-cifar".into(),
        classes: CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
        image_shape: [3, 32, 32],
        fingerprint: fingerprint(&norm, [&tr, &va, &te]),
        normalization: norm,
        val_fraction: val as f64 / (train + val) as f64,
        split_sizes: SplitSizes { train, val, test },
        source_kind: "synthetic".into(),
        sources: Vec::new(),
    };
    write_dataset(path, &meta, [&tr, &va, &te])?;
    Ok(meta)
}
