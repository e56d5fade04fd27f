//! The two kernel choices of a dense network's step agree: the host kernels (the CPU) and the dfdx path a GPU runs (here
//! on dfdx's CPU device), with the split resident, batches gathered by index, and loss and
//! accuracy summed on the device and read once per epoch.
#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use layerwise_nn::{dense_step, glorot_dense, DenseSpec, Kernels};
use std::borrow::Cow;

fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol * (1.0 + y.abs()))
}

#[test]
fn host_and_device_steps_take_the_same_steps() {
    let dev = layerwise_nn::device::cpu(0);
    let (rows, inputs, width, classes) = (120, 20, 16, 4);
    let x: Vec<f32> = (0..rows * inputs).map(|i| ((i * 37 % 97) as f32 - 48.0) / 40.0).collect();
    let y: Vec<u8> = (0..rows).map(|r| (r * 7 % classes) as u8).collect();
    let layers = vec![glorot_dense(inputs, width, 1), glorot_dense(width, width, 2)];
    let head = glorot_dense(width, classes, 3);
    for dropout in [0.0, 0.25] {
        let spec = || DenseSpec {
            frozen: &[],
            trainable: &layers,
            head: &head,
            head_trains: true,
            names: vec![
                ["hidden.0.weight".into(), "hidden.0.bias".into()],
                ["hidden.1.weight".into(), "hidden.1.bias".into()],
            ],
            dropout,
            weight_decay: 0.01,
            optimizer: layerwise_nn::OptimizerSpec::Adam { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-7 },
            batch: 30,
            restored: None,
        };
        let mut host = dense_step(&dev, Kernels::Host, spec());
        let mut device = dense_step(&dev, Kernels::Dfdx, spec());
        for t in [&mut host, &mut device] {
            t.keep_train(Cow::Borrowed(&x), &y).unwrap();
            t.keep_val(Cow::Borrowed(&x), &y).unwrap();
        }
        assert!(device.running().is_none(), "a device reads nothing back per batch");
        for epoch in 0..3u64 {
            let order: Vec<usize> = (0..rows).map(|i| (i * 53 + epoch as usize * 11) % rows).collect();
            for (b, batch) in order.chunks(30).enumerate() {
                let seed = epoch * 100 + b as u64;
                assert!(host.step_rows(batch, seed, 1e-2).unwrap().is_some());
                assert!(device.step_rows(batch, seed, 1e-2).unwrap().is_none());
            }
            let (h, d) = (host.take_sums(), device.take_sums());
            assert_eq!((h.samples, d.samples), (rows as u64, rows as u64));
            assert!(
                (h.loss() - d.loss()).abs() < 1e-3 * (1.0 + h.loss()),
                "epoch {epoch}: {} vs {}",
                h.loss(),
                d.loss()
            );
            assert_eq!(h.correct, d.correct, "epoch {epoch}, dropout {dropout}");
            let (hv, dv) = (host.evaluate_val().unwrap(), device.evaluate_val().unwrap());
            assert!((hv.loss() - dv.loss()).abs() < 1e-3 * (1.0 + hv.loss()));
        }
        let (h, d) = (host.tensors(), device.tensors());
        assert_eq!(h.len(), 6, "two layers and the head, weight and bias each");
        for ((hn, hv), (dn, dv)) in h.iter().zip(&d) {
            assert_eq!(hn, dn);
            assert!(close(hv, dv, 1e-3), "dropout {dropout}: {hn} drifted apart");
        }
        // Both save Adam's state in the checkpoint layout.
        let ((ht, hm), (dt, dm)) = (host.optimizer_state(), device.optimizer_state());
        assert_eq!(ht, dt);
        for ((hn, hm1, _), (dn, dm1, _)) in hm.iter().zip(&dm) {
            assert_eq!(hn, dn);
            assert!(close(hm1, dm1, 1e-2), "{hn}: moments in another layout");
        }
    }
}
