//! The parameter-free operations of convolutional networks on NHWC host batches (one
//! `[n·h·w, c]` matrix, a row a pixel): the layout change from CHW images, im2col and its
//! inverse, the downsamplings, the head's pooling, label-smoothed cross-entropy, and the
//! fixed-order column sums every BatchNorm uses.

use layerwise_core::cnn::{pool_window, Downsample, HEAD_POOL};
use rayon::prelude::*;

/// The shape of an NHWC batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Nhwc {
    /// Images.
    pub n: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// Channels.
    pub c: usize,
}

impl Nhwc {
    /// Values.
    pub fn len(&self) -> usize {
        self.n * self.h * self.w * self.c
    }
    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Pixels (rows of the matrix).
    pub fn rows(&self) -> usize {
        self.n * self.h * self.w
    }
    pub(crate) fn image(&self) -> usize {
        self.h * self.w * self.c
    }
}

/// Images of `[c, h, w]` (CHW rows, as datasets store them) as one NHWC batch.
pub fn chw_to_nhwc(x: &[f32], n: usize, [c, h, w]: [usize; 3]) -> Vec<f32> {
    let mut out = vec![0f32; n * c * h * w];
    out.par_chunks_mut(c * h * w).zip(x.par_chunks(c * h * w)).for_each(|(o, i)| {
        for ch in 0..c {
            for p in 0..h * w {
                o[p * c + ch] = i[ch * h * w + p];
            }
        }
    });
    out
}

/// The patches of a 3 × 3, padding-1 convolution of an NHWC batch: `[n·h·w, 9·c]`, row a
/// pixel, column `(dy·3 + dx)·c + ci`; images in parallel.
pub fn im2col(x: &[f32], s: Nhwc, cols: &mut [f32]) {
    let k = 9 * s.c;
    cols[..s.rows() * k]
        .par_chunks_mut(s.h * s.w * k)
        .zip(x.par_chunks(s.image()))
        .for_each(|(cols, img)| im2col_image(img, s, cols));
}

/// [`im2col`] of one image (`s` gives its height, width and channels), on this thread.
/// A tap row's three taps read neighbouring pixels, so each is one copy of up to `3·c`
/// values (zeros where the taps fall outside the image).
pub(crate) fn im2col_image(img: &[f32], s: Nhwc, cols: &mut [f32]) {
    let (c, k) = (s.c, 9 * s.c);
    for y in 0..s.h {
        for xx in 0..s.w {
            let row = &mut cols[(y * s.w + xx) * k..][..k];
            // The source columns xx-1..=xx+1 inside the image, and where they land.
            let (x0, x1) = (xx.saturating_sub(1), (xx + 2).min(s.w));
            let lead = if xx == 0 { c } else { 0 };
            let width = (x1 - x0) * c;
            for (dy, dst) in row.chunks_exact_mut(3 * c).enumerate() {
                // Source row y + dy - 1, if inside the image.
                match (y + dy).checked_sub(1).filter(|&sy| sy < s.h) {
                    Some(sy) => {
                        dst[..lead].fill(0.0);
                        dst[lead..lead + width].copy_from_slice(&img[(sy * s.w + x0) * c..][..width]);
                        dst[lead + width..].fill(0.0);
                    }
                    None => dst.fill(0.0),
                }
            }
        }
    }
}

/// The inverse scatter of [`im2col`]: patch gradients summed into an NHWC input gradient.
pub fn col2im(cols: &[f32], s: Nhwc) -> Vec<f32> {
    let k = 9 * s.c;
    let mut x = vec![0f32; s.len()];
    x.par_chunks_mut(s.image()).zip(cols.par_chunks(s.h * s.w * k)).for_each(|(img, cols)| col2im_image(cols, s, img));
    x
}

/// [`col2im`] of one image's patches, added into `img`, on this thread.
pub(crate) fn col2im_image(cols: &[f32], s: Nhwc, img: &mut [f32]) {
    let k = 9 * s.c;
    for y in 0..s.h {
        for xx in 0..s.w {
            let row = &cols[(y * s.w + xx) * k..][..k];
            for dy in 0..3 {
                let sy = y as isize + dy as isize - 1;
                for dx in 0..3 {
                    let sx = xx as isize + dx as isize - 1;
                    if sy >= 0 && sy < s.h as isize && sx >= 0 && sx < s.w as isize {
                        let dst = &mut img[(sy as usize * s.w + sx as usize) * s.c..][..s.c];
                        for (d, v) in dst.iter_mut().zip(&row[(dy * 3 + dx) * s.c..][..s.c]) {
                            *d += v;
                        }
                    }
                }
            }
        }
    }
}

