//! The tiled convolution kernels (`conv_kernel`) against direct loops in f64: the forward
//! product (through im2col tiles and in its direct form), the weight gradient and the
//! input gradient, on tilings with one image a tile, a ragged last tile and one tile for
//! the batch, on images with and without interior pixels; a doubled gradient fails the
//! check; and the results are bit for bit the same with one thread and with two.
#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use layerwise_nn::conv_kernel::{forward, input_grad, weight_grad, Tiles};
use layerwise_nn::convnet::Nhwc;
mod common;
use common::random;

/// The input pixel a 3 × 3 tap `t` reads for output pixel (y, x), if inside the image.
fn tap(s: Nhwc, y: usize, x: usize, t: usize) -> Option<usize> {
    let (sy, sx) = (y as isize + (t / 3) as isize - 1, x as isize + (t % 3) as isize - 1);
    (sy >= 0 && sy < s.h as isize && sx >= 0 && sx < s.w as isize).then(|| sy as usize * s.w + sx as usize)
}

/// Direct loops: the output, the weight gradient and the input gradient for `dz`.
fn reference(x: &[f32], s: Nhwc, wk: &[f32], cout: usize, dz: &[f32]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (hw, c) = (s.h * s.w, s.c);
    let mut z = vec![0f64; s.rows() * cout];
    let mut dw = vec![0f64; 9 * c * cout];
    let mut dx = vec![0f64; s.len()];
    for n in 0..s.n {
        for y in 0..s.h {
            for xx in 0..s.w {
                let r = n * hw + y * s.w + xx;
                for t in 0..9 {
                    let Some(p) = tap(s, y, xx, t) else { continue };
                    for ci in 0..c {
                        let xi = (n * hw + p) * c + ci;
                        for o in 0..cout {
                            let w = wk[(t * c + ci) * cout + o] as f64;
                            z[r * cout + o] += x[xi] as f64 * w;
                            dw[(t * c + ci) * cout + o] += x[xi] as f64 * dz[r * cout + o] as f64;
                            dx[xi] += w * dz[r * cout + o] as f64;
                        }
                    }
                }
            }
        }
    }
    (z, dw, dx)
}

/// ‖got − want‖₂ / ‖want‖₂.
fn rel(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let d: f64 = got.iter().zip(want).map(|(&g, w)| (g as f64 - w).powi(2)).sum();
    let n: f64 = want.iter().map(|w| w * w).sum();
    (d / n).sqrt()
}

const TOL: f64 = 1e-5;

fn run(x: &[f32], s: Nhwc, wk: &[f32], cout: usize, dz: &[f32], tiles: Tiles) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut z = vec![0f32; s.rows() * cout];
    let order = forward(x, s, wk, cout, tiles, &mut z, |t, zt| (t, zt.len()));
    // `each` saw every tile once, in order, with its rows.
    assert_eq!(order.len(), tiles.count(s.n));
    assert!(order.iter().enumerate().all(|(i, &(t, _))| i == t));
    assert_eq!(order.iter().map(|&(_, len)| len).sum::<usize>(), s.rows() * cout);
    (z, weight_grad(x, s, dz, cout, tiles), input_grad(dz, s, wk, cout, tiles))
}

/// An input, a weight and an output gradient for `s` and `cout`, from `seed`.
fn case(s: Nhwc, cout: usize, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    (random(s.len(), seed), random(9 * s.c * cout, seed + 1), random(s.rows() * cout, seed + 2))
}

#[test]
fn the_tiled_products_are_the_direct_loops_and_a_doubled_gradient_is_not() {
    // Interior pixels and all four borders; one row; one column.
    for s in [Nhwc { n: 7, h: 5, w: 3, c: 4 }, Nhwc { n: 3, h: 1, w: 4, c: 3 }, Nhwc { n: 2, h: 3, w: 1, c: 2 }] {
        check_against_direct_loops(s);
    }
}

fn check_against_direct_loops(s: Nhwc) {
    // Few output channels, and enough (256) that the weight gradient is taken transposed.
    for cout in [6, 256] {
        let (x, wk, dz) = case(s, cout, 1);
        let (rz, rdw, rdx) = reference(&x, s, &wk, cout, &dz);
        // One image a tile; two (the last tile holds one, for odd batches); all in one
        // tile; each with the forward product through im2col and in its direct form.
        for (images, direct) in [1, 2, s.n].into_iter().flat_map(|i| [(i, false), (i, true)]) {
            let tiles = Tiles { images, direct };
            let (z, dw, dx) = run(&x, s, &wk, cout, &dz, tiles);
            assert!(rel(&z, &rz) < TOL, "forward, {cout} out, {tiles:?}: {}", rel(&z, &rz));
            assert!(rel(&dw, &rdw) < TOL, "weight gradient, {cout} out, {tiles:?}: {}", rel(&dw, &rdw));
            assert!(rel(&dx, &rdx) < TOL, "input gradient, {cout} out, {tiles:?}: {}", rel(&dx, &rdx));
            for (what, got, want) in
                [("output", &z, &rz), ("weight gradient", &dw, &rdw), ("input gradient", &dx, &rdx)]
            {
                let doubled: Vec<f32> = got.iter().map(|v| 2.0 * v).collect();
                assert!(rel(&doubled, want) > 0.5, "a doubled {what} must fail the check");
            }
        }
    }
}

#[test]
fn tiles_hold_whole_images_and_take_the_direct_form_for_small_wide_images() {
    let s = Nhwc { n: 7, h: 5, w: 3, c: 4 };
    assert_eq!(Tiles::of(s, 30), Tiles { images: 2, direct: false });
    assert_eq!(Tiles::of(s, 30).count(s.n), 4);
    // cnn.toml's stages: im2col tiles at 32 × 32 and 16 × 16, the direct form at 8 × 8
    // from 128 channels on.
    let stage = |c, side| Tiles::default_for(Nhwc { n: 128, h: side, w: side, c }).direct;
    assert!(!stage(3, 32) && !stage(64, 16) && !stage(128, 16));
    assert!(stage(128, 8) && stage(256, 8));
    assert!(!stage(64, 8), "thin tap rows keep the tiles");
}

#[test]
fn the_kernels_give_the_same_bits_on_one_thread_and_on_two() {
    // Enough tiles (16 × 16 images, one a tile) that both threads take some.
    let s = Nhwc { n: 12, h: 16, w: 16, c: 8 };
    for (cout, direct) in [(16, false), (256, false), (16, true), (256, true)] {
        let (x, wk, dz) = case(s, cout, 4);
        let tiles = Tiles { direct, ..Tiles::of(s, 256) };
        let on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| run(&x, s, &wk, cout, &dz, tiles))
        };
        let (one, two) = (on(1), on(2));
        assert!(
            one.0 == two.0 && one.1 == two.1 && one.2 == two.2,
            "{cout} out, direct {direct}: results depend on the number of threads"
        );
    }
}
