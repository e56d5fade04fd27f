//! Progress display: an indicatif bar per epoch on a terminal, one plain line per epoch
//! otherwise, or nothing.

use indicatif::{ProgressBar, ProgressStyle};
use layerwise_core::metrics::EpochMetrics;

/// How a run reports progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A bar on a terminal, plain lines otherwise.
    Auto,
    /// Plain lines on stderr.
    Plain,
    /// Nothing.
    Quiet,
}

pub(crate) struct Reporter {
    bar: Option<ProgressBar>,
    plain: bool,
    depth: usize,
    epochs: usize,
}

impl Progress {
    pub(crate) fn start(self, depth: usize, epochs: usize, batches: usize) -> Reporter {
        let tty = layerwise_core::progress::stderr_is_terminal();
        let bar = (self == Progress::Auto && tty).then(|| {
            let b = layerwise_core::progress::add(ProgressBar::new(batches as u64));
            b.set_style(
                ProgressStyle::with_template("depth {prefix} {bar:30} {pos}/{len} batches {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b.set_prefix(format!("{depth} epoch 1/{epochs}"));
            b
        });
        Reporter { bar, plain: self == Progress::Plain || (self == Progress::Auto && !tty), depth, epochs }
    }
}

impl Reporter {
    pub(crate) fn batch(&mut self, b: usize, loss: f64, acc: f64) {
        if let Some(bar) = &self.bar {
            bar.set_position(b as u64);
            if b.is_multiple_of(8) {
                bar.set_message(format!("loss {loss:.4} acc {acc:.4}"));
            }
        }
    }

    pub(crate) fn epoch(&mut self, m: &EpochMetrics) {
        let line = format!(
            "depth {:>2} epoch {:>3}/{:<3} loss {:.4} acc {:.4} | val_loss {:.4} val_acc {:.4} | {:.1}s {:.0} samples/s",
            self.depth, m.epoch, self.epochs, m.train_loss, m.train_accuracy, m.val_loss, m.val_accuracy, m.seconds, m.samples_per_second
        );
        if let Some(bar) = &self.bar {
            bar.println(line);
            bar.set_prefix(format!("{} epoch {}/{}", self.depth, (m.epoch + 1).min(self.epochs), self.epochs));
            bar.set_position(0);
        } else if self.plain {
            layerwise_core::progress::println(&line);
        }
    }

    pub(crate) fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
