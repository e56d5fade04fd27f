//! The greedy loop. Every step is a stage's command line ([`Step::args`]) run through that
//! stage's own `cli::run`: what `--print-commands` prints is exactly what runs.
//!
//! A run folder holds `pipeline.toml` (the pipeline it runs), `depth-NN/` folders
//! (`model.safetensors`, `train.json`, `eval.json`) and the report. A depth is complete
//! when its three files agree with each other, with the parent depth, the dataset and
//! the pipeline; completed depths are never redone, an incomplete one is redone from its
//! start.

use anyhow::{bail, Context, Result};
use layerwise_core::checkpoint::read_checkpoint_meta;
use layerwise_core::config::TrainConfig;
use layerwise_core::dataset::Dataset;
use layerwise_core::hash::sha256_file;
use layerwise_core::metrics::{best_by_validation, patience_stop, Evaluation, TrainHistory};
use layerwise_core::pipeline::Depths;
use layerwise_core::pipeline::Pipeline;
use layerwise_core::run::{
    depth_dir, parse_depth_dir, parse_stage_dir, stage_dir, RunLock, Stage, EVAL_FILE, HISTORY_FILE, LOCK_FILE,
    MODEL_FILE, PIPELINE_FILE, REPORT_FILES,
};
use layerwise_nn::device::DeviceKind;
use std::path::{Path, PathBuf};

/// `cargo xtask greedy` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct GreedyArgs {
    /// Pipeline file (default: pipelines/seed.toml, the tutorial).
    #[arg(long)]
    pub pipeline: Option<PathBuf>,
    /// Run folder (default: artifacts/runs/<pipeline name>).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Override the pipeline's train.seed (the default run folder gets a `-seedN` suffix),
    /// to see run-to-run variation.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Continue the loop from this checkpoint (its depth + 1 is trained next).
    #[arg(long)]
    pub from: Option<PathBuf>,
    /// Start the run over: delete its depths and report first.
    #[arg(long)]
    pub restart: bool,
    /// Print the plan as stage commands, one per line, and run nothing.
    #[arg(long)]
    pub print_commands: bool,
    /// Where the data comes from, where things go, how and where it runs.
    #[command(flatten)]
    pub inputs: RunInputs,
}

/// What a greedy run is given besides its pipeline and run folder: shared by
/// `cargo xtask greedy` and `cargo xtask sweep` (which passes it to each of its runs).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunInputs {
    /// CIFAR-10 folder or tarball (default: found or downloaded by the prepare stage).
    #[arg(long)]
    pub source: Option<PathBuf>,
    /// Artifacts folder: datasets, downloads and default run and sweep folders.
    #[arg(long)]
    pub artifacts: Option<PathBuf>,
    /// cpu or cuda.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceKind,
    /// Override the pipeline's greedy.max_depth.
    #[arg(long)]
    pub max_depth: Option<usize>,
    /// Plain progress lines even on a terminal.
    #[arg(long)]
    pub plain: bool,
    /// Hand the plan to a cluster scheduler instead of running it here: `slurm` writes
    /// one batch script per step into RUN/slurm/ (see --submit, --wait).
    #[arg(long, value_enum)]
    pub scheduler: Option<crate::slurm::Scheduler>,
    /// Slurm options (with --scheduler slurm).
    #[command(flatten)]
    pub slurm: crate::slurm::SlurmArgs,
}

/// One stage invocation.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The stage's binary name (`layerwise-train`...).
    pub program: &'static str,
    /// Its arguments.
    pub args: Vec<String>,
}

impl Step {
    fn new(program: &'static str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Self {
        Self { program, args: args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect() }
    }

