//! The orchestrator's library: [`greedy`] plans and runs the loop from the stages' own
//! command lines; [`bench`] measures speed. The binary in `main.rs` only parses.
#![deny(missing_docs)]

pub mod bench;
pub mod greedy;

use std::path::PathBuf;

/// The repository root (xtask lives one folder below it).
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}
