//! The command line of `layerwise-report`, as a library function so the orchestrator and
//! tests run exactly what a user runs.

use clap::Parser;
use std::path::PathBuf;

/// Write report.md, accuracy.svg and summary.json: for one run folder (--run), or over
/// several runs (--sweep DIR, or --runs DIR... --out DIR).
#[derive(Parser)]
#[command(version, about)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["run", "sweep", "runs"])))]
pub struct Args {
    /// Run folder (holds pipeline.toml and depth-NN/ folders); the report goes into it.
    #[arg(long)]
    run: Option<PathBuf>,
    /// Sweep folder (from `cargo xtask sweep`): its runs are aggregated, the report goes into it.
    #[arg(long)]
    sweep: Option<PathBuf>,
    /// Run folders to aggregate (with --out).
    #[arg(long, num_args = 1.., requires = "out")]
    runs: Vec<PathBuf>,
    /// Folder for the aggregated report of --runs.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Run `layerwise-report` with these arguments (program name first).
pub fn run(args: impl IntoIterator<Item = String>) -> anyhow::Result<()> {
    let a: Args = layerwise_core::parse_args(args)?;
    if let Some(run) = &a.run {
        let s = crate::write_report(run)?;
        eprintln!(
            "wrote {}/report.md and accuracy.svg: {}, best depth {} by validation accuracy",
            run.display(),
            layerwise_core::plural(s.depths.len(), "depth"),
            s.best_depth.map_or("–".into(), |d| d.to_string())
        );
        return Ok(());
    }
    let (runs, out) = match (&a.sweep, &a.out) {
        (Some(dir), _) => (crate::sweep::sweep_runs(dir)?, dir.clone()),
        (None, Some(out)) => (a.runs.clone(), out.clone()),
        (None, None) => anyhow::bail!("--runs needs --out, the folder for the aggregated report"),
    };
    let s = crate::write_sweep_report(&runs, &out)?;
    eprintln!("wrote {}/report.md and accuracy.svg over {} runs", out.display(), s.runs.len());
    Ok(())
}
