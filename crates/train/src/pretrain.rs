//! The autoencoder objective's pretraining of a new layer, without labels.

use super::*;

impl Run<'_> {
    /// Train the new layer as the encoder of a denoising autoencoder of its input `x_train`
    /// (validated on `x_val`), for `epochs` epochs, from a saved state when there is one.
    pub(crate) fn pretrain<D: Backend>(
        &self,
        dev: &D,
        x_train: &[f32],
        x_val: &[f32],
        saved: Option<&state::TrainState>,
    ) -> Result<state::Pretrained> {
        let cfg = &self.opts.config;
        let plan = self.plan;
        let index = plan.prefix.len();
        let [ew, eb] = tensor_names(&hidden_name(index));
        let [dw, db] = tensor_names(&decoder_name(index));
        let like = &plan.trainable[0];
        let dim = like.inputs;
        let (n, n_val) = (x_train.len() / dim, x_val.len() / dim);
        let mut encoder = Layer::from_dense(like, dev);
        let seed = |parts: &[u64]| mix_seed(cfg.seed, &[&[self.depth as u64], parts].concat());
        let mut decoder = AeDecoder::new(&encoder, cfg.decoder == Decoder::Tied, seed(&[2]), dev);
        let mut adam = Adam::new(cfg.lr, cfg.beta1, cfg.beta2, cfg.epsilon);
        let mut history = Vec::new();
        let mut first_epoch = 1;
        let state_path = self.opts.out.join(state::STATE_FILE);
        if let Some(p) = saved.and_then(|s| s.pretrained.as_ref()) {
            if p.epoch >= cfg.epochs {
                self.say(&format!("pretraining finished in an interrupted run ({}): kept", state_path.display()));
                return Ok(p.clone());
            }
            encoder = Layer::from_dense(&restore((like.outputs, like.inputs), &p.encoder, &state_path)?, dev);
            decoder = match decoder {
                AeDecoder::Tied { .. } if p.decoder.0.is_empty() && p.decoder.1.len() == dim => {
                    AeDecoder::Tied { bias: dev.tensor_from_vec(p.decoder.1.clone(), (dim,)) }
                }
                AeDecoder::Untied(l) => {
                    AeDecoder::Untied(Layer::from_dense(&restore(*l.weight.shape(), &p.decoder, &state_path)?, dev))
                }
                _ => bail!("{}: its decoder does not fit this network", state_path.display()),
            };
            adam.restore(p.adam_t, p.adam.clone());
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
                let noisy: Matrix<D> = dev.tensor_from_vec(noisy, (chunk.len(), dim));
                let clean: Matrix<D> = dev.tensor_from_vec(rows.clone(), (chunk.len(), dim));
                adam.set_lr(cfg.lr_at((epoch - 1) * batches + b, cfg.epochs * batches, batches));
                let g = layerwise_nn::autoencoder_gradients(&encoder, &decoder, noisy, clean);
                if !g.loss.is_finite() {
                    bail!(
                        "depth {}: the reconstruction loss became {} at pretraining epoch {epoch}, batch {} of \
                         {batches}: training diverged; lower the learning rate (--lr) or check the dataset; no \
                         checkpoint was written",
                        self.depth,
                        g.loss,
                        b + 1
                    );
                }
                loss_sum += g.loss as f64 * chunk.len() as f64;
                adam.tick();
                adam.update_decayed(&ew, &mut encoder.weight, &g.encoder_weight, cfg.weight_decay)?;
                adam.update(&eb, &mut encoder.bias, &g.encoder_bias)?;
                match (&mut decoder, &g.decoder_weight) {
                    (AeDecoder::Untied(l), Some(gw)) => {
                        adam.update_decayed(&dw, &mut l.weight, gw, cfg.weight_decay)?;
                        adam.update(&db, &mut l.bias, &g.decoder_bias)?;
                    }
                    (AeDecoder::Tied { bias }, None) => adam.update(&db, bias, &g.decoder_bias)?,
                    _ => bail!("internal: decoder and its gradients disagree"),
                }
                let seen = (b * bs + chunk.len()) as f64;
                bar.batch(b + 1, || format!("reconstruction {:.5}", loss_sum / seen));
            }
            // The same objective on the validation split, with fixed masks (the same every epoch).
            let noise = (cfg.corruption, seed(&[PRETRAIN_STREAM, 4]));
            let val = layerwise_nn::reconstruction_loss(dev, &encoder, &decoder, x_val, n_val, noise, CHUNK);
            let m = PretrainEpoch {
                epoch,
                reconstruction_loss: loss_sum / n as f64,
                val_reconstruction_loss: val,
                seconds: te.elapsed().as_secs_f64(),
            };
            bar.pretrain_epoch(&m);
            history.push(m);
            // The state after every epoch, the last one too: the probe follows.
            let (adam_t, adam_moments) = adam.state();
            let decoder_host = match &decoder {
                AeDecoder::Tied { bias } => (Vec::new(), bias.as_vec()),
                AeDecoder::Untied(l) => host_pair(l),
            };
            let p = state::Pretrained {
                epoch,
                encoder: host_pair(&encoder),
                decoder: decoder_host,
                adam_t,
                adam: if epoch < cfg.epochs { adam_moments } else { Vec::new() },
                epochs: history.clone(),
            };
            let st = state::TrainState {
                format: state::STATE_FORMAT.into(),
                version: state::STATE_VERSION,
                key: self.state_key.clone(),
                epoch: 0,
                layers: Vec::new(),
                head: (Vec::new(), Vec::new()),
                adam_t: 0,
                adam: Vec::new(),
                epochs: Vec::new(),
                best: None,
                pretrained: Some(p.clone()),
            };
            state::save(&state_path, &st)?;
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
