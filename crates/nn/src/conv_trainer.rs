//! Training stages `first..` of a convolutional network and its head: a step's forward
//! pass in training mode, its backward pass, the updates, the optimizer's state.

use crate::conv_block::{block_backward, block_train, wk_from_torch, wk_to_torch, BlockCache};
use crate::conv_net::{BlockShapes, ConvNet};
use crate::conv_ops::{downsample, downsample_backward, head_pool, head_pool_backward, smoothed_cross_entropy, Nhwc};
use crate::host::{matmul, View};
use crate::{EvalSums, Kernels, Moments, Optimizer, OptimizerSpec};
use anyhow::Result;
use layerwise_core::cnn::Downsample;
use layerwise_core::names::TensorPath;
use std::borrow::Cow;

/// The checkpoint names of the tensors trained with stages `first..depth` of a network
/// whose head has `head_convs` conv blocks, in update order: each block's conv weight,
/// BatchNorm γ and β, then the head's linear weight and bias.
pub fn trainable_names(depth: usize, first: usize, head_convs: usize) -> Vec<String> {
    let stages = (first..depth).map(TensorPath::stage);
    let heads = (0..head_convs).map(TensorPath::head_conv);
    let mut names: Vec<String> = stages.chain(heads).flat_map(|p| p.block_trainable()).collect();
    names.extend(TensorPath::head_linear().pair());
    names
}

/// Trains stages `first..` of a [`ConvNet`] and its head; the stages before `first` are
/// frozen and not run here (their output is the trainer's input).
pub struct ConvTrainer {
    /// The network (its frozen stages unchanged).
    pub net: ConvNet,
    first: usize,
    optimizer: Optimizer<dfdx::tensor::Cpu>,
    weight_decay: f64,
    label_smoothing: f32,
    sums: EvalSums,
}

/// What a [`ConvTrainer`] trains with.
pub struct ConvSettings {
    /// The optimizer and its settings.
    pub optimizer: OptimizerSpec,
    /// Decoupled weight decay of the conv and linear weights.
    pub weight_decay: f64,
    /// Label smoothing ε.
    pub label_smoothing: f64,
}

impl ConvSettings {
    /// The settings a training run's configuration gives: the one derivation, for a
    /// convolutional depth and for a decoupled run's stages alike.
    pub fn of(cfg: &layerwise_core::config::TrainConfig) -> Self {
        Self { optimizer: cfg.optimizer_spec(), weight_decay: cfg.weight_decay, label_smoothing: cfg.label_smoothing }
    }
}

impl ConvTrainer {
    /// A trainer of `net`'s stages from `first` on.
    pub fn new(net: ConvNet, first: usize, settings: &ConvSettings) -> Self {
        let classes = net.linear.outputs;
        Self {
            net,
            first,
            optimizer: Optimizer::new(&settings.optimizer, Kernels::Host),
            weight_decay: settings.weight_decay,
            label_smoothing: settings.label_smoothing as f32,
            sums: EvalSums::new(classes),
        }
    }

    /// The checkpoint names of every trainable tensor, in update order.
    pub fn trainable_names(&self) -> Vec<String> {
        trainable_names(self.net.stages.len(), self.first, self.net.head_convs.len())
    }

    /// One step on an NHWC batch that is stage `first`'s block input; returns the mean
    /// loss (and adds it and the predictions to this epoch's sums). Nothing is updated
    /// when the loss is not finite.
    pub fn step(&mut self, x: &[f32], s: Nhwc, labels: &[u8], lr: f64) -> Result<f32> {
        let (loss, grads, _) = self.forward_backward(x, s, labels, false);
        self.update(loss, grads, lr)?;
        Ok(loss)
    }

    /// One step as [`ConvTrainer::step`], also returning the output of the first trained
    /// block in training mode (NHWC, before the next stage's downsampling) and its shape:
    /// what the next stage of a decoupled network trains on.
    pub fn step_out(&mut self, x: &[f32], s: Nhwc, labels: &[u8], lr: f64) -> Result<(f32, Vec<f32>, Nhwc)> {
        let (loss, grads, out) = self.forward_backward(x, s, labels, true);
        self.update(loss, grads, lr)?;
        let (y, shape) = out.unwrap_or_default();
        Ok((loss, y, shape))
    }

