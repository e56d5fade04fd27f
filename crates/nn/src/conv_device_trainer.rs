//! Training stages `first..` of a convolutional network and its head on a dfdx device:
//! the step of [`crate::convnet::ConvTrainer`] in dfdx ops and autograd, SGD (momentum,
//! Nesterov) or Adam on device tensors, the training split's features resident.

use crate::conv_device::{DeviceBlock, DeviceConvNet, Index, Mat};
use crate::conv_net::ConvNet;
use crate::conv_ops::Nhwc;
use crate::conv_trainer::{relayout, trainable_names, ConvSettings};
use crate::{Backend, EvalSums, Kernels, Matrix, Moments, Optimizer, Vector};
use anyhow::{anyhow, bail, Result};
use dfdx::prelude::*;
use layerwise_core::cnn::{BN_EPS, BN_MOMENTUM};

type Traced<D> = Mat<D, OwnedTape<f32, D>>;

/// A training batch's mean loss and logits and its gradients, on the device.
type StepOutput<D> = (Tensor<(), f32, D>, Matrix<D>, Vec<Grad<D>>);

/// One trainable tensor's gradient on the device.
enum Grad<D: Backend> {
    Matrix(Matrix<D>),
    Vector(Vector<D>),
}

impl<D: Backend> Grad<D> {
    fn to_host(&self) -> Vec<f32> {
        match self {
            Grad::Matrix(m) => m.as_vec(),
            Grad::Vector(v) => v.as_vec(),
        }
    }
}

/// BatchNorm in training mode (the batch's statistics; the running ones moved as PyTorch
/// moves them) and ReLU, on the tape.
fn bn_train<D: Backend>(b: &mut DeviceBlock<D>, z: Traced<D>) -> Traced<D> {
    let shape = *z.shape();
    let rows = shape.0 as f64;
    let zv: Matrix<D> = z.retaped::<NoneTape>();
    let mean = zv.clone().mean::<(usize,), Axis<0>>();
    let var =
        (zv - mean.clone().broadcast_like::<(usize, usize), Axis<0>>(&shape)).square().mean::<(usize,), Axis<0>>();
    let m = BN_MOMENTUM as f64;
    b.mean.axpy(1.0 - m, &mean, m);
    let unbiased = if rows > 1.0 { rows / (rows - 1.0) } else { 1.0 };
    b.var.axpy(1.0 - m, &var, m * unbiased);
    let xhat = z.normalize::<Axis<0>>(BN_EPS);
    let gamma = b.gamma.retaped::<OwnedTape<f32, D>>().broadcast_like::<(usize, usize), Axis<0>>(&shape);
    let beta = b.beta.retaped::<OwnedTape<f32, D>>().broadcast_like::<(usize, usize), Axis<0>>(&shape);
    (xhat * gamma + beta).relu()
}

/// Trains stages `first..` of a network and its head on a dfdx device.
pub struct DeviceConvTrainer<D: Backend> {
    net: DeviceConvNet<D>,
    first: usize,
    optimizer: Optimizer<D>,
    weight_decay: f64,
    label_smoothing: f32,
    sums: EvalSums,
    /// Stage `first`'s block input for the training split, `[n, h·w·c]`, resident.
    train: Option<(Matrix<D>, Nhwc)>,
    /// The same for the validation split.
    val: Option<(Matrix<D>, Nhwc)>,
}

impl<D: Backend> DeviceConvTrainer<D> {
    /// A trainer of `net`'s stages from `first` on, on `dev`.
    pub fn new(dev: &D, net: &ConvNet, first: usize, settings: &ConvSettings) -> Self {
        let net = DeviceConvNet::new(net, dev);
        Self {
            sums: EvalSums::new(net.classes()),
            net,
            first,
            optimizer: Optimizer::new(&settings.optimizer, Kernels::Dfdx),
            weight_decay: settings.weight_decay,
            label_smoothing: settings.label_smoothing as f32,
            train: None,
            val: None,
        }
    }

    /// The network, copied to the host.
    pub fn net(&self) -> ConvNet {
        self.net.to_host()
    }

    /// The targets of `labels`: `(1 - ε)·onehot + ε/K`.
    fn targets(&self, labels: &[u8]) -> Matrix<D> {
        let k = self.net.classes();
        let off = self.label_smoothing / k as f32;
        let mut y = vec![off; labels.len() * k];
        for (j, &l) in labels.iter().enumerate() {
            y[j * k + l as usize] += 1.0 - self.label_smoothing;
        }
        self.net.dev.tensor_from_vec(y, (labels.len(), k))
    }

