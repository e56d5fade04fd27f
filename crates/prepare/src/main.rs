//! `layerwise-prepare`: CIFAR-10 → one normalized safetensors dataset.

fn main() -> std::process::ExitCode {
    layerwise_core::atomic::install_signal_cleanup();
    layerwise_core::exit_code("layerwise-prepare", layerwise_prepare::cli::run(std::env::args()))
}