    /// The command line, shell-quoted where needed.
    pub fn command_line(&self) -> String {
        std::iter::once(self.program.to_string())
            .chain(self.args.iter().map(|a| shell_quote(a)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Run the stage in this process, through its command-line parser.
    pub fn run(&self) -> Result<()> {
        self.run_bare().with_context(|| format!("step failed: {}", self.command_line()))
    }

    /// [`Step::run`] without naming the step in an error (as the stage binary itself does).
    pub fn run_bare(&self) -> Result<()> {
        let argv = std::iter::once(self.program.to_string()).chain(self.args.iter().cloned());
        match self.program {
            "layerwise-prepare" => layerwise_prepare::cli::run(argv),
            "layerwise-train" => layerwise_train::cli::run(argv),
            "layerwise-evaluate" => layerwise_evaluate::cli::run(argv),
            "layerwise-report" => layerwise_report::cli::run(argv),
            other => bail!("internal: unknown stage {other}"),
        }
    }
}

/// Quote for a POSIX shell when needed.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Everything resolved from the arguments.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The pipeline (with overrides applied).
    pub pipeline: Pipeline,
    /// Where the pipeline came from.
    pub pipeline_path: PathBuf,
    /// Run folder.
    pub run_dir: PathBuf,
    /// Prepared dataset file.
    pub data: PathBuf,
    /// Artifacts folder.
    pub artifacts: PathBuf,
    /// Device.
    pub device: DeviceKind,
}

impl Plan {
    /// Resolve defaults (pipeline, run folder, dataset file name) from the arguments.
    pub fn new(a: &GreedyArgs) -> Result<Self> {
        let root = crate::repo_root();
        let pipeline_path = a.pipeline.clone().unwrap_or_else(|| root.join("pipelines/seed.toml"));
        let mut pipeline = Pipeline::load(&pipeline_path)?;
        if let Some(d) = a.inputs.max_depth {
            pipeline.greedy.max_depth = d;
            pipeline.validate().context("--max-depth")?;
        }
        let mut run_name = pipeline.name.clone();
        if let Some(seed) = a.seed {
            pipeline.train.seed = seed;
            run_name += &format!("-seed{seed}");
        }
        let artifacts = a.inputs.artifacts.clone().unwrap_or_else(|| root.join("artifacts"));
        let run_dir = a.run_dir.clone().unwrap_or_else(|| artifacts.join("runs").join(run_name));
        let d = &pipeline.data;
        let mut name = format!("cifar-10-{}-val{}", d.normalize, d.val_fraction);
        if d.limit_train > 0 {
            name += &format!("-train{}", d.limit_train);
        }
        if d.limit_test > 0 {
            name += &format!("-test{}", d.limit_test);
        }
        let data = artifacts.join("datasets").join(format!("{name}.safetensors"));
        // Paths under the working folder are kept relative, so printed plans work on every
        // machine that mounts the project (and its artifacts) somewhere else.
        let (pipeline_path, run_dir, data, artifacts) =
            (relative(pipeline_path), relative(run_dir), relative(data), relative(artifacts));
        Ok(Self { pipeline, pipeline_path, run_dir, data, artifacts, device: a.inputs.device })
    }

    fn device_args(&self) -> Vec<String> {
        match self.device {
            DeviceKind::Cpu => vec![],
            d => vec!["--device".into(), d.name().into()],
        }
    }

    /// The prepare step.
    pub fn prepare_step(&self, source: Option<&Path>) -> Step {
        let d = &self.pipeline.data;
        let mut s = Step::new(
            "layerwise-prepare",
            &[
                &"--out",
                &self.data,
                &"--normalize",
                &d.normalize.name(),
                &"--val-fraction",
                &d.val_fraction.to_string(),
                &"--artifacts",
                &self.artifacts,
            ],
        );
        if let Some(src) = source {
            s.args.extend(["--source".into(), src.to_string_lossy().into_owned()]);
        }
        for (flag, v) in [("--limit-train", d.limit_train), ("--limit-test", d.limit_test)] {
            if v > 0 {
                s.args.extend([flag.into(), v.to_string()]);
            }
        }
        s
    }

    /// Train depth `depth` from `from` (None at depth 1).
    pub fn train_step(&self, depth: usize, from: Option<&Path>) -> Step {
        let mut s = Step::new(
            "layerwise-train",
            &[
                &"--data",
                &self.data,
                &"--out",
                &depth_dir(&self.run_dir, depth),
                &"--pipeline",
                &self.run_dir.join(PIPELINE_FILE),
            ],
        );
        if let Some(f) = from {
            s.args.extend(["--from".into(), f.to_string_lossy().into_owned()]);
        }
        s.args.extend(self.device_args());
        s
    }

    /// Evaluate depth `depth`.
    pub fn evaluate_step(&self, depth: usize) -> Step {
        self.evaluate_stage_step(Stage::Greedy, depth)
    }

    /// The training settings of `stage`'s runs ([`Pipeline::stage_config`]).
    pub fn stage_config(&self, stage: Stage) -> TrainConfig {
        self.pipeline.stage_config(stage)
    }

    /// Fine-tune greedy depth `depth` end to end, or train `depth` layers from scratch.
    pub fn stage_train_step(&self, stage: Stage, depth: usize) -> Step {
        let c = self.stage_config(stage);
        let mut s = Step::new(
            "layerwise-train",
            &[
                &"--data",
                &self.data,
                &"--out",
                &stage_dir(&self.run_dir, stage, depth),
                &"--pipeline",
                &self.run_dir.join(PIPELINE_FILE),
                &"--regime",
                &stage.regime().name(),
                &"--epochs",
                &c.epochs.to_string(),
                &"--lr",
                &c.lr.to_string(),
            ],
        );
        let from = match stage {
            Stage::Finetune => Some(depth_dir(&self.run_dir, depth)),
            Stage::AutoencoderFinetune => Some(stage_dir(&self.run_dir, Stage::Autoencoder, depth)),
            Stage::Autoencoder => {
                s.args.extend(["--objective".into(), c.objective.name().into()]);
                s.args.extend(["--corruption".into(), c.corruption.to_string()]);
                s.args.extend(["--decoder".into(), c.decoder.name().into()]);
                s.args.extend(["--probe-epochs".into(), c.probe_epochs().to_string()]);
                (depth > 1).then(|| stage_dir(&self.run_dir, Stage::Autoencoder, depth - 1))
            }
            Stage::Baseline | Stage::Greedy => {
                s.args.extend(["--depth".into(), depth.to_string()]);
                None
            }
        };
        if let Some(dir) = from {
            s.args.extend(["--from".into(), dir.join(MODEL_FILE).to_string_lossy().into_owned()]);
        }
        s.args.extend(self.device_args());
        s
    }

    /// Evaluate `stage`'s model of depth `depth`.
    pub fn evaluate_stage_step(&self, stage: Stage, depth: usize) -> Step {
        let dir = stage_dir(&self.run_dir, stage, depth);
        let mut s = Step::new(
            "layerwise-evaluate",
            &[
                &"--model",
                &dir.join(MODEL_FILE),
                &"--data",
                &self.data,
                &"--split",
                &self.pipeline.greedy.evaluate.name(),
                &"--out",
                &dir.join(EVAL_FILE),
            ],
        );
        s.args.extend(self.device_args());
        s
    }

    /// The report step.
    pub fn report_step(&self) -> Step {
        Step::new("layerwise-report", &[&"--run", &self.run_dir])
    }
}

/// `path` relative to the working folder when it lies under it, else unchanged.
fn relative(path: PathBuf) -> PathBuf {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(&cwd).ok().map(PathBuf::from))
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(path)
}

/// The settings that decide what a completed depth contains: a change in them makes the
/// run's completed depths stale.
fn affects_completed(p: &Pipeline) -> impl PartialEq + std::fmt::Debug {
    (p.data.clone(), p.train.clone(), p.greedy.evaluate)
}

/// A `[finetune]`, `[baseline]` or `[autoencoder]` section that differs from the recorded
/// one (changed, removed or added) while the run folder holds that stage's folders would
/// leave those outputs stale, like a changed `[train]`. (Removing a section and adding it
/// back with other values is a change too: the folders are still there.)
fn changed_stage_sections(old: &Pipeline, new: &Pipeline, run_dir: &Path) -> Option<&'static str> {
    let present: Vec<Stage> = std::fs::read_dir(run_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(parse_stage_dir).map(|(s, _)| s))
        .collect();
    let has_folders = |stages: &[Stage]| present.iter().any(|s| stages.contains(s));
    if old.finetune != new.finetune && has_folders(&[Stage::Finetune, Stage::AutoencoderFinetune]) {
        Some("[finetune]")
    } else if old.baseline != new.baseline && has_folders(&[Stage::Baseline]) {
        Some("[baseline]")
    } else if old.autoencoder != new.autoencoder && has_folders(&[Stage::Autoencoder, Stage::AutoencoderFinetune]) {
        Some("[autoencoder]")
    } else {
        None
    }
}

