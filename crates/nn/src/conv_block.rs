//! A conv block (3 × 3 convolution without bias, BatchNorm, ReLU) in the host layout: its
//! weights, their initialization and their conversion from and to PyTorch's layout, and its
//! forward passes (inference, training) and backward pass.

use crate::conv_kernel::{self, Dz, Tiles};
use crate::conv_ops::{add_in_order, column_sums2, Nhwc, PASS_ROWS};
use crate::scratch;
use layerwise_core::checkpoint::Dense;
use layerwise_core::cnn::{BatchNorm, ConvBlock, Downsample, BN_EPS, BN_MOMENTUM};
use rayon::prelude::*;
use std::borrow::Cow;

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

/// A block's forward pass in inference mode over `x` (`s`, already downsampled): the
/// convolution, then BatchNorm with the running statistics and ReLU on each tile's output
/// while it is in cache.
pub(crate) fn block_infer(b: &HostBlock, x: &[f32], s: Nhwc) -> Vec<f32> {
    // Every element is written by the product.
    let mut z = scratch::take(s.rows() * b.cout);
    let (scale, shift) = b.inference_affine();
    conv_kernel::forward(x, s, &b.wk, b.cout, Tiles::default_for(s), &mut z, |_, zt| {
        for row in zt.chunks_exact_mut(b.cout) {
            for ((v, a), c) in row.iter_mut().zip(&scale).zip(&shift) {
                *v = (*v * a + c).max(0.0);
            }
        }
    });
    z
}

/// What a block's training-mode forward pass keeps for its backward pass.
pub(crate) struct BlockCache<'a> {
    /// The input's shape (after downsampling) and, when the block takes its gradient, the
    /// downsampling's input shape and max-pooling's choices.
    pub(crate) s: Nhwc,
    pub(crate) down: Option<(Downsample, Nhwc, Vec<u8>)>,
    /// The block's input (its patches are gathered again, tile by tile, for the weight
    /// gradient).
    pub(crate) x: Cow<'a, [f32]>,
    /// The convolution's output (before BatchNorm).
    pub(crate) z: Vec<f32>,
    /// The block's output (after ReLU).
    pub(crate) y: Vec<f32>,
    pub(crate) mean: Vec<f32>,
    pub(crate) inv_std: Vec<f32>,
}

/// Gradients of one block: weight (host layout), γ, β.
pub(crate) type BlockGrads = (Vec<f32>, Vec<f32>, Vec<f32>);

impl BlockCache<'_> {
    /// The shape of the block's output.
    pub(crate) fn out_shape(&self) -> Nhwc {
        Nhwc { c: self.y.len() / self.s.rows().max(1), ..self.s }
    }
}

/// A block in training mode over `x` (`s`): the convolution, BatchNorm with the batch's
/// statistics (the running ones updated as PyTorch does), ReLU.
pub(crate) fn block_train<'a>(b: &mut HostBlock, x: Cow<'a, [f32]>, s: Nhwc) -> BlockCache<'a> {
    let rows = s.rows();
    let cout = b.cout;
    // Every element is written by the product.
    let mut z = scratch::take(rows * cout);
    // Each tile's column sums (in f64, row by row) while its output is in cache; the tiles'
    // sums are added in order.
    let parts = conv_kernel::forward(&x, s, &b.wk, cout, Tiles::default_for(s), &mut z, |_, zt| {
        let (mut a, mut q) = (vec![0f64; cout], vec![0f64; cout]);
        for row in zt.chunks_exact(cout) {
            for ((a, q), &v) in a.iter_mut().zip(q.iter_mut()).zip(row) {
                let v = v as f64;
                *a += v;
                *q += v * v;
            }
        }
        (a, q)
    });
    let (sum, sq) = add_in_order(parts, cout);
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
    // Every element is written below.
    let mut y = scratch::take(rows * cout);
    let (gamma, beta, m, inv) = (&b.gamma[..cout], &b.beta[..cout], &mean[..cout], &inv_std[..cout]);
    y.par_chunks_mut(PASS_ROWS * cout).zip(z.par_chunks(PASS_ROWS * cout)).for_each(|(y, z)| {
        for (yr, zr) in y.chunks_exact_mut(cout).zip(z.chunks_exact(cout)) {
            for c in 0..cout {
                yr[c] = (gamma[c] * (zr[c] - m[c]) * inv[c] + beta[c]).max(0.0);
            }
        }
    });
    BlockCache { s, down: None, x, z, y, mean, inv_std }
}

