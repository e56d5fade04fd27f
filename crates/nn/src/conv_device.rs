//! A convolutional network on a dfdx device (what a GPU runs): the same blocks, layout and
//! numerics as the host kernels ([`crate::convnet`]), written in dfdx tensor ops so that any
//! dfdx device runs them, with dfdx's autograd for the backward pass.
//!
//! dfdx 0.13's own `conv2d` is behind its `nightly` feature, so a 3 × 3 convolution here is
//! the host kernels' im2col product: one row gather (an index tensor built once per shape;
//! the padding taps masked to zero) and one product (cuBLAS on CUDA). Activations are NHWC
//! `[n·h·w, c]` matrices and weights `[9·in, out]`, as on the host; max-pooling is a gather of
//! the four taps and a max, psi a gather, the head's pooling a product with a fixed
//! `[h·w, 4]` averaging matrix. Everything stays on the device between the upload of a batch
//! and the read-back of its logits.

use crate::conv_block::HostBlock;
use crate::conv_net::ConvNet;
use crate::conv_ops::Nhwc;
use crate::{Backend, EvalSums, Layer, Matrix, Vector};
use dfdx::prelude::*;
use layerwise_core::cnn::{head_pool_matrix, Cnn, Downsample, BN_EPS, HEAD_POOL};
use std::cell::RefCell;
use std::collections::HashMap;

/// An index tensor on device `D`.
pub(crate) type Index<D> = Tensor<(usize,), usize, D>;
/// A matrix with tape `T`.
pub(crate) type Mat<D, T> = Tensor<(usize, usize), f32, D, T>;

/// Images per chunk of a device inference pass.
pub const DEVICE_CHUNK: usize = 1000;

/// The rows an im2col gather reads for each of the `n·h·w·9` patch entries (row `r`, tap
/// `dy·3 + dx`), and a mask that is 0 where the tap falls in the padding (row 0 is read
/// there and zeroed).
pub fn im2col_index(s: Nhwc) -> (Vec<usize>, Vec<f32>) {
    let mut idx = Vec::with_capacity(s.rows() * 9);
    let mut mask = Vec::with_capacity(s.rows() * 9);
    for n in 0..s.n {
        for y in 0..s.h {
            for x in 0..s.w {
                for dy in 0..3 {
                    for dx in 0..3 {
                        let (sy, sx) = ((y + dy).wrapping_sub(1), (x + dx).wrapping_sub(1));
                        if sy < s.h && sx < s.w {
                            idx.push((n * s.h + sy) * s.w + sx);
                            mask.push(1.0);
                        } else {
                            idx.push(0);
                            mask.push(0.0);
                        }
                    }
                }
            }
        }
    }
    (idx, mask)
}

/// The rows of the 2 × 2 window of each output pixel of a downsampling of `s` (output
/// `(n, i, j)`, tap `q = dy·2 + dx` reads `(n, 2i + dy, 2j + dx)`), `n·(h/2)·(w/2)·4` in all.
pub fn window_rows(s: Nhwc) -> Vec<usize> {
    let (oh, ow) = (s.h / 2, s.w / 2);
    let mut idx = Vec::with_capacity(s.n * oh * ow * 4);
    for n in 0..s.n {
        for i in 0..oh {
            for j in 0..ow {
                for q in 0..4 {
                    idx.push((n * s.h + 2 * i + q / 2) * s.w + 2 * j + q % 2);
                }
            }
        }
    }
    idx
}

/// Psi (PyTorch's `PixelUnshuffle(2)`) as a gather of single values: output value
/// `(pixel o, channel 4·c + q)` reads input value `(window_rows[4·o + q], c)`.
pub fn psi_index(s: Nhwc) -> Vec<usize> {
    let rows = window_rows(s);
    let mut idx = Vec::with_capacity(rows.len() * s.c);
    for o in 0..rows.len() / 4 {
        for c in 0..s.c {
            for q in 0..4 {
                idx.push(rows[4 * o + q] * s.c + c);
            }
        }
    }
    idx
}

/// A conv block on the device, in the host layout.
#[derive(Clone)]
pub(crate) struct DeviceBlock<D: Backend> {
    pub(crate) cin: usize,
    pub(crate) cout: usize,
    /// `[9·cin, cout]`.
    pub(crate) wk: Matrix<D>,
    pub(crate) gamma: Vector<D>,
    pub(crate) beta: Vector<D>,
    pub(crate) mean: Vector<D>,
    pub(crate) var: Vector<D>,
}

