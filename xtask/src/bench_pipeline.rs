//! `cargo xtask bench --pipeline FILE`: a whole greedy run (prepare included), timed, with
//! its useful FLOPs counted per phase from the run folder it leaves, against the fastest
//! matrix product of this machine measured in the same process.
//!
//! The count (BENCHMARKS.md has the formulas): for every training run, per epoch, the
//! forward pass of the layers it trains and of the output layer, their weight gradients,
//! and the input gradients the layers above the first trained one pass down, over the
//! training split, plus the forward pass over the validation split; once per depth, the
//! frozen features as one layer applied to the previous depth's features; every
//! evaluation's forward pass. Autoencoder pretraining counts encoder and decoder.

use crate::args::{GreedyArgs, RunInputs};
use crate::bench_reference::{matmul_gflops, print_references, references, torch_matmul_gflops};
use anyhow::{Context, Result};
use layerwise_core::checkpoint::read_checkpoint_meta;
use layerwise_core::config::Objective;
use layerwise_core::metrics::{Evaluation, TrainHistory};
use layerwise_core::names::TensorPath;
use layerwise_core::run::{parse_phase_dir, EVAL_FILE, HISTORY_FILE, MODEL_FILE};
use layerwise_nn::device::DeviceKind;
use std::path::Path;
use std::time::Instant;

/// FLOPs and seconds of one phase.
#[derive(Default, Clone, Copy)]
struct Phase {
    flops: f64,
    seconds: f64,
}

impl Phase {
    fn add(&mut self, flops: f64, seconds: f64) {
        self.flops += flops;
        self.seconds += seconds;
    }
}

/// This process's peak resident memory (`VmHWM`), in bytes.
pub fn peak_memory() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

/// Where the CIFAR-10 for the run comes from: `--source`, else `CIFAR10_DIR`, else a
/// synthetic release of the same shape written into `dir`.
fn source(given: Option<&Path>, dir: &Path) -> Result<(std::path::PathBuf, &'static str)> {
    if let Some(s) = given {
        return Ok((s.to_path_buf(), "CIFAR-10 (--source)"));
    }
    if let Some(d) = std::env::var_os("CIFAR10_DIR").map(std::path::PathBuf::from).filter(|d| d.exists()) {
        return Ok((d, "CIFAR-10 (CIFAR10_DIR)"));
    }
    eprintln!("no CIFAR-10 given (--source or CIFAR10_DIR): writing a synthetic release of the same shape");
    Ok((layerwise_testkit::synthetic::write_folder(dir, false, 10_000)?, "a synthetic release of CIFAR-10's shape"))
}

