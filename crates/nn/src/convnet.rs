//! Convolutional networks on the host: the stages of [`layerwise_core::cnn`] in the
//! layout the products want. Activations are NHWC (a batch is a `[n·h·w, c]` matrix, one
//! row a pixel), so a 3 × 3 convolution is one im2col gather and one gemm 0.19 product, and
//! BatchNorm works on the product's columns; nothing is transposed between layers. Weights
//! are kept as `[9·in, out]` (row `(dy, dx, in)`) and go back to PyTorch's `[out, in, 3, 3]`
//! whenever they leave ([`ConvNet::to_cnn`], the optimizer's state).
//!
//! - [`ConvNet::forward_logits`]: inference (BatchNorm with its running statistics).
//! - [`ConvNet::prefix_features`]: the frozen stages' output, for caching.
//! - [`ConvTrainer`]: a training step of the stages from `first` on and the head, with
//!   BatchNorm in training mode, label smoothing, SGD (momentum, Nesterov) or Adam, and
//!   decoupled weight decay on the convolution and linear weights.
//!
//! Tested against direct loops and finite differences (`tests/convnet.rs`).

use crate::host::{matmul, HostLayer, View};
use crate::{Adam, EvalSums, Moments};
use anyhow::{bail, Result};
use layerwise_core::checkpoint::Dense;
use layerwise_core::cnn::{BatchNorm, Cnn, CnnHead, ConvBlock, ConvStage, Downsample, BN_EPS, BN_MOMENTUM, HEAD_POOL};
use rayon::prelude::*;

/// Keep freed memory in the process instead of handing it back to the kernel (glibc's
/// `mallopt`: no `mmap` for large blocks, no trimming). A training step allocates its
/// patches and activations (tens of MB) afresh; returned to the kernel, every step's pages
/// are faulted in and zeroed again, which took half the wall time of a stage epoch here
/// (BENCHMARKS.md). Numerics are unchanged. Called once per process before training.
pub fn keep_buffers_resident() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator tunables; called before the buffers it affects.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 1 << 28);
    }
}

/// The shape of an NHWC batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nhwc {
    /// Images.
    pub n: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// Channels.
    pub c: usize,
}

impl Nhwc {
    /// Values.
    pub fn len(&self) -> usize {
        self.n * self.h * self.w * self.c
    }
    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Pixels (rows of the matrix).
    pub fn rows(&self) -> usize {
        self.n * self.h * self.w
    }
    fn image(&self) -> usize {
        self.h * self.w * self.c
    }
}

/// A conv block in the host layout.
#[derive(Debug, Clone, PartialEq)]
pub struct HostBlock {
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// `[9·cin, cout]`, row `(dy·3 + dx)·cin + ci`.
    pub wk: Vec<f32>,
    /// BatchNorm γ, β, running mean and variance.
    pub gamma: Vec<f32>,
    /// β.
    pub beta: Vec<f32>,
    /// Running mean.
    pub mean: Vec<f32>,
    /// Running (unbiased) variance.
    pub var: Vec<f32>,
}

/// PyTorch's `[out, in, 3, 3]` as `[9·in, out]`.
pub fn wk_from_torch(w: &[f32], cin: usize, cout: usize) -> Vec<f32> {
    let mut wk = vec![0f32; w.len()];
    for o in 0..cout {
        for ci in 0..cin {
            for t in 0..9 {
                wk[(t * cin + ci) * cout + o] = w[(o * cin + ci) * 9 + t];
            }
        }
    }
    wk
}

/// `[9·in, out]` back to PyTorch's `[out, in, 3, 3]`.
pub fn wk_to_torch(wk: &[f32], cin: usize, cout: usize) -> Vec<f32> {
    let mut w = vec![0f32; wk.len()];
    for o in 0..cout {
        for ci in 0..cin {
            for t in 0..9 {
                w[(o * cin + ci) * 9 + t] = wk[(t * cin + ci) * cout + o];
            }
        }
    }
    w
}

impl HostBlock {
    /// From a checkpoint block.
    pub fn from_block(b: &ConvBlock) -> Self {
        Self {
            cin: b.inputs,
            cout: b.outputs,
            wk: wk_from_torch(&b.weight, b.inputs, b.outputs),
            gamma: b.bn.weight.clone(),
            beta: b.bn.bias.clone(),
            mean: b.bn.running_mean.clone(),
            var: b.bn.running_var.clone(),
        }
    }

    /// Back to a checkpoint block.
    pub fn to_block(&self) -> ConvBlock {
        ConvBlock {
            inputs: self.cin,
            outputs: self.cout,
            weight: wk_to_torch(&self.wk, self.cin, self.cout),
            bn: BatchNorm {
                weight: self.gamma.clone(),
                bias: self.beta.clone(),
                running_mean: self.mean.clone(),
                running_var: self.var.clone(),
            },
        }
    }