impl<D: Backend> DeviceBlock<D> {
    fn new(b: &HostBlock, dev: &D) -> Self {
        let v = |x: &Vec<f32>| dev.tensor_from_vec(x.clone(), (x.len(),));
        Self {
            cin: b.cin,
            cout: b.cout,
            wk: dev.tensor_from_vec(b.wk.clone(), (9 * b.cin, b.cout)),
            gamma: v(&b.gamma),
            beta: v(&b.beta),
            mean: v(&b.mean),
            var: v(&b.var),
        }
    }

    fn to_host(&self) -> HostBlock {
        HostBlock {
            cin: self.cin,
            cout: self.cout,
            wk: self.wk.as_vec(),
            gamma: self.gamma.as_vec(),
            beta: self.beta.as_vec(),
            mean: self.mean.as_vec(),
            var: self.var.as_vec(),
        }
    }
}

/// A shape's key in [`Plans`]: images, height, width, channels (0 where it does not matter).
type ShapeKey = (usize, usize, usize, usize);
/// An index tensor per shape.
type IndexCache<D> = RefCell<HashMap<ShapeKey, Index<D>>>;

/// The index tensors and pooling matrices of each shape met, built on the host once and
/// kept on the device.
pub(crate) struct Plans<D: Backend> {
    dev: D,
    im2col: IndexCache<D>,
    masks: RefCell<HashMap<ShapeKey, Vector<D>>>,
    windows: IndexCache<D>,
    psi: IndexCache<D>,
    pools: RefCell<HashMap<(usize, usize), Matrix<D>>>,
}

impl<D: Backend> Plans<D> {
    pub(crate) fn new(dev: &D) -> Self {
        Self {
            dev: dev.clone(),
            im2col: RefCell::default(),
            masks: RefCell::default(),
            windows: RefCell::default(),
            psi: RefCell::default(),
            pools: RefCell::default(),
        }
    }

    fn im2col(&self, s: Nhwc) -> (Index<D>, Vector<D>) {
        let key = (s.n, s.h, s.w, 0);
        if let (Some(i), Some(m)) = (self.im2col.borrow().get(&key), self.masks.borrow().get(&key)) {
            return (i.clone(), m.clone());
        }
        let (idx, mask) = im2col_index(s);
        let len = idx.len();
        let (i, m) = (self.dev.tensor_from_vec(idx, (len,)), self.dev.tensor_from_vec(mask, (len,)));
        self.im2col.borrow_mut().insert(key, i.clone());
        self.masks.borrow_mut().insert(key, m.clone());
        (i, m)
    }

    fn windows(&self, s: Nhwc) -> Index<D> {
        self.windows
            .borrow_mut()
            .entry((s.n, s.h, s.w, 0))
            .or_insert_with(|| {
                let idx = window_rows(s);
                let len = idx.len();
                self.dev.tensor_from_vec(idx, (len,))
            })
            .clone()
    }

    fn psi(&self, s: Nhwc) -> Index<D> {
        self.psi
            .borrow_mut()
            .entry((s.n, s.h, s.w, s.c))
            .or_insert_with(|| {
                let idx = psi_index(s);
                let len = idx.len();
                self.dev.tensor_from_vec(idx, (len,))
            })
            .clone()
    }

    fn pool(&self, h: usize, w: usize) -> Matrix<D> {
        self.pools
            .borrow_mut()
            .entry((h, w))
            .or_insert_with(|| self.dev.tensor_from_vec(head_pool_matrix(h, w), (h * w, HEAD_POOL * HEAD_POOL)))
            .clone()
    }

    /// The patches `[n·h·w, 9·c]` of `x` (`s`).
    pub(crate) fn patches<T: Tape<f32, D> + Merge<NoneTape>>(&self, x: Mat<D, T>, s: Nhwc) -> Mat<D, T> {
        let (idx, mask) = self.im2col(s);
        let g: Mat<D, T> = x.gather(idx);
        let shape = *g.shape();
        let g = g * mask.broadcast_like::<(usize, usize), Axis<1>>(&shape);
        g.reshape_like(&(s.rows(), 9 * s.c))
    }

