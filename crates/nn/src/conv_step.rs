//! What a training stage asks of a convolutional network, whichever kernels run it: steps
//! on kept features or on images, the validation pass, the network and the optimizer's
//! state on the host. This is the one place that decides which kernels run: on the CPU the
//! host kernels ([`ConvTrainer`]), on any other device dfdx ([`DeviceConvTrainer`]).

use crate::conv_device_trainer::DeviceConvTrainer;
use crate::conv_net::ConvNet;
use crate::conv_ops::Nhwc;
use crate::conv_trainer::{ConvSettings, ConvTrainer};
use crate::{Backend, EvalSums, Kernels, Moments};
use anyhow::{anyhow, Result};
use layerwise_core::cnn::Cnn;
use std::time::Instant;

/// A convolutional network being trained from stage `first` on.
pub trait ConvStep {
    /// Keep stage `first`'s block input for the whole training split (`s.n` images, NHWC)
    /// for [`ConvStep::step_rows`]; a device uploads it once.
    fn keep_train(&mut self, x: Vec<f32>, s: Nhwc);
    /// Keep the validation split's for [`ConvStep::evaluate_val`].
    fn keep_val(&mut self, x: Vec<f32>, s: Nhwc);
    /// One step (learning rate `lr`) on rows `rows` of the kept training split; returns
    /// the batch's mean loss. Nothing is updated when it is not finite.
    fn step_rows(&mut self, rows: &[usize], labels: &[u8], lr: f64) -> Result<f32>;
    /// One step on CHW images (augmented ones): the frozen stages run first. Returns the
    /// loss and the seconds the frozen stages took.
    fn step_images(&mut self, images: &[f32], labels: &[u8], lr: f64) -> Result<(f32, f64)>;
    /// Stage `first`'s block input for `n` CHW images, on the host.
    fn prefix_features(&self, images: &[f32], n: usize) -> (Vec<f32>, Nhwc);
    /// Loss and accuracy over the kept validation split, in inference mode.
    fn evaluate_val(&self, labels: &[u8]) -> Result<EvalSums>;
    /// The running loss and accuracy of this epoch.
    fn running(&self) -> (f64, f64);
    /// Loss and accuracy of the steps since the last call.
    fn take_sums(&mut self) -> EvalSums;
    /// The network (every stage, the head), on the host.
    fn to_cnn(&self) -> Cnn;
    /// The optimizer's step count and state, weights' in the checkpoint layout.
    fn optimizer_state(&self) -> (i32, Moments);
}

/// A trainer of `net`'s stages from `first` on, on `dev` (the host kernels on the CPU),
/// continuing from a saved optimizer state when given one.
pub fn conv_stepper<D: Backend + 'static>(
    dev: &D,
    net: ConvNet,
    first: usize,
    settings: &ConvSettings,
    restored: Option<(i32, Moments)>,
) -> Box<dyn ConvStep> {
    if D::KERNELS == Kernels::Host {
        let mut t = ConvTrainer::new(net, first, settings);
        if let Some((step, m)) = restored {
            t.restore_optimizer(step, m);
        }
        Box::new(HostStep { trainer: t, train: None, val: None, xb: Vec::new() })
    } else {
        Box::new(device_stepper(dev, &net, first, settings, restored))
    }
}

/// Loss, accuracy and confusion of a checkpoint's network over `n` CHW images with
/// `labels`, in inference mode, on `dev` (the host kernels on the CPU).
pub fn evaluate_cnn<D: Backend + 'static>(dev: &D, cnn: &Cnn, images: &[f32], labels: &[u8]) -> EvalSums {
    if D::KERNELS == Kernels::Host {
        ConvNet::from_cnn(cnn).evaluate(images, labels)
    } else {
        crate::conv_device::DeviceConvNet::from_cnn(cnn, dev).evaluate(images, labels)
    }
}

/// The dfdx trainer whatever the device, the CPU included: what a GPU runs, testable here.
pub fn device_stepper<D: Backend + 'static>(
    dev: &D,
    net: &ConvNet,
    first: usize,
    settings: &ConvSettings,
    restored: Option<(i32, Moments)>,
) -> DeviceConvTrainer<D> {
    let mut t = DeviceConvTrainer::new(dev, net, first, settings);
    if let Some((step, m)) = restored {
        t.restore_optimizer(step, m);
    }
    t
}

