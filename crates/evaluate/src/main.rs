//! `layerwise-evaluate`: a checkpoint on a dataset split, to JSON.

fn main() -> std::process::ExitCode {
    layerwise_core::atomic::install_signal_cleanup();
    layerwise_core::exit_code("layerwise-evaluate", layerwise_evaluate::cli::run(std::env::args()))
}
