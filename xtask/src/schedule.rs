//! One schedule: the job graph of a run, built once from its plan, and the one walk that
//! decides what of it remains to do. Three executors take it: the local loop
//! ([`crate::local`]) runs the jobs the walk hands it, one by one; `--print-commands`
//! ([`crate::print`]) renders every job; Slurm ([`crate::slurm`]) writes the jobs the walk
//! hands it as batch scripts.
//!
//! ```text
//! prepare ── train-01 ── train-02 ── … ── train-NN          the greedy loop (gated: patience)
//!               └ evaluate-01  └ evaluate-02    └ evaluate-NN
//! autoencoder-01 ── autoencoder-02 ── …                      after every train-NN (gated: loop reached)
//! finetune-NN, autoencoder-finetune-NN, baseline-NN          after their loop (gated: best/all)
//! report                                                     after every job
//! ```
//!
//! A decoupled schedule (`[greedy] schedule = "decoupled"`) has one training job for the
//! whole loop, `decoupled`, in place of the train-NN chain; evaluate-NN follow it.
//!
//! The walk goes through the jobs in order. A job none of whose inputs is still to come is
//! decided now, from the files on disk: its gate ([`crate::gate`]), then the completeness
//! judge ([`crate::judge`]): a complete folder is kept, a folder whose evaluation alone is
//! wrong is evaluated again, anything else is handed to the executor. The local executor
//! runs what it is handed at once, so every job is decided; the Slurm executor only writes
//! it down, so the jobs after it are handed on, with their gates, to be decided when they run.

use crate::gate::Gate;
use crate::judge::{check_dataset_of_run, dataset_ready, stage_state, DepthState};
use crate::plan::{Plan, Step};
use anyhow::{bail, Result};
use layerwise_core::dataset::Dataset;
use layerwise_core::decoupled::Schedule as LoopSchedule;
use layerwise_core::hash::sha256_file;
use layerwise_core::pipeline::{Depths, Pipeline, StageConfig};
use layerwise_core::run::{depth_dir, Phase, MODEL_FILE};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Prepare the dataset.
    Prepare,
    /// Train `stage`'s model of `depth`.
    Train {
        /// The training phase.
        stage: Phase,
        /// The depth.
        depth: usize,
    },
    /// Evaluate it.
    Evaluate {
        /// The training phase.
        stage: Phase,
        /// The depth.
        depth: usize,
    },
    /// Train every depth of a decoupled schedule at once.
    Decoupled,
    /// Write the run's report.
    Report,
}

impl Task {
    /// Its name in file names and messages: `prepare`, `train-03`, `evaluate-03`,
    /// `finetune-03`, `evaluate-finetune-03`, `report`.
    pub fn label(self) -> String {
        match self {
            Task::Prepare => "prepare".into(),
            Task::Train { stage: Phase::Greedy, depth } => format!("train-{depth:02}"),
            Task::Train { stage, depth } => format!("{stage}-{depth:02}"),
            Task::Evaluate { stage: Phase::Greedy, depth } => format!("evaluate-{depth:02}"),
            Task::Evaluate { stage, depth } => format!("evaluate-{stage}-{depth:02}"),
            Task::Decoupled => "decoupled".into(),
            Task::Report => "report".into(),
        }
    }

    /// The training phase and depth of a train or evaluate job.
    pub fn unit(self) -> Option<(Phase, usize)> {
        match self {
            Task::Train { stage, depth } | Task::Evaluate { stage, depth } => Some((stage, depth)),
            Task::Prepare | Task::Decoupled | Task::Report => None,
        }
    }
}

/// How messages name `stage`'s model of `depth`: `depth 3`, `finetune of depth 3`.
pub fn unit_name(stage: Phase, depth: usize) -> String {
    match stage {
        Phase::Greedy => format!("depth {depth}"),
        other => format!("{other} of depth {depth}"),
    }
}

/// One job of a schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// What it does.
    pub task: Task,
    /// The stage command it runs.
    pub step: Step,
    /// The jobs (indices into [`Schedule::jobs`], all earlier) that must have run first.
    pub after: Vec<usize>,
    /// Whether it still has work to do, decided when its turn comes.
    pub gate: Option<Gate>,
}

/// The job graph of a run: every job the plan can need, in an order that runs.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The jobs, each after the jobs it needs.
    pub jobs: Vec<Job>,
    /// The first depth of the greedy loop (1, or the depth after `--from`'s checkpoint).
    pub first: usize,
    /// `--from`'s checkpoint, which the first depth grows from.
    pub from: Option<PathBuf>,
}

