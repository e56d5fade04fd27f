//! Test fixtures for every layerwise crate: synthetic CIFAR-10 releases in the four
//! official forms ([`synthetic`]), the other forms prepare reads ([`formats`]: CIFAR-100,
//! MNIST IDX, image folders) and ready-made prepared datasets ([`prepared_dataset`]),
//! so that stage tests never need another stage (or the real data).
#![deny(missing_docs)]

pub mod formats;
pub mod synthetic;

use anyhow::Result;
use layerwise_core::cifar10::class_names;
use layerwise_core::dataset::{write_dataset, DatasetMeta, Normalization, SplitData};
use std::path::Path;

pub use layerwise_core::cifar10::{CLASSES as CIFAR10_CLASSES, IMAGE_BYTES};

/// Write a prepared dataset (unit normalization) of synthetic images: `train`, `val` and
/// `test` images, drawn with `seed`. Returns its metadata.
pub fn prepared_dataset(path: &Path, train: usize, val: usize, test: usize, seed: u64) -> Result<DatasetMeta> {
    prepared_dataset_relabelled(path, train, val, test, seed, |label| label)
}

/// [`prepared_dataset`] with every label mapped through `relabel`: the same images, other
/// labels (to show what does not read them).
pub fn prepared_dataset_relabelled(
    path: &Path,
    train: usize,
    val: usize,
    test: usize,
    seed: u64,
    relabel: impl Fn(u8) -> u8,
) -> Result<DatasetMeta> {
    let split = |n: usize, s: u64| {
        let (imgs, labels) = synthetic::images(n, s);
        SplitData {
            images: imgs.iter().map(|&b| b as f32 / 255.0).collect(),
            labels: labels.into_iter().map(&relabel).collect(),
        }
    };
    let (tr, va, te) = (split(train, seed), split(val, seed + 1), split(test, seed + 2));
    let val_fraction = val as f64 / (train + val) as f64;
    let meta = DatasetMeta::describe(
        "synthetic-cifar",
        class_names(),
        Normalization::unit(3),
        val_fraction,
        "synthetic",
        vec![],
        [&tr, &va, &te],
    );
    write_dataset(path, &meta, [&tr, &va, &te])?;
    Ok(meta)
}
