//! The same test binary on a CPU without AVX-512. gemm 0.19 (built with its `x86-v4`
//! feature) picks its AVX-512 kernels at run time where the CPU has them and its AVX2 + FMA
//! kernels elsewhere; this test runs its own executable under `qemu-x86_64 -cpu Haswell`
//! (an AVX2-only CPU, emulated), which takes the fallback, and compares the products, two
//! convolution blocks' gradients and a dense training step's gradients with the native
//! ones: within 1e-5 relative (‖Δ‖₂/‖native‖₂; the kernels sum in another order, so the
//! last bits differ).
//!
//! Skipped, with a printed reason, where `qemu-x86_64` is missing (Debian's `qemu-user`;
//! `.ci/run` installs it and sets `LAYERWISE_REQUIRE_QEMU=1`, which turns the skip into a
//! failure) or the machine is not x86-64.
#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use layerwise_nn::convnet::{block_gradients, new_block, HostBlock, Nhwc};
use layerwise_nn::host::{matmul, View};
use std::path::Path;
use std::process::Command;
mod common;
use common::random;

/// Where the child writes its results.
const OUT: &str = "LAYERWISE_FALLBACK_OUT";
/// The stated tolerance: ‖fallback − native‖₂ / ‖native‖₂.
const TOL: f64 = 1e-5;

/// The CPU's kernel choice, as gemm makes it.
fn features() -> (bool, bool) {
    #[cfg(target_arch = "x86_64")]
    return (std::arch::is_x86_feature_detected!("avx512f"), std::arch::is_x86_feature_detected!("fma"));
    #[cfg(not(target_arch = "x86_64"))]
    (false, false)
}

/// Products of the shapes training uses (a dense layer's 250-row products, a conv stage's
/// im2col product, transposed operands), and two conv blocks' gradients (16 and 64 input
/// channels).
fn workload() -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    for (i, &(m, k, n, ta)) in [
        (250, 3072, 32, false),
        (250, 300, 64, false),
        (250, 64, 64, true),
        (200, 9 * 16, 32, false),
        (40, 250, 24, true),
    ]
    .iter()
    .enumerate()
    {
        let a = random(m * k, 10 + i as u64);
        let b = random(k * n, 20 + i as u64);
        let mut c = vec![0f32; m * n];
        let av = if ta { View::transposed(&a, k, m) } else { View::rows(&a, m, k) };
        matmul(&mut c, av, View::rows(&b, k, n), false);
        out.push(c);
    }
    for c in [16, 64] {
        let s = Nhwc { n: 3, h: 8, w: 8, c };
        let block = HostBlock::from_block(&new_block(c, 32, 7));
        let (dw, dg, db, dx) = block_gradients(&block, &random(s.len(), 8), s, &random(s.rows() * 32, 9));
        out.extend([dw, dg, db, dx]);
    }
    out
}

fn write(path: &Path, (avx512, fma): (bool, bool), results: &[Vec<f32>]) {
    let mut text = format!("avx512f={avx512} fma={fma}\n");
    for r in results {
        text.push_str(&r.iter().map(|v| v.to_bits().to_string()).collect::<Vec<_>>().join(" "));
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

fn read(path: &Path) -> ((bool, bool), Vec<Vec<f32>>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let head = lines.next().unwrap();
    let feats = (head.contains("avx512f=true"), head.contains("fma=true"));
    let results = lines.map(|l| l.split(' ').map(|b| f32::from_bits(b.parse().unwrap())).collect()).collect();
    (feats, results)
}

/// The child's half: does nothing unless the parent asked for it.
#[test]
fn fallback_child() {
    if let Some(path) = std::env::var_os(OUT) {
        write(Path::new(&path), features(), &workload());
    }
}

#[test]
fn an_avx2_only_cpu_runs_the_same_binary_and_agrees_with_avx512() {
    let required = std::env::var("LAYERWISE_REQUIRE_QEMU").is_ok_and(|v| v == "1");
    let skip = |why: &str| {
        assert!(!required, "LAYERWISE_REQUIRE_QEMU=1 but {why}");
        eprintln!("skipped: {why}");
    };
    if !cfg!(target_arch = "x86_64") {
        return skip("not an x86-64 machine");
    }
    if Command::new("qemu-x86_64").arg("--version").output().is_err() {
        return skip("qemu-x86_64 not found (Debian: apt-get install qemu-user)");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fallback.txt");
    let exe = std::env::current_exe().unwrap();
    let run = Command::new("qemu-x86_64")
        .args(["-cpu", "Haswell"])
        .arg(&exe)
        .args(["--exact", "fallback_child", "--test-threads", "1"])
        .env(OUT, &path)
        .output()
        .unwrap();
    assert!(run.status.success(), "the binary failed under qemu: {}", String::from_utf8_lossy(&run.stderr));
    let ((avx512, fma), emulated) = read(&path);
    assert!(!avx512 && fma, "the emulated CPU must be AVX2 + FMA without AVX-512");
    let native = workload();
    eprintln!("native CPU: AVX-512 {}", features().0);
    assert_eq!(native.len(), emulated.len());
    for (i, (n, e)) in native.iter().zip(&emulated).enumerate() {
        assert_eq!(n.len(), e.len(), "result {i}: length");
        let d: f64 = n.iter().zip(e).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum();
        let norm: f64 = n.iter().map(|&a| (a as f64).powi(2)).sum();
        let rel = (d / norm).sqrt();
        eprintln!("result {i}: fallback vs native {rel:.1e}");
        assert!(rel <= TOL, "result {i}: the fallback differs by {rel:.1e} (tolerance {TOL:.0e})");
    }
}
