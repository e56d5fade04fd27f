//! The two trainers agree: the host kernels (the CPU) and the dfdx path a GPU runs (here
//! on dfdx's CPU device), with the split resident, batches gathered by index, and loss and
//! accuracy summed on the device and read once per epoch.
#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use layerwise_nn::{device_trainer, glorot_dense, trainer, TrainerSpec};

fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol * (1.0 + y.abs()))
}

#[test]
fn host_and_device_trainers_take_the_same_steps() {
    let dev = layerwise_nn::device::cpu(0);
    let (rows, inputs, width, classes) = (120, 20, 16, 4);
    let x: Vec<f32> = (0..rows * inputs).map(|i| ((i * 37 % 97) as f32 - 48.0) / 40.0).collect();
    let y: Vec<u8> = (0..rows).map(|r| (r * 7 % classes) as u8).collect();
    let layers = vec![glorot_dense(inputs, width, 1), glorot_dense(width, width, 2)];
    let head = glorot_dense(width, classes, 3);
    for dropout in [0.0, 0.25] {
        let spec = || TrainerSpec {
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
        let mut host = trainer(&dev, spec());
        let mut device = device_trainer(&dev, spec());
        host.load_split(&x, &y).unwrap();
        device.load_split(&x, &y).unwrap();
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
            let (hv, dv) = (host.evaluate(&x, &y), device.evaluate(&x, &y));
            assert!((hv.loss() - dv.loss()).abs() < 1e-3 * (1.0 + hv.loss()));
        }
        let ((hl, hh), (dl, dh)) = (host.snapshot(), device.snapshot());
        for ((hw, hb), (dw, db)) in hl.iter().zip(&dl) {
            assert!(close(hw, dw, 1e-3) && close(hb, db, 1e-3), "dropout {dropout}: the weights drifted apart");
        }
        assert!(close(&hh.0, &dh.0, 1e-3));
        // Both save Adam's state in the checkpoint layout.
        let ((ht, hm), (dt, dm)) = (host.adam_state(), device.adam_state());
        assert_eq!(ht, dt);
        for ((hn, hm1, _), (dn, dm1, _)) in hm.iter().zip(&dm) {
            assert_eq!(hn, dn);
            assert!(close(hm1, dm1, 1e-2), "{hn}: moments in another layout");
        }
    }
}
