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
//!
//! The front door: module declarations and re-exports only. Each file imports what it
//! uses from the module that defines it; no module imports this root back
//! (`xtask/tests/architecture.rs`).

mod augment;
mod autoencoder;
mod backend;
mod conv_block;
mod conv_device;
mod conv_device_trainer;
pub mod conv_kernel;
mod conv_net;
mod conv_ops;
mod conv_step;
mod conv_trainer;
pub mod convnet;
pub mod dense_step;
pub mod device;
mod eval;
mod flush;
mod grads;
pub mod host;
mod layer;
pub mod optim;
mod scratch;
pub mod step;

pub use augment::{dropout_masks, flip_crop, host_dropout_masks};
pub use autoencoder::{
    autoencoder_gradients, masking_noise, reconstruction_loss, AeDecoder, AeGrads, AeSpec, AeTensors, AeTrainer,
};
pub use backend::{Backend, Kernels, Matrix, Vector};
pub use dense_step::{dense_step, evaluate_dense, DenseSpec, Frozen, CHUNK};
pub use eval::{evaluate, EvalSums};
pub use grads::{batch_gradients, BatchGrads};
pub use layer::{features_host, forward, glorot_dense, Layer};
pub use optim::{Moments, Optimizer, OptimizerSpec};
pub use step::{Named, Step};
