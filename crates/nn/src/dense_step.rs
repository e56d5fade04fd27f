//! Dense networks being trained ([`Step`]): on the host kernels ([`crate::host`]: gemm 0.19
//! on host buffers, weights kept `[in, out]`) or on dfdx ([`crate::batch_gradients`] on a
//! device), as the [`Kernels`] choice says. Also the frozen layers ([`Frozen`]) and the
//! evaluation of a dense network ([`evaluate_dense`]), chosen the same way.

use crate::augment::{dropout_masks, host_dropout_masks};
use crate::step::{Named, Step};
use crate::{batch_gradients, host, Backend, EvalSums, Kernels, Layer, Matrix, Moments, Optimizer, OptimizerSpec};
use anyhow::Result;
use dfdx::prelude::*;
use layerwise_core::checkpoint::Dense;
use layerwise_core::names::TensorPath;
use std::borrow::Cow;
use std::time::Instant;

/// Rows per chunk of an evaluation or a frozen-feature pass.
pub const CHUNK: usize = 2500;

/// What to train: the frozen layers run per batch of raw inputs, the trainable layers and
/// the output layer (host copies, possibly restored from a saved state), their names,
/// and the optimizer's settings.
pub struct DenseSpec<'a> {
    /// Frozen layers that [`Step::step_inputs`] and [`Step::prefix`] apply first (each
    /// followed by ReLU); none when the trained layers' input is kept.
    pub frozen: &'a [Dense],
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

/// A dense network being trained on `dev` with `kernels` (a device's own:
/// [`Backend::KERNELS`]; tests pass [`Kernels::Dfdx`] to run the device path on the CPU).
pub fn dense_step<'a, D: Backend + 'static>(dev: &D, kernels: Kernels, spec: DenseSpec<'a>) -> Box<dyn Step<'a> + 'a> {
    match kernels {
        Kernels::Host => Box::new(HostDense::new(spec)),
        Kernels::Dfdx => Box::new(DeviceDense::new(dev, spec)),
    }
}

fn new_optimizer<D: Backend>(spec: &DenseSpec<'_>, kernels: Kernels) -> Optimizer<D> {
    Optimizer::restored(&spec.optimizer, kernels, spec.restored.clone())
}

/// The trained layers' and the head's tensors by name, from `(weight, bias)` pairs in the
/// checkpoint layout.
fn named(names: &[[String; 2]], layers: Vec<(Vec<f32>, Vec<f32>)>, head: (Vec<f32>, Vec<f32>)) -> Named {
    let mut out = Named::new();
    for ([wn, bn], (w, b)) in names.iter().zip(layers) {
        out.push((wn.clone(), w));
        out.push((bn.clone(), b));
    }
    let [wn, bn] = TensorPath::head().pair();
    out.push((wn, head.0));
    out.push((bn, head.1));
    out
}

fn no_split() -> anyhow::Error {
    anyhow::anyhow!("internal: no split kept")
}

/// The host kernels: layers on host buffers in the host kernels' layout (weights
/// `[in, out]`), gemm 0.19, the optimizer in one fused pass per tensor, the step's buffers
/// allocated once. Weights and their optimizer state go back to the checkpoint layout
/// (`[out, in]`) whenever they leave (tensors, saved states), so a state does not depend
/// on the kernels.
struct HostDense<'a> {
    frozen: &'a [Dense],
    split: Option<(Cow<'a, [f32]>, &'a [u8])>,
    val: Option<(Cow<'a, [f32]>, &'a [u8])>,
    rows: Vec<f32>,
    labels: Vec<u8>,
    sums: EvalSums,
    layers: Vec<host::HostLayer>,
    head: host::HostLayer,
    head_trains: bool,
    names: Vec<[String; 2]>,
    dropout: f64,
    weight_decay: f64,
    optimizer: Optimizer<dfdx::tensor::Cpu>,
    buf: host::StepBuffers,
}

impl<'a> HostDense<'a> {
    fn new(mut spec: DenseSpec<'a>) -> Self {
        let layers: Vec<host::HostLayer> = spec.trainable.iter().map(host::HostLayer::from_dense).collect();
        let head = host::HostLayer::from_dense(spec.head);
        // Restored weight moments, into the host layout.
        let shape = |l: &Dense| (l.outputs, l.inputs);
        let shapes = weight_shapes(spec.trainable.iter().map(shape), shape(spec.head), &spec.names);
        if let Some((_, moments)) = &mut spec.restored {
            relayout(moments, &shapes, false);
        }
        Self {
            frozen: spec.frozen,
            split: None,
            val: None,
            rows: Vec::new(),
            labels: Vec::new(),
            sums: EvalSums::new(head.outputs),
            optimizer: new_optimizer(&spec, Kernels::Host),
            buf: host::StepBuffers::new(&layers, &head, spec.batch),
            layers,
            head,
            head_trains: spec.head_trains,
            names: spec.names,
            dropout: spec.dropout,
            weight_decay: spec.weight_decay,
        }
    }

