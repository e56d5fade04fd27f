//! Adam exactly as Keras computes it, with decoupled weight decay (AdamW, as Keras).

use super::Rule;
use crate::{Backend, Vector};
use anyhow::{anyhow, Result};
use dfdx::prelude::*;

/// Adam: `m ← β1·m + (1-β1)·g`, `v ← β2·v + (1-β2)·g²`,
/// `w ← w - lr·√(1-β2ᵗ)/(1-β1ᵗ) · m / (√v + ε)` (ε added to √v before bias correction,
/// Keras' placement). State: `m`, `v`.
#[derive(Debug, Clone, Copy)]
pub struct Adam {
    /// β1.
    pub beta1: f64,
    /// β2.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
}

impl Adam {
    /// Step `t`'s size: `lr·√(1-β2ᵗ)/(1-β1ᵗ)` (Keras' bias correction).
    fn alpha(&self, t: i32, lr: f64) -> f64 {
        let t = t.max(1);
        lr * (1.0 - self.beta2.powi(t)).sqrt() / (1.0 - self.beta1.powi(t))
    }
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
    // Each thread flushes denormals for itself (MXCSR is per thread; flush.rs).
    let step = |p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]| {
        crate::flush::denormals_are_zero(|| {
            for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
                if shrink != 0.0 {
                    *p -= shrink * *p;
                }
                *m = b1 * *m + (1.0 - b1) * g;
                *v = b2 * *v + (1.0 - b2) * g * g;
                *p -= alpha * *m / (v.sqrt() + eps);
            }
        })
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

impl Rule for Adam {
    fn buffers(&self) -> usize {
        2
    }

    fn host(&self, t: i32, lr: f64, p: &mut [f32], g: &[f32], state: &mut [Vec<f32>], wd: f64) {
        let shrink = (lr * wd) as f32;
        let alpha = self.alpha(t, lr);
        if let [m, v] = state {
            host_adam_pass(p, m, v, g, self.beta1 as f32, self.beta2 as f32, alpha as f32, self.eps as f32, shrink);
        }
    }

    fn device<S: Shape, D: Backend>(
        &self,
        t: i32,
        lr: f64,
        param: &mut Tensor<S, f32, D>,
        grad: &Tensor<S, f32, D>,
        state: &mut [Vector<D>],
        wd: f64,
    ) -> Result<()> {
        let [m, v] = state else { return Err(anyhow!("internal: Adam has two state buffers")) };
        let shrink = (lr * wd) as f32;
        let n = param.shape().num_elements();
        let (alpha, b1, b2) = (self.alpha(t, lr), self.beta1, self.beta2);
        let failed = |e: <D as HasErr>::Err| anyhow!("Adam update failed: {e:?}");
        if shrink != 0.0 {
            param.try_axpy(1.0 - shrink, &param.clone(), 0.0).map_err(failed)?;
        }
        let g = grad.clone().reshape_like(&(n,));
        m.try_axpy(b1, &g, 1.0 - b1).map_err(failed)?;
        v.try_axpy(b2, &g.square(), 1.0 - b2).map_err(failed)?;
        let step = m.clone() / (v.clone().sqrt() + self.eps as f32);
        let shape = *param.shape();
        param.try_axpy(1.0, &step.reshape_like(&shape), -alpha).map_err(failed)?;
        Ok(())
    }
}
