//! The 3 × 3 convolution's three products (forward, weight gradient, input gradient) over
//! tiles of whole images, each tile on one thread: its im2col patches are gathered into a
//! buffer that stays in cache, multiplied by gemm 0.19 (AVX-512 where the CPU has it,
//! chosen at run time), and handed to the caller's pass while still in cache.
//!
//! Why tiles: one product over the whole batch's patches writes and reads 9 × the
//! activations through memory (150 MB a step at 128→128, 16×16), runs the single-threaded
//! product at two thirds of its rate on these tall shapes, and leaves the passes around it
//! to run alone. Tiles of about [`TILE_ROWS`] rows keep every core busy in every pass, and a
//! tile's BatchNorm statistics or affine + ReLU are taken while its output is in cache.
//!
//! The forward product and the weight gradient also have a direct form
//! ([`forward_direct`], [`weight_grad_direct`], chosen with [`Tiles::direct`]): per output
//! pixel, the batch's images are the product's rows, read in place from the NHWC input (a
//! tap row's three taps are neighbouring pixels), one product per tap row, no im2col, the
//! zero padding left out of both operands. [`Tiles::of`] chooses it for small images of
//! many channels ([`DIRECT_MIN_CHANNELS`], [`DIRECT_MAX_PIXELS`]: `cnn.toml`'s stages 4
//! and 5), where it is faster in `xtask bench --conv` and in the pipeline's epochs.
//!
//! Every result is the same whatever the number of threads: tiles and pixel groups are
//! fixed by the shape, not by the threads, and partial sums are added in order.

use crate::conv_ops::{col2im_image, im2col_image, Nhwc};
use crate::host::{matmul_serial, View};
use rayon::prelude::*;

/// Rows (pixels) a tile aims at: whole images, at least one. 256 rows keep a tile's
/// patches (256 × 9·c floats: 1.2 MB at 128 channels) in a core's L2; gemm 0.19 reaches
/// its rate on them (forward 231 against 228 GFLOP/s at 1,024 rows, weight gradient 219
/// against 200 at `[1152 × 256]·[256 × 128]`; one core, AVX-512).
pub const TILE_ROWS: usize = 256;

/// Output channels from which the weight gradient is taken as `dzᵀ·patches` (`[cout, 9·c]`,
/// transposed once at the end) rather than `patchesᵀ·dz`: gemm 0.19 runs the first at
/// 204–210 GFLOP/s against 186–190 for the second at 256 channels, and the second at
/// 219–235 against 198–209 at 64–128 channels (256-row tiles, one core, AVX-512).
const WIDE_OUT: usize = 256;

/// Partial weight gradients summed in a fixed order (about 2 × 4 threads' worth of work,
/// few enough that their buffers stay small).
const WEIGHT_GROUPS: usize = 8;

/// Input channels from which [`Tiles::of`] chooses the direct form: below them a tap
/// row's `3·c` values make products too thin (stage 1's 3 channels: 25 % slower, stage 2's
/// 64: 5–10 %, `xtask bench --conv`).
pub const DIRECT_MIN_CHANNELS: usize = 128;

/// Pixels per image up to which [`Tiles::of`] chooses the direct form. Its gain is mostly
/// the zero padding it leaves out, 16 % of an 8 × 8 image's taps against 8 % at 16 × 16:
/// `cnn.toml`'s epochs, old and new run one after the other, 5–10 % faster at 8 × 8 (stage
/// 4: 16.6, 16.0 → 16.0, 15.3 s; stage 5: 30.9, 29.0 → 27.4, 28.0 s) and no faster at
/// 16 × 16 (stage 3: 35.5, 33.4 → 35.4, 35.8 s).
pub const DIRECT_MAX_PIXELS: usize = 64;

/// How a batch of shape `s` is cut into tiles of whole images, and how its forward
/// product is formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiles {
    /// Images per tile (the last tile may hold fewer).
    pub images: usize,
    /// The forward product in its direct form: for each output pixel, the batch's rows
    /// read straight from the input (a tap row's three taps are neighbours, `3·c` values
    /// in a row), one product per tap row, no im2col, the zero padding skipped; each
    /// tile's pass then runs over the finished output.
    pub direct: bool,
}

impl Tiles {
    /// Tiles of about `rows` rows for images of `s`.
    pub fn of(s: Nhwc, rows: usize) -> Self {
        let side = s.h * s.w;
        Self { images: (rows / side.max(1)).max(1), direct: s.c >= DIRECT_MIN_CHANNELS && side <= DIRECT_MAX_PIXELS }
    }

    /// The tiling the training and inference kernels use.
    pub fn default_for(s: Nhwc) -> Self {
        Self::of(s, TILE_ROWS)
    }

