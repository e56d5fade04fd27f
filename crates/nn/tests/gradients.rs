//! The hand-derived gradients of a training batch (the first trainable layer's `gzᵀ·x`,
//! traced layers after it, the head) against dfdx's autograd over every parameter.
#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use dfdx::prelude::*;
use layerwise_nn::{batch_gradients, glorot_dense, Layer, Matrix};

/// Largest relative difference between two gradient vectors.
fn rel_diff(a: &[f32], b: &[f32]) -> f64 {
    let scale = b.iter().map(|v| v.abs() as f64).fold(1e-12, f64::max);
    a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).abs()).fold(0.0, f64::max) / scale
}

fn agree(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && rel_diff(a, b) < 1e-4
}

#[test]
fn batch_gradients_match_autograd_and_a_doubled_gradient_does_not() {
    let dev = layerwise_nn::device::cpu(0);
    let (rows, inputs, width, classes) = (7, 12, 5, 4);
    for head_trains in [true, false] {
        // No trainable hidden layer: a probe (only the head trains).
        for n_layers in if head_trains { vec![0, 1, 3] } else { vec![1, 3] } {
            let layers: Vec<Layer<_>> = (0..n_layers)
                .map(|i| {
                    let mut d = glorot_dense(if i == 0 { inputs } else { width }, width, 10 + i as u64);
                    d.bias.iter_mut().enumerate().for_each(|(k, b)| *b = 0.1 * k as f32 - 0.2);
                    Layer::from_dense(&d, &dev)
                })
                .collect();
            let head = Layer::from_dense(&glorot_dense(if n_layers == 0 { inputs } else { width }, classes, 3), &dev);
            let x: Vec<f32> = (0..rows * inputs).map(|i| ((i * 17 % 23) as f32 - 11.0) / 7.0).collect();
            let mut y = vec![0f32; rows * classes];
            for r in 0..rows {
                y[r * classes + r % classes] = 1.0;
            }
            let xb: Matrix<_> = dev.tensor_from_vec(x.clone(), (rows, inputs));
            let yb: Matrix<_> = dev.tensor_from_vec(y.clone(), (rows, classes));
            let got = batch_gradients(&layers, &head, head_trains, xb.clone(), yb.clone(), &[]).unwrap();

            // Reference: every parameter traced, plain autograd.
            let mut h = xb.traced(Gradients::leaky());
            for l in &layers {
                h = l.apply_traced(h, true).relu();
            }
            let loss = cross_entropy_with_logits_loss(head.apply_traced(h, true), yb);
            assert!((loss.as_vec()[0] - got.loss.as_vec()[0]).abs() < 1e-6);
            let grads = loss.backward();
            for (i, (l, (gw, gb))) in layers.iter().zip(&got.layers).enumerate() {
                let (rw, rb) = (grads.get(&l.weight).as_vec(), grads.get(&l.bias).as_vec());
                assert!(agree(&gw.as_vec(), &rw), "layer {i} weight: {}", rel_diff(&gw.as_vec(), &rw));
                assert!(agree(&gb.as_vec(), &rb), "layer {i} bias");
                // The check would catch a gradient off by a constant factor.
                let doubled: Vec<f32> = gw.as_vec().iter().map(|v| 2.0 * v).collect();
                assert!(!agree(&doubled, &rw), "a doubled gradient must not pass");
            }
            match &got.head {
                Some((gw, gb)) => {
                    assert!(head_trains);
                    assert!(agree(&gw.as_vec(), &grads.get(&head.weight).as_vec()), "head weight");
                    assert!(agree(&gb.as_vec(), &grads.get(&head.bias).as_vec()), "head bias");
                }
                None => assert!(!head_trains),
            }
        }
    }
}

#[test]
fn flip_crop_flips_and_shifts_with_zero_fill() {
    // One 1×2×3 image: rows [1 2 3] [4 5 6].
    let img = vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..200 {
        let mut x = img.clone();
        layerwise_nn::flip_crop(&mut x, [1, 2, 3], 1, seed);
        let ints: Vec<i32> = x.iter().map(|v| *v as i32).collect();
        // Every output is a shifted (and maybe mirrored) copy: its non-zero values keep
        // their row neighbours, in order or reversed.
        seen.insert(ints);
    }
    assert!(seen.contains(&vec![1, 2, 3, 4, 5, 6]), "identity");
    assert!(seen.contains(&vec![3, 2, 1, 6, 5, 4]), "mirror");
    assert!(seen.contains(&vec![0, 1, 2, 0, 4, 5]), "shift right, zero-filled");
    assert!(seen.contains(&vec![4, 5, 6, 0, 0, 0]), "shift up");
    assert!(seen.len() <= 18, "2 flips × 9 shifts at most: {}", seen.len());
}

