//! `cargo xtask sweep`: one greedy run per (pipeline, seed), each in its own run folder
//! `SWEEP/<name>-seedN`, then `layerwise-report --sweep SWEEP` over them. Locally the runs
//! go one after another; with `--scheduler slurm` each run is an independent chain of
//! jobs (they share one prepare job per dataset) and a last job writes the sweep report.

use crate::args::{GreedyArgs, RunInputs, Scheduler};
use crate::plan::{Plan, Program, Step};
use crate::slurm::JobSpec;
use anyhow::{bail, Context, Result};
use layerwise_core::run::{SweepList, SWEEP_FILE};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// `cargo xtask sweep` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct SweepArgs {
    /// Pipeline: a TOML file, or the name of one in pipelines/ (repeatable; default: seed).
    #[arg(long = "pipeline")]
    pub pipelines: Vec<PathBuf>,
    /// Seeds: a range and/or a list, e.g. `0-4` or `0,3,7` or `0-2,10`.
    #[arg(long, default_value = "0-2")]
    pub seeds: String,
    /// Sweep folder (default: artifacts/sweeps/<pipeline names>-seeds<SEEDS>).
    #[arg(long)]
    pub sweep_dir: Option<PathBuf>,
    /// Where the data comes from, where things go, how and where each run runs.
    #[command(flatten)]
    pub inputs: RunInputs,
}

/// The most seeds one sweep runs.
pub const MAX_SEEDS: usize = 1000;

/// Parse `0-4`, `0,3,7`, `0-2,10`: seeds in the order given, without repeats, at most
/// [`MAX_SEEDS`] (checked before any is listed).
pub fn parse_seeds(spec: &str) -> Result<Vec<u64>> {
    let bad = || format!("--seeds `{spec}`: use a range and/or a list of seeds, e.g. `0-4` or `0,3,7`");
    let mut seeds = Vec::new();
    for part in spec.split(',').map(str::trim) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u64>().with_context(bad)?, b.trim().parse::<u64>().with_context(bad)?),
            None => {
                let v = part.parse::<u64>().with_context(bad)?;
                (v, v)
            }
        };
        if lo > hi {
            bail!("{}: a range runs low-high", bad());
        }
        if seeds.len() as u64 + (hi - lo) >= MAX_SEEDS as u64 {
            bail!("--seeds `{spec}`: more than {MAX_SEEDS} seeds; a sweep runs at most {MAX_SEEDS}");
        }
        for s in lo..=hi {
            if seeds.contains(&s) {
                bail!("--seeds `{spec}` names seed {s} twice");
            }
            seeds.push(s);
        }
    }
    Ok(seeds)
}

/// One run of the sweep: its greedy arguments and plan.
struct SweepRun {
    args: GreedyArgs,
    plan: Plan,
}

fn runs(a: &SweepArgs) -> Result<(PathBuf, Vec<SweepRun>)> {
    let seeds = parse_seeds(&a.seeds)?;
    let pipelines =
        if a.pipelines.is_empty() { vec![crate::repo_root().join("pipelines/seed.toml")] } else { a.pipelines.clone() };
    let mut names = Vec::new();
    for p in &pipelines {
        let name = layerwise_core::pipeline::Pipeline::load(&crate::plan::resolve_pipeline(p)?)?.name;
        if names.contains(&name) {
            bail!("two pipelines are named `{name}`: their runs would share folders; rename one");
        }
        names.push(name);
    }
    let artifacts = a.inputs.artifacts.clone().unwrap_or_else(|| crate::repo_root().join("artifacts"));
    let sweep_dir = a.sweep_dir.clone().unwrap_or_else(|| {
        artifacts.join("sweeps").join(format!("{}-seeds{}", names.join("+"), a.seeds.replace(',', "_")))
    });
    let mut out = Vec::new();
    for (pipeline, name) in pipelines.iter().zip(&names) {
        for &seed in &seeds {
            let args = GreedyArgs {
                pipeline: Some(pipeline.clone()),
                run_dir: Some(sweep_dir.join(format!("{name}-seed{seed}"))),
                seed: Some(seed),
                from: None,
                restart: false,
                print_commands: false,
                groups: None,
                launcher: None,
                inputs: RunInputs { artifacts: Some(artifacts.clone()), ..a.inputs.clone() },
            };
            let plan = Plan::new(&args)?;
            out.push(SweepRun { args, plan });
        }
    }
    Ok((sweep_dir, out))
}

