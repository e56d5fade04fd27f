//! What a training run is asked to do, and what it produced.

use anyhow::{bail, Result};
use layerwise_core::checkpoint::CheckpointMeta;
use layerwise_core::config::{Regime, TrainConfig};
use layerwise_core::metrics::TrainHistory;
use layerwise_nn::device::DeviceKind;
use std::path::{Path, PathBuf};

use crate::progress::Progress;

/// What to train.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Prepared dataset.
    pub data: PathBuf,
    /// The parent checkpoint: grown by one layer (`grow`, None trains depth 1) or trained
    /// end to end (`finetune`); none for `scratch`.
    pub from: Option<PathBuf>,
    /// Output folder (gets `model.safetensors` and `train.json`).
    pub out: PathBuf,
    /// Settings.
    pub config: TrainConfig,
    /// Device.
    pub device: DeviceKind,
    /// How to show progress.
    pub progress: Progress,
    /// What grows and what trains.
    pub regime: Regime,
    /// Hidden layers of a `scratch` network.
    pub depth: Option<usize>,
    /// Settings given as flags beside a pipeline (`lr=0.002`): recorded in the
    /// checkpoint's metadata, so a model says where it left its pipeline.
    pub overrides: Vec<String>,
}

/// What a training run produced.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// The checkpoint written.
    pub checkpoint: PathBuf,
    /// Its metadata.
    pub meta: CheckpointMeta,
    /// The history written to `train.json`.
    pub history: TrainHistory,
    /// Rows pushed through the frozen layers (train + val size when the cache works).
    pub prefix_rows: usize,
    /// Whether it continued from the state an interrupted run left.
    pub resumed: bool,
}

/// A convolutional parent given without a stage list: fine-tuning takes the architecture
/// its checkpoint records (`config.cnn` set from it); growing needs the list, since the
/// next stage is not in the file, and is refused saying so. Anything else is left as it
/// is (a parent that cannot be read is reported by the loader that reads it).
pub fn adopt_parent_architecture(config: &mut TrainConfig, from: Option<&Path>, regime: Regime) -> Result<()> {
    let Some(p) = from.filter(|_| config.cnn.is_none()) else { return Ok(()) };
    let Some(c) = layerwise_core::checkpoint::read_checkpoint_meta(p).ok().and_then(|m| m.cnn) else {
        return Ok(());
    };
    if regime == Regime::Grow {
        bail!(
            "{} holds a convolutional network of {}: growing it needs the whole stage list, its {} and the next: \
             pass --stages (e.g. --stages {},OUT) or run a pipeline with [model] kind = \"cnn\"",
            p.display(),
            layerwise_core::plural(c.stages.len(), "stage"),
            c.stages.len(),
            c.stages.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(",")
        );
    }
    config.cnn = Some(layerwise_core::cnn::CnnSpec { stages: c.stages, head_convs: c.head.convs });
    Ok(())
}
