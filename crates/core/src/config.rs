//! Training settings shared by the pipeline file, the training stage and the checkpoint
//! metadata (which records the settings a depth was trained with).

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// An enum whose variants have one string form each: `name()`, `Display` and `FromStr`
/// all come from one table (and a test holds serde's names to it).
macro_rules! named_enum {
    ($ty:ident, $what:literal, { $($variant:ident => $name:literal),+ $(,)? } $(, also { $($alias:literal => $avariant:ident),* })?) => {
        impl $ty {
            /// Every variant.
            pub const VARIANTS: &'static [$ty] = &[$($ty::$variant),+];

            /// Its one string form: in pipelines, metadata and on the command line.
            pub fn name(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = anyhow::Error;
            fn from_str(s: &str) -> Result<Self> {
                match s {
                    $($name => Ok($ty::$variant),)+
                    $($($alias => Ok($ty::$avariant),)*)?
                    _ => {
                        let names = [$($name),+];
                        let (last, rest) = names.split_last().unwrap_or((&"", &[]));
                        let choices = if rest.is_empty() { last.to_string() } else { format!("{} or {last}", rest.join(", ")) };
                        bail!("unknown {} `{s}`: use {choices}", $what)
                    }
                }
            }
        }
    };
}

named_enum!(Normalize, "normalization", { Unit => "unit", Standardize => "standardize" });
named_enum!(Labels, "labels", { Fine => "fine", Coarse => "coarse" });
named_enum!(DeviceKind, "device", { Cpu => "cpu", Cuda => "cuda" }, also { "gpu" => Cuda });
named_enum!(HeadMode, "head mode", { Frozen => "frozen", Retrain => "retrain", Fresh => "fresh" });
named_enum!(Regime, "regime", { Grow => "grow", Finetune => "finetune", Scratch => "scratch" });
named_enum!(LrSchedule, "lr_schedule", { Constant => "constant", Cosine => "cosine", Step => "step", OneCycle => "one-cycle" });
named_enum!(Optimizer, "optimizer", { Adam => "adam", Sgd => "sgd", Lion => "lion" });
named_enum!(Augment, "augment", { None => "none", FlipCrop => "flip-crop" });
named_enum!(Objective, "objective", { Supervised => "supervised", Autoencoder => "autoencoder" });
named_enum!(Decoder, "decoder", { Tied => "tied", Untied => "untied" });

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

/// Which of CIFAR-100's labels become the classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Labels {
    /// The 100 fine classes.
    #[default]
    Fine,
    /// The 20 coarse superclasses.
    Coarse,
}

/// Parse a size `WxH` (or `W×H`): each side 1 to 4096.
pub fn parse_size(s: &str) -> anyhow::Result<(u32, u32)> {
    let bad = || anyhow::anyhow!("size `{s}`: write it WxH, e.g. 32x32, each side 1 to 4096");
    let (w, h) = s.split_once(['x', 'X', '×']).ok_or_else(bad)?;
    let (w, h): (u32, u32) = (w.trim().parse().map_err(|_| bad())?, h.trim().parse().map_err(|_| bad())?);
    if !(1..=4096).contains(&w) || !(1..=4096).contains(&h) {
        return Err(bad());
    }
    Ok((w, h))
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
    /// initialization: the baseline greedy training is compared against. Keeps the
    /// weights of its best epoch by validation accuracy, as fine-tuning does.
    Scratch,
}

/// How the learning rate moves over a run (each depth's run starts it anew).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LrSchedule {
    /// The same rate throughout (Keras' default).
    #[default]
    Constant,
    /// Cosine decay from the rate to zero over the run (after the warm-up).
    Cosine,
    /// The rate times `lr_step_factor` after every `lr_step_epochs` epochs (Belilovsky et
    /// al.: 0.2 every 15).
    Step,
    /// PyTorch's `OneCycleLR` (cosine): from lr/25 up to lr over the first 30 % of the
    /// steps, then down to lr/25/10⁴.
    OneCycle,
}