/// A downsampling of an NHWC batch: the output, its shape, and for max-pooling the index
/// (0..4) of each output's maximum (the first on a tie).
pub fn downsample(x: &[f32], s: Nhwc, d: Downsample) -> (Vec<f32>, Nhwc, Vec<u8>) {
    let (oh, ow) = (s.h / 2, s.w / 2);
    match d {
        Downsample::None => (x.to_vec(), s, Vec::new()),
        Downsample::Maxpool => {
            let o = Nhwc { h: oh, w: ow, ..s };
            let mut y = vec![0f32; o.len()];
            let mut arg = vec![0u8; o.len()];
            y.par_chunks_mut(o.image()).zip(arg.par_chunks_mut(o.image())).zip(x.par_chunks(s.image())).for_each(
                |((y, arg), img)| {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            for c in 0..s.c {
                                let at = |q: usize| img[((2 * oy + q / 2) * s.w + 2 * ox + q % 2) * s.c + c];
                                let (mut best, mut bi) = (at(0), 0u8);
                                for q in 1..4 {
                                    if at(q) > best {
                                        (best, bi) = (at(q), q as u8);
                                    }
                                }
                                let i = (oy * ow + ox) * s.c + c;
                                (y[i], arg[i]) = (best, bi);
                            }
                        }
                    }
                },
            );
            (y, o, arg)
        }
        Downsample::Psi => {
            let o = Nhwc { h: oh, w: ow, c: 4 * s.c, n: s.n };
            let mut y = vec![0f32; o.len()];
            y.par_chunks_mut(o.image()).zip(x.par_chunks(s.image())).for_each(|(y, img)| {
                for oy in 0..oh {
                    for ox in 0..ow {
                        for c in 0..s.c {
                            for q in 0..4 {
                                y[(oy * ow + ox) * o.c + 4 * c + q] =
                                    img[((2 * oy + q / 2) * s.w + 2 * ox + q % 2) * s.c + c];
                            }
                        }
                    }
                }
            });
            (y, o, Vec::new())
        }
    }
}

/// The backward pass of [`downsample`] from the output gradient `dy` (input shape `s`).
pub fn downsample_backward(dy: &[f32], s: Nhwc, d: Downsample, arg: &[u8]) -> Vec<f32> {
    let (oh, ow) = (s.h / 2, s.w / 2);
    let mut dx = vec![0f32; s.len()];
    match d {
        Downsample::None => dx.copy_from_slice(dy),
        Downsample::Maxpool => {
            let oc = s.c;
            dx.par_chunks_mut(s.image()).zip(dy.par_chunks(oh * ow * oc)).zip(arg.par_chunks(oh * ow * oc)).for_each(
                |((dx, dy), arg)| {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            for c in 0..s.c {
                                let i = (oy * ow + ox) * oc + c;
                                let q = arg[i] as usize;
                                dx[((2 * oy + q / 2) * s.w + 2 * ox + q % 2) * s.c + c] += dy[i];
                            }
                        }
                    }
                },
            );
        }
        Downsample::Psi => {
            let oc = 4 * s.c;
            dx.par_chunks_mut(s.image()).zip(dy.par_chunks(oh * ow * oc)).for_each(|(dx, dy)| {
                for oy in 0..oh {
                    for ox in 0..ow {
                        for c in 0..s.c {
                            for q in 0..4 {
                                dx[((2 * oy + q / 2) * s.w + 2 * ox + q % 2) * s.c + c] =
                                    dy[(oy * ow + ox) * oc + 4 * c + q];
                            }
                        }
                    }
                }
            });
        }
    }
    dx
}

/// Rows per partial sum of a column reduction: fixed, so sums are the same whatever the
/// number of threads.
pub(crate) const REDUCE_ROWS: usize = 1024;

/// Per-column sums over the rows of a `[rows, cols]` matrix, in f64, in parallel with a
/// fixed association (deterministic): `f(r, a, b)` adds row `r`'s two values of each column
/// into `a[c]` and `b[c]` (one row at a time, so the loop over a row's columns vectorizes).
pub(crate) fn column_sums2(
    rows: usize,
    cols: usize,
    f: impl Fn(usize, &mut [f64], &mut [f64]) + Sync,
) -> (Vec<f64>, Vec<f64>) {
    let parts: Vec<(Vec<f64>, Vec<f64>)> = (0..rows.div_ceil(REDUCE_ROWS))
        .into_par_iter()
        .map(|p| {
            let (mut a, mut b) = (vec![0f64; cols], vec![0f64; cols]);
            for r in p * REDUCE_ROWS..((p + 1) * REDUCE_ROWS).min(rows) {
                f(r, &mut a, &mut b);
            }
            (a, b)
        })
        .collect();
    add_in_order(parts, cols)
}

