//! The one epoch loop. A [`Learner`] owns the schedule (epochs, batches, shuffling, the
//! learning rate of every step, the seeds of every batch), the progress bar, the best
//! epoch, and the state saved after each epoch for resume; what it trains is a [`Learn`]:
//! a network's supervised loop (an MLP's, a convolutional network's, an autoencoder's
//! probe: `supervised.rs`) or an autoencoder layer's pretraining (`pretrain.rs`).
//!
//! Shuffling is seeded per depth, loop and epoch, and each epoch shuffles the previous
//! epoch's order: a resumed run replays the shuffles of the epochs it skips, so its
//! batches are the uninterrupted run's.

use crate::progress::{Progress, Reporter};
use crate::resume::stop_if_asked;
use crate::state::{Best, LoopState, Record};
use anyhow::{anyhow, Result};
use layerwise_core::config::{Regime, TrainConfig};
use layerwise_core::mix_seed;
use layerwise_nn::{Moments, Named};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::Path;
use std::time::Instant;

/// The seeds of one batch: each purpose (augmentation, dropout, masking noise) draws
/// from its own, made from the run's seed, the depth, the loop's stream, the epoch and
/// the batch.
pub(crate) struct BatchSeeds {
    seed: u64,
    depth: u64,
    epoch_stream: u64,
    batch: u64,
}

impl BatchSeeds {
    /// Flip-crop augmentation's.
    pub(crate) fn augment(&self) -> u64 {
        self.purpose(1)
    }

    /// Dropout masks'.
    pub(crate) fn dropout(&self) -> u64 {
        self.purpose(2)
    }

    /// An autoencoder's masking noise.
    pub(crate) fn noise(&self) -> u64 {
        self.purpose(3)
    }

    fn purpose(&self, p: u64) -> u64 {
        mix_seed(self.seed, &[self.depth, self.epoch_stream, p, self.batch])
    }
}

/// Which loop a learner runs: its shuffle stream and the words its messages use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Loop {
    /// An MLP's supervised loop in a regime.
    Dense(Regime),
    /// A convolutional network's loop in a regime.
    Conv(Regime),
    /// The autoencoder objective's probe.
    Probe,
    /// The autoencoder objective's pretraining.
    Pretraining,
    /// A group of convolutional stages trained at once (`decoupled.rs`).
    Decoupled,
}

impl Loop {
    /// The shuffle (and noise) stream: each loop draws from its own seeds.
    pub(crate) fn stream(self) -> u64 {
        match self {
            Loop::Dense(Regime::Grow) => 1000,
            Loop::Dense(Regime::Finetune) => 3000,
            Loop::Dense(Regime::Scratch) => 5000,
            Loop::Pretraining => 7000,
            Loop::Probe => 9000,
            Loop::Conv(Regime::Grow) => 11_000,
            Loop::Conv(Regime::Finetune) => 13_000,
            Loop::Conv(Regime::Scratch) => 15_000,
            Loop::Decoupled => 17_000,
        }
    }

    /// What its epochs are called where a run stops (`stopped after pretraining epoch 2`).
    fn epoch_word(self) -> &'static str {
        if self == Loop::Pretraining {
            "pretraining epoch"
        } else {
            "epoch"
        }
    }

    /// What its loss is called where it diverges.
    fn loss_word(self) -> &'static str {
        if self == Loop::Pretraining {
            "reconstruction loss"
        } else {
            "loss"
        }
    }

    /// The progress bar's label at `depth`.
    fn label(self, depth: usize) -> String {
        match self {
            Loop::Probe => format!("depth {depth} probe"),
            Loop::Pretraining => format!("depth {depth} pretraining"),
            Loop::Decoupled => format!("group from depth {depth}"),
            _ => format!("depth {depth}"),
        }
    }

    /// Where a resumed loop says it continues.
    fn resuming(self, epoch: usize, of: usize) -> String {
        match self {
            Loop::Probe => format!("resuming at probe epoch {epoch} of {of}"),
            Loop::Pretraining => format!("resuming at epoch {epoch} of {of} of pretraining"),
            _ => format!("resuming at epoch {epoch} of {of}"),
        }
    }

    /// Whether it keeps its best epoch by validation accuracy (end-to-end training:
    /// fine-tuning, from scratch), rather than its last.
    fn keeps_best(self) -> bool {
        matches!(self, Loop::Dense(r) | Loop::Conv(r) if r != Regime::Grow)
    }

    /// Whether it saves its state after its last epoch too (a pretraining: the probe
    /// follows; a decoupled group: its stages' checkpoints are written from it), keeping
    /// no optimizer state then.
    fn saves_last(self) -> bool {
        matches!(self, Loop::Pretraining | Loop::Decoupled)
    }
}