/// The stages after the loops, in order, with their sections: `[finetune]` of the loop,
/// `[finetune]` of the `[autoencoder]` loop, `[baseline]`.
pub fn after_loop_stages(p: &Pipeline) -> Vec<(Phase, &StageConfig)> {
    [(Phase::Finetune, &p.finetune), (Phase::AutoencoderFinetune, &p.finetune), (Phase::Baseline, &p.baseline)]
        .into_iter()
        .filter(|&(stage, _)| p.has_stage(stage))
        .filter_map(|(stage, section)| Some((stage, section.as_ref()?)))
        .collect()
}

impl Schedule {
    /// Every job of `plan`, from `--from`'s checkpoint when given (its depth + 1 first).
    pub fn build(plan: &Plan, source: Option<&Path>, from: Option<&Path>) -> Result<Schedule> {
        let p = &plan.pipeline;
        let (first, from) = crate::judge::start(from)?;
        let mut jobs: Vec<Job> = Vec::new();
        let mut push = |task, step, after, gate| {
            jobs.push(Job { task, step, after, gate });
            jobs.len() - 1
        };
        let mut previous = push(Task::Prepare, plan.prepare_step(source), vec![], None);
        let mut trains = Vec::new();
        if p.greedy.schedule == LoopSchedule::Decoupled {
            if from.is_some() {
                bail!(
                    "--from continues a sequential loop; a decoupled schedule trains every depth at once: drop --from"
                );
            }
            let t = push(Task::Decoupled, plan.decoupled_step(), vec![previous], None);
            for depth in 1..=p.greedy.max_depth {
                push(
                    Task::Evaluate { stage: Phase::Greedy, depth },
                    plan.evaluate_stage_step(Phase::Greedy, depth),
                    vec![t],
                    None,
                );
            }
            trains.push(t);
        }
        // A model: its training job (after `after`), then its evaluation (after the training).
        let mut unit = |stage: Phase, depth: usize, train: Step, after: Vec<usize>, gate: Option<Gate>| {
            let t = push(Task::Train { stage, depth }, train, after, gate);
            push(Task::Evaluate { stage, depth }, plan.evaluate_stage_step(stage, depth), vec![t], gate);
            t
        };
        let mut parent = from.clone();
        let sequential = if p.greedy.schedule == LoopSchedule::Decoupled { 0 } else { p.greedy.max_depth };
        for depth in first..=sequential {
            let gate = Some(Gate { first, depth, after_loop: None, best_of: Phase::Greedy });
            previous = unit(Phase::Greedy, depth, plan.train_step(depth, parent.as_deref()), vec![previous], gate);
            parent = Some(depth_dir(&plan.run_dir, depth).join(MODEL_FILE));
            trains.push(previous);
        }
        // The [autoencoder] loop: a chain over the same depths from depth 1, after the
        // loop's training (its gates check that the loop reached each depth).
        let mut ae_trains = Vec::new();
        if p.autoencoder.is_some() {
            for depth in 1..=p.greedy.max_depth {
                let gate = Some(Gate { first, depth, after_loop: Some(Depths::All), best_of: Phase::Greedy });
                let after = trains.iter().chain(ae_trains.last()).copied().collect();
                let step = plan.stage_train_step(Phase::Autoencoder, depth);
                ae_trains.push(unit(Phase::Autoencoder, depth, step, after, gate));
            }
        }
        // After the loops: fine-tuning and the baseline, a job per depth the loop can reach,
        // after all of its loop's training; the gate decides which depths it covers.
        for (stage, section) in after_loop_stages(p) {
            let (after, lowest) = match stage.loop_phase() {
                Phase::Autoencoder => ([&trains[..], &ae_trains[..]].concat(), 1),
                _ => (trains.clone(), first),
            };
            for depth in lowest..=p.greedy.max_depth {
                let gate = Some(Gate { first, depth, after_loop: Some(section.depths), best_of: stage.loop_phase() });
                unit(stage, depth, plan.stage_train_step(stage, depth), after.clone(), gate);
            }
        }
        let all = (0..jobs.len()).collect();
        jobs.push(Job { task: Task::Report, step: plan.report_step(), after: all, gate: None });
        Ok(Schedule { jobs, first, from })
    }
}

/// What the walk decided about a job without handing it to the executor.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The dataset is prepared already.
    Prepared,
    /// The gate says the job has nothing to do.
    Gated(String),
    /// The folder is complete: kept as it is (training and evaluation).
    Complete {
        /// Its kept validation accuracy.
        val_accuracy: f64,
    },
    /// Checkpoint and history are kept; only the evaluation is done again.
    Reevaluate(String),
    /// The folder must be trained (again); `existed`: whether it was there.
    Retrain {
        /// Why.
        why: String,
        /// Whether the folder was there with a depth to train again (one holding only a
        /// saved training state is resumed, which the training stage says).
        existed: bool,
    },
}

