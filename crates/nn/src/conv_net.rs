//! A convolutional network in the host layout, and its inference passes: the frozen
//! stages' output (for caching) and the logits.

use crate::conv_block::{block_infer, HostBlock};
use crate::conv_ops::{chw_to_nhwc, downsample, head_pool, Nhwc};
use crate::host::HostLayer;
use crate::EvalSums;
use layerwise_core::cnn::{Cnn, CnnHead, ConvStage, Downsample};

/// A convolutional network in the host layout.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvNet {
    /// The input image `[c, h, w]`.
    pub input: [usize; 3],
    /// Each stage's downsampling and block.
    pub stages: Vec<(Downsample, HostBlock)>,
    /// The head's conv blocks.
    pub head_convs: Vec<HostBlock>,
    /// The head's linear layer.
    pub linear: HostLayer,
}

/// The `(in, out)` channels of each stage's conv block and of each head conv block.
pub(crate) type BlockShapes = (Vec<(usize, usize)>, Vec<(usize, usize)>);

/// Images per chunk of an inference pass.
pub const INFER_CHUNK: usize = 250;

impl ConvNet {
    /// From a checkpoint's network.
    pub fn from_cnn(m: &Cnn) -> Self {
        Self {
            input: m.input,
            stages: m.stages.iter().map(|s| (s.downsample, HostBlock::from_block(&s.conv))).collect(),
            head_convs: m.head.convs.iter().map(HostBlock::from_block).collect(),
            linear: HostLayer::from_dense(&m.head.linear),
        }
    }

    /// Back to a checkpoint's network.
    pub fn to_cnn(&self) -> Cnn {
        Cnn {
            input: self.input,
            stages: self.stages.iter().map(|(d, b)| ConvStage { downsample: *d, conv: b.to_block() }).collect(),
            head: CnnHead {
                convs: self.head_convs.iter().map(HostBlock::to_block).collect(),
                linear: self.linear.to_dense(),
            },
        }
    }

    /// The `(in, out)` channels of each stage's block and each head block.
    pub(crate) fn block_shapes(&self) -> BlockShapes {
        (
            self.stages.iter().map(|(_, b)| (b.cin, b.cout)).collect(),
            self.head_convs.iter().map(|b| (b.cin, b.cout)).collect(),
        )
    }

    /// The NHWC shape of the images.
    fn image_shape(&self, n: usize) -> Nhwc {
        let [c, h, w] = self.input;
        Nhwc { n, h, w, c }
    }

    /// Stages `0..upto` in inference mode over an NHWC batch, then stage `upto`'s
    /// downsampling: the input of stage `upto`'s block.
    fn run_stages(&self, mut x: Vec<f32>, mut s: Nhwc, upto: usize) -> (Vec<f32>, Nhwc) {
        for (i, (d, b)) in self.stages.iter().enumerate().take(upto + 1) {
            let (y, o, _) = downsample(&x, s, *d);
            (x, s) = (y, o);
            if i == upto {
                break;
            }
            x = block_infer(b, &x, s);
            s.c = b.cout;
        }
        (x, s)
    }

    /// The input of stage `first`'s block (the frozen stages' output, downsampled) for
    /// `n` CHW images, [`INFER_CHUNK`] images at a time; NHWC.
    pub fn prefix_features(&self, images: &[f32], n: usize, first: usize) -> (Vec<f32>, Nhwc) {
        let dim: usize = self.input.iter().product();
        let mut out = Vec::new();
        let mut shape = None;
        for start in (0..n).step_by(INFER_CHUNK) {
            let m = INFER_CHUNK.min(n - start);
            let x = chw_to_nhwc(&images[start * dim..(start + m) * dim], m, self.input);
            let (f, s) = self.run_stages(x, self.image_shape(m), first);
            if out.is_empty() {
                out.reserve(n * f.len() / m);
            }
            out.extend_from_slice(&f);
            shape = Some(s);
        }
        let s = shape.map_or(Nhwc { n: 0, ..self.image_shape(0) }, |s| Nhwc { n, ..s });
        (out, s)
    }

    /// The tensors trained with stages `first..` (their blocks', the head's), in the
    /// order of [`ConvTrainer::trainable_names`]; weights in the host layout.
    pub fn trainable_mut(&mut self, first: usize) -> Vec<&mut Vec<f32>> {
        let mut out: Vec<&mut Vec<f32>> = Vec::new();
        for b in self.stages[first..].iter_mut().map(|(_, b)| b).chain(self.head_convs.iter_mut()) {
            out.extend([&mut b.wk, &mut b.gamma, &mut b.beta]);
        }
        out.extend([&mut self.linear.wt, &mut self.linear.bias]);
        out
    }

    /// The logits of an NHWC batch `x` that is the input of stage `first`'s block.
    pub fn logits_from(&self, x: &[f32], s: Nhwc, first: usize) -> Vec<f32> {
        self.logits_and_output(x, s, first, false).0
    }

    /// [`ConvNet::logits_from`], and, when `keep_out`, the output of stage `first`'s
    /// block (NHWC, before the next stage's downsampling): what the next stage of a
    /// decoupled network is evaluated on.
    pub fn logits_and_output(&self, x: &[f32], s: Nhwc, first: usize, keep_out: bool) -> (Vec<f32>, Option<Vec<f32>>) {
        let mut x = block_infer(&self.stages[first].1, x, s);
        let out = keep_out.then(|| x.clone());
        let mut s = Nhwc { c: self.stages[first].1.cout, ..s };
        for (d, b) in &self.stages[first + 1..] {
            let (y, o, _) = downsample(&x, s, *d);
            x = block_infer(b, &y, o);
            s = Nhwc { c: b.cout, ..o };
        }
        for b in &self.head_convs {
            x = block_infer(b, &x, s);
        }
        let f = head_pool(&x, s);
        let mut logits = vec![0f32; s.n * self.linear.outputs];
        crate::host::dense_forward(&self.linear, &f, s.n, &mut logits, false);
        (logits, out)
    }

    /// Loss, accuracy and confusion over `n` CHW images with `labels`, in inference mode.
    pub fn evaluate(&self, images: &[f32], labels: &[u8]) -> EvalSums {
        let mut sums = EvalSums::new(self.linear.outputs);
        self.logits_chunks(images, labels.len(), |start, logits| sums.add(logits, &labels[start..]));
        sums
    }

    /// The logits of `n` CHW images, [`INFER_CHUNK`] at a time, each chunk's first image
    /// and logits handed to `each`.
    pub fn logits_chunks(&self, images: &[f32], n: usize, mut each: impl FnMut(usize, &[f32])) {
        let dim: usize = self.input.iter().product();
        for start in (0..n).step_by(INFER_CHUNK) {
            let m = INFER_CHUNK.min(n - start);
            let x = chw_to_nhwc(&images[start * dim..(start + m) * dim], m, self.input);
            let (f, s) = self.run_stages(x, self.image_shape(m), 0);
            each(start, &self.logits_from(&f, s, 0));
        }
    }

    /// Evaluate from features that are stage `first`'s block input (a cache).
    pub fn evaluate_features(&self, x: &[f32], s: Nhwc, labels: &[u8], first: usize) -> EvalSums {
        let mut sums = EvalSums::new(self.linear.outputs);
        let per = s.image();
        for start in (0..s.n).step_by(INFER_CHUNK) {
            let m = INFER_CHUNK.min(s.n - start);
            let logits = self.logits_from(&x[start * per..(start + m) * per], Nhwc { n: m, ..s }, first);
            sums.add(&logits, &labels[start..]);
        }
        sums
    }
}
