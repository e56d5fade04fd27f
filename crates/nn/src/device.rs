//! Choosing the compute device at run time. The training and evaluation code is generic
//! over the dfdx device; this module names the devices and builds them.

pub use layerwise_core::config::DeviceKind;

/// Whether this build can use CUDA.
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// The error a CPU-only build gives when asked for CUDA.
pub fn cuda_missing() -> anyhow::Error {
    anyhow::anyhow!(
        "this build of layerwise has no CUDA support: build it with the `cuda` feature. For the \
         orchestrator: `cargo run --release -p xtask --features cuda -- greedy --device cuda …` (the \
         `cargo xtask` alias builds without it); for the stage binaries: `cargo build --release -p \
         layerwise-train -p layerwise-evaluate --features cuda`. Both need the CUDA toolkit; without one, \
         `scripts/cuda-build.sh` builds all three from PyPI's CUDA wheels (see docs/guide.md, \"GPU\")"
    )
}

/// The CPU device, seeded.
pub fn cpu(seed: u64) -> dfdx::tensor::Cpu {
    dfdx::tensor::Cpu::seed_from_u64(seed)
}

/// The first CUDA device, seeded. cudarc 0.9 panics (rather than erring) when the driver
/// cannot initialize (no GPU visible, or no driver): that becomes an error here.
#[cfg(feature = "cuda")]
pub fn cuda(seed: u64) -> anyhow::Result<dfdx::tensor::Cuda> {
    let opened = std::panic::catch_unwind(|| dfdx::tensor::Cuda::try_seed_from_u64(seed));
    match opened {
        Ok(Ok(dev)) => Ok(dev),
        Ok(Err(e)) => Err(anyhow::anyhow!("cannot open CUDA device 0: {e:?}")),
        Err(_) => Err(anyhow::anyhow!(
            "cannot open CUDA device 0: the CUDA driver did not initialize (see the message above): is a GPU \
             visible here (nvidia-smi) and its driver installed? Use --device cpu otherwise"
        )),
    }
}

/// Run `$body` with `$dev` bound to the device `$kind` names: a generic function is
/// instantiated for each compiled-in device.
#[macro_export]
macro_rules! with_device {
    ($kind:expr, $seed:expr, |$dev:ident| $body:expr) => {{
        match $kind {
            $crate::device::DeviceKind::Cpu => {
                let $dev = $crate::device::cpu($seed);
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::device::DeviceKind::Cuda => {
                let $dev = $crate::device::cuda($seed)?;
                $body
            }
            #[cfg(not(feature = "cuda"))]
            $crate::device::DeviceKind::Cuda => Err($crate::device::cuda_missing()),
        }
    }};
}