/// The optimizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    /// Adam, Keras' placement of ε (the tutorial's).
    #[default]
    Adam,
    /// SGD with momentum (`momentum`, `nesterov`), PyTorch's form: `v = μv + g`,
    /// step `lr·v` (Nesterov: `lr·(g + μv)`).
    Sgd,
    /// Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): the sign
    /// of `β1·m + (1-β1)·g` is the step, `m ← β2·m + (1-β2)·g` after it (`beta1`,
    /// `beta2`; the paper's defaults are 0.9 and 0.99, with a learning rate 3-10× smaller
    /// than Adam's).
    Lion,
}

/// The optimizer and its own settings, derived once from a [`TrainConfig`]
/// ([`TrainConfig::optimizer_spec`]): what the training core builds its optimizer from.
/// A setting another optimizer has cannot be written here.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptimizerSpec {
    /// Adam (Keras' ε placement).
    Adam {
        /// Learning rate (before any schedule).
        lr: f64,
        /// β1.
        beta1: f64,
        /// β2.
        beta2: f64,
        /// ε.
        eps: f64,
    },
    /// SGD with momentum (PyTorch's form).
    Sgd {
        /// Learning rate (before any schedule).
        lr: f64,
        /// Momentum μ (0: plain SGD).
        momentum: f64,
        /// Nesterov's form.
        nesterov: bool,
    },
    /// Lion.
    Lion {
        /// Learning rate (before any schedule).
        lr: f64,
        /// β1: the interpolation whose sign is the step.
        beta1: f64,
        /// β2: the momentum's decay.
        beta2: f64,
    },
}

impl std::fmt::Display for OptimizerSpec {
    /// As reports show it: `Adam: lr 0.001, β1 0.9, β2 0.999, ε 1e-7`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            OptimizerSpec::Adam { lr, beta1, beta2, eps } => {
                write!(f, "Adam: lr {lr}, β1 {beta1}, β2 {beta2}, ε {eps:e}")
            }
            OptimizerSpec::Sgd { lr, momentum, nesterov } => {
                write!(f, "SGD: lr {lr}, momentum {momentum}{}", if nesterov { ", Nesterov" } else { "" })
            }
            OptimizerSpec::Lion { lr, beta1, beta2 } => write!(f, "Lion: lr {lr}, β1 {beta1}, β2 {beta2}"),
        }
    }
}

impl OptimizerSpec {
    /// The learning rate before any schedule.
    pub fn lr(&self) -> f64 {
        match *self {
            OptimizerSpec::Adam { lr, .. } | OptimizerSpec::Sgd { lr, .. } | OptimizerSpec::Lion { lr, .. } => lr,
        }
    }

