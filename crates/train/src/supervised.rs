//! The supervised loop of any network, as the learner runs it: the batches (rows of the
//! kept split, or raw inputs made per batch when augmentation changes them, pushed
//! through the frozen part by the step), the epoch's line (training sums, the validation
//! split), and the frozen part's cost. An MLP's depth, a convolutional depth and an
//! autoencoder's probe all train through it.

use crate::learner::{BatchSeeds, Learn, NotFinite};
use crate::progress::Reporter;
use anyhow::Result;
use layerwise_core::metrics::EpochMetrics;
use layerwise_nn::{EvalSums, Moments, Named, Step};
use std::time::Instant;

/// Raw training inputs a batch is made from, on the host, when the step's input cannot
/// be kept (augmentation changes the images every batch).
pub(crate) struct RawBatches<'x> {
    /// The training split's inputs, one row per example.
    pub(crate) x: &'x [f32],
    /// Its labels.
    pub(crate) labels: &'x [u8],
    /// Flip-crop each batch's images of this `[channels, height, width]` shape.
    pub(crate) flip_crop: Option<[usize; 3]>,
    /// Frozen-part rows to count per example (the frozen layers an MLP's batch goes
    /// through, or 1 for a convolutional network with frozen stages).
    pub(crate) prefix_cost: usize,
}

/// A network's supervised loop over a [`Step`].
pub(crate) struct Supervised<'s, 'a, 'x> {
    step: &'s mut (dyn Step<'a> + 'a),
    raw: Option<RawBatches<'x>>,
    rows: usize,
    /// Rows pushed through the frozen part, and its seconds, per batch made here.
    pub(crate) prefix_rows: usize,
    pub(crate) prefix_seconds: f64,
    xb: Vec<f32>,
    yb: Vec<u8>,
}

impl<'s, 'a, 'x> Supervised<'s, 'a, 'x> {
    /// The loop of `step` over `rows` training rows: batches made from `raw` when given,
    /// else rows of the split the step keeps.
    pub(crate) fn new(step: &'s mut (dyn Step<'a> + 'a), raw: Option<RawBatches<'x>>, rows: usize) -> Self {
        Self { step, raw, rows, prefix_rows: 0, prefix_seconds: 0.0, xb: Vec::new(), yb: Vec::new() }
    }
}

/// An epoch's line of the history: the training sums of its steps, the validation sums,
/// its seconds, over `n` training examples.
pub(crate) fn epoch_metrics(epoch: usize, train: &EvalSums, val: &EvalSums, seconds: f64, n: usize) -> EpochMetrics {
    EpochMetrics {
        epoch,
        train_loss: train.loss(),
        train_accuracy: train.accuracy(),
        val_loss: val.loss(),
        val_accuracy: val.accuracy(),
        seconds,
        samples_per_second: n as f64 / seconds,
    }
}

impl Learn for Supervised<'_, '_, '_> {
    type Record = EpochMetrics;

    fn step(&mut self, rows: &[usize], seeds: &BatchSeeds, lr: f64) -> Result<Option<f32>> {
        let Some(raw) = &self.raw else { return self.step.step_rows(rows, seeds.dropout(), lr) };
        // Host batches, gathered into buffers allocated once.
        let dim = raw.x.len() / raw.labels.len().max(1);
        self.xb.clear();
        self.yb.clear();
        for &i in rows {
            self.xb.extend_from_slice(&raw.x[i * dim..(i + 1) * dim]);
            self.yb.push(raw.labels[i]);
        }
        if let Some(shape) = raw.flip_crop {
            layerwise_nn::flip_crop(&mut self.xb, shape, 4, seeds.augment());
        }
        self.prefix_rows += rows.len() * raw.prefix_cost;
        let (loss, seconds) = self.step.step_inputs(&self.xb, &self.yb, seeds.dropout(), lr)?;
        self.prefix_seconds += seconds;
        Ok(loss)
    }

    fn running(&self, _seen: usize) -> String {
        self.step.running().map_or(String::new(), |(l, a)| format!("loss {l:.4} acc {a:.4}"))
    }

    fn end_epoch(&mut self, epoch: usize, started: Instant) -> Result<EpochMetrics> {
        let sums = self.step.take_sums();
        if !sums.loss().is_finite() {
            return Err(NotFinite(sums.loss()).into());
        }
        let val = self.step.evaluate_val()?;
        Ok(epoch_metrics(epoch, &sums, &val, started.elapsed().as_secs_f64(), self.rows))
    }

    fn show(&self, bar: &mut Reporter, record: &EpochMetrics) {
        bar.epoch(record);
    }

    fn tensors(&self) -> Named {
        self.step.tensors()
    }

    fn optimizer_state(&self) -> (i32, Moments) {
        self.step.optimizer_state()
    }
}