    /// One step on host rows `x` (the trained layers' input) with `labels`.
    fn step_host(&mut self, x: &[f32], labels: &[u8], dropout_seed: u64, lr: f64) -> Result<Option<f32>> {
        let rows = labels.len();
        let masks = if self.dropout > 0.0 {
            let widths: Vec<usize> = self.layers.iter().map(|l| l.outputs).collect();
            host_dropout_masks(rows, &widths, self.dropout, dropout_seed)
        } else {
            Vec::new()
        };
        let loss = host::step(&self.layers, &self.head, self.head_trains, x, labels, &masks, &mut self.buf);
        if loss.is_finite() {
            self.optimizer.start_step(lr);
            let t = self.layers.len();
            for ((layer, (gw, gb)), [wn, bn]) in self.layers.iter_mut().zip(&self.buf.grads).zip(&self.names) {
                self.optimizer.update_host(wn, &mut layer.wt, gw, self.weight_decay)?;
                self.optimizer.update_host(bn, &mut layer.bias, gb, 0.0)?;
            }
            if self.head_trains {
                let (gw, gb) = &self.buf.grads[t];
                let [wn, bn] = TensorPath::head().pair();
                self.optimizer.update_host(&wn, &mut self.head.wt, gw, self.weight_decay)?;
                self.optimizer.update_host(&bn, &mut self.head.bias, gb, 0.0)?;
            }
        }
        self.sums.add_predictions(self.buf.logits(rows, self.head.outputs), labels, loss as f64 * rows as f64);
        Ok(Some(loss))
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
            } else if m.len() == rows * cols && v.is_empty() {
                *m = host::transpose(m, rows, cols);
            }
        }
    }
}

impl<'a> Step<'a> for HostDense<'a> {
    fn keep_train(&mut self, x: Cow<'a, [f32]>, labels: &'a [u8]) -> Result<()> {
        self.split = Some((x, labels));
        Ok(())
    }

    fn keep_val(&mut self, x: Cow<'a, [f32]>, labels: &'a [u8]) -> Result<()> {
        self.val = Some((x, labels));
        Ok(())
    }

    fn prefix(&self, inputs: &[f32], n: usize) -> Vec<f32> {
        host::features(self.frozen, inputs, n, CHUNK)
    }

    fn step_rows(&mut self, rows: &[usize], dropout_seed: u64, lr: f64) -> Result<Option<f32>> {
        let (x, y) = self.split.take().ok_or_else(no_split)?;
        let dim = x.len() / y.len().max(1);
        // Gathered into buffers allocated once.
        let (mut batch, mut labels) = (std::mem::take(&mut self.rows), std::mem::take(&mut self.labels));
        batch.clear();
        labels.clear();
        for &i in rows {
            batch.extend_from_slice(&x[i * dim..(i + 1) * dim]);
            labels.push(y[i]);
        }
        self.split = Some((x, y));
        let loss = self.step_host(&batch, &labels, dropout_seed, lr);
        (self.rows, self.labels) = (batch, labels);
        loss
    }

    fn step_inputs(&mut self, x: &[f32], labels: &[u8], dropout_seed: u64, lr: f64) -> Result<(Option<f32>, f64)> {
        if self.frozen.is_empty() {
            return Ok((self.step_host(x, labels, dropout_seed, lr)?, 0.0));
        }
        let t = Instant::now();
        let features = self.prefix(x, labels.len());
        let seconds = t.elapsed().as_secs_f64();
        Ok((self.step_host(&features, labels, dropout_seed, lr)?, seconds))
    }

    fn running(&self) -> Option<(f64, f64)> {
        Some((self.sums.loss(), self.sums.accuracy()))
    }

    fn take_sums(&mut self) -> EvalSums {
        std::mem::replace(&mut self.sums, EvalSums::new(self.head.outputs))
    }

    fn evaluate_val(&self) -> Result<EvalSums> {
        let (x, y) = self.val.as_ref().ok_or_else(no_split)?;
        Ok(host::evaluate_host(&self.layers, &self.head, x, y, CHUNK))
    }

    fn tensors(&self) -> Named {
        let pair = |l: &host::HostLayer| {
            let d = l.to_dense();
            (d.weight, d.bias)
        };
        named(&self.names, self.layers.iter().map(pair).collect(), pair(&self.head))
    }

    fn optimizer_state(&self) -> (i32, Moments) {
        let (t, mut moments) = self.optimizer.state();
        let shape = |l: &host::HostLayer| (l.outputs, l.inputs);
        relayout(&mut moments, &weight_shapes(self.layers.iter().map(shape), shape(&self.head), &self.names), true);
        (t, moments)
    }
}

