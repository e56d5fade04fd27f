//! Convolutional networks being trained ([`Step`]) from stage `first` on: the stages
//! before it frozen (BatchNorm in inference mode), the stages from it and the head
//! trained. One choice of kernels: the host kernels ([`ConvTrainer`]) or dfdx
//! ([`DeviceConvTrainer`]), as [`Kernels`] says. Also the network's tensors by checkpoint
//! name and back, and the evaluation of a checkpoint's network, chosen the same way.

use crate::backend::{Backend, Kernels};
use crate::conv_device::DeviceConvNet;
use crate::conv_device_trainer::DeviceConvTrainer;
use crate::conv_net::ConvNet;
use crate::conv_ops::Nhwc;
use crate::conv_trainer::{ConvSettings, ConvTrainer};
use crate::eval::EvalSums;
use crate::optim::Moments;
use crate::step::{Named, Step};
use anyhow::{anyhow, bail, Result};
use layerwise_core::cnn::{Cnn, ConvBlock};
use layerwise_core::names::TensorPath;
use std::borrow::Cow;
use std::time::Instant;

/// A trainer of `net`'s stages from `first` on, on `dev` with `kernels` (a device's own:
/// [`Backend::KERNELS`]; tests pass [`Kernels::Dfdx`] to run the device path on the CPU),
/// continuing from a saved optimizer state when given one.
pub fn conv_step<'a, D: Backend + 'static>(
    dev: &D,
    kernels: Kernels,
    net: ConvNet,
    first: usize,
    settings: &ConvSettings,
    restored: Option<(i32, Moments)>,
) -> Box<dyn Step<'a> + 'a> {
    let block = block_input(&net, first);
    match kernels {
        Kernels::Host => {
            let mut t = ConvTrainer::new(net, first, settings);
            if let Some((step, m)) = restored {
                t.restore_optimizer(step, m);
            }
            Box::new(HostConv { trainer: t, block, train: None, val: None, xb: Vec::new(), yb: Vec::new() })
        }
        Kernels::Dfdx => {
            let mut t = DeviceConvTrainer::new(dev, &net, first, settings);
            if let Some((step, m)) = restored {
                t.restore_optimizer(step, m);
            }
            Box::new(DeviceConv { trainer: t, first, block, train_labels: None, val_labels: None, yb: Vec::new() })
        }
    }
}

/// The shape of one image's input to stage `first`'s block (the frozen stages' output,
/// downsampled), found by running one blank image through them.
fn block_input(net: &ConvNet, first: usize) -> Nhwc {
    let dim: usize = net.input.iter().product();
    net.prefix_features(&vec![0.0; dim], 1, first).1
}

/// Loss, accuracy and confusion of a checkpoint's network over `n` CHW images with
/// `labels`, in inference mode, on `dev` with its own kernels.
pub fn evaluate_cnn<D: Backend + 'static>(dev: &D, cnn: &Cnn, images: &[f32], labels: &[u8]) -> EvalSums {
    match D::KERNELS {
        Kernels::Host => ConvNet::from_cnn(cnn).evaluate(images, labels),
        Kernels::Dfdx => DeviceConvNet::from_cnn(cnn, dev).evaluate(images, labels),
    }
}

/// Every tensor of stages `first..` and the head, by checkpoint name, in the checkpoint's
/// layouts: what a trained convolutional part is, for saved states and best epochs.
pub fn cnn_tensors(net: &Cnn, first: usize) -> Named {
    let mut out = Named::new();
    let block = |out: &mut Named, prefix: TensorPath, b: &ConvBlock| {
        out.push((prefix.conv().weight(), b.weight.clone()));
        for (suffix, v) in b.bn.tensors() {
            out.push((prefix.bn().tensor(suffix), v.to_vec()));
        }
    };
    for (i, s) in net.stages.iter().enumerate().skip(first) {
        block(&mut out, TensorPath::stage(i), &s.conv);
    }
    for (j, b) in net.head.convs.iter().enumerate() {
        block(&mut out, TensorPath::head_conv(j), b);
    }
    let [w, b] = TensorPath::head_linear().pair();
    out.push((w, net.head.linear.weight.clone()));
    out.push((b, net.head.linear.bias.clone()));
    out
}

