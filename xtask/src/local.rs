//! The local executor: runs a run's [`Schedule`] here, in order, each job in this process
//! through its stage's own command-line parser, deciding each gate when its turn comes.

use crate::args::GreedyArgs;
use crate::judge::open_run;
use crate::plan::Plan;
use crate::schedule::{unit_name, Decision, Executor, Handed, Known, Schedule, Task};
use anyhow::Result;
use layerwise_core::metrics::best_by_validation;
use layerwise_core::run::{depth_dir, phase_dir, Phase};
use std::path::PathBuf;

/// What the loop found or did at one depth.
#[derive(Debug, Clone, PartialEq)]
pub struct DepthOutcome {
    /// Depth.
    pub depth: usize,
    /// Validation accuracy at the end of its training.
    pub val_accuracy: f64,
    /// Whether it was already complete (not retrained).
    pub reused: bool,
}

/// What the loop found or did for a stage after the greedy loop (`[finetune]`, `[baseline]`).
#[derive(Debug, Clone, PartialEq)]
pub struct StageOutcome {
    /// The stage.
    pub stage: Phase,
    /// The depth.
    pub depth: usize,
    /// Validation accuracy of the weights it kept.
    pub val_accuracy: f64,
    /// Whether it was already complete (not retrained).
    pub reused: bool,
}

/// The result of a greedy run.
#[derive(Debug, Clone)]
pub struct GreedyOutcome {
    /// Depths in order.
    pub depths: Vec<DepthOutcome>,
    /// Best depth by validation accuracy.
    pub best_depth: usize,
    /// Whether patience stopped the loop before max_depth.
    pub stopped_early: bool,
    /// The fine-tuned and baseline models, after the loop.
    pub stages: Vec<StageOutcome>,
    /// The run folder.
    pub run_dir: PathBuf,
}

/// Run the plan here: every job the schedule's walk hands over, at once.
pub fn run(plan: &Plan, a: &GreedyArgs) -> Result<GreedyOutcome> {
    let _lock = open_run(plan, a)?;
    let schedule = Schedule::build(plan, a.inputs.source.as_deref(), a.from.as_deref())?;
    let mut ex = Local { plan, ui: Ui::new(a.inputs.plain, plan.pipeline.greedy.max_depth), told_stop: false };
    let walked = schedule.walk(plan, a.inputs.source.as_deref(), &mut ex)?;
    ex.ui.finish();
    let depths: Vec<DepthOutcome> = walked
        .known
        .iter()
        .filter(|k| k.stage == Phase::Greedy)
        .map(|k: &Known| DepthOutcome { depth: k.depth, val_accuracy: k.val_accuracy, reused: k.reused })
        .collect();
    let stages: Vec<StageOutcome> = walked
        .known
        .iter()
        .filter(|k| k.stage != Phase::Greedy)
        .map(|k| StageOutcome { stage: k.stage, depth: k.depth, val_accuracy: k.val_accuracy, reused: k.reused })
        .collect();
    let best_depth = best_by_validation(depths.iter().map(|d| (d.depth, d.val_accuracy))).map_or(0, |b| b.0);
    tidy(plan, &depths, &stages);
    Ok(GreedyOutcome { depths, best_depth, stopped_early: walked.stopped_early, stages, run_dir: plan.run_dir.clone() })
}

struct Local<'a> {
    plan: &'a Plan,
    ui: Ui,
    told_stop: bool,
}

