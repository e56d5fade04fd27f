//! Progress display: an indicatif bar per epoch on a terminal, one plain line per epoch
//! otherwise, or nothing.

use indicatif::{ProgressBar, ProgressStyle};
use layerwise_core::metrics::{EpochMetrics, PretrainEpoch};

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
    /// `depth 3`, `depth 3 pretraining`, `depth 3 probe`.
    what: String,
    epochs: usize,
}

/// The epoch bar: batches done, the time so far and the time left (indicatif's estimate).
const EPOCH_BAR: &str = "{prefix} {bar:30} {pos}/{len} batches [{elapsed}<{eta}] {msg}";

impl Progress {
    /// Progress of `epochs` epochs of `batches` batches of `what` (`depth 3`, `depth 3 probe`).
    pub(crate) fn start(self, what: String, epochs: usize, batches: usize) -> Reporter {
        let tty = layerwise_core::progress::stderr_is_terminal();
        let bar = (self == Progress::Auto && tty).then(|| {
            let b = layerwise_core::progress::add(ProgressBar::new(batches as u64));
            b.set_style(ProgressStyle::with_template(EPOCH_BAR).unwrap_or_else(|_| ProgressStyle::default_bar()));
            b.set_prefix(format!("{what} epoch 1/{epochs}"));
            b
        });
        Reporter { bar, plain: self == Progress::Plain || (self == Progress::Auto && !tty), what, epochs }
    }
}

impl Reporter {
    /// Batch `b` done; `message` (the running loss) is formatted only when shown.
    pub(crate) fn batch(&mut self, b: usize, message: impl FnOnce() -> String) {
        if let Some(bar) = &self.bar {
            bar.set_position(b as u64);
            if b.is_multiple_of(8) {
                bar.set_message(message());
            }
        }
    }

    pub(crate) fn epoch(&mut self, m: &EpochMetrics) {
        self.line(m.epoch, metrics_text(m));
    }

    /// The epoch line of depth `depth`, one of the stages a decoupled group trains.
    pub(crate) fn stage_epoch(&mut self, depth: usize, m: &EpochMetrics) {
        self.line(m.epoch, format!("depth {depth}: {}", metrics_text(m)));
    }

    pub(crate) fn pretrain_epoch(&mut self, m: &PretrainEpoch) {
        let text = format!(
            "reconstruction {:.5} | val_reconstruction {:.5} | {:.1}s",
            m.reconstruction_loss, m.val_reconstruction_loss, m.seconds
        );
        self.line(m.epoch, text);
    }

    fn line(&mut self, epoch: usize, text: String) {
        let line = format!("{} epoch {:>3}/{:<3} {text}", self.what, epoch, self.epochs);
        if let Some(bar) = &self.bar {
            bar.println(line);
            bar.set_prefix(format!("{} epoch {}/{}", self.what, (epoch + 1).min(self.epochs), self.epochs));
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

/// An epoch's line: its training and validation loss and accuracy, and its speed.
fn metrics_text(m: &EpochMetrics) -> String {
    format!(
        "loss {:.4} acc {:.4} | val_loss {:.4} val_acc {:.4} | {:.1}s {:.0} samples/s",
        m.train_loss, m.train_accuracy, m.val_loss, m.val_accuracy, m.seconds, m.samples_per_second
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_epoch_bar_says_the_time_left() {
        assert!(super::EPOCH_BAR.contains("[{elapsed}<{eta}]"));
        assert!(indicatif::ProgressStyle::with_template(super::EPOCH_BAR).is_ok());
    }
}