/// Refuse to resume a run whose completed depths were made with other settings.
fn check_resume(plan: &Plan) -> Result<()> {
    let recorded = plan.run_dir.join(PIPELINE_FILE);
    if !recorded.exists() {
        return Ok(());
    }
    let old = Pipeline::load(&recorded)
        .with_context(|| format!("cannot read the run's recorded pipeline {}", recorded.display()))?;
    if let Some(section) = changed_stage_sections(&old, &plan.pipeline, &plan.run_dir) {
        bail!(
            "{} was run with another {section} section than {} now has (changed, removed or added back; {} records \
             it), and that section's outputs are in the folder: they would not match. Put the section back as it \
             was, or use --restart to start the run over, or --run-dir for a new run",
            plan.run_dir.display(),
            plan.pipeline_path.display(),
            recorded.display()
        );
    }
    if affects_completed(&old) != affects_completed(&plan.pipeline) {
        bail!(
            "{} was run with other [data]/[train] settings or evaluation split than {} now has ({} records them): \
             its completed depths would not match. Use --restart to start the run over, or --run-dir for a new run",
            plan.run_dir.display(),
            plan.pipeline_path.display(),
            recorded.display()
        );
    }
    Ok(())
}

/// Whether arguments changed the pipeline file's settings.
fn overridden(a: &GreedyArgs) -> bool {
    a.inputs.max_depth.is_some() || a.seed.is_some()
}

/// Record the pipeline in the run folder: the file itself, or its canonical form when
/// arguments overrode it.
fn record_pipeline(plan: &Plan, overridden: bool) -> Result<()> {
    let dest = plan.run_dir.join(PIPELINE_FILE);
    let text = if overridden {
        plan.pipeline.to_toml()?
    } else {
        std::fs::read_to_string(&plan.pipeline_path)
            .with_context(|| format!("cannot read {}", plan.pipeline_path.display()))?
    };
    layerwise_core::atomic::write_bytes_atomic(&dest, text.as_bytes())
}

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
    pub stage: Stage,
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

/// What a depth folder holds, judged against its parent, the dataset and the pipeline.
#[derive(Debug, Clone, PartialEq)]
pub enum DepthState {
    /// Checkpoint, history and evaluation agree with each other, with the parent, the
    /// dataset and the pipeline: kept as it is.
    Complete {
        /// Validation accuracy of its last epoch.
        val_accuracy: f64,
        /// Its checkpoint's SHA-256 (the next depth's parent).
        sha: String,
    },
    /// Checkpoint and history are complete, the evaluation is missing or wrong: only the
    /// evaluation is redone (the checkpoint is never deleted).
    NeedsEvaluation {
        /// Validation accuracy of its last epoch.
        val_accuracy: f64,
        /// Its checkpoint's SHA-256.
        sha: String,
        /// Why the evaluation is not kept.
        why: String,
    },
    /// The depth must be trained (again).
    NeedsTraining {
        /// Why.
        why: String,
    },
}

/// Judge depth `depth` of the plan's run folder: see [`DepthState`].
pub fn depth_state(plan: &Plan, depth: usize, parent_sha: Option<&str>, fingerprint: &str) -> DepthState {
    stage_state(plan, Stage::Greedy, depth, parent_sha, fingerprint)
}

