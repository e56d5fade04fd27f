//! One MLP depth's context: the dataset, the plan (frozen prefix, trainable layers,
//! head), the options and the run's key. Its methods live by concept: the inputs
//! (`inputs.rs`), resume (`resume.rs`), the depth's training (`mlp.rs`), pretraining
//! (`pretrain.rs`).

use crate::options::TrainOptions;
use crate::plan::Plan;
use crate::progress::Progress;
use crate::state::RunKey;
use layerwise_core::dataset::Dataset;

/// An MLP depth being trained.
pub(crate) struct Run<'a> {
    /// The prepared dataset.
    pub(crate) ds: &'a Dataset,
    /// What is frozen, what trains.
    pub(crate) plan: &'a Plan,
    /// The depth.
    pub(crate) depth: usize,
    /// What was asked.
    pub(crate) opts: &'a TrainOptions,
    /// What decides its result: a saved state of another key is not resumed.
    pub(crate) state_key: RunKey,
    /// The parent checkpoint's SHA-256.
    pub(crate) parent_sha: Option<String>,
}

impl Run<'_> {
    /// Print a line about this depth (unless quiet).
    pub(crate) fn say(&self, text: &str) {
        if self.opts.progress != Progress::Quiet {
            layerwise_core::progress::println(&format!("depth {}: {text}", self.depth));
        }
    }
}
