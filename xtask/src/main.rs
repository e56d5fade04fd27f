//! `cargo xtask`: layerwise's orchestrator (rust-analyzer's xtask pattern: plain Rust
//! instead of shell scripts, run through the `xtask` alias in `.cargo/config.toml`).
//!
//! - `cargo xtask greedy`: the greedy layer-wise loop, stage by stage, resumable; with
//!   `--scheduler slurm`, as Slurm jobs.
//! - `cargo xtask sweep`: one greedy run per (pipeline, seed), and a report over them.
//! - `cargo xtask bench`: training throughput against a plain matrix product.
//! - `cargo xtask verify-device`: the device path against the host kernels.
//! - `cargo xtask predict` / `export`: those stages, from the binary the run built.
//! - `xtask gate`: used by scheduler jobs: has the loop stopped before a depth?
//!
//! Called by a stage's name (through a link, as Slurm jobs do), the binary is that stage.

use clap::{Parser, Subcommand};
use std::alloc::{GlobalAlloc, Layout, System};
use std::process::ExitCode;
use std::sync::atomic::Ordering;

/// The system allocator, which refuses (loudly) any single allocation over
/// `fuzz::ALLOCATION_BOUND` while `cargo xtask fuzz` runs a reader.
struct Bounded;

fn check(size: usize) {
    if size > xtask::fuzz::ALLOCATION_BOUND && xtask::fuzz::BOUND_ON.load(Ordering::Relaxed) {
        xtask::fuzz::allocation_over_bound(size);
    }
}

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Bounded = Bounded;

#[derive(Parser)]
#[command(about = "layerwise's orchestrator")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the greedy layer-wise loop (prepare, then train + evaluate per depth, then report).
    Greedy(xtask::args::GreedyArgs),
    /// Run the greedy loop once per (pipeline, seed) and report over the runs.
    Sweep(xtask::sweep::SweepArgs),
    /// Measure training speed on this machine (synthetic data of CIFAR-10's shape).
    Bench(xtask::bench::BenchArgs),
    /// Classify image files with a checkpoint: layerwise-predict, from this binary (its
    /// arguments; `cargo xtask predict --help`).
    #[command(disable_help_flag = true)]
    Predict {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Export a checkpoint as ONNX: layerwise-export, from this binary (its arguments;
    /// `cargo xtask export --help`).
    #[command(disable_help_flag = true)]
    Export {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Check the device path (what a GPU runs) against the host kernels: logits and every
    /// gradient of pipelines/cnn.toml's stages and of the MLP, as relative errors.
    VerifyDevice(xtask::verify_device::VerifyArgs),
    /// Feed every file reader seeded mutations of valid files: no panic, no huge allocation.
    Fuzz(xtask::fuzz::FuzzArgs),
    /// Kill greedy runs with SIGKILL at seeded moments, rerun, compare with an uninterrupted run.
    Chaos(xtask::chaos::ChaosArgs),
    /// For scheduler jobs: exit 0 if the run's greedy loop goes on to --depth, 3 if
    /// patience stopped it before (saying why), 1 on error.
    Gate(GateArgs),
}

#[derive(clap::Args)]
struct GateArgs {
    /// Run folder.
    #[arg(long)]
    run_dir: std::path::PathBuf,
    /// The run's first depth.
    #[arg(long, default_value_t = 1)]
    first: usize,
    /// The depth a job is about to train or evaluate.
    #[arg(long)]
    depth: usize,
    /// A job after the loop ([finetune], [baseline]) covering `best` or `all` depths.
    #[arg(long)]
    after_loop: Option<AfterLoop>,
    /// The loop whose depths decide `best`: greedy (the [train] loop) or autoencoder.
    #[arg(long, default_value = "greedy")]
    best_of: layerwise_core::run::Phase,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum AfterLoop {
    Best,
    All,
}

fn main() -> ExitCode {
    // Ctrl-C or SIGTERM while an artifact is being written removes its temp file.
    layerwise_core::atomic::install_signal_cleanup();
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let name = std::path::Path::new(&argv0).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if let Some(program) = xtask::plan::Program::from_name(&name) {
        let args: Vec<String> = std::env::args().skip(1).collect();
        return layerwise_core::exit_code(program.name(), program.run(&args));
    }
    let result = match Cli::parse().cmd {
        Cmd::Greedy(a) => xtask::greedy::run(&a).map(|_| ()),
        Cmd::Sweep(a) => xtask::sweep::run(&a),
        Cmd::Bench(a) => xtask::bench::run(&a),
        Cmd::VerifyDevice(a) => xtask::verify_device::run(&a),
        // The stage itself, named as itself: its messages and exit code are its own.
        Cmd::Predict { args } => {
            let program = xtask::plan::Program::Predict;
            return layerwise_core::exit_code(program.name(), program.run(&args));
        }
        Cmd::Export { args } => {
            let program = xtask::plan::Program::Export;
            return layerwise_core::exit_code(program.name(), program.run(&args));
        }
        Cmd::Fuzz(a) => xtask::fuzz::run(&a),
        Cmd::Chaos(a) => xtask::chaos::run(&a).map(|_| ()),
        Cmd::Gate(a) => match xtask::gate::gate(
            &a.run_dir,
            a.first,
            a.depth,
            a.after_loop.map(|d| match d {
                AfterLoop::Best => layerwise_core::pipeline::Depths::Best,
                AfterLoop::All => layerwise_core::pipeline::Depths::All,
            }),
            a.best_of,
        ) {
            Ok(None) => {
                eprintln!("gate: depth {} goes ahead", a.depth);
                Ok(())
            }
            Ok(Some(reason)) => {
                eprintln!("gate: {reason}");
                return ExitCode::from(xtask::gate::GATE_STOPPED);
            }
            Err(e) => Err(e),
        },
    };
    layerwise_core::exit_code("xtask", result)
}