/// dfdx on a device: its tensors, its autograd, [`Optimizer`]'s device path. The split
/// stays on the device; each batch is gathered there; loss and correct predictions add up
/// in device scalars, read once per epoch.
struct DeviceDense<'a, D: Backend> {
    dev: D,
    frozen: Vec<Layer<D>>,
    layers: Vec<Layer<D>>,
    head: Layer<D>,
    head_trains: bool,
    names: Vec<[String; 2]>,
    dropout: f64,
    weight_decay: f64,
    optimizer: Optimizer<D>,
    /// The split's inputs and one-hot labels, resident.
    split: Option<(Matrix<D>, Matrix<D>)>,
    /// The validation split, on the host (evaluated in chunks).
    val: Option<(Cow<'a, [f32]>, &'a [u8])>,
    /// Summed loss and correct predictions of this epoch's steps, on the device.
    loss_sum: Tensor<(), f32, D>,
    correct: Tensor<(), f32, D>,
    samples: u64,
}

impl<'a, D: Backend> DeviceDense<'a, D> {
    fn new(dev: &D, spec: DenseSpec<'a>) -> Self {
        Self {
            dev: dev.clone(),
            optimizer: new_optimizer(&spec, D::KERNELS),
            frozen: spec.frozen.iter().map(|l| Layer::from_dense(l, dev)).collect(),
            layers: spec.trainable.iter().map(|l| Layer::from_dense(l, dev)).collect(),
            head: Layer::from_dense(spec.head, dev),
            head_trains: spec.head_trains,
            names: spec.names,
            dropout: spec.dropout,
            weight_decay: spec.weight_decay,
            split: None,
            val: None,
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
            dropout_masks(&self.dev, rows, &widths, self.dropout, dropout_seed)
        } else {
            Vec::new()
        };
        let g = batch_gradients(&self.layers, &self.head, self.head_trains, xb, yb.clone(), &masks)?;
        self.optimizer.start_step(lr);
        for ((layer, (gw, gb)), [wn, bn]) in self.layers.iter_mut().zip(&g.layers).zip(&self.names) {
            self.optimizer.update_decayed(wn, &mut layer.weight, gw, self.weight_decay)?;
            self.optimizer.update(bn, &mut layer.bias, gb)?;
        }
        if let Some((gw, gb)) = &g.head {
            let [wn, bn] = TensorPath::head().pair();
            self.optimizer.update_decayed(&wn, &mut self.head.weight, gw, self.weight_decay)?;
            self.optimizer.update(&bn, &mut self.head.bias, gb)?;
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

impl<'a, D: Backend> Step<'a> for DeviceDense<'a, D> {
    fn keep_train(&mut self, x: Cow<'a, [f32]>, labels: &'a [u8]) -> Result<()> {
        let rows = labels.len();
        let dim = x.len() / rows.max(1);
        self.split = Some((self.dev.tensor_from_vec(x.into_owned(), (rows, dim)), self.onehot(labels)));
        Ok(())
    }

    fn keep_val(&mut self, x: Cow<'a, [f32]>, labels: &'a [u8]) -> Result<()> {
        self.val = Some((x, labels));
        Ok(())
    }

    fn prefix(&self, inputs: &[f32], n: usize) -> Vec<f32> {
        crate::features_host(&self.dev, &self.frozen, inputs, n, CHUNK)
    }

    fn step_rows(&mut self, rows: &[usize], dropout_seed: u64, lr: f64) -> Result<Option<f32>> {
        let (x, y) = self.split.clone().ok_or_else(no_split)?;
        let idx = self.dev.tensor_from_vec(rows.to_vec(), (rows.len(),));
        let (xb, yb): (Matrix<D>, Matrix<D>) = (x.gather(idx.clone()), y.gather(idx));
        self.step_tensors(xb, yb, dropout_seed, lr)?;
        Ok(None)
    }

    fn step_inputs(&mut self, x: &[f32], labels: &[u8], dropout_seed: u64, lr: f64) -> Result<(Option<f32>, f64)> {
        let rows = labels.len();
        let features;
        let x = if self.frozen.is_empty() {
            x
        } else {
            features = self.prefix(x, rows);
            &features[..]
        };
        let xb: Matrix<D> = self.dev.tensor_from_vec(x.to_vec(), (rows, x.len() / rows.max(1)));
        let yb = self.onehot(labels);
        self.step_tensors(xb, yb, dropout_seed, lr)?;
        Ok((None, 0.0))
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

    fn evaluate_val(&self) -> Result<EvalSums> {
        let (x, y) = self.val.as_ref().ok_or_else(no_split)?;
        Ok(crate::evaluate(&self.dev, &self.layers, &self.head, x, y, CHUNK))
    }

    fn tensors(&self) -> Named {
        let pair = |l: &Layer<D>| (l.weight.as_vec(), l.bias.as_vec());
        named(&self.names, self.layers.iter().map(pair).collect(), pair(&self.head))
    }

    fn optimizer_state(&self) -> (i32, Moments) {
        self.optimizer.state()
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
