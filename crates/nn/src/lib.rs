//! The network that training and evaluation share: dense layers built from dfdx tensors
//! with run-time shapes (dfdx 0.13's `nn::Linear` has compile-time sizes), the forward
//! pass, Glorot-uniform initialization and a Keras-exact Adam that updates only the
//! tensors it is given.
//!
//! # Brief overview
//! - [`Layer`]: weight `[out, in]` (PyTorch layout) and bias, on a dfdx device.
//! - [`forward`] / [`Layer::apply_traced`]: ReLU hidden layers and a linear head.
//! - [`Adam`]: per-tensor moments; frozen tensors are simply never given to it.
//! - [`evaluate`]: loss, predictions and the confusion matrix, without a tape.
//! - [`device`]: choosing CPU or CUDA at run time.
#![deny(missing_docs)]

pub mod device;
pub mod host;
pub mod trainer;

pub use trainer::{device_trainer, evaluate_dense, trainer, Frozen, HostTensors, Trainer, TrainerSpec, CHUNK};

use anyhow::{anyhow, Result};
use dfdx::prelude::*;
use layerwise_core::checkpoint::Dense;
use rand::{Rng, SeedableRng};

/// A matrix on device `D`.
pub type Matrix<D> = Tensor<(usize, usize), f32, D>;
/// A vector on device `D`.
pub type Vector<D> = Tensor<(usize,), f32, D>;

/// The operations layerwise needs from a dfdx device.
pub trait Backend: Device<f32> + Clone {}
impl<D: Device<f32> + Clone> Backend for D {}

/// A dense layer on a device: `y = x Wᵀ + b`.
#[derive(Clone, Debug)]
pub struct Layer<D: Backend> {
    /// `[out, in]`.
    pub weight: Matrix<D>,
    /// `[out]`.
    pub bias: Vector<D>,
}

impl<D: Backend> Layer<D> {
    /// Copy a host layer onto the device.
    pub fn from_dense(dense: &Dense, dev: &D) -> Self {
        Self {
            weight: dev.tensor_from_vec(dense.weight.clone(), (dense.outputs, dense.inputs)),
            bias: dev.tensor_from_vec(dense.bias.clone(), (dense.outputs,)),
        }
    }

    /// Copy back to the host.
    pub fn to_dense(&self) -> Dense {
        let (outputs, inputs) = *self.weight.shape();
        Dense { inputs, outputs, weight: self.weight.as_vec(), bias: self.bias.as_vec() }
    }

    /// Inputs.
    pub fn inputs(&self) -> usize {
        self.weight.shape().1
    }

    /// Outputs.
    pub fn outputs(&self) -> usize {
        self.weight.shape().0
    }

    /// `x Wᵀ + b` with the weights off the tape: no tape at all for a plain tensor, or only
    /// the input's path for a traced one (a frozen layer, whose weights get no gradient).
    pub fn apply<T: Tape<f32, D> + Merge<NoneTape>>(
        &self,
        x: Tensor<(usize, usize), f32, D, T>,
    ) -> Tensor<(usize, usize), f32, D, T> {
        let y = x.matmul(self.weight.clone().permute());
        let shape = *y.shape();
        y + self.bias.clone().broadcast_like::<(usize, usize), Axis<0>>(&shape)
    }

    /// `x Wᵀ + b` recording the layer's weights on the tape when it trains.
    pub fn apply_traced(
        &self,
        x: Tensor<(usize, usize), f32, D, OwnedTape<f32, D>>,
        trainable: bool,
    ) -> Tensor<(usize, usize), f32, D, OwnedTape<f32, D>> {
        if !trainable {
            return self.apply(x);
        }
        let y = x.matmul(self.weight.retaped::<OwnedTape<f32, D>>().permute());
        let shape = *y.shape();
        y + self.bias.retaped::<OwnedTape<f32, D>>().broadcast_like::<(usize, usize), Axis<0>>(&shape)
    }
}

/// What one training batch gives: the mean loss, the logits and the gradient of every
/// trainable tensor, all on the device (nothing is read back: a caller on a GPU decides
/// when to synchronize).
pub struct BatchGrads<D: Backend> {
    /// Mean softmax cross-entropy of the batch.
    pub loss: Tensor<(), f32, D>,
    /// `[rows, classes]` logits.
    pub logits: Matrix<D>,
    /// `(weight, bias)` gradients of each trainable hidden layer, in order.
    pub layers: Vec<(Matrix<D>, Vector<D>)>,
    /// The output layer's, when it trains.
    pub head: Option<(Matrix<D>, Vector<D>)>,
}