/// Judge `stage`'s folder of depth `depth`: its checkpoint must come from the stage's
/// regime and settings, from `parent_sha` (the depth before, for the greedy loop; the
/// greedy depth, for fine-tuning; none, for the baseline).
pub fn stage_state(plan: &Plan, stage: Stage, depth: usize, parent_sha: Option<&str>, fingerprint: &str) -> DepthState {
    let dir = stage_dir(&plan.run_dir, stage, depth);
    let regime = stage.regime();
    let model = dir.join(MODEL_FILE);
    let retrain = |why: String| DepthState::NeedsTraining { why };
    if !model.exists() {
        return retrain(format!("{} does not exist", model.display()));
    }
    let meta = match read_checkpoint_meta(&model) {
        Ok(m) => m,
        Err(e) => return retrain(format!("its checkpoint cannot be read ({e:#})")),
    };
    if meta.depth != depth {
        return retrain(format!("its checkpoint is of depth {}", meta.depth));
    }
    if meta.parent_sha256.as_deref() != parent_sha {
        return retrain("its checkpoint grew from another parent than the depth before it now holds".into());
    }
    if meta.dataset_fingerprint != fingerprint {
        return retrain("its checkpoint was trained on another dataset".into());
    }
    if meta.regime != regime {
        return retrain(format!("its checkpoint was made by the `{}` regime", meta.regime.name()));
    }
    if meta.config != plan.stage_config(stage) {
        return retrain("its checkpoint was trained with other settings".into());
    }
    let sha = match sha256_file(&model) {
        Ok(s) => s,
        Err(e) => return retrain(format!("its checkpoint cannot be read ({e:#})")),
    };
    let history = match TrainHistory::read(&dir.join(HISTORY_FILE)) {
        Ok(h) if h.checkpoint_sha256 == sha => h,
        Ok(_) => return retrain("its train.json belongs to another checkpoint".into()),
        Err(e) => return retrain(format!("its training history cannot be read ({e:#})")),
    };
    // A run that keeps its best epoch is judged by that epoch.
    let Some(val_accuracy) = history.kept().map(|e| e.val_accuracy) else {
        return retrain("its train.json has no epochs".into());
    };
    let why = match Evaluation::read(&dir.join(EVAL_FILE)) {
        Err(e) => format!("its evaluation cannot be read ({e:#})"),
        Ok(e) if e.checkpoint_sha256 != sha => "its eval.json belongs to another checkpoint".into(),
        Ok(e) if e.split != plan.pipeline.greedy.evaluate => format!("its eval.json evaluates the {} split", e.split),
        Ok(e) if e.dataset_fingerprint != fingerprint => "its eval.json used another dataset".into(),
        Ok(_) => return DepthState::Complete { val_accuracy, sha },
    };
    DepthState::NeedsEvaluation { val_accuracy, sha, why }
}

/// A run never changes its dataset: refuse when the run folder holds depths trained on
/// another dataset than the file the plan now finds (e.g. prepared again from other
/// source files into the shared `artifacts/datasets/` name).
pub fn check_dataset_of_run(plan: &Plan, fingerprint: &str) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(&plan.run_dir) else { return Ok(()) };
    let mut depths: Vec<usize> = entries.flatten().filter_map(|e| parse_depth_dir(e.file_name().to_str()?)).collect();
    depths.sort_unstable();
    for depth in depths {
        let model = depth_dir(&plan.run_dir, depth).join(MODEL_FILE);
        let Ok(meta) = read_checkpoint_meta(&model) else { continue };
        if meta.dataset_fingerprint != fingerprint {
            bail!(
                "{} holds depths trained on dataset fingerprint {}… ({} depth {depth}), but {} now holds fingerprint {}… \
                 (prepared again, from other source files?). A run never changes its dataset: pass the --source it was \
                 trained on, or use --restart to train it again on this dataset, or --run-dir for a new run",
                plan.run_dir.display(),
                &meta.dataset_fingerprint[..12.min(meta.dataset_fingerprint.len())],
                model.display(),
                plan.data.display(),
                &fingerprint[..12.min(fingerprint.len())]
            );
        }
    }
    Ok(())
}

/// Where the loop starts: depth 1 from nothing, or the depth after `--from`'s checkpoint.
fn start(from: Option<&Path>) -> Result<(usize, Option<PathBuf>)> {
    match from {
        Some(c) => Ok((read_checkpoint_meta(c)?.depth + 1, Some(c.to_path_buf()))),
        None => Ok((1, None)),
    }
}

/// Run (or print, or hand to a scheduler) the greedy loop.
pub fn run(a: &GreedyArgs) -> Result<Option<GreedyOutcome>> {
    let plan = Plan::new(a)?;
    if a.print_commands {
        for line in print_commands(&plan, a)? {
            println!("{line}");
        }
        return Ok(None);
    }
    a.inputs.slurm.check(a.inputs.scheduler)?;
    match a.inputs.scheduler {
        Some(crate::slurm::Scheduler::Slurm) => {
            crate::slurm::greedy(&plan, a)?;
            Ok(None)
        }
        None => run_plan(&plan, a).map(Some),
    }
}

