//! `cargo xtask bench`: training throughput on this machine, against a plain f32 matrix
//! product measured in the same run (these machines are noisy: compare ratios, not
//! absolute numbers across runs).
//!
//! It writes a synthetic dataset of CIFAR-10's shape (40,000 train images by default, from
//! `layerwise-testkit`),
//! trains depth 1 through the real training stage, builds random checkpoints of depth 1
//! and 9, trains depth 2 and depth 10 from them, and reports each epoch's samples/s and
//! GFLOP/s.

use anyhow::{Context, Result};
use layerwise_core::checkpoint::{save_checkpoint, CheckpointMeta, Mlp, CHECKPOINT_VERSION};
use layerwise_core::config::{Augment, HeadMode, TrainConfig};
use layerwise_core::dataset::DatasetMeta;
use layerwise_nn::device::DeviceKind;
use layerwise_nn::glorot_dense;
use layerwise_train::{train, Progress, TrainOptions};
use std::path::Path;

/// `cargo xtask bench` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Training images.
    #[arg(long, default_value_t = 40_000)]
    pub train: usize,
    /// Epochs per depth; the first is a warm-up, the fastest of the others is reported.
    #[arg(long, default_value_t = 4)]
    pub epochs: usize,
    /// cpu or cuda.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceKind,
    /// Time a whole greedy run of this pipeline instead (prepare included) and count its
    /// useful FLOPs per phase: on the real CIFAR-10 when it is found (--source, or
    /// CIFAR10_DIR), else on a synthetic release of the same shape.
    #[arg(long)]
    pub pipeline: Option<std::path::PathBuf>,
    /// CIFAR-10 folder or tarball for --pipeline.
    #[arg(long)]
    pub source: Option<std::path::PathBuf>,
    /// Time a convolutional stage's training step instead, on every stage shape of
    /// pipelines/cnn.toml (the host kernels on the CPU, the device path on cuda).
    #[arg(long)]
    pub conv: bool,
    /// With --conv: images per step, one or more (`--batch 128,512`).
    #[arg(long, value_delimiter = ',', default_value = "128")]
    pub batch: Vec<usize>,
    /// With --conv: also write the rows as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// With --conv: time every stage side by side with another library, alternating
    /// rounds in this run (`pytorch`: its CPU build, installed once into target/torch-venv
    /// by scripts/torch-venv.sh).
    #[arg(long, requires = "conv")]
    pub against: Option<crate::bench_against::Against>,
    /// With --against: the thread counts both sides run with, in turn.
    #[arg(long, value_delimiter = ',', default_value = "1,2", requires = "against")]
    pub threads: Vec<usize>,
    /// With --against: rounds per thread count (each times layerwise, then the other).
    #[arg(long, default_value_t = 2, requires = "against")]
    pub rounds: usize,
}

const VAL: usize = 1000;
const DIM: usize = 3072;
const WIDTH: usize = 256;
const CLASSES: usize = 10;

/// A random checkpoint of `depth` hidden layers fitting the dataset.
fn random_checkpoint(path: &Path, depth: usize, data: &DatasetMeta) -> Result<()> {
    let mut hidden = vec![glorot_dense(DIM, WIDTH, 1)];
    for i in 1..depth {
        hidden.push(glorot_dense(WIDTH, WIDTH, i as u64 + 1));
    }
    let model = Mlp { hidden, head: glorot_dense(WIDTH, CLASSES, 99) };
    let meta = CheckpointMeta {
        overrides: Vec::new(),
        schedule: None,
        version: CHECKPOINT_VERSION,
        depth,
        input_size: DIM,
        widths: model.widths(),
        activation: "relu".into(),
        classes: data.classes.clone(),
        frozen: vec![],
        trained: vec![],
        trainable_params: 0,
        dataset_fingerprint: data.fingerprint.clone(),
        dataset_name: data.name.clone(),
        parent_sha256: None,
        config: TrainConfig::default(),
        device: "cpu".into(),
        regime: Default::default(),
        input: None,
        cnn: None,
    };
    save_checkpoint(path, &model, &meta)
}

struct Row {
    label: String,
    samples_per_second: f64,
    gflops: f64,
    epoch_seconds: f64,
    frozen_seconds: f64,
}

impl Row {
    fn faster(self, other: Row) -> Row {
        if other.epoch_seconds < self.epoch_seconds {
            other
        } else {
            self
        }
    }
}

/// Useful FLOPs per training sample: forward 2·P over all trained-through layers, weight
/// gradients 2·P of the trained layers, input gradients 2·P of layers after the first
/// trained one (no gradient is needed, or computed, for the input of the new layer).
fn flops_per_sample(new_in: usize, head_trains: bool) -> f64 {
    let new_p = (new_in * WIDTH) as f64;
    let head_p = (WIDTH * CLASSES) as f64;
    2.0 * (new_p + head_p) + 2.0 * new_p + if head_trains { 2.0 * head_p } else { 0.0 } + 2.0 * head_p
}

/// The defaults with this head mode.
fn plain(head: HeadMode) -> TrainConfig {
    TrainConfig { head, ..TrainConfig::default() }
}