    /// BatchNorm with the running statistics as a per-channel scale and shift.
    fn inference_affine(&self) -> (Vec<f32>, Vec<f32>) {
        let scale: Vec<f32> = (0..self.cout).map(|c| self.gamma[c] / (self.var[c] + BN_EPS).sqrt()).collect();
        let shift = (0..self.cout).map(|c| self.beta[c] - self.mean[c] * scale[c]).collect();
        (scale, shift)
    }
}

/// A new conv block: Kaiming-uniform weights as PyTorch's `Conv2d` draws them
/// (bound `1/√(9·in)`), BatchNorm as PyTorch initializes it.
pub fn new_block(cin: usize, cout: usize, seed: u64) -> ConvBlock {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let bound = 1.0 / ((9 * cin) as f32).sqrt();
    ConvBlock {
        inputs: cin,
        outputs: cout,
        weight: (0..cout * cin * 9).map(|_| rng.gen_range(-bound..bound)).collect(),
        bn: BatchNorm::new(cout),
    }
}

/// A new linear layer as PyTorch's `Linear` draws it (weight and bias uniform in
/// ±`1/√in`).
pub fn new_linear(inputs: usize, outputs: usize, seed: u64) -> Dense {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let bound = 1.0 / (inputs as f32).sqrt();
    Dense {
        inputs,
        outputs,
        weight: (0..inputs * outputs).map(|_| rng.gen_range(-bound..bound)).collect(),
        bias: (0..outputs).map(|_| rng.gen_range(-bound..bound)).collect(),
    }
}

/// Images of `[c, h, w]` (CHW rows, as datasets store them) as one NHWC batch.
pub fn chw_to_nhwc(x: &[f32], n: usize, [c, h, w]: [usize; 3]) -> Vec<f32> {
    let mut out = vec![0f32; n * c * h * w];
    out.par_chunks_mut(c * h * w).zip(x.par_chunks(c * h * w)).for_each(|(o, i)| {
        for ch in 0..c {
            for p in 0..h * w {
                o[p * c + ch] = i[ch * h * w + p];
            }
        }
    });
    out
}

/// The patches of a 3 × 3, padding-1 convolution of an NHWC batch: `[n·h·w, 9·c]`, row a
/// pixel, column `(dy·3 + dx)·c + ci`; images in parallel.
pub fn im2col(x: &[f32], s: Nhwc, cols: &mut [f32]) {
    let k = 9 * s.c;
    cols[..s.rows() * k].par_chunks_mut(s.h * s.w * k).zip(x.par_chunks(s.image())).for_each(|(cols, img)| {
        for y in 0..s.h {
            for xx in 0..s.w {
                let row = &mut cols[(y * s.w + xx) * k..][..k];
                for dy in 0..3 {
                    let sy = y as isize + dy as isize - 1;
                    for dx in 0..3 {
                        let sx = xx as isize + dx as isize - 1;
                        let dst = &mut row[(dy * 3 + dx) * s.c..][..s.c];
                        if sy < 0 || sy >= s.h as isize || sx < 0 || sx >= s.w as isize {
                            dst.fill(0.0);
                        } else {
                            dst.copy_from_slice(&img[(sy as usize * s.w + sx as usize) * s.c..][..s.c]);
                        }
                    }
                }
            }
        }
    });
}

/// The inverse scatter of [`im2col`]: patch gradients summed into an NHWC input gradient.
pub fn col2im(cols: &[f32], s: Nhwc) -> Vec<f32> {
    let k = 9 * s.c;
    let mut x = vec![0f32; s.len()];
    x.par_chunks_mut(s.image()).zip(cols.par_chunks(s.h * s.w * k)).for_each(|(img, cols)| {
        for y in 0..s.h {
            for xx in 0..s.w {
                let row = &cols[(y * s.w + xx) * k..][..k];
                for dy in 0..3 {
                    let sy = y as isize + dy as isize - 1;
                    for dx in 0..3 {
                        let sx = xx as isize + dx as isize - 1;
                        if sy >= 0 && sy < s.h as isize && sx >= 0 && sx < s.w as isize {
                            let dst = &mut img[(sy as usize * s.w + sx as usize) * s.c..][..s.c];
                            for (d, v) in dst.iter_mut().zip(&row[(dy * 3 + dx) * s.c..][..s.c]) {
                                *d += v;
                            }
                        }
                    }
                }
            }
        }
    });
    x
}

