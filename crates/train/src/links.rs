//! The links between groups of a decoupled run, and the launcher that runs groups as
//! threads of this process.
//!
//! A link carries encoded [`Frame`]s, the same bytes whatever carries them: a bounded
//! channel between two threads (synchronous mode: the sender waits when `buffer` frames
//! are in flight), an unbounded one drained into the receiver's [`ReplayBuffer`]
//! (asynchronous mode: the sender never waits), or MPI messages between ranks
//! (`mpi_links.rs`). The receiving side ([`Upstream`]) decodes and checks every frame
//! against what it expects, so a frame of another version, link, index, shape or a
//! damaged one is refused naming the link and the frame.

use crate::decoupled::{run_group, write_checkpoints, DecoupledOptions, GroupReport, Shared};
use crate::options::TrainOutcome;
use crate::progress::Progress;
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

    /// What crossed the link.
    pub(crate) fn stats(&self) -> LinkStats {
        LinkStats { replay: (self.mode == Mode::Async).then(|| self.buffer.stats()), ..self.stats }
    }
}

/// The sending end of a channel between two threads.
enum ThreadOut {
    Bounded(mpsc::SyncSender<Vec<u8>>),
    Unbounded(mpsc::Sender<Vec<u8>>),
}

struct ThreadOutbox {
    tx: ThreadOut,
    link: usize,
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

struct ThreadInbox {
    rx: mpsc::Receiver<Vec<u8>>,
    link: usize,
}

impl Inbox for ThreadInbox {
    fn recv(&mut self) -> Result<Vec<u8>> {
        self.rx.recv().map_err(|_| LinkClosed(format!("link {}: the group before it stopped", self.link)).into())
    }

    fn try_recv(&mut self) -> Result<Option<Vec<u8>>> {
        Ok(self.rx.try_recv().ok())
    }
}

/// Run every group as a thread of this process (each with its share of the cores for
/// its products), then write the checkpoints.
pub(crate) fn run_threads(opts: &DecoupledOptions) -> Result<Vec<TrainOutcome>> {
    let shared = Shared::new(opts)?;
    let started = Instant::now();
    let groups = shared.groups();
    let all = 0..shared.stages.len();
    let epoch = shared.latest_saved(all);
    say(&shared, epoch);
    let reports = if epoch == opts.config.epochs {
        Vec::new()
    } else {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per_group = (cores / groups.len()).max(1);
        let progress = opts.progress;
        let mut inboxes: Vec<Option<ThreadInbox>> = vec![None];
        let mut outboxes: Vec<Option<ThreadOutbox>> = Vec::new();
        for g in 1..groups.len() {
            let link = groups[g].start;
            let (tx, rx) = match opts.decoupled.mode {
                Mode::Sync => {
                    let (tx, rx) = mpsc::sync_channel(opts.decoupled.buffer);
                    (ThreadOut::Bounded(tx), rx)
                }
                Mode::Async => {
                    let (tx, rx) = mpsc::channel();
                    (ThreadOut::Unbounded(tx), rx)
                }
            };
            outboxes.push(Some(ThreadOutbox { tx, link }));
            inboxes.push(Some(ThreadInbox { rx, link }));
        }
        outboxes.push(None);
        let results: Vec<Result<GroupReport>> = std::thread::scope(|s| {
            let handles: Vec<_> = groups
                .iter()
                .cloned()
                .enumerate()
                .zip(inboxes.into_iter().zip(outboxes))
                .map(|((g, range), (inbox, outbox))| {
                    let shared = &shared;
                    s.spawn(move || -> Result<GroupReport> {
                        let pool = rayon::ThreadPoolBuilder::new().num_threads(per_group).build()?;
                        pool.install(|| {
                            let inbox = inbox.map(|b| Box::new(b) as Box<dyn Inbox>);
                            let outbox = outbox.map(|b| Box::new(b) as Box<dyn Outbox>);
                            run_group(shared, g, range, epoch, inbox, outbox, progress)
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("a group's thread panicked"))))
                .collect()
        });
        first_cause(results)?
    };
    let reports = reports.iter().map(serde_json::to_value).collect::<Result<Vec<_>, _>>()?;
    write_checkpoints(&shared, &reports, started, epoch > 0)
}

/// Say where a run starts: from the beginning, or after the last epoch every stage saved.
pub(crate) fn say(shared: &Shared, epoch: usize) {
    if shared.opts.progress == Progress::Quiet || epoch == 0 {
        return;
    }
    let e = shared.opts.config.epochs;
    let text = if epoch == e {
        "every stage finished: writing the checkpoints".to_string()
    } else {
        format!("resuming every stage after epoch {epoch} of {e}, the last one all stages saved")
    };
    layerwise_core::progress::println(&format!("decoupled: {text}"));
}

/// The groups' reports, or the error that stopped the run: a group's own, before the
/// links that closed because of it.
pub(crate) fn first_cause(results: Vec<Result<GroupReport>>) -> Result<Vec<GroupReport>> {
    let mut closed = None;
    let mut reports = Vec::new();
    for (g, r) in results.into_iter().enumerate() {
        match r {
            Ok(rep) => reports.push(rep),
            Err(e) if e.downcast_ref::<LinkClosed>().is_some() => {
                closed.get_or_insert(e);
            }
            Err(e) => return Err(e.context(format!("group {g} of the decoupled run failed"))),
        }
    }
    match closed {
        Some(e) => Err(e),
        None => Ok(reports),
    }
}
