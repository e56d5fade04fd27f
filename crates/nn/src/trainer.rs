//! What a training loop asks of a network, whichever kernels run it: a step on a batch of
//! host rows, an evaluation, the weights and the optimizer state on the host. This is the
//! one place that decides which kernels run: on the CPU, [`crate::host`] (gemm 0.19 on
//! host buffers); on any other device, dfdx ([`crate::batch_gradients`], [`crate::Optimizer`]).

use crate::{batch_gradients, host, Backend, EvalSums, Kernels, Layer, Matrix, Moments, Optimizer, OptimizerSpec};
use anyhow::Result;
use dfdx::prelude::*;
use layerwise_core::checkpoint::Dense;
use layerwise_core::names::TensorPath;

/// The weights and biases of the trainable layers and the head, on the host.
pub type HostTensors = (Vec<(Vec<f32>, Vec<f32>)>, (Vec<f32>, Vec<f32>));

/// Rows per chunk of an evaluation or a frozen-feature pass.
pub const CHUNK: usize = 2500;

/// A network being trained.
///
/// Batches come two ways: rows of the split given once to [`Trainer::load_split`] (a GPU
/// keeps it resident and gathers each batch there), or host rows made per batch
/// (augmentation). Loss and accuracy add up inside the trainer and are read once per epoch
/// ([`Trainer::take_sums`]): on a GPU nothing is read back per batch.
pub trait Trainer<'a> {
    /// Keep the training split (`rows × inputs` host values, and the labels) for
    /// [`Trainer::step_rows`]; a device uploads it once.
    fn load_split(&mut self, x: &'a [f32], labels: &'a [u8]) -> Result<()>;
    /// One optimizer step (learning rate `lr`) on rows `rows` of the loaded split; dropout
    /// masks, when the network has dropout, are drawn from `dropout_seed`. Returns the
    /// batch's mean loss where it is known without waiting for a device (the CPU).
    fn step_rows(&mut self, rows: &[usize], dropout_seed: u64, lr: f64) -> Result<Option<f32>>;
    /// [`Trainer::step_rows`] on a batch of host rows `x` with `labels`.
    fn step(&mut self, x: &[f32], labels: &[u8], dropout_seed: u64, lr: f64) -> Result<Option<f32>>;
    /// The mean loss and accuracy of the steps so far this epoch, where known without
    /// waiting for a device (for a progress bar).
    fn running(&self) -> Option<(f64, f64)>;
    /// Loss and accuracy of the steps since the last call (one read from a device).
    fn take_sums(&mut self) -> EvalSums;
    /// Loss, accuracy and confusion over host rows, no dropout.
    fn evaluate(&self, x: &[f32], labels: &[u8]) -> EvalSums;
    /// The trainable layers' and the head's weights, copied to the host.
    fn snapshot(&self) -> HostTensors;
    /// The optimizer's step count and state, copied to the host.
    fn adam_state(&self) -> (i32, Moments);
}

/// What to train: trainable layers and the output layer (host copies, possibly restored
/// from a saved state), their checkpoint names, and the optimizer's settings.
pub struct TrainerSpec<'a> {
    /// Trainable hidden layers, in order.
    pub trainable: &'a [Dense],
    /// The output layer.
    pub head: &'a Dense,
    /// Whether the output layer trains.
    pub head_trains: bool,
    /// `[weight, bias]` names of each trainable layer (`hidden.2.weight`, ...).
    pub names: Vec<[String; 2]>,
    /// Dropout rate on the trainable layers' activations.
    pub dropout: f64,
    /// Decoupled weight decay on weights.
    pub weight_decay: f64,
    /// The optimizer and its settings.
    pub optimizer: OptimizerSpec,
    /// Largest batch.
    pub batch: usize,
    /// The optimizer's state to continue from (a resumed run).
    pub restored: Option<(i32, Moments)>,
}

