//! The one optimizer: named tensors, a step count, a learning rate, and a [`Rule`] per
//! algorithm (one file each: [`adam`], [`sgd`], [`lion`]) that updates one tensor from its
//! gradient and its state buffers, on host buffers or on dfdx device tensors.
//!
//! Tensors are identified by their checkpoint names (`hidden.0.weight`,
//! `stages.2.conv.weight`, ...); only tensors passed to an update change, so frozen ones
//! are simply never passed. The state leaves as [`Moments`] (the first buffer, and the
//! second where the algorithm has one), the same whatever the kernels.
//!
//! Adding an optimizer: a file with a [`Rule`] implementation, a variant of
//! [`OptimizerSpec`] in core's config (its settings), and a line in [`Algorithm`].

pub mod adam;
pub mod lion;
pub mod sgd;

use crate::{Backend, Kernels, Vector};
use anyhow::{anyhow, bail, Result};
use dfdx::prelude::*;
pub use layerwise_core::config::OptimizerSpec;

/// An optimizer's state per tensor `(name, first buffer, second buffer)` on the host, in
/// the checkpoint layout; the second is empty for one-buffer algorithms (SGD, Lion).
pub type Moments = Vec<(String, Vec<f32>, Vec<f32>)>;

/// What one step of an algorithm does to one tensor.
pub trait Rule {
    /// State buffers per tensor (1 or 2).
    fn buffers(&self) -> usize;

    /// Update `p` (host memory) from its gradient `g` and its state `state` at step `t`
    /// (1-based) with learning rate `lr`; decoupled weight decay `wd` shrinks `p` by
    /// `lr·wd` first.
    fn host(&self, t: i32, lr: f64, p: &mut [f32], g: &[f32], state: &mut [Vec<f32>], wd: f64);

    /// The same update with dfdx ops on `p`'s device; the state buffers are flat.
    fn device<S: Shape, D: Backend>(
        &self,
        t: i32,
        lr: f64,
        p: &mut Tensor<S, f32, D>,
        g: &Tensor<S, f32, D>,
        state: &mut [Vector<D>],
        wd: f64,
    ) -> Result<()>;
}

/// The algorithms, one variant each; built from an [`OptimizerSpec`].
#[derive(Debug, Clone, Copy)]
pub enum Algorithm {
    /// [`adam::Adam`].
    Adam(adam::Adam),
    /// [`sgd::Sgd`].
    Sgd(sgd::Sgd),
    /// [`lion::Lion`].
    Lion(lion::Lion),
}

/// Run `$body` with `$r` bound to the algorithm's [`Rule`].
macro_rules! with_rule {
    ($alg:expr, |$r:ident| $body:expr) => {
        match $alg {
            Algorithm::Adam($r) => $body,
            Algorithm::Sgd($r) => $body,
            Algorithm::Lion($r) => $body,
        }
    };
}

impl Algorithm {
    fn of(spec: &OptimizerSpec) -> Self {
        match *spec {
            OptimizerSpec::Adam { beta1, beta2, eps, .. } => Algorithm::Adam(adam::Adam { beta1, beta2, eps }),
            OptimizerSpec::Sgd { momentum, nesterov, .. } => Algorithm::Sgd(sgd::Sgd { momentum, nesterov }),
            OptimizerSpec::Lion { beta1, beta2, .. } => Algorithm::Lion(lion::Lion { beta1, beta2 }),
        }
    }

    fn buffers(&self) -> usize {
        with_rule!(self, |r| r.buffers())
    }
}

/// One tensor's optimizer state.
enum Slot<D: Backend> {
    /// A parameter that lives in host memory ([`Optimizer::update_host`]): the state only.
    Host(Vec<Vec<f32>>),
    /// A dfdx tensor updated by the host rule (the host kernels' choice for dfdx's CPU):
    /// master values, a gradient buffer and the state in host memory, copied into the
    /// tensor after each update.
    Mirrored { p: Vec<f32>, g: Vec<f32>, state: Vec<Vec<f32>> },
    /// A dfdx tensor updated with dfdx ops: the state as flat device tensors.
    Device(Vec<Vector<D>>),
}

/// The optimizer of one training run: the algorithm, the learning rate of the current
/// step, the step count and each named tensor's state.
pub struct Optimizer<D: Backend> {
    algorithm: Algorithm,
    lr: f64,
    t: i32,
    /// Whether dfdx tensors are updated by the host rule ([`Kernels::Host`]).
    mirrored: bool,
    /// The tensors' names, index = slot.
    names: Vec<String>,
    slots: Vec<Slot<D>>,
    /// State restored from a saved run, taken up by each slot when first used.
    restored: Moments,
}

impl<D: Backend> Optimizer<D> {
    /// A fresh optimizer for `spec`; dfdx tensors are updated by the kernels `kernels`
    /// names (the host rule on host buffers, or dfdx ops).
    pub fn new(spec: &OptimizerSpec, kernels: Kernels) -> Self {
        Self {
            algorithm: Algorithm::of(spec),
            lr: spec.lr(),
            t: 0,
            mirrored: kernels == Kernels::Host,
            names: Vec::new(),
            slots: Vec::new(),
            restored: Vec::new(),
        }
    }

