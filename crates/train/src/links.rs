//! The links between groups of a decoupled run.
//!
//! A link carries encoded [`Frame`]s, the same bytes whatever carries them: a bounded
//! channel between two threads (synchronous mode: the sender waits when `buffer` frames
//! are in flight), an unbounded one drained into the receiver's [`ReplayBuffer`]
//! (asynchronous mode: the sender never waits), or MPI messages between ranks
//! (`mpi_links.rs`). The receiving side ([`Upstream`]) decodes and checks every frame
//! against what it expects, so a frame of another version, link, index, shape or a
//! damaged one is refused naming the link and the frame. The launchers that make links
//! are `launch.rs` (threads) and `mpi_links.rs` (ranks).

use crate::replay::ReplayBuffer;
use anyhow::{anyhow, Result};
use layerwise_core::decoupled::Mode;
use layerwise_core::link::{Expected, Frame, FrameKind};
use std::sync::mpsc;
use std::time::Instant;

/// The sending end of a link.
pub(crate) trait Outbox {
    /// Send one encoded frame (waiting while a bounded link is full).
    fn send(&mut self, frame: Vec<u8>) -> Result<()>;
}

/// The receiving end of a link.
pub(crate) trait Inbox {
    /// The next encoded frame, waiting for it.
    fn recv(&mut self) -> Result<Vec<u8>>;
    /// The next encoded frame if one has arrived.
    fn try_recv(&mut self) -> Result<Option<Vec<u8>>>;
}

/// What crossed a link, as one end saw it.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub(crate) struct LinkStats {
    /// Frames and bytes.
    pub(crate) frames: u64,
    pub(crate) bytes: u64,
    /// Seconds spent waiting on the link (a full link for a sender, an empty one for a
    /// receiver).
    pub(crate) blocked_seconds: f64,
    /// Asynchronous mode: the receiver's buffer.
    pub(crate) replay: Option<crate::replay::ReplayStats>,
}

/// A link that stopped because the group at its other end did: that group's error is the
/// one to report.
#[derive(Debug)]
pub(crate) struct LinkClosed(pub(crate) String);

impl std::fmt::Display for LinkClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LinkClosed {}

/// A group's incoming link, decoded and checked: the batches and validation chunks of
/// the group before, in order (synchronous) or through a bounded buffer (asynchronous).
pub(crate) struct Upstream<'d> {
    inbox: Box<dyn Inbox + 'd>,
    link: u32,
    shape: Vec<u32>,
    max_rows: u32,
    mode: Mode,
    val_chunks: u64,
    buffer: ReplayBuffer<Frame>,
    pending_val: Vec<(Vec<f32>, Vec<u8>)>,
    latest_val: Option<Vec<(Vec<f32>, Vec<u8>)>>,
    done: bool,
    stats: LinkStats,
}

