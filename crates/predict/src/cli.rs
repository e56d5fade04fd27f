//! `layerwise-predict`'s command line.

use crate::{header, predict, render, render_error, Format, PredictOptions};
use clap::Parser;
use std::io::Write;
use std::path::PathBuf;

/// Classify image files with a trained checkpoint: the top classes with their
/// probabilities, one image per line (or JSON object, or CSV rows).
#[derive(Parser, Debug)]
#[command(name = "layerwise-predict", version)]
struct Args {
    /// Checkpoint (model.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Image files (PNG, JPEG, BMP, WebP) and folders (their image files, recursively).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Classes shown per image.
    #[arg(long, default_value_t = 3)]
    top_k: usize,
    /// table, json (one object per line and image) or csv.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Refuse images of another size than the model's instead of resizing them.
    #[arg(long)]
    no_resize: bool,
    /// The dataset the model was trained on: the input contract of a checkpoint written
    /// before checkpoints recorded it.
    #[arg(long)]
    data: Option<PathBuf>,
}

/// Run `layerwise-predict` with these arguments (program name first).
pub fn run(args: impl IntoIterator<Item = String>) -> anyhow::Result<()> {
    let a: Args = layerwise_core::parse_args(args)?;
    let opts = PredictOptions { model: a.model, inputs: a.inputs, top_k: a.top_k, resize: !a.no_resize, data: a.data };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if let Some(h) = header(a.format) {
        writeln!(out, "{h}")?;
    }
    let mut done = 0usize;
    let failed = predict(&opts, |r| {
        match r {
            Ok((p, notes)) => {
                for n in notes {
                    eprintln!("layerwise-predict: {}: {n}", p.path.display());
                }
                writeln!(out, "{}", render(&p, a.format)?)?;
                done += 1;
            }
            Err((path, e)) => {
                eprintln!("layerwise-predict: error: {e:#}");
                if let Some(record) = render_error(&path, &e, a.format) {
                    writeln!(out, "{record}")?;
                }
            }
        }
        Ok(())
    })?;
    if failed > 0 {
        anyhow::bail!("{failed} of {} files could not be classified (each is named above)", failed + done);
    }
    Ok(())
}