    /// State buffers per tensor: Adam's two moments; SGD's and Lion's one momentum.
    pub fn buffers(&self) -> usize {
        match self {
            OptimizerSpec::Adam { .. } => 2,
            OptimizerSpec::Sgd { .. } | OptimizerSpec::Lion { .. } => 1,
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

/// What a depth's new layer learns from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// The labels: softmax cross-entropy through the output layer (the tutorial).
    #[default]
    Supervised,
    /// No labels: the new layer is the encoder of a denoising autoencoder of its input
    /// (Bengio et al. 2007; Vincent et al. 2008), then a softmax probe is trained on the
    /// frozen stack with the labels.
    Autoencoder,
}

/// The decoder of an autoencoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Decoder {
    /// The encoder's weight, transposed, with a bias of its own (the Theano SdA tutorial).
    #[default]
    Tied,
    /// A weight of its own, Glorot-initialized.
    Untied,
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
    /// `supervised` or `autoencoder` (the new layer is pretrained without labels for
    /// `epochs` epochs, then a probe output layer trains for `probe_epochs`).
    #[serde(skip_serializing_if = "is_default")]
    pub objective: Objective,
    /// Autoencoder only: the fraction of its inputs masking noise zeroes, in [0, 1) (0: a
    /// plain autoencoder).
    #[serde(skip_serializing_if = "is_default_corruption")]
    pub corruption: f64,
    /// Autoencoder only: `tied` or `untied`.
    #[serde(skip_serializing_if = "is_default")]
    pub decoder: Decoder,
    /// Autoencoder only: epochs of the probe (default: `epochs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_epochs: Option<usize>,
    /// `adam`, `sgd` or `lion`.
    #[serde(skip_serializing_if = "is_default")]
    pub optimizer: Optimizer,
    /// SGD's momentum μ, in [0, 1).
    #[serde(skip_serializing_if = "is_default_momentum")]
    pub momentum: f64,
    /// SGD: Nesterov's momentum.
    #[serde(skip_serializing_if = "is_default")]
    pub nesterov: bool,
    /// Label smoothing ε of the cross-entropy, in [0, 1): the target is `(1-ε)·onehot + ε/K`.
    #[serde(skip_serializing_if = "is_zero")]
    pub label_smoothing: f64,
    /// `step` schedule: epochs between two steps.
    #[serde(skip_serializing_if = "is_default")]
    pub lr_step_epochs: usize,
    /// `step` schedule: the factor of each step.
    #[serde(skip_serializing_if = "is_default_step_factor")]
    pub lr_step_factor: f64,
    /// A convolutional network's stages and head (from the pipeline's `[model]`); none: an
    /// MLP of `width`/`widths`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cnn: Option<crate::cnn::CnnSpec>,
}

/// SGD's default momentum.
pub const DEFAULT_MOMENTUM: f64 = 0.9;
/// The `step` schedule's default factor (Belilovsky et al.'s division by 5).
pub const DEFAULT_STEP_FACTOR: f64 = 0.2;

fn is_default_momentum(v: &f64) -> bool {
    *v == DEFAULT_MOMENTUM
}

fn is_default_step_factor(v: &f64) -> bool {
    *v == DEFAULT_STEP_FACTOR
}

/// The default masking-noise fraction of a denoising autoencoder.
pub const DEFAULT_CORRUPTION: f64 = 0.2;

fn is_default_corruption(v: &f64) -> bool {
    *v == DEFAULT_CORRUPTION
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
            objective: Objective::Supervised,
            corruption: DEFAULT_CORRUPTION,
            decoder: Decoder::Tied,
            probe_epochs: None,
            optimizer: Optimizer::Adam,
            momentum: DEFAULT_MOMENTUM,
            nesterov: false,
            label_smoothing: 0.0,
            lr_step_epochs: 0,
            lr_step_factor: DEFAULT_STEP_FACTOR,
            cnn: None,
        }
    }
}

pub use crate::limits::{check_limit, MAX_BATCH_SIZE, MAX_DEPTH, MAX_EPOCHS, MAX_WIDTH};