#[test]
fn autoencoder_gradients_match_autograd_and_a_tied_decoder_shares_the_weight() {
    use layerwise_nn::{autoencoder_gradients, AeDecoder};
    let dev = layerwise_nn::device::cpu(0);
    let (rows, inputs, width) = (6, 10, 4);
    let mut enc = glorot_dense(inputs, width, 5);
    enc.bias.iter_mut().enumerate().for_each(|(k, b)| *b = 0.1 * k as f32 - 0.1);
    let enc = Layer::from_dense(&enc, &dev);
    let clean: Vec<f32> = (0..rows * inputs).map(|i| ((i * 13 % 17) as f32) / 17.0).collect();
    let noisy = layerwise_nn::masking_noise(&clean, 0.3, 9);
    assert!(noisy.iter().filter(|v| **v == 0.0).count() > clean.iter().filter(|v| **v == 0.0).count());
    let xn: Matrix<_> = dev.tensor_from_vec(noisy, (rows, inputs));
    let xc: Matrix<_> = dev.tensor_from_vec(clean, (rows, inputs));
    for tied in [true, false] {
        let mut dec = AeDecoder::new(&enc, tied, 7, &dev);
        if let AeDecoder::Tied { bias } = &mut dec {
            *bias = dev.tensor_from_vec((0..inputs).map(|i| 0.05 * i as f32).collect(), (inputs,));
        }
        let got = autoencoder_gradients(&enc, &dec, xn.clone(), xc.clone());
        // Reference: every parameter traced through encoder and decoder.
        let h = enc.apply_traced(xn.clone().traced(Gradients::leaky()), true).relu();
        let recon = match &dec {
            AeDecoder::Tied { bias } => {
                let y = h.matmul(enc.weight.retaped::<OwnedTape<f32, _>>());
                let shape = *y.shape();
                y + bias.retaped::<OwnedTape<f32, _>>().broadcast_like::<(usize, usize), Axis<0>>(&shape)
            }
            AeDecoder::Untied(l) => l.apply_traced(h, true),
        };
        let loss = mse_loss(recon, xc.clone());
        assert!((loss.as_vec()[0] - got.loss).abs() < 1e-6);
        let grads = loss.backward();
        let rw = grads.get(&enc.weight).as_vec();
        assert!(agree(&got.encoder_weight.as_vec(), &rw), "{tied}: {}", rel_diff(&got.encoder_weight.as_vec(), &rw));
        assert!(agree(&got.encoder_bias.as_vec(), &grads.get(&enc.bias).as_vec()));
        assert!(agree(&got.decoder_bias.as_vec(), &grads.get(dec.bias()).as_vec()));
        match (&dec, &got.decoder_weight) {
            (AeDecoder::Untied(l), Some(gw)) => assert!(agree(&gw.as_vec(), &grads.get(&l.weight).as_vec())),
            (AeDecoder::Tied { .. }, None) => {
                // The encoder's gradient holds the decoder's use of the weight: the
                // encoder's share alone does not pass.
                let ref_h = enc.apply_traced(xn.clone().traced(Gradients::leaky()), true).relu();
                // (a copy: dfdx would count a use of the same tensor, traced or not)
                let copy: Matrix<_> = dev.tensor_from_vec(enc.weight.as_vec(), (width, inputs));
                let y = ref_h.matmul(copy);
                let shape = *y.shape();
                let only_encoder = y + dec.bias().clone().broadcast_like::<(usize, usize), Axis<0>>(&shape);
                let g = mse_loss(only_encoder, xc.clone()).backward();
                assert!(!agree(&g.get(&enc.weight).as_vec(), &rw), "the decoder's share must count");
            }
            _ => panic!("decoder and gradients disagree"),
        }
        let doubled: Vec<f32> = got.encoder_weight.as_vec().iter().map(|v| 2.0 * v).collect();
        assert!(!agree(&doubled, &rw));
    }
}

