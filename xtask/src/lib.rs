//! The orchestrator's library. A run is a [`plan::Plan`] of stage [`plan::Step`]s;
//! [`schedule`] builds its job graph once and walks it, deciding [`gate`]s and asking the
//! completeness [`judge`] what is done; three executors take the schedule: [`local`] runs
//! it here, [`print`] prints it, [`slurm`] writes it as batch jobs. [`greedy`] picks the
//! executor; [`sweep`] runs a greedy run per (pipeline, seed) and aggregates them;
//! [`bench`] measures speed; [`verify_device`] checks a device's path against the host kernels; [`fuzz`] and [`chaos`] attack the readers and the resume.
//! The binary in `main.rs` only parses.
#![deny(missing_docs)]

pub mod args;
pub mod bench;
pub mod bench_against;
pub mod bench_conv;
pub mod bench_pipeline;
pub mod bench_reference;
pub mod chaos;
pub mod fuzz;
mod fuzz_readers;
pub mod gate;
pub mod greedy;
pub mod judge;
pub mod local;
pub mod plan;
pub mod print;
pub mod schedule;
pub mod slurm;
pub mod sweep;
pub mod verify_device;

use std::path::PathBuf;

/// The repository root (xtask lives one folder below it).
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}