impl TrainConfig {
    /// Reject values that cannot train, naming the key; counts first, with their limits.
    pub fn validate(&self) -> Result<()> {
        check_limit("epochs", self.epochs, MAX_EPOCHS)?;
        check_limit("probe_epochs", self.probe_epochs.unwrap_or(0), MAX_EPOCHS)?;
        check_limit("warmup_epochs", self.warmup_epochs, MAX_EPOCHS)?;
        check_limit("batch_size", self.batch_size, MAX_BATCH_SIZE)?;
        check_limit("width", self.width, MAX_WIDTH)?;
        check_limit("widths", self.widths.iter().copied().max().unwrap_or(0), MAX_WIDTH)?;
        check_limit("widths", self.widths.len(), MAX_DEPTH)?;
        check_limit("lr_step_epochs", self.lr_step_epochs, MAX_EPOCHS)?;
        let checks: [(&str, bool, &str); 17] = [
            ("momentum", (0.0..1.0).contains(&self.momentum), "must be in [0, 1)"),
            ("label_smoothing", (0.0..1.0).contains(&self.label_smoothing), "must be in [0, 1)"),
            (
                "lr_step_epochs",
                self.lr_schedule != LrSchedule::Step || self.lr_step_epochs >= 1,
                "must be at least 1 with lr_schedule = \"step\" (the epochs between two steps)",
            ),
            ("lr_step_factor", self.lr_step_factor > 0.0 && self.lr_step_factor <= 1.0, "must be in (0, 1]"),
            ("epochs", self.epochs >= 1, "must be at least 1"),
            ("width", self.width >= 1, "must be at least 1"),
            ("widths", self.widths.iter().all(|&w| w >= 1), "every width must be at least 1"),
            ("dropout", (0.0..1.0).contains(&self.dropout), "must be in [0, 1)"),
            ("weight_decay", self.weight_decay.is_finite() && self.weight_decay >= 0.0, "must be 0 or positive"),
            ("warmup_epochs", self.warmup_epochs < self.epochs, "must be fewer than `epochs`"),
            (
                "corruption",
                (0.0..1.0).contains(&self.corruption),
                "must be in [0, 1): the fraction of an autoencoder's inputs that masking noise zeroes (0: no noise)",
            ),
            ("probe_epochs", self.probe_epochs != Some(0), "must be at least 1"),
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
        if self.nesterov && self.optimizer != Optimizer::Sgd {
            bail!("invalid training setting `nesterov`: it is SGD's; set optimizer = \"sgd\" or drop it");
        }
        if let Some(c) = &self.cnn {
            c.validate()?;
            if self.objective != Objective::Supervised {
                bail!(
                    "invalid training setting `objective`: convolutional stages train with the labels (their auxiliary \
                     heads); autoencoder pretraining is for MLPs: use objective = \"supervised\" with [model] kind = \"cnn\""
                );
            }
            if self.dropout != 0.0 {
                bail!(
                    "invalid training setting `dropout`: convolutional stages have BatchNorm and no dropout; drop it"
                );
            }
        } else if self.label_smoothing != 0.0 {
            bail!("invalid training setting `label_smoothing`: it is implemented for convolutional networks ([model] kind = \"cnn\") only so far");
        }
        if self.objective == Objective::Autoencoder && self.augment != Augment::None {
            bail!(
                "invalid training setting `augment`: the autoencoder objective pretrains on cached features; \
                 use augment = \"none\" with objective = \"autoencoder\""
            );
        }
        Ok(())
    }

    /// The optimizer with its own settings: the one place they are read from this
    /// config.
    pub fn optimizer_spec(&self) -> OptimizerSpec {
        match self.optimizer {
            Optimizer::Adam => {
                OptimizerSpec::Adam { lr: self.lr, beta1: self.beta1, beta2: self.beta2, eps: self.epsilon }
            }
            Optimizer::Sgd => OptimizerSpec::Sgd { lr: self.lr, momentum: self.momentum, nesterov: self.nesterov },
            Optimizer::Lion => OptimizerSpec::Lion { lr: self.lr, beta1: self.beta1, beta2: self.beta2 },
        }
    }

    /// The width of depth `depth` (1-based): `widths[depth-1]`, else `width`.
    pub fn width_at(&self, depth: usize) -> usize {
        self.widths.get(depth.wrapping_sub(1)).copied().unwrap_or(self.width)
    }

    /// Epochs of the autoencoder objective's probe: `probe_epochs`, else `epochs`.
    pub fn probe_epochs(&self) -> usize {
        self.probe_epochs.unwrap_or(self.epochs)
    }

    /// The learning rate of step `step` (0-based) of `total` steps, `per_epoch` a epoch:
    /// linear warm-up over `warmup_epochs`, then the schedule.
    pub fn lr_at(&self, step: usize, total: usize, per_epoch: usize) -> f64 {
        let warmup = self.warmup_epochs * per_epoch;
        if step < warmup {
            return self.lr * (step + 1) as f64 / warmup as f64;
        }
        let span = total.saturating_sub(warmup).max(1) as f64;
        let progress = (step - warmup) as f64 / span;
        let cos = |from: f64, to: f64, t: f64| to + (from - to) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos());
        match self.lr_schedule {
            LrSchedule::Constant => self.lr,
            LrSchedule::Cosine => cos(self.lr, 0.0, progress),
            LrSchedule::Step => {
                let epoch = (step - warmup) / per_epoch.max(1);
                self.lr * self.lr_step_factor.powi((epoch / self.lr_step_epochs.max(1)) as i32)
            }
            LrSchedule::OneCycle => {
                let (start, end) = (self.lr / 25.0, self.lr / 25.0 / 1e4);
                if progress < 0.3 {
                    cos(start, self.lr, progress / 0.3)
                } else {
                    cos(self.lr, end, (progress - 0.3) / 0.7)
                }
            }
        }
    }
}

