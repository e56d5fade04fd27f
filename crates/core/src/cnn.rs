//! Convolutional networks trained stage by stage (Belilovsky et al. 2019): the model a
//! version-2 checkpoint holds, and the stage list a pipeline's `[model]` section gives.
//!
//! A network is an ordered list of stages, each an optional downsampling (`maxpool`, 2 × 2;
//! or `psi`, PyTorch's `PixelUnshuffle(2)`) and a conv block (3 × 3, stride 1, padding 1,
//! no bias; BatchNorm; ReLU), then a head: `head_convs` conv blocks, adaptive average
//! pooling to 2 × 2, flattening channel-major (as `torch.flatten`), a linear layer.
//! Weights use PyTorch's layouts; the checkpoint names are in [`crate::checkpoint`].

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::dense::Dense;

named_enum!(Downsample, "downsample", { None => "none", Maxpool => "maxpool", Psi => "psi" });

/// What comes before a stage's conv block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Downsample {
    /// Nothing.
    #[default]
    None,
    /// 2 × 2 max-pooling, stride 2.
    Maxpool,
    /// The invertible space-to-depth of Belilovsky et al.: channels × 4, sides / 2
    /// (`torch.nn.PixelUnshuffle(2)`: channel `4c + 2·dy + dx` holds pixel `(2y+dy, 2x+dx)`).
    Psi,
}

impl Downsample {
    /// The shape `[c, h, w]` after this downsampling, refusing an odd side.
    pub fn shape(self, [c, h, w]: [usize; 3]) -> Result<[usize; 3]> {
        if self != Downsample::None && (h % 2 != 0 || w % 2 != 0 || h < 2 || w < 2) {
            bail!("`{}` halves the sides, but its input is {h}×{w}: use it where both sides are even", self.name());
        }
        Ok(match self {
            Downsample::None => [c, h, w],
            Downsample::Maxpool => [c, h / 2, w / 2],
            Downsample::Psi => [4 * c, h / 2, w / 2],
        })
    }
}

/// One stage of the pipeline's stage list: `{out = 128, downsample = "maxpool"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// Before the conv block.
    #[serde(default)]
    pub downsample: Downsample,
    /// The conv block's output channels.
    pub out: usize,
}

impl std::str::FromStr for StageSpec {
    type Err = anyhow::Error;
    /// `128`, `maxpool:128` or `psi:64`.
    fn from_str(s: &str) -> Result<Self> {
        let (down, out) = match s.split_once(':') {
            Some((d, o)) => (d.parse::<Downsample>()?, o),
            None => (Downsample::None, s),
        };
        let out = out.trim().parse::<usize>().map_err(|_| {
            anyhow::anyhow!("stage `{s}`: write OUT or DOWNSAMPLE:OUT, e.g. 64 or maxpool:128 or psi:64")
        })?;
        Ok(Self { downsample: down, out })
    }
}

impl std::fmt::Display for StageSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.downsample {
            Downsample::None => write!(f, "{}", self.out),
            d => write!(f, "{d}:{}", self.out),
        }
    }
}

/// The most output channels a stage may have.
pub const MAX_CHANNELS: usize = 1 << 14;
/// The most conv blocks a head may have.
pub const MAX_HEAD_CONVS: usize = 8;

/// A convolutional network's architecture: its stages (greedy depth d trains stage d) and
/// its auxiliary head's conv blocks (k − 1 for the paper's auxiliary problem of size k).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CnnSpec {
    /// The stages, input side first.
    pub stages: Vec<StageSpec>,
    /// Conv blocks in each stage's head before its pooling and linear layer.
    #[serde(default)]
    pub head_convs: usize,
}

