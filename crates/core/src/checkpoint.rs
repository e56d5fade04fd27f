//! Checkpoints: an MLP's weights in PyTorch `nn.Linear` layout, with metadata that lets
//! every stage refuse a mismatched partner.
//!
//! Tensors: `hidden.{i}.weight` `[out, in]`, `hidden.{i}.bias` `[out]`, `head.weight`
//! `[classes, width]`, `head.bias` `[classes]`, all f32. Metadata: [`CheckpointMeta`].
//! The file loads in Python with `safetensors.torch.load_file`.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::config::TrainConfig;
use crate::dataset::DatasetMeta;
use crate::st::{safetensors_bytes, MappedSafetensors, OutTensor};

/// `layerwise.format` of a checkpoint.
pub const CHECKPOINT_FORMAT: &str = "layerwise-checkpoint";
/// Version of [`CheckpointMeta`].
pub const CHECKPOINT_VERSION: u32 = 1;

/// A dense layer, `y = x Wᵀ + b`, weight stored row-major `[out, in]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dense {
    /// Inputs.
    pub inputs: usize,
    /// Outputs.
    pub outputs: usize,
    /// `[outputs * inputs]`, row-major `[out, in]`.
    pub weight: Vec<f32>,
    /// `[outputs]`.
    pub bias: Vec<f32>,
}

impl Dense {
    /// Parameters (weights and biases).
    pub fn num_params(&self) -> usize {
        self.weight.len() + self.bias.len()
    }
}

/// A multi-layer perceptron: ReLU hidden layers, then a linear head (softmax in the loss).
#[derive(Debug, Clone, PartialEq)]
pub struct Mlp {
    /// Hidden layers, input side first.
    pub hidden: Vec<Dense>,
    /// Output layer.
    pub head: Dense,
}

impl Mlp {
    /// Number of hidden layers.
    pub fn depth(&self) -> usize {
        self.hidden.len()
    }
    /// Values per input.
    pub fn input_size(&self) -> usize {
        self.hidden.first().map_or(self.head.inputs, |l| l.inputs)
    }
    /// Hidden widths.
    pub fn widths(&self) -> Vec<usize> {
        self.hidden.iter().map(|l| l.outputs).collect()
    }
    /// Total parameters.
    pub fn num_params(&self) -> usize {
        self.hidden.iter().map(Dense::num_params).sum::<usize>() + self.head.num_params()
    }
}

/// Everything a checkpoint says about itself (the `meta` of the `layerwise` metadata key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointMeta {
    /// Always [`CHECKPOINT_VERSION`] when written by this version.
    pub version: u32,
    /// Number of hidden layers.
    pub depth: usize,
    /// Values per input.
    pub input_size: usize,
    /// Hidden widths, input side first.
    pub widths: Vec<usize>,
    /// Hidden activation (`relu`).
    pub activation: String,
    /// Class names of the dataset it was trained on.
    pub classes: Vec<String>,
    /// Layer names (`hidden.0`, ..., `head`) that were frozen while this depth trained.
    pub frozen: Vec<String>,
    /// Layer names that were trained at this depth.
    pub trained: Vec<String>,
    /// Trainable parameters at this depth.
    pub trainable_params: usize,
    /// Fingerprint of the dataset it was trained on.
    pub dataset_fingerprint: String,
    /// Name of that dataset.
    pub dataset_name: String,
    /// SHA-256 of the checkpoint this depth was grown from (None at depth 1).
    pub parent_sha256: Option<String>,
    /// The settings this depth was trained with.
    pub config: TrainConfig,
    /// The device it was trained on (`cpu`, `cuda`).
    pub device: String,
    /// The regime that produced it (checkpoints written before regimes existed were grown).
    #[serde(default)]
    pub regime: crate::config::Regime,
    /// How the model wants its input ([`crate::input`]); absent in checkpoints written
    /// before it was recorded (the dataset they were trained on says it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<crate::input::InputContract>,
}

