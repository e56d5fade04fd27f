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
