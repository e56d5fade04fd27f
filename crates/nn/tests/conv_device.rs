//! The convolutional network's device path (dfdx ops and autograd, what a GPU runs),
//! run here on dfdx's CPU, against the host kernels: the gathers it is built from, the
//! logits, every trainable tensor's gradient, steps of SGD and Adam, the optimizer state a
//! resumed run saves, and a short training through the stage's trait on both.

use layerwise_core::cnn::Downsample;
use layerwise_nn::convnet::*;
use layerwise_nn::Kernels;
use std::borrow::Cow;
mod common;
use common::{random, small_net};

fn dev() -> dfdx::tensor::Cpu {
    layerwise_nn::device::cpu(0)
}

fn close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol * scale, "{what}[{i}]: device {x} host {y} (scale {scale})");
    }
}

#[test]
fn the_gathers_are_im2col_psi_and_the_head_pooling() {
    let s = Nhwc { n: 2, h: 5, w: 4, c: 3 };
    let x = random(s.len(), 1);
    let (idx, mask) = im2col_index(s);
    let mut cols = vec![0f32; s.rows() * 9 * s.c];
    im2col(&x, s, &mut cols);
    let gathered: Vec<f32> = idx
        .iter()
        .zip(&mask)
        .flat_map(|(&r, &m)| x[r * s.c..(r + 1) * s.c].iter().map(move |v| v * m).collect::<Vec<_>>())
        .collect();
    assert_eq!(gathered, cols);
    let s = Nhwc { n: 2, h: 4, w: 6, c: 3 };
    let x = random(s.len(), 2);
    let (psi, _, _) = downsample(&x, s, Downsample::Psi);
    assert_eq!(psi_index(s).iter().map(|&i| x[i]).collect::<Vec<_>>(), psi);
    // Adaptive pooling of a 3 × 5 map: windows overlap, each column sums to 1.
    let m = head_pool_matrix(3, 5);
    for q in 0..4 {
        let total: f32 = (0..15).map(|p| m[p * 4 + q]).sum();
        assert!((total - 1.0).abs() < 1e-6, "column {q} sums to {total}");
    }
    assert!(m[(5 + 2) * 4] > 0.0 && m[(5 + 2) * 4 + 3] > 0.0, "the middle pixel is in every window");
}

#[test]
fn device_logits_are_the_host_logits() {
    let net = small_net(true);
    let n = 5;
    let images = random(n * 2 * 8 * 8, 3);
    let labels: Vec<u8> = (0..n).map(|i| (i % 3) as u8).collect();
    let mut host = Vec::new();
    net.logits_chunks(&images, n, |_, l| host.extend_from_slice(l));
    let device = DeviceConvNet::new(&net, &dev());
    let mut got = Vec::new();
    device.logits_chunks(&images, n, |_, l| got.extend_from_slice(l));
    close(&got, &host, 1e-4, "logits");
    let (h, d) = (net.evaluate(&images, &labels), device.evaluate(&images, &labels));
    assert_eq!((h.correct, h.samples), (d.correct, d.samples));
    assert!((h.loss() - d.loss()).abs() < 1e-4);
    // The frozen prefix, and the network back on the host unchanged.
    let (hf, hs) = net.prefix_features(&images, n, 2);
    let (df, ds) = device.prefix_features(&images, n, 2);
    assert_eq!(hs, ds);
    close(&df, &hf, 1e-5, "prefix features");
    assert_eq!(device.to_host(), net);
}

fn settings(optimizer: OptimizerSpec) -> ConvSettings {
    ConvSettings { optimizer, weight_decay: 5e-4, label_smoothing: 0.1 }
}

const SGD: OptimizerSpec = OptimizerSpec::Sgd { lr: 0.05, momentum: 0.9, nesterov: true };
const ADAM: OptimizerSpec = OptimizerSpec::Adam { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-7 };

#[test]
fn device_gradients_are_the_host_gradients_and_fail_when_doubled() {
    let net = small_net(true);
    let n = 6;
    let images = random(n * 2 * 8 * 8, 4);
    let labels: Vec<u8> = (0..n).map(|i| (i % 3) as u8).collect();
    for first in [0, 1, 2] {
        let (x, s) = net.prefix_features(&images, n, first);
        let mut host = ConvTrainer::new(net.clone(), first, &settings(SGD));
        let (hl, hg) = host.gradients(&x, s, &labels);
        let mut device = DeviceConvTrainer::new(&dev(), &net, first, &settings(SGD));
        let (dl, dg) = device.gradients(&x, s, &labels);
        assert!((hl - dl).abs() < 1e-5, "first {first}: loss device {dl} host {hl}");
        let names = trainable_names(3, first, 1);
        assert_eq!((dg.len(), hg.len()), (names.len(), names.len()));
        for ((name, d), h) in names.iter().zip(&dg).zip(&hg) {
            // The host keeps the linear weight `[in, out]`, the device `[out, in]`.
            let h = if name == "head.linear.weight" { layerwise_nn::host::transpose(h, 16, 3) } else { h.clone() };
            close(d, &h, 2e-4, &format!("first {first}: {name}"));
        }
        // The check can fail: a doubled gradient is far off.
        let doubled: Vec<f32> = dg[0].iter().map(|v| 2.0 * v).collect();
        let scale = hg[0].iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(doubled.iter().zip(&hg[0]).any(|(d, h)| (d - h).abs() > 2e-4 * scale));
        // Both moved the running statistics alike.
        close(&device.net().stages[first].1.mean, &host.net.stages[first].1.mean, 1e-5, "running mean");
        close(&device.net().stages[first].1.var, &host.net.stages[first].1.var, 1e-5, "running var");
    }
}