/// Forward and backward for one batch through `trainable` hidden layers (each followed by
/// ReLU) and `head`, from `x`, the fixed input of the first trainable layer (images, or
/// the frozen layers' output), against one-hot targets `y`.
///
/// The first trainable layer's pre-activation is computed without a tape and traced from
/// there: its weight gradient is then one product, `gzᵀ·x`, and no gradient is ever
/// computed for the input. Every later trainable layer is traced as usual. `dropout`, when
/// not empty, holds one mask per trainable layer (0, or 1/(1-p) for kept units) that
/// multiplies its activations.
pub fn batch_gradients<D: Backend>(
    trainable: &[Layer<D>],
    head: &Layer<D>,
    head_trains: bool,
    x: Matrix<D>,
    y: Matrix<D>,
    dropout: &[Matrix<D>],
) -> Result<BatchGrads<D>> {
    let Some((first, rest)) = trainable.split_first() else {
        // A probe: only the output layer trains, on fixed features.
        if !head_trains {
            anyhow::bail!("internal: nothing trains");
        }
        let z = head.apply(x.clone());
        let zt = z.clone().traced(Gradients::leaky());
        let loss = cross_entropy_with_logits_loss(zt, y);
        let loss_value = loss.retaped::<NoneTape>();
        let grads = loss.backward();
        let gz: Matrix<D> = grads.get(&z);
        let head = Some((gz.clone().permute().matmul(x), gz.sum::<(usize,), Axis<0>>()));
        return Ok(BatchGrads { loss: loss_value, logits: z, layers: Vec::new(), head });
    };
    let z = first.apply(x.clone());
    let zt = z.clone().traced(Gradients::leaky());
    let mut h = zt.relu();
    if let Some(mask) = dropout.first() {
        h = h * mask.clone();
    }
    for (i, l) in rest.iter().enumerate() {
        h = l.apply_traced(h, true).relu();
        if let Some(mask) = dropout.get(i + 1) {
            h = h * mask.clone();
        }
    }
    let logits = head.apply_traced(h, head_trains);
    let (logits, tape) = logits.split_tape();
    let logits_value = logits.clone();
    let loss = cross_entropy_with_logits_loss(logits.put_tape(tape), y);
    let loss_value = loss.retaped::<NoneTape>();
    let grads = loss.backward();
    let gz: Matrix<D> = grads.get(&z);
    let gw = gz.clone().permute().matmul(x);
    let gb = gz.sum::<(usize,), Axis<0>>();
    let mut layers = vec![(gw, gb)];
    for l in rest {
        layers.push((grads.get(&l.weight), grads.get(&l.bias)));
    }
    let head = head_trains.then(|| (grads.get(&head.weight), grads.get(&head.bias)));
    Ok(BatchGrads { loss: loss_value, logits: logits_value, layers, head })
}

/// The decoder of a denoising autoencoder layer: the encoder's weight transposed (tied)
/// with a bias of its own, or a layer of its own (untied, `[inputs, width]`).
#[derive(Clone, Debug)]
pub enum AeDecoder<D: Backend> {
    /// `x̂ = h·W + c`, `W` the encoder's `[width, inputs]` weight.
    Tied {
        /// `c`, `[inputs]`.
        bias: Vector<D>,
    },
    /// `x̂ = h·Vᵀ + c`.
    Untied(Layer<D>),
}

impl<D: Backend> AeDecoder<D> {
    /// A decoder for `encoder`: a zero bias, and (untied) a Glorot-uniform weight.
    pub fn new(encoder: &Layer<D>, tied: bool, seed: u64, dev: &D) -> Self {
        let (width, inputs) = (encoder.outputs(), encoder.inputs());
        if tied {
            AeDecoder::Tied { bias: dev.zeros_like(&(inputs,)) }
        } else {
            AeDecoder::Untied(Layer::from_dense(&glorot_dense(width, inputs, seed), dev))
        }
    }