/// The host kernels, the kept features in host memory.
struct HostStep {
    trainer: ConvTrainer,
    train: Option<(Vec<f32>, Nhwc)>,
    val: Option<(Vec<f32>, Nhwc)>,
    xb: Vec<f32>,
}

impl ConvStep for HostStep {
    fn keep_train(&mut self, x: Vec<f32>, s: Nhwc) {
        self.train = Some((x, s));
    }

    fn keep_val(&mut self, x: Vec<f32>, s: Nhwc) {
        self.val = Some((x, s));
    }

    fn step_rows(&mut self, rows: &[usize], labels: &[u8], lr: f64) -> Result<f32> {
        let (x, s) = self.train.as_ref().ok_or_else(|| anyhow!("internal: no training features kept"))?;
        let per = s.image();
        self.xb.clear();
        for &i in rows {
            self.xb.extend_from_slice(&x[i * per..(i + 1) * per]);
        }
        self.trainer.step(&self.xb, Nhwc { n: rows.len(), ..*s }, labels, lr)
    }

    fn step_images(&mut self, images: &[f32], labels: &[u8], lr: f64) -> Result<(f32, f64)> {
        let t = Instant::now();
        let (x, s) = self.trainer.net.prefix_features(images, labels.len(), self.trainer.first());
        let seconds = t.elapsed().as_secs_f64();
        Ok((self.trainer.step(&x, s, labels, lr)?, seconds))
    }

    fn prefix_features(&self, images: &[f32], n: usize) -> (Vec<f32>, Nhwc) {
        self.trainer.net.prefix_features(images, n, self.trainer.first())
    }

    fn evaluate_val(&self, labels: &[u8]) -> Result<EvalSums> {
        let (x, s) = self.val.as_ref().ok_or_else(|| anyhow!("internal: no validation features kept"))?;
        Ok(self.trainer.net.evaluate_features(x, *s, labels, self.trainer.first()))
    }

    fn running(&self) -> (f64, f64) {
        self.trainer.running()
    }

    fn take_sums(&mut self) -> EvalSums {
        self.trainer.take_sums()
    }

    fn to_cnn(&self) -> Cnn {
        self.trainer.net.to_cnn()
    }

    fn optimizer_state(&self) -> (i32, Moments) {
        self.trainer.optimizer_state()
    }
}

impl<D: Backend + 'static> ConvStep for DeviceConvTrainer<D> {
    fn keep_train(&mut self, x: Vec<f32>, s: Nhwc) {
        DeviceConvTrainer::keep_train(self, x, s)
    }

    fn keep_val(&mut self, x: Vec<f32>, s: Nhwc) {
        DeviceConvTrainer::keep_val(self, x, s)
    }

    fn step_rows(&mut self, rows: &[usize], labels: &[u8], lr: f64) -> Result<f32> {
        DeviceConvTrainer::step_rows(self, rows, labels, lr)
    }

    fn step_images(&mut self, images: &[f32], labels: &[u8], lr: f64) -> Result<(f32, f64)> {
        // The frozen stages run on the device inside the step; their time is not apart.
        Ok((DeviceConvTrainer::step_images(self, images, labels, lr)?, 0.0))
    }

    fn prefix_features(&self, images: &[f32], n: usize) -> (Vec<f32>, Nhwc) {
        DeviceConvTrainer::prefix_features(self, images, n)
    }

    fn evaluate_val(&self, labels: &[u8]) -> Result<EvalSums> {
        DeviceConvTrainer::evaluate_val(self, labels)
    }

    fn running(&self) -> (f64, f64) {
        DeviceConvTrainer::running(self)
    }

    fn take_sums(&mut self) -> EvalSums {
        DeviceConvTrainer::take_sums(self)
    }

    fn to_cnn(&self) -> Cnn {
        self.net().to_cnn()
    }

    fn optimizer_state(&self) -> (i32, Moments) {
        DeviceConvTrainer::optimizer_state(self)
    }
}
