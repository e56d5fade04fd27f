//! The report stage: reads a run folder (the pipeline it ran, and each depth's
//! checkpoint header, `train.json` and `eval.json`) and writes `report.md`,
//! `accuracy.svg` and `summary.json`. It needs no dataset and no device, so it runs on
//! any machine that can see the run folder.
//!
//! # Brief overview
//! - [`collect`] reads the run into a [`Summary`] (one [`DepthRow`] per completed depth).
//! - [`write_report`] writes the three files atomically.
//! - [`TUTORIAL_TEST_ACCURACY`]: the Keras tutorial's published numbers, shown beside a
//!   pipeline that sets `reference = "keras-tutorial"`.
#![deny(missing_docs)]

pub mod cli;
mod markdown;
mod plot;
pub mod sweep;

mod summary;

pub use summary::{collect, BestModel, DepthRow, Summary, TUTORIAL_TEST_ACCURACY, TUTORIAL_TEST_LOSS};

use anyhow::{Context, Result};
use layerwise_core::run::{NOTES_FILE, REPORT_FILES};
use serde::Serialize;
use std::path::Path;

const REPORT: &str = REPORT_FILES[0];
const SVG: &str = REPORT_FILES[1];
const SUMMARY: &str = REPORT_FILES[2];

/// Collect the run and write `report.md` (ending with the run's `notes.md`, if any),
/// `accuracy.svg` and `summary.json` into it.
pub fn write_report(run: &Path) -> Result<Summary> {
    let summary = collect(run)?;
    if summary.depths.is_empty() {
        anyhow::bail!(
            "{} holds no completed depth (depth-01/model.safetensors and train.json): nothing to report",
            run.display()
        );
    }
    let svg = plot::accuracy_svg(&summary)?;
    // A person's notes on the run (`notes.md` in the run folder) end the report.
    let notes_path = run.join(NOTES_FILE);
    let notes = notes_path
        .exists()
        .then(|| {
            layerwise_core::fsread::read_text_capped(&notes_path, "notes file", layerwise_core::fsread::MAX_TEXT_BYTES)
        })
        .transpose()?;
    write_three(run, &svg, &markdown::render(&summary, notes.as_deref()), &summary)?;
    Ok(summary)
}

/// Aggregate several runs (a sweep) and write `report.md`, `accuracy.svg` and
/// `summary.json` (schema [`sweep::SWEEP_SCHEMA`]) into `out`.
pub fn write_sweep_report(runs: &[std::path::PathBuf], out: &Path) -> Result<sweep::SweepSummary> {
    let summary = sweep::collect_sweep(runs)?;
    let svg = plot::sweep_svg(&summary)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    write_three(out, &svg, &sweep::render(&summary), &summary)?;
    Ok(summary)
}

/// `accuracy.svg`, `report.md` and `summary.json`, all or nothing: a full disk never
/// leaves a report whose files disagree.
fn write_three(dir: &Path, svg: &str, markdown: &str, summary: &impl Serialize) -> Result<()> {
    let mut json = serde_json::to_string_pretty(summary).context("cannot serialize the summary")?;
    json.push('\n');
    layerwise_core::atomic::write_all_atomic(&[
        (&dir.join(SVG), svg.as_bytes()),
        (&dir.join(REPORT), markdown.as_bytes()),
        (&dir.join(SUMMARY), json.as_bytes()),
    ])
}
