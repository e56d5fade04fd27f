//! `layerwise-export`: a trained checkpoint as an ONNX file.

fn main() -> std::process::ExitCode {
    layerwise_core::atomic::install_signal_cleanup();
    layerwise_core::exit_code("layerwise-export", layerwise_export::cli::run(std::env::args()))
}
