//! The autoencoder objective's pretraining of a new layer, without labels, as the learner
//! runs it: each batch's inputs corrupted by masking noise and reconstructed; the same
//! objective on the validation split with fixed masks.

use crate::learner::{BatchSeeds, Learn, Learner, Loop};
use crate::progress::Reporter;
use crate::run::Run;
use crate::state::{self, Pretrained, TrainState, Training};
use anyhow::{bail, Context, Result};
use layerwise_core::config::Decoder;
use layerwise_core::metrics::PretrainEpoch;
use layerwise_core::mix_seed;
use layerwise_core::names::TensorPath;
use layerwise_nn::{AeSpec, AeTensors, AeTrainer, Backend, Moments, Named, CHUNK};
use std::time::Instant;

/// The pretraining loop of an autoencoder layer.
struct Pretraining<'x, D: Backend> {
    net: AeTrainer<D>,
    x_train: &'x [f32],
    x_val: &'x [f32],
    dim: usize,
    /// Masking noise's fraction, and the validation masks' seed.
    corruption: f64,
    val_seed: u64,
    /// Encoder weight and bias, decoder weight and bias.
    names: [String; 4],
    rows: Vec<f32>,
    loss_sum: f64,
}

impl<D: Backend> Learn for Pretraining<'_, D> {
    type Record = PretrainEpoch;

    fn step(&mut self, rows: &[usize], seeds: &BatchSeeds, lr: f64) -> Result<Option<f32>> {
        self.rows.clear();
        for &i in rows {
            self.rows.extend_from_slice(&self.x_train[i * self.dim..(i + 1) * self.dim]);
        }
        let noisy = layerwise_nn::masking_noise(&self.rows, self.corruption, seeds.noise());
        let loss = self.net.step(noisy, &self.rows, rows.len(), lr)?;
        if loss.is_finite() {
            self.loss_sum += loss as f64 * rows.len() as f64;
        }
        Ok(Some(loss))
    }

    fn running(&self, seen: usize) -> String {
        format!("reconstruction {:.5}", self.loss_sum / seen as f64)
    }

    fn end_epoch(&mut self, epoch: usize, started: Instant) -> Result<PretrainEpoch> {
        // The same objective on the validation split, with fixed masks (the same every epoch).
        let n_val = self.x_val.len() / self.dim;
        let val = self.net.val_loss(self.x_val, n_val, (self.corruption, self.val_seed), CHUNK);
        let n = self.x_train.len() / self.dim;
        let m = PretrainEpoch {
            epoch,
            reconstruction_loss: self.loss_sum / n as f64,
            val_reconstruction_loss: val,
            seconds: started.elapsed().as_secs_f64(),
        };
        self.loss_sum = 0.0;
        Ok(m)
    }

    fn show(&self, bar: &mut Reporter, record: &PretrainEpoch) {
        bar.pretrain_epoch(record);
    }

    fn tensors(&self) -> Named {
        let t = self.net.snapshot();
        let [ew, eb, dw, db] = self.names.clone();
        let mut out = vec![(ew, t.encoder.0), (eb, t.encoder.1)];
        if !t.decoder.0.is_empty() {
            out.push((dw, t.decoder.0));
        }
        out.push((db, t.decoder.1));
        out
    }

    fn optimizer_state(&self) -> (i32, Moments) {
        self.net.adam_state()
    }
}

/// An autoencoder layer's tensors from a pretraining's named ones.
fn ae_tensors(named: &Named, [ew, eb, dw, db]: &[String; 4]) -> AeTensors {
    let get = |name: &String| named.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()).unwrap_or_default();
    AeTensors { encoder: (get(ew), get(eb)), decoder: (get(dw), get(db)) }
}

/// The decoder's weight (empty when tied) and bias of a pretraining at layer `index`.
pub(crate) fn decoder_of(p: &Pretrained, index: usize) -> (Vec<f32>, Vec<f32>) {
    let [dw, db] = TensorPath::decoder(index).pair();
    let t = ae_tensors(&p.tensors, &[String::new(), String::new(), dw, db]);
    t.decoder
}

impl Run<'_> {
    /// Train the new layer as the encoder of a denoising autoencoder of its input `x_train`
    /// (validated on `x_val`), for `epochs` epochs, from a saved pretraining when there is
    /// one, through nn's autoencoder trainer; the finished pretraining's state.
    pub(crate) fn pretrain<D: Backend>(
        &self,
        dev: &D,
        x_train: &[f32],
        x_val: &[f32],
        saved: Option<Pretrained>,
    ) -> Result<Pretrained> {
        let cfg = &self.opts.config;
        let index = self.plan.prefix.len();
        let [ew, eb] = TensorPath::hidden(index).pair();
        let [dw, db] = TensorPath::decoder(index).pair();
        let names = [ew, eb, dw, db];
        let like = &self.plan.trainable[0];
        let dim = like.inputs;
        let seed = |parts: &[u64]| mix_seed(cfg.seed, &[&[self.depth as u64], parts].concat());
        let mut net = AeTrainer::new(
            dev,
            AeSpec {
                encoder: like,
                tied: cfg.decoder == Decoder::Tied,
                seed: seed(&[2]),
                names: names.clone(),
                optimizer: cfg.optimizer_spec(),
                weight_decay: cfg.weight_decay,
            },
        );
        let state_path = self.opts.out.join(state::STATE_FILE);
        if let Some(p) = &saved {
            if p.epoch >= cfg.epochs {
                self.say(&format!("pretraining finished in an interrupted run ({}): kept", state_path.display()));
                return Ok(p.clone());
            }
            net.restore(&ae_tensors(&p.tensors, &names), p.optimizer_t, p.optimizer.clone())
                .with_context(|| state_path.display().to_string())?;
        }
        let learner = Learner {
            config: cfg,
            depth: self.depth,
            kind: Loop::Pretraining,
            epochs: cfg.epochs,
            rows: x_train.len() / dim,
            progress: self.opts.progress,
            state_path: &state_path,
        };
        let mut l = Pretraining {
            net,
            x_train,
            x_val,
            dim,
            corruption: cfg.corruption,
            val_seed: seed(&[Loop::Pretraining.stream(), 4]),
            names,
            rows: Vec::with_capacity(learner.batches().0 * dim),
            loss_sum: 0.0,
        };
        // The state after every epoch, the last one too: the probe follows.
        let mut finished = None;
        learner.run(&mut l, saved, |st| {
            let training = Training::Autoencoder { pretrained: st.clone(), probe: None };
            finished = Some(st);
            state::save(&state_path, &TrainState::new(&self.state_key, training))
        })?;
        match finished {
            Some(p) if p.epoch == cfg.epochs => Ok(p),
            _ => bail!("internal: pretraining ran no epoch"),
        }
    }
}
