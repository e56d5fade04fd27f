//! The command line of `layerwise-prepare`, as a library function so the orchestrator and
//! tests run exactly what a user runs.

use crate::{prepare, Normalize, PrepareOptions};
use anyhow::Result;
use clap::Parser;
use std::path::PathBuf;

/// Prepare a dataset as one normalized safetensors file (train / val / test splits):
/// CIFAR-10 (any official form), CIFAR-100, MNIST or Fashion-MNIST IDX files, or a folder
/// of images per class; the form is detected.
#[derive(Parser)]
#[command(version, about)]
pub struct Args {
    /// The dataset: a CIFAR-10 folder (cifar-10-batches-bin or cifar-10-batches-py) or
    /// official tarball, a CIFAR-100 one (cifar-100-binary, cifar-100-python), a folder of
    /// MNIST IDX files (gzipped or not), or a folder of images per class (ROOT/<class>/*.png,
    /// or ROOT/train/<class>/ and ROOT/test/<class>/). Without it: CIFAR-10 from
    /// $CIFAR10_DIR, the artifacts folder, the Keras cache, then a download.
    #[arg(long)]
    source: Option<PathBuf>,
    /// CIFAR-100: fine (100 classes) or coarse (20) labels.
    #[arg(long, value_enum, default_value = "fine")]
    labels: layerwise_core::config::Labels,
    /// An image folder: resize every image to WxH (else every image must have one size).
    #[arg(long)]
    resize: Option<String>,
    /// Output file (.safetensors).
    #[arg(long, required_unless_present = "verify")]
    out: Option<PathBuf>,
    /// Check a prepared dataset instead: recompute its fingerprint from its contents (and
    /// every value's finiteness) and compare with the one it records.
    #[arg(long, conflicts_with_all = ["out", "source"])]
    verify: Option<PathBuf>,
    /// Pixel normalization.
    #[arg(long, value_enum, default_value = "unit")]
    normalize: Normalize,
    /// Fraction of the training images held out for validation (the last ones, like Keras).
    #[arg(long, default_value_t = 0.2)]
    val_fraction: f64,
    /// Keep only the first N training images (before splitting).
    #[arg(long)]
    limit_train: Option<usize>,
    /// Keep only the first N test images.
    #[arg(long)]
    limit_test: Option<usize>,
    /// Folder searched for CIFAR-10 and where a download is kept.
    #[arg(long, default_value = "artifacts")]
    artifacts: PathBuf,
}

/// Run `layerwise-prepare` with these arguments (program name first).
pub fn run(args: impl IntoIterator<Item = String>) -> Result<()> {
    let a: Args = layerwise_core::parse_args(args)?;
    if let Some(path) = &a.verify {
        let start = std::time::Instant::now();
        let ds = layerwise_core::dataset::Dataset::open(path)?;
        ds.verify()?;
        eprintln!(
            "{}: intact (fingerprint {} recomputed from its {} values in {:.1}s)",
            path.display(),
            &ds.meta.fingerprint[..12],
            ds.meta.input_size() * (ds.meta.split_sizes.train + ds.meta.split_sizes.val + ds.meta.split_sizes.test),
            start.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    let out = a.out.ok_or_else(|| anyhow::anyhow!("--out is required (the dataset file to write)"))?;
    let mut opts = PrepareOptions::new(out);
    opts.source = a.source;
    opts.normalize = a.normalize;
    opts.val_fraction = a.val_fraction;
    opts.limit_train = a.limit_train;
    opts.limit_test = a.limit_test;
    opts.artifacts = a.artifacts;
    opts.read.labels = a.labels;
    opts.read.resize = a.resize.as_deref().map(layerwise_core::config::parse_size).transpose()?;
    let start = std::time::Instant::now();
    let meta = prepare(&opts)?;
    eprintln!(
        "wrote {} ({} train / {} val / {} test, {} normalization, from {}) in {:.1}s, fingerprint {}",
        opts.out.display(),
        meta.split_sizes.train,
        meta.split_sizes.val,
        meta.split_sizes.test,
        meta.normalization.kind,
        meta.source_kind,
        start.elapsed().as_secs_f64(),
        &meta.fingerprint[..12]
    );
    Ok(())
}
