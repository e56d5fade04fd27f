//! `layerwise-export`'s command line.

use crate::{export, ExportOptions};
use clap::Parser;
use std::path::PathBuf;

/// Export a trained checkpoint: `--format onnx` writes the whole forward pass, from pixels
/// (float [batch, C, H, W], 0-255, CHW) to class probabilities, as a standard ONNX graph.
/// Both kinds of checkpoint: an MLP (the contract's scaling, Gemm + Relu layers, Softmax)
/// and a convolutional network (the scaling, each stage's MaxPool or psi, Conv,
/// BatchNormalization and Relu, the head's conv blocks, 2×2 average pooling, Gemm, Softmax).
#[derive(Parser, Debug)]
#[command(name = "layerwise-export", version)]
struct Args {
    /// Checkpoint (model.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "onnx")]
    format: Format,
    /// The file to write (e.g. model.onnx).
    #[arg(long)]
    out: PathBuf,
    /// The dataset the model was trained on: the input contract of a checkpoint written
    /// before checkpoints recorded it.
    #[arg(long)]
    data: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// ONNX, opset 17.
    Onnx,
}

/// Run `layerwise-export` with these arguments (program name first).
pub fn run(args: impl IntoIterator<Item = String>) -> anyhow::Result<()> {
    let a: Args = layerwise_core::parse_args(args)?;
    let Format::Onnx = a.format;
    let n = export(&ExportOptions { model: a.model.clone(), out: a.out.clone(), data: a.data })?;
    eprintln!(
        "wrote {} ({n} bytes): ONNX opset {}, input `pixels` [batch, C, H, W] 0-255, output `probabilities`",
        a.out.display(),
        crate::OPSET
    );
    Ok(())
}
