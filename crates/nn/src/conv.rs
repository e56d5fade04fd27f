//! Host kernels for convolutional stages (the ground for greedy CNNs): a 3 × 3 convolution
//! with stride 1 and padding 1 and no bias (im2col, then one gemm 0.19 product each way),
//! 2 × 2 max-pooling, the invertible space-to-depth `psi` (PyTorch's `PixelUnshuffle(2)`),
//! and BatchNorm in training mode, each forward and backward, on NCHW host buffers.
//! Weights use PyTorch's layouts (`[out, in, 3, 3]`). Not yet used by training.
//!
//! They are tested against direct loops and finite differences, not against dfdx: the
//! published dfdx 0.13.0 compiles its `conv2d` and `pool2d` tensor ops only with its
//! `nightly` feature, which turns on `#![feature(generic_const_exprs)]` and so needs a
//! nightly compiler (`src/tensor_ops/mod.rs`, `src/lib.rs` line 178 of the crate), with
//! run-time sizes or not.

use crate::host::{matmul, View};

/// The shape of an NCHW batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nchw {
    /// Images.
    pub n: usize,
    /// Channels.
    pub c: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
}

impl Nchw {
    /// Values in the batch.
    pub fn len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }

    /// Whether it holds no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Every tap of a 3 × 3, padding-1 convolution that falls inside the image, as (index into