/// A trainer for `spec` on device `dev`: the host kernels on the CPU, dfdx elsewhere.
pub fn trainer<'a, D: Backend + 'static>(dev: &D, spec: TrainerSpec<'_>) -> Box<dyn Trainer<'a> + 'a> {
    if D::KERNELS == Kernels::Host {
        Box::new(HostTrainer::new(spec))
    } else {
        Box::new(DeviceTrainer::new(dev, spec))
    }
}

/// The dfdx trainer whatever the device, the CPU included: what a GPU runs, testable here.
pub fn device_trainer<'a, D: Backend + 'static>(dev: &D, spec: TrainerSpec<'_>) -> Box<dyn Trainer<'a> + 'a> {
    Box::new(DeviceTrainer::new(dev, spec))
}

fn new_optimizer<D: Backend>(spec: &TrainerSpec<'_>, kernels: Kernels) -> Optimizer<D> {
    Optimizer::restored(&spec.optimizer, kernels, spec.restored.clone())
}

/// Inverted-dropout masks for `rows × widths[i]` activations, on the host: each unit kept
/// with probability `1 - rate` and scaled by `1 / (1 - rate)`, drawn from `seed` alone (so
/// a resumed run draws the same masks).
pub fn host_dropout_masks(rows: usize, widths: &[usize], rate: f64, seed: u64) -> Vec<Vec<f32>> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let keep = 1.0 / (1.0 - rate) as f32;
    widths.iter().map(|&w| (0..rows * w).map(|_| if rng.gen::<f64>() < rate { 0.0 } else { keep }).collect()).collect()
}

/// The CPU: layers on host buffers in the host kernels' layout (weights `[in, out]`),
/// gemm 0.19, the optimizer in one fused pass per tensor, the step's buffers allocated once.
/// Weights and their optimizer state go back to the checkpoint layout (`[out, in]`) whenever
/// they leave (snapshots, saved states), so a state does not depend on the kernels.
struct HostTrainer<'a> {
    split: Option<(&'a [f32], &'a [u8])>,
    rows: Vec<f32>,
    labels: Vec<u8>,
    sums: EvalSums,
    layers: Vec<host::HostLayer>,
    head: host::HostLayer,
    head_trains: bool,
    names: Vec<[String; 2]>,
    dropout: f64,
    weight_decay: f64,
    adam: Optimizer<dfdx::tensor::Cpu>,
    buf: host::StepBuffers,
}

impl HostTrainer<'_> {
    fn new(mut spec: TrainerSpec<'_>) -> Self {
        let layers: Vec<host::HostLayer> = spec.trainable.iter().map(host::HostLayer::from_dense).collect();
        let head = host::HostLayer::from_dense(spec.head);
        // Restored weight moments, into the host layout.
        let shape = |l: &Dense| (l.outputs, l.inputs);
        let shapes = weight_shapes(spec.trainable.iter().map(shape), shape(spec.head), &spec.names);
        if let Some((_, moments)) = &mut spec.restored {
            relayout(moments, &shapes, false);
        }
        Self {
            split: None,
            rows: Vec::new(),
            labels: Vec::new(),
            sums: EvalSums::new(head.outputs),
            adam: new_optimizer(&spec, Kernels::Host),
            buf: host::StepBuffers::new(&layers, &head, spec.batch),
            layers,
            head,
            head_trains: spec.head_trains,
            names: spec.names,
            dropout: spec.dropout,
            weight_decay: spec.weight_decay,
        }
    }
}

/// Each weight's name and checkpoint shape `(out, in)`, from the trainable layers' and the
/// output layer's shapes.
fn weight_shapes(
    trainable: impl Iterator<Item = (usize, usize)>,
    head: (usize, usize),
    names: &[[String; 2]],
) -> Vec<(String, usize, usize)> {
    let mut shapes: Vec<_> = trainable.zip(names).map(|((out, inp), [w, _])| (w.clone(), out, inp)).collect();
    shapes.push((TensorPath::head().weight(), head.0, head.1));
    shapes
}