/// A job the walk hands to the executor.
#[derive(Debug, Clone)]
pub struct Handed<'a> {
    /// Its index in the schedule.
    pub index: usize,
    /// The job.
    pub job: &'a Job,
    /// The jobs handed on before it that it waits for (the others are done).
    pub after: Vec<usize>,
    /// Its gate, unless the walk has passed it already.
    pub gate: Option<Gate>,
}

/// Runs or hands on the jobs of a walk.
pub trait Executor {
    /// Do `job`: `Ok(true)` when it has run (its outputs are on disk), `Ok(false)` when it
    /// was handed on (its outcome is known only once it runs).
    fn dispatch(&mut self, job: Handed<'_>) -> Result<bool>;

    /// What the walk decided about `job` without dispatching it (or before it does).
    fn decided(&mut self, _job: &Job, _decision: &Decision) {}
}

/// A model the walk knows to be complete: kept, or made by the executor.
#[derive(Debug, Clone, PartialEq)]
pub struct Known {
    /// The training phase.
    pub stage: Phase,
    /// The depth.
    pub depth: usize,
    /// The validation accuracy of the epoch its run kept.
    pub val_accuracy: f64,
    /// Its checkpoint's SHA-256.
    pub sha: String,
    /// Whether it was kept (not trained by this walk).
    pub reused: bool,
}

/// What a walk found.
#[derive(Debug, Clone, Default)]
pub struct Walked {
    /// The models known complete, in schedule order.
    pub known: Vec<Known>,
    /// Whether a gate stopped the greedy loop before its last depth (patience).
    pub stopped_early: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Status {
    /// Done, or nothing to do: the jobs after it can be decided.
    Done,
    /// A training job whose model is complete already: kept, its evaluation too.
    Complete,
    /// Gated off (its evaluation goes with it).
    Gated,
    /// Handed on: the jobs after it are handed on too.
    Handed,
}

/// What a dispatched job became: run (`true`), or handed on.
fn ran(done: bool) -> Status {
    if done {
        Status::Done
    } else {
        Status::Handed
    }
}

impl Schedule {
    /// Walk the schedule for `plan` (see the module's documentation).
    pub fn walk(&self, plan: &Plan, source: Option<&Path>, ex: &mut dyn Executor) -> Result<Walked> {
        let mut status: Vec<Status> = Vec::with_capacity(self.jobs.len());
        let mut out = Walked::default();
        let mut fingerprint: Option<String> = None;
        // Each model's checkpoint hash, once known.
        let mut shas: HashMap<(Phase, usize), String> = HashMap::new();
        let from_sha = self.from.as_deref().map(sha256_file).transpose()?;
        for (index, job) in self.jobs.iter().enumerate() {
            let waiting: Vec<usize> = job.after.iter().copied().filter(|&a| status[a] == Status::Handed).collect();
            let handed = |gate| Handed { index, job, after: waiting.clone(), gate };
            let unknown = !waiting.is_empty() || (fingerprint.is_none() && job.task.unit().is_some());
            if unknown {
                let ran = ex.dispatch(handed(job.gate))?;
                if ran {
                    bail!("internal: job {} ran before the jobs it needs", job.task.label());
                }
                status.push(Status::Handed);
                continue;
            }
            let gated = match (job.task, job.gate) {
                // An evaluation goes with its training: gated, kept or handed with it.
                (Task::Evaluate { .. }, _) => status[job.after[0]] == Status::Gated,
                (_, Some(g)) => match g.ask(&plan.run_dir, &plan.pipeline)? {
                    Some(reason) => {
                        if job.task == (Task::Train { stage: Phase::Greedy, depth: g.depth }) {
                            out.stopped_early = true;
                        }
                        ex.decided(job, &Decision::Gated(reason));
                        true
                    }
                    None => false,
                },
                _ => false,
            };
            if gated {
                status.push(Status::Gated);
                continue;
            }
            let parent_sha = |stage: Phase, depth: usize| -> Result<Option<String>> {
                if stage == Phase::Greedy && depth == self.first {
                    return Ok(from_sha.clone());
                }
                match stage.parent(depth) {
                    Some(p) => match shas.get(&p) {
                        Some(s) => Ok(Some(s.clone())),
                        None => bail!("internal: {} has no known parent", job.task.label()),
                    },
                    None => Ok(None),
                }
            };
            let next = match job.task {
                Task::Prepare => {
                    let done = if dataset_ready(plan, source)? {
                        ex.decided(job, &Decision::Prepared);
                        true
                    } else {
                        ex.dispatch(handed(None))?
                    };
                    if done {
                        let fp = Dataset::open(&plan.data)?.meta.fingerprint;
                        check_dataset_of_run(plan, &fp)?;
                        fingerprint = Some(fp);
                    }
                    ran(done)
                }
                Task::Report => ran(ex.dispatch(handed(None))?),
                Task::Decoupled => {
                    let fp = fingerprint.as_deref().unwrap_or_default();
                    match decoupled_state(plan, fp) {
                        Ok(found) => {
                            let all_evaluated = found.iter().all(|(_, v, _)| v.is_some());
                            let kept = found.last().and_then(|(_, v, _)| *v).unwrap_or(f64::NAN);
                            for (depth, v, sha) in found {
                                if let (true, Some(val_accuracy)) = (all_evaluated, v) {
                                    out.known.push(Known {
                                        stage: Phase::Greedy,
                                        depth,
                                        val_accuracy,
                                        sha: sha.clone(),
                                        reused: true,
                                    });
                                }
                                shas.insert((Phase::Greedy, depth), sha);
                            }
                            if all_evaluated {
                                ex.decided(job, &Decision::Complete { val_accuracy: kept });
                                Status::Complete
                            } else {
                                ex.decided(
                                    job,
                                    &Decision::Reevaluate("a depth's evaluation is missing or stale".into()),
                                );
                                Status::Done
                            }
                        }
                        Err(why) => {
                            let existed = depth_dir(&plan.run_dir, 1).join(MODEL_FILE).exists();
                            ex.decided(job, &Decision::Retrain { why, existed });
                            ran(ex.dispatch(handed(None))?)
                        }
                    }
                }
                Task::Train { stage, depth } => {
                    let fp = fingerprint.as_deref().unwrap_or_default();
                    let parent = parent_sha(stage, depth)?;
                    let folder = layerwise_core::run::phase_dir(&plan.run_dir, stage, depth);
                    match stage_state(plan, stage, depth, parent.as_deref(), fp) {
                        DepthState::Complete { val_accuracy, sha } => {
                            ex.decided(job, &Decision::Complete { val_accuracy });
                            out.known.push(Known { stage, depth, val_accuracy, sha: sha.clone(), reused: true });
                            shas.insert((stage, depth), sha);
                            Status::Complete
                        }
                        DepthState::NeedsEvaluation { sha, why, .. } => {
                            ex.decided(job, &Decision::Reevaluate(why));
                            shas.insert((stage, depth), sha);
                            Status::Done
                        }
                        DepthState::NeedsTraining { why } => {
                            // A folder holding only a saved training state is resumed (the
                            // training stage says so), not trained again.
                            let resumes = folder.join(layerwise_core::run::STATE_FILE).is_file()
                                && !folder.join(layerwise_core::run::MODEL_FILE).exists();
                            ex.decided(job, &Decision::Retrain { why, existed: folder.exists() && !resumes });
                            ran(ex.dispatch(handed(None))?)
                        }
                    }
                }
                Task::Evaluate { stage, depth } => {
                    if status[job.after[0]] == Status::Complete {
                        Status::Done
                    } else if ex.dispatch(handed(None))? {
                        // Made (or evaluated) now: its files must agree.
                        let fp = fingerprint.as_deref().unwrap_or_default();
                        let parent = parent_sha(stage, depth)?;
                        let reused = shas.contains_key(&(stage, depth));
                        match stage_state(plan, stage, depth, parent.as_deref(), fp) {
                            DepthState::Complete { val_accuracy, sha } => {
                                out.known.push(Known { stage, depth, val_accuracy, sha: sha.clone(), reused });
                                shas.insert((stage, depth), sha);
                                Status::Done
                            }
                            _ => bail!(
                                "{} was {} but its files do not agree; rerun to redo it",
                                unit_name(stage, depth),
                                if reused { "evaluated" } else { "trained" }
                            ),
                        }
                    } else {
                        Status::Handed
                    }
                }
            };
            status.push(next);
        }
        Ok(out)
    }
}

/// Every depth of a decoupled run, when each one's checkpoint is there and holds (its
/// parent the depth before): `(depth, val_accuracy where its evaluation holds too, sha)`;
/// else why the run is to train (again).
fn decoupled_state(plan: &Plan, fingerprint: &str) -> std::result::Result<Vec<(usize, Option<f64>, String)>, String> {
    let mut parent: Option<String> = None;
    let mut found = Vec::new();
    for depth in 1..=plan.pipeline.greedy.max_depth {
        let (v, sha) = match stage_state(plan, Phase::Greedy, depth, parent.as_deref(), fingerprint) {
            DepthState::Complete { val_accuracy, sha } => (Some(val_accuracy), sha),
            DepthState::NeedsEvaluation { sha, .. } => (None, sha),
            DepthState::NeedsTraining { why } => return Err(format!("depth {depth}: {why}")),
        };
        parent = Some(sha.clone());
        found.push((depth, v, sha));
    }
    Ok(found)
}