/// What remains of the plan, as scheduler jobs, by the local loop's rules: no prepare job
/// when the dataset is prepared; complete depths (see [`depth_state`]) are skipped,
/// and from the first incomplete depth on every depth is a train job (after the previous
/// train job) and an evaluate job (after its train job, so evaluating depth d never holds
/// up training depth d+1); the report job comes after all of them. No train job is made
/// past a depth where the complete depths already stop the loop (patience); past that,
/// each job's gate decides from the files on disk when it runs.
pub fn remaining_jobs(plan: &Plan, a: &GreedyArgs) -> Result<Vec<crate::slurm::JobSpec>> {
    use crate::slurm::{Gate, JobSpec};
    let p = &plan.pipeline;
    let job = |label: String, step: Step, after: Vec<String>, gate: Option<Gate>| JobSpec {
        key: label.replace('-', "_"),
        label,
        run_dir: plan.run_dir.clone(),
        gpu: plan.device != DeviceKind::Cpu
            && step.program != "layerwise-prepare"
            && step.program != "layerwise-report",
        step,
        gate,
        after,
    };
    let mut jobs = Vec::new();
    let ready = dataset_ready(plan, a.inputs.source.as_deref())?;
    if !ready {
        jobs.push(job("prepare".into(), plan.prepare_step(a.inputs.source.as_deref()), vec![], None));
    }
    let fingerprint = if ready { Some(Dataset::open(&plan.data)?.meta.fingerprint) } else { None };
    if let Some(fp) = &fingerprint {
        check_dataset_of_run(plan, fp)?;
    }
    let (first, mut parent) = start(a.from.as_deref())?;
    let mut parent_sha = parent.as_deref().map(sha256_file).transpose()?;
    let mut accs = Vec::new();
    let mut shas: Vec<(usize, String)> = Vec::new();
    let mut trains: Vec<String> = Vec::new();
    let mut reusing = fingerprint.is_some();
    let mut previous_train: Option<String> = (!ready).then(|| "prepare".into());
    for depth in first..=p.greedy.max_depth {
        if reusing {
            let fp = fingerprint.as_deref().unwrap_or_default();
            let kept = match depth_state(plan, depth, parent_sha.as_deref(), fp) {
                DepthState::Complete { val_accuracy, sha } => Some((val_accuracy, sha, false)),
                DepthState::NeedsEvaluation { val_accuracy, sha, .. } => Some((val_accuracy, sha, true)),
                DepthState::NeedsTraining { .. } => None,
            };
            if let Some((val_accuracy, sha, evaluate)) = kept {
                if evaluate {
                    // The checkpoint stays; only its evaluation is redone.
                    jobs.push(job(format!("evaluate-{depth:02}"), plan.evaluate_step(depth), vec![], None));
                }
                accs.push((depth, val_accuracy));
                parent = Some(depth_dir(&plan.run_dir, depth).join(MODEL_FILE));
                shas.push((depth, sha.clone()));
                parent_sha = Some(sha);
                if patience_stop(&accs, p.greedy.patience, p.greedy.max_depth).is_some() {
                    break;
                }
                continue;
            }
            reusing = false;
        }
        let gate = Some(Gate { first, depth, after_loop: None, best_of: Stage::Greedy });
        let train = job(
            format!("train-{depth:02}"),
            plan.train_step(depth, parent.as_deref()),
            previous_train.iter().cloned().collect(),
            gate,
        );
        let key = train.key.clone();
        jobs.push(train);
        jobs.push(job(format!("evaluate-{depth:02}"), plan.evaluate_step(depth), vec![key.clone()], gate));
        previous_train = Some(key.clone());
        parent = Some(depth_dir(&plan.run_dir, depth).join(MODEL_FILE));
        trains.push(key);
    }
    // The [autoencoder] loop: a chain over the same depths, from depth 1, after the loop's
    // training jobs (each job's gate checks that the loop reached its depth). When the
    // loop is complete, its complete depths get no job, as the loop's own.
    let fp = fingerprint.as_deref().unwrap_or_default();
    let mut ae_accs: Vec<(usize, f64)> = Vec::new();
    let mut ae_shas: Vec<(usize, String)> = Vec::new();
    let mut ae_trains: Vec<String> = Vec::new();
    if p.autoencoder.is_some() {
        let loop_known = trains.is_empty() && fingerprint.is_some();
        let last = if loop_known { accs.last().map_or(0, |a| a.0) } else { p.greedy.max_depth };
        let mut reusing = loop_known;
        let mut previous: Option<String> = None;
        for depth in 1..=last {
            if reusing {
                let parent = ae_shas.last().map(|(_, s)| s.clone());
                let kept = match stage_state(plan, Stage::Autoencoder, depth, parent.as_deref(), fp) {
                    DepthState::Complete { val_accuracy, sha } => Some((val_accuracy, sha, false)),
                    DepthState::NeedsEvaluation { val_accuracy, sha, .. } => Some((val_accuracy, sha, true)),
                    DepthState::NeedsTraining { .. } => None,
                };
                if let Some((val_accuracy, sha, evaluate)) = kept {
                    if evaluate {
                        let step = plan.evaluate_stage_step(Stage::Autoencoder, depth);
                        jobs.push(job(format!("evaluate-autoencoder-{depth:02}"), step, vec![], None));
                    }
                    ae_accs.push((depth, val_accuracy));
                    ae_shas.push((depth, sha));
                    continue;
                }
                reusing = false;
            }
            let gate = Some(Gate { first, depth, after_loop: Some(Depths::All), best_of: Stage::Greedy });
            let after = trains.iter().chain(&previous).cloned().collect();
            let train =
                job(format!("autoencoder-{depth:02}"), plan.stage_train_step(Stage::Autoencoder, depth), after, gate);
            let key = train.key.clone();
            let evaluate = format!("evaluate-{}", train.label);
            jobs.push(train);
            jobs.push(job(evaluate, plan.evaluate_stage_step(Stage::Autoencoder, depth), vec![key.clone()], gate));
            previous = Some(key.clone());
            ae_trains.push(key);
        }
    }
    // After the loops: fine-tuning and the baseline. When a loop's depths are all complete
    // already, the depths they cover are known and complete outputs get no job; else a
    // job per possible depth waits for every training job, and its gate decides.
    for (stage, section) in after_loop_stages(p) {
        let (loop_accs, loop_shas, loop_trains, lowest) = match stage.loop_stage() {
            Stage::Autoencoder => (&ae_accs, &ae_shas, [&trains[..], &ae_trains[..]].concat(), 1),
            _ => (&accs, &shas, trains.clone(), first),
        };
        let candidates: Vec<usize> = if loop_trains.is_empty() {
            let best = best_by_validation(loop_accs.iter().copied()).map(|b| b.0);
            loop_accs.iter().map(|a| a.0).filter(|d| section.depths == Depths::All || Some(*d) == best).collect()
        } else {
            (lowest..=p.greedy.max_depth).collect()
        };
        for depth in candidates {
            if loop_trains.is_empty() {
                let parent = loop_shas.iter().find(|(d, _)| *d == depth).map(|(_, s)| s.as_str());
                let parent = if stage == Stage::Baseline { None } else { parent };
                if let DepthState::Complete { .. } = stage_state(plan, stage, depth, parent, fp) {
                    continue;
                }
            }
            let gate = Some(Gate { first, depth, after_loop: Some(section.depths), best_of: stage.loop_stage() });
            let train =
                job(format!("{stage}-{depth:02}"), plan.stage_train_step(stage, depth), loop_trains.clone(), gate);
            let evaluate = format!("evaluate-{}", train.label);
            let after = vec![train.key.clone()];
            jobs.push(train);
            jobs.push(job(evaluate, plan.evaluate_stage_step(stage, depth), after, gate));
        }
    }
    let all = jobs.iter().map(|j| j.key.clone()).collect();
    jobs.push(job("report".into(), plan.report_step(), all, None));
    Ok(jobs)
}

