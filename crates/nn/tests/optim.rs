//! The optimizer against plain f64 implementations of each algorithm's formula, on its
//! three update paths (host buffers, a dfdx tensor through the host rule, dfdx ops), and
//! a saved-then-restored run against an uninterrupted one.
#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use dfdx::prelude::*;
use layerwise_nn::{Kernels, Matrix, Optimizer, OptimizerSpec};

const ADAM: OptimizerSpec = OptimizerSpec::Adam { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-7 };
const SGD: OptimizerSpec = OptimizerSpec::Sgd { lr: 1e-2, momentum: 0.9, nesterov: true };
const LION: OptimizerSpec = OptimizerSpec::Lion { lr: 1e-3, beta1: 0.9, beta2: 0.99 };
const DECAY: f64 = 0.1;

/// Each algorithm's update, in f64, written from its paper or framework, with decoupled
/// weight decay `wd`.
fn reference(spec: OptimizerSpec, w0: &[f32], grads: &[Vec<f32>], wd: f64) -> Vec<f64> {
    let mut w: Vec<f64> = w0.iter().map(|&x| x as f64).collect();
    let (mut m, mut v) = (vec![0.0; w.len()], vec![0.0; w.len()]);
    for (t, g) in grads.iter().enumerate() {
        let t = t as i32 + 1;
        for i in 0..w.len() {
            let g = g[i] as f64;
            match spec {
                // Keras: m ← β1 m + (1-β1) g; v ← β2 v + (1-β2) g²; w ← w − lr √(1-β2ᵗ)/(1-β1ᵗ) · m/(√v + ε).
                OptimizerSpec::Adam { lr, beta1: b1, beta2: b2, eps } => {
                    let alpha = lr * (1.0 - b2.powi(t)).sqrt() / (1.0 - b1.powi(t));
                    w[i] -= lr * wd * w[i];
                    m[i] = b1 * m[i] + (1.0 - b1) * g;
                    v[i] = b2 * v[i] + (1.0 - b2) * g * g;
                    w[i] -= alpha * m[i] / (v[i].sqrt() + eps);
                }
                // PyTorch: b ← μ b + g; w ← w − lr (g + μ b) (Nesterov).
                OptimizerSpec::Sgd { lr, momentum: mu, .. } => {
                    w[i] -= lr * wd * w[i];
                    m[i] = mu * m[i] + g;
                    w[i] -= lr * (g + mu * m[i]);
                }
                // Chen et al. 2023, Algorithm 2.
                OptimizerSpec::Lion { lr, beta1: b1, beta2: b2 } => {
                    let c = b1 * m[i] + (1.0 - b1) * g;
                    w[i] -= lr * wd * w[i]
                        + lr * if c > 0.0 {
                            1.0
                        } else if c < 0.0 {
                            -1.0
                        } else {
                            0.0
                        };
                    m[i] = b2 * m[i] + (1.0 - b2) * g;
                }
            }
        }
    }
    w
}

/// Which update path: host buffers (the host kernels), a dfdx tensor through the host
/// rule, or dfdx ops (what other devices run).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Path {
    Slices,
    Mirrored,
    Device,
}

fn data(n: usize, scale: f32) -> (Vec<f32>, Vec<Vec<f32>>) {
    let w0: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 100.0).collect();
    let grads = (0..4)
        .map(|s| (0..n).map(|i| (((i + 7 * s) * 13 % 29) as f32 - 14.0) * scale * (s as f32 + 1.0)).collect())
        .collect();
    (w0, grads)
}

/// Runs `grads` through the optimizer on `path`; after `save_at` steps (if given) its
/// state is saved and a new optimizer continues from it.
fn run(
    spec: OptimizerSpec,
    rows: usize,
    cols: usize,
    grads: &[Vec<f32>],
    w0: &[f32],
    path: Path,
    wd: f64,
    save_at: Option<usize>,
) -> Vec<f32> {
    let dev = layerwise_nn::device::cpu(0);
    let kernels = if path == Path::Device { Kernels::Dfdx } else { Kernels::Host };
    let mut w: Matrix<_> = dev.tensor_from_vec(w0.to_vec(), (rows, cols));
    let mut host = w0.to_vec();
    let mut opt = Optimizer::new(&spec, kernels);
    for (k, g) in grads.iter().enumerate() {
        if save_at == Some(k) {
            opt = Optimizer::restored(&spec, kernels, Some(opt.state()));
        }
        opt.start_step(spec.lr());
        if path == Path::Slices {
            opt.update_host("w", &mut host, g, wd).unwrap();
        } else {
            let g: Matrix<_> = dev.tensor_from_vec(g.clone(), (rows, cols));
            opt.update_decayed("w", &mut w, &g, wd).unwrap();
        }
    }
    if path == Path::Slices {
        host
    } else {
        w.as_vec()
    }
}

