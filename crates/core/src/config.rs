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

/// How the learning rate moves over a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// The same rate throughout (Keras' default).
    #[default]
    Constant,
    /// Cosine decay from the rate to zero over the run (after the warm-up).
    Cosine,
}

impl LrSchedule {
    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            LrSchedule::Constant => "constant",
            LrSchedule::Cosine => "cosine",
        }
    }
}

impl std::str::FromStr for LrSchedule {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "constant" => Ok(LrSchedule::Constant),
            "cosine" => Ok(LrSchedule::Cosine),
            _ => bail!("unknown lr_schedule `{s}`: use constant or cosine"),
        }
    }
}

/// On-the-fly data augmentation of training images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Augment {
    /// The images as they are.
    #[default]
    None,
    /// A random horizontal flip and a random 32×32 crop of the image zero-padded by 4
    /// pixels, drawn per image, seeded per epoch and batch.
    FlipCrop,
}

impl Augment {
    /// Its name: `none` or `flip-crop`.
    pub fn name(self) -> &'static str {
        match self {
            Augment::None => "none",
            Augment::FlipCrop => "flip-crop",
        }
    }
}

impl std::str::FromStr for Augment {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Augment::None),
            "flip-crop" => Ok(Augment::FlipCrop),
            _ => bail!("unknown augment `{s}`: use none or flip-crop"),
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
    /// One width per depth (depth d uses `widths[d-1]`); empty: `width` at every depth.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub widths: Vec<usize>,
    /// Dropout rate on the trainable hidden layers' activations while training, in [0, 1).
    #[serde(skip_serializing_if = "is_zero")]
    pub dropout: f64,
    /// Decoupled weight decay (AdamW): each step, weights shrink by lr × weight_decay.
    #[serde(skip_serializing_if = "is_zero")]
    pub weight_decay: f64,
    /// `constant` or `cosine`.
    #[serde(skip_serializing_if = "is_default")]
    pub lr_schedule: LrSchedule,
    /// Epochs of linear warm-up from 0 to `lr` before the schedule.
    #[serde(skip_serializing_if = "is_default")]
    pub warmup_epochs: usize,
    /// `none` or `flip-crop`.
    #[serde(skip_serializing_if = "is_default")]
    pub augment: Augment,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
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
            widths: Vec::new(),
            dropout: 0.0,
            weight_decay: 0.0,
            lr_schedule: LrSchedule::Constant,
            warmup_epochs: 0,
            augment: Augment::None,
        }
    }
}

impl TrainConfig {
    /// Reject values that cannot train, naming the key.
    pub fn validate(&self) -> Result<()> {
        let checks: [(&str, bool, &str); 11] = [
            ("width", self.width >= 1, "must be at least 1"),
            ("widths", self.widths.iter().all(|&w| w >= 1), "every width must be at least 1"),
            ("dropout", (0.0..1.0).contains(&self.dropout), "must be in [0, 1)"),
            ("weight_decay", self.weight_decay.is_finite() && self.weight_decay >= 0.0, "must be 0 or positive"),
            ("warmup_epochs", self.warmup_epochs < self.epochs, "must be fewer than `epochs`"),
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

    /// The width of depth `depth` (1-based): `widths[depth-1]`, else `width`.
    pub fn width_at(&self, depth: usize) -> usize {
        self.widths.get(depth.wrapping_sub(1)).copied().unwrap_or(self.width)
    }

    /// The learning rate of step `step` (0-based) of `total` steps, `per_epoch` a epoch:
    /// linear warm-up over `warmup_epochs`, then the schedule.
    pub fn lr_at(&self, step: usize, total: usize, per_epoch: usize) -> f64 {
        let warmup = self.warmup_epochs * per_epoch;
        if step < warmup {
            return self.lr * (step + 1) as f64 / warmup as f64;
        }
        match self.lr_schedule {
            LrSchedule::Constant => self.lr,
            LrSchedule::Cosine => {
                let span = total.saturating_sub(warmup).max(1) as f64;
                let progress = (step - warmup) as f64 / span;
                self.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        let c = TrainConfig {
            lr: 1.0,
            epochs: 3,
            warmup_epochs: 1,
            lr_schedule: LrSchedule::Cosine,
            ..TrainConfig::default()
        };
        let lrs: Vec<f64> = (0..6).map(|s| c.lr_at(s, 6, 2)).collect();
        assert_eq!(&lrs[..2], [0.5, 1.0], "linear warm-up over the first epoch");
        assert!((lrs[2] - 1.0).abs() < 1e-12 && lrs[3] < 1.0 && lrs[5] < lrs[4] && lrs[5] > 0.0, "{lrs:?}");
        let flat = TrainConfig { lr: 0.1, ..TrainConfig::default() };
        assert_eq!(flat.lr_at(123, 1000, 10), 0.1);
        assert_eq!(TrainConfig { widths: vec![8, 4], ..TrainConfig::default() }.width_at(2), 4);
        assert_eq!(TrainConfig { widths: vec![8, 4], ..TrainConfig::default() }.width_at(3), 256);
    }
}
