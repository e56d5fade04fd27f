//! Evaluation sums: loss, accuracy and the confusion matrix, without a tape.

use crate::backend::Backend;
use crate::layer::{forward_chunks, Layer};

/// Result of running a model over a split.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalSums {
    /// Sum of per-sample cross-entropy.
    pub loss_sum: f64,
    /// Correct predictions.
    pub correct: u64,
    /// `confusion[true][pred]`.
    pub confusion: Vec<Vec<u64>>,
    /// Samples seen.
    pub samples: u64,
}

impl EvalSums {
    /// Empty sums for `classes` classes.
    pub fn new(classes: usize) -> Self {
        Self { loss_sum: 0.0, correct: 0, confusion: vec![vec![0; classes]; classes], samples: 0 }
    }

    /// Add a batch of logits (`[n, classes]`, row-major, host) with their labels.
    pub fn add(&mut self, logits: &[f32], labels: &[u8]) {
        let c = self.confusion.len();
        for (row, &label) in logits.chunks_exact(c).zip(labels) {
            let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
            self.loss_sum += lse - row[label as usize] as f64;
            // first maximum wins, as numpy's argmax
            let pred = row.iter().enumerate().fold(0, |best, (i, &v)| if v > row[best] { i } else { best });
            self.confusion[label as usize][pred] += 1;
            if pred == label as usize {
                self.correct += 1;
            }
            self.samples += 1;
        }
    }

    /// Add a batch whose summed loss is known already (a training step computed it):
    /// only the predictions are taken from the logits.
    pub fn add_predictions(&mut self, logits: &[f32], labels: &[u8], loss_sum: f64) {
        let c = self.confusion.len();
        for (row, &label) in logits.chunks_exact(c).zip(labels) {
            // first maximum wins, as numpy's argmax
            let pred = row.iter().enumerate().fold(0, |best, (i, &v)| if v > row[best] { i } else { best });
            self.confusion[label as usize][pred] += 1;
            if pred == label as usize {
                self.correct += 1;
            }
            self.samples += 1;
        }
        self.loss_sum += loss_sum;
    }

    /// Mean loss.
    pub fn loss(&self) -> f64 {
        self.loss_sum / self.samples.max(1) as f64
    }

    /// Accuracy.
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.samples.max(1) as f64
    }
}

/// Evaluate `hidden` + `head` on host rows (`[rows * inputs]`), `batch` rows per forward
/// pass, no tape.
pub fn evaluate<D: Backend>(
    dev: &D,
    hidden: &[Layer<D>],
    head: &Layer<D>,
    data: &[f32],
    labels: &[u8],
    batch: usize,
) -> EvalSums {
    let mut sums = EvalSums::new(head.outputs());
    forward_chunks(dev, hidden, Some(head), data, labels.len(), batch, |start, logits| {
        sums.add(&logits, &labels[start..]);
    });
    sums
}