    /// Its bias.
    pub fn bias(&self) -> &Vector<D> {
        match self {
            AeDecoder::Tied { bias } => bias,
            AeDecoder::Untied(l) => &l.bias,
        }
    }

    /// The reconstruction of `h`, no tape.
    pub fn reconstruct(&self, encoder: &Layer<D>, h: Matrix<D>) -> Matrix<D> {
        match self {
            AeDecoder::Tied { bias } => {
                let y = h.matmul(encoder.weight.clone());
                let shape = *y.shape();
                y + bias.clone().broadcast_like::<(usize, usize), Axis<0>>(&shape)
            }
            AeDecoder::Untied(l) => l.apply(h),
        }
    }
}

/// What one autoencoder batch gives: the mean squared reconstruction error and the
/// gradients of the encoder and the decoder.
pub struct AeGrads<D: Backend> {
    /// Mean over the batch's values of `(x̂ - x)²`.
    pub loss: f32,
    /// The encoder's weight gradient (tied: the encoder's and the decoder's use, summed).
    pub encoder_weight: Matrix<D>,
    /// The encoder's bias gradient.
    pub encoder_bias: Vector<D>,
    /// The untied decoder's weight gradient.
    pub decoder_weight: Option<Matrix<D>>,
    /// The decoder's bias gradient.
    pub decoder_bias: Vector<D>,
}

/// Forward and backward of a denoising autoencoder for one batch: `h = relu(x̃Wᵀ + b)`
/// from the corrupted input `noisy`, the decoder's reconstruction `x̂`, and the mean
/// squared error against the clean input `clean`. No labels enter. As in
/// [`batch_gradients`], the encoder's pre-activation is traced from its output, so its
/// weight gradient is one product (`gzᵀ·x̃`) and none is computed for the input.
pub fn autoencoder_gradients<D: Backend>(
    encoder: &Layer<D>,
    decoder: &AeDecoder<D>,
    noisy: Matrix<D>,
    clean: Matrix<D>,
) -> AeGrads<D> {
    let z = encoder.apply(noisy.clone());
    let h = z.clone().traced(Gradients::leaky()).relu();
    let recon = match decoder {
        AeDecoder::Tied { bias } => {
            let y = h.matmul(encoder.weight.retaped::<OwnedTape<f32, D>>());
            let shape = *y.shape();
            y + bias.retaped::<OwnedTape<f32, D>>().broadcast_like::<(usize, usize), Axis<0>>(&shape)
        }
        AeDecoder::Untied(l) => l.apply_traced(h, true),
    };
    let loss = mse_loss(recon, clean);
    let loss_value = loss.as_vec()[0];
    let grads = loss.backward();
    let gz: Matrix<D> = grads.get(&z);
    let mut encoder_weight = gz.clone().permute().matmul(noisy);
    let encoder_bias = gz.sum::<(usize,), Axis<0>>();
    let (decoder_weight, decoder_bias) = match decoder {
        AeDecoder::Tied { bias } => {
            // The decoder used the encoder's weight: its share of the gradient adds up.
            encoder_weight = encoder_weight + grads.get(&encoder.weight);
            (None, grads.get(bias))
        }
        AeDecoder::Untied(l) => (Some(grads.get(&l.weight)), grads.get(&l.bias)),
    };
    AeGrads { loss: loss_value, encoder_weight, encoder_bias, decoder_weight, decoder_bias }
}

/// The denoising objective on held-out rows: the mean squared error between `rows` clean
/// host rows and their reconstruction from a corrupted copy (masking noise `corruption`,
/// drawn from `seed` and the chunk, so every call draws the same masks), `chunk` rows at a
/// time, no tape. With `corruption` 0 it is the plain reconstruction error.
pub fn reconstruction_loss<D: Backend>(
    dev: &D,
    encoder: &Layer<D>,
    decoder: &AeDecoder<D>,
    data: &[f32],
    rows: usize,
    (corruption, seed): (f64, u64),
    chunk: usize,
) -> f64 {
    let dim = data.len().checked_div(rows).unwrap_or(0);
    let mut sum = 0f64;
    for start in (0..rows).step_by(chunk.max(1)) {
        let n = chunk.min(rows - start);
        let clean = &data[start * dim..(start + n) * dim];
        let noisy = masking_noise(clean, corruption, seed ^ start as u64);
        let x = dev.tensor_from_vec(noisy, (n, dim));
        let recon = decoder.reconstruct(encoder, encoder.apply(x).relu()).as_vec();
        sum += recon.iter().zip(clean).map(|(&r, &c)| ((r - c) as f64).powi(2)).sum::<f64>();
    }
    sum / (rows * dim).max(1) as f64
}

