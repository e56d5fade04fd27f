//! The devices' side of layerwise: the tensor types, the operations layerwise needs from
//! a dfdx device, and the kernels each device runs.

use dfdx::prelude::*;

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
