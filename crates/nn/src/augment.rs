//! Per-batch randomness: dropout masks and flip-crop augmentation, drawn from seeds.

use crate::backend::{Backend, Matrix};
use rand::{Rng, SeedableRng};

/// Inverted-dropout masks for `rows × widths[i]` activations, on the host: each unit kept
/// with probability `1 - rate` and scaled by `1 / (1 - rate)`, drawn from `seed` alone (so
/// a resumed run draws the same masks).
pub fn host_dropout_masks(rows: usize, widths: &[usize], rate: f64, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let keep = 1.0 / (1.0 - rate) as f32;
    widths.iter().map(|&w| (0..rows * w).map(|_| if rng.gen::<f64>() < rate { 0.0 } else { keep }).collect()).collect()
}

/// Inverted-dropout masks for activations of `rows × widths[i]`, on device `dev`:
/// [`host_dropout_masks`], copied over.
pub fn dropout_masks<D: Backend>(dev: &D, rows: usize, widths: &[usize], rate: f64, seed: u64) -> Vec<Matrix<D>> {
    host_dropout_masks(rows, widths, rate, seed)
        .into_iter()
        .zip(widths)
        .map(|(m, &w)| dev.tensor_from_vec(m, (rows, w)))
        .collect()
}

/// Random horizontal flip and random 32×32 crop of the image zero-padded by `pad` pixels,
/// per image, in place: `images` holds `[n, channels·height·width]` rows (CHW).
pub fn flip_crop(images: &mut [f32], shape: [usize; 3], pad: usize, seed: u64) {
    let [c, h, w] = shape;
    let size = c * h * w;
    if size == 0 {
        return;
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = vec![0f32; size];
    for img in images.chunks_exact_mut(size) {
        let flip = rng.gen_bool(0.5);
        let dy = rng.gen_range(0..=2 * pad) as isize - pad as isize;
        let dx = rng.gen_range(0..=2 * pad) as isize - pad as isize;
        for ch in 0..c {
            for y in 0..h {
                let sy = y as isize + dy;
                for x in 0..w {
                    let xx = if flip { w - 1 - x } else { x };
                    let sx = xx as isize + dx;
                    out[ch * h * w + y * w + x] = if sy >= 0 && sy < h as isize && sx >= 0 && sx < w as isize {
                        img[ch * h * w + sy as usize * w + sx as usize]
                    } else {
                        0.0
                    };
                }
            }
        }
        img.copy_from_slice(&out);
    }
}
