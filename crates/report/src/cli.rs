//! The command line of `layerwise-report`, as a library function so the orchestrator and
//! tests run exactly what a user runs.

use clap::Parser;
use std::path::PathBuf;

/// Write DIR/report.md, DIR/accuracy.svg and DIR/summary.json for a run folder.
#[derive(Parser)]
#[command(version, about)]
pub struct Args {
    /// Run folder (holds pipeline.toml and depth-NN/ folders).
    #[arg(long)]
    run: PathBuf,
}

/// Run `layerwise-report` with these arguments (program name first).
pub fn run(args: impl IntoIterator<Item = String>) -> anyhow::Result<()> {
    let a: Args = layerwise_core::parse_args(args)?;
    let s = crate::write_report(&a.run)?;
    eprintln!(
        "wrote {}/report.md and accuracy.svg: {} depths, best depth {} by validation accuracy",
        a.run.display(),
        s.depths.len(),
        s.best_depth.map_or("–".into(), |d| d.to_string())
    );
    Ok(())
}