/// The backward pass of [`block_train`] from the gradient of its output: the gradients
/// of its weight, γ and β, and (when `input_grad`) of its input.
pub(crate) fn block_backward<'a>(
    b: &HostBlock,
    cache: &'a BlockCache<'_>,
    dy: &'a [f32],
    input_grad: bool,
) -> (BlockGrads, Option<Vec<f32>>) {
    let (s, cout) = (cache.s, b.cout);
    let rows = s.rows();
    // Every per-channel slice is cut to `cout` up front, so the loops over a row's
    // channels carry no bounds checks and vectorize.
    let (mean, inv) = (&cache.mean[..cout], &cache.inv_std[..cout]);
    // Row r's slices of the convolution's output, the block's output and its gradient.
    let row = |v: &'a [f32], r: usize| &v[r * cout..(r + 1) * cout];
    // The ReLU's gradient passes where the output is positive.
    let relu_grad = |y: f32, d: f32| if y > 0.0 { d } else { 0.0 };
    let (dbeta, dgamma) = column_sums2(rows, cout, |r, a, b| {
        let (zr, yr, dyr) = (row(&cache.z, r), row(&cache.y, r), row(dy, r));
        let (a, b) = (&mut a[..cout], &mut b[..cout]);
        for c in 0..cout {
            let gv = relu_grad(yr[c], dyr[c]) as f64;
            a[c] += gv;
            b[c] += gv * ((zr[c] - mean[c]) * inv[c]) as f64;
        }
    });
    let count = rows as f32;
    let k: Vec<f32> = (0..cout).map(|c| b.gamma[c] * inv[c] / count).collect();
    let (db, dg): (Vec<f32>, Vec<f32>) =
        (dbeta.iter().map(|&v| v as f32).collect(), dgamma.iter().map(|&v| v as f32).collect());
    let (kc, dbc, dgc) = (&k[..cout], &db[..cout], &dg[..cout]);
    // The convolution's output gradient, rows `first..` into `out`.
    let dz_rows = |first: usize, out: &mut [f32]| {
        for (i, out) in out.chunks_exact_mut(cout).enumerate() {
            let r = first + i;
            let (zr, yr, dyr) = (row(&cache.z, r), row(&cache.y, r), row(dy, r));
            for c in 0..cout {
                let xhat = (zr[c] - mean[c]) * inv[c];
                out[c] = kc[c] * (count * relu_grad(yr[c], dyr[c]) - dbc[c] - xhat * dgc[c]);
            }
        }
    };
    let tiles = Tiles::default_for(s);
    if !input_grad {
        // Each tile's rows computed where its weight-gradient product reads them, in cache
        // (the same values as the whole pass below).
        let dw = conv_kernel::weight_grad_of(&cache.x, s, Dz::Rows(&dz_rows), cout, tiles);
        return ((dw, dg, db), None);
    }
    // Every element is written below.
    let mut dz = scratch::take(rows * cout);
    dz.par_chunks_mut(PASS_ROWS * cout).enumerate().for_each(|(p, chunk)| dz_rows(p * PASS_ROWS, chunk));
    let dw = conv_kernel::weight_grad(&cache.x, s, &dz, cout, tiles);
    let dx = conv_kernel::input_grad(&dz, s, &b.wk, cout, tiles);
    scratch::give(dz);
    ((dw, dg, db), Some(dx))
}

impl BlockCache<'_> {
    /// Hand the step's buffers back for the next step.
    pub(crate) fn recycle(self) {
        scratch::give(self.z);
        scratch::give(self.y);
        if let Cow::Owned(x) = self.x {
            scratch::give(x);
        }
    }
}

/// One conv block in training mode over `x` (`s`), and its backward pass from the output
/// gradient `dy`: the gradients of its weight (host layout `[9·cin, cout]`), γ and β, and
/// of its input (for tests against other implementations; `b` is not changed).
pub fn block_gradients(b: &HostBlock, x: &[f32], s: Nhwc, dy: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut scratch = b.clone();
    let cache = block_train(&mut scratch, Cow::Borrowed(x), s);
    let ((dw, dg, db), dx) = block_backward(b, &cache, dy, true);
    (dw, dg, db, dx.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::{block_backward, block_train, new_block, HostBlock};
    use crate::conv_ops::Nhwc;
    use std::borrow::Cow;

    /// The weight gradient with the output gradient computed tile by tile (a block whose
    /// input gradient is not wanted) is the one from the whole pass, bit for bit.
    #[test]
    fn the_tiled_output_gradient_gives_the_same_weight_gradient() {
        // Narrow and wide blocks.
        for (c, cout) in [(3, 8), (3, 256), (64, 8), (64, 256)] {
            let s = Nhwc { n: 5, h: 6, w: 6, c };
            let b = HostBlock::from_block(&new_block(s.c, cout, 7));
            let x: Vec<f32> = (0..s.len()).map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0).collect();
            let dy: Vec<f32> = (0..s.rows() * cout).map(|i| ((i * 53 % 89) as f32 - 44.0) / 70.0).collect();
            let cache = block_train(&mut b.clone(), Cow::Borrowed(&x), s);
            let ((fused, g1, b1), none) = block_backward(&b, &cache, &dy, false);
            let ((whole, g2, b2), dx) = block_backward(&b, &cache, &dy, true);
            assert!(none.is_none() && dx.is_some());
            assert_eq!((g1, b1), (g2, b2));
            assert!(fused == whole, "{c} in, {cout} out: the weight gradients differ");
            assert!(whole.iter().any(|&v| v != 0.0));
        }
    }
}