impl Executor for Local<'_> {
    fn dispatch(&mut self, job: Handed<'_>) -> Result<bool> {
        if job.job.task == Task::Prepare {
            self.ui.line("preparing the dataset");
        }
        job.job.step.run()?;
        Ok(true)
    }

    fn decided(&mut self, job: &crate::schedule::Job, decision: &Decision) {
        let Some((stage, depth)) = job.task.unit() else {
            if job.task == Task::Decoupled {
                let text = match decision {
                    Decision::Complete { .. } => "decoupled: every depth is complete already, kept".to_string(),
                    Decision::Reevaluate(why) => format!("decoupled: checkpoints kept, evaluating again: {why}"),
                    Decision::Retrain { why, existed: true } => format!("decoupled: training every depth again: {why}"),
                    _ => format!(
                        "decoupled: training every depth at once ({})",
                        layerwise_core::plural(self.plan.decoupled.groups, "group")
                    ),
                };
                self.ui.line(&text);
            }
            if *decision == Decision::Prepared {
                self.ui.line(&format!("dataset {} is prepared already", self.plan.data.display()));
            }
            return;
        };
        if let Decision::Gated(reason) = decision {
            // The loop's stop is said once; the depths a stage after the loop does not
            // cover are not worth a line.
            if stage == Phase::Greedy && !self.told_stop {
                self.told_stop = true;
                self.ui.line(&format!("stopping: {reason}"));
            }
            return;
        }
        if let Task::Train { stage: Phase::Greedy, depth } = job.task {
            self.ui.depth(depth);
        }
        let name = unit_name(stage, depth);
        match decision {
            Decision::Complete { val_accuracy } => {
                self.ui.line(&format!("{name}: complete already (val_acc {val_accuracy:.4}), kept"))
            }
            Decision::Reevaluate(why) => {
                self.ui.line(&format!("{name}: checkpoint and history kept, evaluating again: {why}"))
            }
            Decision::Retrain { why, existed: true } => self.ui.line(&format!("{name}: training again: {why}")),
            Decision::Retrain { existed: false, .. } if stage != Phase::Greedy => {
                self.ui.line(&format!("{name}: training"))
            }
            Decision::Retrain { .. } | Decision::Prepared | Decision::Gated(_) => {}
        }
    }
}

/// After a run: remove what killed processes left and nothing will write again: temp files
/// of dead writers in the run folder, its depth folders and the datasets folder, and the
/// training state of complete depths (a kill between the checkpoint's rename and the
/// state's removal leaves one).
fn tidy(plan: &Plan, depths: &[DepthOutcome], stages: &[StageOutcome]) {
    use layerwise_core::atomic::remove_dead_temps;
    remove_dead_temps(&plan.run_dir);
    if let Some(datasets) = plan.data.parent() {
        remove_dead_temps(datasets);
    }
    let dirs = depths
        .iter()
        .map(|d| depth_dir(&plan.run_dir, d.depth))
        .chain(stages.iter().map(|s| phase_dir(&plan.run_dir, s.stage, s.depth)));
    for dir in dirs {
        remove_dead_temps(&dir);
        let _ = std::fs::remove_file(dir.join(layerwise_core::run::STATE_FILE));
    }
    // A depth's frozen features serve only the depth after it: each loop keeps its deepest
    // depth's (for a run continued deeper), the others go (51 MB each for CIFAR-10 at width
    // 256). A depth that finds none recomputes them.
    let ae: Vec<usize> = stages.iter().filter(|s| s.stage == Phase::Autoencoder).map(|s| s.depth).collect();
    for (stage, depths) in
        [(Phase::Greedy, depths.iter().map(|d| d.depth).collect::<Vec<_>>()), (Phase::Autoencoder, ae)]
    {
        let deepest = depths.iter().max().copied();
        for d in depths.into_iter().filter(|d| Some(*d) != deepest) {
            let _ =
                std::fs::remove_file(phase_dir(&plan.run_dir, stage, d).join(layerwise_core::features::FEATURES_FILE));
        }
    }
}

/// The bar over a run's depths: how many are done, and (its message) the one training now.
const RUN_BAR: &str = "greedy {bar:30.cyan} {pos}/{len} depths done {msg} [{elapsed}]";

/// The bar over depths (on a terminal) or plain lines.
struct Ui {
    bar: Option<indicatif::ProgressBar>,
}

impl Ui {
    fn new(plain: bool, max_depth: usize) -> Self {
        let bar = (!plain && layerwise_core::progress::stderr_is_terminal()).then(|| {
            let multi = layerwise_core::progress::install_multi();
            let bar = multi.add(indicatif::ProgressBar::new(max_depth as u64));
            bar.set_style(
                indicatif::ProgressStyle::with_template(RUN_BAR)
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        Self { bar }
    }

    fn depth(&self, depth: usize) {
        match &self.bar {
            Some(b) => {
                b.set_position(depth as u64 - 1);
                b.set_message(format!("· training depth {depth}"));
            }
            None => eprintln!("== depth {depth} =="),
        }
    }

    fn line(&self, text: &str) {
        layerwise_core::progress::println(text);
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_run_bar_counts_depths_done_and_names_the_one_training() {
        // It said "depth 0/1" while depth 1 trained.
        assert!(super::RUN_BAR.contains("{pos}/{len} depths done {msg}"));
        assert!(indicatif::ProgressStyle::with_template(super::RUN_BAR).is_ok());
    }
}
