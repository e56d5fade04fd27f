//! `layerwise-evaluate`: a checkpoint on a dataset split, to JSON.

use anyhow::Result;
use clap::Parser;
use layerwise_core::dataset::Split;
use layerwise_evaluate::{evaluate, EvaluateOptions};
use layerwise_nn::device::DeviceKind;
use std::path::PathBuf;
use std::process::ExitCode;

/// Evaluate a checkpoint: loss, accuracy, per-class accuracy and confusion matrix.
#[derive(Parser)]
#[command(version, about)]
struct Args {
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

fn run(a: Args) -> Result<()> {
    let e = evaluate(&EvaluateOptions { model: a.model, data: a.data, split: a.split, out: Some(a.out.clone()), device: a.device })?;
    eprintln!("depth {} on {}: loss {:.4} accuracy {:.4} ({} images) -> {}", e.depth, e.split, e.loss, e.accuracy, e.samples, a.out.display());
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("layerwise-evaluate: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
