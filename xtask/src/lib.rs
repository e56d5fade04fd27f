//! The orchestrator's library: [`greedy`] plans and runs the loop from the stages' own
//! command lines; [`slurm`] hands the same plan to a cluster scheduler; [`sweep`] runs a
//! greedy run per (pipeline, seed) and aggregates them; [`bench`] measures speed. The
//! binary in `main.rs` only parses.
#![deny(missing_docs)]

pub mod bench;
pub mod bench_pipeline;
pub mod chaos;
pub mod fuzz;
pub mod greedy;
pub mod slurm;
pub mod sweep;

use std::path::PathBuf;

/// The stage programs. The xtask binary is each of them too when called by that name (a
/// link named `layerwise-train` to it runs the training stage): scheduler jobs run the
/// stages through it.
pub const STAGES: [&str; 4] = ["layerwise-prepare", "layerwise-train", "layerwise-evaluate", "layerwise-report"];

/// The repository root (xtask lives one folder below it).
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}
