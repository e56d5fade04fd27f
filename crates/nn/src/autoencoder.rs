//! The denoising autoencoder that pretrains a layer without labels: decoder, masking
//! noise, gradients and reconstruction loss.

use super::*;

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
