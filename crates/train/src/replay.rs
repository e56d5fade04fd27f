//! The bounded buffer on a link of decoupled greedy learning's asynchronous mode
//! (Belilovsky et al. 2020, their priority-LIFO): the sender pushes each batch it
//! produces; the receiver samples the least-reused batch, the freshest among those, so a
//! slower group never stalls a faster one, and a batch is reused at most `reuse_limit`
//! times.
//!
//! Both orders are explicit numbers, unlike the reference code's (`eugenium/DGL`,
//! `buffer_experiments`): a batch's *sequence number* is the count of batches pushed
//! before it (0, 1, 2, … for ever: it never wraps, so "freshest" is always the largest),
//! and its *uses* count from 0, so a limit of R allows exactly R uses. A batch leaves the
//! buffer only when a fresher one pushes it out; once the sender has finished, the
//! receiver may go past the limit ([`ReplayBuffer::sample_past_limit`], counted).

/// One batch in the buffer.
#[derive(Debug, Clone, PartialEq)]
struct Entry<T> {
    seq: u64,
    uses: u32,
    item: T,
}

/// What a buffer did, for the report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReplayStats {
    /// Batches pushed.
    pub pushed: u64,
    /// Samples taken.
    pub sampled: u64,
    /// Samples of a batch used before.
    pub reused: u64,
    /// Batches evicted unused (the buffer was full and they were the oldest).
    pub dropped: u64,
    /// Samples asked of a buffer with nothing usable (the receiver waits).
    pub skipped: u64,
    /// Samples past the reuse limit (the sender had finished).
    pub past_limit: u64,
}

/// A bounded buffer of up to `capacity` batches, each used at most `reuse_limit` times.
#[derive(Debug, Clone)]
pub struct ReplayBuffer<T> {
    capacity: usize,
    reuse_limit: u32,
    next_seq: u64,
    entries: Vec<Entry<T>>,
    stats: ReplayStats,
}

impl<T: Clone> ReplayBuffer<T> {
    /// A buffer of `capacity` batches (at least 1), each used at most `reuse_limit` times
    /// (at least 1; 1: every batch once, as the synchronous mode uses it).
    pub fn new(capacity: usize, reuse_limit: u32) -> Self {
        Self {
            capacity: capacity.max(1),
            reuse_limit: reuse_limit.max(1),
            next_seq: 0,
            entries: Vec::new(),
            stats: ReplayStats::default(),
        }
    }

    /// Add the sender's next batch; when the buffer is full the oldest batch goes (counted
    /// as dropped when it was never used). Returns the batch's sequence number.
    pub fn push(&mut self, item: T) -> u64 {
        if self.entries.len() == self.capacity {
            if let Some(oldest) = (0..self.entries.len()).min_by_key(|&i| self.entries[i].seq) {
                let gone = self.entries.remove(oldest);
                if gone.uses == 0 {
                    self.stats.dropped += 1;
                }
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries.push(Entry { seq, uses: 0, item });
        self.stats.pushed += 1;
        seq
    }

    /// The batch to train on next: among the batches used fewer times than the limit,
    /// the least used, the freshest (largest sequence number) among those; with its
    /// sequence number and the uses before this one. None (counted as skipped) when no
    /// batch is usable.
    pub fn sample(&mut self) -> Option<(u64, u32, T)> {
        let limit = self.reuse_limit;
        let got = self.take(|e| e.uses < limit);
        if got.is_none() {
            self.stats.skipped += 1;
        }
        got
    }

    /// As [`ReplayBuffer::sample`], past the reuse limit: for a receiver whose sender has
    /// finished. None only when the buffer is empty.
    pub fn sample_past_limit(&mut self) -> Option<(u64, u32, T)> {
        let limit = self.reuse_limit;
        let got = self.take(|_| true)?;
        if got.1 >= limit {
            self.stats.past_limit += 1;
        }
        Some(got)
    }

    fn take(&mut self, usable: impl Fn(&Entry<T>) -> bool) -> Option<(u64, u32, T)> {
        let i = (0..self.entries.len())
            .filter(|&i| usable(&self.entries[i]))
            .min_by_key(|&i| (self.entries[i].uses, u64::MAX - self.entries[i].seq))?;
        let e = &mut self.entries[i];
        let before = e.uses;
        e.uses += 1;
        self.stats.sampled += 1;
        if before > 0 {
            self.stats.reused += 1;
        }
        Some((e.seq, before, e.item.clone()))
    }

    /// Batches held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds no batch.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What it did so far.
    pub fn stats(&self) -> ReplayStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::{ReplayBuffer, ReplayStats};

    #[test]
    fn the_freshest_unused_batch_comes_first_and_a_limit_of_r_allows_r_uses() {
        let mut b = ReplayBuffer::new(3, 2);
        for x in ["a", "b", "c"] {
            b.push(x);
        }
        // Freshest first among the unused, then the least-reused, freshest first again.
        let order: Vec<(u64, u32, &str)> = std::iter::from_fn(|| b.sample()).collect();
        assert_eq!(order, [(2, 0, "c"), (1, 0, "b"), (0, 0, "a"), (2, 1, "c"), (1, 1, "b"), (0, 1, "a")]);
        // Two uses each, then none is usable: the next sample finds nothing and says so.
        assert_eq!(b.len(), 3);
        assert_eq!(b.stats(), ReplayStats { pushed: 3, sampled: 6, reused: 3, dropped: 0, skipped: 1, past_limit: 0 });
        // Past the limit (the sender has finished): the freshest of the least used.
        assert_eq!(b.sample_past_limit(), Some((2, 2, "c")));
        assert_eq!(b.stats().past_limit, 1);
        // A limit of 1 is every batch once.
        let mut once = ReplayBuffer::new(4, 1);
        once.push(1);
        once.push(2);
        assert_eq!((once.sample(), once.sample(), once.sample()), (Some((1, 0, 2)), Some((0, 0, 1)), None));
    }

    #[test]
    fn a_full_buffer_drops_its_oldest_batch_and_sequence_numbers_never_wrap() {
        let mut b = ReplayBuffer::new(2, 3);
        for x in 0..5u32 {
            b.push(x);
        }
        // Batches 0, 1 and 2 were dropped unused; 3 and 4 remain, 4 the freshest.
        assert_eq!((b.len(), b.stats().dropped), (2, 3));
        assert_eq!(b.sample(), Some((4, 0, 4)));
        assert_eq!(b.sample(), Some((3, 0, 3)));
        // A used batch that leaves a full buffer is not counted as dropped.
        b.push(5);
        assert_eq!(b.stats().dropped, 3, "batch 3, used once, left without counting");
        assert_eq!(b.len(), 2);
        // After the ring's worth of pushes the freshest is still the largest number.
        assert_eq!(b.sample(), Some((5, 0, 5)));
    }
}
