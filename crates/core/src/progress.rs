//! Shared progress display. Stages create their bars through [`add`]; an orchestrator
//! that shows its own bar over depths calls [`install_multi`] first, so every stage's bar
//! draws beneath it instead of over it.

use indicatif::{MultiProgress, ProgressBar};
use std::io::IsTerminal;
use std::sync::OnceLock;

static MULTI: OnceLock<MultiProgress> = OnceLock::new();

/// Route every bar made with [`add`] through one `MultiProgress`; returns it.
pub fn install_multi() -> &'static MultiProgress {
    MULTI.get_or_init(MultiProgress::new)
}

/// Register a bar (beneath the orchestrator's, when there is one).
pub fn add(bar: ProgressBar) -> ProgressBar {
    match MULTI.get() {
        Some(m) => m.add(bar),
        None => bar,
    }
}

/// Print a line without tearing any bar.
pub fn println(line: &str) {
    match MULTI.get() {
        Some(m) if stderr_is_terminal() => {
            let _ = m.println(line);
        }
        _ => eprintln!("{line}"),
    }
}

/// Whether bars make sense (stderr is a terminal).
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}
