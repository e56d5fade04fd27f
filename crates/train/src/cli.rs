//! The command line of `layerwise-train`, as a library function so the orchestrator and
//! tests run exactly what a user runs.

use crate::{train, Progress, TrainOptions};
use anyhow::{bail, Result};
use clap::Parser;
use layerwise_core::cnn::StageSpec;
use layerwise_core::config::{Augment, Decoder, HeadMode, LrSchedule, Objective, Optimizer, Regime, TrainConfig};
use layerwise_core::pipeline::Pipeline;
use layerwise_core::run::Phase;
use layerwise_nn::device::DeviceKind;
use std::path::PathBuf;

/// Train one depth: load a checkpoint, freeze it, append a hidden layer, train, save
/// (`--regime grow`). Or fine-tune a checkpoint end to end (`--regime finetune`), or train
/// a fresh network of --depth layers end to end (`--regime scratch`).
#[derive(Parser)]
#[command(version, about)]
pub struct Args {
    /// Prepared dataset (from layerwise-prepare).
    #[arg(long)]
    data: PathBuf,
    /// Checkpoint of the previous depth; without it, depth 1 is trained.
    #[arg(long)]
    from: Option<PathBuf>,
    /// Output folder: gets model.safetensors and train.json.
    #[arg(long)]
    out: PathBuf,
    /// Pipeline file: the training settings come from it (flags given beside it override
    /// it and are recorded in the checkpoint as overrides).
    #[arg(long)]
    pipeline: Option<PathBuf>,
    /// The pipeline's phase this job belongs to: greedy (`[train]`), finetune,
    /// baseline, autoencoder (`[autoencoder]`) or autoencoder-finetune. Its settings are
    /// derived from the pipeline exactly as the orchestrator's plan derives them, and it
    /// sets the regime (default: the one --regime names).
    #[arg(long)]
    phase: Option<Phase>,
    /// Epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Mini-batch size.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Adam learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Adam epsilon (Keras placement).
    #[arg(long)]
    epsilon: Option<f64>,
    /// Seed for initialization and shuffling.
    #[arg(long)]
    seed: Option<u64>,
    /// Width of the new hidden layer (every layer of a scratch network); overrides the
    /// pipeline's `widths`.
    #[arg(long)]
    width: Option<usize>,
    /// One width per depth, e.g. 1024,1024,512 (depth d uses the d-th).
    #[arg(long, value_delimiter = ',')]
    widths: Option<Vec<usize>>,
    /// Dropout rate on the trainable hidden layers' activations, in [0, 1).
    #[arg(long)]
    dropout: Option<f64>,
    /// Decoupled weight decay (AdamW).
    #[arg(long)]
    weight_decay: Option<f64>,
    /// constant, cosine, step or one-cycle.
    #[arg(long)]
    lr_schedule: Option<LrSchedule>,
    /// Epochs of linear learning-rate warm-up.
    #[arg(long)]
    warmup_epochs: Option<usize>,
    /// none or flip-crop (random horizontal flip, random crop of the 4-pixel padded image).
    #[arg(long)]
    augment: Option<Augment>,
    /// Output layer from depth 2 on: frozen (tutorial code), retrain (tutorial prose), fresh.
    /// (The autoencoder objective always trains a fresh probe.)
    #[arg(long)]
    head: Option<HeadMode>,
    /// supervised (the labels train the new layer) or autoencoder (the new layer is
    /// pretrained without labels as a denoising autoencoder of its input for --epochs, then
    /// a softmax probe is trained on the frozen stack for --probe-epochs). With --regime
    /// finetune or scratch the pipeline's objective does not apply: they are supervised.
    #[arg(long)]
    objective: Option<Objective>,
    /// Autoencoder: the fraction of its inputs masking noise zeroes, in [0, 1); 0 gives a
    /// plain autoencoder.
    #[arg(long)]
    corruption: Option<f64>,
    /// Autoencoder: tied (the encoder's weight, transposed, with a bias of its own) or
    /// untied (a weight of its own).
    #[arg(long)]
    decoder: Option<Decoder>,
    /// Autoencoder: epochs of the softmax probe trained on the frozen stack (default: the
    /// epochs).
    #[arg(long)]
    probe_epochs: Option<usize>,
    /// adam, sgd or lion (any network).
    #[arg(long)]
    optimizer: Option<Optimizer>,
    /// SGD's momentum, in [0, 1).
    #[arg(long)]
    momentum: Option<f64>,
    /// SGD with Nesterov's momentum.
    #[arg(long)]
    nesterov: bool,
    /// Label smoothing of the cross-entropy, in [0, 1) (convolutional networks).
    #[arg(long)]
    label_smoothing: Option<f64>,
    /// `step` schedule: epochs between two steps.
    #[arg(long)]
    lr_step_epochs: Option<usize>,
    /// `step` schedule: the factor of each step.
    #[arg(long)]
    lr_step_factor: Option<f64>,
    /// A convolutional network's stages, e.g. 64,maxpool:128,128,maxpool:256 (OUT or
    /// DOWNSAMPLE:OUT, downsample maxpool or psi); overrides the pipeline's [model].
    #[arg(long, value_delimiter = ',')]
    stages: Option<Vec<StageSpec>>,
    /// Conv blocks in a convolutional network's auxiliary head (k − 1).
    #[arg(long)]
    head_convs: Option<usize>,
    /// grow (freeze --from, append a layer), finetune (train all of --from end to end; lr
    /// defaults to the pipeline's / 10) or scratch (a fresh network of --depth layers).
    #[arg(long)]
    regime: Option<Regime>,
    /// Hidden layers of a scratch network.
    #[arg(long)]
    depth: Option<usize>,
    /// cpu or cuda.
    #[arg(long, default_value = "cpu")]
    device: DeviceKind,
    /// Plain progress lines even on a terminal.
    #[arg(long)]
    plain: bool,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
    /// Train every depth of the pipeline's greedy loop at once (decoupled greedy
    /// learning, its `[greedy] schedule = "decoupled"`); --out is then the run folder,
    /// where each depth's checkpoint goes to depth-NN/.
    #[arg(long)]
    decoupled: bool,
    /// With --decoupled: groups of stages (default: the pipeline's `decoupled.groups`).
    #[arg(long)]
    groups: Option<usize>,
    /// With --decoupled: threads or mpi (default: the pipeline's `decoupled.launcher`).
    #[arg(long)]
    launcher: Option<layerwise_core::decoupled::Launcher>,
}