/// `net` with stages `first..` and the head set from `saved` ([`cnn_tensors`]'s names),
/// refusing a tensor that is missing or of another size.
pub fn cnn_with_tensors(net: &Cnn, first: usize, saved: &Named) -> Result<Cnn> {
    let mut out = net.clone();
    let wanted = cnn_tensors(net, first);
    if saved.len() != wanted.len() {
        bail!("{} tensors saved, the network trains {}", saved.len(), wanted.len());
    }
    let take = |name: &str, like: &[f32]| -> Result<Vec<f32>> {
        match saved.iter().find(|(n, _)| n == name) {
            Some((_, v)) if v.len() == like.len() => Ok(v.clone()),
            Some((_, v)) => bail!("`{name}` has {} values, the network's {}", v.len(), like.len()),
            None => bail!("no tensor `{name}`"),
        }
    };
    let set = |prefix: TensorPath, b: &mut ConvBlock| -> Result<()> {
        b.weight = take(&prefix.conv().weight(), &b.weight)?;
        let bn = prefix.bn();
        b.bn.weight = take(&bn.weight(), &b.bn.weight)?;
        b.bn.bias = take(&bn.bias(), &b.bn.bias)?;
        b.bn.running_mean = take(&bn.tensor("running_mean"), &b.bn.running_mean)?;
        b.bn.running_var = take(&bn.tensor("running_var"), &b.bn.running_var)?;
        Ok(())
    };
    for (i, s) in out.stages.iter_mut().enumerate().skip(first) {
        set(TensorPath::stage(i), &mut s.conv)?;
    }
    for (j, b) in out.head.convs.iter_mut().enumerate() {
        set(TensorPath::head_conv(j), b)?;
    }
    let linear = TensorPath::head_linear();
    out.head.linear.weight = take(&linear.weight(), &out.head.linear.weight)?;
    out.head.linear.bias = take(&linear.bias(), &out.head.linear.bias)?;
    Ok(out)
}

fn not_kept(what: &str) -> anyhow::Error {
    anyhow!("internal: no {what} split kept")
}

/// The host kernels, the kept features in host memory.
struct HostConv<'a> {
    trainer: ConvTrainer,
    /// One image's block input.
    block: Nhwc,
    train: Option<(Cow<'a, [f32]>, &'a [u8])>,
    val: Option<(Cow<'a, [f32]>, &'a [u8])>,
    xb: Vec<f32>,
    yb: Vec<u8>,
}

impl<'a> Step<'a> for HostConv<'a> {
    fn keep_train(&mut self, x: Cow<'a, [f32]>, labels: &'a [u8]) -> Result<()> {
        self.train = Some((x, labels));
        Ok(())
    }

    fn keep_val(&mut self, x: Cow<'a, [f32]>, labels: &'a [u8]) -> Result<()> {
        self.val = Some((x, labels));
        Ok(())
    }

    fn prefix(&self, inputs: &[f32], n: usize) -> Vec<f32> {
        self.trainer.net.prefix_features(inputs, n, self.trainer.first()).0
    }

    fn step_rows(&mut self, rows: &[usize], _dropout_seed: u64, lr: f64) -> Result<Option<f32>> {
        let (x, y) = self.train.as_ref().ok_or_else(|| not_kept("training"))?;
        let per = self.block.image();
        self.xb.clear();
        self.yb.clear();
        for &i in rows {
            self.xb.extend_from_slice(&x[i * per..(i + 1) * per]);
            self.yb.push(y[i]);
        }
        let s = Nhwc { n: rows.len(), ..self.block };
        Ok(Some(self.trainer.step(&self.xb, s, &self.yb, lr)?))
    }

    fn step_inputs(&mut self, x: &[f32], labels: &[u8], _dropout_seed: u64, lr: f64) -> Result<(Option<f32>, f64)> {
        let t = Instant::now();
        let (f, s) = self.trainer.net.prefix_features(x, labels.len(), self.trainer.first());
        let seconds = t.elapsed().as_secs_f64();
        Ok((Some(self.trainer.step(&f, s, labels, lr)?), seconds))
    }

    fn running(&self) -> Option<(f64, f64)> {
        Some(self.trainer.running())
    }

    fn take_sums(&mut self) -> EvalSums {
        self.trainer.take_sums()
    }

    fn evaluate_val(&self) -> Result<EvalSums> {
        let (x, y) = self.val.as_ref().ok_or_else(|| not_kept("validation"))?;
        let s = Nhwc { n: y.len(), ..self.block };
        Ok(self.trainer.net.evaluate_features(x, s, y, self.trainer.first()))
    }

    fn tensors(&self) -> Named {
        cnn_tensors(&self.trainer.net.to_cnn(), self.trainer.first())
    }

    fn optimizer_state(&self) -> (i32, Moments) {
        self.trainer.optimizer_state()
    }

    fn step_handing_on(&mut self, x: &[f32], labels: &[u8], _seed: u64, lr: f64) -> Result<(Option<f32>, Vec<f32>)> {
        let s = Nhwc { n: labels.len(), ..self.block };
        if x.len() != s.len() {
            bail!("internal: a batch of {} values for {} inputs of shape {:?}", x.len(), labels.len(), self.block);
        }
        let (loss, out, _) = self.trainer.step_out(x, s, labels, lr)?;
        Ok((Some(loss), out))
    }

    fn infer_handing_on(&self, x: &[f32], labels: &[u8], sums: &mut EvalSums) -> Result<Vec<f32>> {
        let s = Nhwc { n: labels.len(), ..self.block };
        if x.len() != s.len() {
            bail!("internal: a batch of {} values for {} inputs of shape {:?}", x.len(), labels.len(), self.block);
        }
        let net = &self.trainer.net;
        let (logits, out) = net.logits_and_output(x, s, self.trainer.first(), true);
        sums.add(&logits, labels);
        Ok(out.unwrap_or_default())
    }
}

