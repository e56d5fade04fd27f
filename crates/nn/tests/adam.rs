//! Adam against a plain f64 implementation of Keras' formula, on its three update paths.
#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use dfdx::prelude::*;
use layerwise_nn::{Adam, Matrix};

/// Keras: m ← β1 m + (1-β1) g; v ← β2 v + (1-β2) g²; w ← w − lr √(1-β2ᵗ)/(1-β1ᵗ) · m/(√v + ε).
fn reference(w0: &[f32], grads: &[Vec<f32>], lr: f64, eps: f64) -> Vec<f64> {
    let (b1, b2) = (0.9f64, 0.999f64);
    let mut w: Vec<f64> = w0.iter().map(|&x| x as f64).collect();
    let mut m = vec![0.0; w.len()];
    let mut v = vec![0.0; w.len()];
    for (t, g) in grads.iter().enumerate() {
        let t = t as i32 + 1;
        let alpha = lr * (1.0 - b2.powi(t)).sqrt() / (1.0 - b1.powi(t));
        for i in 0..w.len() {
            let g = g[i] as f64;
            m[i] = b1 * m[i] + (1.0 - b1) * g;
            v[i] = b2 * v[i] + (1.0 - b2) * g * g;
            w[i] -= alpha * m[i] / (v[i].sqrt() + eps);
        }
    }
    w
}

/// Which update path: host tensor (fused pass), dfdx ops (other devices), or a parameter
/// in host memory (the CPU's host kernels).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Path {
    HostTensor,
    Device,
    Slices,
}

fn run(rows: usize, cols: usize, scale: f32, path: Path) -> (Vec<f32>, Vec<f64>) {
    let dev = layerwise_nn::device::cpu(0);
    let n = rows * cols;
    let w0: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 100.0).collect();
    let grads: Vec<Vec<f32>> = (0..4)
        .map(|s| (0..n).map(|i| (((i + 7 * s) * 13 % 29) as f32 - 14.0) * scale * (s as f32 + 1.0)).collect())
        .collect();
    let mut w: Matrix<_> = dev.tensor_from_vec(w0.clone(), (rows, cols));
    let mut adam = Adam::new(1e-2, 0.9, 0.999, 1e-7);
    if path == Path::Device {
        adam = adam.force_device_path();
    }
    let mut host = w0.clone();
    for g in &grads {
        adam.tick();
        if path == Path::Slices {
            adam.update_host("w", &mut host, g, 0.0).unwrap();
        } else {
            let g: Matrix<_> = dev.tensor_from_vec(g.clone(), (rows, cols));
            adam.update("w", &mut w, &g).unwrap();
        }
    }
    let got = if path == Path::Slices { host } else { w.as_vec() };
    (got, reference(&w0, &grads, 1e-2, 1e-7))
}

#[test]
fn both_paths_match_keras_formula() {
    // small (single-threaded) and large (split across threads) host updates, and the
    // dfdx-op path that other devices use; gradients of 1e-6 make ε's placement matter
    // (PyTorch's placement would move these weights ~3x further per step)
    for (rows, cols) in [(3, 5), (300, 300)] {
        for scale in [1e-3, 1e-6] {
            for path in [Path::HostTensor, Path::Device, Path::Slices] {
                let (got, want) = run(rows, cols, scale, path);
                for (g, w) in got.iter().zip(&want) {
                    assert!((*g as f64 - w).abs() < 2e-6, "rows {rows} scale {scale} {path:?}: {g} vs {w}");
                }
            }
        }
    }
}