fn time_depth(
    dir: &Path,
    data: &Path,
    from: Option<&Path>,
    label: &str,
    a: &BenchArgs,
    new_in: usize,
    cfg: TrainConfig,
) -> Result<Row> {
    let head = cfg.head;
    let cfg = TrainConfig { epochs: a.epochs, ..cfg };
    let out = train(&TrainOptions {
        overrides: Vec::new(),
        data: data.into(),
        from: from.map(Into::into),
        out: dir.join(label.replace(' ', "-")),
        config: cfg,
        device: a.device,
        progress: Progress::Quiet,
        regime: layerwise_core::config::Regime::Grow,
        depth: None,
    })?;
    let timed: Vec<_> =
        if out.history.epochs.len() > 1 { out.history.epochs[1..].to_vec() } else { out.history.epochs.clone() };
    // The fastest timed epoch: the machine's noise only ever adds time.
    let secs = timed.iter().map(|e| e.seconds).fold(f64::INFINITY, f64::min);
    let head_trains = from.is_none() || head != HeadMode::Frozen;
    let flops = a.train as f64 * flops_per_sample(new_in, head_trains)
        + VAL as f64 * 2.0 * (new_in * WIDTH + WIDTH * CLASSES) as f64;
    Ok(Row {
        label: label.into(),
        samples_per_second: a.train as f64 / secs,
        gflops: flops / secs / 1e9,
        epoch_seconds: secs,
        frozen_seconds: out.history.frozen_features_seconds,
    })
}

use crate::bench_reference::{print_references, references};

/// Run the benchmark and print its table.
pub fn run(a: &BenchArgs) -> Result<()> {
    if let Some(p) = &a.pipeline {
        return crate::bench_pipeline::run(p, a.source.as_deref(), a.device);
    }
    if let Some(against) = a.against {
        let batch = a.batch.first().copied().unwrap_or(128);
        return crate::bench_against::run(against, &a.threads, a.rounds, batch, a.json.as_deref());
    }
    if a.conv {
        return crate::bench_conv::run(2.0, a.device, &a.batch, a.json.as_deref());
    }
    let dir = tempfile_dir()?;
    let data = dir.join("bench.safetensors");
    eprintln!("writing a synthetic {}-image dataset...", a.train);
    let meta = layerwise_testkit::prepared_dataset(&data, a.train, VAL, 10, 1)?;
    let before = references();
    let d1 = time_depth(&dir, &data, None, "depth 1", a, DIM, plain(HeadMode::Frozen))?;
    let c1 = dir.join("d1.safetensors");
    random_checkpoint(&c1, 1, &meta)?;
    let c9 = dir.join("d9.safetensors");
    random_checkpoint(&c9, 9, &meta)?;
    // Depth 2 and depth 10 alternate, twice each, and keep their fastest epoch: whichever
    // runs later in the process is otherwise a few percent slower.
    let mut d2 = time_depth(&dir, &data, Some(&c1), "depth 2", a, WIDTH, plain(HeadMode::Frozen))?;
    let mut d10 = time_depth(&dir, &data, Some(&c9), "depth 10", a, WIDTH, plain(HeadMode::Frozen))?;
    d2 = d2.faster(time_depth(&dir, &data, Some(&c1), "depth 2", a, WIDTH, plain(HeadMode::Frozen))?);
    d10 = d10.faster(time_depth(&dir, &data, Some(&c9), "depth 10", a, WIDTH, plain(HeadMode::Frozen))?);
    let d10r = time_depth(&dir, &data, Some(&c9), "depth 10 retrain", a, WIDTH, plain(HeadMode::Retrain))?;
    // What flip-crop augmentation costs: the images are transformed per batch, and the
    // frozen layers' outputs can no longer be cached (depth 10 recomputes 9 layers per batch).
    let aug = |head| TrainConfig { head, augment: Augment::FlipCrop, ..TrainConfig::default() };
    let d1a = time_depth(&dir, &data, None, "depth 1 + flip-crop", a, DIM, aug(HeadMode::Frozen))?;
    let d10a = time_depth(&dir, &data, Some(&c9), "depth 10 + flip-crop", a, WIDTH, aug(HeadMode::Frozen))?;
    let after = references();
    println!("layerwise bench: {} training images, batch 250, width 256, device {}", a.train, a.device.name());
    let r = print_references(&before, &after);
    println!("| run | epoch s | samples/s | GFLOP/s | vs the product of its shape | frozen features s |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (row, reference) in
        [(&d1, r.big), (&d2, r.small), (&d10, r.small), (&d10r, r.small), (&d1a, r.big), (&d10a, r.small)]
    {
        println!(
            "| {} | {:.3} | {:.0} | {:.1} | {:.0}% | {:.3} |",
            row.label,
            row.epoch_seconds,
            row.samples_per_second,
            row.gflops,
            100.0 * row.gflops / reference,
            row.frozen_seconds
        );
    }
    println!("depth-10 epoch / depth-2 epoch: {:.2}", d10.epoch_seconds / d2.epoch_seconds);
    println!(
        "flip-crop augmentation: depth-1 epoch ×{:.2}, depth-10 epoch ×{:.2} (its 9 frozen layers recomputed per batch; \
         GFLOP/s counts only the trained layers' work)",
        d1a.epoch_seconds / d1.epoch_seconds,
        d10a.epoch_seconds / d10.epoch_seconds
    );
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("layerwise-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}
