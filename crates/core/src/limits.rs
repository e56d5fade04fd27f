//! The limits every count a user gives is held to, checked before anything is allocated.

use anyhow::{bail, Result};

/// The most epochs a depth (or a probe, a fine-tuning, a baseline) may train: far past any
/// recipe, and small enough that the per-epoch history is allocated without a thought.
pub const MAX_EPOCHS: usize = 100_000;
/// The largest batch.
pub const MAX_BATCH_SIZE: usize = 1 << 20;
/// The widest hidden layer.
pub const MAX_WIDTH: usize = 1 << 20;
/// The deepest network (greedy depths, a scratch network's layers).
pub const MAX_DEPTH: usize = 1_000;

/// `Err` naming `key` and the limit when `value` is above `max` (checked before anything
/// is allocated for it).
pub fn check_limit(key: &str, value: usize, max: usize) -> Result<()> {
    if value > max {
        bail!("invalid setting `{key}`: {value} is above the limit of {max}");
    }
    Ok(())
}

/// The longest side of an image: a model's input, a resize target, a convolutional
/// network's image.
pub const MAX_IMAGE_SIDE: usize = 1 << 14;
/// The most values (channels × height × width) one image may have: 2^26, so a 4096 × 4096
/// RGB image (50 M) passes and nothing a user or a damaged file writes can ask for a
/// batch of terabytes.
pub const MAX_IMAGE_VALUES: usize = 1 << 26;

/// The bounds of an input contract's statistics. Pixels are scaled to p/255 ∈ [0, 1]
/// before the mean is subtracted and the std divides, so a channel's mean lies in [0, 1]
/// and its std in (0, 0.5]; prepare keeps a constant channel's std at 1e-6. `unit` is mean
/// 0 and std 1 exactly.
pub const CONTRACT_MEAN: (f64, f64) = (0.0, 1.0);
/// See [`CONTRACT_MEAN`].
pub const CONTRACT_STD: (f64, f64) = (1e-7, 1.0);

/// The values of one `[channels, height, width]` image, with every side and the product
/// checked against [`MAX_IMAGE_SIDE`] and [`MAX_IMAGE_VALUES`] before anything is allocated
/// for it (`what` names the shape's owner in the message).
pub fn image_values(what: &str, shape: [usize; 3]) -> Result<usize> {
    for (axis, &v) in ["channels", "height", "width"].iter().zip(&shape) {
        if v == 0 {
            bail!("{what}: shape {shape:?} has {axis} 0");
        }
        if v > MAX_IMAGE_SIDE {
            bail!("{what}: shape {shape:?} has {axis} {v}, above the limit of {MAX_IMAGE_SIDE}");
        }
    }
    match shape[0].checked_mul(shape[1]).and_then(|n| n.checked_mul(shape[2])) {
        Some(n) if n <= MAX_IMAGE_VALUES => Ok(n),
        _ => bail!("{what}: shape {shape:?} has more than {MAX_IMAGE_VALUES} values an image (the limit)"),
    }
}

#[cfg(test)]
mod tests {
    use crate::limits::image_values;

    #[test]
    fn image_values_are_checked_before_they_wrap() {
        assert_eq!(image_values("x", [3, 32, 32]).unwrap_or(0), 3072);
        assert_eq!(image_values("x", [3, 4096, 4096]).unwrap_or(0), 3 * 4096 * 4096);
        // [3, 2^63 + 32, 32] wraps to 3072 in unchecked arithmetic.
        let e = image_values("input contract", [3, 9_223_372_036_854_775_840, 32]).map(|_| ()).unwrap_err();
        assert!(e.to_string().contains("height 9223372036854775840, above the limit of 16384"), "{e}");
        let e = image_values("x", [3, 16384, 16384]).map(|_| ()).unwrap_err();
        assert!(e.to_string().contains("more than 67108864 values"), "{e}");
        assert!(image_values("x", [0, 32, 32]).is_err());
    }
}