/// A downsampling of an NHWC batch: the output, its shape, and for max-pooling the index
/// (0..4) of each output's maximum (the first on a tie).
pub fn downsample(x: &[f32], s: Nhwc, d: Downsample) -> (Vec<f32>, Nhwc, Vec<u8>) {
    let (oh, ow) = (s.h / 2, s.w / 2);
    match d {
        Downsample::None => (x.to_vec(), s, Vec::new()),
        Downsample::Maxpool => {
            let o = Nhwc { h: oh, w: ow, ..s };
            let mut y = vec![0f32; o.len()];
            let mut arg = vec![0u8; o.len()];
            y.par_chunks_mut(o.image()).zip(arg.par_chunks_mut(o.image())).zip(x.par_chunks(s.image())).for_each(
                |((y, arg), img)| {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            for c in 0..s.c {
                                let at = |q: usize| img[((2 * oy + q / 2) * s.w + 2 * ox + q % 2) * s.c + c];
                                let (mut best, mut bi) = (at(0), 0u8);
                                for q in 1..4 {
                                    if at(q) > best {
                                        (best, bi) = (at(q), q as u8);
                                    }
                                }
                                let i = (oy * ow + ox) * s.c + c;
                                (y[i], arg[i]) = (best, bi);
                            }
                        }
                    }
                },
            );
            (y, o, arg)
        }
        Downsample::Psi => {
            let o = Nhwc { h: oh, w: ow, c: 4 * s.c, n: s.n };
            let mut y = vec![0f32; o.len()];
            y.par_chunks_mut(o.image()).zip(x.par_chunks(s.image())).for_each(|(y, img)| {
                for oy in 0..oh {
                    for ox in 0..ow {
                        for c in 0..s.c {
                            for q in 0..4 {
                                y[(oy * ow + ox) * o.c + 4 * c + q] =
                                    img[((2 * oy + q / 2) * s.w + 2 * ox + q % 2) * s.c + c];
                            }
                        }
                    }
                }
            });
            (y, o, Vec::new())
        }
    }
}

/// The backward pass of [`downsample`] from the output gradient `dy` (input shape `s`).
pub fn downsample_backward(dy: &[f32], s: Nhwc, d: Downsample, arg: &[u8]) -> Vec<f32> {
    let (oh, ow) = (s.h / 2, s.w / 2);
    let mut dx = vec![0f32; s.len()];
    match d {
        Downsample::None => dx.copy_from_slice(dy),
        Downsample::Maxpool => {
            let oc = s.c;
            dx.par_chunks_mut(s.image()).zip(dy.par_chunks(oh * ow * oc)).zip(arg.par_chunks(oh * ow * oc)).for_each(
                |((dx, dy), arg)| {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            for c in 0..s.c {
                                let i = (oy * ow + ox) * oc + c;
                                let q = arg[i] as usize;
                                dx[((2 * oy + q / 2) * s.w + 2 * ox + q % 2) * s.c + c] += dy[i];
                            }
                        }
                    }
                },
            );
        }
        Downsample::Psi => {
            let oc = 4 * s.c;
            dx.par_chunks_mut(s.image()).zip(dy.par_chunks(oh * ow * oc)).for_each(|(dx, dy)| {
                for oy in 0..oh {
                    for ox in 0..ow {
                        for c in 0..s.c {
                            for q in 0..4 {
                                dx[((2 * oy + q / 2) * s.w + 2 * ox + q % 2) * s.c + c] =
                                    dy[(oy * ow + ox) * oc + 4 * c + q];
                            }
                        }
                    }
                }
            });
        }
    }
    dx
}

/// Rows per partial sum of a column reduction: fixed, so sums are the same whatever the
/// number of threads.
const REDUCE_ROWS: usize = 1024;

/// Per-column sums of `f(row, col)` over a `[rows, cols]` matrix, in f64, in parallel
/// with a fixed association (deterministic).
fn column_sums2(rows: usize, cols: usize, f: impl Fn(usize, usize) -> (f64, f64) + Sync) -> (Vec<f64>, Vec<f64>) {
    let parts: Vec<(Vec<f64>, Vec<f64>)> = (0..rows.div_ceil(REDUCE_ROWS))
        .into_par_iter()
        .map(|p| {
            let (mut a, mut b) = (vec![0f64; cols], vec![0f64; cols]);
            for r in p * REDUCE_ROWS..((p + 1) * REDUCE_ROWS).min(rows) {
                for c in 0..cols {
                    let (x, y) = f(r, c);
                    a[c] += x;
                    b[c] += y;
                }
            }
            (a, b)
        })
        .collect();
    let (mut a, mut b) = (vec![0f64; cols], vec![0f64; cols]);
    for (pa, pb) in parts {
        for c in 0..cols {
            a[c] += pa[c];
            b[c] += pb[c];
        }
    }
    (a, b)
}

/// Rows of an elementwise pass handed to one task.
const PASS_ROWS: usize = 256;

