//! The command line of `layerwise-prepare`, as a library function so the orchestrator and
//! tests run exactly what a user runs.

use crate::{prepare, Normalize, PrepareOptions};
use anyhow::Result;
use clap::Parser;
use std::path::PathBuf;

/// Prepare CIFAR-10 as one normalized safetensors file (train / val / test splits).
#[derive(Parser)]
#[command(version, about)]
pub struct Args {
    /// CIFAR-10 folder (cifar-10-batches-bin or cifar-10-batches-py) or official tarball.
    /// Without it: $CIFAR10_DIR, the artifacts folder, the Keras cache, then a download.
    #[arg(long)]
    source: Option<PathBuf>,
    /// Output file (.safetensors).
    #[arg(long)]
    out: PathBuf,
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
    let mut opts = PrepareOptions::new(a.out);
    opts.source = a.source;
    opts.normalize = a.normalize;
    opts.val_fraction = a.val_fraction;
    opts.limit_train = a.limit_train;
    opts.limit_test = a.limit_test;
    opts.artifacts = a.artifacts;
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