    /// Tiles in a batch of `n` images.
    pub fn count(&self, n: usize) -> usize {
        n.div_ceil(self.images)
    }
}

/// `z = conv(x, wk)` (`x` NHWC of shape `s`, `wk` `[9·c, cout]`, `z` `[rows, cout]`), tile by
/// tile; `each(tile, z_tile)` runs on each tile's output right after its product, on the
/// same thread, and its results come back in tile order.
pub fn forward<T: Send>(
    x: &[f32],
    s: Nhwc,
    wk: &[f32],
    cout: usize,
    tiles: Tiles,
    z: &mut [f32],
    each: impl Fn(usize, &mut [f32]) -> T + Sync,
) -> Vec<T> {
    let k = 9 * s.c;
    assert_eq!(wk.len(), k * cout, "weight is not [9·c, cout]");
    assert!(x.len() >= s.len() && z.len() >= s.rows() * cout, "buffers smaller than the batch");
    let hw = s.h * s.w;
    if tiles.direct {
        forward_direct(x, s, wk, cout, z);
        return z[..s.rows() * cout]
            .par_chunks_mut(tiles.images * hw * cout)
            .enumerate()
            .map(|(t, zt)| each(t, zt))
            .collect();
    }
    z[..s.rows() * cout]
        .par_chunks_mut(tiles.images * hw * cout)
        .zip(x[..s.len()].par_chunks(tiles.images * s.image()))
        .enumerate()
        .map(|(t, (zt, xt))| {
            let st = Nhwc { n: xt.len() / s.image(), ..s };
            with_patches(xt, st, |cols| {
                matmul_serial(zt, View::rows(cols, st.rows(), k), View::rows(wk, k, cout), false)
            });
            each(t, zt)
        })
        .collect()
}

/// A pointer shared by the threads of [`forward_direct`], each writing its own rows.
struct Rows(*mut f32);
// SAFETY: only used to write disjoint rows from different threads (see forward_direct).
unsafe impl Sync for Rows {}