/// A block's forward pass in inference mode over `x` (`s`, already downsampled): the
/// convolution, then BatchNorm with the running statistics and ReLU in one pass.
fn block_infer(b: &HostBlock, x: &[f32], s: Nhwc, cols: &mut Vec<f32>) -> Vec<f32> {
    let rows = s.rows();
    cols.resize(rows * 9 * s.c, 0.0);
    im2col(x, s, cols);
    let mut z = vec![0f32; rows * b.cout];
    matmul(&mut z, View::rows(cols, rows, 9 * s.c), View::rows(&b.wk, 9 * s.c, b.cout), false);
    let (scale, shift) = b.inference_affine();
    z.par_chunks_mut(PASS_ROWS * b.cout).for_each(|chunk| {
        for row in chunk.chunks_exact_mut(b.cout) {
            for ((v, a), c) in row.iter_mut().zip(&scale).zip(&shift) {
                *v = (*v * a + c).max(0.0);
            }
        }
    });
    z
}

/// Adaptive average pooling's window along a side of `len`: output `i` of `out` covers
/// `[floor(i·len/out), ceil((i+1)·len/out))` (PyTorch's rule).
fn pool_window(i: usize, len: usize, out: usize) -> (usize, usize) {
    (i * len / out, ((i + 1) * len).div_ceil(out))
}

/// Average pooling to `HEAD_POOL × HEAD_POOL`, flattened channel-major: `[n, c·4]`, value
/// `c·4 + py·2 + px` (as `torch.flatten` of `[n, c, 2, 2]`).
fn head_pool(x: &[f32], s: Nhwc) -> Vec<f32> {
    let p = HEAD_POOL;
    let mut f = vec![0f32; s.n * s.c * p * p];
    f.par_chunks_mut(s.c * p * p).zip(x.par_chunks(s.image())).for_each(|(f, img)| {
        for py in 0..p {
            let (y0, y1) = pool_window(py, s.h, p);
            for px in 0..p {
                let (x0, x1) = pool_window(px, s.w, p);
                let inv = 1.0 / ((y1 - y0) * (x1 - x0)) as f32;
                for c in 0..s.c {
                    let mut sum = 0f32;
                    for y in y0..y1 {
                        for xx in x0..x1 {
                            sum += img[(y * s.w + xx) * s.c + c];
                        }
                    }
                    f[c * p * p + py * p + px] = sum * inv;
                }
            }
        }
    });
    f
}