/// What a [`Learner`] trains.
pub(crate) trait Learn {
    /// An epoch's line of the history.
    type Record: Record + Clone;
    /// One step on the rows `rows` of the training split (in shuffled order), with the
    /// batch's seeds and learning rate; the loss where it is known without waiting for a
    /// device.
    fn step(&mut self, rows: &[usize], seeds: &BatchSeeds, lr: f64) -> Result<Option<f32>>;
    /// The progress bar's text after `seen` rows of this epoch.
    fn running(&self, seen: usize) -> String;
    /// The epoch's line, once its steps are done: its training sums, the validation
    /// split, and its seconds since `started`. Errs when the epoch's loss is not finite.
    fn end_epoch(&mut self, epoch: usize, started: Instant) -> Result<Self::Record>;
    /// Show the epoch's line on the progress bar.
    fn show(&self, bar: &mut Reporter, record: &Self::Record);
    /// Every tensor of the trained part, by checkpoint name.
    fn tensors(&self) -> Named;
    /// The optimizer's step count and state.
    fn optimizer_state(&self) -> (i32, Moments);
}

/// What a loop trained: its history, its best epoch (where it keeps one) and its last
/// tensors.
pub(crate) struct Learned<R> {
    /// The history, every epoch.
    pub(crate) epochs: Vec<R>,
    /// The best epoch and its tensors, where the loop keeps its best.
    pub(crate) best: Option<Best>,
    /// The tensors after the last epoch.
    pub(crate) last: Named,
}

impl<R> Learned<R> {
    /// The tensors the loop keeps (its best epoch's, else its last) and that epoch.
    pub(crate) fn kept(self) -> (Named, Option<usize>) {
        match self.best {
            Some(b) => (b.tensors, Some(b.epoch)),
            None => (self.last, None),
        }
    }
}

/// The epoch loop's schedule.
pub(crate) struct Learner<'a> {
    /// The settings: seed, batch size, learning-rate schedule.
    pub(crate) config: &'a TrainConfig,
    /// The depth trained.
    pub(crate) depth: usize,
    /// The loop.
    pub(crate) kind: Loop,
    /// Its epochs.
    pub(crate) epochs: usize,
    /// Rows of the training split.
    pub(crate) rows: usize,
    /// How to show progress.
    pub(crate) progress: Progress,
    /// Where its state is saved (for messages).
    pub(crate) state_path: &'a Path,
}