/// Run the pipeline and print the phase table and the efficiency.
pub fn run(pipeline: &Path, given: Option<&Path>, device: DeviceKind) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("layerwise-bench-pipeline-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (src, what) = source(given, &dir)?;
    let before = references();
    let run_dir = dir.join("run");
    let args = GreedyArgs {
        pipeline: Some(pipeline.to_path_buf()),
        run_dir: Some(run_dir.clone()),
        seed: None,
        from: None,
        restart: false,
        print_commands: false,
        groups: None,
        launcher: None,
        inputs: RunInputs {
            source: Some(src),
            artifacts: Some(dir.join("artifacts")),
            device,
            plain: true,
            ..Default::default()
        },
    };
    let started = Instant::now();
    crate::greedy::run(&args)?;
    let wall = started.elapsed().as_secs_f64();
    let peak = peak_memory();
    let after = references();

    let datasets = dir.join("artifacts/datasets");
    let data = std::fs::read_dir(&datasets)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .context("the run left no dataset")?;
    let sizes = layerwise_core::dataset::Dataset::open(&data)?.meta.split_sizes;
    let (n, v) = (sizes.train as f64, sizes.val as f64);
    let (mut epochs, mut features, mut evaluation) = (Phase::default(), Phase::default(), Phase::default());
    let mut pretraining = Phase::default();
    // The greedy loop's epochs at depth 1 and at depths ≥ 2 (its dominant products have
    // those two shapes), each against the product of its own shape.
    let (mut depth1, mut deeper) = (Phase::default(), Phase::default());
    let mut dirs: Vec<_> =
        std::fs::read_dir(&run_dir)?.flatten().filter_map(|e| parse_phase_dir(e.file_name().to_str()?)).collect();
    dirs.sort_unstable_by_key(|(s, d)| (s.name(), *d));
    for (stage, depth) in dirs {
        let folder = layerwise_core::run::phase_dir(&run_dir, stage, depth);
        let meta = read_checkpoint_meta(&folder.join(MODEL_FILE))?;
        let h = TrainHistory::read(&folder.join(HISTORY_FILE))?;
        let e = Evaluation::read(&folder.join(EVAL_FILE))?;
        // Parameters of each hidden layer, and the head.
        let mut inputs = meta.input_size;
        let p: Vec<f64> = meta
            .widths
            .iter()
            .map(|&w| {
                let x = (inputs * w) as f64;
                inputs = w;
                x
            })
            .collect();
        let head = (inputs * meta.classes.len()) as f64;
        let is_trained = |i: usize| meta.trained.iter().any(|t| t == TensorPath::hidden(i).as_str());
        let t: Vec<usize> = (0..p.len()).filter(|&i| is_trained(i)).collect();
        let head_trains = meta.trained.iter().any(|t| t == TensorPath::head().as_str());
        let sum_t: f64 = t.iter().map(|&i| p[i]).sum();
        // The first trained hidden layer (none: the number of layers).
        let first = t.first().copied().unwrap_or(p.len());
        let autoencoder = meta.config.objective == Objective::Autoencoder;
        let epoch_seconds: f64 = h.epochs.iter().map(|e| e.seconds).sum();
        if autoencoder {
            // Pretraining: encoder and decoder forward (4P), decoder weight and input
            // gradients and the encoder's weight gradient (6P) per training row; the
            // validation reconstruction (4P). The probe: a head on fixed features.
            let pe = p[p.len() - 1];
            let per_epoch = n * 10.0 * pe + v * 4.0 * pe;
            let secs: f64 = h.pretraining.iter().map(|e| e.seconds).sum();
            pretraining.add(per_epoch * h.pretraining.len() as f64, secs);
            let probe = n * 4.0 * head + v * 2.0 * head;
            epochs.add(probe * h.epochs.len() as f64, epoch_seconds);
        } else {
            let fwd = 2.0 * (sum_t + head);
            let wgrad = 2.0 * sum_t + if head_trains { 2.0 * head } else { 0.0 };
            let igrad = if t.is_empty() { 0.0 } else { 2.0 * head }
                + 2.0 * t.iter().filter(|&&i| i != first).map(|&i| p[i]).sum::<f64>();
            let per_epoch = n * (fwd + wgrad + igrad) + v * fwd;
            epochs.add(per_epoch * h.epochs.len() as f64, epoch_seconds);
            if stage == layerwise_core::run::Phase::Greedy {
                let phase = if depth == 1 { &mut depth1 } else { &mut deeper };
                phase.add(per_epoch * h.epochs.len() as f64, epoch_seconds);
            }
        }
        // Frozen features: one layer over the train and validation rows (the layer below
        // the first trained one), however the stage computed them.
        if first > 0 {
            features.add((n + v) * 2.0 * p[first - 1], h.frozen_features_seconds);
        }
        evaluation.add(e.samples as f64 * 2.0 * (p.iter().sum::<f64>() + head), e.seconds);
    }
    let counted = epochs.seconds + pretraining.seconds + features.seconds + evaluation.seconds;
    let rest = Phase { flops: 0.0, seconds: (wall - counted).max(0.0) };
    let total = epochs.flops + pretraining.flops + features.flops + evaluation.flops;
    println!("layerwise bench --pipeline {}: {what}, device {}", pipeline.display(), device.name());
    let refs = print_references(&before, &after);
    let (reference, small_reference) = (refs.big, refs.small);
    println!("| phase | useful GFLOP | seconds | GFLOP/s | vs reference |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (name, ph) in [
        ("training epochs (train + validation passes)", epochs),
        ("autoencoder pretraining", pretraining),
        ("frozen features (one layer per depth)", features),
        ("evaluations", evaluation),
        ("prepare, report, orchestration", rest),
    ] {
        if ph.seconds == 0.0 && ph.flops == 0.0 {
            continue;
        }
        let rate = if ph.seconds > 0.0 { ph.flops / ph.seconds / 1e9 } else { 0.0 };
        println!(
            "| {name} | {:.1} | {:.2} | {:.1} | {:.0}% |",
            ph.flops / 1e9,
            ph.seconds,
            rate,
            100.0 * rate / reference
        );
    }
    let rate = total / wall / 1e9;
    println!("| **whole run** | {:.1} | {wall:.2} | {rate:.1} | {:.0}% |", total / 1e9, 100.0 * rate / reference);
    for (name, ph, refr, shape) in [
        ("depth-1 epochs", depth1, reference, "(250x3072)·(3072x256)"),
        ("depth-2+ epochs", deeper, small_reference, "(250x256)·(256x256)"),
    ] {
        if ph.seconds > 0.0 {
            let rate = ph.flops / ph.seconds / 1e9;
            println!(
                "{name}: {rate:.1} GFLOP/s, {:.0}% of the {shape} product ({refr:.1} GFLOP/s)",
                100.0 * rate / refr
            );
        }
    }
    println!(
        "whole-pipeline efficiency: {:.2} (useful FLOPs / wall time / reference rate; at the reference rate the run \
         would take {:.1} s)",
        rate / reference,
        total / 1e9 / reference
    );
    machine_best(rate, depth1, deeper);
    if let Some(peak) = peak {
        println!("peak resident memory of the process: {:.2} GB", peak / 1e9);
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

/// The products of the seed pipeline's shapes (and a large square one) through gemm 0.19
/// and, where it is installed, PyTorch's CPU build (its BLAS), on the same threads, measured
/// after the run; and the run's rates against the best of them: how far the pipeline is
/// from the best product rate this machine reaches, and how much of that gap is the
/// product kernel's own.
fn machine_best(rate: f64, depth1: Phase, deeper: Phase) {
    let threads = rayon::current_num_threads();
    let shapes = [(250, 3072, 256), (3072, 250, 256), (250, 256, 256), (1024, 1024, 1024)];
    let names = [
        "(250x3072)·(3072x256), depth 1's forward",
        "(3072x250)·(250x256), depth 1's weight gradient",
        "(250x256)·(256x256), depths ≥ 2",
        "(1024x1024)·(1024x1024), a large square product",
    ];
    let ours: Vec<f64> = shapes.iter().map(|&(m, k, n)| matmul_gflops(m, k, n, 1.0)).collect();
    let torch = torch_matmul_gflops(&shapes, threads, 1.0);
    println!("the machine's best product rate, {threads} threads, measured after the run:");
    println!("| product | gemm 0.19 GFLOP/s | PyTorch GFLOP/s | gemm ÷ best |");
    println!("| --- | ---: | ---: | ---: |");
    let best: Vec<f64> = match &torch {
        Ok(t) => ours.iter().zip(t).map(|(a, b)| a.max(*b)).collect(),
        Err(_) => ours.clone(),
    };
    for (i, name) in names.iter().enumerate() {
        let t = torch.as_ref().map_or("—".to_string(), |t| format!("{:.1}", t[i]));
        println!("| {name} | {:.1} | {t} | {:.2} |", ours[i], ours[i] / best[i]);
    }
    if let Err(e) = &torch {
        println!("(PyTorch not measured: {e:#})");
    }
    let d1 = depth1.flops / depth1.seconds.max(1e-9) / 1e9;
    let d2 = deeper.flops / deeper.seconds.max(1e-9) / 1e9;
    println!(
        "against the best rate of their own shape: depth-1 epochs {:.2}, depth-2+ epochs {:.2}; \
         whole-pipeline efficiency against the best (250x3072)·(3072x256) rate ({:.1} GFLOP/s): {:.2}",
        d1 / best[0],
        d2 / best[2],
        best[0],
        rate / best[0]
    );
}
