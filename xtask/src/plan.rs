//! What a run is made of: the resolved [`Plan`] of a run, and its [`Step`]s, each a stage
//! [`Program`]'s command line. Every step runs through that program's own `cli::run`, so
//! what `--print-commands` prints is exactly what runs.

use crate::args::GreedyArgs;
use anyhow::{Context, Result};
use layerwise_core::decoupled::{Launcher, Schedule};
use layerwise_core::pipeline::Pipeline;
use layerwise_core::run::{depth_dir, phase_dir, Phase, EVAL_FILE, MODEL_FILE, PIPELINE_FILE};
use layerwise_nn::device::DeviceKind;
use std::path::{Path, PathBuf};

/// The stage programs. The xtask binary is each of them too when called by that name (a
/// link named `layerwise-train` to it runs the training stage): scheduler jobs run the
/// stages through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Program {
    /// `layerwise-prepare`: dataset → normalized safetensors.
    Prepare,
    /// `layerwise-train`: one depth, checkpoint to checkpoint.
    Train,
    /// `layerwise-evaluate`: a checkpoint on a split.
    Evaluate,
    /// `layerwise-report`: a run's (or a sweep's) report.
    Report,
    /// `layerwise-predict`: a checkpoint on image files.
    Predict,
    /// `layerwise-export`: a checkpoint as ONNX.
    Export,
}

impl Program {
    /// Every program.
    pub const ALL: [Program; 6] =
        [Program::Prepare, Program::Train, Program::Evaluate, Program::Report, Program::Predict, Program::Export];

    /// Its binary's name.
    pub fn name(self) -> &'static str {
        match self {
            Program::Prepare => "layerwise-prepare",
            Program::Train => "layerwise-train",
            Program::Evaluate => "layerwise-evaluate",
            Program::Report => "layerwise-report",
            Program::Predict => "layerwise-predict",
            Program::Export => "layerwise-export",
        }
    }

    /// The program a binary name stands for.
    pub fn from_name(name: &str) -> Option<Program> {
        Program::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Run it in this process with these arguments (its name is `argv[0]`).
    pub fn run(self, args: &[String]) -> Result<()> {
        let argv = std::iter::once(self.name().to_string()).chain(args.iter().cloned());
        match self {
            Program::Prepare => layerwise_prepare::cli::run(argv),
            Program::Train => layerwise_train::cli::run(argv),
            Program::Evaluate => layerwise_evaluate::cli::run(argv),
            Program::Report => layerwise_report::cli::run(argv),
            Program::Predict => layerwise_predict::cli::run(argv),
            Program::Export => layerwise_export::cli::run(argv),
        }
    }
}

/// One stage invocation.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The stage program.
    pub program: Program,
    /// Its arguments.
    pub args: Vec<String>,
    /// A launcher it runs under (`mpirun -n 3 --oversubscribe`); empty: run as it is.
    pub launch: Vec<String>,
}