/// Masking noise: a copy of `rows` with each value zeroed with probability `fraction`,
/// drawn from `seed` alone.
pub fn masking_noise(rows: &[f32], fraction: f64, seed: u64) -> Vec<f32> {
    if fraction == 0.0 {
        return rows.to_vec();
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    rows.iter().map(|&v| if rng.gen::<f64>() < fraction { 0.0 } else { v }).collect()
}

/// Inverted-dropout masks for activations of `rows × widths[i]`, on device `dev`:
/// [`trainer::host_dropout_masks`], copied over.
pub fn dropout_masks<D: Backend>(dev: &D, rows: usize, widths: &[usize], rate: f64, seed: u64) -> Vec<Matrix<D>> {
    trainer::host_dropout_masks(rows, widths, rate, seed)
        .into_iter()
        .zip(widths)
        .map(|(m, &w)| dev.tensor_from_vec(m, (rows, w)))
        .collect()
}

/// Random horizontal flip and random 32×32 crop of the image zero-padded by `pad` pixels,
/// per image, in place: `images` holds `[n, channels·height·width]` rows (CHW).
pub fn flip_crop(images: &mut [f32], shape: [usize; 3], pad: usize, seed: u64) {
    let [c, h, w] = shape;
    let size = c * h * w;
    if size == 0 {
        return;
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = vec![0f32; size];
    for img in images.chunks_exact_mut(size) {
        let flip = rng.gen_bool(0.5);
        let dy = rng.gen_range(0..=2 * pad) as isize - pad as isize;
        let dx = rng.gen_range(0..=2 * pad) as isize - pad as isize;
        for ch in 0..c {
            for y in 0..h {
                let sy = y as isize + dy;
                for x in 0..w {
                    let xx = if flip { w - 1 - x } else { x };
                    let sx = xx as isize + dx;
                    out[ch * h * w + y * w + x] = if sy >= 0 && sy < h as isize && sx >= 0 && sx < w as isize {
                        img[ch * h * w + sy as usize * w + sx as usize]
                    } else {
                        0.0
                    };
                }
            }
        }
        img.copy_from_slice(&out);
    }
}

/// A new layer, Glorot-uniform weights (limit √(6/(in+out)), as Keras) and zero biases.
pub fn glorot_dense(inputs: usize, outputs: usize, seed: u64) -> Dense {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let limit = (6.0 / (inputs + outputs) as f64).sqrt() as f32;
    let weight = (0..inputs * outputs).map(|_| rng.gen_range(-limit..limit)).collect();
    Dense { inputs, outputs, weight, bias: vec![0.0; outputs] }
}

/// Forward through `hidden` (each followed by ReLU) and then `head` (if any), no tape.
pub fn forward<D: Backend>(hidden: &[Layer<D>], head: Option<&Layer<D>>, mut x: Matrix<D>) -> Matrix<D> {
    for l in hidden {
        x = l.apply(x).relu();
    }
    match head {
        Some(h) => h.apply(x),
        None => x,
    }
}

/// Run [`forward`] over `rows` rows of host data, `chunk` rows at a time, no tape, handing
/// each chunk's first row and its outputs (on the host) to `each`.
fn forward_chunks<D: Backend>(
    dev: &D,
    hidden: &[Layer<D>],
    head: Option<&Layer<D>>,
    data: &[f32],
    rows: usize,
    chunk: usize,
    mut each: impl FnMut(usize, Vec<f32>),
) {
    let dim = data.len().checked_div(rows).unwrap_or(0);
    for start in (0..rows).step_by(chunk.max(1)) {
        let n = chunk.min(rows - start);
        let x = dev.tensor_from_vec(data[start * dim..(start + n) * dim].to_vec(), (n, dim));
        each(start, forward(hidden, head, x).as_vec());
    }
}

/// Run `hidden` over `rows` rows of host data in chunks, returning the outputs on the host.
/// This is how frozen layers are applied once per depth instead of once per batch.
pub fn features_host<D: Backend>(dev: &D, hidden: &[Layer<D>], data: &[f32], rows: usize, chunk: usize) -> Vec<f32> {
    let out_dim = hidden.last().map_or(data.len().checked_div(rows).unwrap_or(0), |l| l.outputs());
    let mut out = Vec::with_capacity(rows * out_dim);
    forward_chunks(dev, hidden, None, data, rows, chunk, |_, y| out.extend(y));
    out
}

/// Adam's first and second moments `(name, m, v)`, one per tensor, on the host.
pub type Moments = Vec<(String, Vec<f32>, Vec<f32>)>;

/// One tensor's optimizer state.
enum Slot<D: Backend> {
    /// CPU: master weights, moments and a gradient buffer in host memory, updated in one
    /// fused pass and copied into the tensor.
    Host { p: Vec<f32>, m: Vec<f32>, v: Vec<f32>, g: Vec<f32> },
    /// Any other device: moments as flat tensors, updated with dfdx ops.
    Device { m: Vector<D>, v: Vector<D> },
    /// Parameters that live in host memory ([`Adam::update_host`]): moments only.
    Slices { m: Vec<f32>, v: Vec<f32> },
}

/// One fused Adam pass over host buffers: decay, moments, step.
#[allow(clippy::too_many_arguments)]
fn host_adam_pass(
    p: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    g: &[f32],
    b1: f32,
    b2: f32,
    alpha: f32,
    eps: f32,
    shrink: f32,
) {
    let step = |p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]| {
        for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
            if shrink != 0.0 {
                *p -= shrink * *p;
            }
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
            *p -= alpha * *m / (v.sqrt() + eps);
        }
    };
    // Two halves on two threads: the update is memory-bound, and for a 3072×256 layer it
    // would otherwise cost as much as a matrix product.
    let n = p.len();
    if n >= 1 << 16 {
        let h = n / 2;
        let (p0, p1) = p.split_at_mut(h);
        let (m0, m1) = m.split_at_mut(h);
        let (v0, v1) = v.split_at_mut(h);
        let (g0, g1) = g.split_at(h);
        rayon::join(|| step(p0, m0, v0, g0), || step(p1, m1, v1, g1));
    } else {
        step(p, m, v, g);
    }
}