    /// A fresh optimizer continuing from a saved [`Optimizer::state`] when given one.
    pub fn restored(spec: &OptimizerSpec, kernels: Kernels, saved: Option<(i32, Moments)>) -> Self {
        let mut o = Self::new(spec, kernels);
        if let Some((t, moments)) = saved {
            o.restore(t, moments);
        }
        o
    }

    /// Start a step at learning rate `lr`: every update until the next call uses this
    /// step count and rate.
    pub fn start_step(&mut self, lr: f64) {
        self.lr = lr;
        self.t += 1;
    }

    /// The step count and each tensor's state, copied to the host: with the parameters,
    /// everything a resumed run needs to continue bit for bit. Tensors restored but not
    /// updated since keep their saved state.
    pub fn state(&self) -> (i32, Moments) {
        let pair = |bufs: Vec<Vec<f32>>| {
            let mut it = bufs.into_iter();
            (it.next().unwrap_or_default(), it.next().unwrap_or_default())
        };
        let mut out: Moments = self
            .names
            .iter()
            .zip(&self.slots)
            .map(|(name, s)| {
                let (m, v) = match s {
                    Slot::Host(state) | Slot::Mirrored { state, .. } => pair(state.clone()),
                    Slot::Device(state) => pair(state.iter().map(|b| b.as_vec()).collect()),
                };
                (name.clone(), m, v)
            })
            .collect();
        for r in &self.restored {
            if !self.names.contains(&r.0) {
                out.push(r.clone());
            }
        }
        (self.t, out)
    }

    /// Continue from a [`Optimizer::state`]: the step count now, each tensor's state when
    /// the tensor is first updated.
    pub fn restore(&mut self, t: i32, moments: Moments) {
        self.t = t;
        self.slots.clear();
        self.names.clear();
        self.restored = moments;
    }

    /// The slot of tensor `name` (`n` values): the one it has, or a new one that `make`
    /// builds from its first state (a restored run's, else zeros).
    fn slot(&mut self, name: &str, n: usize, make: impl FnOnce(Vec<Vec<f32>>) -> Slot<D>) -> Result<usize> {
        if let Some(i) = self.names.iter().position(|k| k == name) {
            return Ok(i);
        }
        let k = self.algorithm.buffers();
        let state = match self.restored.iter().find(|(s, ..)| s == name) {
            Some((_, m, v)) if m.len() == n && (if k == 2 { v.len() == n } else { v.is_empty() }) => {
                if k == 2 {
                    vec![m.clone(), v.clone()]
                } else {
                    vec![m.clone()]
                }
            }
            Some(_) => bail!("restored optimizer state does not fit tensor {name} ({n} values)"),
            None => vec![vec![0.0; n]; k],
        };
        self.names.push(name.to_string());
        self.slots.push(make(state));
        Ok(self.slots.len() - 1)
    }

    /// Update `param`, a tensor in host memory called `name`, from its gradient `grad`,
    /// with decoupled weight decay `weight_decay`.
    pub fn update_host(&mut self, name: &str, param: &mut [f32], grad: &[f32], weight_decay: f64) -> Result<()> {
        let n = param.len();
        if grad.len() != n {
            bail!("internal: gradient of {name} has {} values, the tensor {n}", grad.len());
        }
        let slot = self.slot(name, n, Slot::Host)?;
        let (t, lr) = (self.t, self.lr);
        match &mut self.slots[slot] {
            // Decaying moments reach denormals; flushed, as TensorFlow does (flush.rs).
            Slot::Host(state) => crate::flush::denormals_are_zero(|| {
                with_rule!(&self.algorithm, |r| r.host(t, lr, param, grad, state, weight_decay))
            }),
            _ => bail!("internal: optimizer tensor {name} lives on a device"),
        }
        Ok(())
    }

    /// Update `param`, the dfdx tensor called `name`, from its gradient `grad`.
    pub fn update<S: Shape>(
        &mut self,
        name: &str,
        param: &mut Tensor<S, f32, D>,
        grad: &Tensor<S, f32, D>,
    ) -> Result<()> {
        self.update_decayed(name, param, grad, 0.0)
    }

    /// [`Optimizer::update`] with decoupled weight decay: the tensor first shrinks by
    /// `lr × weight_decay`, then takes the step.
    pub fn update_decayed<S: Shape>(
        &mut self,
        name: &str,
        param: &mut Tensor<S, f32, D>,
        grad: &Tensor<S, f32, D>,
        weight_decay: f64,
    ) -> Result<()> {
        let n = param.shape().num_elements();
        let mirrored = self.mirrored;
        let slot = self.slot(name, n, |state| {
            if mirrored {
                let mut p = vec![0.0; n];
                param.copy_into(&mut p);
                Slot::Mirrored { p, g: vec![0.0; n], state }
            } else {
                let dev = param.device().clone();
                Slot::Device(state.into_iter().map(|b| dev.tensor_from_vec(b, (n,))).collect())
            }
        })?;
        let (t, lr) = (self.t, self.lr);
        match &mut self.slots[slot] {
            Slot::Mirrored { p, g, state } => {
                grad.copy_into(g);
                with_rule!(&self.algorithm, |r| r.host(t, lr, p, g, state, weight_decay));
                param.copy_from(p);
            }
            Slot::Device(state) => {
                with_rule!(&self.algorithm, |r| r.device(t, lr, param, grad, state, weight_decay))?;
            }
            Slot::Host(_) => return Err(anyhow!("internal: optimizer tensor {name} lives in host memory")),
        }
        Ok(())
    }
}