/// The job's phase and regime: `--phase` sets both; `--regime` alone names the phase of
/// its regime (grow: greedy, finetune: finetune, scratch: baseline); one that contradicts
/// the other is refused.
fn phase_and_regime(a: &Args) -> Result<(Phase, Regime)> {
    let of_regime = |r: Regime| match r {
        Regime::Grow => Phase::Greedy,
        Regime::Finetune => Phase::Finetune,
        Regime::Scratch => Phase::Baseline,
    };
    match (a.phase, a.regime) {
        (Some(p), Some(r)) if p.regime() != r => bail!(
            "--regime {r} contradicts --phase {p}, whose models are made by the {} regime: drop --regime",
            p.regime()
        ),
        (Some(p), _) => Ok((p, p.regime())),
        (None, r) => {
            let r = r.unwrap_or(Regime::Grow);
            Ok((of_regime(r), r))
        }
    }
}

/// The settings: the pipeline's for the job's phase (`Pipeline::stage_config`, the one
/// derivation the orchestrator uses too), then the flags given. With a pipeline, each flag
/// given is returned as an override (`lr=0.002`, the value as the settings hold it).
fn config(a: &Args, phase: Phase) -> Result<(TrainConfig, Vec<String>)> {
    let pipeline = match &a.pipeline {
        Some(p) => Pipeline::load(p)?,
        None => Pipeline::from_toml("name = \"layerwise-train\"", "the defaults")?,
    };
    let mut c = pipeline.stage_config(phase);
    let mut given: Vec<&str> = Vec::new();
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = a.$f.clone() { c.$f = v; given.push(stringify!($f)); } )* };
    }
    if a.width.is_some() {
        c.widths.clear();
    }
    if let Some(p) = a.probe_epochs {
        c.probe_epochs = Some(p);
        given.push("probe_epochs");
    }
    set!(
        epochs,
        batch_size,
        lr,
        epsilon,
        seed,
        width,
        head,
        widths,
        dropout,
        weight_decay,
        lr_schedule,
        warmup_epochs,
        augment,
        objective,
        corruption,
        decoder
    );
    if a.nesterov {
        c.nesterov = true;
        given.push("nesterov");
    }
    set!(optimizer, momentum, label_smoothing, lr_step_epochs, lr_step_factor);
    if a.stages.is_some() || a.head_convs.is_some() {
        let mut spec = c.cnn.clone().unwrap_or_default();
        if let Some(s) = a.stages.clone() {
            spec.stages = s;
        }
        if let Some(h) = a.head_convs {
            spec.head_convs = h;
        }
        c.cnn = Some(spec);
        given.push("cnn");
    }
    crate::adopt_parent_architecture(&mut c, a.from.as_deref(), phase.regime())?;
    c.validate()?;
    let overrides = if a.pipeline.is_some() {
        let json = serde_json::to_value(&c)?;
        given.iter().map(|k| format!("{k}={}", json.get(*k).unwrap_or(&serde_json::Value::Null))).collect()
    } else {
        Vec::new()
    };
    Ok((c, overrides))
}