/// Partial column sums (pairs, in f64) added in the order given: the one association
/// every BatchNorm reduction uses, whatever the threads that made the parts.
pub(crate) fn add_in_order(parts: impl IntoIterator<Item = (Vec<f64>, Vec<f64>)>, cols: usize) -> (Vec<f64>, Vec<f64>) {
    let (mut a, mut b) = (vec![0f64; cols], vec![0f64; cols]);
    for (pa, pb) in parts {
        for c in 0..cols {
            a[c] += pa[c];
            b[c] += pb[c];
        }
    }
    (a, b)
}

/// Rows of an elementwise pass handed to one task.
pub(crate) const PASS_ROWS: usize = 256;

/// Average pooling to `HEAD_POOL × HEAD_POOL`, flattened channel-major: `[n, c·4]`, value
/// `c·4 + py·2 + px` (as `torch.flatten` of `[n, c, 2, 2]`). A window's pixels are summed
/// whole rows of channels at a time (contiguous, vectorized), each channel's sum in the
/// same pixel order as one channel at a time.
pub(crate) fn head_pool(x: &[f32], s: Nhwc) -> Vec<f32> {
    let p = HEAD_POOL;
    let c = s.c;
    let mut f = vec![0f32; s.n * c * p * p];
    f.par_chunks_mut(c * p * p).zip(x.par_chunks(s.image())).for_each(|(f, img)| {
        let mut sum = vec![0f32; c];
        for py in 0..p {
            let (y0, y1) = pool_window(py, s.h, p);
            for px in 0..p {
                let (x0, x1) = pool_window(px, s.w, p);
                let inv = 1.0 / ((y1 - y0) * (x1 - x0)) as f32;
                sum.fill(0.0);
                for y in y0..y1 {
                    for xx in x0..x1 {
                        let pixel = &img[(y * s.w + xx) * c..(y * s.w + xx + 1) * c];
                        for (a, v) in sum.iter_mut().zip(pixel) {
                            *a += v;
                        }
                    }
                }
                for (ch, a) in sum.iter().enumerate() {
                    f[ch * p * p + py * p + px] = a * inv;
                }
            }
        }
    });
    f
}

/// The backward pass of [`head_pool`], into a recycled step buffer (give it back with
/// `scratch::give`).
pub(crate) fn head_pool_backward(df: &[f32], s: Nhwc) -> Vec<f32> {
    let p = HEAD_POOL;
    let c = s.c;
    let mut dx = crate::scratch::take(s.len());
    dx.par_chunks_mut(s.image()).zip(df.par_chunks(c * p * p)).for_each(|(img, df)| {
        // Adaptive windows may overlap (odd sides): every pixel's share is added.
        img.fill(0.0);
        let mut g = vec![0f32; c];
        for py in 0..p {
            let (y0, y1) = pool_window(py, s.h, p);
            for px in 0..p {
                let (x0, x1) = pool_window(px, s.w, p);
                let inv = 1.0 / ((y1 - y0) * (x1 - x0)) as f32;
                for (ch, g) in g.iter_mut().enumerate() {
                    *g = df[ch * p * p + py * p + px] * inv;
                }
                for y in y0..y1 {
                    for xx in x0..x1 {
                        for (d, g) in img[(y * s.w + xx) * c..(y * s.w + xx + 1) * c].iter_mut().zip(&g) {
                            *d += g;
                        }
                    }
                }
            }
        }
    });
    dx
}

/// Softmax cross-entropy with label smoothing `eps` (target `(1-eps)·onehot + eps/K`):
/// the mean loss and its gradient `(p - target)/n`.
pub fn smoothed_cross_entropy(logits: &[f32], labels: &[u8], classes: usize, eps: f32) -> (f32, Vec<f32>) {
    let n = labels.len();
    let mut d = vec![0f32; logits.len()];
    let mut loss = 0f64;
    let scale = 1.0 / n as f32;
    let off = eps / classes as f32;
    for ((row, drow), &label) in logits.chunks_exact(classes).zip(d.chunks_exact_mut(classes)).zip(labels) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for (e, &v) in drow.iter_mut().zip(row) {
            *e = (v - max).exp();
            sum += *e;
        }
        let lse = sum.ln() + max;
        let mut l = 0f64;
        for (k, (e, &v)) in drow.iter_mut().zip(row).enumerate() {
            let target = off + if k == label as usize { 1.0 - eps } else { 0.0 };
            l += (target * (lse - v)) as f64;
            *e = (*e / sum - target) * scale;
        }
        loss += l;
    }
    ((loss / n as f64) as f32, d)
}
