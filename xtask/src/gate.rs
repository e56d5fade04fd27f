//! Gates: whether a job of a schedule still has work to do, decided from the files on disk
//! when the job's turn comes. The greedy loop stops when patience runs out; a stage after
//! the loop covers the best depth, or every depth the loop reached. One rule for every
//! executor: the local loop asks in-process, a Slurm job asks through `xtask gate`, and
//! the Slurm executor asks while it writes the jobs, for the gates whose files are there.
//! A depth is judged by the epoch its run keeps ([`TrainHistory::kept`]), as the report
//! judges it.

use anyhow::{Context, Result};
use layerwise_core::metrics::{best_by_validation, patience_stop, TrainHistory};
use layerwise_core::pipeline::{Depths, Pipeline};
use layerwise_core::run::{phase_dir, Phase, HISTORY_FILE, PIPELINE_FILE};
use std::path::Path;

/// Where a job asks whether the loop has stopped before its depth.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gate {
    /// The run's first depth (1, or the depth after `--from`'s checkpoint).
    pub first: usize,
    /// The job's depth.
    pub depth: usize,
    /// For a job after the loop (fine-tuning, baseline, the `[autoencoder]` loop): which
    /// greedy depths it covers; the job runs only if the loop trained its depth (and, for
    /// `best`, found it best).
    pub after_loop: Option<Depths>,
    /// The loop whose depths decide `best`: the `[train]` loop, or the `[autoencoder]` one.
    pub best_of: Phase,
}

/// Exit status of `xtask gate` when the job has nothing to do.
pub const GATE_STOPPED: u8 = 3;

impl Gate {
    /// The `xtask gate` arguments that ask this gate about run folder `run`.
    pub fn args(&self, run: &Path) -> Vec<String> {
        let mut a = vec![
            "--run-dir".into(),
            run.to_string_lossy().into_owned(),
            "--first".into(),
            self.first.to_string(),
            "--depth".into(),
            self.depth.to_string(),
        ];
        if let Some(d) = self.after_loop {
            a.extend(["--after-loop".into(), d.name().into()]);
        }
        if self.best_of != Phase::Greedy {
            a.extend(["--best-of".into(), self.best_of.name().into()]);
        }
        a
    }

    /// `None`: the job goes ahead; `Some(reason)`: it has nothing to do. See [`gate`];
    /// `pipeline` is the one the run folder records (the caller has it in memory).
    pub fn ask(&self, run: &Path, pipeline: &Pipeline) -> Result<Option<String>> {
        decide(run, pipeline, self.first, self.depth, self.after_loop, self.best_of)
    }
}

/// The kept validation accuracy of each depth of `stage`'s loop that has a history.
fn accs_of_loop(run_dir: &Path, stage: Phase, max_depth: usize) -> Result<Vec<(usize, f64)>> {
    let mut accs = Vec::new();
    for d in 1..=max_depth {
        let path = phase_dir(run_dir, stage, d).join(HISTORY_FILE);
        if path.exists() {
            let h = TrainHistory::read(&path)?;
            accs.push((d, h.kept().with_context(|| format!("{} has no epochs", path.display()))?.val_accuracy));
        }
    }
    Ok(accs)
}

/// `xtask gate`: whether the greedy loop of `run_dir` goes on to `depth`, from the
/// `train.json` of each depth before it and the run's recorded pipeline (patience, max
/// depth). With `after_loop` (a job run once the loop's jobs are done): whether the loop
/// trained `depth` and, for `best`, found it the best by validation accuracy (`best_of`:
/// the loop whose depths decide it). `None`: go on; `Some(reason)`: nothing to do.
pub fn gate(
    run_dir: &Path,
    first: usize,
    depth: usize,
    after_loop: Option<Depths>,
    best_of: Phase,
) -> Result<Option<String>> {
    let pipeline = Pipeline::load(&run_dir.join(PIPELINE_FILE))?;
    decide(run_dir, &pipeline, first, depth, after_loop, best_of)
}

/// [`gate`] with the run's recorded pipeline given.
fn decide(
    run_dir: &Path,
    pipeline: &Pipeline,
    first: usize,
    depth: usize,
    after_loop: Option<Depths>,
    best_of: Phase,
) -> Result<Option<String>> {
    let g = &pipeline.greedy;
    if depth > g.max_depth {
        return Ok(Some(format!("depth {depth} is beyond the pipeline's max_depth {}", g.max_depth)));
    }
    let last = if after_loop.is_some() { g.max_depth } else { depth - 1 };
    let mut accs = Vec::new();
    for d in first..=last {
        let path = phase_dir(run_dir, Phase::Greedy, d).join(HISTORY_FILE);
        let h = TrainHistory::read(&path).with_context(|| {
            format!(
                "depth {depth} needs depth {d}'s history to apply patience, and cannot read it (did depth {d}'s \
                 training job complete?)"
            )
        })?;
        let acc = h.kept().with_context(|| format!("{} has no epochs", path.display()))?.val_accuracy;
        accs.push((d, acc));
        if let Some(best) = patience_stop(&accs, g.patience, g.max_depth) {
            if after_loop.is_none() || d < depth {
                let subject = match after_loop {
                    Some(_) => format!("this stage's model of depth {depth} is"),
                    None => format!("depth {depth} is"),
                };
                return Ok(Some(format!(
                    "the greedy loop stopped after depth {d}: validation accuracy has not improved for {} \
                     (best: depth {best}), so {subject} not trained or evaluated",
                    layerwise_core::plural(g.patience, "depth")
                )));
            }
            break;
        }
    }
    if after_loop == Some(Depths::Best) {
        if best_of != Phase::Greedy {
            // That loop's depths, as far as the loop reached (its jobs are done by now).
            accs = accs_of_loop(run_dir, best_of, g.max_depth)?;
        }
        let best = best_by_validation(accs.iter().copied()).map(|b| b.0);
        if best != Some(depth) {
            return Ok(Some(format!(
                "depth {depth} is not the best {} depth by validation accuracy (depth {} is)",
                best_of.name(),
                best.map_or("–".into(), |b| b.to_string())
            )));
        }
    }
    Ok(None)
}
