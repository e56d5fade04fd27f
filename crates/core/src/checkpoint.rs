//! Checkpoints: a network's weights in PyTorch's names and layouts, with metadata that lets
//! every stage refuse a mismatched partner. Metadata: [`CheckpointMeta`]. The file loads in
//! Python with `safetensors.torch.load_file`.
//!
//! - Version 1, an MLP: `hidden.{i}.weight` `[out, in]`, `hidden.{i}.bias` `[out]`,
//!   `head.weight` `[classes, width]`, `head.bias` `[classes]`, all f32.
//! - Version 2, a convolutional network ([`crate::cnn`]): `stages.{i}.conv.weight`
//!   `[out, in, 3, 3]`, `stages.{i}.bn.{weight,bias,running_mean,running_var}`
//!   `[out]`; the head's blocks `head.convs.{j}.conv.weight` and `head.convs.{j}.bn.*`;
//!   `head.linear.weight` `[classes, 4·channels]` and `head.linear.bias`. Besides the
//!   `layerwise` key, metadata keys `layerwise.stages` (`[{"downsample": "none" |
//!   "maxpool" | "psi", "out": C}, ...]`), `layerwise.head` (`{"convs": k-1, "pool": 2}`)
//!   and `layerwise.batchnorm` (`{"eps": 1e-5, "momentum": 0.1}`) say the architecture
//!   without parsing the rest; they must agree with it.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::cnn::{BatchNorm, Cnn, CnnHead, ConvBlock, ConvStage, StageSpec, BN_EPS, BN_MOMENTUM, HEAD_POOL};
use crate::config::TrainConfig;
use crate::dataset::DatasetMeta;
use crate::names::TensorPath;
use crate::st::{safetensors_bytes, safetensors_bytes_with_keys, MappedSafetensors, OutTensor};

/// `layerwise.format` of a checkpoint.
pub const CHECKPOINT_FORMAT: &str = "layerwise-checkpoint";
/// Version of [`CheckpointMeta`] for an MLP.
pub const CHECKPOINT_VERSION: u32 = 1;
/// Version of [`CheckpointMeta`] for a convolutional network (it has [`CheckpointMeta::cnn`]).
pub const CNN_CHECKPOINT_VERSION: u32 = 2;

pub use crate::dense::Dense;

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
    /// A convolutional network's architecture (version 2); none for an MLP. Its `depth`
    /// counts stages, `widths` their channels, `input_size` the image's values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnn: Option<CnnMeta>,
    /// Settings given on the training stage's command line beside its pipeline, which
    /// overrode the pipeline's (`lr=0.002`); empty when the pipeline alone decided.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<String>,
    /// How the greedy loop trained it, where not one depth after another: `decoupled sync`
    /// or `decoupled async` (every stage at once, `[greedy] schedule = "decoupled"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
}

/// What a version-2 checkpoint says of its convolutional network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CnnMeta {
    /// The input image `[c, h, w]`.
    pub image: [usize; 3],
    /// The stages (also the `layerwise.stages` key).
    pub stages: Vec<StageSpec>,
    /// The head (also the `layerwise.head` key).
    pub head: HeadMeta,
    /// BatchNorm's settings (also the `layerwise.batchnorm` key).
    pub batchnorm: BatchNormMeta,
}

/// The head of a version-2 checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadMeta {
    /// Conv blocks before the pooling.
    pub convs: usize,
    /// The side of the adaptive average pooling.
    pub pool: usize,
}

/// BatchNorm's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchNormMeta {
    /// ε.
    pub eps: f32,
    /// Momentum of the running statistics (PyTorch's convention).
    pub momentum: f32,
}

impl CnnMeta {
    /// The metadata of `model`.
    pub fn of(model: &Cnn) -> Self {
        let spec = model.spec();
        Self {
            image: model.input,
            stages: spec.stages,
            head: HeadMeta { convs: spec.head_convs, pool: HEAD_POOL },
            batchnorm: BatchNormMeta { eps: BN_EPS, momentum: BN_MOMENTUM },
        }
    }

    fn keys(&self) -> Result<Vec<(String, String)>> {
        Ok(vec![
            (STAGES_KEY.into(), serde_json::to_string(&self.stages)?),
            (HEAD_KEY.into(), serde_json::to_string(&self.head)?),
            (BATCHNORM_KEY.into(), serde_json::to_string(&self.batchnorm)?),
        ])
    }
}

