//! The autoencoder objective's pretraining of a new layer, without labels.

use super::*;

impl Run<'_> {
    /// Train the new layer as the encoder of a denoising autoencoder of its input `x_train`
    /// (validated on `x_val`), for `epochs` epochs, from a saved pretraining when there is
    /// one, through nn's autoencoder trainer.
    pub(crate) fn pretrain<D: Backend>(
        &self,
        dev: &D,
        x_train: &[f32],
        x_val: &[f32],
        saved: Option<&state::Pretrained>,
    ) -> Result<state::Pretrained> {
        let cfg = &self.opts.config;
        let plan = self.plan;
        let index = plan.prefix.len();
        let [ew, eb] = TensorPath::hidden(index).pair();
        let [dw, db] = TensorPath::decoder(index).pair();
        let like = &plan.trainable[0];
        let dim = like.inputs;
        let (n, n_val) = (x_train.len() / dim, x_val.len() / dim);
        let seed = |parts: &[u64]| mix_seed(cfg.seed, &[&[self.depth as u64], parts].concat());
        let mut net = layerwise_nn::AeTrainer::new(
            dev,
            layerwise_nn::AeSpec {
                encoder: like,
                tied: cfg.decoder == Decoder::Tied,
                seed: seed(&[2]),
                names: [ew, eb, dw, db],
                optimizer: cfg.optimizer_spec(),
                weight_decay: cfg.weight_decay,
            },
        );
        let mut history = Vec::new();
        let mut first_epoch = 1;
        let state_path = self.opts.out.join(state::STATE_FILE);
        if let Some(p) = saved {
            if p.epoch >= cfg.epochs {
                self.say(&format!("pretraining finished in an interrupted run ({}): kept", state_path.display()));
                return Ok(p.clone());
            }
            let tensors = layerwise_nn::AeTensors { encoder: p.encoder.clone(), decoder: p.decoder.clone() };
            net.restore(&tensors, p.adam_t, p.adam.clone()).with_context(|| state_path.display().to_string())?;
            history = p.epochs.clone();
            first_epoch = p.epoch + 1;
            self.say(&format!(
                "resuming at epoch {first_epoch} of {} of pretraining from the state an interrupted run left ({})",
                cfg.epochs,
                state_path.display()
            ));
        }
        let bs = cfg.batch_size.min(n);
        let batches = n.div_ceil(bs);
        let mut order: Vec<usize> = (0..n).collect();
        let epoch_rng = |epoch: usize| rand_chacha::ChaCha8Rng::seed_from_u64(seed(&[PRETRAIN_STREAM + epoch as u64]));
        for epoch in 1..first_epoch {
            order.shuffle(&mut epoch_rng(epoch));
        }
        let mut bar = self.opts.progress.start(format!("depth {} pretraining", self.depth), cfg.epochs, batches);
        let mut rows = Vec::with_capacity(bs * dim);
        for epoch in first_epoch..=cfg.epochs {
            let te = Instant::now();
            order.shuffle(&mut epoch_rng(epoch));
            let mut loss_sum = 0f64;
            for (b, chunk) in order.chunks(bs).enumerate() {
                rows.clear();
                for &i in chunk {
                    rows.extend_from_slice(&x_train[i * dim..(i + 1) * dim]);
                }
                let noisy = layerwise_nn::masking_noise(
                    &rows,
                    cfg.corruption,
                    seed(&[PRETRAIN_STREAM + epoch as u64, 3, b as u64]),
                );
                let lr = cfg.lr_at((epoch - 1) * batches + b, cfg.epochs * batches, batches);
                let loss = net.step(noisy, &rows, chunk.len(), lr)?;
                if !loss.is_finite() {
                    bail!(
                        "depth {}: the reconstruction loss became {loss} at pretraining epoch {epoch}, batch {} of \
                         {batches}: training diverged; lower the learning rate (--lr) or check the dataset; no \
                         checkpoint was written",
                        self.depth,
                        b + 1
                    );
                }
                loss_sum += loss as f64 * chunk.len() as f64;
                let seen = (b * bs + chunk.len()) as f64;
                bar.batch(b + 1, || format!("reconstruction {:.5}", loss_sum / seen));
            }
            // The same objective on the validation split, with fixed masks (the same every epoch).
            let val = net.val_loss(x_val, n_val, (cfg.corruption, seed(&[PRETRAIN_STREAM, 4])), CHUNK);
            let m = PretrainEpoch {
                epoch,
                reconstruction_loss: loss_sum / n as f64,
                val_reconstruction_loss: val,
                seconds: te.elapsed().as_secs_f64(),
            };
            bar.pretrain_epoch(&m);
            history.push(m);
            // The state after every epoch, the last one too: the probe follows.
            let (adam_t, adam_moments) = net.adam_state();
            let tensors = net.snapshot();
            let p = state::Pretrained {
                epoch,
                encoder: tensors.encoder,
                decoder: tensors.decoder,
                adam_t,
                adam: if epoch < cfg.epochs { adam_moments } else { Vec::new() },
                epochs: history.clone(),
            };
            let training = state::Training::Autoencoder { pretrained: p.clone(), probe: None };
            state::save(&state_path, &state::TrainState::new(&self.state_key, training))?;
            stop_if_asked(epoch, "pretraining epoch")?;
            if epoch == cfg.epochs {
                bar.finish();
                return Ok(p);
            }
        }
        bar.finish();
        bail!("internal: pretraining ran no epoch")
    }
}