/// The direct form of [`forward`]: for output pixel `(y, x)`, `z[·, (y, x)] = Σ_dy
/// x[·, y+dy-1, x-1..=x+1]·wk[taps (dy, ·)]`, the batch's images as the product's rows
/// (`h·w·c` apart in `x`, `h·w·cout` apart in `z`), the taps outside the image left out
/// of both operands; tap rows added in order (dy = 0, 1, 2), so every result is the same
/// whatever the threads. Pixels in parallel, each product on one thread.
fn forward_direct(x: &[f32], s: Nhwc, wk: &[f32], cout: usize, z: &mut [f32]) {
    let (c, hw) = (s.c, s.h * s.w);
    if s.n == 0 || cout == 0 || c == 0 {
        return;
    }
    assert!(
        x.len() >= s.len() && z.len() >= s.rows() * cout && wk.len() == 9 * c * cout,
        "buffers smaller than the batch"
    );
    let out = Rows(z.as_mut_ptr());
    let out = &out;
    (0..hw).into_par_iter().for_each(|p| {
        let (y, xx) = (p / s.w, p % s.w);
        // The input columns xx-1..=xx+1 inside the image, and the first of their taps.
        let (x0, x1) = (xx.saturating_sub(1), (xx + 2).min(s.w));
        let k = (x1 - x0) * c;
        let mut first = true;
        for dy in 0..3 {
            let Some(sy) = (y + dy).checked_sub(1).filter(|&sy| sy < s.h) else { continue };
            let tap = dy * 3 + (x0 + 1 - xx);
            // SAFETY: `a` spans n rows hw·c apart of `k` values from (sy·w + x0)·c, the
            // last ending at (n-1)·hw·c + (sy·w + x1)·c ≤ n·hw·c ≤ x.len(); `b` is `k` rows
            // of `cout` from tap·c·cout, ending at (tap·c + k)·cout ≤ 9·c·cout = wk.len()
            // (the taps x0..x1 of tap row dy end at dy·3 + 3); `dst` is n rows hw·cout
            // apart of `cout` values from p·cout, within `z`, and only this pixel's
            // thread writes them (pixels are disjoint rows of z). Nothing else borrows
            // `z` while this runs.
            unsafe {
                gemm::gemm(
                    s.n,
                    cout,
                    k,
                    out.0.add(p * cout),
                    1,
                    (hw * cout) as isize,
                    !first,
                    x.as_ptr().add((sy * s.w + x0) * c),
                    1,
                    (hw * c) as isize,
                    wk.as_ptr().add(tap * c * cout),
                    1,
                    cout as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            first = false;
        }
    });
}

thread_local! {
    /// Each thread's patch buffer, reused from tile to tile and step to step (a fresh one
    /// would be zeroed before im2col overwrites all of it).
    static PATCHES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `f` of the tile's im2col patches (`[rows, 9·c]`), gathered into this thread's buffer.
fn with_patches<R>(xt: &[f32], st: Nhwc, f: impl FnOnce(&[f32]) -> R) -> R {
    let k = 9 * st.c;
    // Taken out of the cell while in use, so a nested call would find an empty buffer
    // rather than a borrowed one.
    let mut cols = PATCHES.with(|p| p.take());
    cols.resize(st.rows() * k, 0.0);
    for (img, c) in xt.chunks_exact(st.image()).zip(cols.chunks_exact_mut(st.h * st.w * k)) {
        im2col_image(img, st, c);
    }
    let out = f(&cols);
    PATCHES.with(|p| p.replace(cols));
    out
}

/// The weight gradient `Σ patchesᵀ·dz` (`[9·c, cout]`; from [`WIDE_OUT`] channels taken as
/// `Σ dzᵀ·patches` and transposed once): each tile's patches gathered again (in cache)
/// rather than kept from the forward pass; tiles summed in groups in a fixed order.
pub fn weight_grad(x: &[f32], s: Nhwc, dz: &[f32], cout: usize, tiles: Tiles) -> Vec<f32> {
    weight_grad_of(x, s, Dz::Given(dz), cout, tiles)
}

/// Where [`weight_grad_of`] finds the output gradient's rows.
pub enum Dz<'a> {
    /// All of them, `[rows, cout]`.
    Given(&'a [f32]),
    /// Computed on demand: `f(first, out)` writes rows `first..` into `out` (whole rows).
    Rows(&'a (dyn Fn(usize, &mut [f32]) + Sync)),
}

/// [`weight_grad`] with the output gradient given, or computed tile by tile by the
/// thread that multiplies it (while in cache: no pass writes and reads it back).
pub fn weight_grad_of(x: &[f32], s: Nhwc, dz: Dz<'_>, cout: usize, tiles: Tiles) -> Vec<f32> {
    let k = 9 * s.c;
    let given = match dz {
        Dz::Given(d) => d.len() >= s.rows() * cout,
        Dz::Rows(_) => true,
    };
    assert!(x.len() >= s.len() && given, "buffers smaller than the batch");
    if tiles.direct {
        return weight_grad_direct(x, s, dz, cout);
    }
    let count = tiles.count(s.n);
    let groups = WEIGHT_GROUPS.min(count).max(1);
    let hw = s.h * s.w;
    let mut parts: Vec<Vec<f32>> = (0..groups)
        .into_par_iter()
        .map(|g| {
            // Overwritten by the group's first product (zeros for an empty batch).
            let mut part = take_part(k * cout);
            if count == 0 {
                part.fill(0.0);
            }
            // A computed tile's rows (its images' pixels × cout).
            let mut rows = Vec::new();
            for t in g * count / groups..(g + 1) * count / groups {
                let (i0, i1) = (t * tiles.images, ((t + 1) * tiles.images).min(s.n));
                let st = Nhwc { n: i1 - i0, ..s };
                let dzt: &[f32] = match &dz {
                    Dz::Given(d) => &d[i0 * hw * cout..i1 * hw * cout],
                    Dz::Rows(f) => {
                        rows.resize(st.rows() * cout, 0.0);
                        f(i0 * hw, &mut rows);
                        &rows
                    }
                };
                let first = t == g * count / groups;
                with_patches(&x[i0 * s.image()..i1 * s.image()], st, |cols| {
                    let (a, b) = if cout >= WIDE_OUT {
                        // `part` holds the gradient transposed, `[cout, 9·c]`.
                        (View::transposed(dzt, st.rows(), cout), View::rows(cols, st.rows(), k))
                    } else {
                        (View::transposed(cols, st.rows(), k), View::rows(dzt, st.rows(), cout))
                    };
                    matmul_serial(&mut part, a, b, !first)
                });
            }
            part
        })
        .collect();
    let dw = sum_parts(&mut parts, k, cout, cout >= WIDE_OUT);
    PARTS.lock().unwrap_or_else(|e| e.into_inner()).extend(parts);
    dw
}

/// The direct form of [`weight_grad`], as [`forward_direct`] forms the forward product:
/// for each output pixel and tap row, `wk`'s rows of those taps get `x[·, taps]ᵀ·dz[·,
/// pixel]`, the batch's images as the product's inner dimension. Pixels in fixed groups
/// (a partial sum each, in pixel order), the groups added in order.
fn weight_grad_direct(x: &[f32], s: Nhwc, dz: Dz<'_>, cout: usize) -> Vec<f32> {
    let (c, hw, k) = (s.c, s.h * s.w, 9 * s.c);
    let mut whole = Vec::new();
    let dz: &[f32] = match dz {
        Dz::Given(d) => d,
        Dz::Rows(f) => {
            // Each pixel's rows are spread over the batch: the gradient is written out, into
            // a recycled step buffer (every element is written here).
            whole = crate::scratch::take(s.rows() * cout);
            whole.par_chunks_mut(hw * cout).enumerate().for_each(|(i, rows)| f(i * hw, rows));
            &whole
        }
    };
    let groups = WEIGHT_GROUPS.min(hw).max(1);
    let mut parts: Vec<Vec<f32>> = (0..groups)
        .into_par_iter()
        .map(|g| {
            let mut part = take_part(k * cout);
            part.fill(0.0);
            for p in g * hw / groups..(g + 1) * hw / groups {
                let (y, xx) = (p / s.w, p % s.w);
                let (x0, x1) = (xx.saturating_sub(1), (xx + 2).min(s.w));
                let kk = (x1 - x0) * c;
                for dy in 0..3 {
                    let Some(sy) = (y + dy).checked_sub(1).filter(|&sy| sy < s.h) else { continue };
                    let tap = dy * 3 + (x0 + 1 - xx);
                    // `x`'s columns of these taps, `[kk, n]` (each image's `kk` values in
                    // a column, images hw·c apart), times the pixel's rows of `dz`.
                    let a = View::strided(&x[(sy * s.w + x0) * c..], kk, s.n, 1, hw * c);
                    let b = View::strided(&dz[p * cout..], s.n, cout, hw * cout, 1);
                    matmul_serial(&mut part[tap * c * cout..(tap * c + kk) * cout], a, b, true);
                }
            }
            part
        })
        .collect();
    let dw = sum_parts(&mut parts, k, cout, false);
    PARTS.lock().unwrap_or_else(|e| e.into_inner()).extend(parts);
    crate::scratch::give(whole);
    dw
}

/// The weight gradient's partial sums, kept from step to step (fresh ones would be
/// zeroed, 2.4 MB each at 256 channels, before the first product overwrites them).
static PARTS: std::sync::Mutex<Vec<Vec<f32>>> = std::sync::Mutex::new(Vec::new());

/// A partial-sum buffer of `len` values whose contents are unspecified.
fn take_part(len: usize) -> Vec<f32> {
    let mut v = PARTS.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_default();
    v.resize(len, 0.0);
    v
}

/// `Σ parts` as `[k, cout]`, each element summed in the parts' order (the first, plus the
/// second, …), into the first part; with `transposed`, the parts are `[cout, k]` and the
/// sum is transposed once. Both passes over rows in parallel.
fn sum_parts(parts: &mut [Vec<f32>], k: usize, cout: usize, transposed: bool) -> Vec<f32> {
    const ROWS: usize = 16;
    let (head, rest) = parts.split_first_mut().expect("at least one group");
    let first = &mut head[..k * cout];
    first.par_chunks_mut(ROWS * cout).enumerate().for_each(|(i, out)| {
        for p in rest.iter() {
            for (a, b) in out.iter_mut().zip(&p[i * ROWS * cout..]) {
                *a += b;
            }
        }
    });
    if !transposed {
        return std::mem::take(head);
    }
    // `first` is `[cout, k]`: blocks of 16 result rows, each read as one cache line of
    // every source row.
    let src: &[f32] = first;
    let mut dw = vec![0f32; k * cout];
    dw.par_chunks_mut(ROWS * cout).enumerate().for_each(|(i, out)| {
        let r0 = i * ROWS;
        let rows = out.len() / cout;
        for c in 0..cout {
            for (r, &v) in src[c * k + r0..][..rows].iter().enumerate() {
                out[r * cout + c] = v;
            }
        }
    });
    dw
}

/// The input gradient (NHWC, shape `s`) from the output's `dz`: each tile's patch
/// gradients `dz·wkᵀ`, scattered back into its own images.
pub fn input_grad(dz: &[f32], s: Nhwc, wk: &[f32], cout: usize, tiles: Tiles) -> Vec<f32> {
    let k = 9 * s.c;
    let hw = s.h * s.w;
    let mut dx = vec![0f32; s.len()];
    dx.par_chunks_mut(tiles.images * s.image())
        .zip(dz[..s.rows() * cout].par_chunks(tiles.images * hw * cout))
        .for_each(|(dxt, dzt)| {
            let st = Nhwc { n: dxt.len() / s.image(), ..s };
            let mut dcols = vec![0f32; st.rows() * k];
            matmul_serial(&mut dcols, View::rows(dzt, st.rows(), cout), View::transposed(wk, k, cout), false);
            for (img, c) in dxt.chunks_exact_mut(s.image()).zip(dcols.chunks_exact(hw * k)) {
                col2im_image(c, st, img);
            }
        });
    dx
}