impl Learner<'_> {
    /// The batch size (no larger than the split) and batches per epoch.
    pub(crate) fn batches(&self) -> (usize, usize) {
        let bs = self.config.batch_size.min(self.rows).max(1);
        (bs, self.rows.div_ceil(bs))
    }

    fn say(&self, text: &str) {
        if self.progress != Progress::Quiet {
            layerwise_core::progress::println(&format!("depth {}: {text}", self.depth));
        }
    }

    fn diverged(&self, loss: f64, when: String) -> anyhow::Error {
        anyhow!(
            "depth {}: the {} became {loss} {when}: training diverged; lower the learning rate (--lr) or check the \
             dataset; no checkpoint was written",
            self.depth,
            self.kind.loss_word()
        )
    }

    /// Train `l` from epoch 1, or from `saved` (a state of this same loop, validated),
    /// calling `save` with the loop's state after every epoch a rerun could continue from
    /// (and after the last one, for a pretraining).
    pub(crate) fn run<L: Learn>(
        &self,
        l: &mut L,
        saved: Option<LoopState<L::Record>>,
        mut save: impl FnMut(LoopState<L::Record>) -> Result<()>,
    ) -> Result<Learned<L::Record>> {
        let (bs, batches) = self.batches();
        let total = self.epochs;
        let (mut epochs, mut best, first_epoch) = match saved {
            Some(st) => {
                self.say(&format!(
                    "{} from the state an interrupted run left ({})",
                    self.kind.resuming(st.epoch + 1, total),
                    self.state_path.display()
                ));
                (st.epochs, st.best, st.epoch + 1)
            }
            None => (Vec::with_capacity(total), None, 1),
        };
        let (seed, depth, stream) = (self.config.seed, self.depth as u64, self.kind.stream());
        let epoch_rng =
            |epoch: usize| rand_chacha::ChaCha8Rng::seed_from_u64(mix_seed(seed, &[depth, stream + epoch as u64]));
        let mut order: Vec<usize> = (0..self.rows).collect();
        for epoch in 1..first_epoch {
            order.shuffle(&mut epoch_rng(epoch));
        }
        let keep_best = self.kind.keeps_best();
        let mut bar = self.progress.start(self.kind.label(self.depth), total, batches);
        for epoch in first_epoch..=total {
            let started = Instant::now();
            order.shuffle(&mut epoch_rng(epoch));
            for (b, chunk) in order.chunks(bs).enumerate() {
                let seeds = BatchSeeds { seed, depth, epoch_stream: stream + epoch as u64, batch: b as u64 };
                let lr = self.config.lr_at((epoch - 1) * batches + b, total * batches, batches);
                let loss = l.step(chunk, &seeds, lr)?;
                if let Some(loss) = loss.filter(|l| !l.is_finite()) {
                    let at = format!("at {} {epoch}, batch {} of {batches}", self.kind.epoch_word(), b + 1);
                    return Err(self.diverged(loss as f64, at));
                }
                bar.batch(b + 1, || l.running(b * bs + chunk.len()));
            }
            let record = l.end_epoch(epoch, started).map_err(|e| match e.downcast::<NotFinite>() {
                Ok(NotFinite(loss)) => self.diverged(loss, format!("during epoch {epoch}")),
                Err(e) => e,
            })?;
            l.show(&mut bar, &record);
            // One copy of the tensors to the host per epoch, for the best epoch and the state.
            let accuracy = record.val_accuracy().unwrap_or(f64::NAN);
            let improved = keep_best && best.as_ref().is_none_or(|b: &Best| accuracy > b.val_accuracy);
            let resumable = epoch < total;
            let saving = resumable || self.kind.saves_last();
            let now = (improved || saving).then(|| l.tensors());
            if let (true, Some(t)) = (improved, &now) {
                best = Some(Best { epoch, val_accuracy: accuracy, tensors: t.clone() });
            }
            epochs.push(record);
            if let (true, Some(tensors)) = (saving, now) {
                let (optimizer_t, optimizer) = l.optimizer_state();
                let optimizer = if resumable { optimizer } else { Vec::new() };
                let st =
                    LoopState { epoch, tensors, optimizer_t, optimizer, epochs: epochs.clone(), best: best.clone() };
                save(st)?;
                stop_if_asked(epoch, self.kind.epoch_word())?;
            }
        }
        bar.finish();
        let last = l.tensors();
        Ok(Learned { epochs, best: best.filter(|_| keep_best), last })
    }
}

/// An epoch's loss that is not finite, from [`Learn::end_epoch`]: the learner says the
/// training diverged.
#[derive(Debug)]
pub(crate) struct NotFinite(pub(crate) f64);

impl std::fmt::Display for NotFinite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the loss became {}", self.0)
    }
}

impl std::error::Error for NotFinite {}
