//! A dense layer on a dfdx device, Glorot initialization, and the forward pass.

use crate::backend::{Backend, Matrix, Vector};
use dfdx::prelude::*;
use layerwise_core::checkpoint::Dense;
use rand::{Rng, SeedableRng};

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
pub(crate) fn forward_chunks<D: Backend>(
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
