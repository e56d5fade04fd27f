//! The reference rates the benchmarks are measured against, in the same run: plain f32
//! matrix products of the training's shapes through the CPU training kernel (gemm 0.19),
//! and through dfdx's own matmul for comparison.

use anyhow::{bail, Context, Result};
use dfdx::prelude::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

const DIM: usize = 3072;
const WIDTH: usize = 256;

/// GFLOP/s of `(m×k)·(k×n)` f32 products on the CPU through the fastest kernel here
/// (gemm 0.19, the one the CPU training path calls), the best of `seconds` of products.
pub fn matmul_gflops(m: usize, k: usize, n: usize, seconds: f64) -> f64 {
    use layerwise_nn::host::{matmul, View};
    let a: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 13.0).collect();
    let b: Vec<f32> = (0..k * n).map(|i| ((i * 11 % 17) as f32 - 8.0) / 17.0).collect();
    let mut c = vec![0f32; m * n];
    let flops = 2.0 * (m * k * n) as f64;
    let best = fastest(seconds, 10, || {
        matmul(&mut c, View::rows(&a, m, k), View::rows(&b, k, n), false);
        std::hint::black_box(&c);
    });
    flops / best / 1e9
}

/// The fastest seconds of one call of `f`, timing blocks of `reps` calls for `seconds`
/// after one warm-up call (the machine's noise only ever adds time).
pub fn fastest(seconds: f64, reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut best = f64::INFINITY;
    while start.elapsed().as_secs_f64() < seconds {
        let t = Instant::now();
        for _ in 0..reps {
            f();
        }
        best = best.min(t.elapsed().as_secs_f64() / reps as f64);
    }
    best
}

/// GFLOP/s of the same product through dfdx 0.13's own CPU matmul (gemm 0.15), for
/// comparison.
pub fn dfdx_matmul_gflops(seconds: f64) -> f64 {
    let dev = layerwise_nn::device::cpu(0);
    let a: Tensor<(usize, usize), f32, _> = dev.sample_normal_like(&(250, DIM));
    let b: Tensor<(usize, usize), f32, _> = dev.sample_normal_like(&(DIM, WIDTH));
    let flops = 2.0 * 250.0 * DIM as f64 * WIDTH as f64;
    let _ = a.clone().matmul(b.clone());
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        let c = a.clone().matmul(b.clone());
        std::hint::black_box(c.as_vec().len());
        n += 1;
    }
    n as f64 * flops / start.elapsed().as_secs_f64() / 1e9
}

/// The reference rates, measured before and after the timed work: the dominant product
/// of depth 1, that of depths ≥ 2, and dfdx's own matmul for comparison.
pub struct References {
    /// GFLOP/s of (250×3072)·(3072×256), depth 1's dominant product.
    pub big: f64,
    /// GFLOP/s of (250×256)·(256×256), that of depths ≥ 2.
    pub small: f64,
    /// GFLOP/s of the first through dfdx 0.13.
    pub dfdx: f64,
}

/// Measure them (a second each).
pub fn references() -> References {
    References {
        big: matmul_gflops(250, DIM, WIDTH, 1.0),
        small: matmul_gflops(250, WIDTH, WIDTH, 1.0),
        dfdx: dfdx_matmul_gflops(1.0),
    }
}

fn mean_references(a: &References, b: &References) -> References {
    References { big: (a.big + b.big) / 2.0, small: (a.small + b.small) / 2.0, dfdx: (a.dfdx + b.dfdx) / 2.0 }
}

/// Print the mean of two measurements, and return it.
pub fn print_references(before: &References, after: &References) -> References {
    let r = mean_references(before, after);
    println!(
        "reference (250x3072)·(3072x256), gemm 0.19 (the CPU training kernel): {:.1} GFLOP/s (before {:.1}, after {:.1})",
        r.big, before.big, after.big
    );
    println!(
        "reference (250x256)·(256x256), gemm 0.19: {:.1} GFLOP/s (before {:.1}, after {:.1})",
        r.small, before.small, after.small
    );
    println!(
        "for comparison, (250x3072)·(3072x256) through dfdx 0.13 (gemm 0.15): {:.1} GFLOP/s ({:.2}× slower)",
        r.dfdx,
        r.big / r.dfdx
    );
    r
}

/// The Python that imports torch (`scripts/torch-venv.sh`; installed there first when
/// `install`), or why there is none.
pub fn torch_python(install: bool) -> Result<PathBuf> {
    let script = crate::repo_root().join("scripts/torch-venv.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&script).stderr(Stdio::inherit());
    if !install {
        cmd.env("LAYERWISE_TORCH_NO_INSTALL", "1").stderr(Stdio::null());
    }
    let out = cmd.output().with_context(|| format!("cannot run {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} could not provide PyTorch (exit {}){}",
            script.display(),
            out.status,
            if install { "" } else { ": run it once to install PyTorch into target/torch-venv" }
        );
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// The rows `scripts/torch-stage-bench.py` writes when run by `python` with `args` on
/// `threads` threads (OMP_NUM_THREADS set to match).
pub fn torch_bench_rows(python: &Path, threads: usize, args: &[String]) -> Result<Vec<serde_json::Value>> {
    let script = crate::repo_root().join("scripts/torch-stage-bench.py");
    let dir = tempfile::tempdir()?;
    let json = dir.path().join("torch.json");
    let out = Command::new(python)
        .arg(&script)
        .args(args)
        .args(["--threads", &threads.to_string(), "--json"])
        .arg(&json)
        .env("OMP_NUM_THREADS", threads.to_string())
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed: {}", script.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    let text = std::fs::read_to_string(&json).with_context(|| {
        format!("{} wrote no {}: {}", script.display(), json.display(), String::from_utf8_lossy(&out.stdout))
    })?;
    serde_json::from_str(&text).with_context(|| format!("{}: not JSON", json.display()))
}

/// GFLOP/s of `(m×k)·(k×n)` f32 products through PyTorch's CPU build (its BLAS) on
/// `threads` threads, one per shape (`scripts/torch-stage-bench.py --matmul`), where
/// PyTorch is already installed.
pub fn torch_matmul_gflops(shapes: &[(usize, usize, usize)], threads: usize, seconds: f64) -> Result<Vec<f64>> {
    let python = torch_python(false)?;
    let labels: Vec<String> = shapes.iter().map(|(m, k, n)| format!("{m}x{k}x{n}")).collect();
    let args =
        ["--device".into(), "cpu".into(), "--matmul".into(), labels.join(","), "--seconds".into(), seconds.to_string()];
    let rows = torch_bench_rows(&python, threads, &args)?;
    labels
        .iter()
        .map(|l| {
            rows.iter()
                .find(|r| r["stage"].as_str() == Some(l.as_str()))
                .and_then(|r| r["gflops"].as_f64())
                .with_context(|| format!("scripts/torch-stage-bench.py gave no GFLOP/s for {l}"))
        })
        .collect()
}