impl CnnSpec {
    /// Refuse what cannot be built, naming the key.
    pub fn validate(&self) -> Result<()> {
        if self.stages.is_empty() {
            bail!("invalid setting `model.stages`: a convolutional network needs at least one stage");
        }
        crate::limits::check_limit("model.stages", self.stages.len(), crate::limits::MAX_DEPTH)?;
        crate::limits::check_limit("model.head_convs", self.head_convs, MAX_HEAD_CONVS)?;
        for (i, s) in self.stages.iter().enumerate() {
            if s.out == 0 {
                bail!("invalid setting `model.stages`: stage {} has `out = 0`; it must be at least 1", i + 1);
            }
            crate::limits::check_limit(&format!("model.stages[{i}].out"), s.out, MAX_CHANNELS)?;
        }
        Ok(())
    }

    /// The input shape of each stage's conv block (after its downsampling) for images of
    /// `input` `[c, h, w]`, refusing a downsampling of an odd side.
    pub fn conv_inputs(&self, input: [usize; 3]) -> Result<Vec<[usize; 3]>> {
        let mut shape = input;
        let mut out = Vec::with_capacity(self.stages.len());
        for (i, s) in self.stages.iter().enumerate() {
            shape =
                s.downsample.shape(shape).map_err(|e| anyhow::anyhow!("model.stages[{i}] (stage {}): {e}", i + 1))?;
            out.push(shape);
            shape = [s.out, shape[1], shape[2]];
        }
        Ok(out)
    }
}

/// BatchNorm's ε (PyTorch's default).
pub const BN_EPS: f32 = 1e-5;
/// BatchNorm's momentum for its running statistics (PyTorch's default).
pub const BN_MOMENTUM: f32 = 0.1;
/// The side of the head's adaptive average pooling.
pub const HEAD_POOL: usize = 2;

/// Adaptive average pooling's window along a side of `len`: output `i` of `out` covers
/// `[floor(i·len/out), ceil((i+1)·len/out))` (PyTorch's rule).
pub fn pool_window(i: usize, len: usize, out: usize) -> (usize, usize) {
    (i * len / out, ((i + 1) * len).div_ceil(out))
}

/// The head's adaptive average pooling to `HEAD_POOL × HEAD_POOL` over an `h × w` map as an
/// `[h·w, 4]` matrix (column `py·2 + px`): what the device path and the ONNX graph multiply by.
pub fn head_pool_matrix(h: usize, w: usize) -> Vec<f32> {
    let p = HEAD_POOL;
    let mut m = vec![0f32; h * w * p * p];
    for py in 0..p {
        let (y0, y1) = pool_window(py, h, p);
        for px in 0..p {
            let (x0, x1) = pool_window(px, w, p);
            let inv = 1.0 / ((y1 - y0) * (x1 - x0)) as f32;
            for y in y0..y1 {
                for x in x0..x1 {
                    m[(y * w + x) * p * p + py * p + px] = inv;
                }
            }
        }
    }
    m
}

/// A BatchNorm layer's parameters and running statistics, one value per channel.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNorm {
    /// γ.
    pub weight: Vec<f32>,
    /// β.
    pub bias: Vec<f32>,
    /// Running mean.
    pub running_mean: Vec<f32>,
    /// Running (unbiased) variance.
    pub running_var: Vec<f32>,
}

impl BatchNorm {
    /// A fresh layer: γ = 1, β = 0, mean 0, variance 1 (PyTorch's initialization).
    pub fn new(channels: usize) -> Self {
        Self {
            weight: vec![1.0; channels],
            bias: vec![0.0; channels],
            running_mean: vec![0.0; channels],
            running_var: vec![1.0; channels],
        }
    }

    /// Its four tensors with their checkpoint suffixes.
    pub fn tensors(&self) -> [(&'static str, &[f32]); 4] {
        [
            ("weight", &self.weight),
            ("bias", &self.bias),
            ("running_mean", &self.running_mean),
            ("running_var", &self.running_var),
        ]
    }
}

/// A conv block: 3 × 3 convolution without bias, BatchNorm, ReLU.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvBlock {
    /// Input channels.
    pub inputs: usize,
    /// Output channels.
    pub outputs: usize,
    /// `[outputs, inputs, 3, 3]`, row-major (PyTorch's layout).
    pub weight: Vec<f32>,
    /// Its BatchNorm.
    pub bn: BatchNorm,
}

