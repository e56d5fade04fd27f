//! The network that training and evaluation share: dense layers built from dfdx tensors
//! with run-time shapes (dfdx 0.13's `nn::Linear` has compile-time sizes), the forward
//! pass, Glorot-uniform initialization and the optimizers (Keras-exact Adam, SGD, Lion)
//! that update only the tensors they are given.
//!
//! # Brief overview
//! - [`Layer`]: weight `[out, in]` (PyTorch layout) and bias, on a dfdx device.
//! - [`forward`] / [`Layer::apply_traced`]: ReLU hidden layers and a linear head.
//! - [`Optimizer`]: one optimizer over named tensors (Adam, SGD, Lion: [`optim`]); frozen
//!   tensors are simply never given to it.
//! - [`evaluate`]: loss, predictions and the confusion matrix, without a tape.
//! - [`device`]: choosing CPU or CUDA at run time.
#![deny(missing_docs)]

mod augment;
mod autoencoder;
mod conv_block;
mod conv_device;
mod conv_device_trainer;
mod conv_net;
mod conv_ops;
mod conv_step;
mod conv_trainer;
pub mod convnet;
pub mod device;
mod eval;
mod grads;
pub mod host;
mod layer;
pub mod optim;
pub mod trainer;

pub use augment::*;
pub use autoencoder::*;
pub use eval::*;
pub use grads::*;
pub use layer::*;
pub use optim::{Moments, Optimizer, OptimizerSpec};

pub use trainer::{device_trainer, evaluate_dense, trainer, Frozen, HostTensors, Trainer, TrainerSpec, CHUNK};

use anyhow::{anyhow, Result};
use dfdx::prelude::*;
use layerwise_core::checkpoint::Dense;
use rand::{Rng, SeedableRng};

/// A matrix on device `D`.
pub type Matrix<D> = Tensor<(usize, usize), f32, D>;
/// A vector on device `D`.
pub type Vector<D> = Tensor<(usize,), f32, D>;

/// Which kernels run a network's steps: the explicit choice each device makes once
/// ([`Backend::KERNELS`]), and that tests make to run the dfdx path on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// layerwise's own kernels on host buffers (gemm 0.19, fused passes): the CPU's.
    Host,
    /// dfdx's tensor ops and autograd on the device: any other device's (CUDA).
    Dfdx,
}

/// The operations layerwise needs from a dfdx device, and the kernels it runs by default.
pub trait Backend: Device<f32> + Clone {
    /// The kernels training and evaluation run on this device.
    const KERNELS: Kernels;
}

impl Backend for dfdx::tensor::Cpu {
    const KERNELS: Kernels = Kernels::Host;
}

#[cfg(feature = "cuda")]
impl Backend for dfdx::tensor::Cuda {
    const KERNELS: Kernels = Kernels::Dfdx;
}
