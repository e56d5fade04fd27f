//! `layerwise-predict`: a trained checkpoint on image files, top-k classes.

fn main() -> std::process::ExitCode {
    layerwise_core::atomic::install_signal_cleanup();
    layerwise_core::exit_code("layerwise-predict", layerwise_predict::cli::run(std::env::args()))
}