#[test]
fn the_host_step_matches_autograd_with_and_without_dropout() {
    use layerwise_nn::host;
    let dev = layerwise_nn::device::cpu(0);
    let (inputs, width, classes) = (14, 6, 5);
    // 131 rows: the step runs the batch as two halves (66 and 65 rows), one a thread.
    for (rows, head_trains) in [9, 131].into_iter().flat_map(|r| [(r, true), (r, false)]) {
        for n_layers in if head_trains { vec![0, 1, 3] } else { vec![1, 3] } {
            for dropout in [false, true] {
                let dense: Vec<_> = (0..n_layers)
                    .map(|i| {
                        let mut d = glorot_dense(if i == 0 { inputs } else { width }, width, 20 + i as u64);
                        d.bias.iter_mut().enumerate().for_each(|(k, b)| *b = 0.05 * k as f32 - 0.1);
                        d
                    })
                    .collect();
                let head_d = glorot_dense(if n_layers == 0 { inputs } else { width }, classes, 4);
                let x: Vec<f32> = (0..rows * inputs).map(|i| ((i * 29 % 31) as f32 - 15.0) / 9.0).collect();
                let labels: Vec<u8> = (0..rows).map(|r| (r * 3 % classes) as u8).collect();
                let widths = vec![width; n_layers];
                let masks = if dropout { layerwise_nn::host_dropout_masks(rows, &widths, 0.3, 5) } else { Vec::new() };
                let host_layers: Vec<host::HostLayer> = dense.iter().map(host::HostLayer::from_dense).collect();
                let host_head = host::HostLayer::from_dense(&head_d);
                let mut buf = host::StepBuffers::new(&host_layers, &host_head, rows);
                let loss = host::step(&host_layers, &host_head, head_trains, &x, &labels, &masks, &mut buf);
                // The host layout's weight gradients ([in, out]) in the checkpoint layout.
                let shapes: Vec<(usize, usize)> =
                    dense.iter().chain(std::iter::once(&head_d)).map(|l| (l.inputs, l.outputs)).collect();
                for (g, &(i, o)) in buf.grads.iter_mut().zip(&shapes) {
                    g.0 = host::transpose(&g.0, i, o);
                }

                // Reference: dfdx autograd over every parameter.
                let layers: Vec<Layer<_>> = dense.iter().map(|d| Layer::from_dense(d, &dev)).collect();
                let head = Layer::from_dense(&head_d, &dev);
                let mut y = vec![0f32; rows * classes];
                for (r, &l) in labels.iter().enumerate() {
                    y[r * classes + l as usize] = 1.0;
                }
                let mut h = dev.tensor_from_vec(x.clone(), (rows, inputs)).traced(Gradients::leaky());
                for (i, l) in layers.iter().enumerate() {
                    h = l.apply_traced(h, true).relu();
                    if let Some(m) = masks.get(i) {
                        h = h * dev.tensor_from_vec(m.clone(), (rows, width));
                    }
                }
                let logits = head.apply_traced(h, true);
                let reference_logits = logits.retaped::<NoneTape>().as_vec();
                let loss_ref = cross_entropy_with_logits_loss(logits, dev.tensor_from_vec(y, (rows, classes)));
                assert!((loss_ref.as_vec()[0] - loss).abs() < 1e-5, "loss {loss} vs {:?}", loss_ref.as_vec());
                assert!(agree(buf.logits(rows, classes), &reference_logits));
                let grads = loss_ref.backward();
                for (i, l) in layers.iter().enumerate() {
                    let rw = grads.get(&l.weight).as_vec();
                    assert!(agree(&buf.grads[i].0, &rw), "layer {i} weight: {}", rel_diff(&buf.grads[i].0, &rw));
                    assert!(agree(&buf.grads[i].1, &grads.get(&l.bias).as_vec()), "layer {i} bias");
                    let doubled: Vec<f32> = buf.grads[i].0.iter().map(|v| 2.0 * v).collect();
                    assert!(!agree(&doubled, &rw));
                }
                if head_trains {
                    assert!(agree(&buf.grads[n_layers].0, &grads.get(&head.weight).as_vec()), "head weight");
                    assert!(agree(&buf.grads[n_layers].1, &grads.get(&head.bias).as_vec()), "head bias");
                }
            }
        }
    }
}

#[test]
fn host_products_match_a_plain_triple_loop_in_every_layout() {
    use layerwise_nn::host::{matmul, View};
    let (m, k, n) = (7, 300, 5);
    let a: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
    let b: Vec<f32> = (0..k * n).map(|i| ((i * 11 % 17) as f32 - 8.0) / 7.0).collect();
    let reference: Vec<f32> = (0..m * n)
        .map(|ij| (0..k).map(|p| a[ij / n * k + p] as f64 * b[p * n + ij % n] as f64).sum::<f64>() as f32)
        .collect();
    let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect(); // [k × m]
    let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect(); // [n × k]
    for (name, av, bv) in [
        ("a·b", View::rows(&a, m, k), View::rows(&b, k, n)),
        ("(aᵀ)ᵀ·b", View::transposed(&at, k, m), View::rows(&b, k, n)),
        ("a·(bᵀ)ᵀ", View::rows(&a, m, k), View::transposed(&bt, n, k)),
    ] {
        let mut c = vec![1.0f32; m * n];
        matmul(&mut c, av, bv, false);
        assert!(agree(&c, &reference), "{name}");
        matmul(&mut c, av, bv, true);
        let twice: Vec<f32> = reference.iter().map(|v| 2.0 * v).collect();
        assert!(agree(&c, &twice), "{name} accumulated");
    }
}