impl ConvBlock {
    /// Parameters (BatchNorm's running statistics are not).
    pub fn num_params(&self) -> usize {
        self.weight.len() + 2 * self.outputs
    }

    /// Multiply-adds per image at `h × w`.
    pub fn macs(&self, h: usize, w: usize) -> usize {
        9 * self.inputs * self.outputs * h * w
    }
}

/// A stage: its downsampling and conv block.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvStage {
    /// Before the block.
    pub downsample: Downsample,
    /// The block.
    pub conv: ConvBlock,
}

/// The auxiliary head: conv blocks, 2 × 2 average pooling, flattening, a linear layer.
#[derive(Debug, Clone, PartialEq)]
pub struct CnnHead {
    /// Conv blocks, in order.
    pub convs: Vec<ConvBlock>,
    /// `[classes, 4 · channels]`.
    pub linear: Dense,
}

/// A convolutional network.
#[derive(Debug, Clone, PartialEq)]
pub struct Cnn {
    /// Input `[c, h, w]`.
    pub input: [usize; 3],
    /// Stages, input side first.
    pub stages: Vec<ConvStage>,
    /// The head on the last stage.
    pub head: CnnHead,
}

impl Cnn {
    /// Stages.
    pub fn depth(&self) -> usize {
        self.stages.len()
    }

    /// The architecture.
    pub fn spec(&self) -> CnnSpec {
        CnnSpec {
            stages: self.stages.iter().map(|s| StageSpec { downsample: s.downsample, out: s.conv.outputs }).collect(),
            head_convs: self.head.convs.len(),
        }
    }

    /// Values per input image.
    pub fn input_size(&self) -> usize {
        self.input.iter().product()
    }

    /// Output channels of each stage.
    pub fn widths(&self) -> Vec<usize> {
        self.stages.iter().map(|s| s.conv.outputs).collect()
    }

    /// Parameters.
    pub fn num_params(&self) -> usize {
        self.stages.iter().map(|s| s.conv.num_params()).sum::<usize>()
            + self.head.convs.iter().map(ConvBlock::num_params).sum::<usize>()
            + self.head.linear.num_params()
    }

    /// The shape `[c, h, w]` the last stage outputs.
    pub fn output_shape(&self) -> Result<[usize; 3]> {
        let inputs = self.spec().conv_inputs(self.input)?;
        Ok(match (inputs.last(), self.stages.last()) {
            (Some(&[_, h, w]), Some(s)) => [s.conv.outputs, h, w],
            _ => self.input,
        })
    }

    /// Multiply-adds of one image's forward pass through each stage's conv block.
    pub fn stage_macs(&self) -> Result<Vec<usize>> {
        let inputs = self.spec().conv_inputs(self.input)?;
        Ok(self.stages.iter().zip(inputs).map(|(s, [_, h, w])| s.conv.macs(h, w)).collect())
    }
}

#[cfg(test)]
mod tests {
    use crate::cnn::CnnSpec;
    use crate::cnn::Downsample;
    use crate::cnn::StageSpec;

    #[test]
    fn stage_specs_read_both_ways_and_shapes_follow_the_downsampling() {
        let s: StageSpec = "maxpool:128".parse().unwrap();
        assert_eq!(s, StageSpec { downsample: Downsample::Maxpool, out: 128 });
        assert_eq!(s.to_string(), "maxpool:128");
        assert_eq!("64".parse::<StageSpec>().unwrap().to_string(), "64");
        assert!("pool:3".parse::<StageSpec>().is_err() && "psi:x".parse::<StageSpec>().is_err());
        let spec = CnnSpec { stages: vec!["psi:16".parse().unwrap(), "maxpool:32".parse().unwrap()], head_convs: 0 };
        assert_eq!(spec.conv_inputs([3, 32, 32]).unwrap(), vec![[12, 16, 16], [16, 8, 8]]);
        let err = format!("{:#}", spec.conv_inputs([3, 31, 32]).unwrap_err());
        assert!(err.contains("stage 1") && err.contains("31×32"), "{err}");
    }
}