/// The metadata keys of a version-2 checkpoint besides `layerwise`.
pub const STAGES_KEY: &str = "layerwise.stages";
/// See [`STAGES_KEY`].
pub const HEAD_KEY: &str = "layerwise.head";
/// See [`STAGES_KEY`].
pub const BATCHNORM_KEY: &str = "layerwise.batchnorm";

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
        // Another fingerprint: say first that the file holds other data (re-prepared from
        // another source, say), then what the contract sees differ, if anything.
        if self.dataset_fingerprint != data.fingerprint {
            let what = if self.dataset_name != data.name {
                format!(
                    "now holds another dataset: `{}` ({}), fingerprint {}…, not the `{}` (fingerprint {}…) it was \
                     trained on",
                    data.name,
                    data.source_kind,
                    short(&data.fingerprint),
                    self.dataset_name,
                    short(&self.dataset_fingerprint)
                )
            } else {
                format!(
                    "has fingerprint {}…, but the checkpoint was trained on fingerprint {}… (the same dataset \
                     name, `{}`, prepared from other files or with another normalization or split)",
                    short(&data.fingerprint),
                    short(&self.dataset_fingerprint),
                    data.name
                )
            };
            let detail = self
                .input
                .as_ref()
                .and_then(|c| c.check_dataset(data, "the model").err())
                .map(|e| format!(" ({e})"))
                .unwrap_or_default();
            bail!(
                "checkpoint {} (depth {}): dataset {} {what}{detail}. The dataset file was replaced since this \
                 checkpoint was trained: prepare each source into its own file (`layerwise-prepare --out`), or \
                 use the dataset the checkpoint was trained on",
                ckpt.display(),
                self.depth,
                data_path.display()
            );
        }
        if let Some(c) = &self.input {
            c.check_dataset(data, &format!("checkpoint {} (depth {})", ckpt.display(), self.depth))
                .with_context(|| format!("dataset {}", data_path.display()))?;
        }
        Ok(())
    }
}

fn short(h: &str) -> &str {
    &h[..h.len().min(12)]
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
        let p = TensorPath::hidden(i);
        tensors.push(OutTensor::F32(p.weight(), vec![l.outputs, l.inputs], &l.weight));
        tensors.push(OutTensor::F32(p.bias(), vec![l.outputs], &l.bias));
    }
    let h = &model.head;
    tensors.push(OutTensor::F32(TensorPath::head().weight(), vec![h.outputs, h.inputs], &h.weight));
    tensors.push(OutTensor::F32(TensorPath::head().bias(), vec![h.outputs], &h.bias));
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
    let expected = if meta.cnn.is_some() { CNN_CHECKPOINT_VERSION } else { CHECKPOINT_VERSION };
    if meta.version != expected {
        bail!(
            "{}: checkpoint format version {} is not supported here (this layerwise reads version \
             {CHECKPOINT_VERSION}, an MLP, and {CNN_CHECKPOINT_VERSION}, a convolutional network with its `cnn` metadata)",
            file.path().display(),
            meta.version
        );
    }
    if let Some(c) = &meta.cnn {
        check_cnn_meta(file, &meta, c)?;
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

/// The architecture keys of a version-2 checkpoint agree with its metadata, and the
/// architecture can be built.
fn check_cnn_meta(file: &MappedSafetensors, meta: &CheckpointMeta, c: &CnnMeta) -> Result<()> {
    let path = file.path().display();
    for (key, text) in c.keys()? {
        let stored = file.key(&key).ok_or_else(|| {
            anyhow::anyhow!("{path}: a convolutional checkpoint carries the metadata key `{key}`, and this one has none: it was edited or not written by layerwise")
        })?;
        let (a, b): (serde_json::Value, serde_json::Value) = (
            serde_json::from_str(stored).with_context(|| format!("{path}: metadata key `{key}` is not JSON"))?,
            serde_json::from_str(&text)?,
        );
        if a != b {
            bail!("{path}: metadata key `{key}` says {stored}, but the checkpoint's metadata says {text}: it was edited or damaged");
        }
    }
    let spec = crate::cnn::CnnSpec { stages: c.stages.clone(), head_convs: c.head.convs };
    spec.validate().with_context(|| format!("{path}"))?;
    let image_values = crate::limits::image_values(&format!("{path}: `meta.cnn.image`"), c.image)?;
    spec.conv_inputs(c.image).with_context(|| format!("{path}"))?;
    if c.head.pool != HEAD_POOL {
        bail!("{path}: head pooling {} is not what layerwise builds (pool {HEAD_POOL})", c.head.pool);
    }
    // Every kernel (host, device, ONNX export) computes BatchNorm with these two numbers:
    // a checkpoint saying others would be used with the wrong arithmetic, so it is refused.
    if c.batchnorm.eps != BN_EPS || c.batchnorm.momentum != BN_MOMENTUM {
        bail!(
            "{path}: metadata key `{BATCHNORM_KEY}` says ε = {} and momentum {}, but layerwise computes BatchNorm \
             with ε = {BN_EPS} and momentum {BN_MOMENTUM} (PyTorch's defaults) and would silently use those: \
             refused. Convert the network with ε = {BN_EPS} (fold the difference into the running variance) and \
             write {{\"eps\": {BN_EPS}, \"momentum\": {BN_MOMENTUM}}}",
            c.batchnorm.eps,
            c.batchnorm.momentum
        );
    }
    let widths: Vec<usize> = c.stages.iter().map(|s| s.out).collect();
    if meta.depth != c.stages.len() || meta.widths != widths || meta.input_size != image_values {
        bail!(
            "{path}: checkpoint metadata is inconsistent (depth {}, widths {:?}, but {} stages of {widths:?})",
            meta.depth,
            meta.widths,
            c.stages.len()
        );
    }
    Ok(())
}

/// A checkpoint's network: an MLP (version 1) or a convolutional network (version 2).
#[derive(Debug, Clone, PartialEq)]
pub enum Network {
    /// Dense layers.
    Mlp(Mlp),
    /// Conv stages and a head.
    Cnn(Cnn),
}

/// Load a checkpoint of either version, every tensor checked against its metadata.
pub fn load_network(path: &Path) -> Result<(Network, CheckpointMeta)> {
    let file = MappedSafetensors::open(path, CHECKPOINT_FORMAT, "checkpoint")?;
    let meta = parse_meta(&file)?;
    let network = match &meta.cnn {
        Some(c) => Network::Cnn(cnn_of(&file, &meta, c)?),
        None => Network::Mlp(mlp_of(&file, &meta)?),
    };
    Ok((network, meta))
}

fn block_tensors<'a>(prefix: &TensorPath, b: &'a ConvBlock) -> Vec<OutTensor<'a>> {
    let mut t = vec![OutTensor::F32(prefix.conv().weight(), vec![b.outputs, b.inputs, 3, 3], &b.weight)];
    for (suffix, v) in b.bn.tensors() {
        t.push(OutTensor::F32(prefix.bn().tensor(suffix), vec![b.outputs], v));
    }
    t
}

