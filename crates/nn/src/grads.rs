//! One batch's gradients of the trainable layers and the head (dfdx's autograd, the first
//! trainable layer traced from its pre-activation).

use crate::backend::{Backend, Matrix, Vector};
use crate::layer::Layer;
use anyhow::Result;
use dfdx::prelude::*;

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
