//! The convolutional network's host kernels against direct loops, and every trainable
//! tensor's gradient against central finite differences (failing when a gradient is
//! doubled).

use layerwise_core::cnn::Downsample;
use layerwise_nn::convnet::*;
mod common;
use common::{random, small_net};

/// A direct 3 × 3, padding-1 convolution of one CHW image with a `[out, in, 3, 3]` weight.
fn direct_conv(x: &[f32], [c, h, w]: [usize; 3], weight: &[f32], out: usize) -> Vec<f32> {
    let mut y = vec![0f32; out * h * w];
    for o in 0..out {
        for yy in 0..h {
            for xx in 0..w {
                let mut s = 0f32;
                for ci in 0..c {
                    for dy in 0..3 {
                        for dx in 0..3 {
                            let (sy, sx) = (yy as isize + dy as isize - 1, xx as isize + dx as isize - 1);
                            if sy >= 0 && sy < h as isize && sx >= 0 && sx < w as isize {
                                s += x[(ci * h + sy as usize) * w + sx as usize]
                                    * weight[((o * c + ci) * 3 + dy) * 3 + dx];
                            }
                        }
                    }
                }
                y[(o * h + yy) * w + xx] = s;
            }
        }
    }
    y
}

#[test]
fn the_convolution_is_the_direct_loop_and_psi_is_pixel_unshuffle() {
    let (c, h, w, out, n) = (3, 6, 4, 5, 2);
    let x = random(n * c * h * w, 1);
    let weight = random(out * c * 9, 2);
    let nhwc = chw_to_nhwc(&x, n, [c, h, w]);
    let s = Nhwc { n, h, w, c };
    let mut cols = vec![0f32; s.rows() * 9 * c];
    im2col(&nhwc, s, &mut cols);
    let wk = wk_from_torch(&weight, c, out);
    assert_eq!(wk_to_torch(&wk, c, out), weight);
    let mut y = vec![0f32; s.rows() * out];
    layerwise_nn::host::matmul(
        &mut y,
        layerwise_nn::host::View::rows(&cols, s.rows(), 9 * c),
        layerwise_nn::host::View::rows(&wk, 9 * c, out),
        false,
    );
    for img in 0..n {
        let expect = direct_conv(&x[img * c * h * w..][..c * h * w], [c, h, w], &weight, out);
        for o in 0..out {
            for p in 0..h * w {
                let got = y[(img * h * w + p) * out + o];
                assert!((got - expect[o * h * w + p]).abs() < 1e-5, "image {img} channel {o} pixel {p}");
            }
        }
    }
    // psi: output channel 4c + 2dy + dx at (y, x) is input channel c at (2y+dy, 2x+dx).
    let (p, ps, _) = downsample(&nhwc, s, Downsample::Psi);
    assert_eq!((ps.c, ps.h, ps.w), (4 * c, h / 2, w / 2));
    for img in 0..n {
        for ch in 0..c {
            for q in 0..4 {
                let (dy, dx) = (q / 2, q % 2);
                let (yy, xx) = (1, 1);
                let got = p[((img * ps.h + yy) * ps.w + xx) * ps.c + 4 * ch + q];
                assert_eq!(got, x[((img * c + ch) * h + 2 * yy + dy) * w + 2 * xx + dx]);
            }
        }
    }
    // Its backward is its inverse; max-pooling's routes each gradient to its maximum.
    assert_eq!(downsample_backward(&p, s, Downsample::Psi, &[]), nhwc);
    let (m, ms, arg) = downsample(&nhwc, s, Downsample::Maxpool);
    let back = downsample_backward(&m, s, Downsample::Maxpool, &arg);
    assert_eq!(back.iter().filter(|v| **v != 0.0).count(), ms.len());
    assert!((back.iter().sum::<f32>() - m.iter().sum::<f32>()).abs() < 1e-4);
}

fn trainer(net: ConvNet, first: usize) -> ConvTrainer {
    ConvTrainer::new(
        net,
        first,
        &ConvSettings {
            optimizer: OptimizerSpec::Sgd { lr: 0.1, momentum: 0.9, nesterov: false },
            weight_decay: 0.0,
            label_smoothing: 0.1,
        },
    )
}