impl CheckpointMeta {
    /// The input contract of the checkpoint at `ckpt` (with this metadata): the one it
    /// records, or for a checkpoint written before checkpoints recorded it, that of `data`,
    /// the dataset it was trained on (checked to be that dataset).
    pub fn input_contract(&self, ckpt: &Path, data: Option<&Path>) -> Result<crate::input::InputContract> {
        match (&self.input, data) {
            (Some(c), _) => Ok(c.clone()),
            (None, Some(d)) => {
                let ds = crate::dataset::Dataset::open(d)?;
                self.check_dataset(ckpt, &ds.meta, d)?;
                Ok(crate::input::InputContract::of_dataset(&ds.meta))
            }
            (None, None) => bail!(
                "{} does not record how it wants its input (it was written before checkpoints did): pass --data \
                 with the dataset it was trained on, which says it",
                ckpt.display()
            ),
        }
    }

    /// Refuse a dataset this checkpoint was not trained on.
    pub fn check_dataset(&self, ckpt: &Path, data: &DatasetMeta, data_path: &Path) -> Result<()> {
        if self.input_size != data.input_size() || self.classes.len() != data.num_classes() {
            bail!(
                "checkpoint {} (depth {}) takes {} inputs and {} classes, but dataset {} has {} inputs and {} classes: \
                 use the dataset the checkpoint was trained on",
                ckpt.display(), self.depth, self.input_size, self.classes.len(),
                data_path.display(), data.input_size(), data.num_classes()
            );
        }
        if self.classes != data.classes {
            bail!(
                "checkpoint {} (depth {}) names its classes {:?}, but dataset {} names them {:?}: \
                 use the dataset the checkpoint was trained on",
                ckpt.display(),
                self.depth,
                self.classes,
                data_path.display(),
                data.classes
            );
        }
        // Shape and classes agree: a contract then names what else differs (the scaling).
        if let Some(c) = &self.input {
            c.check_dataset(data, &format!("checkpoint {} (depth {})", ckpt.display(), self.depth))
                .with_context(|| format!("dataset {}", data_path.display()))?;
        }
        if self.dataset_fingerprint != data.fingerprint {
            bail!(
                "checkpoint {} (depth {}) was trained on dataset fingerprint {}…, but {} has fingerprint {}…: \
                 use the dataset the checkpoint was trained on (same source, normalization and split)",
                ckpt.display(),
                self.depth,
                short(&self.dataset_fingerprint),
                data_path.display(),
                short(&data.fingerprint)
            );
        }
        Ok(())
    }
}

fn short(h: &str) -> &str {
    &h[..h.len().min(12)]
}

/// Layer name of hidden layer `i`.
pub fn hidden_name(i: usize) -> String {
    format!("hidden.{i}")
}

/// Save a checkpoint atomically; the metadata's shape fields must agree with the model.
pub fn save_checkpoint(path: &Path, model: &Mlp, meta: &CheckpointMeta) -> Result<()> {
    crate::atomic::write_bytes_atomic(path, &checkpoint_bytes(model, meta, &[])?)
}

/// Tensors a checkpoint may hold besides the network's: an autoencoder layer's decoder
/// (`decoder.{i}.weight`, `decoder.{i}.bias`), as `(name, shape, values)`. Loading ignores them.
pub type ExtraTensors<'a> = [(String, Vec<usize>, &'a [f32])];

/// The prefix of the extra tensors a checkpoint may hold ([`ExtraTensors`]).
pub const DECODER_PREFIX: &str = "decoder.";

/// A checkpoint file's bytes (so its SHA-256 is known before it is written), with `extra`
/// tensors (each named `decoder.*`).
pub fn checkpoint_bytes(model: &Mlp, meta: &CheckpointMeta, extra: &ExtraTensors<'_>) -> Result<Vec<u8>> {
    if meta.depth != model.depth() || meta.widths != model.widths() || meta.input_size != model.input_size() {
        bail!("internal: checkpoint metadata does not describe the model being saved");
    }
    let mut tensors = Vec::new();
    for (i, l) in model.hidden.iter().enumerate() {
        tensors.push(OutTensor::F32(format!("hidden.{i}.weight"), vec![l.outputs, l.inputs], &l.weight));
        tensors.push(OutTensor::F32(format!("hidden.{i}.bias"), vec![l.outputs], &l.bias));
    }
    let h = &model.head;
    tensors.push(OutTensor::F32("head.weight".into(), vec![h.outputs, h.inputs], &h.weight));
    tensors.push(OutTensor::F32("head.bias".into(), vec![h.outputs], &h.bias));
    for (name, shape, values) in extra {
        if !name.starts_with(DECODER_PREFIX) {
            bail!("internal: extra checkpoint tensor {name} is not a decoder's");
        }
        tensors.push(OutTensor::F32(name.clone(), shape.clone(), values));
    }
    safetensors_bytes(CHECKPOINT_FORMAT, meta, tensors)
}