    /// A downsampling of `x` (`s`) and the output's shape.
    pub(crate) fn downsample<T: Tape<f32, D> + Merge<NoneTape>>(
        &self,
        x: Mat<D, T>,
        s: Nhwc,
        d: Downsample,
    ) -> (Mat<D, T>, Nhwc) {
        let o = Nhwc { h: s.h / 2, w: s.w / 2, ..s };
        match d {
            Downsample::None => (x, s),
            Downsample::Maxpool => {
                let g: Mat<D, T> = x.gather(self.windows(s));
                let g = g.reshape_like(&(o.rows(), 4usize, s.c));
                (g.max::<(usize, usize), Axis<1>>(), o)
            }
            Downsample::Psi => {
                let o = Nhwc { c: 4 * s.c, ..o };
                let flat: Tensor<(usize,), f32, D, T> = x.reshape_like(&(s.len(),));
                let g: Tensor<(usize,), f32, D, T> = flat.gather(self.psi(s));
                (g.reshape_like(&(o.rows(), o.c)), o)
            }
        }
    }

    /// The head's pooling: `[n, c·4]`, channel-major (as `torch.flatten`).
    pub(crate) fn head_pool<T: Tape<f32, D> + Merge<NoneTape>>(&self, x: Mat<D, T>, s: Nhwc) -> Mat<D, T> {
        let hw = s.h * s.w;
        let per_channel = x
            .reshape_like(&(s.n, hw, s.c))
            .permute::<(usize, usize, usize), Axes3<0, 2, 1>>()
            .reshape_like(&(s.n * s.c, hw));
        let pooled = per_channel.matmul(self.pool(s.h, s.w));
        pooled.reshape_like(&(s.n, s.c * HEAD_POOL * HEAD_POOL))
    }
}

/// A convolutional network on a dfdx device.
pub struct DeviceConvNet<D: Backend> {
    pub(crate) dev: D,
    pub(crate) input: [usize; 3],
    pub(crate) stages: Vec<(Downsample, DeviceBlock<D>)>,
    pub(crate) head_convs: Vec<DeviceBlock<D>>,
    pub(crate) linear: Layer<D>,
    pub(crate) plans: Plans<D>,
}

impl<D: Backend> DeviceConvNet<D> {
    /// A host network copied onto `dev`.
    pub fn new(net: &ConvNet, dev: &D) -> Self {
        Self {
            dev: dev.clone(),
            input: net.input,
            stages: net.stages.iter().map(|(d, b)| (*d, DeviceBlock::new(b, dev))).collect(),
            head_convs: net.head_convs.iter().map(|b| DeviceBlock::new(b, dev)).collect(),
            linear: Layer::from_dense(&net.linear.to_dense(), dev),
            plans: Plans::new(dev),
        }
    }

    /// A checkpoint's network on `dev`.
    pub fn from_cnn(m: &Cnn, dev: &D) -> Self {
        Self::new(&ConvNet::from_cnn(m), dev)
    }

    /// Copied back to the host.
    pub fn to_host(&self) -> ConvNet {
        ConvNet {
            input: self.input,
            stages: self.stages.iter().map(|(d, b)| (*d, b.to_host())).collect(),
            head_convs: self.head_convs.iter().map(DeviceBlock::to_host).collect(),
            linear: crate::host::HostLayer::from_dense(&self.linear.to_dense()),
        }
    }

    /// The `(in, out)` channels of each stage's block and each head block.
    pub(crate) fn block_shapes(&self) -> crate::conv_net::BlockShapes {
        (
            self.stages.iter().map(|(_, b)| (b.cin, b.cout)).collect(),
            self.head_convs.iter().map(|b| (b.cin, b.cout)).collect(),
        )
    }

    /// Classes.
    pub fn classes(&self) -> usize {
        self.linear.outputs()
    }

    /// `n` CHW images (host) as an NHWC batch on the device.
    pub(crate) fn upload_images(&self, images: &[f32], n: usize) -> (Matrix<D>, Nhwc) {
        let [c, h, w] = self.input;
        let x: Tensor<(usize, usize, usize), f32, D> = self.dev.tensor_from_vec(images.to_vec(), (n, c, h * w));
        let x = x.permute::<(usize, usize, usize), Axes3<0, 2, 1>>().reshape_like(&(n * h * w, c));
        (x, Nhwc { n, h, w, c })
    }

