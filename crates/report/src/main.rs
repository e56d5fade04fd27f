//! `layerwise-report`: a run folder to report.md, accuracy.svg and summary.json.

fn main() -> std::process::ExitCode {
    layerwise_core::exit_code("layerwise-report", layerwise_report::cli::run(std::env::args()))
}
