//! Convolutional networks on the host: the stages of [`layerwise_core::cnn`] in the
//! layout the products want. Activations are NHWC (a batch is a `[n·h·w, c]` matrix, one
//! row a pixel), so a 3 × 3 convolution is one im2col gather and one gemm 0.19 product, and
//! BatchNorm works on the product's columns; nothing is transposed between layers. Weights
//! are kept as `[9·in, out]` (row `(dy, dx, in)`) and go back to PyTorch's `[out, in, 3, 3]`
//! whenever they leave ([`ConvNet::to_cnn`], the optimizer's state).
//!
//! - [`ConvNet::evaluate`], [`ConvNet::logits_chunks`]: inference (BatchNorm with its
//!   running statistics).
//! - [`ConvNet::prefix_features`]: the frozen stages' output, for caching.
//! - [`ConvTrainer`]: a training step of the stages from `first` on and the head, with
//!   BatchNorm in training mode, label smoothing, SGD (momentum, Nesterov) or Adam, and
//!   decoupled weight decay on the convolution and linear weights.
//!
//! - [`conv_step`]: the one choice of kernels, behind [`crate::Step`]: the host kernels
//!   ([`ConvTrainer`]) or [`DeviceConvTrainer`] (dfdx ops and autograd, [`DeviceConvNet`]),
//!   as [`crate::Kernels`] says.
//!
//! Tested against direct loops and finite differences (`tests/convnet.rs`); the device
//! path against the host kernels on dfdx's CPU (`tests/conv_device.rs`).

pub use crate::conv_block::{block_gradients, new_block, new_linear, wk_from_torch, wk_to_torch, HostBlock};
pub use crate::conv_device::{im2col_index, psi_index, window_rows, DeviceConvNet, DEVICE_CHUNK};
pub use crate::conv_device_trainer::DeviceConvTrainer;
pub use crate::conv_net::{ConvNet, INFER_CHUNK};
pub use crate::conv_ops::{chw_to_nhwc, col2im, downsample, downsample_backward, im2col, smoothed_cross_entropy, Nhwc};
pub use crate::conv_step::{cnn_tensors, cnn_with_tensors, conv_step, evaluate_cnn};
pub use crate::conv_trainer::{trainable_names, ConvSettings, ConvTrainer};
pub use crate::optim::OptimizerSpec;
pub use layerwise_core::cnn::head_pool_matrix;

/// Keep freed memory in the process instead of handing it back to the kernel (glibc's
/// `mallopt`: no `mmap` for large blocks, no trimming). A training step allocates its
/// patches and activations (tens of MB) afresh; returned to the kernel, every step's pages
/// are faulted in and zeroed again, which took half the wall time of a stage epoch here
/// (BENCHMARKS.md). Numerics are unchanged. Called once per process before training.
pub fn keep_buffers_resident() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator tunables; called before the buffers it affects.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 1 << 28);
    }
}