/// A version-2 checkpoint's bytes.
pub fn cnn_checkpoint_bytes(model: &Cnn, meta: &CheckpointMeta) -> Result<Vec<u8>> {
    let c = meta
        .cnn
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("internal: a convolutional checkpoint without `cnn` metadata"))?;
    if *c != CnnMeta::of(model)
        || meta.depth != model.depth()
        || meta.widths != model.widths()
        || meta.version != CNN_CHECKPOINT_VERSION
    {
        bail!("internal: checkpoint metadata does not describe the model being saved");
    }
    let mut tensors = Vec::new();
    for (i, s) in model.stages.iter().enumerate() {
        tensors.extend(block_tensors(&TensorPath::stage(i), &s.conv));
    }
    for (j, b) in model.head.convs.iter().enumerate() {
        tensors.extend(block_tensors(&TensorPath::head_conv(j), b));
    }
    let l = &model.head.linear;
    let p = TensorPath::head_linear();
    tensors.push(OutTensor::F32(p.weight(), vec![l.outputs, l.inputs], &l.weight));
    tensors.push(OutTensor::F32(p.bias(), vec![l.outputs], &l.bias));
    safetensors_bytes_with_keys(CHECKPOINT_FORMAT, meta, &c.keys()?, tensors)
}

/// Load a version-2 checkpoint: every tensor's name, dtype and shape is checked against
/// the metadata, every value finite, every running variance positive.
pub fn load_cnn(path: &Path) -> Result<(Cnn, CheckpointMeta)> {
    let file = MappedSafetensors::open(path, CHECKPOINT_FORMAT, "checkpoint")?;
    let meta = parse_meta(&file)?;
    let Some(c) = &meta.cnn else {
        bail!("{} holds an MLP (checkpoint version 1), not a convolutional network", path.display());
    };
    let cnn = cnn_of(&file, &meta, c)?;
    Ok((cnn, meta))
}