/// Weight moments between the checkpoint layout (`[out, in]`) and the host layout
/// (`[in, out]`): `to_checkpoint` says which way.
fn relayout(moments: &mut Moments, shapes: &[(String, usize, usize)], to_checkpoint: bool) {
    for (name, m, v) in moments.iter_mut() {
        if let Some((_, out, inp)) = shapes.iter().find(|(n, ..)| n == name) {
            let (rows, cols) = if to_checkpoint { (*inp, *out) } else { (*out, *inp) };
            if m.len() == rows * cols && v.len() == rows * cols {
                *m = host::transpose(m, rows, cols);
                *v = host::transpose(v, rows, cols);
            }
        }
    }
}

impl<'a> Trainer<'a> for HostTrainer<'a> {
    fn load_split(&mut self, x: &'a [f32], labels: &'a [u8]) -> Result<()> {
        self.split = Some((x, labels));
        Ok(())
    }

    fn step_rows(&mut self, rows: &[usize], dropout_seed: u64, lr: f64) -> Result<Option<f32>> {
        let (x, y) = self.split.ok_or_else(|| anyhow::anyhow!("internal: no split loaded"))?;
        let dim = x.len() / y.len().max(1);
        // Gathered into buffers allocated once.
        let (mut batch, mut labels) = (std::mem::take(&mut self.rows), std::mem::take(&mut self.labels));
        batch.clear();
        labels.clear();
        for &i in rows {
            batch.extend_from_slice(&x[i * dim..(i + 1) * dim]);
            labels.push(y[i]);
        }
        let loss = self.step(&batch, &labels, dropout_seed, lr);
        (self.rows, self.labels) = (batch, labels);
        loss
    }

    fn running(&self) -> Option<(f64, f64)> {
        Some((self.sums.loss(), self.sums.accuracy()))
    }

    fn take_sums(&mut self) -> EvalSums {
        std::mem::replace(&mut self.sums, EvalSums::new(self.head.outputs))
    }

    fn step(&mut self, x: &[f32], labels: &[u8], dropout_seed: u64, lr: f64) -> Result<Option<f32>> {
        let rows = labels.len();
        let masks = if self.dropout > 0.0 {
            let widths: Vec<usize> = self.layers.iter().map(|l| l.outputs).collect();
            host_dropout_masks(rows, &widths, self.dropout, dropout_seed)
        } else {
            Vec::new()
        };
        let loss = host::step(&self.layers, &self.head, self.head_trains, x, labels, &masks, &mut self.buf);
        if loss.is_finite() {
            self.adam.start_step(lr);
            let t = self.layers.len();
            for ((layer, (gw, gb)), [wn, bn]) in self.layers.iter_mut().zip(&self.buf.grads).zip(&self.names) {
                self.adam.update_host(wn, &mut layer.wt, gw, self.weight_decay)?;
                self.adam.update_host(bn, &mut layer.bias, gb, 0.0)?;
            }
            if self.head_trains {
                let (gw, gb) = &self.buf.grads[t];
                let [wn, bn] = TensorPath::head().pair();
                self.adam.update_host(&wn, &mut self.head.wt, gw, self.weight_decay)?;
                self.adam.update_host(&bn, &mut self.head.bias, gb, 0.0)?;
            }
        }
        self.sums.add_predictions(self.buf.logits(rows, self.head.outputs), labels, loss as f64 * rows as f64);
        Ok(Some(loss))
    }

    fn evaluate(&self, x: &[f32], labels: &[u8]) -> EvalSums {
        host::evaluate_host(&self.layers, &self.head, x, labels, CHUNK)
    }

    fn snapshot(&self) -> HostTensors {
        let pair = |l: &host::HostLayer| {
            let d = l.to_dense();
            (d.weight, d.bias)
        };
        (self.layers.iter().map(pair).collect(), pair(&self.head))
    }

    fn adam_state(&self) -> (i32, Moments) {
        let (t, mut moments) = self.adam.state();
        let shape = |l: &host::HostLayer| (l.outputs, l.inputs);
        relayout(&mut moments, &weight_shapes(self.layers.iter().map(shape), shape(&self.head), &self.names), true);
        (t, moments)
    }
}

