//! The training stage: one run trains exactly one depth of the greedy loop, from a
//! checkpoint on disk (or nothing, at depth 1) to a checkpoint on disk.
//!
//! # Brief overview
//! - [`TrainOptions`]: dataset, parent checkpoint, output folder, [`TrainConfig`], device.
//! - [`train`]: grows the parent by one hidden layer (or convolutional stage), trains what
//!   the head mode says is trainable, and writes `model.safetensors` and `train.json`.
//!
//! Every network trains in the one epoch loop (`learner.rs`), over nn's one
//! [`layerwise_nn::Step`]: an MLP's depth (`mlp.rs`), a convolutional depth (`conv.rs`),
//! the supervised loop both share (`supervised.rs`), an autoencoder's pretraining
//! (`pretrain.rs`). The frozen layers' outputs are computed once per depth
//! ([`TrainOutcome::prefix_rows`] counts the rows pushed through them), so training depth
//! d costs the same as depth 2. Frozen weights are copied from the parent checkpoint,
//! never round-tripped through the device, so they stay bit-identical.
//!
//! This file is the front door: modules, re-exports and [`train`]; no module imports it
//! back (`xtask/tests/architecture.rs`).
#![deny(missing_docs)]

pub mod cli;
mod conv;
pub mod decoupled;
mod group;
mod inputs;
mod launch;
mod learner;
mod links;
mod mlp;
mod mpi_links;
mod options;
mod outputs;
mod plan;
mod pretrain;
mod progress;
pub mod replay;
mod resume;
mod run;
pub mod state;
mod supervised;

pub use launch::train_decoupled;
pub use mpi_links::{MPI_BUILT, NO_MPI};
pub use options::{adopt_parent_architecture, TrainOptions, TrainOutcome};
pub use plan::{memory_available, memory_needed};
pub use progress::Progress;
pub use resume::STOP_AFTER_EPOCH_ENV;

use anyhow::{bail, Context, Result};
use layerwise_core::dataset::Dataset;
use layerwise_nn::device::DeviceKind;
use std::path::Path;
use std::time::Instant;

/// Train one depth (or fine-tune one, or train a network from scratch).
pub fn train(opts: &TrainOptions) -> Result<TrainOutcome> {
    let mut config = opts.config.clone();
    adopt_parent_architecture(&mut config, opts.from.as_deref(), opts.regime)?;
    if config.cnn != opts.config.cnn {
        return train(&TrainOptions { config, ..opts.clone() });
    }
    opts.config.validate()?;
    // A device this build lacks is refused before any folder is made.
    if opts.device == DeviceKind::Cuda && !layerwise_nn::device::CUDA_BUILT {
        return Err(layerwise_nn::device::cuda_missing());
    }
    // Fail on an unwritable output folder now, not after the training.
    check_out_dir(&opts.out)?;
    // Nor after an epoch on something in the training state's place that it cannot replace.
    let state_path = opts.out.join(state::STATE_FILE);
    if let Some(what) = layerwise_core::fsread::not_regular(&state_path) {
        bail!(
            "{} is {what}: the training stage keeps its resumable state in that file after each epoch, and cannot \
             replace {what}; remove it and rerun",
            state_path.display()
        );
    }
    let started = Instant::now();
    let ds = Dataset::open(&opts.data)?;
    match &opts.config.cnn {
        Some(spec) => conv::train_cnn(opts, &ds, spec, started),
        None => mlp::train_mlp(opts, &ds, started),
    }
}

/// Create the output folder, so an unwritable one fails before any training.
fn check_out_dir(out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create output folder {}", out.display()))
}