/// The convolutional network of a version-2 checkpoint whose metadata `meta` (with `c`)
/// was parsed and checked.
fn cnn_of(file: &MappedSafetensors, meta: &CheckpointMeta, c: &CnnMeta) -> Result<Cnn> {
    let path = file.path();
    let shapes = crate::cnn::CnnSpec { stages: c.stages.clone(), head_convs: c.head.convs }.conv_inputs(c.image)?;
    let block = |prefix: &TensorPath, inputs: usize, outputs: usize| -> Result<ConvBlock> {
        let v =
            |suffix: &str| -> Result<Vec<f32>> { Ok(file.f32s(&prefix.bn().tensor(suffix), &[outputs])?.into_owned()) };
        let b = ConvBlock {
            inputs,
            outputs,
            weight: file.f32s(&prefix.conv().weight(), &[outputs, inputs, 3, 3])?.into_owned(),
            bn: BatchNorm {
                weight: v("weight")?,
                bias: v("bias")?,
                running_mean: v("running_mean")?,
                running_var: v("running_var")?,
            },
        };
        if b.weight.iter().chain(b.bn.tensors().iter().flat_map(|(_, t)| t.iter())).any(|x| !x.is_finite())
            || b.bn.running_var.iter().any(|&x| x < 0.0)
        {
            bail!("{}: `{prefix}` holds NaN or infinite weights, or a negative running variance", path.display());
        }
        Ok(b)
    };
    let mut stages = Vec::with_capacity(c.stages.len());
    for (i, (s, shape)) in c.stages.iter().zip(&shapes).enumerate() {
        stages.push(ConvStage { downsample: s.downsample, conv: block(&TensorPath::stage(i), shape[0], s.out)? });
    }
    let channels = c.stages.last().map_or(c.image[0], |s| s.out);
    let mut convs = Vec::with_capacity(c.head.convs);
    for j in 0..c.head.convs {
        convs.push(block(&TensorPath::head_conv(j), channels, channels)?);
    }
    let (inputs, classes) = (channels * HEAD_POOL * HEAD_POOL, meta.classes.len());
    let linear = Dense {
        inputs,
        outputs: classes,
        weight: file.f32s(&TensorPath::head_linear().weight(), &[classes, inputs])?.into_owned(),
        bias: file.f32s(&TensorPath::head_linear().bias(), &[classes])?.into_owned(),
    };
    if linear.weight.iter().chain(&linear.bias).any(|v| !v.is_finite()) {
        bail!("{}: checkpoint holds NaN or infinite weights", path.display());
    }
    let expected = 5 * (c.stages.len() + c.head.convs) + 2;
    let names = file.names();
    if names.len() != expected {
        bail!(
            "{}: a checkpoint of {} stages and {} head convs has {expected} tensors, found {}",
            path.display(),
            c.stages.len(),
            c.head.convs,
            names.len()
        );
    }
    Ok(Cnn { input: c.image, stages, head: CnnHead { convs, linear } })
}

/// Load an MLP checkpoint: every tensor's name, dtype and shape is checked against the metadata.
pub fn load_checkpoint(path: &Path) -> Result<(Mlp, CheckpointMeta)> {
    let file = MappedSafetensors::open(path, CHECKPOINT_FORMAT, "checkpoint")?;
    let meta = parse_meta(&file)?;
    if meta.cnn.is_some() {
        bail!(
            "{} holds a convolutional network (checkpoint version 2), and this step takes MLPs only so far: \
             use layerwise-evaluate, layerwise-train and the report with it",
            path.display()
        );
    }
    let mlp = mlp_of(&file, &meta)?;
    Ok((mlp, meta))
}

