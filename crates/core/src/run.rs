//! The layout of a run folder, shared by the training stage (which writes a depth
//! folder), the report stage (which reads them) and the orchestrator.
//!
//! ```text
//! RUN/pipeline.toml                      the pipeline this run runs
//! RUN/notes.md                           a person's notes (optional; ends the report)
//! RUN/depth-NN/model.safetensors         checkpoint
//! RUN/depth-NN/train.json                training history
//! RUN/depth-NN/eval.json                 evaluation
//! RUN/report.md, accuracy.svg, summary.json
//! ```

use std::path::{Path, PathBuf};

/// The pipeline copy a run keeps.
pub const PIPELINE_FILE: &str = "pipeline.toml";
/// Notes a person keeps in a run folder; the report ends with them.
pub const NOTES_FILE: &str = "notes.md";
/// A depth folder's checkpoint.
pub const MODEL_FILE: &str = "model.safetensors";
/// A depth folder's training history.
pub const HISTORY_FILE: &str = "train.json";
/// A depth folder's evaluation.
pub const EVAL_FILE: &str = "eval.json";
/// What the report stage writes into the run folder.
pub const REPORT_FILES: [&str; 3] = ["report.md", "accuracy.svg", "summary.json"];

/// Folder of depth `depth` inside a run: `depth-NN`.
pub fn depth_dir(run: &Path, depth: usize) -> PathBuf {
    run.join(format!("depth-{depth:02}"))
}

/// The depth a folder name stands for (`depth-03` → 3).
pub fn parse_depth_dir(name: &str) -> Option<usize> {
    name.strip_prefix("depth-")?.parse().ok()
}
