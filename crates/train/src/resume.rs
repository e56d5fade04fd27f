//! Resuming a depth: the state an interrupted run left, verified and validated against
//! the network this run trains before any of it is used.

use crate::run::Run;
use crate::state;
use anyhow::{bail, Result};
use layerwise_core::checkpoint::Dense;
use layerwise_core::config::{Decoder, Objective};
use layerwise_core::names::TensorPath;

/// The environment variable that stops a training run right after it saved the state of
/// that epoch, as an interrupted run would leave it: how the tests and `cargo xtask fuzz`
/// get a real state without killing a process at a lucky moment.
pub const STOP_AFTER_EPOCH_ENV: &str = "LAYERWISE_STOP_AFTER_EPOCH";

pub(crate) fn stop_if_asked(epoch: usize, what: &str) -> Result<()> {
    if std::env::var(STOP_AFTER_EPOCH_ENV).ok().and_then(|v| v.parse::<usize>().ok()) == Some(epoch) {
        bail!("stopped after {what} {epoch}, its state saved, as {STOP_AFTER_EPOCH_ENV} asks");
    }
    Ok(())
}

impl Run<'_> {
    /// The state an interrupted run of this same command left, if any, once it is
    /// verified and validated against the network this run trains.
    pub(crate) fn saved_state(&self) -> Option<state::TrainState> {
        let path = self.opts.out.join(state::STATE_FILE);
        let expect = self.expect();
        match state::load(&path, &self.state_key, expect.max_bytes()) {
            Ok(Some(st)) => match state::validate(&st, &expect) {
                Ok(()) => Some(st),
                Err(why) => {
                    self.say(&format!("not resuming ({}: {why:#}); training from epoch 1", path.display()));
                    None
                }
            },
            Ok(None) => None,
            Err(why) => {
                self.say(&format!("not resuming ({why:#}); training from epoch 1"));
                None
            }
        }
    }

    /// What a training state of this run must hold.
    pub(crate) fn expect(&self) -> state::ExpectRun {
        let (cfg, plan) = (&self.opts.config, self.plan);
        let n = self.ds.meta.split_sizes.train;
        let batches = n.div_ceil(cfg.batch_size.min(n).max(1));
        let first = plan.prefix.len();
        let second = cfg.optimizer_spec().buffers() == 2;
        let sized = |path: TensorPath, l: &Dense| {
            let [w, b] = path.pair();
            vec![(w, l.inputs * l.outputs), (b, l.outputs)]
        };
        let head = sized(TensorPath::head(), &plan.head);
        match cfg.objective {
            Objective::Supervised => {
                let trainable: Vec<_> = plan
                    .trainable
                    .iter()
                    .enumerate()
                    .flat_map(|(i, l)| sized(TensorPath::hidden(first + i), l))
                    .collect();
                let mut optimized = trainable.clone();
                if plan.head_trains {
                    optimized.extend(head.clone());
                }
                let mut tensors = trainable;
                tensors.extend(head);
                let main = state::Expect { epochs: cfg.epochs, batches, tensors, optimized, second };
                state::ExpectRun { main, pretrain: None }
            }
            Objective::Autoencoder => {
                let enc = &plan.trainable[0];
                let [dw, db] = TensorPath::decoder(first).pair();
                let mut tensors = sized(TensorPath::hidden(first), enc);
                if cfg.decoder == Decoder::Untied {
                    tensors.push((dw, enc.inputs * enc.outputs));
                }
                tensors.push((db, enc.inputs));
                let pretrain =
                    state::Expect { epochs: cfg.epochs, batches, optimized: tensors.clone(), tensors, second };
                let main = state::Expect {
                    epochs: cfg.probe_epochs(),
                    batches,
                    tensors: head.clone(),
                    optimized: head,
                    second,
                };
                state::ExpectRun { main, pretrain: Some(pretrain) }
            }
        }
    }
}
