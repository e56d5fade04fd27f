//! Training settings shared by the pipeline file, the training stage and the checkpoint
//! metadata (which records the settings a depth was trained with).

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// How pixels become floats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Normalize {
    /// x / 255 (the tutorial's).
    #[default]
    Unit,
    /// (x / 255 - mean[c]) / std[c], statistics of the train split.
    Standardize,
}

impl Normalize {
    /// Lowercase name, as in pipelines, metadata and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Normalize::Unit => "unit",
            Normalize::Standardize => "standardize",
        }
    }
}

impl std::fmt::Display for Normalize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A device a user can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// dfdx's CPU device (gemm, all cores).
    #[default]
    Cpu,
    /// dfdx's CUDA device (built with the `cuda` feature).
    Cuda,
}

impl DeviceKind {
    /// `cpu` or `cuda`.
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
        }
    }
}

impl std::str::FromStr for DeviceKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(DeviceKind::Cpu),
            "cuda" | "gpu" => Ok(DeviceKind::Cuda),
            _ => bail!("unknown device `{s}`: use cpu or cuda"),
        }
    }
}

/// What happens to the output layer when a depth is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum HeadMode {
    /// The tutorial's code: the old output layer is re-attached and stays frozen; only the
    /// new hidden layer trains.
    Frozen,
    /// The tutorial's prose: the old output layer is kept and trains with the new layer.
    Retrain,
    /// A newly initialized output layer trains with the new layer.
    Fresh,
}

impl HeadMode {
    /// Lowercase name, as in pipelines and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            HeadMode::Frozen => "frozen",
            HeadMode::Retrain => "retrain",
            HeadMode::Fresh => "fresh",
        }
    }
}

impl std::str::FromStr for HeadMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "frozen" => Ok(HeadMode::Frozen),
            "retrain" => Ok(HeadMode::Retrain),
            "fresh" => Ok(HeadMode::Fresh),
            _ => bail!("unknown head mode `{s}`: use frozen, retrain or fresh"),
        }
    }
}

/// How a training run treats the network it is given: what grows and what trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash, Default)]
#[serde(rename_all = "lowercase")]
pub enum Regime {
    /// Greedy layer-wise: freeze the parent checkpoint (or start from nothing), append one
    /// hidden layer, train it (and the output layer, by the head mode).
    #[default]
    Grow,
    /// Train every layer of the parent checkpoint and its output layer end to end; append
    /// nothing. Keeps the weights of the epoch with the best validation accuracy.
    Finetune,
    /// A fresh network of N hidden layers, every layer trained end to end from Glorot
    /// initialization: the baseline greedy training is compared against.
    Scratch,
}

impl Regime {
    /// Lowercase name, as on the command line and in metadata.
    pub fn name(self) -> &'static str {
        match self {
            Regime::Grow => "grow",
            Regime::Finetune => "finetune",
            Regime::Scratch => "scratch",
        }
    }
}

impl std::str::FromStr for Regime {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "grow" => Ok(Regime::Grow),
            "finetune" => Ok(Regime::Finetune),
            "scratch" => Ok(Regime::Scratch),
            _ => bail!("unknown regime `{s}`: use grow, finetune or scratch"),
        }
    }
}

/// The settings of one depth's training run (Keras' defaults unless told otherwise).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Width of the hidden layer this depth adds.
    pub width: usize,
    /// Epochs to train this depth.
    pub epochs: usize,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Adam β1.
    pub beta1: f64,
    /// Adam β2.
    pub beta2: f64,
    /// Adam ε, Keras placement: `m̂ / (√v̂ + ε/√(1-β2^t))`, i.e. ε added to √v before bias correction.
    pub epsilon: f64,
    /// Seed for initialization and shuffling (mixed with the depth).
    pub seed: u64,
    /// Output-layer policy from depth 2 on.
    pub head: HeadMode,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            width: 256,
            epochs: 25,
            batch_size: 250,
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-7,
            seed: 0,
            head: HeadMode::Frozen,
        }
    }
}

impl TrainConfig {
    /// Reject values that cannot train, naming the key.
    pub fn validate(&self) -> Result<()> {
        let checks: [(&str, bool, &str); 7] = [
            ("width", self.width >= 1, "must be at least 1"),
            ("epochs", self.epochs >= 1, "must be at least 1"),
            ("batch_size", self.batch_size >= 1, "must be at least 1"),
            ("lr", self.lr.is_finite() && self.lr > 0.0, "must be a positive number"),
            ("beta1", (0.0..1.0).contains(&self.beta1), "must be in [0, 1)"),
            ("beta2", (0.0..1.0).contains(&self.beta2), "must be in [0, 1)"),
            (
                "epsilon",
                self.epsilon > 0.0 && self.epsilon <= 1.0,
                "must be in (0, 1]: a larger ε shrinks every Adam step to nothing (Keras' default is 1e-7)",
            ),
        ];
        for (key, ok, why) in checks {
            if !ok {
                bail!("invalid training setting `{key}`: {why}");
            }
        }
        Ok(())
    }
}
