//! The denoising autoencoder that pretrains a layer without labels: decoder, masking
//! noise, gradients and reconstruction loss.

use crate::backend::{Backend, Matrix, Vector};
use crate::layer::{glorot_dense, Layer};
use crate::optim::{Moments, Optimizer, OptimizerSpec};
use anyhow::{anyhow, Result};
use dfdx::prelude::*;
use layerwise_core::checkpoint::Dense;
use rand::{Rng, SeedableRng};

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

/// A denoising autoencoder layer being pretrained, fed host rows: its encoder, decoder and
/// Adam live on device `D`, and what leaves it (snapshots, Adam's state) is on the host, as
/// [`crate::Step`] does for supervised training.
pub struct AeTrainer<D: Backend> {
    dev: D,
    encoder: Layer<D>,
    decoder: AeDecoder<D>,
    adam: Optimizer<D>,
    /// The checkpoint names: encoder weight and bias, decoder weight and bias.
    names: [String; 4],
    weight_decay: f64,
}

/// An autoencoder layer's tensors on the host: the encoder's weight `[width, inputs]` and
/// bias, the decoder's weight `[inputs, width]` (empty when tied) and bias.
#[derive(Debug, Clone, PartialEq)]
pub struct AeTensors {
    /// Encoder weight and bias.
    pub encoder: (Vec<f32>, Vec<f32>),
    /// Decoder weight (empty when tied) and bias.
    pub decoder: (Vec<f32>, Vec<f32>),
}

/// What an autoencoder trainer trains: the encoder to start from, the decoder's kind and
/// seed, the tensors' checkpoint names and the optimizer's settings.
pub struct AeSpec<'a> {
    /// The encoder's initial weights.
    pub encoder: &'a Dense,
    /// Whether the decoder reuses the encoder's weight (transposed).
    pub tied: bool,
    /// Seed of an untied decoder's initial weight.
    pub seed: u64,
    /// Encoder weight, encoder bias, decoder weight, decoder bias.
    pub names: [String; 4],
    /// The optimizer and its settings.
    pub optimizer: OptimizerSpec,
    /// Decoupled weight decay on the weights.
    pub weight_decay: f64,
}

impl<D: Backend> AeTrainer<D> {
    /// A fresh trainer: the encoder as given, a zero-bias decoder.
    pub fn new(dev: &D, spec: AeSpec<'_>) -> Self {
        let encoder = Layer::from_dense(spec.encoder, dev);
        let decoder = AeDecoder::new(&encoder, spec.tied, spec.seed, dev);
        let adam = Optimizer::new(&spec.optimizer, D::KERNELS);
        Self { dev: dev.clone(), encoder, decoder, adam, names: spec.names, weight_decay: spec.weight_decay }
    }

    /// Continue from saved tensors and Adam's saved state; refuses tensors of other sizes
    /// (a state of another network).
    pub fn restore(&mut self, saved: &AeTensors, adam_t: i32, moments: Moments) -> Result<()> {
        let (width, inputs) = (self.encoder.outputs(), self.encoder.inputs());
        let fits =
            |(w, b): &(Vec<f32>, Vec<f32>), outputs: usize, ins: usize| w.len() == outputs * ins && b.len() == outputs;
        if !fits(&saved.encoder, width, inputs) {
            return Err(anyhow!("its encoder's tensors do not fit this network"));
        }
        let dense = |(w, b): &(Vec<f32>, Vec<f32>), outputs: usize, inputs: usize| Dense {
            inputs,
            outputs,
            weight: w.clone(),
            bias: b.clone(),
        };
        self.encoder = Layer::from_dense(&dense(&saved.encoder, width, inputs), &self.dev);
        self.decoder = match &self.decoder {
            AeDecoder::Tied { .. } if saved.decoder.0.is_empty() && saved.decoder.1.len() == inputs => {
                AeDecoder::Tied { bias: self.dev.tensor_from_vec(saved.decoder.1.clone(), (inputs,)) }
            }
            AeDecoder::Untied(_) if fits(&saved.decoder, inputs, width) => {
                AeDecoder::Untied(Layer::from_dense(&dense(&saved.decoder, inputs, width), &self.dev))
            }
            _ => return Err(anyhow!("its decoder does not fit this network")),
        };
        self.adam.restore(adam_t, moments);
        Ok(())
    }

    /// One Adam step (learning rate `lr`) on `rows` host rows: `noisy` (the corrupted copy)
    /// is encoded, `clean` is the target. Returns the batch's mean squared error; when it
    /// is not finite, nothing is updated (the caller stops).
    pub fn step(&mut self, noisy: Vec<f32>, clean: &[f32], rows: usize, lr: f64) -> Result<f32> {
        let dim = self.encoder.inputs();
        let noisy: Matrix<D> = self.dev.tensor_from_vec(noisy, (rows, dim));
        let clean: Matrix<D> = self.dev.tensor_from_vec(clean.to_vec(), (rows, dim));
        let g = autoencoder_gradients(&self.encoder, &self.decoder, noisy, clean);
        if !g.loss.is_finite() {
            return Ok(g.loss);
        }
        let [ew, eb, dw, db] = &self.names;
        self.adam.start_step(lr);
        self.adam.update_decayed(ew, &mut self.encoder.weight, &g.encoder_weight, self.weight_decay)?;
        self.adam.update(eb, &mut self.encoder.bias, &g.encoder_bias)?;
        match (&mut self.decoder, &g.decoder_weight) {
            (AeDecoder::Untied(l), Some(gw)) => {
                self.adam.update_decayed(dw, &mut l.weight, gw, self.weight_decay)?;
                self.adam.update(db, &mut l.bias, &g.decoder_bias)?;
            }
            (AeDecoder::Tied { bias }, None) => self.adam.update(db, bias, &g.decoder_bias)?,
            _ => return Err(anyhow!("internal: decoder and its gradients disagree")),
        }
        Ok(g.loss)
    }

    /// [`reconstruction_loss`] of `rows` host rows `data`.
    pub fn val_loss(&self, data: &[f32], rows: usize, noise: (f64, u64), chunk: usize) -> f64 {
        reconstruction_loss(&self.dev, &self.encoder, &self.decoder, data, rows, noise, chunk)
    }

    /// The encoder's and the decoder's tensors, copied to the host.
    pub fn snapshot(&self) -> AeTensors {
        let pair = |l: &Layer<D>| (l.weight.as_vec(), l.bias.as_vec());
        AeTensors {
            encoder: pair(&self.encoder),
            decoder: match &self.decoder {
                AeDecoder::Tied { bias } => (Vec::new(), bias.as_vec()),
                AeDecoder::Untied(l) => pair(l),
            },
        }
    }

    /// Adam's step count and moments, copied to the host.
    pub fn adam_state(&self) -> (i32, Moments) {
        self.adam.state()
    }
}
