//! Keras-exact Adam (and AdamW's decoupled decay) over the tensors it is given.

use super::*;

/// Adam's first and second moments `(name, m, v)`, one per tensor, on the host.
pub type Moments = Vec<(String, Vec<f32>, Vec<f32>)>;

/// One tensor's optimizer state.
pub(crate) enum Slot<D: Backend> {
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
pub(crate) fn host_adam_pass(
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
            .collect::<Moments>();
        // Tensors restored but not updated since keep their saved moments.
        let mut slots = slots;
        for r in &self.restored {
            if !self.names.contains(&r.0) {
                slots.push(r.clone());
            }
        }
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
