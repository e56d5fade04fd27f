//! SGD with momentum, PyTorch's form, and decoupled weight decay.

use super::Rule;
use crate::{Backend, Vector};
use anyhow::{anyhow, Result};
use dfdx::prelude::*;

/// SGD with momentum μ: `v ← μ·v + g`; step `lr·v`, or `lr·(g + μ·v)` with Nesterov;
/// decoupled weight decay (`w ← w - lr·wd·w` before the step). State: `v`.
#[derive(Debug, Clone, Copy)]
pub struct Sgd {
    /// Momentum μ (0: plain SGD).
    pub momentum: f64,
    /// Nesterov's form.
    pub nesterov: bool,
}

impl Rule for Sgd {
    fn buffers(&self) -> usize {
        1
    }

    fn host(&self, _t: i32, lr: f64, param: &mut [f32], grad: &[f32], state: &mut [Vec<f32>], wd: f64) {
        let Some(buf) = state.first_mut() else { return };
        let (lr32, mu, shrink) = (lr as f32, self.momentum as f32, (lr * wd) as f32);
        for ((p, &g), v) in param.iter_mut().zip(grad).zip(buf.iter_mut()) {
            *p -= shrink * *p;
            *v = mu * *v + g;
            *p -= lr32 * if self.nesterov { g + mu * *v } else { *v };
        }
    }

    fn device<S: Shape, D: Backend>(
        &self,
        _t: i32,
        lr: f64,
        param: &mut Tensor<S, f32, D>,
        grad: &Tensor<S, f32, D>,
        state: &mut [Vector<D>],
        wd: f64,
    ) -> Result<()> {
        let buf = state.first_mut().ok_or_else(|| anyhow!("internal: SGD has one state buffer"))?;
        let n = param.shape().num_elements();
        let (mu, shrink) = (self.momentum, lr * wd);
        let shape = *param.shape();
        if shrink != 0.0 {
            let p = param.clone();
            param.axpy(1.0 - shrink, &p, 0.0);
        }
        let g = grad.clone().reshape_like(&(n,));
        buf.axpy(mu, &g, 1.0);
        let step = if self.nesterov { g + buf.clone() * mu as f32 } else { buf.clone() };
        param.axpy(1.0, &step.reshape_like(&shape), -lr);
        Ok(())
    }
}