/// The whole plan as shell lines: comments, then one stage command per line.
pub fn print_commands(plan: &Plan, a: &GreedyArgs) -> Result<Vec<String>> {
    let p = &plan.pipeline;
    let mut lines = vec![
        format!("# layerwise greedy plan: pipeline `{}` ({}), up to depth {}", p.name, plan.pipeline_path.display(), p.greedy.max_depth),
        "# stage binaries on PATH: cargo install --path crates/<stage>, or export PATH=\"$PWD/target/release:$PATH\" after cargo build --release".into(),
    ];
    if p.greedy.patience > 0 {
        lines.push(format!("# patience {}: `cargo xtask greedy` stops once validation accuracy has not improved for {} depths; this plan lists every depth", p.greedy.patience, p.greedy.patience));
    }
    let run_dir = shell_quote(&plan.run_dir.to_string_lossy());
    let recorded = shell_quote(&plan.run_dir.join(PIPELINE_FILE).to_string_lossy());
    lines.push(if overridden(a) {
        // The run records the pipeline with the overrides applied, written out line by line.
        let text = plan.pipeline.to_toml()?;
        let args: Vec<String> = text.lines().map(shell_quote).collect();
        format!("mkdir -p {run_dir} && printf '%s\\n' {} > {recorded}", args.join(" "))
    } else {
        format!("mkdir -p {run_dir} && cp {} {recorded}", shell_quote(&plan.pipeline_path.to_string_lossy()))
    });
    lines.push(plan.prepare_step(a.inputs.source.as_deref()).command_line());
    let (first, mut parent) = start(a.from.as_deref())?;
    for depth in first..=p.greedy.max_depth {
        lines.push(plan.train_step(depth, parent.as_deref()).command_line());
        lines.push(plan.evaluate_step(depth).command_line());
        parent = Some(depth_dir(&plan.run_dir, depth).join(MODEL_FILE));
    }
    if p.autoencoder.is_some() {
        lines.push("# [autoencoder]: the same depths again, each layer pretrained without labels, then probed".into());
        for depth in 1..=p.greedy.max_depth {
            lines.push(plan.stage_train_step(Stage::Autoencoder, depth).command_line());
            lines.push(plan.evaluate_stage_step(Stage::Autoencoder, depth).command_line());
        }
    }
    for (stage, section) in after_loop_stages(p) {
        lines.push(match section.depths {
            Depths::All => format!("# [{}]: every depth the loop trained", stage.name()),
            Depths::Best => format!(
                "# [{}] depths = \"best\": run only the best depth's two lines (the highest validation accuracy \
                 in {}-NN/train.json, the first on a tie); `cargo xtask greedy` decides this itself",
                stage.name(),
                stage.loop_stage().prefix()
            ),
        });
        let from = if stage.loop_stage() == Stage::Autoencoder { 1 } else { first };
        for depth in from..=p.greedy.max_depth {
            lines.push(plan.stage_train_step(stage, depth).command_line());
            lines.push(plan.evaluate_stage_step(stage, depth).command_line());
        }
    }
    lines.push(plan.report_step().command_line());
    Ok(lines)
}

