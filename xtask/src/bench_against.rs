//! `cargo xtask bench --conv --against pytorch`: each stage of `pipelines/cnn.toml`'s
//! network, one grown stage's training step (cached input, k = 1 head, SGD with Nesterov
//! momentum, label smoothing, batch 128), in layerwise's host kernels and in PyTorch's CPU
//! build (`scripts/torch-stage-bench.py`, fp32), alternating round by round in one run, both
//! with the same number of threads. Each row also says how far layerwise is from the
//! machine's best product rate on the stage's shape (gemm 0.19, AVX-512 where the CPU has
//! it), measured in the same round.
//!
//! PyTorch comes from `scripts/torch-venv.sh` (a venv under `target/`, made once); where it
//! cannot be had, the PyTorch columns say why and layerwise is timed alone.

use crate::bench_conv::host_rows;
use crate::bench_reference::{torch_bench_rows, torch_python};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// What `--against` compares with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Against {
    /// PyTorch's CPU build (fp32), installed into a local venv by `scripts/torch-venv.sh`.
    Pytorch,
}

/// Seconds each stage is timed, per round and side.
const SECONDS: f64 = 2.0;

/// One round of PyTorch on `threads` threads: images/s by stage label.
fn torch_round(python: &Path, threads: usize, batch: usize) -> Result<BTreeMap<String, f64>> {
    let args = ["--device", "cpu", "--modes", "fp32", "--batch", &batch.to_string(), "--seconds", &SECONDS.to_string()];
    let rows = torch_bench_rows(python, threads, &args.map(String::from))?;
    Ok(rows.iter().filter_map(|r| Some((r["stage"].as_str()?.to_string(), r["images_per_s"].as_f64()?))).collect())
}

/// A stage's measurements over the rounds of one threads setting.
#[derive(Default)]
struct Cell {
    layerwise: Vec<f64>,
    pytorch: Vec<f64>,
    gflops: Vec<f64>,
    peak: Vec<f64>,
}

fn best(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

fn list(v: &[f64]) -> String {
    if v.is_empty() {
        return "—".into();
    }
    v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ")
}

/// Run the side-by-side and print its tables; write every measurement to `json` if given.
pub fn run(against: Against, threads: &[usize], rounds: usize, batch: usize, json: Option<&Path>) -> Result<()> {
    let Against::Pytorch = against;
    let python = torch_python(true).map_err(|e| {
        println!("PyTorch side skipped: {e:#}");
        e
    });
    #[cfg(target_arch = "x86_64")]
    let avx512 = std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    let avx512 = false;
    println!(
        "layerwise vs PyTorch (CPU, fp32), one grown stage's step, batch {batch}, {rounds} rounds alternating; \
         this CPU {} AVX-512 (gemm's kernels: {})",
        if avx512 { "has" } else { "has no" },
        if avx512 { "AVX-512" } else { "AVX2 + FMA" }
    );
    let mut cells: BTreeMap<(usize, usize), (String, Cell)> = BTreeMap::new();
    let mut raw = Vec::new();
    for &t in threads {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().context("cannot start a thread pool")?;
        for round in 0..rounds {
            let rows = pool.install(|| host_rows(SECONDS, batch))?;
            for (i, r) in rows.iter().enumerate() {
                let stage = r["stage"].as_str().unwrap_or_default().to_string();
                let cell = &mut cells.entry((t, i)).or_insert_with(|| (stage, Cell::default())).1;
                cell.layerwise.push(r["images_per_s"].as_f64().unwrap_or(f64::NAN));
                cell.gflops.push(r["gflops"].as_f64().unwrap_or(f64::NAN));
                cell.peak.push(r["reference_gflops"].as_f64().unwrap_or(f64::NAN));
                raw.push(serde_json::json!({ "framework": "layerwise", "threads": t, "round": round, "row": r }));
            }
            if let Ok(py) = &python {
                match torch_round(py, t, batch) {
                    Ok(by_stage) => {
                        for ((_, i), (stage, cell)) in cells.range_mut((t, 0)..(t + 1, 0)) {
                            if let Some(&v) = by_stage.get(stage.as_str()) {
                                cell.pytorch.push(v);
                                raw.push(serde_json::json!({ "framework": "pytorch", "threads": t, "round": round,
                                    "stage": stage, "stage_index": i, "images_per_s": v }));
                            }
                        }
                    }
                    Err(e) => println!("PyTorch round {round} on {t} threads failed: {e:#}"),
                }
            }
        }
    }
    println!();
    println!(
        "| stage | threads | layerwise images/s (rounds) | PyTorch images/s (rounds) | layerwise ÷ PyTorch (best) | \
         layerwise GFLOP/s | peak product GFLOP/s | of peak |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for ((t, _), (stage, c)) in &cells {
        let ratio = best(&c.layerwise) / best(&c.pytorch);
        let (g, p) = (best(&c.gflops), best(&c.peak));
        println!(
            "| {stage} | {t} | {} | {} | {} | {g:.1} | {p:.1} | {:.0}% |",
            list(&c.layerwise),
            list(&c.pytorch),
            if ratio.is_finite() { format!("{ratio:.2}") } else { "—".into() },
            100.0 * g / p
        );
    }
    // Thread scaling: the first and the last threads setting, best rounds.
    if let (Some(&lo), Some(&hi)) = (threads.first(), threads.last()) {
        if lo != hi {
            println!();
            println!("| stage | layerwise {hi} threads ÷ {lo} | PyTorch {hi} threads ÷ {lo} |");
            println!("| --- | ---: | ---: |");
            for ((_, i), (stage, c)) in cells.range((lo, 0)..(lo + 1, 0)) {
                let Some((_, h)) = cells.get(&(hi, *i)) else { continue };
                let pt = best(&h.pytorch) / best(&c.pytorch);
                println!(
                    "| {stage} | {:.2} | {} |",
                    best(&h.layerwise) / best(&c.layerwise),
                    if pt.is_finite() { format!("{pt:.2}") } else { "—".into() }
                );
            }
        }
    }
    if let Some(path) = json {
        layerwise_core::atomic::write_json_atomic(path, &raw)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