/// Adam exactly as Keras computes it: `m ← β1·m + (1-β1)·g`, `v ← β2·v + (1-β2)·g²`,
/// `w ← w - lr·√(1-β2ᵗ)/(1-β1ᵗ) · m / (√v + ε)` (ε added to √v before bias correction).
///
/// Tensors are identified by their slot number, and only the tensors passed to
/// [`Adam::update`] change: frozen layers are simply never passed in. Gradients are given
/// as tensors, so a gradient computed directly (the new layer's `gzᵀ·x`) needs no tape.
/// On the CPU the update is one fused pass over host buffers; on other devices it is a
/// handful of dfdx element-wise ops.
pub struct Adam<D: Backend> {
    lr: f64,
    betas: [f64; 2],
    eps: f64,
    t: i32,
    /// The tensors' names (as in the checkpoint: `hidden.0.weight`, `head.bias`, ...),
    /// index = slot.
    names: Vec<String>,
    slots: Vec<Slot<D>>,
    host_path: bool,
    /// Moments restored from a saved state, taken up by each slot when first used.
    restored: Moments,
}

impl<D: Backend> Adam<D> {
    /// A fresh optimizer (Keras creates one per `compile`, so one per depth).
    pub fn new(lr: f64, beta1: f64, beta2: f64, eps: f64) -> Self {
        let host_path = crate::trainer::is_cpu::<D>();
        Self {
            lr,
            betas: [beta1, beta2],
            eps,
            t: 0,
            names: Vec::new(),
            slots: Vec::new(),
            host_path,
            restored: Vec::new(),
        }
    }

    /// The step count and each slot's moments `(m, v)`, copied to the host: with the
    /// parameters, everything a resumed run needs to continue bit for bit.
    pub fn state(&self) -> (i32, Moments) {
        let slots = self
            .names
            .iter()
            .zip(&self.slots)
            .map(|(name, s)| match s {
                Slot::Host { m, v, .. } => (name.clone(), m.clone(), v.clone()),
                Slot::Device { m, v } => (name.clone(), m.as_vec(), v.as_vec()),
                Slot::Slices { m, v } => (name.clone(), m.clone(), v.clone()),
            })
            .collect();
        (self.t, slots)
    }