/// Any other device: dfdx tensors, its autograd, [`Optimizer`]'s device path. The split stays
/// on the device; each batch is gathered there; loss and correct predictions add up in
/// device scalars, read once per epoch.
struct DeviceTrainer<D: Backend> {
    dev: D,
    layers: Vec<Layer<D>>,
    head: Layer<D>,
    head_trains: bool,
    names: Vec<[String; 2]>,
    dropout: f64,
    weight_decay: f64,
    adam: Optimizer<D>,
    /// The split's inputs and one-hot labels, resident.
    split: Option<(Matrix<D>, Matrix<D>)>,
    /// Summed loss and correct predictions of this epoch's steps, on the device.
    loss_sum: Tensor<(), f32, D>,
    correct: Tensor<(), f32, D>,
    samples: u64,
}

impl<D: Backend> DeviceTrainer<D> {
    fn new(dev: &D, spec: TrainerSpec<'_>) -> Self {
        Self {
            dev: dev.clone(),
            adam: new_optimizer(&spec, D::KERNELS),
            layers: spec.trainable.iter().map(|l| Layer::from_dense(l, dev)).collect(),
            head: Layer::from_dense(spec.head, dev),
            head_trains: spec.head_trains,
            names: spec.names,
            dropout: spec.dropout,
            weight_decay: spec.weight_decay,
            split: None,
            loss_sum: dev.zeros(),
            correct: dev.zeros(),
            samples: 0,
        }
    }

    fn onehot(&self, labels: &[u8]) -> Matrix<D> {
        let classes = self.head.outputs();
        let mut y = vec![0f32; labels.len() * classes];
        for (j, &l) in labels.iter().enumerate() {
            y[j * classes + l as usize] = 1.0;
        }
        self.dev.tensor_from_vec(y, (labels.len(), classes))
    }

    /// One step on a batch already on the device.
    fn step_tensors(&mut self, xb: Matrix<D>, yb: Matrix<D>, dropout_seed: u64, lr: f64) -> Result<()> {
        let rows = xb.shape().0;
        let masks: Vec<Matrix<D>> = if self.dropout > 0.0 {
            let widths: Vec<usize> = self.layers.iter().map(Layer::outputs).collect();
            crate::dropout_masks(&self.dev, rows, &widths, self.dropout, dropout_seed)
        } else {
            Vec::new()
        };
        let g = batch_gradients(&self.layers, &self.head, self.head_trains, xb, yb.clone(), &masks)?;
        self.adam.start_step(lr);
        for ((layer, (gw, gb)), [wn, bn]) in self.layers.iter_mut().zip(&g.layers).zip(&self.names) {
            self.adam.update_decayed(wn, &mut layer.weight, gw, self.weight_decay)?;
            self.adam.update(bn, &mut layer.bias, gb)?;
        }
        if let Some((gw, gb)) = &g.head {
            let [wn, bn] = TensorPath::head().pair();
            self.adam.update_decayed(&wn, &mut self.head.weight, gw, self.weight_decay)?;
            self.adam.update(&bn, &mut self.head.bias, gb)?;
        }
        // Correct predictions: rows whose label's logit is the row's largest.
        let shape = *g.logits.shape();
        let max = g.logits.clone().max::<(usize,), Axis<1>>().broadcast_like::<(usize, usize), Axis<1>>(&shape);
        let hits = g.logits.eq(&max).choose(yb, self.dev.zeros_like(&shape)).sum::<(), _>();
        self.loss_sum = self.loss_sum.clone() + g.loss * rows as f32;
        self.correct = self.correct.clone() + hits;
        self.samples += rows as u64;
        Ok(())
    }
}

impl<'a, D: Backend> Trainer<'a> for DeviceTrainer<D> {
    fn load_split(&mut self, x: &'a [f32], labels: &'a [u8]) -> Result<()> {
        let rows = labels.len();
        let dim = x.len() / rows.max(1);
        self.split = Some((self.dev.tensor_from_vec(x.to_vec(), (rows, dim)), self.onehot(labels)));
        Ok(())
    }