/// Read only a checkpoint's metadata (cheap: the header).
pub fn read_checkpoint_meta(path: &Path) -> Result<CheckpointMeta> {
    let file = MappedSafetensors::open(path, CHECKPOINT_FORMAT, "checkpoint")?;
    parse_meta(&file)
}

fn parse_meta(file: &MappedSafetensors) -> Result<CheckpointMeta> {
    let meta: CheckpointMeta = file.meta()?;
    if meta.version != CHECKPOINT_VERSION {
        bail!(
            "{}: checkpoint format version {} is not supported (this layerwise reads version {CHECKPOINT_VERSION})",
            file.path().display(),
            meta.version
        );
    }
    if meta.activation != "relu" {
        bail!(
            "{}: its hidden layers use activation `{}`, but layerwise builds ReLU networks only: \
             this checkpoint was not written by layerwise, or was edited",
            file.path().display(),
            meta.activation
        );
    }
    if meta.widths.len() != meta.depth || meta.classes.is_empty() || meta.input_size == 0 {
        bail!(
            "{}: checkpoint metadata is inconsistent (depth {}, {} widths)",
            file.path().display(),
            meta.depth,
            meta.widths.len()
        );
    }
    if let Some(c) = &meta.input {
        c.validate().with_context(|| format!("{}", file.path().display()))?;
        if c.input_size() != meta.input_size || c.classes != meta.classes {
            bail!(
                "{}: its input contract (shape {:?}, classes {:?}) does not fit the network it holds ({} inputs, \
                 classes {:?}): the checkpoint was edited or damaged",
                file.path().display(),
                c.shape,
                c.classes,
                meta.input_size,
                meta.classes
            );
        }
    }
    Ok(meta)
}

/// Load a checkpoint: every tensor's name, dtype and shape is checked against the metadata.
pub fn load_checkpoint(path: &Path) -> Result<(Mlp, CheckpointMeta)> {
    let file = MappedSafetensors::open(path, CHECKPOINT_FORMAT, "checkpoint")?;
    let meta = parse_meta(&file)?;
    let expected = 2 * meta.depth + 2;
    // An autoencoder layer's decoder may be kept beside the network: not part of it.
    let names: Vec<_> = file.names().into_iter().filter(|n| !n.starts_with(DECODER_PREFIX)).collect();
    if names.len() != expected {
        let mut names = names;
        names.sort();
        bail!(
            "{}: a depth-{} checkpoint has {expected} tensors, found {} ({})",
            path.display(),
            meta.depth,
            names.len(),
            names.join(", ")
        );
    }
    let dense = |prefix: &str, inputs: usize, outputs: usize| -> Result<Dense> {
        Ok(Dense {
            inputs,
            outputs,
            weight: file.f32s(&format!("{prefix}.weight"), &[outputs, inputs])?.into_owned(),
            bias: file.f32s(&format!("{prefix}.bias"), &[outputs])?.into_owned(),
        })
    };
    let mut hidden = Vec::with_capacity(meta.depth);
    let mut inputs = meta.input_size;
    for (i, &w) in meta.widths.iter().enumerate() {
        hidden.push(dense(&hidden_name(i), inputs, w)?);
        inputs = w;
    }
    let head = dense("head", inputs, meta.classes.len())?;
    let model = Mlp { hidden, head };
    if model.hidden.iter().chain([&model.head]).any(|l| l.weight.iter().chain(&l.bias).any(|v| !v.is_finite())) {
        bail!("{}: checkpoint holds NaN or infinite weights", path.display());
    }
    Ok((model, meta))
}
