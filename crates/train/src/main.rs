//! `layerwise-train`: train one depth of the greedy loop.

fn main() -> std::process::ExitCode {
    layerwise_core::atomic::install_signal_cleanup();
    layerwise_core::exit_code("layerwise-train", layerwise_train::cli::run(std::env::args()))
}