/// The backward pass of [`head_pool`].
fn head_pool_backward(df: &[f32], s: Nhwc) -> Vec<f32> {
    let p = HEAD_POOL;
    let mut dx = vec![0f32; s.len()];
    dx.par_chunks_mut(s.image()).zip(df.par_chunks(s.c * p * p)).for_each(|(img, df)| {
        for py in 0..p {
            let (y0, y1) = pool_window(py, s.h, p);
            for px in 0..p {
                let (x0, x1) = pool_window(px, s.w, p);
                let inv = 1.0 / ((y1 - y0) * (x1 - x0)) as f32;
                for y in y0..y1 {
                    for xx in x0..x1 {
                        for c in 0..s.c {
                            img[(y * s.w + xx) * s.c + c] += df[c * p * p + py * p + px] * inv;
                        }
                    }
                }
            }
        }
    });
    dx
}

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

    /// The NHWC shape of the images.
    fn image_shape(&self, n: usize) -> Nhwc {
        let [c, h, w] = self.input;
        Nhwc { n, h, w, c }
    }

    /// Stages `0..upto` in inference mode over an NHWC batch, then stage `upto`'s
    /// downsampling when `then_downsample`: the input of stage `upto`'s block.
    fn run_stages(&self, mut x: Vec<f32>, mut s: Nhwc, upto: usize, then_downsample: bool) -> (Vec<f32>, Nhwc) {
        let mut cols = Vec::new();
        for (i, (d, b)) in self.stages.iter().enumerate().take(upto + 1) {
            if i == upto && !then_downsample {
                break;
            }
            let (y, o, _) = downsample(&x, s, *d);
            (x, s) = (y, o);
            if i == upto {
                break;
            }
            x = block_infer(b, &x, s, &mut cols);
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
            let (f, s) = self.run_stages(x, self.image_shape(m), first, true);
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
        let mut cols = Vec::new();
        let mut x = block_infer(&self.stages[first].1, x, s, &mut cols);
        let mut s = Nhwc { c: self.stages[first].1.cout, ..s };
        for (d, b) in &self.stages[first + 1..] {
            let (y, o, _) = downsample(&x, s, *d);
            x = block_infer(b, &y, o, &mut cols);
            s = Nhwc { c: b.cout, ..o };
        }
        for b in &self.head_convs {
            x = block_infer(b, &x, s, &mut cols);
        }
        let f = head_pool(&x, s);
        let mut logits = vec![0f32; s.n * self.linear.outputs];
        crate::host::dense_forward(&self.linear, &f, s.n, &mut logits, false);
        logits
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
            let (f, s) = self.run_stages(x, self.image_shape(m), 0, true);
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

/// The optimizer of a [`ConvTrainer`].
pub enum ConvOptimizer {
    /// Adam (Keras' ε placement).
    Adam(Adam<dfdx::tensor::Cpu>),
    /// SGD with momentum.
    Sgd(Sgd),
}

/// SGD with momentum, PyTorch's form (`v = μv + g`; step `lr·v`, or `lr·(g + μv)` with
/// Nesterov), and decoupled weight decay (`w -= lr·wd·w` before the step).
pub struct Sgd {
    lr: f64,
    momentum: f64,
    nesterov: bool,
    t: i32,
    bufs: Vec<(String, Vec<f32>)>,
}

impl Sgd {
    /// SGD with `momentum` (0: plain SGD).
    pub fn new(lr: f64, momentum: f64, nesterov: bool) -> Self {
        Self { lr, momentum, nesterov, t: 0, bufs: Vec::new() }
    }

    /// Update `param` by `grad`.
    pub fn update(&mut self, name: &str, param: &mut [f32], grad: &[f32], weight_decay: f64) -> Result<()> {
        if grad.len() != param.len() {
            bail!("internal: gradient of `{name}` has {} values for {}", grad.len(), param.len());
        }
        let i = match self.bufs.iter().position(|(n, _)| n == name) {
            Some(i) => i,
            None => {
                self.bufs.push((name.to_string(), vec![0.0; param.len()]));
                self.bufs.len() - 1
            }
        };
        let buf = &mut self.bufs[i].1;
        if buf.len() != param.len() {
            bail!("optimizer state of `{name}` has {} values for {}", buf.len(), param.len());
        }
        let (lr, mu, shrink) = (self.lr as f32, self.momentum as f32, (self.lr * weight_decay) as f32);
        for ((p, &g), v) in param.iter_mut().zip(grad).zip(buf.iter_mut()) {
            *p -= shrink * *p;
            *v = mu * *v + g;
            *p -= lr * if self.nesterov { g + mu * *v } else { *v };
        }
        Ok(())
    }
}

impl ConvOptimizer {
    fn set_lr(&mut self, lr: f64) {
        match self {
            ConvOptimizer::Adam(a) => a.set_lr(lr),
            ConvOptimizer::Sgd(s) => s.lr = lr,
        }
    }

    fn tick(&mut self) {
        match self {
            ConvOptimizer::Adam(a) => a.tick(),
            ConvOptimizer::Sgd(s) => s.t += 1,
        }
    }

    fn update(&mut self, name: &str, param: &mut [f32], grad: &[f32], wd: f64) -> Result<()> {
        match self {
            ConvOptimizer::Adam(a) => a.update_host(name, param, grad, wd),
            ConvOptimizer::Sgd(s) => s.update(name, param, grad, wd),
        }
    }

    /// Step count and per-tensor state (Adam: both moments; SGD: the momentum buffer and
    /// an empty second), in the host layout.
    fn state(&self) -> (i32, Moments) {
        match self {
            ConvOptimizer::Adam(a) => a.state(),
            ConvOptimizer::Sgd(s) => (s.t, s.bufs.iter().map(|(n, b)| (n.clone(), b.clone(), Vec::new())).collect()),
        }
    }

    fn restore(&mut self, t: i32, moments: Moments) {
        match self {
            ConvOptimizer::Adam(a) => a.restore(t, moments),
            ConvOptimizer::Sgd(s) => {
                s.t = t;
                s.bufs = moments.into_iter().map(|(n, m, _)| (n, m)).collect();
            }
        }
    }
}

/// What a block's training-mode forward pass keeps for its backward pass.
struct BlockCache {
    /// The input's shape (after downsampling) and, when the block takes its gradient, the
    /// downsampling's input shape and max-pooling's choices.
    s: Nhwc,
    down: Option<(Downsample, Nhwc, Vec<u8>)>,
    cols: Vec<f32>,
    /// The convolution's output (before BatchNorm).
    z: Vec<f32>,
    /// The block's output (after ReLU).
    y: Vec<f32>,
    mean: Vec<f32>,
    inv_std: Vec<f32>,
}

/// Gradients of one block: weight (host layout), γ, β.
type BlockGrads = (Vec<f32>, Vec<f32>, Vec<f32>);

impl BlockCache {
    /// The shape of the block's output.
    fn out_shape(&self) -> Nhwc {
        Nhwc { c: self.y.len() / self.s.rows().max(1), ..self.s }
    }
}

/// A block in training mode over `x` (`s`): the convolution, BatchNorm with the batch's
/// statistics (the running ones updated as PyTorch does), ReLU.
fn block_train(b: &mut HostBlock, x: &[f32], s: Nhwc) -> BlockCache {
    let rows = s.rows();
    let mut cols = vec![0f32; rows * 9 * s.c];
    im2col(x, s, &mut cols);
    let cout = b.cout;
    let mut z = vec![0f32; rows * cout];
    matmul(&mut z, View::rows(&cols, rows, 9 * s.c), View::rows(&b.wk, 9 * s.c, cout), false);
    let (sum, sq) = column_sums2(rows, cout, |r, c| {
        let v = z[r * cout + c] as f64;
        (v, v * v)
    });
    let count = rows as f64;
    let mut mean = vec![0f32; cout];
    let mut inv_std = vec![0f32; cout];
    let momentum = BN_MOMENTUM as f64;
    for c in 0..cout {
        let m = sum[c] / count;
        let var = (sq[c] / count - m * m).max(0.0);
        mean[c] = m as f32;
        inv_std[c] = (1.0 / (var + BN_EPS as f64).sqrt()) as f32;
        let unbiased = if rows > 1 { var * count / (count - 1.0) } else { var };
        b.mean[c] = ((1.0 - momentum) * b.mean[c] as f64 + momentum * m) as f32;
        b.var[c] = ((1.0 - momentum) * b.var[c] as f64 + momentum * unbiased) as f32;
    }
    let mut y = vec![0f32; rows * cout];
    let (gamma, beta) = (&b.gamma, &b.beta);
    y.par_chunks_mut(PASS_ROWS * cout).zip(z.par_chunks(PASS_ROWS * cout)).for_each(|(y, z)| {
        for (yr, zr) in y.chunks_exact_mut(cout).zip(z.chunks_exact(cout)) {
            for c in 0..cout {
                yr[c] = (gamma[c] * (zr[c] - mean[c]) * inv_std[c] + beta[c]).max(0.0);
            }
        }
    });
    BlockCache { s, down: None, cols, z, y, mean, inv_std }
}

/// The backward pass of [`block_train`] from the gradient of its output: the gradients
/// of its weight, γ and β, and (when `input_grad`) of its input.
fn block_backward(b: &HostBlock, cache: &BlockCache, dy: &[f32], input_grad: bool) -> (BlockGrads, Option<Vec<f32>>) {
    let (s, cout) = (cache.s, b.cout);
    let rows = s.rows();
    let (mean, inv) = (&cache.mean, &cache.inv_std);
    let xhat = |r: usize, c: usize| (cache.z[r * cout + c] - mean[c]) * inv[c];
    // The ReLU's gradient passes where the output is positive.
    let g = |r: usize, c: usize| if cache.y[r * cout + c] > 0.0 { dy[r * cout + c] } else { 0.0 };
    let (dbeta, dgamma) = column_sums2(rows, cout, |r, c| {
        let gv = g(r, c) as f64;
        (gv, gv * xhat(r, c) as f64)
    });
    let count = rows as f32;
    let k: Vec<f32> = (0..cout).map(|c| b.gamma[c] * inv[c] / count).collect();
    let (db, dg): (Vec<f32>, Vec<f32>) =
        (dbeta.iter().map(|&v| v as f32).collect(), dgamma.iter().map(|&v| v as f32).collect());
    let mut dz = vec![0f32; rows * cout];
    dz.par_chunks_mut(PASS_ROWS * cout).enumerate().for_each(|(p, chunk)| {
        for (i, row) in chunk.chunks_exact_mut(cout).enumerate() {
            let r = p * PASS_ROWS + i;
            for c in 0..cout {
                row[c] = k[c] * (count * g(r, c) - db[c] - xhat(r, c) * dg[c]);
            }
        }
    });
    let kin = 9 * s.c;
    let mut dw = vec![0f32; kin * cout];
    matmul(&mut dw, View::transposed(&cache.cols, rows, kin), View::rows(&dz, rows, cout), false);
    let dx = input_grad.then(|| {
        let mut dcols = vec![0f32; rows * kin];
        matmul(&mut dcols, View::rows(&dz, rows, cout), View::transposed(&b.wk, kin, cout), false);
        col2im(&dcols, s)
    });
    ((dw, dg, db), dx)
}

/// One conv block in training mode over `x` (`s`), and its backward pass from the output
/// gradient `dy`: the gradients of its weight (host layout `[9·cin, cout]`), γ and β, and
/// of its input (for tests against other implementations; `b` is not changed).
pub fn block_gradients(b: &HostBlock, x: &[f32], s: Nhwc, dy: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut scratch = b.clone();
    let cache = block_train(&mut scratch, x, s);
    let ((dw, dg, db), dx) = block_backward(b, &cache, dy, true);
    (dw, dg, db, dx.unwrap_or_default())
}

/// Softmax cross-entropy with label smoothing `eps` (target `(1-eps)·onehot + eps/K`):
/// the mean loss and its gradient `(p - target)/n`.
pub fn smoothed_cross_entropy(logits: &[f32], labels: &[u8], classes: usize, eps: f32) -> (f32, Vec<f32>) {
    let n = labels.len();
    let mut d = vec![0f32; logits.len()];
    let mut loss = 0f64;
    let scale = 1.0 / n as f32;
    let off = eps / classes as f32;
    for ((row, drow), &label) in logits.chunks_exact(classes).zip(d.chunks_exact_mut(classes)).zip(labels) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for (e, &v) in drow.iter_mut().zip(row) {
            *e = (v - max).exp();
            sum += *e;
        }
        let lse = sum.ln() + max;
        let mut l = 0f64;
        for (k, (e, &v)) in drow.iter_mut().zip(row).enumerate() {
            let target = off + if k == label as usize { 1.0 - eps } else { 0.0 };
            l += (target * (lse - v)) as f64;
            *e = (*e / sum - target) * scale;
        }
        loss += l;
    }
    ((loss / n as f64) as f32, d)
}

/// The names of a conv block's trainable tensors (`{prefix}.conv.weight`, `.bn.weight`,
/// `.bn.bias`).
fn block_names(prefix: &str) -> [String; 3] {
    [format!("{prefix}.conv.weight"), format!("{prefix}.bn.weight"), format!("{prefix}.bn.bias")]
}

/// Trains stages `first..` of a [`ConvNet`] and its head; the stages before `first` are
/// frozen and not run here (their output is the trainer's input).
pub struct ConvTrainer {
    /// The network (its frozen stages unchanged).
    pub net: ConvNet,
    first: usize,
    optimizer: ConvOptimizer,
    weight_decay: f64,
    label_smoothing: f32,
    sums: EvalSums,
}

/// What a [`ConvTrainer`] trains with.
pub struct ConvSettings {
    /// Adam (`adam`: lr, β1, β2, ε) or SGD.
    pub optimizer: ConvOptimizer,
    /// Decoupled weight decay of the conv and linear weights.
    pub weight_decay: f64,
    /// Label smoothing ε.
    pub label_smoothing: f64,
}

impl ConvTrainer {
    /// A trainer of `net`'s stages from `first` on.
    pub fn new(net: ConvNet, first: usize, settings: ConvSettings) -> Self {
        let classes = net.linear.outputs;
        Self {
            net,
            first,
            optimizer: settings.optimizer,
            weight_decay: settings.weight_decay,
            label_smoothing: settings.label_smoothing as f32,
            sums: EvalSums::new(classes),
        }
    }

    /// The checkpoint names of every trainable tensor, in update order.
    pub fn trainable_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for i in self.first..self.net.stages.len() {
            names.extend(block_names(&layerwise_core::checkpoint::stage_name(i)));
        }
        for j in 0..self.net.head_convs.len() {
            names.extend(block_names(&layerwise_core::checkpoint::head_conv_name(j)));
        }
        names.extend(["head.linear.weight".to_string(), "head.linear.bias".to_string()]);
        names
    }

    /// One step on an NHWC batch that is stage `first`'s block input; returns the mean
    /// loss (and adds it and the predictions to this epoch's sums). Nothing is updated
    /// when the loss is not finite.
    pub fn step(&mut self, x: &[f32], s: Nhwc, labels: &[u8], lr: f64) -> Result<f32> {
        let (loss, grads) = self.gradients(x, s, labels);
        if !loss.is_finite() {
            return Ok(loss);
        }
        let names = self.trainable_names();
        self.optimizer.set_lr(lr);
        self.optimizer.tick();
        let wd = self.weight_decay;
        for ((name, g), param) in names.iter().zip(&grads).zip(self.net.trainable_mut(self.first)) {
            // Decay on the convolution and linear weights, not on BatchNorm or biases.
            let decay = if name.ends_with("conv.weight") || name == "head.linear.weight" { wd } else { 0.0 };
            self.optimizer.update(name, param, g, decay)?;
        }
        Ok(loss)
    }

    /// The mean loss of a batch in training mode and the gradient of every trainable
    /// tensor, in the order of [`ConvTrainer::trainable_names`]; adds the loss and the
    /// predictions to this epoch's sums and moves BatchNorm's running statistics (as a
    /// training step does). No gradient when the loss is not finite.
    pub fn gradients(&mut self, x: &[f32], s: Nhwc, labels: &[u8]) -> (f32, Vec<Vec<f32>>) {
        let first = self.first;
        let net = &mut self.net;
        // Forward, keeping what the backward pass needs.
        let mut caches: Vec<BlockCache> = Vec::new();
        let mut cur = block_train(&mut net.stages[first].1, x, s);
        for (d, b) in net.stages[first + 1..].iter_mut() {
            let prev = cur.out_shape();
            let (y, o, arg) = downsample(&cur.y, prev, *d);
            let mut next = block_train(b, &y, o);
            next.down = Some((*d, prev, arg));
            caches.push(std::mem::replace(&mut cur, next));
        }
        for b in net.head_convs.iter_mut() {
            let prev = cur.out_shape();
            let mut next = block_train(b, &cur.y, prev);
            next.down = Some((Downsample::None, prev, Vec::new()));
            caches.push(std::mem::replace(&mut cur, next));
        }
        caches.push(cur);
        let ls = caches[caches.len() - 1].out_shape();
        let f = head_pool(&caches[caches.len() - 1].y, ls);
        let classes = net.linear.outputs;
        let n = labels.len();
        let mut logits = vec![0f32; n * classes];
        crate::host::dense_forward(&net.linear, &f, n, &mut logits, false);
        let (loss, dlogits) = smoothed_cross_entropy(&logits, labels, classes, self.label_smoothing);
        self.sums.add_predictions(&logits, labels, loss as f64 * n as f64);
        if !loss.is_finite() {
            return (loss, Vec::new());
        }
        // Backward: the linear layer, the pooling, then every block, last first.
        let lin = &net.linear;
        let mut gw = vec![0f32; lin.inputs * classes];
        matmul(&mut gw, View::transposed(&f, n, lin.inputs), View::rows(&dlogits, n, classes), false);
        let mut gb = vec![0f32; classes];
        for row in dlogits.chunks_exact(classes) {
            for (g, v) in gb.iter_mut().zip(row) {
                *g += v;
            }
        }
        let mut df = vec![0f32; n * lin.inputs];
        matmul(&mut df, View::rows(&dlogits, n, classes), View::transposed(&lin.wt, lin.inputs, classes), false);
        let mut dy = head_pool_backward(&df, ls);
        let stage_count = net.stages.len() - first;
        let blocks = stage_count + net.head_convs.len();
        let mut grads: Vec<Vec<f32>> = Vec::with_capacity(3 * blocks + 2);
        for k in (0..blocks).rev() {
            let b = if k < stage_count { &net.stages[first + k].1 } else { &net.head_convs[k - stage_count] };
            let cache = &caches[k];
            let ((gwk, gg, gbk), dx) = block_backward(b, cache, &dy, k > 0);
            grads.extend([gbk, gg, gwk]);
            if let (Some(dx), Some((d, ps, arg))) = (dx, &cache.down) {
                dy = downsample_backward(&dx, *ps, *d, arg);
            }
        }
        grads.reverse();
        grads.extend([gw, gb]);
        (loss, grads)
    }

    /// Loss and accuracy of the steps since the last call.
    pub fn take_sums(&mut self) -> EvalSums {
        std::mem::replace(&mut self.sums, EvalSums::new(self.net.linear.outputs))
    }

    /// The running loss and accuracy of this epoch.
    pub fn running(&self) -> (f64, f64) {
        (self.sums.loss(), self.sums.accuracy())
    }

    /// The optimizer's step count and state per tensor, weights' in the checkpoint
    /// layout (PyTorch's), so a saved state does not depend on the kernels.
    pub fn optimizer_state(&self) -> (i32, Moments) {
        let (t, mut m) = self.optimizer.state();
        self.relayout(&mut m, true);
        (t, m)
    }

    /// Continue from a saved [`ConvTrainer::optimizer_state`].
    pub fn restore_optimizer(&mut self, t: i32, mut moments: Moments) {
        self.relayout(&mut moments, false);
        self.optimizer.restore(t, moments);
    }

    fn relayout(&self, moments: &mut Moments, to_checkpoint: bool) {
        let conv = |name: &str| -> Option<(usize, usize)> {
            for (i, (_, b)) in self.net.stages.iter().enumerate() {
                if name == format!("{}.conv.weight", layerwise_core::checkpoint::stage_name(i)) {
                    return Some((b.cin, b.cout));
                }
            }
            for (j, b) in self.net.head_convs.iter().enumerate() {
                if name == format!("{}.conv.weight", layerwise_core::checkpoint::head_conv_name(j)) {
                    return Some((b.cin, b.cout));
                }
            }
            None
        };
        let lin = (self.net.linear.inputs, self.net.linear.outputs);
        for (name, m, v) in moments.iter_mut() {
            for t in [m, v] {
                if t.is_empty() {
                    continue;
                }
                if let Some((cin, cout)) = conv(name) {
                    if t.len() == 9 * cin * cout {
                        *t = if to_checkpoint { wk_to_torch(t, cin, cout) } else { wk_from_torch(t, cin, cout) };
                    }
                } else if name == "head.linear.weight" && t.len() == lin.0 * lin.1 {
                    *t = if to_checkpoint {
                        crate::host::transpose(t, lin.0, lin.1)
                    } else {
                        crate::host::transpose(t, lin.1, lin.0)
                    };
                }
            }
        }
    }
}
