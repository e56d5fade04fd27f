//! `layerwise-report`: a run folder to report.md, accuracy.svg and summary.json.

fn main() -> std::process::ExitCode {
    layerwise_core::atomic::install_signal_cleanup();
    layerwise_core::exit_code("layerwise-report", layerwise_report::cli::run(std::env::args()))
}