    /// The optimizer's step on every trainable tensor; nothing when `loss` is not finite.
    fn update(&mut self, loss: f32, grads: Vec<Vec<f32>>, lr: f64) -> Result<()> {
        if !loss.is_finite() {
            return Ok(());
        }
        let names = self.trainable_names();
        let linear_weight = TensorPath::head_linear().weight();
        self.optimizer.start_step(lr);
        let wd = self.weight_decay;
        for ((name, g), param) in names.iter().zip(&grads).zip(self.net.trainable_mut(self.first)) {
            // Decay on the convolution and linear weights, not on BatchNorm or biases.
            let decay = if name.ends_with(".conv.weight") || *name == linear_weight { wd } else { 0.0 };
            self.optimizer.update_host(name, param, g, decay)?;
        }
        Ok(())
    }

    /// The mean loss of a batch in training mode and the gradient of every trainable
    /// tensor, in the order of [`ConvTrainer::trainable_names`]; adds the loss and the
    /// predictions to this epoch's sums and moves BatchNorm's running statistics (as a
    /// training step does). No gradient when the loss is not finite.
    pub fn gradients(&mut self, x: &[f32], s: Nhwc, labels: &[u8]) -> (f32, Vec<Vec<f32>>) {
        let (loss, grads, _) = self.forward_backward(x, s, labels, false);
        (loss, grads)
    }

    /// [`ConvTrainer::gradients`], and the first trained block's output when `keep_out`.
    fn forward_backward(
        &mut self,
        x: &[f32],
        s: Nhwc,
        labels: &[u8],
        keep_out: bool,
    ) -> (f32, Vec<Vec<f32>>, Option<(Vec<f32>, Nhwc)>) {
        let first = self.first;
        let net = &mut self.net;
        // Forward, keeping what the backward pass needs.
        let mut caches: Vec<BlockCache> = Vec::new();
        let mut cur = block_train(&mut net.stages[first].1, Cow::Borrowed(x), s);
        for (d, b) in net.stages[first + 1..].iter_mut() {
            let prev = cur.out_shape();
            let (y, o, arg) = downsample(&cur.y, prev, *d);
            let mut next = block_train(b, Cow::Owned(y), o);
            next.down = Some((*d, prev, arg));
            caches.push(std::mem::replace(&mut cur, next));
        }
        for b in net.head_convs.iter_mut() {
            let prev = cur.out_shape();
            let mut next = block_train(b, Cow::Owned(cur.y.clone()), prev);
            next.down = Some((Downsample::None, prev, Vec::new()));
            caches.push(std::mem::replace(&mut cur, next));
        }
        caches.push(cur);
        let ls = caches[caches.len() - 1].out_shape();
        let f = head_pool(&caches[caches.len() - 1].y, ls);
        let classes = net.linear.outputs;
        let n = labels.len();
        let mut logits = vec![0f32; n * classes];
        crate::host::dense_forward(&net.linear, &f, n, &mut logits, false);
        let (loss, dlogits) = smoothed_cross_entropy(&logits, labels, classes, self.label_smoothing);
        self.sums.add_predictions(&logits, labels, loss as f64 * n as f64);
        let take_out = |caches: &mut Vec<BlockCache>| {
            keep_out.then(|| {
                let shape = caches[0].out_shape();
                (std::mem::take(&mut caches[0].y), shape)
            })
        };
        if !loss.is_finite() {
            let out = take_out(&mut caches);
            caches.into_iter().for_each(BlockCache::recycle);
            return (loss, Vec::new(), out);
        }
        // Backward: the linear layer, the pooling, then every block, last first.
        let lin = &net.linear;
        let mut gw = vec![0f32; lin.inputs * classes];
        matmul(&mut gw, View::transposed(&f, n, lin.inputs), View::rows(&dlogits, n, classes), false);
        let mut gb = vec![0f32; classes];
        for row in dlogits.chunks_exact(classes) {
            for (g, v) in gb.iter_mut().zip(row) {
                *g += v;
            }
        }
        let mut df = vec![0f32; n * lin.inputs];
        matmul(&mut df, View::rows(&dlogits, n, classes), View::transposed(&lin.wt, lin.inputs, classes), false);
        let mut dy = head_pool_backward(&df, ls);
        let stage_count = net.stages.len() - first;
        let blocks = stage_count + net.head_convs.len();
        let mut grads: Vec<Vec<f32>> = Vec::with_capacity(3 * blocks + 2);
        for k in (0..blocks).rev() {
            let b = if k < stage_count { &net.stages[first + k].1 } else { &net.head_convs[k - stage_count] };
            let cache = &caches[k];
            let ((gwk, gg, gbk), dx) = block_backward(b, cache, &dy, k > 0);
            grads.extend([gbk, gg, gwk]);
            if let (Some(dx), Some((d, ps, arg))) = (dx, &cache.down) {
                dy = downsample_backward(&dx, *ps, *d, arg);
            }
        }
        crate::scratch::give(dy);
        grads.reverse();
        grads.extend([gw, gb]);
        let out = take_out(&mut caches);
        caches.into_iter().for_each(BlockCache::recycle);
        (loss, grads, out)
    }