#[test]
fn device_steps_follow_the_host_steps_and_save_the_same_optimizer_state() {
    let net = small_net(true);
    let n = 8;
    let images = random(n * 2 * 8 * 8, 5);
    let labels: Vec<u8> = (0..n).map(|i| (i % 3) as u8).collect();
    let first = 1;
    let (x, s) = net.prefix_features(&images, n, first);
    for spec in [SGD, ADAM] {
        let mut host = ConvTrainer::new(net.clone(), first, &settings(spec));
        let mut device = DeviceConvTrainer::new(&dev(), &net, first, &settings(spec));
        for k in 0..3 {
            let lr = [0.05, 0.03, 0.01][k] * if spec == ADAM { 0.1 } else { 1.0 };
            let hl = host.step(&x, s, &labels, lr).unwrap();
            let dl = device.step(&x, s, &labels, lr).unwrap();
            assert!((hl - dl).abs() < 1e-4, "{spec:?} step {k}: loss device {dl} host {hl}");
        }
        let (h, d) = (host.net.to_cnn(), device.net().to_cnn());
        for (i, (hs, ds)) in h.stages.iter().zip(&d.stages).enumerate() {
            close(&ds.conv.weight, &hs.conv.weight, 1e-4, &format!("{spec:?}: stage {i} weight"));
            close(&ds.conv.bn.bias, &hs.conv.bn.bias, 1e-4, &format!("{spec:?}: stage {i} β"));
        }
        assert_eq!(d.stages[0], h.stages[0], "{spec:?}: the frozen stage is untouched");
        close(&d.head.linear.weight, &h.head.linear.weight, 1e-4, &format!("{spec:?}: head weight"));
        // The saved optimizer state, in the checkpoint layout, is the host's; restored into a
        // fresh device trainer, it saves the same again.
        let ((ht, hm), (dt, dm)) = (host.optimizer_state(), device.optimizer_state());
        assert_eq!(ht, dt);
        for ((hn, h1, h2), (dn, d1, d2)) in hm.iter().zip(&dm) {
            assert_eq!(hn, dn);
            close(d1, h1, 1e-4, &format!("{spec:?}: {hn} first moment"));
            close(d2, h2, 1e-4, &format!("{spec:?}: {hn} second moment"));
        }
        let again = conv_step(&dev(), Kernels::Dfdx, device.net(), first, &settings(spec), Some((dt, dm.clone())));
        let (at, am) = again.optimizer_state();
        assert_eq!((at, am.len()), (dt, dm.len()));
        for ((n1, a1, a2), (_, d1, d2)) in am.iter().zip(&dm) {
            assert_eq!((a1, a2), (d1, d2), "{spec:?}: {n1} survives a restore");
        }
    }
}

#[test]
fn the_stage_trait_trains_alike_on_both_paths() {
    let net = small_net(true);
    let n = 12;
    let images = random(n * 2 * 8 * 8, 6);
    let labels: Vec<u8> = (0..n).map(|i| (i % 3) as u8).collect();
    let first = 2;
    let run = |kernels: Kernels| {
        let mut t = conv_step(&dev(), kernels, net.clone(), first, &settings(SGD), None);
        let x = t.prefix(&images, n);
        t.keep_train(Cow::Owned(x.clone()), &labels).unwrap();
        t.keep_val(Cow::Owned(x), &labels).unwrap();
        let mut losses = Vec::new();
        for rows in [[0usize, 3, 5, 7], [1, 2, 9, 11], [4, 6, 8, 10]] {
            losses.push(t.step_rows(&rows, 0, 0.05).unwrap().unwrap());
        }
        let (loss, _) = t.step_inputs(&images[..4 * 128], &labels[..4], 0, 0.05).unwrap();
        losses.push(loss.unwrap());
        let sums = t.take_sums();
        let loss = t.evaluate_val().unwrap().loss();
        (losses, sums.samples, loss, cnn_with_tensors(&net.to_cnn(), first, &t.tensors()).unwrap())
    };
    let host = run(Kernels::Host);
    let device = run(Kernels::Dfdx);
    close(&device.0, &host.0, 1e-4, "losses");
    assert_eq!((device.1, host.1), (16, 16));
    assert!((device.2 - host.2).abs() < 1e-4, "validation loss device {} host {}", device.2, host.2);
    close(&device.3.head.linear.bias, &host.3.head.linear.bias, 1e-4, "head bias");
}
