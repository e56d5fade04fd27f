//! The command-line types of `cargo xtask greedy` and `cargo xtask sweep`: what a run is
//! given. Nothing here decides anything; [`crate::plan`] resolves them.

use anyhow::{bail, Context, Result};
use layerwise_core::pipeline::SlurmConfig;
use layerwise_nn::device::DeviceKind;
use std::path::PathBuf;

/// `cargo xtask greedy` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct GreedyArgs {
    /// Pipeline: a TOML file, or the name of one in pipelines/ (`smoke` is
    /// pipelines/smoke.toml; default: seed, the tutorial).
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
    /// A decoupled schedule's groups of stages (default: the pipeline's `decoupled.groups`).
    #[arg(long)]
    pub groups: Option<usize>,
    /// What runs a decoupled schedule's groups: threads (one process) or mpi (one MPI rank
    /// a group, under mpirun; needs a build with `--features mpi`). Default: the pipeline's.
    #[arg(long)]
    pub launcher: Option<layerwise_core::decoupled::Launcher>,
    /// Where the data comes from, where things go, how and where it runs.
    #[command(flatten)]
    pub inputs: RunInputs,
}

/// What a greedy run is given besides its pipeline and run folder: shared by
/// `cargo xtask greedy` and `cargo xtask sweep` (which passes it to each of its runs).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunInputs {
    /// Dataset source: a CIFAR-10 or CIFAR-100 folder, tarball or pickle folder, an MNIST or
    /// Fashion-MNIST IDX folder, or a folder of images per class (DIR/<class>/*.png)
    /// (default: CIFAR-10, found or downloaded by the prepare stage).
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
    pub scheduler: Option<Scheduler>,
    /// Slurm options (with --scheduler slurm).
    #[command(flatten)]
    pub slurm: SlurmArgs,
}

impl GreedyArgs {
    /// Whether arguments change the pipeline file's settings (the run then records the
    /// pipeline with them applied).
    pub fn overrides_pipeline(&self) -> bool {
        self.inputs.max_depth.is_some() || self.seed.is_some()
    }
}

/// Cluster schedulers a plan can be handed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scheduler {
    /// Slurm: one `sbatch` job per step, chained with `--dependency=afterok`.
    Slurm,
}

/// Slurm options of `cargo xtask greedy` and `cargo xtask sweep`; each overrides the same
/// key of the pipeline's `[slurm]` section.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SlurmArgs {
    /// Submit the jobs with sbatch and print their ids (default: only write the scripts).
    #[arg(long)]
    pub submit: bool,
    /// With --submit: wait until every job has ended; exit non-zero if one failed, naming it
    /// and its log.
    #[arg(long)]
    pub wait: bool,
    /// sbatch --partition of every job.
    #[arg(long)]
    pub partition: Option<String>,
    /// Partition of the GPU jobs (train and evaluate with --device cuda).
    #[arg(long)]
    pub gpu_partition: Option<String>,
    /// --cpus-per-task of the prepare, train and evaluate jobs (default 2).
    #[arg(long)]
    pub cpus_per_task: Option<usize>,
    /// sbatch --time of every job.
    #[arg(long)]
    pub time: Option<String>,
    /// sbatch --mem of every job.
    #[arg(long)]
    pub mem: Option<String>,
    /// A further sbatch option for every job, e.g. --sbatch-arg=--account=lab (repeatable).
    #[arg(long = "sbatch-arg", allow_hyphen_values = true)]
    pub sbatch_args: Vec<String>,
}

impl SlurmArgs {
    /// The pipeline's `[slurm]` section with these flags over it, checked.
    pub fn config(&self, pipeline: &SlurmConfig) -> Result<SlurmConfig> {
        let flags = SlurmConfig {
            partition: self.partition.clone(),
            gpu_partition: self.gpu_partition.clone(),
            cpus_per_task: self.cpus_per_task,
            time: self.time.clone(),
            mem: self.mem.clone(),
            sbatch_args: self.sbatch_args.clone(),
        };
        let c = pipeline.overridden_by(&flags);
        c.validate().context("invalid Slurm option (flag or [slurm] section)")?;
        Ok(c)
    }

    /// Refuse what these options cannot mean with `scheduler`: `--submit`/`--wait`
    /// without a scheduler (say so rather than run locally), `--wait` without `--submit`.
    pub fn check(&self, scheduler: Option<Scheduler>) -> Result<()> {
        if scheduler.is_none() && (self.submit || self.wait) {
            bail!("--submit and --wait hand the plan to a cluster scheduler: add --scheduler slurm");
        }
        if self.wait && !self.submit {
            bail!("--wait waits for submitted jobs: add --submit");
        }
        Ok(())
    }
}