fn record(sweep_dir: &Path, runs: &[SweepRun]) -> Result<()> {
    let names = runs
        .iter()
        .map(|r| r.plan.run_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
        .collect();
    std::fs::create_dir_all(sweep_dir)
        .with_context(|| format!("cannot create sweep folder {}", sweep_dir.display()))?;
    layerwise_core::atomic::write_json_atomic(&sweep_dir.join(SWEEP_FILE), &SweepList::new(names))
}

fn report_step(sweep_dir: &Path) -> Step {
    Step::of(Program::Report, vec!["--sweep".into(), sweep_dir.to_string_lossy().into_owned()])
}

/// Run the sweep (locally, or as Slurm chains).
pub fn run(a: &SweepArgs) -> Result<()> {
    a.inputs.slurm.check(a.inputs.scheduler)?;
    let (sweep_dir, runs) = runs(a)?;
    record(&sweep_dir, &runs)?;
    match a.inputs.scheduler {
        None => {
            for (i, r) in runs.iter().enumerate() {
                eprintln!("== sweep run {}/{}: {} ==", i + 1, runs.len(), r.plan.run_dir.display());
                crate::greedy::run(&r.args)?;
            }
            report_step(&sweep_dir).run()?;
            eprintln!("sweep report: {}", sweep_dir.join("report.md").display());
            Ok(())
        }
        Some(Scheduler::Slurm) => slurm(a, &sweep_dir, &runs),
    }
}

/// Every run's remaining jobs as one submission: keys prefixed per run, one prepare job per
/// dataset file, and the sweep report after every run's report.
fn slurm(a: &SweepArgs, sweep_dir: &Path, runs: &[SweepRun]) -> Result<()> {
    let cfg = a.inputs.slurm.config(&runs[0].plan.pipeline.slurm)?;
    let mut jobs: Vec<JobSpec> = Vec::new();
    let mut prepare_of: HashMap<PathBuf, String> = HashMap::new();
    let mut reports = Vec::new();
    let mut locks = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        locks.push(crate::judge::open_run(&r.plan, &r.args)?);
        let prefix = format!("r{i}_");
        let mut renamed: HashMap<String, String> = HashMap::new();
        for mut job in crate::slurm::remaining_jobs(&r.plan, &r.args)? {
            let key = format!("{prefix}{}", job.key);
            if job.step.program == Program::Prepare {
                if let Some(shared) = prepare_of.get(&r.plan.data) {
                    renamed.insert(job.key.clone(), shared.clone());
                    continue;
                }
                prepare_of.insert(r.plan.data.clone(), key.clone());
            }
            renamed.insert(job.key.clone(), key.clone());
            job.after =
                job.after.iter().map(|k| renamed.get(k).cloned().unwrap_or_else(|| format!("{prefix}{k}"))).collect();
            if job.step.program == Program::Report {
                reports.push(key.clone());
            }
            job.key = key;
            jobs.push(job);
        }
    }
    jobs.push(JobSpec {
        key: "sweep_report".into(),
        label: "sweep-report".into(),
        run_dir: sweep_dir.to_path_buf(),
        step: report_step(sweep_dir),
        gate: None,
        gpu: false,
        after: reports,
    });
    let exe = std::env::current_exe().context("cannot locate the xtask binary the jobs are to run")?;
    let written = crate::slurm::write_jobs(&jobs, sweep_dir, &cfg, &exe)?;
    let name = |p: &Path| p.file_name().map_or_else(|| "run".into(), |n| n.to_string_lossy().into_owned());
    let mut dirs: Vec<(String, PathBuf)> =
        runs.iter().map(|r| (name(&r.plan.run_dir), r.plan.run_dir.clone())).collect();
    dirs.push((name(sweep_dir), sweep_dir.to_path_buf()));
    crate::slurm::announce(&jobs, &written, &dirs, a.inputs.slurm.submit, a.inputs.slurm.wait, sweep_dir)
}

#[cfg(test)]
mod tests {
    use super::parse_seeds;

    #[test]
    fn seeds_parse_as_ranges_and_lists() {
        assert_eq!(parse_seeds("0-4").unwrap(), [0, 1, 2, 3, 4]);
        assert_eq!(parse_seeds("3,1, 7").unwrap(), [3, 1, 7]);
        assert_eq!(parse_seeds("0-1,5").unwrap(), [0, 1, 5]);
        for bad in ["", "a", "4-2", "1,1", "0-5000", "-1", "0-999,1000-1999", "0-18446744073709551615"] {
            assert!(parse_seeds(bad).is_err(), "{bad:?} accepted");
        }
    }
}