impl Step {
    fn new(program: Program, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Self {
        let args = args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect();
        Self { program, args, launch: Vec::new() }
    }

    /// A step of `program` with `args`.
    pub fn of(program: Program, args: Vec<String>) -> Self {
        Self { program, args, launch: Vec::new() }
    }

    /// The command line, shell-quoted where needed.
    pub fn command_line(&self) -> String {
        self.launch
            .iter()
            .map(|a| shell_quote(a))
            .chain(std::iter::once(self.program.name().to_string()))
            .chain(self.args.iter().map(|a| shell_quote(a)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The processes it runs as: its launcher's `-n`, else 1.
    pub fn tasks(&self) -> usize {
        let n = self.launch.iter().position(|a| a == "-n").and_then(|i| self.launch.get(i + 1));
        n.and_then(|n| n.parse().ok()).unwrap_or(1)
    }

    /// Run the stage in this process, through its command-line parser; under its launcher,
    /// this executable runs it (by the program's name) as the launcher's processes.
    pub fn run(&self) -> Result<()> {
        let failed = || format!("step failed: {}", self.command_line());
        if self.launch.is_empty() {
            return self.program.run(&self.args).with_context(failed);
        }
        if self.launch[0] == "mpirun" && !layerwise_train::MPI_BUILT {
            anyhow::bail!("{}: {}", failed(), layerwise_train::NO_MPI);
        }
        let exe = std::env::current_exe().context("cannot locate the xtask binary to launch")?;
        let bin = stage_links(&exe)?;
        let mut command = std::process::Command::new(&self.launch[0]);
        // SAFETY: the hook only calls prctl, which is async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                layerwise_core::parent::die_with_parent();
                Ok(())
            });
        }
        let status = command
            .args(&self.launch[1..])
            .arg(bin.join(self.program.name()))
            .args(&self.args)
            // Open MPI refuses root without these (containers and CI run as root).
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .status()
            .with_context(|| format!("cannot start `{}`: is it installed and on PATH?", self.launch[0]))
            .with_context(failed)?;
        if !status.success() {
            anyhow::bail!("{} ({status}): the errors are above", failed());
        }
        Ok(())
    }
}

/// A folder of links named after the stage programs, each to `exe` (which runs the stage
/// it is called by), beside it: what a launcher starts.
fn stage_links(exe: &Path) -> Result<PathBuf> {
    let dir = exe.parent().unwrap_or(Path::new(".")).join("stage-links");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for program in Program::ALL {
        let link = dir.join(program.name());
        if std::fs::read_link(&link).ok().as_deref() != Some(exe) {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(exe, &link).with_context(|| format!("cannot create {}", link.display()))?;
        }
    }
    Ok(dir)
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
    /// A decoupled schedule's groups and launcher, as given (`--groups`, `--launcher`)
    /// or the pipeline's.
    pub decoupled: layerwise_core::decoupled::DecoupledConfig,
}

impl Plan {
    /// Resolve defaults (pipeline, run folder, dataset file name) from the arguments.
    pub fn new(a: &GreedyArgs) -> Result<Self> {
        let root = crate::repo_root();
        let pipeline_path = match &a.pipeline {
            Some(p) => resolve_pipeline(p)?,
            None => root.join("pipelines/seed.toml"),
        };
        let mut pipeline = Pipeline::load(&pipeline_path)?;
        if let Some(d) = a.inputs.max_depth {
            pipeline.greedy.max_depth = d;
            pipeline.validate().context("--max-depth")?;
        }
        // The source, named: CIFAR-10 found or downloaded, or the folder (or file) given by
        // --source or the pipeline, by its name and a short hash of where it is, so that
        // two sources never share a dataset file or a run folder.
        let source = a.inputs.source.as_deref().or(pipeline.data.source.as_deref()).map(source_name);
        let mut run_name = pipeline.name.clone();
        if let (Some(name), Some(_)) = (&source, &a.inputs.source) {
            run_name += &format!("-{name}");
        }
        if let Some(seed) = a.seed {
            pipeline.train.seed = seed;
            run_name += &format!("-seed{seed}");
        }
        let artifacts = a.inputs.artifacts.clone().unwrap_or_else(|| root.join("artifacts"));
        let run_dir = a.run_dir.clone().unwrap_or_else(|| artifacts.join("runs").join(run_name));
        let d = &pipeline.data;
        let base = source.unwrap_or_else(|| "cifar-10".into());
        let mut name = format!("{base}-{}-val{}", d.normalize, d.val_fraction);
        if d.labels != layerwise_core::config::Labels::Fine {
            name += &format!("-{}", d.labels);
        }
        if let Some(r) = &d.resize {
            name += &format!("-{}", r.replace(['×', 'X'], "x"));
        }
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
        let mut decoupled = pipeline.decoupled.clone();
        decoupled.groups = a.groups.unwrap_or(decoupled.groups);
        decoupled.launcher = a.launcher.unwrap_or(decoupled.launcher);
        if pipeline.greedy.schedule == Schedule::Decoupled {
            decoupled.validate(pipeline.greedy.max_depth).context("--groups")?;
        } else if a.groups.is_some() || a.launcher.is_some() {
            anyhow::bail!(
                "--groups and --launcher say how a decoupled schedule runs, but `{}` trains its depths one after \
                 another: set `[greedy] schedule = \"decoupled\"` in it",
                pipeline.name
            );
        }
        Ok(Self { pipeline, pipeline_path, run_dir, data, artifacts, device: a.inputs.device, decoupled })
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
            Program::Prepare,
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
        if let Some(src) = source.or(d.source.as_deref()) {
            s.args.extend(["--source".into(), src.to_string_lossy().into_owned()]);
        }
        if d.labels != layerwise_core::config::Labels::Fine {
            s.args.extend(["--labels".into(), d.labels.name().into()]);
        }
        if let Some(r) = &d.resize {
            s.args.extend(["--resize".into(), r.clone()]);
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
            Program::Train,
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

    /// Fine-tune greedy depth `depth` end to end, or train `depth` layers from scratch,
    /// or grow the `[autoencoder]` loop's depth `depth`. The job is named by the pipeline
    /// and its phase: the training stage derives every setting from them itself.
    pub fn stage_train_step(&self, stage: Phase, depth: usize) -> Step {
        let mut s = Step::new(
            Program::Train,
            &[
                &"--data",
                &self.data,
                &"--out",
                &phase_dir(&self.run_dir, stage, depth),
                &"--pipeline",
                &self.run_dir.join(PIPELINE_FILE),
                &"--phase",
                &stage.name(),
            ],
        );
        let from = match stage {
            Phase::Finetune => Some(depth_dir(&self.run_dir, depth)),
            Phase::AutoencoderFinetune => Some(phase_dir(&self.run_dir, Phase::Autoencoder, depth)),
            Phase::Autoencoder => (depth > 1).then(|| phase_dir(&self.run_dir, Phase::Autoencoder, depth - 1)),
            Phase::Baseline | Phase::Greedy => {
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

    /// Train every depth of a decoupled schedule at once, into the run folder; under
    /// `mpirun` with one rank a group when the launcher is MPI.
    pub fn decoupled_step(&self) -> Step {
        let mut s = Step::new(
            Program::Train,
            &[&"--data", &self.data, &"--out", &self.run_dir, &"--pipeline", &self.run_dir.join(PIPELINE_FILE)],
        );
        s.args.push("--decoupled".into());
        let d = &self.decoupled;
        if d.groups != self.pipeline.decoupled.groups {
            s.args.extend(["--groups".into(), d.groups.to_string()]);
        }
        if d.launcher != self.pipeline.decoupled.launcher {
            s.args.extend(["--launcher".into(), d.launcher.name().into()]);
        }
        if d.launcher == Launcher::Mpi {
            s.launch = vec!["mpirun".into(), "-n".into(), d.groups.to_string(), "--oversubscribe".into()];
        }
        s.args.extend(self.device_args());
        s
    }

    /// Evaluate `stage`'s model of depth `depth`.
    pub fn evaluate_stage_step(&self, stage: Phase, depth: usize) -> Step {
        let dir = phase_dir(&self.run_dir, stage, depth);
        let mut s = Step::new(
            Program::Evaluate,
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
        Step::new(Program::Report, &[&"--run", &self.run_dir])
    }
}

/// A source's name in file names: its folder's (or file's) name, safe characters only,
/// and the first 6 hex digits of the SHA-256 of its absolute path (`photos-3fa2c1`).
pub fn source_name(source: &Path) -> String {
    let abs = std::fs::canonicalize(source).unwrap_or_else(|_| source.to_path_buf());
    let name: String = abs
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "source".into())
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
        .collect();
    let hash = layerwise_core::hash::sha256_hex(abs.to_string_lossy().as_bytes());
    format!("{name}-{}", &hash[..6])
}

/// What `--pipeline` names: a file, or the name of one in the repository's `pipelines/`
/// (`smoke` is `pipelines/smoke.toml`). A name that is neither is refused with the list of
/// the pipelines there.
pub fn resolve_pipeline(arg: &Path) -> Result<PathBuf> {
    if arg.exists() {
        return Ok(arg.to_path_buf());
    }
    let dir = crate::repo_root().join("pipelines");
    let text = arg.to_string_lossy();
    let is_name = !text.contains('/') && arg.extension().is_none();
    if is_name {
        let file = dir.join(format!("{text}.toml"));
        if file.exists() {
            return Ok(file);
        }
    }
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".toml").map(String::from))
        .collect();
    names.sort();
    anyhow::bail!(
        "no pipeline {}: --pipeline takes a file, or the name of one in {} ({}){}",
        arg.display(),
        dir.display(),
        names.join(", "),
        if is_name { "" } else { "; check the path" }
    )
}

/// `path` relative to the working folder when it lies under it, else unchanged.
fn relative(path: PathBuf) -> PathBuf {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(&cwd).ok().map(PathBuf::from))
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(path)
}
