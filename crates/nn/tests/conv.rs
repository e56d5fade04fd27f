//! The convolutional host kernels against direct loops and finite differences: a 3 × 3
//! convolution's output and both gradients, BatchNorm's gradients, max-pooling and psi.
#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use layerwise_nn::conv::*;

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
        })
        .collect()
}

const S: Nchw = Nchw { n: 2, c: 3, h: 5, w: 4 };
const OUT: usize = 4;

/// Direct loop: y[n,o,y,x] = Σ_c,ky,kx w[o,c,ky,kx] · x[n,c,y+ky-1,x+kx-1] (zero outside).
fn conv_direct(x: &[f32], w: &[f32]) -> Vec<f64> {
    let mut y = vec![0f64; S.n * OUT * S.h * S.w];
    for n in 0..S.n {
        for o in 0..OUT {
            for yy in 0..S.h {
                for xx in 0..S.w {
                    let mut acc = 0f64;
                    for c in 0..S.c {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (sy, sx) = (yy as isize + ky as isize - 1, xx as isize + kx as isize - 1);
                                if sy >= 0 && sy < S.h as isize && sx >= 0 && sx < S.w as isize {
                                    acc += w[((o * S.c + c) * 3 + ky) * 3 + kx] as f64
                                        * x[((n * S.c + c) * S.h + sy as usize) * S.w + sx as usize] as f64;
                                }
                            }
                        }
                    }
                    y[((n * OUT + o) * S.h + yy) * S.w + xx] = acc;
                }
            }
        }
    }
    y
}

fn close(a: &[f32], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        assert!((x as f64 - y).abs() <= tol * (1.0 + y.abs()), "{what}[{i}]: {x} vs {y}");
    }
}

#[test]
fn convolution_matches_a_direct_loop_and_its_gradients_match_finite_differences() {
    let x = values(S.len(), 1);
    let w = values(OUT * S.c * 9, 2);
    let dy = values(S.n * OUT * S.h * S.w, 3);
    let (y, cols) = conv3x3_forward(&x, S, &w, OUT);
    close(&y, &conv_direct(&x, &w), 1e-5, "forward");
    let (dx, dw) = conv3x3_backward(&dy, &cols, S, &w, OUT);
    // The loss Σ dy · y is linear: its derivative in each input is exact by differences.
    let loss = |x: &[f32], w: &[f32]| conv_direct(x, w).iter().zip(&dy).map(|(a, &b)| a * b as f64).sum::<f64>();
    let numeric = |v: &[f32], i: usize, f: &dyn Fn(&[f32]) -> f64| {
        let (mut p, mut m) = (v.to_vec(), v.to_vec());
        p[i] += 0.5;
        m[i] -= 0.5;
        f(&p) - f(&m)
    };
    let ndx: Vec<f64> = (0..x.len()).map(|i| numeric(&x, i, &|v| loss(v, &w))).collect();
    let ndw: Vec<f64> = (0..w.len()).map(|i| numeric(&w, i, &|v| loss(&x, v))).collect();
    close(&dx, &ndx, 1e-4, "input gradient");
    close(&dw, &ndw, 1e-4, "weight gradient");
    // A gradient off by a factor of 2 fails the check.
    let doubled: Vec<f32> = dw.iter().map(|g| 2.0 * g).collect();
    assert!(std::panic::catch_unwind(|| close(&doubled, &ndw, 1e-4, "doubled")).is_err());
}

#[test]
fn batchnorm_gradients_match_finite_differences() {
    let s = Nchw { n: 3, c: 2, h: 2, w: 3 };
    let x = values(s.len(), 4);
    let (gamma, beta) = (vec![1.5f32, -0.7], vec![0.2f32, 0.1]);
    let dy = values(s.len(), 5);
    let (y, cache) = batchnorm_forward(&x, s, &gamma, &beta, 1e-5);
    // Each channel of xhat has mean 0 and (biased) variance 1.
    for ch in 0..s.c {
        let v: Vec<f64> = (0..s.n)
            .flat_map(|n| cache.xhat[(n * s.c + ch) * 6..(n * s.c + ch + 1) * 6].iter().map(|&v| v as f64))
            .collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-3, "{mean} {var}");
    }
    assert_eq!(y.len(), s.len());
    let (dx, dgamma, dbeta) = batchnorm_backward(&dy, &cache, s, &gamma);
    let loss = |x: &[f32], g: &[f32], b: &[f32]| -> f64 {
        batchnorm_forward(x, s, g, b, 1e-5).0.iter().zip(&dy).map(|(a, &d)| *a as f64 * d as f64).sum()
    };
    let h = 1e-2f32;
    let diff = |f: &dyn Fn(f32) -> f64| (f(h) - f(-h)) / (2.0 * h as f64);
    let ndx: Vec<f64> = (0..x.len())
        .map(|i| {
            diff(&|d| {
                let mut v = x.clone();
                v[i] += d;
                loss(&v, &gamma, &beta)
            })
        })
        .collect();
    close(&dx, &ndx, 2e-2, "BatchNorm input gradient");
    for ch in 0..s.c {
        let ng = diff(&|d| {
            let mut g = gamma.clone();
            g[ch] += d;
            loss(&x, &g, &beta)
        });
        let nb = diff(&|d| {
            let mut b = beta.clone();
            b[ch] += d;
            loss(&x, &gamma, &b)
        });
        close(&[dgamma[ch]], &[ng], 1e-2, "gamma gradient");
        close(&[dbeta[ch]], &[nb], 1e-2, "beta gradient");
    }
}

#[test]
fn maxpool_and_psi_move_each_value_where_pytorch_does() {
    let s = Nchw { n: 1, c: 2, h: 4, w: 4 };
    let x: Vec<f32> = (0..s.len()).map(|i| ((i * 7) % 11) as f32).collect();
    let (y, arg) = maxpool2_forward(&x, s);
    assert_eq!(y.len(), 8);
    for (o, (&v, &i)) in y.iter().zip(&arg).enumerate() {
        let (plane, oy, ox) = (o / 4, (o % 4) / 2, o % 2);
        let window: Vec<f32> = [(0, 0), (0, 1), (1, 0), (1, 1)]
            .iter()
            .map(|(dy, dx)| x[plane * 16 + (2 * oy + dy) * 4 + 2 * ox + dx])
            .collect();
        assert_eq!(v, window.iter().cloned().fold(f32::MIN, f32::max));
        assert_eq!(x[i], v);
    }
    let dx = maxpool2_backward(&[1.0; 8], &arg, s);
    assert_eq!(dx.iter().sum::<f32>(), 8.0);
    // PixelUnshuffle(2): output channel 4c + 2dy + dx at (y, x) is input (c, 2y+dy, 2x+dx).
    let p = psi_forward(&x, s);
    for c in 0..2 {
        for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            for (oy, ox) in [(0, 0), (1, 1), (0, 1)] {
                let oc = 4 * c + 2 * dy + dx;
                assert_eq!(p[(oc * 2 + oy) * 2 + ox], x[(c * 4 + 2 * oy + dy) * 4 + 2 * ox + dx]);
            }
        }
    }
    assert_eq!(psi_backward(&p, s), x, "psi is a permutation; its backward is its inverse");
}