/// Open (or start) the run folder: `--restart` clears it, a changed pipeline is refused,
/// the pipeline is recorded. Shared by the local loop and the scheduler backends.
pub fn open_run(plan: &Plan, a: &GreedyArgs) -> Result<RunLock> {
    let what = std::env::args().collect::<Vec<_>>().join(" ");
    let lock = RunLock::acquire(&plan.run_dir, &what)?;
    if a.restart && !plan.run_dir.join(PIPELINE_FILE).exists() {
        let other = std::fs::read_dir(&plan.run_dir)?.flatten().any(|e| e.file_name() != LOCK_FILE);
        if other {
            bail!(
                "--restart deletes a run's depth folders and report, and {} is not a layerwise run (it has no {}): \
                 refusing to delete anything in it; choose another --run-dir",
                plan.run_dir.display(),
                PIPELINE_FILE
            );
        }
    }
    if a.restart {
        for entry in std::fs::read_dir(&plan.run_dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if parse_stage_dir(&name).is_some() || REPORT_FILES.contains(&name.as_str()) || name == PIPELINE_FILE {
                let path = entry.path();
                let r = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
                r.with_context(|| format!("--restart: cannot remove {}", path.display()))?;
            }
        }
    }
    check_resume(plan)?;
    record_pipeline(plan, overridden(a))?;
    Ok(lock)
}

/// Whether the plan's dataset is prepared already, with the pipeline's settings and (given
/// `--source`) from the same source files.
pub fn dataset_ready(plan: &Plan, source: Option<&Path>) -> Result<bool> {
    let d = &plan.pipeline.data;
    let limits = ((d.limit_train > 0).then_some(d.limit_train), (d.limit_test > 0).then_some(d.limit_test));
    Ok(layerwise_prepare::matches_existing(&plan.data, d.normalize, d.val_fraction, limits, source)?.is_some())
}

fn run_plan(plan: &Plan, a: &GreedyArgs) -> Result<GreedyOutcome> {
    let p = &plan.pipeline;
    let _lock = open_run(plan, a)?;
    let ui = Ui::new(a.inputs.plain, p.greedy.max_depth);
    if dataset_ready(plan, a.inputs.source.as_deref())? {
        ui.line(&format!("dataset {} is prepared already", plan.data.display()));
    } else {
        ui.line("preparing the dataset");
        plan.prepare_step(a.inputs.source.as_deref()).run()?;
    }
    let fingerprint = Dataset::open(&plan.data)?.meta.fingerprint;
    check_dataset_of_run(plan, &fingerprint)?;

    let (first, mut parent) = start(a.from.as_deref())?;
    let mut parent_sha = parent.as_deref().map(sha256_file).transpose()?;
    let mut depths: Vec<DepthOutcome> = Vec::new();
    let mut shas: Vec<(usize, String)> = Vec::new();
    let mut stopped_early = false;
    for depth in first..=p.greedy.max_depth {
        ui.depth(depth);
        let train = || plan.train_step(depth, parent.as_deref());
        let (val_accuracy, sha, reused) =
            bring_up_to_date(plan, &ui, Stage::Greedy, depth, parent_sha.as_deref(), &fingerprint, train)?;
        let outcome = DepthOutcome { depth, val_accuracy, reused };
        depths.push(outcome);
        parent = Some(depth_dir(&plan.run_dir, depth).join(MODEL_FILE));
        shas.push((depth, sha.clone()));
        parent_sha = Some(sha);
        let accs: Vec<(usize, f64)> = depths.iter().map(|d| (d.depth, d.val_accuracy)).collect();
        if let Some(best_depth) = patience_stop(&accs, p.greedy.patience, p.greedy.max_depth) {
            ui.line(&format!(
                "validation accuracy has not improved for {} depths (best: depth {best_depth}): stopping",
                p.greedy.patience
            ));
            stopped_early = true;
            break;
        }
    }
    ui.finish();
    let best_depth = best_by_validation(depths.iter().map(|d| (d.depth, d.val_accuracy))).map_or(0, |b| b.0);
    let mut stages = Vec::new();
    // The [autoencoder] loop: the depths the loop reached, from depth 1, each grown from
    // the autoencoder loop's depth before.
    let mut ae_depths: Vec<DepthOutcome> = Vec::new();
    let mut ae_shas: Vec<(usize, String)> = Vec::new();
    if p.autoencoder.is_some() {
        let last = depths.last().map_or(0, |d| d.depth);
        for depth in 1..=last {
            let parent_sha = ae_shas.last().map(|(_, s)| s.clone());
            let train = || plan.stage_train_step(Stage::Autoencoder, depth);
            let (val_accuracy, sha, reused) =
                bring_up_to_date(plan, &ui, Stage::Autoencoder, depth, parent_sha.as_deref(), &fingerprint, train)?;
            ae_depths.push(DepthOutcome { depth, val_accuracy, reused });
            ae_shas.push((depth, sha));
            stages.push(StageOutcome { stage: Stage::Autoencoder, depth, val_accuracy, reused });
        }
    }
    let ae_best = best_by_validation(ae_depths.iter().map(|d| (d.depth, d.val_accuracy))).map_or(0, |b| b.0);
    for (stage, _) in after_loop_stages(p) {
        let (loop_depths, loop_shas, best) = match stage.loop_stage() {
            Stage::Autoencoder => (&ae_depths, &ae_shas, ae_best),
            _ => (&depths, &shas, best_depth),
        };
        for depth in stage_depths(plan, stage, loop_depths, best) {
            let parent_sha = match stage {
                Stage::Baseline => None,
                _ => loop_shas.iter().find(|(d, _)| *d == depth).map(|(_, s)| s.as_str()),
            };
            let train = || plan.stage_train_step(stage, depth);
            let (val_accuracy, _, reused) = bring_up_to_date(plan, &ui, stage, depth, parent_sha, &fingerprint, train)?;
            stages.push(StageOutcome { stage, depth, val_accuracy, reused });
        }
    }
    plan.report_step().run()?;
    tidy(plan, &depths, &stages);
    Ok(GreedyOutcome { depths, best_depth, stopped_early, stages, run_dir: plan.run_dir.clone() })
}

