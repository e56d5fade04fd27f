//! The optimizers of convolutional stages: SGD with momentum (PyTorch's form) and
//! decoupled weight decay, or Adam.

use crate::{Adam, Moments};
use anyhow::{bail, Result};

/// Which optimizer trains a convolutional stage, and its settings (the host and the
/// device trainers each build theirs from it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptimizerSpec {
    /// Adam (Keras' ε placement).
    Adam {
        /// Learning rate (before any schedule).
        lr: f64,
        /// β1.
        beta1: f64,
        /// β2.
        beta2: f64,
        /// ε.
        eps: f64,
    },
    /// SGD with momentum (PyTorch's form).
    Sgd {
        /// Learning rate (before any schedule).
        lr: f64,
        /// Momentum μ (0: plain SGD).
        momentum: f64,
        /// Nesterov's form.
        nesterov: bool,
    },
}

/// The optimizer of a [`crate::convnet::ConvTrainer`].
pub enum ConvOptimizer {
    /// Adam (Keras' ε placement).
    Adam(Adam<dfdx::tensor::Cpu>),
    /// SGD with momentum.
    Sgd(Sgd),
}

/// SGD with momentum, PyTorch's form (`v = μv + g`; step `lr·v`, or `lr·(g + μv)` with
/// Nesterov), and decoupled weight decay (`w -= lr·wd·w` before the step).
pub struct Sgd {
    lr: f64,
    momentum: f64,
    nesterov: bool,
    t: i32,
    bufs: Vec<(String, Vec<f32>)>,
}

impl Sgd {
    /// SGD with `momentum` (0: plain SGD).
    pub fn new(lr: f64, momentum: f64, nesterov: bool) -> Self {
        Self { lr, momentum, nesterov, t: 0, bufs: Vec::new() }
    }

    /// Update `param` by `grad`.
    pub fn update(&mut self, name: &str, param: &mut [f32], grad: &[f32], weight_decay: f64) -> Result<()> {
        if grad.len() != param.len() {
            bail!("internal: gradient of `{name}` has {} values for {}", grad.len(), param.len());
        }
        let i = match self.bufs.iter().position(|(n, _)| n == name) {
            Some(i) => i,
            None => {
                self.bufs.push((name.to_string(), vec![0.0; param.len()]));
                self.bufs.len() - 1
            }
        };
        let buf = &mut self.bufs[i].1;
        if buf.len() != param.len() {
            bail!("optimizer state of `{name}` has {} values for {}", buf.len(), param.len());
        }
        let (lr, mu, shrink) = (self.lr as f32, self.momentum as f32, (self.lr * weight_decay) as f32);
        for ((p, &g), v) in param.iter_mut().zip(grad).zip(buf.iter_mut()) {
            *p -= shrink * *p;
            *v = mu * *v + g;
            *p -= lr * if self.nesterov { g + mu * *v } else { *v };
        }
        Ok(())
    }
}

impl ConvOptimizer {
    /// The host optimizer of `spec`.
    pub fn new(spec: &OptimizerSpec) -> Self {
        match *spec {
            OptimizerSpec::Adam { lr, beta1, beta2, eps } => ConvOptimizer::Adam(Adam::new(lr, beta1, beta2, eps)),
            OptimizerSpec::Sgd { lr, momentum, nesterov } => ConvOptimizer::Sgd(Sgd::new(lr, momentum, nesterov)),
        }
    }

    pub(crate) fn set_lr(&mut self, lr: f64) {
        match self {
            ConvOptimizer::Adam(a) => a.set_lr(lr),
            ConvOptimizer::Sgd(s) => s.lr = lr,
        }
    }

    pub(crate) fn tick(&mut self) {
        match self {
            ConvOptimizer::Adam(a) => a.tick(),
            ConvOptimizer::Sgd(s) => s.t += 1,
        }
    }

    pub(crate) fn update(&mut self, name: &str, param: &mut [f32], grad: &[f32], wd: f64) -> Result<()> {
        match self {
            ConvOptimizer::Adam(a) => a.update_host(name, param, grad, wd),
            ConvOptimizer::Sgd(s) => s.update(name, param, grad, wd),
        }
    }

    /// Step count and per-tensor state (Adam: both moments; SGD: the momentum buffer and
    /// an empty second), in the host layout.
    pub(crate) fn state(&self) -> (i32, Moments) {
        match self {
            ConvOptimizer::Adam(a) => a.state(),
            ConvOptimizer::Sgd(s) => (s.t, s.bufs.iter().map(|(n, b)| (n.clone(), b.clone(), Vec::new())).collect()),
        }
    }

    pub(crate) fn restore(&mut self, t: i32, moments: Moments) {
        match self {
            ConvOptimizer::Adam(a) => a.restore(t, moments),
            ConvOptimizer::Sgd(s) => {
                s.t = t;
                s.bufs = moments.into_iter().map(|(n, m, _)| (n, m)).collect();
            }
        }
    }
}