/// The MLP of a version-1 checkpoint whose metadata `meta` was parsed and checked.
fn mlp_of(file: &MappedSafetensors, meta: &CheckpointMeta) -> Result<Mlp> {
    let path = file.path();
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
    let dense = |prefix: TensorPath, inputs: usize, outputs: usize| -> Result<Dense> {
        Ok(Dense {
            inputs,
            outputs,
            weight: file.f32s(&prefix.weight(), &[outputs, inputs])?.into_owned(),
            bias: file.f32s(&prefix.bias(), &[outputs])?.into_owned(),
        })
    };
    let mut hidden = Vec::with_capacity(meta.depth);
    let mut inputs = meta.input_size;
    for (i, &w) in meta.widths.iter().enumerate() {
        hidden.push(dense(TensorPath::hidden(i), inputs, w)?);
        inputs = w;
    }
    let head = dense(TensorPath::head(), inputs, meta.classes.len())?;
    let model = Mlp { hidden, head };
    if model.hidden.iter().chain([&model.head]).any(|l| l.weight.iter().chain(&l.bias).any(|v| !v.is_finite())) {
        bail!("{}: checkpoint holds NaN or infinite weights", path.display());
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use crate::checkpoint::cnn_checkpoint_bytes;
    use crate::checkpoint::load_network;
    use crate::checkpoint::CheckpointMeta;
    use crate::checkpoint::CnnMeta;
    use crate::checkpoint::Network;
    use crate::checkpoint::CNN_CHECKPOINT_VERSION;
    use crate::cnn::BatchNorm;
    use crate::cnn::Cnn;
    use crate::cnn::CnnHead;
    use crate::cnn::ConvBlock;
    use crate::cnn::ConvStage;
    use crate::cnn::Downsample;
    use crate::dense::Dense;
    use anyhow::Result;

    /// A one-stage network on 3 × 8 × 8 images, saved, its header edited in place.
    fn crafted(edit: impl Fn(&str) -> String) -> Result<(Network, CheckpointMeta)> {
        let block = ConvBlock { inputs: 3, outputs: 4, weight: vec![0.01; 4 * 3 * 9], bn: BatchNorm::new(4) };
        let linear = Dense { inputs: 16, outputs: 2, weight: vec![0.1; 32], bias: vec![0.0; 2] };
        let model = Cnn {
            input: [3, 8, 8],
            stages: vec![ConvStage { downsample: Downsample::None, conv: block }],
            head: CnnHead { convs: vec![], linear },
        };
        let meta = CheckpointMeta {
            overrides: Vec::new(),
            schedule: None,
            version: CNN_CHECKPOINT_VERSION,
            depth: 1,
            input_size: 192,
            widths: vec![4],
            activation: "relu".into(),
            classes: vec!["a".into(), "b".into()],
            frozen: vec![],
            trained: vec![],
            trainable_params: 0,
            dataset_fingerprint: "f".into(),
            dataset_name: "d".into(),
            parent_sha256: None,
            config: Default::default(),
            device: "cpu".into(),
            regime: Default::default(),
            input: None,
            cnn: Some(CnnMeta::of(&model)),
        };
        let bytes = cnn_checkpoint_bytes(&model, &meta)?;
        let n = u64::from_le_bytes(bytes[..8].try_into()?) as usize;
        let header = std::str::from_utf8(&bytes[8..8 + n])?;
        let mut edited = edit(header);
        assert!(edited == header || edited.trim_end() != header.trim_end(), "an edit must change something");
        // Tensor offsets count from the header's end: a header of another length is fine.
        while !edited.len().is_multiple_of(8) {
            edited.push(' ');
        }
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("model.safetensors");
        let prefix = (edited.len() as u64).to_le_bytes();
        std::fs::write(&path, [&prefix[..], edited.as_bytes(), &bytes[8 + n..]].concat())?;
        load_network(&path)
    }

    /// Every number after a `key` (quoted plainly or inside an escaped JSON string) set to `value`.
    fn set_number(header: &str, key: &str, value: &str) -> String {
        let mut out = String::new();
        let mut rest = header;
        while let Some(at) = [format!("\"{key}\":"), format!("\\\"{key}\\\":")]
            .iter()
            .filter_map(|pat| rest.find(pat.as_str()).map(|i| i + pat.len()))
            .min()
        {
            out.push_str(&rest[..at]);
            out.push_str(value);
            rest = &rest[at..];
            rest = &rest[rest.find([',', '}']).unwrap_or(rest.len())..];
        }
        out.push_str(rest);
        out
    }

    #[test]
    fn a_checkpoint_whose_batchnorm_the_kernels_would_not_compute_is_refused() {
        assert!(crafted(|h| h.to_string()).is_ok_and(|(n, _)| matches!(n, Network::Cnn(_))));
        // ε = 0.5 in both places it is written: evaluated with 1e-5 before, silently.
        let e = crafted(|h| set_number(h, "eps", "0.5")).map(|_| ()).unwrap_err();
        assert!(format!("{e:#}").contains("says ε = 0.5 and momentum 0.1, but layerwise computes"), "{e:#}");
        let e = crafted(|h| set_number(h, "momentum", "-5.0")).map(|_| ()).unwrap_err();
        assert!(format!("{e:#}").contains("momentum -5"), "{e:#}");
    }

    #[test]
    fn a_checkpoint_image_whose_size_wraps_is_refused() {
        // [3, 2^63 + 8, 8]: 3 · (2^63 + 8) · 8 wraps to 192 (the real input size), so the
        // unchecked product agreed with `input_size` and the kernels panicked later.
        let e = crafted(|h| h.replace("[3,8,8]", "[3,9223372036854775816,8]")).map(|_| ()).unwrap_err();
        assert!(format!("{e:#}").contains("`meta.cnn.image`: shape [3, 9223372036854775816, 8]"), "{e:#}");
    }
}