/// Test helper: serde's name of each variant is its `Display` and `FromStr` form.
#[cfg(test)]
pub(crate) fn check_string_forms<T>(all: &[T])
where
    T: Copy + std::fmt::Display + serde::Serialize + std::str::FromStr + PartialEq + std::fmt::Debug,
    T::Err: std::fmt::Debug,
{
    for v in all {
        assert_eq!(serde_json::to_string(v).unwrap(), format!("\"{v}\""));
        assert_eq!(v.to_string().parse::<T>().unwrap(), *v);
    }
}

#[cfg(test)]
mod tests {
    use crate::config::check_string_forms;
    use crate::config::parse_size;
    use crate::config::Augment;
    use crate::config::Decoder;
    use crate::config::DeviceKind;
    use crate::config::HeadMode;
    use crate::config::Labels;
    use crate::config::LrSchedule;
    use crate::config::Normalize;
    use crate::config::Objective;
    use crate::config::Optimizer;
    use crate::config::Regime;
    use crate::config::TrainConfig;

    /// serde's names (pipelines, metadata) are the one string form of each variant.
    #[test]
    fn each_enum_has_one_string_form() {
        check_string_forms(Normalize::VARIANTS);
        check_string_forms(DeviceKind::VARIANTS);
        check_string_forms(HeadMode::VARIANTS);
        check_string_forms(Regime::VARIANTS);
        check_string_forms(LrSchedule::VARIANTS);
        check_string_forms(Augment::VARIANTS);
        check_string_forms(Objective::VARIANTS);
        check_string_forms(Decoder::VARIANTS);
        check_string_forms(Labels::VARIANTS);
        check_string_forms(Optimizer::VARIANTS);
        check_string_forms(crate::cnn::Downsample::VARIANTS);
        assert_eq!(parse_size("32x24").unwrap(), (32, 24));
        assert!(parse_size("0x3").is_err() && parse_size("32").is_err() && parse_size("5000x2").is_err());
        let err = format!("{}", "thawed".parse::<HeadMode>().unwrap_err());
        assert_eq!(err, "unknown head mode `thawed`: use frozen, retrain or fresh");
    }

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

    #[test]
    fn step_and_one_cycle_schedules() {
        let c = TrainConfig {
            lr: 0.1,
            epochs: 45,
            lr_schedule: LrSchedule::Step,
            lr_step_epochs: 15,
            ..TrainConfig::default()
        };
        // Belilovsky et al.: 0.1, divided by 5 every 15 epochs (10 steps an epoch here).
        let at = |e: usize| c.lr_at(e * 10, 450, 10);
        assert!((at(14) - 0.1).abs() < 1e-12 && (at(15) - 0.02).abs() < 1e-12 && (at(30) - 0.004).abs() < 1e-12);
        let o = TrainConfig { lr: 1.0, lr_schedule: LrSchedule::OneCycle, ..TrainConfig::default() };
        let lrs: Vec<f64> = (0..100).map(|s| o.lr_at(s, 100, 10)).collect();
        assert!((lrs[0] - 0.04).abs() < 1e-12 && (lrs[30] - 1.0).abs() < 1e-12 && lrs[99] < 1e-3, "{lrs:?}");
        assert!(lrs[..30].windows(2).all(|w| w[1] > w[0]) && lrs[30..].windows(2).all(|w| w[1] < w[0]));
    }
}