/// Every trainable tensor's gradient (a sample of its entries) against central finite
/// differences of the training-mode loss; `scale` multiplies the analytic gradient.
fn gradients_match(first: usize, scale: f32) -> Result<(), String> {
    let net = small_net(false);
    let n = 6;
    let images = random(n * 2 * 8 * 8, 3);
    let labels: Vec<u8> = (0..n).map(|i| (i % 3) as u8).collect();
    let (x, s) = net.prefix_features(&images, n, first);
    let mut t = trainer(net.clone(), first);
    let names = t.trainable_names();
    let (_, grads) = t.gradients(&x, s, &labels);
    assert_eq!(grads.len(), names.len());
    let loss_with = |k: usize, i: usize, delta: f32| -> f64 {
        let mut t = trainer(net.clone(), first);
        t.net.trainable_mut(first)[k][i] += delta;
        t.gradients(&x, s, &labels).0 as f64
    };
    let mut errors = Vec::new();
    for (k, name) in names.iter().enumerate() {
        let len = grads[k].len();
        for i in [0, len / 3, len / 2, len - 1] {
            // Small: with larger steps ReLU and max-pooling kinks are crossed.
            let eps = 3e-4f32;
            let numeric = (loss_with(k, i, eps) - loss_with(k, i, -eps)) / (2.0 * eps as f64);
            let analytic = (grads[k][i] * scale) as f64;
            if (numeric - analytic).abs() > 1.5e-3 + 0.05 * numeric.abs() {
                errors.push(format!("{name}[{i}]: analytic {analytic:.6}, numeric {numeric:.6}"));
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

#[test]
fn every_gradient_matches_finite_differences_and_a_doubled_one_does_not() {
    // End to end (finetune, scratch) and with the first stage frozen (grow).
    gradients_match(0, 1.0).unwrap();
    gradients_match(1, 1.0).unwrap();
    assert!(gradients_match(0, 2.0).is_err(), "a doubled gradient must fail the check");
}

#[test]
fn the_network_round_trips_and_inference_uses_the_running_statistics() {
    let net = small_net(false);
    assert_eq!(ConvNet::from_cnn(&net.to_cnn()), net);
    let n = 4;
    let images = random(n * 2 * 8 * 8, 5);
    let labels = vec![0u8, 1, 2, 0];
    let before = net.evaluate(&images, &labels);
    // A training step moves the running statistics; inference then differs.
    let (x, s) = net.prefix_features(&images, n, 0);
    let mut t = trainer(net.clone(), 0);
    t.step(&x, s, &labels, 0.0).unwrap();
    assert_ne!(t.net.stages[0].1.mean, net.stages[0].1.mean);
    assert_eq!(t.net.stages[0].1.wk, net.stages[0].1.wk, "lr 0 leaves the weights");
    let after = t.net.evaluate(&images, &labels);
    assert_ne!(before.loss(), after.loss());
    // Evaluating from cached features is evaluating from the images.
    let (f, fs) = net.prefix_features(&images, n, 2);
    assert!((net.evaluate_features(&f, fs, &labels, 2).loss() - before.loss()).abs() < 1e-6);
}

/// A conv block's weight, γ and β gradients against dfdx's autograd of the same block
/// written with dfdx's ops: the convolution as the product of its im2col patches (the
/// gather itself is checked against a direct loop above) and the weight, BatchNorm over the
/// batch's pixels, ReLU, and a loss whose gradient is a fixed `dy`.
#[test]
fn conv_and_batchnorm_gradients_match_dfdx_autograd() {
    use dfdx::prelude::*;
    let dev = layerwise_nn::device::cpu(0);
    let (n, h, w, c, out) = (3, 5, 4, 6, 7);
    let s = Nhwc { n, h, w, c };
    let x = random(s.len(), 11);
    let mut block = HostBlock::from_block(&new_block(c, out, 12));
    block.gamma = random(out, 13).iter().map(|v| 1.0 + 0.5 * v).collect();
    block.beta = random(out, 14).iter().map(|v| 0.3 * v).collect();
    let rows = s.rows();
    let dy = random(rows * out, 15);
    let (dw, dg, db, _) = block_gradients(&block, &x, s, &dy);

    let mut cols = vec![0f32; rows * 9 * c];
    im2col(&x, s, &mut cols);
    let cols_t: Tensor<(usize, usize), f32, _> = dev.tensor_from_vec(cols, (rows, 9 * c));
    let wk: Tensor<(usize, usize), f32, _> = dev.tensor_from_vec(block.wk.clone(), (9 * c, out));
    let gamma: Tensor<(usize,), f32, _> = dev.tensor_from_vec(block.gamma.clone(), (out,));
    let beta: Tensor<(usize,), f32, _> = dev.tensor_from_vec(block.beta.clone(), (out,));
    let r: Tensor<(usize, usize), f32, _> = dev.tensor_from_vec(dy.clone(), (rows, out));
    let shape = (rows, out);
    let grads = Gradients::leaky();
    let z = cols_t.traced(grads).matmul(wk.retaped::<OwnedTape<f32, _>>());
    let mean = z.with_empty_tape().mean::<(usize,), Axis<0>>().broadcast_like::<(usize, usize), Axis<0>>(&shape);
    let centered = z - mean;
    let var = centered.with_empty_tape().square().mean::<(usize,), Axis<0>>();
    let std = (var + layerwise_core::cnn::BN_EPS).sqrt().broadcast_like::<(usize, usize), Axis<0>>(&shape);
    let xhat = centered / std;
    let y = xhat * gamma.retaped::<OwnedTape<f32, _>>().broadcast_like::<(usize, usize), Axis<0>>(&shape)
        + beta.retaped::<OwnedTape<f32, _>>().broadcast_like::<(usize, usize), Axis<0>>(&shape);
    let loss = (y.relu() * r).sum::<(), _>();
    let g = loss.backward();
    let close = |a: &[f32], b: &[f32]| {
        let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-4 * scale)
    };
    let (rw, rg, rb) = (g.get(&wk).as_vec(), g.get(&gamma).as_vec(), g.get(&beta).as_vec());
    assert!(close(&dw, &rw), "conv weight gradient differs from dfdx's");
    assert!(close(&dg, &rg), "BatchNorm γ gradient differs from dfdx's");
    assert!(close(&db, &rb), "BatchNorm β gradient differs from dfdx's");
    let doubled: Vec<f32> = dw.iter().map(|v| 2.0 * v).collect();
    assert!(!close(&doubled, &rw), "a doubled gradient must not pass");
}
