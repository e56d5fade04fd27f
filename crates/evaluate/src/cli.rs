//! The command line of `layerwise-evaluate`, as a library function so the orchestrator and
//! tests run exactly what a user runs.

use crate::{evaluate, EvaluateOptions};
use anyhow::Result;
use clap::Parser;
use layerwise_core::dataset::Split;
use layerwise_nn::device::DeviceKind;
use std::path::PathBuf;

/// Evaluate a checkpoint: loss, accuracy, per-class accuracy and confusion matrix.
#[derive(Parser)]
#[command(version, about)]
pub struct Args {
    /// Checkpoint (model.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Prepared dataset the checkpoint was trained on.
    #[arg(long)]
    data: PathBuf,
    /// Split: test, val or train.
    #[arg(long, default_value = "test")]
    split: Split,
    /// Output JSON file.
    #[arg(long)]
    out: PathBuf,
    /// cpu or cuda.
    #[arg(long, default_value = "cpu")]
    device: DeviceKind,
}

/// Run `layerwise-evaluate` with these arguments (program name first).
pub fn run(args: impl IntoIterator<Item = String>) -> Result<()> {
    let a: Args = layerwise_core::parse_args(args)?;
    let e = evaluate(&EvaluateOptions {
        model: a.model,
        data: a.data,
        split: a.split,
        out: Some(a.out.clone()),
        device: a.device,
    })?;
    eprintln!(
        "depth {} on {}: loss {:.4} accuracy {:.4} ({} images) -> {}",
        e.depth,
        e.split,
        e.loss,
        e.accuracy,
        e.samples,
        a.out.display()
    );
    Ok(())
}
