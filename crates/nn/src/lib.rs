//! The network that training and evaluation share: dense layers built from dfdx tensors
//! with run-time shapes (dfdx 0.13's `nn::Linear` has compile-time sizes), the forward
//! pass, Glorot-uniform initialization and a Keras-exact Adam that updates only the
//! tensors it is given.
//!
//! # Brief overview
//! - [`Layer`]: weight `[out, in]` (PyTorch layout) and bias, on a dfdx device.
//! - [`forward`] / [`Layer::apply_traced`]: ReLU hidden layers and a linear head.
//! - [`Adam`]: per-tensor moments; frozen tensors are simply never given to it.
//! - [`evaluate`]: loss, predictions and the confusion matrix, without a tape.
//! - [`device`]: choosing CPU or CUDA at run time.
#![deny(missing_docs)]

mod adam;
mod augment;
mod autoencoder;
mod conv_block;
mod conv_device;
mod conv_device_trainer;
mod conv_net;
mod conv_ops;
mod conv_optim;
mod conv_step;
mod conv_trainer;
pub mod convnet;
pub mod device;
mod eval;
mod grads;
pub mod host;
mod layer;
pub mod trainer;

pub use adam::*;
pub use augment::*;
pub use autoencoder::*;
pub use eval::*;
pub use grads::*;
pub use layer::*;

pub use trainer::{device_trainer, evaluate_dense, trainer, Frozen, HostTensors, Trainer, TrainerSpec, CHUNK};

use anyhow::{anyhow, Result};
use dfdx::prelude::*;
use layerwise_core::checkpoint::Dense;
use rand::{Rng, SeedableRng};

/// A matrix on device `D`.
pub type Matrix<D> = Tensor<(usize, usize), f32, D>;
/// A vector on device `D`.
pub type Vector<D> = Tensor<(usize,), f32, D>;

/// The operations layerwise needs from a dfdx device.
pub trait Backend: Device<f32> + Clone {}
impl<D: Device<f32> + Clone> Backend for D {}