    /// Continue from a [`Adam::state`]: the step count now, each slot's moments when the
    /// slot is first used (its parameters are the tensor's values then).
    pub fn restore(&mut self, t: i32, moments: Moments) {
        self.t = t;
        self.slots.clear();
        self.names.clear();
        self.restored = moments;
    }

    /// Set the learning rate of the next steps (a schedule).
    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// Use the device path even on the CPU (to test that both paths agree).
    pub fn force_device_path(mut self) -> Self {
        self.host_path = false;
        self
    }

    /// Start a step: every [`Adam::update`] until the next `tick` uses the same step count.
    pub fn tick(&mut self) {
        self.t += 1;
    }

    /// Update `param`, the tensor called `name` (its name in the checkpoint), from its
    /// gradient `grad`. The optimizer keeps each named tensor's moments; a tensor never
    /// passed in (a frozen one) is never touched.
    pub fn update<S: Shape>(
        &mut self,
        name: &str,
        param: &mut Tensor<S, f32, D>,
        grad: &Tensor<S, f32, D>,
    ) -> Result<()> {
        self.update_decayed(name, param, grad, 0.0)
    }

    /// The slot of tensor `name` (`n` values): the one it has, or a new one that `make`
    /// builds from its first moments (those of a restored state, else zeros).
    fn slot(&mut self, name: &str, n: usize, make: impl FnOnce(Vec<f32>, Vec<f32>) -> Slot<D>) -> Result<usize> {
        if let Some(i) = self.names.iter().position(|k| k == name) {
            return Ok(i);
        }
        let (m, v) = match self.restored.iter().find(|(k, ..)| k == name) {
            Some((_, m, v)) if m.len() == n && v.len() == n => (m.clone(), v.clone()),
            Some(_) => anyhow::bail!("restored Adam state does not fit tensor {name} ({n} values)"),
            None => (vec![0.0; n], vec![0.0; n]),
        };
        self.names.push(name.to_string());
        self.slots.push(make(m, v));
        Ok(self.slots.len() - 1)
    }

    /// This step's size: `lr·√(1-β2ᵗ)/(1-β1ᵗ)` (Keras' bias correction).
    fn alpha(&self) -> f64 {
        let t = self.t.max(1);
        let [b1, b2] = self.betas;
        self.lr * (1.0 - b2.powi(t)).sqrt() / (1.0 - b1.powi(t))
    }

    /// [`Adam::update_decayed`] for a parameter in host memory (the CPU's host kernels):
    /// one fused pass over `param`, its gradient and the moments.
    pub fn update_host(&mut self, name: &str, param: &mut [f32], grad: &[f32], weight_decay: f64) -> Result<()> {
        let shrink = (self.lr * weight_decay) as f32;
        let n = param.len();
        if grad.len() != n {
            anyhow::bail!("internal: gradient of {name} has {} values, the tensor {n}", grad.len());
        }
        let slot = self.slot(name, n, |m, v| Slot::Slices { m, v })?;
        let (alpha, [b1, b2]) = (self.alpha(), self.betas);
        match self.slots.get_mut(slot) {
            Some(Slot::Slices { m, v }) => {
                host_adam_pass(param, m, v, grad, b1 as f32, b2 as f32, alpha as f32, self.eps as f32, shrink);
                Ok(())
            }
            _ => anyhow::bail!("internal: Adam tensor {name} lives on a device"),
        }
    }