#[test]
fn every_algorithm_matches_its_formula_on_every_path() {
    // Small (single-threaded) and large (split across threads) host updates; gradients
    // of 1e-6 make Adam's ε placement matter (PyTorch's placement would move these
    // weights ~3x further per step).
    for spec in [ADAM, SGD, LION] {
        for (rows, cols) in [(3, 5), (300, 300)] {
            for scale in [1e-3, 1e-6] {
                for wd in [0.0, DECAY] {
                    let (w0, grads) = data(rows * cols, scale);
                    let want = reference(spec, &w0, &grads, wd);
                    for path in [Path::Slices, Path::Mirrored, Path::Device] {
                        let got = run(spec, rows, cols, &grads, &w0, path, wd, None);
                        for (g, w) in got.iter().zip(&want) {
                            assert!(
                                (*g as f64 - w).abs() < 2e-6,
                                "{spec} {rows}x{cols} scale {scale} wd {wd} {path:?}: {g} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn a_restored_state_continues_bit_for_bit() {
    for spec in [ADAM, SGD, LION] {
        for path in [Path::Slices, Path::Mirrored, Path::Device] {
            let (w0, grads) = data(40, 1e-2);
            let whole = run(spec, 5, 8, &grads, &w0, path, DECAY, None);
            let resumed = run(spec, 5, 8, &grads, &w0, path, DECAY, Some(2));
            assert_eq!(whole, resumed, "{spec} {path:?}");
        }
    }
}

#[test]
fn lion_steps_every_value_by_the_learning_rate() {
    // Whatever the gradient's size, a first Lion step moves each value by exactly lr
    // against its gradient's sign (the property that sets it apart from Adam), and not at
    // all where the gradient is 0.
    let dev = layerwise_nn::device::cpu(0);
    for path in [Path::Slices, Path::Device] {
        let kernels = if path == Path::Device { Kernels::Dfdx } else { Kernels::Host };
        let g = vec![1e-8f32, -3.0, 0.0, 250.0];
        let mut opt = Optimizer::new(&LION, kernels);
        opt.start_step(0.5);
        let mut w = vec![1.0f32; 4];
        if path == Path::Slices {
            opt.update_host("w", &mut w, &g, 0.0).unwrap();
        } else {
            let mut t: Matrix<_> = dev.tensor_from_vec(w.clone(), (2, 2));
            opt.update("w", &mut t, &dev.tensor_from_vec(g.clone(), (2, 2))).unwrap();
            w = t.as_vec();
        }
        assert_eq!(w, vec![0.5, 1.5, 1.0, 0.5], "{path:?}");
        // One buffer of state, the second left empty.
        let (t, state) = opt.state();
        assert_eq!((t, state.len(), state[0].2.len()), (1, 1, 0));
    }
}

#[test]
fn a_state_of_another_size_is_refused() {
    let mut opt = Optimizer::<dfdx::tensor::Cpu>::restored(
        &SGD,
        Kernels::Host,
        Some((3, vec![("w".into(), vec![0.0; 3], Vec::new())])),
    );
    opt.start_step(0.1);
    let e = opt.update_host("w", &mut [0.0; 4], &[1.0; 4], 0.0).unwrap_err().to_string();
    assert!(e.contains("does not fit tensor w (4 values)"), "{e}");
}

/// A moment whose gradient turned zero decays into denormals (each multiply on one costs a
/// microcode assist on x86): the host update flushes them to zero, as TensorFlow does,
/// on the calling thread and on the second thread of a large tensor's split update.
#[test]
fn decaying_moments_never_hold_denormals() {
    for spec in [ADAM, SGD, LION] {
        // 1 << 17 values: Adam's pass splits them across two threads.
        let n = 1 << 17;
        let mut opt: Optimizer<Cpu> = Optimizer::new(&spec, Kernels::Host);
        let mut w = vec![0.5f32; n];
        let (one, zero) = (vec![1.0f32; n], vec![0.0f32; n]);
        // β1 = 0.9 takes 0.1 below f32::MIN_POSITIVE in about 830 steps, to 0 in 980.
        for step in 0..900 {
            opt.start_step(1e-6);
            opt.update_host("w", &mut w, if step == 0 { &one } else { &zero }, 0.0).unwrap();
        }
        let (_, moments) = opt.state();
        let denormal = |v: &f32| *v != 0.0 && v.abs() < f32::MIN_POSITIVE;
        for (name, m, v) in &moments {
            if cfg!(target_arch = "x86_64") {
                assert!(!m.iter().chain(v).any(denormal), "{spec:?}: {name} holds denormal moments");
            }
            assert!(m.iter().all(|x| x.is_finite()), "{spec:?}: {name}");
        }
        assert!(w.iter().all(|x| x.is_finite()));
    }
}