/// dfdx on a device, the kept features resident there.
struct DeviceConv<'a, D: Backend> {
    trainer: DeviceConvTrainer<D>,
    first: usize,
    /// One image's block input.
    block: Nhwc,
    train_labels: Option<&'a [u8]>,
    val_labels: Option<&'a [u8]>,
    yb: Vec<u8>,
}

impl<'a, D: Backend + 'static> Step<'a> for DeviceConv<'a, D> {
    fn keep_train(&mut self, x: Cow<'a, [f32]>, labels: &'a [u8]) -> Result<()> {
        self.trainer.keep_train(x.into_owned(), Nhwc { n: labels.len(), ..self.block });
        self.train_labels = Some(labels);
        Ok(())
    }

    fn keep_val(&mut self, x: Cow<'a, [f32]>, labels: &'a [u8]) -> Result<()> {
        self.trainer.keep_val(x.into_owned(), Nhwc { n: labels.len(), ..self.block });
        self.val_labels = Some(labels);
        Ok(())
    }

    fn prefix(&self, inputs: &[f32], n: usize) -> Vec<f32> {
        self.trainer.prefix_features(inputs, n).0
    }

    fn step_rows(&mut self, rows: &[usize], _dropout_seed: u64, lr: f64) -> Result<Option<f32>> {
        let y = self.train_labels.ok_or_else(|| not_kept("training"))?;
        self.yb.clear();
        self.yb.extend(rows.iter().map(|&i| y[i]));
        Ok(Some(self.trainer.step_rows(rows, &self.yb, lr)?))
    }

    fn step_inputs(&mut self, x: &[f32], labels: &[u8], _dropout_seed: u64, lr: f64) -> Result<(Option<f32>, f64)> {
        // The frozen stages run on the device inside the step; their time is not apart.
        Ok((Some(self.trainer.step_images(x, labels, lr)?), 0.0))
    }

    fn running(&self) -> Option<(f64, f64)> {
        Some(self.trainer.running())
    }

    fn take_sums(&mut self) -> EvalSums {
        self.trainer.take_sums()
    }

    fn evaluate_val(&self) -> Result<EvalSums> {
        self.trainer.evaluate_val(self.val_labels.ok_or_else(|| not_kept("validation"))?)
    }

    fn tensors(&self) -> Named {
        cnn_tensors(&self.trainer.net().to_cnn(), self.first)
    }

    fn optimizer_state(&self) -> (i32, Moments) {
        self.trainer.optimizer_state()
    }
}