/// the patches `[n·h·w, c·9]`, index into the input `[n, c, h, w]`), in one fixed order.
fn taps(s: Nchw, mut f: impl FnMut(usize, usize)) {
    let (hw, k) = (s.h * s.w, s.c * 9);
    for img in 0..s.n {
        for ch in 0..s.c {
            let base = (img * s.c + ch) * hw;
            for dy in 0..3 {
                for dx in 0..3 {
                    let col = ch * 9 + dy * 3 + dx;
                    for y in 0..s.h {
                        let sy = y as isize + dy as isize - 1;
                        if sy < 0 || sy >= s.h as isize {
                            continue;
                        }
                        for xx in 0..s.w {
                            let sx = xx as isize + dx as isize - 1;
                            if sx >= 0 && sx < s.w as isize {
                                f((img * hw + y * s.w + xx) * k + col, base + sy as usize * s.w + sx as usize);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The patches of a 3 × 3, padding-1 convolution: `[n·h·w, c·9]`, row `(img, y, x)`,
/// column `(channel, dy, dx)` (the order of a `[out, in, 3, 3]` weight's rows).
pub fn im2col(x: &[f32], s: Nchw) -> Vec<f32> {
    let mut cols = vec![0f32; s.n * s.h * s.w * s.c * 9];
    taps(s, |c, i| cols[c] = x[i]);
    cols
}

/// The inverse scatter of [`im2col`]: patch gradients `[n·h·w, c·9]` summed into an
/// input gradient `[n, c, h, w]`.
pub fn col2im(cols: &[f32], s: Nchw) -> Vec<f32> {
    let mut x = vec![0f32; s.len()];
    taps(s, |c, i| x[i] += cols[c]);
    x
}

/// `[rows, c]` (row = pixel of an image) to NCHW, and back.
fn pixels_to_nchw(m: &[f32], s: Nchw) -> Vec<f32> {
    let hw = s.h * s.w;
    let mut out = vec![0f32; s.len()];
    for img in 0..s.n {
        for p in 0..hw {
            for ch in 0..s.c {
                out[(img * s.c + ch) * hw + p] = m[(img * hw + p) * s.c + ch];
            }
        }
    }
    out
}

fn nchw_to_pixels(x: &[f32], s: Nchw) -> Vec<f32> {
    let hw = s.h * s.w;
    let mut out = vec![0f32; s.len()];
    for img in 0..s.n {
        for ch in 0..s.c {
            for p in 0..hw {
                out[(img * hw + p) * s.c + ch] = x[(img * s.c + ch) * hw + p];
            }
        }
    }
    out
}

/// A 3 × 3 convolution, stride 1, padding 1, no bias: `x` `[n, c, h, w]`, `weight`
/// `[out, c, 3, 3]`; returns `[n, out, h, w]` and the patches (for the backward pass).
pub fn conv3x3_forward(x: &[f32], s: Nchw, weight: &[f32], out: usize) -> (Vec<f32>, Vec<f32>) {
    let cols = im2col(x, s);
    let rows = s.n * s.h * s.w;
    let mut y = vec![0f32; rows * out];
    matmul(&mut y, View::rows(&cols, rows, s.c * 9), View::transposed(weight, out, s.c * 9), false);
    (pixels_to_nchw(&y, Nchw { c: out, ..s }), cols)
}

/// The backward pass of [`conv3x3_forward`] from the output gradient `dy`
/// `[n, out, h, w]` and the patches it returned: (input gradient, weight gradient
/// `[out, c, 3, 3]`).
pub fn conv3x3_backward(dy: &[f32], cols: &[f32], s: Nchw, weight: &[f32], out: usize) -> (Vec<f32>, Vec<f32>) {
    let rows = s.n * s.h * s.w;
    let k = s.c * 9;
    let g = nchw_to_pixels(dy, Nchw { c: out, ..s });
    let mut dw = vec![0f32; out * k];
    matmul(&mut dw, View::transposed(&g, rows, out), View::rows(cols, rows, k), false);
    let mut dcols = vec![0f32; rows * k];
    matmul(&mut dcols, View::rows(&g, rows, out), View::rows(weight, out, k), false);
    (col2im(&dcols, s), dw)
}

/// 2 × 2 max-pooling, stride 2 (`h`, `w` even): the output and, for the backward pass,
/// the index of each output's maximum in `x` (the first one on a tie).
pub fn maxpool2_forward(x: &[f32], s: Nchw) -> (Vec<f32>, Vec<usize>) {
    let (oh, ow) = (s.h / 2, s.w / 2);
    let mut y = Vec::with_capacity(s.n * s.c * oh * ow);
    let mut arg = Vec::with_capacity(y.capacity());
    for plane in 0..s.n * s.c {
        let base = plane * s.h * s.w;
        for oy in 0..oh {
            for ox in 0..ow {
                let mut best = base + 2 * oy * s.w + 2 * ox;
                for (dy, dx) in [(0, 1), (1, 0), (1, 1)] {
                    let i = base + (2 * oy + dy) * s.w + 2 * ox + dx;
                    if x[i] > x[best] {
                        best = i;
                    }
                }
                y.push(x[best]);
                arg.push(best);
            }
        }
    }
    (y, arg)
}

/// The backward pass of [`maxpool2_forward`]: each output gradient to its maximum.
pub fn maxpool2_backward(dy: &[f32], arg: &[usize], s: Nchw) -> Vec<f32> {
    let mut dx = vec![0f32; s.len()];
    for (&g, &i) in dy.iter().zip(arg) {
        dx[i] += g;
    }
    dx
}

/// Every (output index, input index) pair of `psi`: output channel `4c + 2·dy + dx` at
/// `(y, x)` holds input channel `c` at `(2y + dy, 2x + dx)`.
fn psi_pairs(s: Nchw, mut f: impl FnMut(usize, usize)) {
    let (oh, ow) = (s.h / 2, s.w / 2);
    for img in 0..s.n {
        for ch in 0..s.c {
            for dy in 0..2 {
                for dx in 0..2 {
                    let oc = ch * 4 + dy * 2 + dx;
                    for oy in 0..oh {
                        for ox in 0..ow {
                            f(
                                ((img * 4 * s.c + oc) * oh + oy) * ow + ox,
                                ((img * s.c + ch) * s.h + 2 * oy + dy) * s.w + 2 * ox + dx,
                            );
                        }
                    }
                }
            }
        }
    }
}

/// `psi`, space to depth by 2 (PyTorch's `PixelUnshuffle(2)`): `[n, c, h, w]` to
/// `[n, 4c, h/2, w/2]`, output channel `4c + 2·dy + dx` holding pixel `(2y+dy, 2x+dx)`.
pub fn psi_forward(x: &[f32], s: Nchw) -> Vec<f32> {
    let mut y = vec![0f32; s.len()];
    psi_pairs(s, |o, i| y[o] = x[i]);
    y
}

/// The backward pass of [`psi_forward`] (a permutation: its inverse).
pub fn psi_backward(dy: &[f32], s: Nchw) -> Vec<f32> {
    let mut dx = vec![0f32; s.len()];
    psi_pairs(s, |o, i| dx[i] = dy[o]);
    dx
}

/// What BatchNorm's training-mode forward pass keeps for its backward pass.
#[derive(Debug, Clone)]
pub struct BnCache {
    /// The normalized input, `(x - mean) / sqrt(var + eps)`.
    pub xhat: Vec<f32>,
    /// `1 / sqrt(var + eps)` per channel.
    pub inv_std: Vec<f32>,
    /// The batch mean per channel.
    pub mean: Vec<f32>,
    /// The batch (biased) variance per channel.
    pub var: Vec<f32>,
}

/// BatchNorm in training mode over `[n, c, h, w]`: per channel, the batch statistics
/// (biased variance, as PyTorch normalizes with), then `gamma · xhat + beta`.
pub fn batchnorm_forward(x: &[f32], s: Nchw, gamma: &[f32], beta: &[f32], eps: f32) -> (Vec<f32>, BnCache) {
    let hw = s.h * s.w;
    let count = (s.n * hw) as f64;
    let mut y = vec![0f32; s.len()];
    let mut cache =
        BnCache { xhat: vec![0f32; s.len()], inv_std: vec![0f32; s.c], mean: vec![0f32; s.c], var: vec![0f32; s.c] };
    for ch in 0..s.c {
        let planes = (0..s.n).map(|img| (img * s.c + ch) * hw);
        let (mut sum, mut sq) = (0f64, 0f64);
        for base in planes.clone() {
            for &v in &x[base..base + hw] {
                sum += v as f64;
                sq += (v as f64) * (v as f64);
            }
        }
        let mean = sum / count;
        let var = (sq / count - mean * mean).max(0.0);
        let inv = 1.0 / (var + eps as f64).sqrt();
        (cache.mean[ch], cache.var[ch], cache.inv_std[ch]) = (mean as f32, var as f32, inv as f32);
        for base in planes {
            for i in base..base + hw {
                let xh = ((x[i] as f64 - mean) * inv) as f32;
                cache.xhat[i] = xh;
                y[i] = gamma[ch] * xh + beta[ch];
            }
        }
    }
    (y, cache)
}

/// The backward pass of [`batchnorm_forward`]: (input gradient, gamma gradient, beta
/// gradient).
pub fn batchnorm_backward(dy: &[f32], cache: &BnCache, s: Nchw, gamma: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let hw = s.h * s.w;
    let count = (s.n * hw) as f64;
    let mut dx = vec![0f32; s.len()];
    let (mut dgamma, mut dbeta) = (vec![0f32; s.c], vec![0f32; s.c]);
    for ch in 0..s.c {
        let planes: Vec<usize> = (0..s.n).map(|img| (img * s.c + ch) * hw).collect();
        let (mut sdy, mut sdyx) = (0f64, 0f64);
        for &base in &planes {
            for (&g, &xh) in dy[base..base + hw].iter().zip(&cache.xhat[base..base + hw]) {
                sdy += g as f64;
                sdyx += g as f64 * xh as f64;
            }
        }
        dgamma[ch] = sdyx as f32;
        dbeta[ch] = sdy as f32;
        let k = gamma[ch] as f64 * cache.inv_std[ch] as f64 / count;
        for &base in &planes {
            for i in base..base + hw {
                dx[i] = (k * (count * dy[i] as f64 - sdy - cache.xhat[i] as f64 * sdyx)) as f32;
            }
        }
    }
    (dx, dgamma, dbeta)
}