/// Run `layerwise-train` with these arguments (program name first).
pub fn run(args: impl IntoIterator<Item = String>) -> Result<()> {
    let a: Args = layerwise_core::parse_args(args)?;
    let (phase, regime) = phase_and_regime(&a)?;
    if a.decoupled {
        return run_decoupled(&a, phase);
    }
    if a.groups.is_some() || a.launcher.is_some() {
        bail!("--groups and --launcher say how a decoupled run trains its stages: add --decoupled");
    }
    let (config, overrides) = config(&a, phase)?;
    let opts = TrainOptions {
        config,
        overrides,
        progress: progress(&a),
        data: a.data,
        from: a.from,
        out: a.out,
        device: a.device,
        regime,
        depth: a.depth,
    };
    let out = train(&opts)?;
    say_written(&out);
    Ok(())
}

/// The line a finished depth leaves.
fn say_written(out: &crate::TrainOutcome) {
    eprintln!(
        "wrote {} ({} depth {}, val_acc {:.4}{}, {:.1}s)",
        out.checkpoint.display(),
        out.meta.regime.name(),
        out.meta.depth,
        out.history.kept().map_or(f64::NAN, |e| e.val_accuracy),
        out.history.best_epoch.map_or(String::new(), |b| format!(" at its best epoch, {b}")),
        out.history.seconds
    );
}

fn progress(a: &Args) -> Progress {
    if a.quiet {
        Progress::Quiet
    } else if a.plain {
        Progress::Plain
    } else {
        Progress::Auto
    }
}

/// `--decoupled`: every depth of the pipeline's greedy loop at once, into the run folder.
fn run_decoupled(a: &Args, phase: Phase) -> Result<()> {
    let Some(path) = &a.pipeline else {
        bail!("--decoupled trains the stages of a pipeline's [model]: pass --pipeline")
    };
    if phase != Phase::Greedy || a.from.is_some() || a.depth.is_some() {
        bail!("--decoupled trains the greedy loop's stages from scratch, all at once: drop --phase, --regime, --from and --depth");
    }
    let pipeline = Pipeline::load(path)?;
    let (config, overrides) = config(a, Phase::Greedy)?;
    let mut decoupled = pipeline.decoupled.clone();
    if let Some(g) = a.groups {
        decoupled.groups = g;
    }
    if let Some(l) = a.launcher {
        decoupled.launcher = l;
    }
    if a.device != DeviceKind::Cpu {
        bail!("the decoupled schedule runs on the CPU's kernels for now: drop --device {}", a.device.name());
    }
    let opts = crate::decoupled::DecoupledOptions {
        data: a.data.clone(),
        run_dir: a.out.clone(),
        config,
        decoupled,
        depths: pipeline.greedy.max_depth,
        progress: progress(a),
        overrides,
    };
    for out in crate::train_decoupled(&opts)? {
        say_written(&out);
    }
    Ok(())
}