    /// [`Adam::update`] with decoupled weight decay (AdamW, as Keras): the tensor first
    /// shrinks by `lr × weight_decay`, then takes the Adam step.
    pub fn update_decayed<S: Shape>(
        &mut self,
        name: &str,
        param: &mut Tensor<S, f32, D>,
        grad: &Tensor<S, f32, D>,
        weight_decay: f64,
    ) -> Result<()> {
        let shrink = (self.lr * weight_decay) as f32;
        let n = param.shape().num_elements();
        let host_path = self.host_path;
        let slot = self.slot(name, n, |m0, v0| {
            if host_path {
                let mut p = vec![0.0; n];
                param.copy_into(&mut p);
                Slot::Host { p, m: m0, v: v0, g: vec![0.0; n] }
            } else {
                let dev = param.device().clone();
                Slot::Device { m: dev.tensor_from_vec(m0, (n,)), v: dev.tensor_from_vec(v0, (n,)) }
            }
        })?;
        let (alpha, [b1, b2]) = (self.alpha(), self.betas);
        let failed = |e: <D as HasErr>::Err| anyhow!("Adam update failed: {e:?}");
        match self.slots.get_mut(slot) {
            Some(Slot::Host { p, m, v, g }) => {
                grad.copy_into(g);
                host_adam_pass(p, m, v, g, b1 as f32, b2 as f32, alpha as f32, self.eps as f32, shrink);
                param.copy_from(p);
            }
            Some(Slot::Slices { .. }) => anyhow::bail!("internal: Adam tensor {name} lives in host memory"),
            Some(Slot::Device { m, v }) => {
                if shrink != 0.0 {
                    param.try_axpy(1.0 - shrink, &param.clone(), 0.0).map_err(failed)?;
                }
                let g = grad.clone().reshape_like(&(n,));
                m.try_axpy(b1, &g, 1.0 - b1).map_err(failed)?;
                v.try_axpy(b2, &g.square(), 1.0 - b2).map_err(failed)?;
                let step = m.clone() / (v.clone().sqrt() + self.eps as f32);
                let shape = *param.shape();
                param.try_axpy(1.0, &step.reshape_like(&shape), -alpha).map_err(failed)?;
            }
            None => anyhow::bail!("internal: Adam has no slot for {name}"),
        }
        Ok(())
    }
}

/// Result of running a model over a split.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalSums {
    /// Sum of per-sample cross-entropy.
    pub loss_sum: f64,
    /// Correct predictions.
    pub correct: u64,
    /// `confusion[true][pred]`.
    pub confusion: Vec<Vec<u64>>,
    /// Samples seen.
    pub samples: u64,
}

impl EvalSums {
    /// Empty sums for `classes` classes.
    pub fn new(classes: usize) -> Self {
        Self { loss_sum: 0.0, correct: 0, confusion: vec![vec![0; classes]; classes], samples: 0 }
    }

    /// Add a batch of logits (`[n, classes]`, row-major, host) with their labels.
    pub fn add(&mut self, logits: &[f32], labels: &[u8]) {
        let c = self.confusion.len();
        for (row, &label) in logits.chunks_exact(c).zip(labels) {
            let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
            self.loss_sum += lse - row[label as usize] as f64;
            // first maximum wins, as numpy's argmax
            let pred = row.iter().enumerate().fold(0, |best, (i, &v)| if v > row[best] { i } else { best });
            self.confusion[label as usize][pred] += 1;
            if pred == label as usize {
                self.correct += 1;
            }
            self.samples += 1;
        }
    }

    /// Add a batch whose summed loss is known already (a training step computed it):
    /// only the predictions are taken from the logits.
    pub fn add_predictions(&mut self, logits: &[f32], labels: &[u8], loss_sum: f64) {
        let c = self.confusion.len();
        for (row, &label) in logits.chunks_exact(c).zip(labels) {
            // first maximum wins, as numpy's argmax
            let pred = row.iter().enumerate().fold(0, |best, (i, &v)| if v > row[best] { i } else { best });
            self.confusion[label as usize][pred] += 1;
            if pred == label as usize {
                self.correct += 1;
            }
            self.samples += 1;
        }
        self.loss_sum += loss_sum;
    }

    /// Mean loss.
    pub fn loss(&self) -> f64 {
        self.loss_sum / self.samples.max(1) as f64
    }

    /// Accuracy.
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.samples.max(1) as f64
    }
}

/// Evaluate `hidden` + `head` on host rows (`[rows * inputs]`), `batch` rows per forward
/// pass, no tape.
pub fn evaluate<D: Backend>(
    dev: &D,
    hidden: &[Layer<D>],
    head: &Layer<D>,
    data: &[f32],
    labels: &[u8],
    batch: usize,
) -> EvalSums {
    let mut sums = EvalSums::new(head.outputs());
    forward_chunks(dev, hidden, Some(head), data, labels.len(), batch, |start, logits| {
        sums.add(&logits, &labels[start..]);
    });
    sums
}
