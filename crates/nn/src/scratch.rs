//! Step buffers recycled on the thread that runs the step: the convolution's output,
//! BatchNorm's output and their gradient are tens of MB each, and a fresh
//! `vec![0.0; n]` of that size is zeroed before the kernel overwrites all of it (a tenth of
//! a stage epoch, measured with `perf` on `cnn.toml`'s first stages).

use std::cell::RefCell;

/// Buffers kept per thread (a step of several blocks gives back three a block).
const KEEP: usize = 12;

thread_local! {
    static FREE: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of `len` values whose contents are unspecified (an earlier step's values, or
/// zeros): only for a caller that writes every element before reading any.
pub(crate) fn take(len: usize) -> Vec<f32> {
    let reused = FREE.with(|free| {
        let mut free = free.borrow_mut();
        // The smallest buffer that holds `len`.
        let best = free.iter().enumerate().filter(|(_, v)| v.capacity() >= len).min_by_key(|(_, v)| v.capacity());
        best.map(|(i, _)| i).map(|i| free.swap_remove(i))
    });
    let mut v = reused.unwrap_or_default();
    // Shrinks without writing, or grows with zeros written only past the old length.
    v.resize(len, 0.0);
    v
}

/// Hand a buffer back for a later [`take`] on this thread.
pub(crate) fn give(v: Vec<f32>) {
    if v.capacity() == 0 {
        return;
    }
    FREE.with(|free| {
        let mut free = free.borrow_mut();
        if free.len() < KEEP {
            free.push(v);
        }
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_taken_buffer_has_the_asked_length_and_reuses_a_given_one() {
        let v = super::take(1000);
        assert_eq!(v.len(), 1000);
        let ptr = v.as_ptr();
        super::give(v);
        let w = super::take(500);
        assert_eq!((w.len(), w.as_ptr()), (500, ptr), "the given buffer comes back, cut to length");
        super::give(w);
        let big = super::take(5000);
        assert_eq!(big.len(), 5000);
        assert!(big.iter().all(|&x| x == 0.0), "grown or new elements are zeros");
    }
}
