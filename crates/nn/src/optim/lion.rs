//! Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Algorithm 2):
//! a step of the same size for every value, its sign chosen by an interpolation of the
//! momentum and the gradient. One state buffer (half of Adam's memory); the paper uses a
//! learning rate 3-10× smaller than Adam's and a decay 3-10× larger.

use super::Rule;
use crate::{Backend, Vector};
use anyhow::{anyhow, Result};
use dfdx::prelude::*;

/// Lion: `c = β1·m + (1-β1)·g`; `w ← w - lr·wd·w - lr·sign(c)`; `m ← β2·m + (1-β2)·g`
/// (sign(0) = 0). State: `m`.
#[derive(Debug, Clone, Copy)]
pub struct Lion {
    /// β1: the interpolation whose sign is the step (0.9 in the paper).
    pub beta1: f64,
    /// β2: the momentum's decay (0.99 in the paper).
    pub beta2: f64,
}

impl Rule for Lion {
    fn buffers(&self) -> usize {
        1
    }

    fn host(&self, _t: i32, lr: f64, param: &mut [f32], grad: &[f32], state: &mut [Vec<f32>], wd: f64) {
        let Some(m) = state.first_mut() else { return };
        let (lr32, b1, b2, shrink) = (lr as f32, self.beta1 as f32, self.beta2 as f32, (lr * wd) as f32);
        for ((p, &g), m) in param.iter_mut().zip(grad).zip(m.iter_mut()) {
            let c = b1 * *m + (1.0 - b1) * g;
            let sign = if c > 0.0 {
                1.0
            } else if c < 0.0 {
                -1.0
            } else {
                0.0
            };
            *p -= shrink * *p;
            *p -= lr32 * sign;
            *m = b2 * *m + (1.0 - b2) * g;
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
        let m = state.first_mut().ok_or_else(|| anyhow!("internal: Lion has one state buffer"))?;
        let n = param.shape().num_elements();
        let shape = *param.shape();
        let (b1, b2, shrink) = (self.beta1 as f32, self.beta2 as f32, (lr * wd) as f32);
        if shrink != 0.0 {
            let p = param.clone();
            param.axpy(1.0 - shrink, &p, 0.0);
        }
        let g = grad.clone().reshape_like(&(n,));
        let c = m.clone() * b1 + g.clone() * (1.0 - b1);
        let dev = m.device().clone();
        let (ones, zeros): (Vector<D>, Vector<D>) = (dev.ones_like(&(n,)), dev.zeros_like(&(n,)));
        let sign = c.gt(0.0).choose(ones.clone(), c.lt(0.0).choose(ones.negate(), zeros));
        param.axpy(1.0, &sign.reshape_like(&shape), -lr);
        m.axpy(b2, &g, 1.0 - b2);
        Ok(())
    }
}