    /// Forward in training mode and backward: the loss, the logits, and the gradient of
    /// every trainable tensor in the order of [`trainable_names`].
    fn backward(&mut self, x: Matrix<D>, s: Nhwc, labels: &[u8]) -> StepOutput<D> {
        let first = self.first;
        let target = self.targets(labels);
        let net = &mut self.net;
        // The first trained block's product is taken off the tape and traced from its
        // output: its weight gradient is then one product, and the input gets none.
        let cols0 = net.plans.patches(x, s);
        let z0 = cols0.clone().matmul(net.stages[first].1.wk.clone());
        let mut y = bn_train(&mut net.stages[first].1, z0.clone().traced(Gradients::leaky()));
        let mut cur = Nhwc { c: net.stages[first].1.cout, ..s };
        for (d, b) in net.stages[first + 1..].iter_mut() {
            let (yd, o) = net.plans.downsample(y, cur, *d);
            let z = net.plans.patches(yd, o).matmul(b.wk.retaped::<OwnedTape<f32, D>>());
            y = bn_train(b, z);
            cur = Nhwc { c: b.cout, ..o };
        }
        for b in net.head_convs.iter_mut() {
            let z = net.plans.patches(y, cur).matmul(b.wk.retaped::<OwnedTape<f32, D>>());
            y = bn_train(b, z);
            cur.c = b.cout;
        }
        let logits = net.linear.apply_traced(net.plans.head_pool(y, cur), true);
        let (logits, tape) = logits.split_tape();
        let logits_value = logits.clone();
        let loss = cross_entropy_with_logits_loss(logits.put_tape(tape), target);
        let loss_value = loss.retaped::<NoneTape>();
        let grads = loss.backward();
        let mut out = Vec::new();
        for (k, b) in net.stages[first..].iter().map(|(_, b)| b).chain(&net.head_convs).enumerate() {
            let gw = if k == 0 {
                let gz: Matrix<D> = grads.get(&z0);
                cols0.clone().permute().matmul(gz)
            } else {
                grads.get(&b.wk)
            };
            out.extend([Grad::Matrix(gw), Grad::Vector(grads.get(&b.gamma)), Grad::Vector(grads.get(&b.beta))]);
        }
        out.extend([Grad::Matrix(grads.get(&net.linear.weight)), Grad::Vector(grads.get(&net.linear.bias))]);
        (loss_value, logits_value, out)
    }

    /// The mean loss of a batch (NHWC, stage `first`'s block input) in training mode and
    /// the gradient of every trainable tensor, in the order of [`trainable_names`], on the
    /// host (weights in the host layout); moves BatchNorm's running statistics.
    pub fn gradients(&mut self, x: &[f32], s: Nhwc, labels: &[u8]) -> (f32, Vec<Vec<f32>>) {
        let xb = self.net.dev.tensor_from_vec(x.to_vec(), (s.rows(), s.c));
        let (loss, _, grads) = self.backward(xb, s, labels);
        (loss.as_vec()[0], grads.iter().map(Grad::to_host).collect())
    }

    /// One step on a batch on the device; returns the mean loss (and adds it and the
    /// predictions to this epoch's sums). Nothing is updated when the loss is not finite.
    fn step_tensor(&mut self, x: Matrix<D>, s: Nhwc, labels: &[u8], lr: f64) -> Result<f32> {
        let (loss, logits, grads) = self.backward(x, s, labels);
        let loss = loss.as_vec()[0];
        self.sums.add_predictions(&logits.as_vec(), labels, loss as f64 * labels.len() as f64);
        if !loss.is_finite() {
            return Ok(loss);
        }
        let net = &mut self.net;
        let names = trainable_names(net.stages.len(), self.first, net.head_convs.len());
        self.optimizer.start_step(lr);
        let wd = self.weight_decay;
        let mut grads = grads.into_iter();
        let mut names = names.iter();
        let mut next = || -> Result<(&String, Grad<D>)> {
            match (names.next(), grads.next()) {
                (Some(n), Some(g)) => Ok((n, g)),
                _ => Err(anyhow!("internal: fewer gradients than trainable tensors")),
            }
        };
        for b in net.stages[self.first..].iter_mut().map(|(_, b)| b).chain(net.head_convs.iter_mut()) {
            for which in 0..3 {
                let (name, g) = next()?;
                match (which, g) {
                    (0, Grad::Matrix(g)) => self.optimizer.update_decayed(name, &mut b.wk, &g, wd)?,
                    (1, Grad::Vector(g)) => self.optimizer.update_decayed(name, &mut b.gamma, &g, 0.0)?,
                    (2, Grad::Vector(g)) => self.optimizer.update_decayed(name, &mut b.beta, &g, 0.0)?,
                    _ => bail!("internal: gradient of {name} has the wrong rank"),
                }
            }
        }
        match (next()?, next()?) {
            ((wn, Grad::Matrix(gw)), (bn, Grad::Vector(gb))) => {
                self.optimizer.update_decayed(wn, &mut net.linear.weight, &gw, wd)?;
                self.optimizer.update_decayed(bn, &mut net.linear.bias, &gb, 0.0)?;
            }
            _ => bail!("internal: the head's gradients have the wrong rank"),
        }
        Ok(loss)
    }

