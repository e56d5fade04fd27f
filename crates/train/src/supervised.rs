//! The supervised epoch loop: any regime's trainable layers and output layer, with the
//! labels, from a saved state when there is one.

use super::*;

/// What a supervised loop trained.
pub(crate) struct Supervised {
    pub(crate) prefix_rows: usize,
    pub(crate) layers: Vec<Dense>,
    pub(crate) head: Dense,
    pub(crate) epochs: Vec<EpochMetrics>,
    pub(crate) best_epoch: Option<usize>,
}

/// The inputs of a supervised loop: the fixed input of its first trainable layer, on the
/// host, for the train and validation splits, and the frozen layers to apply per batch
/// (only when augmentation changes the images every batch).
pub(crate) struct Inputs<'a, D: Backend> {
    pub(crate) x_train: &'a [f32],
    pub(crate) y_train: &'a [u8],
    pub(crate) x_val: &'a [f32],
    pub(crate) y_val: &'a [u8],
    pub(crate) per_batch_prefix: layerwise_nn::Frozen<'a, D>,
}

impl Run<'_> {
    /// The supervised loop: train `trainable` (and `head` when `head_trains`) with the
    /// labels, from a saved state when there is one. `pretrained` (the autoencoder
    /// objective's, for its probe) goes into every state written.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn supervised<D: Backend + 'static>(
        &self,
        dev: &D,
        inputs: &Inputs<'_, D>,
        trainable: &[Dense],
        head0: &Dense,
        head_trains: bool,
        saved: Option<state::Supervised>,
        pretrained: Option<&state::Pretrained>,
    ) -> Result<Supervised> {
        let cfg = &self.opts.config;
        let probe = pretrained.is_some();
        let total_epochs = if probe { cfg.probe_epochs() } else { cfg.epochs };
        let Inputs { x_train, y_train, x_val, y_val, per_batch_prefix } = inputs;
        let n = y_train.len();
        let dim = x_train.len() / n;
        let image_shape = self.ds.meta.image_shape;
        let augment = cfg.augment == Augment::FlipCrop;
        let mut prefix_rows = 0;
        let bs = cfg.batch_size.min(n);
        let batches = n.div_ceil(bs);

        // An interrupted run of this same command left its state: continue from there.
        let state_path = self.opts.out.join(state::STATE_FILE);
        let saved = saved.filter(|st| st.epoch >= 1 && st.epoch < total_epochs && st.layers.len() == trainable.len());
        let fit = |like: &Dense, saved: &(Vec<f32>, Vec<f32>)| restore((like.outputs, like.inputs), saved, &state_path);
        let (start_layers, start_head, restored) = match &saved {
            Some(st) => (
                trainable.iter().zip(&st.layers).map(|(l, t)| fit(l, t)).collect::<Result<Vec<_>>>()?,
                fit(head0, &st.head)?,
                Some((st.adam_t, st.adam.clone())),
            ),
            None => (trainable.to_vec(), head0.clone(), None),
        };
        let first = self.plan.prefix.len();
        let mut net = layerwise_nn::trainer(
            dev,
            layerwise_nn::TrainerSpec {
                trainable: &start_layers,
                head: &start_head,
                head_trains,
                names: (first..first + trainable.len()).map(|i| TensorPath::hidden(i).pair()).collect(),
                dropout: cfg.dropout,
                weight_decay: cfg.weight_decay,
                optimizer: cfg.optimizer_spec(),
                batch: bs,
                restored,
            },
        );
        let mut epochs = Vec::with_capacity(total_epochs);
        // End-to-end training (fine-tuning, from scratch) keeps the weights of its best
        // epoch by validation accuracy: early stopping, the same for both.
        let keep_best = self.opts.regime != Regime::Grow;
        let mut best: Option<state::Best> = None;
        let mut first_epoch = 1;
        if let Some(st) = saved {
            epochs = st.epochs;
            best = st.best;
            first_epoch = st.epoch + 1;
            self.say(&format!(
                "resuming at {}epoch {first_epoch} of {total_epochs} from the state an interrupted run left ({})",
                if probe { "probe " } else { "" },
                state_path.display()
            ));
        }
        // Each loop shuffles with its own stream (grow's is the one it always had).
        let stream = match (self.opts.regime, probe) {
            (_, true) => PROBE_STREAM,
            (Regime::Grow, false) => GROW_STREAM,
            (Regime::Finetune, false) => FINETUNE_STREAM,
            (Regime::Scratch, false) => SCRATCH_STREAM,
        };
        let epoch_rng = |epoch: usize| {
            rand_chacha::ChaCha8Rng::seed_from_u64(mix_seed(cfg.seed, &[self.depth as u64, stream + epoch as u64]))
        };
        // Each epoch shuffles the previous epoch's order: a resumed run replays the
        // shuffles of the epochs it skips, so its batches are the uninterrupted run's.
        let mut order: Vec<usize> = (0..n).collect();
        for epoch in 1..first_epoch {
            order.shuffle(&mut epoch_rng(epoch));
        }
        let what = format!("depth {}{}", self.depth, if probe { " probe" } else { "" });
        let mut bar = self.opts.progress.start(what, total_epochs, batches);
        // Without augmentation the trainer keeps the split (a GPU: resident) and gathers
        // each batch itself; augmented batches are made here, on the host.
        let made_here = augment || !per_batch_prefix.is_empty();
        if !made_here {
            net.load_split(x_train, y_train)?;
        }
        let diverged = |loss: f64, when: String| {
            anyhow::anyhow!(
                "depth {}: the loss became {loss} {when}: training diverged; lower the learning rate (--lr) or check \
                 the dataset; no checkpoint was written",
                self.depth
            )
        };
        // Host batches, gathered into buffers allocated once.
        let mut rows: Vec<f32> = Vec::with_capacity(if made_here { bs * dim } else { 0 });
        let mut labels: Vec<u8> = Vec::with_capacity(bs);
        for epoch in first_epoch..=total_epochs {
            let te = Instant::now();
            order.shuffle(&mut epoch_rng(epoch));
            for (b, chunk) in order.chunks(bs).enumerate() {
                let batch_seed =
                    |purpose: u64| mix_seed(cfg.seed, &[self.depth as u64, stream + epoch as u64, purpose, b as u64]);
                let lr = cfg.lr_at((epoch - 1) * batches + b, total_epochs * batches, batches);
                let loss = if made_here {
                    rows.clear();
                    labels.clear();
                    for &i in chunk {
                        rows.extend_from_slice(&x_train[i * dim..(i + 1) * dim]);
                        labels.push(y_train[i]);
                    }
                    if augment {
                        layerwise_nn::flip_crop(&mut rows, image_shape, 4, batch_seed(1));
                    }
                    if per_batch_prefix.is_empty() {
                        net.step(&rows, &labels, batch_seed(2), lr)?
                    } else {
                        prefix_rows += chunk.len() * self.plan.prefix.len();
                        let features = per_batch_prefix.apply(&rows, chunk.len());
                        net.step(&features, &labels, batch_seed(2), lr)?
                    }
                } else {
                    net.step_rows(chunk, batch_seed(2), lr)?
                };
                if let Some(loss) = loss.filter(|l| !l.is_finite()) {
                    return Err(diverged(loss as f64, format!("at epoch {epoch}, batch {} of {batches}", b + 1)));
                }
                bar.batch(b + 1, || net.running().map_or(String::new(), |(l, a)| format!("loss {l:.4} acc {a:.4}")));
            }
            let sums = net.take_sums();
            if !sums.loss().is_finite() {
                return Err(diverged(sums.loss(), format!("during epoch {epoch}")));
            }
            let val = net.evaluate(x_val, y_val);
            let seconds = te.elapsed().as_secs_f64();
            let m = epoch_metrics(epoch, &sums, &val, seconds, n);
            bar.epoch(&m);
            // One copy of the weights to the host per epoch, for the best epoch and the state.
            let improved = keep_best && best.as_ref().is_none_or(|b| m.val_accuracy > b.val_accuracy);
            let resumable = epoch < total_epochs;
            let snapshot = (improved || resumable).then(|| net.snapshot());
            if let (true, Some((layers, head))) = (improved, &snapshot) {
                best = Some(state::Best {
                    epoch,
                    val_accuracy: m.val_accuracy,
                    layers: layers.clone(),
                    head: head.clone(),
                });
            }
            epochs.push(m);
            if let (true, Some((layers, head))) = (resumable, snapshot) {
                let (adam_t, adam_moments) = net.adam_state();
                let loop_state = state::Supervised {
                    epoch,
                    layers,
                    head,
                    adam_t,
                    adam: adam_moments,
                    epochs: epochs.clone(),
                    best: best.clone(),
                };
                let training = match pretrained {
                    Some(p) => state::Training::Autoencoder { pretrained: p.clone(), probe: Some(loop_state) },
                    None => state::Training::Supervised(loop_state),
                };
                state::save(&state_path, &state::TrainState::new(&self.state_key, training))?;
                stop_if_asked(epoch, "epoch")?;
            }
        }
        bar.finish();
        let dense = |(weight, bias): (Vec<f32>, Vec<f32>), like: &Dense| Dense {
            inputs: like.inputs,
            outputs: like.outputs,
            weight,
            bias,
        };
        let (kept, best_epoch) = match best {
            Some(b) if keep_best => ((b.layers, b.head), Some(b.epoch)),
            _ => (net.snapshot(), None),
        };
        Ok(Supervised {
            prefix_rows,
            layers: kept.0.into_iter().zip(trainable).map(|(t, like)| dense(t, like)).collect(),
            head: dense(kept.1, head0),
            epochs,
            best_epoch,
        })
    }
}