impl<'d> Upstream<'d> {
    /// The link into stage `first` (0-based: link `first`, after depth `first`), carrying
    /// examples of `input` `[h, w, c]`, at most `batch` rows a frame.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        inbox: Box<dyn Inbox + 'd>,
        first: u32,
        input: [usize; 3],
        batch: usize,
        mode: Mode,
        buffer: usize,
        reuse: u32,
        val_chunks: usize,
    ) -> Self {
        Self {
            inbox,
            link: first,
            shape: input.iter().map(|&d| d as u32).collect(),
            max_rows: batch.max(layerwise_nn::convnet::INFER_CHUNK) as u32,
            mode,
            val_chunks: val_chunks as u64,
            buffer: ReplayBuffer::new(buffer, reuse),
            pending_val: Vec::new(),
            latest_val: None,
            done: false,
            stats: LinkStats::default(),
        }
    }

    fn expected(&self, next: Option<(FrameKind, u64)>) -> Expected {
        Expected { link: self.link, next, shape: self.shape.clone(), max_rows: self.max_rows }
    }

    fn recv(&mut self, next: Option<(FrameKind, u64)>) -> Result<Frame> {
        let t = Instant::now();
        let bytes = self.inbox.recv()?;
        self.stats.blocked_seconds += t.elapsed().as_secs_f64();
        self.decode(&bytes, next)
    }

    fn decode(&mut self, bytes: &[u8], next: Option<(FrameKind, u64)>) -> Result<Frame> {
        self.stats.frames += 1;
        self.stats.bytes += bytes.len() as u64;
        Frame::decode(bytes, &self.expected(next))
    }

    /// Take a frame that arrived into the buffer (training batches), the validation set
    /// being gathered, or the end of the stream.
    fn route(&mut self, f: Frame) {
        match f.kind {
            FrameKind::Train => {
                self.buffer.push(f);
            }
            FrameKind::Val => {
                if f.batch % self.val_chunks.max(1) == 0 {
                    self.pending_val.clear();
                }
                self.pending_val.push((f.values, f.labels));
                if self.pending_val.len() as u64 == self.val_chunks {
                    self.latest_val = Some(std::mem::take(&mut self.pending_val));
                }
            }
            FrameKind::End => self.done = true,
        }
    }

    fn drain(&mut self) -> Result<()> {
        while let Some(bytes) = self.inbox.try_recv()? {
            let f = self.decode(&bytes, None)?;
            self.route(f);
        }
        Ok(())
    }

    /// Training batch `t` (synchronous), or the buffer's choice (asynchronous).
    pub(crate) fn next_batch(&mut self, t: u64) -> Result<Frame> {
        if self.mode == Mode::Sync {
            return self.recv(Some((FrameKind::Train, t)));
        }
        self.drain()?;
        loop {
            if let Some((_, _, f)) = self.buffer.sample() {
                return Ok(f);
            }
            if self.done {
                return self.buffer.sample_past_limit().map(|(_, _, f)| f).ok_or_else(|| {
                    anyhow!("link {}: the group before finished without sending a training batch", self.link)
                });
            }
            let f = self.recv(None)?;
            self.route(f);
        }
    }

    /// The validation split's chunks for this epoch: chunks `first..first + chunks` in
    /// order (synchronous), or the last complete set that arrived (asynchronous).
    pub(crate) fn val_set(&mut self, first: u64, chunks: usize) -> Result<Vec<(Vec<f32>, Vec<u8>)>> {
        if self.mode == Mode::Sync {
            return (0..chunks as u64)
                .map(|c| self.recv(Some((FrameKind::Val, first + c))).map(|f| (f.values, f.labels)))
                .collect();
        }
        self.drain()?;
        while self.latest_val.is_none() {
            if self.done {
                return Err(anyhow!(
                    "link {}: the group before finished without sending the validation split",
                    self.link
                ));
            }
            let f = self.recv(None)?;
            self.route(f);
        }
        Ok(self.latest_val.clone().unwrap_or_default())
    }

    /// Read the link to its end, once this group has finished: the group before may still
    /// be sending (asynchronous mode), and a frame left unread would keep it waiting.
    pub(crate) fn finish(&mut self) -> Result<()> {
        while !self.done {
            let f = self.recv(None)?;
            self.route(f);
        }
        Ok(())
    }

    /// What crossed the link.
    pub(crate) fn stats(&self) -> LinkStats {
        LinkStats { replay: (self.mode == Mode::Async).then(|| self.buffer.stats()), ..self.stats }
    }
}

/// The sending end of a channel between two threads.
pub(crate) enum ThreadOut {
    Bounded(mpsc::SyncSender<Vec<u8>>),
    Unbounded(mpsc::Sender<Vec<u8>>),
}

/// A link's sending end in a group that is a thread.
pub(crate) struct ThreadOutbox {
    pub(crate) tx: ThreadOut,
    pub(crate) link: usize,
}

impl Outbox for ThreadOutbox {
    fn send(&mut self, frame: Vec<u8>) -> Result<()> {
        let sent = match &self.tx {
            ThreadOut::Bounded(tx) => tx.send(frame).is_ok(),
            ThreadOut::Unbounded(tx) => tx.send(frame).is_ok(),
        };
        sent.then_some(()).ok_or_else(|| LinkClosed(format!("link {}: the group after it stopped", self.link)).into())
    }
}

/// A link's receiving end in a group that is a thread.
pub(crate) struct ThreadInbox {
    pub(crate) rx: mpsc::Receiver<Vec<u8>>,
    pub(crate) link: usize,
}

