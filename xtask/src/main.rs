//! `cargo xtask`: layerwise's orchestrator (rust-analyzer's xtask pattern: plain Rust
//! instead of shell scripts, run through the `xtask` alias in `.cargo/config.toml`).
//!
//! - `cargo xtask greedy`: the greedy layer-wise loop, stage by stage, resumable.
//! - `cargo xtask bench`: training throughput against a plain matrix product.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(about = "layerwise's orchestrator")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the greedy layer-wise loop (prepare, then train + evaluate per depth, then report).
    Greedy(xtask::greedy::GreedyArgs),
    /// Measure training speed on this machine (synthetic data of CIFAR-10's shape).
    Bench(xtask::bench::BenchArgs),
}

fn main() -> ExitCode {
    let result = match Cli::parse().cmd {
        Cmd::Greedy(a) => xtask::greedy::run(&a).map(|_| ()),
        Cmd::Bench(a) => xtask::bench::run(&a),
    };
    layerwise_core::exit_code("xtask", result)
}