    fn step_rows(&mut self, rows: &[usize], dropout_seed: u64, lr: f64) -> Result<Option<f32>> {
        let (x, y) = self.split.clone().ok_or_else(|| anyhow::anyhow!("internal: no split loaded"))?;
        let idx = self.dev.tensor_from_vec(rows.to_vec(), (rows.len(),));
        let (xb, yb): (Matrix<D>, Matrix<D>) = (x.gather(idx.clone()), y.gather(idx));
        self.step_tensors(xb, yb, dropout_seed, lr)?;
        Ok(None)
    }

    fn step(&mut self, x: &[f32], labels: &[u8], dropout_seed: u64, lr: f64) -> Result<Option<f32>> {
        let rows = labels.len();
        let xb: Matrix<D> = self.dev.tensor_from_vec(x.to_vec(), (rows, x.len() / rows.max(1)));
        let yb = self.onehot(labels);
        self.step_tensors(xb, yb, dropout_seed, lr)?;
        Ok(None)
    }

    fn running(&self) -> Option<(f64, f64)> {
        None
    }

    fn take_sums(&mut self) -> EvalSums {
        let mut sums = EvalSums::new(self.head.outputs());
        sums.loss_sum = self.loss_sum.as_vec()[0] as f64;
        sums.correct = self.correct.as_vec()[0].round() as u64;
        sums.samples = self.samples;
        (self.loss_sum, self.correct, self.samples) = (self.dev.zeros(), self.dev.zeros(), 0);
        sums
    }

    fn evaluate(&self, x: &[f32], labels: &[u8]) -> EvalSums {
        crate::evaluate(&self.dev, &self.layers, &self.head, x, labels, CHUNK)
    }

    fn snapshot(&self) -> HostTensors {
        let pair = |l: &Layer<D>| (l.weight.as_vec(), l.bias.as_vec());
        (self.layers.iter().map(pair).collect(), pair(&self.head))
    }

    fn adam_state(&self) -> (i32, Moments) {
        self.adam.state()
    }
}

/// Frozen layers applied to host rows: on the CPU with the host kernels, elsewhere with
/// dfdx (the layers copied to the device once).
pub struct Frozen<'a, D: Backend> {
    dense: &'a [Dense],
    device: Option<(D, Vec<Layer<D>>)>,
}

impl<'a, D: Backend> Frozen<'a, D> {
    /// `layers`, ready to run on `dev`.
    pub fn new(dev: &D, layers: &'a [Dense]) -> Self {
        let device = (D::KERNELS != Kernels::Host)
            .then(|| (dev.clone(), layers.iter().map(|l| Layer::from_dense(l, dev)).collect()));
        Self { dense: layers, device }
    }

    /// Whether there is no layer.
    pub fn is_empty(&self) -> bool {
        self.dense.is_empty()
    }

    /// The layers' outputs (each followed by ReLU) over `rows` host rows, [`CHUNK`] rows
    /// at a time.
    pub fn apply(&self, data: &[f32], rows: usize) -> Vec<f32> {
        match &self.device {
            None => host::features(self.dense, data, rows, CHUNK),
            Some((dev, layers)) => crate::features_host(dev, layers, data, rows, CHUNK),
        }
    }
}

/// Evaluate `hidden` + `head` over host rows on `dev`: the host kernels on the CPU.
pub fn evaluate_dense<D: Backend>(dev: &D, hidden: &[Dense], head: &Dense, data: &[f32], labels: &[u8]) -> EvalSums {
    if D::KERNELS == Kernels::Host {
        host::evaluate(hidden, head, data, labels, CHUNK)
    } else {
        let layers: Vec<Layer<D>> = hidden.iter().map(|l| Layer::from_dense(l, dev)).collect();
        crate::evaluate(dev, &layers, &Layer::from_dense(head, dev), data, labels, CHUNK)
    }
}