    /// One step on a host batch (NHWC, stage `first`'s block input).
    pub fn step(&mut self, x: &[f32], s: Nhwc, labels: &[u8], lr: f64) -> Result<f32> {
        let xb = self.net.dev.tensor_from_vec(x.to_vec(), (s.rows(), s.c));
        self.step_tensor(xb, s, labels, lr)
    }

    /// Keep stage `first`'s block input for the training split (`s.n` images) on the device.
    pub fn keep_train(&mut self, x: Vec<f32>, s: Nhwc) {
        self.train = Some((self.net.dev.tensor_from_vec(x, (s.n, s.image())), s));
    }

    /// Keep the validation split's likewise.
    pub fn keep_val(&mut self, x: Vec<f32>, s: Nhwc) {
        self.val = Some((self.net.dev.tensor_from_vec(x, (s.n, s.image())), s));
    }

    /// One step on rows `rows` of the kept training split, gathered on the device.
    pub fn step_rows(&mut self, rows: &[usize], labels: &[u8], lr: f64) -> Result<f32> {
        let (x, s) = self.train.clone().ok_or_else(|| anyhow!("internal: no training features kept"))?;
        let idx: Index<D> = self.net.dev.tensor_from_vec(rows.to_vec(), (rows.len(),));
        let xb: Matrix<D> = x.gather(idx);
        let s = Nhwc { n: rows.len(), ..s };
        self.step_tensor(xb.reshape_like(&(s.rows(), s.c)), s, labels, lr)
    }

    /// One step on CHW images: the frozen stages run on the device first.
    pub fn step_images(&mut self, images: &[f32], labels: &[u8], lr: f64) -> Result<f32> {
        let (x, s) = self.net.upload_images(images, labels.len());
        let (x, s) = self.net.run_stages(x, s, self.first);
        self.step_tensor(x, s, labels, lr)
    }

    /// Stage `first`'s block input for `n` CHW images, on the host.
    pub fn prefix_features(&self, images: &[f32], n: usize) -> (Vec<f32>, Nhwc) {
        self.net.prefix_features(images, n, self.first)
    }

    /// Loss and accuracy over the kept validation split, in inference mode.
    pub fn evaluate_val(&self, labels: &[u8]) -> Result<EvalSums> {
        let (x, s) = self.val.as_ref().ok_or_else(|| anyhow!("internal: no validation features kept"))?;
        Ok(self.net.evaluate_resident(x, *s, labels, self.first))
    }

    /// Loss and accuracy of the steps since the last call.
    pub fn take_sums(&mut self) -> EvalSums {
        std::mem::replace(&mut self.sums, EvalSums::new(self.net.classes()))
    }

    /// The running loss and accuracy of this epoch.
    pub fn running(&self) -> (f64, f64) {
        (self.sums.loss(), self.sums.accuracy())
    }

    /// The optimizer's step count and state, weights' in the checkpoint layout.
    pub fn optimizer_state(&self) -> (i32, Moments) {
        let (t, mut m) = self.optimizer.state();
        relayout(&self.net.block_shapes(), None, &mut m, true);
        (t, m)
    }

    /// Continue from a saved [`DeviceConvTrainer::optimizer_state`].
    pub fn restore_optimizer(&mut self, t: i32, mut moments: Moments) {
        relayout(&self.net.block_shapes(), None, &mut moments, false);
        self.optimizer.restore(t, moments);
    }
}