    /// One block in inference mode: the convolution, BatchNorm with the running
    /// statistics, ReLU.
    fn block_infer(&self, b: &DeviceBlock<D>, x: Matrix<D>, s: Nhwc) -> Matrix<D> {
        let z = self.plans.patches(x, s).matmul(b.wk.clone());
        let shape = *z.shape();
        let scale = b.gamma.clone() / (b.var.clone() + BN_EPS).sqrt();
        let shift = b.beta.clone() - b.mean.clone() * scale.clone();
        (z * scale.broadcast_like::<(usize, usize), Axis<0>>(&shape)
            + shift.broadcast_like::<(usize, usize), Axis<0>>(&shape))
        .relu()
    }

    /// Stages `0..upto` in inference mode, then stage `upto`'s downsampling: the input of
    /// stage `upto`'s block.
    pub(crate) fn run_stages(&self, mut x: Matrix<D>, mut s: Nhwc, upto: usize) -> (Matrix<D>, Nhwc) {
        for (i, (d, b)) in self.stages.iter().enumerate().take(upto + 1) {
            (x, s) = self.plans.downsample(x, s, *d);
            if i == upto {
                break;
            }
            x = self.block_infer(b, x, s);
            s.c = b.cout;
        }
        (x, s)
    }

    /// The logits of a batch that is the input of stage `first`'s block, in inference mode.
    pub(crate) fn logits_from(&self, x: Matrix<D>, s: Nhwc, first: usize) -> Matrix<D> {
        let mut x = self.block_infer(&self.stages[first].1, x, s);
        let mut s = Nhwc { c: self.stages[first].1.cout, ..s };
        for (d, b) in &self.stages[first + 1..] {
            let (y, o) = self.plans.downsample(x, s, *d);
            x = self.block_infer(b, y, o);
            s = Nhwc { c: b.cout, ..o };
        }
        for b in &self.head_convs {
            x = self.block_infer(b, x, s);
            s.c = b.cout;
        }
        self.linear.apply(self.plans.head_pool(x, s))
    }

    /// The input of stage `first`'s block for `n` CHW images, [`DEVICE_CHUNK`] at a time,
    /// copied to the host (NHWC).
    pub fn prefix_features(&self, images: &[f32], n: usize, first: usize) -> (Vec<f32>, Nhwc) {
        let dim: usize = self.input.iter().product();
        let mut out = Vec::new();
        let mut shape = None;
        for start in (0..n).step_by(DEVICE_CHUNK) {
            let m = DEVICE_CHUNK.min(n - start);
            let (x, s) = self.upload_images(&images[start * dim..(start + m) * dim], m);
            let (f, s) = self.run_stages(x, s, first);
            out.extend(f.as_vec());
            shape = Some(s);
        }
        let [c, h, w] = self.input;
        (out, shape.map_or(Nhwc { n: 0, h, w, c }, |s| Nhwc { n, ..s }))
    }

    /// Loss, accuracy and confusion over `n` CHW images with `labels`, in inference mode.
    pub fn evaluate(&self, images: &[f32], labels: &[u8]) -> EvalSums {
        let mut sums = EvalSums::new(self.classes());
        self.logits_chunks(images, labels.len(), |start, logits| sums.add(logits, &labels[start..]));
        sums
    }

    /// The logits of `n` CHW images, [`DEVICE_CHUNK`] at a time, each chunk's first image
    /// and logits (on the host) handed to `each`.
    pub fn logits_chunks(&self, images: &[f32], n: usize, mut each: impl FnMut(usize, &[f32])) {
        let dim: usize = self.input.iter().product();
        for start in (0..n).step_by(DEVICE_CHUNK) {
            let m = DEVICE_CHUNK.min(n - start);
            let (x, s) = self.upload_images(&images[start * dim..(start + m) * dim], m);
            let (f, s) = self.run_stages(x, s, 0);
            each(start, &self.logits_from(f, s, 0).as_vec());
        }
    }

    /// Evaluate from resident features `x` (`s`) that are stage `first`'s block input.
    pub(crate) fn evaluate_resident(&self, x: &Matrix<D>, s: Nhwc, labels: &[u8], first: usize) -> EvalSums {
        let mut sums = EvalSums::new(self.classes());
        for start in (0..s.n).step_by(DEVICE_CHUNK) {
            let m = DEVICE_CHUNK.min(s.n - start);
            let idx: Index<D> = self.dev.tensor_from_vec((start..start + m).collect(), (m,));
            let xb: Matrix<D> = x.clone().gather(idx);
            let xb = xb.reshape_like(&(m * s.h * s.w, s.c));
            let logits = self.logits_from(xb, Nhwc { n: m, ..s }, first).as_vec();
            sums.add(&logits, &labels[start..]);
        }
        sums
    }
}