    /// The first stage trained.
    pub fn first(&self) -> usize {
        self.first
    }

    fn linear_shape(&self) -> (usize, usize) {
        (self.net.linear.inputs, self.net.linear.outputs)
    }

    /// Loss and accuracy of the steps since the last call.
    pub fn take_sums(&mut self) -> EvalSums {
        std::mem::replace(&mut self.sums, EvalSums::new(self.net.linear.outputs))
    }

    /// The running loss and accuracy of this epoch.
    pub fn running(&self) -> (f64, f64) {
        (self.sums.loss(), self.sums.accuracy())
    }

    /// The optimizer's step count and state per tensor, weights' in the checkpoint
    /// layout (PyTorch's), so a saved state does not depend on the kernels.
    pub fn optimizer_state(&self) -> (i32, Moments) {
        let (t, mut m) = self.optimizer.state();
        relayout(&self.net.block_shapes(), Some(self.linear_shape()), &mut m, true);
        (t, m)
    }

    /// Continue from a saved [`ConvTrainer::optimizer_state`].
    pub fn restore_optimizer(&mut self, t: i32, mut moments: Moments) {
        relayout(&self.net.block_shapes(), Some(self.linear_shape()), &mut moments, false);
        self.optimizer.restore(t, moments);
    }
}

/// Optimizer state between the trainers' layouts and the checkpoint's: conv weights
/// `[9·in, out]` ⇄ `[out, in, 3, 3]` (`blocks` gives their channels), and the head's
/// linear weight `[in, out]` ⇄ `[out, in]` when `linear_transposed` gives its `(in, out)`
/// (the host trainer keeps it so); `to_checkpoint` says which way.
pub(crate) fn relayout(
    (stages, heads): &BlockShapes,
    linear_transposed: Option<(usize, usize)>,
    moments: &mut Moments,
    to_checkpoint: bool,
) {
    let conv = |name: &str| -> Option<(usize, usize)> {
        let stage = stages.iter().enumerate().map(|(i, s)| (TensorPath::stage(i), s));
        let head = heads.iter().enumerate().map(|(j, s)| (TensorPath::head_conv(j), s));
        stage.chain(head).find(|(prefix, _)| name == prefix.conv().weight()).map(|(_, s)| *s)
    };
    let linear_weight = TensorPath::head_linear().weight();
    for (name, m, v) in moments.iter_mut() {
        for t in [m, v] {
            if t.is_empty() {
                continue;
            }
            if let Some((cin, cout)) = conv(name) {
                if t.len() == 9 * cin * cout {
                    *t = if to_checkpoint { wk_to_torch(t, cin, cout) } else { wk_from_torch(t, cin, cout) };
                }
            } else if let Some((inputs, outputs)) = linear_transposed.filter(|_| *name == linear_weight) {
                if t.len() == inputs * outputs {
                    *t = if to_checkpoint {
                        crate::host::transpose(t, inputs, outputs)
                    } else {
                        crate::host::transpose(t, outputs, inputs)
                    };
                }
            }
        }
    }
}