/// Make `stage`'s model of depth `depth` complete, doing only what is missing: nothing
/// when it is complete, the evaluation alone when only that is missing or wrong, else
/// `train` and the evaluation (nothing is deleted first: the new files replace the old ones
/// atomically, each once complete). Says why whenever the folder is not kept as it is.
/// Returns the validation accuracy, the checkpoint's SHA-256, and whether it was kept
/// (not trained now).
fn bring_up_to_date(
    plan: &Plan,
    ui: &Ui,
    stage: Stage,
    depth: usize,
    parent_sha: Option<&str>,
    fingerprint: &str,
    train: impl FnOnce() -> Step,
) -> Result<(f64, String, bool)> {
    let name = match stage {
        Stage::Greedy => format!("depth {depth}"),
        other => format!("{other} of depth {depth}"),
    };
    let kept = match stage_state(plan, stage, depth, parent_sha, fingerprint) {
        DepthState::Complete { val_accuracy, sha } => {
            ui.line(&format!("{name}: complete already (val_acc {val_accuracy:.4}), kept"));
            return Ok((val_accuracy, sha, true));
        }
        DepthState::NeedsEvaluation { why, .. } => {
            ui.line(&format!("{name}: checkpoint and history kept, evaluating again: {why}"));
            true
        }
        DepthState::NeedsTraining { why } => {
            if stage_dir(&plan.run_dir, stage, depth).exists() {
                ui.line(&format!("{name}: training again: {why}"));
            } else if stage != Stage::Greedy {
                ui.line(&format!("{name}: training"));
            }
            train().run()?;
            false
        }
    };
    plan.evaluate_stage_step(stage, depth).run()?;
    match stage_state(plan, stage, depth, parent_sha, fingerprint) {
        DepthState::Complete { val_accuracy, sha } => Ok((val_accuracy, sha, kept)),
        _ => bail!(
            "{name} was {} but its files do not agree; rerun to redo it",
            if kept { "evaluated" } else { "trained" }
        ),
    }
}

/// The stages after the loops, in order, with their sections: `[finetune]` of the loop,
/// `[finetune]` of the `[autoencoder]` loop, `[baseline]`.
pub fn after_loop_stages(p: &Pipeline) -> Vec<(Stage, &layerwise_core::pipeline::StageConfig)> {
    [(Stage::Finetune, &p.finetune), (Stage::AutoencoderFinetune, &p.finetune), (Stage::Baseline, &p.baseline)]
        .into_iter()
        .filter(|&(stage, _)| p.has_stage(stage))
        .filter_map(|(stage, section)| Some((stage, section.as_ref()?)))
        .collect()
}

/// The depths `stage` covers after its loop (`depths`): none without its section; the best
/// depth by validation accuracy, or every depth the loop went through.
fn stage_depths(plan: &Plan, stage: Stage, depths: &[DepthOutcome], best: usize) -> Vec<usize> {
    let section = match stage {
        Stage::Finetune | Stage::AutoencoderFinetune => &plan.pipeline.finetune,
        Stage::Baseline => &plan.pipeline.baseline,
        Stage::Greedy | Stage::Autoencoder => return Vec::new(),
    };
    match section.as_ref().map(|s| s.depths) {
        None => Vec::new(),
        Some(Depths::Best) => depths.iter().filter(|d| d.depth == best).map(|d| d.depth).collect(),
        Some(Depths::All) => depths.iter().map(|d| d.depth).collect(),
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
        .chain(stages.iter().map(|s| stage_dir(&plan.run_dir, s.stage, s.depth)));
    for dir in dirs {
        remove_dead_temps(&dir);
        let _ = std::fs::remove_file(dir.join(layerwise_core::run::STATE_FILE));
    }
    // A depth's frozen features serve only the depth after it: each loop keeps its deepest
    // depth's (for a run continued deeper), the others go (51 MB each for CIFAR-10 at width
    // 256). A depth that finds none recomputes them.
    let ae: Vec<usize> = stages.iter().filter(|s| s.stage == Stage::Autoencoder).map(|s| s.depth).collect();
    for (stage, depths) in
        [(Stage::Greedy, depths.iter().map(|d| d.depth).collect::<Vec<_>>()), (Stage::Autoencoder, ae)]
    {
        let deepest = depths.iter().max().copied();
        for d in depths.into_iter().filter(|d| Some(*d) != deepest) {
            let _ =
                std::fs::remove_file(stage_dir(&plan.run_dir, stage, d).join(layerwise_core::features::FEATURES_FILE));
        }
    }
}

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
                indicatif::ProgressStyle::with_template("greedy {bar:30.cyan} depth {pos}/{len} {msg} [{elapsed}]")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        Self { bar }
    }

    fn depth(&self, depth: usize) {
        match &self.bar {
            Some(b) => b.set_position(depth as u64 - 1),
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