impl Inbox for ThreadInbox {
    fn recv(&mut self) -> Result<Vec<u8>> {
        self.rx.recv().map_err(|_| LinkClosed(format!("link {}: the group before it stopped", self.link)).into())
    }

    fn try_recv(&mut self) -> Result<Option<Vec<u8>>> {
        Ok(self.rx.try_recv().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::{Inbox, Upstream};
    use anyhow::Result;
    use layerwise_core::decoupled::Mode;
    use layerwise_core::link::{Frame, FrameKind};
    use std::collections::VecDeque;

    /// Frames handed over in order, as a link delivers them.
    struct Queue(VecDeque<Vec<u8>>);

    impl Inbox for Queue {
        fn recv(&mut self) -> Result<Vec<u8>> {
            self.0.pop_front().ok_or_else(|| anyhow::anyhow!("empty"))
        }

        fn try_recv(&mut self) -> Result<Option<Vec<u8>>> {
            Ok(self.0.pop_front())
        }
    }

    fn frame(kind: FrameKind, link: u32, batch: u64, shape: Vec<u32>) -> Vec<u8> {
        let per: u32 = shape.iter().product();
        let rows = if kind == FrameKind::End { 0 } else { 2 };
        Frame { kind, link, batch, shape, values: vec![0.5; (rows * per) as usize], labels: vec![1; rows as usize] }
            .encode()
            .unwrap()
    }

    fn upstream(frames: Vec<Vec<u8>>, mode: Mode) -> Upstream<'static> {
        Upstream::new(Box::new(Queue(frames.into())), 2, [4, 4, 3], 64, mode, 2, 2, 1)
    }

    #[test]
    fn a_synchronous_link_takes_its_frames_in_order_and_refuses_others_by_name() {
        let good = |b| frame(FrameKind::Train, 2, b, vec![4, 4, 3]);
        let mut up = upstream(vec![good(0), good(1)], Mode::Sync);
        assert_eq!(up.next_batch(0).unwrap().batch, 0);
        assert_eq!(up.next_batch(1).unwrap().batch, 1);
        let cases = [
            (good(5), "training batch 5 arrived where training batch 0 was expected"),
            (frame(FrameKind::Train, 3, 0, vec![4, 4, 3]), "is for link 3"),
            (frame(FrameKind::Train, 2, 0, vec![4, 4, 4]), "carries examples of shape [4, 4, 4]"),
            (frame(FrameKind::Val, 2, 0, vec![4, 4, 3]), "validation chunk 0 arrived where training batch 0"),
        ];
        for (bytes, needle) in cases {
            let e = format!("{:#}", upstream(vec![bytes], Mode::Sync).next_batch(0).unwrap_err());
            assert!(e.starts_with("link 2:") && e.contains(needle), "{needle}: {e}");
        }
        let mut damaged = good(0);
        damaged[50] ^= 1;
        let e = format!("{:#}", upstream(vec![damaged], Mode::Sync).next_batch(0).unwrap_err());
        assert!(e.contains("checksum"), "{e}");
    }

    #[test]
    fn an_asynchronous_link_trains_on_the_freshest_and_reuses_after_the_end() {
        let f = |b| frame(FrameKind::Train, 2, b, vec![4, 4, 3]);
        let val = frame(FrameKind::Val, 2, 0, vec![4, 4, 3]);
        let end = frame(FrameKind::End, 2, 3, vec![1]);
        let mut up = upstream(vec![f(0), f(1), f(2), val, end], Mode::Async);
        // Buffer of 2: batch 0 pushed out unused; batch 2 is the freshest.
        assert_eq!(up.next_batch(0).unwrap().batch, 2);
        assert_eq!(up.next_batch(1).unwrap().batch, 1);
        assert_eq!(up.next_batch(2).unwrap().batch, 2);
        assert_eq!(up.next_batch(3).unwrap().batch, 1);
        // Reuse limit 2 reached and the sender has finished: past the limit, counted.
        assert_eq!(up.next_batch(4).unwrap().batch, 2);
        let stats = up.stats().replay.unwrap();
        assert_eq!((stats.dropped, stats.reused, stats.past_limit), (1, 3, 1));
        assert_eq!(up.val_set(0, 1).unwrap().len(), 1);
    }
}
