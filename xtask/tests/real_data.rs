//! Bounded checks on the real CIFAR-10 (when `CIFAR10_DIR` is set; skipped otherwise):
//! the stages chained by hand on a 10,000-image slice.
#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use layerwise_core::config::TrainConfig;
use layerwise_core::dataset::Split;
use layerwise_nn::device::DeviceKind;

#[test]
fn depth_one_on_10000_real_images_beats_30_percent() {
    let Some(dir) = std::env::var_os("CIFAR10_DIR") else {
        eprintln!("skipped: CIFAR10_DIR is not set");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("cifar.safetensors");
    let mut p = layerwise_prepare::PrepareOptions::new(&data);
    p.source = Some(dir.into());
    p.limit_train = Some(12_500); // 10,000 train + 2,500 validation
    let meta = layerwise_prepare::prepare(&p).unwrap();
    assert_eq!(meta.split_sizes.train, 10_000);
    let out = layerwise_train::train(&layerwise_train::TrainOptions {
        overrides: Vec::new(),
        data: data.clone(),
        from: None,
        out: tmp.path().join("d1"),
        config: TrainConfig { epochs: 2, ..TrainConfig::default() },
        device: DeviceKind::Cpu,
        progress: layerwise_train::Progress::Quiet,
        regime: layerwise_core::config::Regime::Grow,
        depth: None,
    })
    .unwrap();
    let eval = layerwise_evaluate::evaluate(&layerwise_evaluate::EvaluateOptions {
        model: out.checkpoint.clone(),
        data: data.clone(),
        split: Split::Test,
        out: None,
        device: DeviceKind::Cpu,
    })
    .unwrap();
    assert!(eval.accuracy > 0.30, "test accuracy {}", eval.accuracy);
    // the evaluation stage and the training stage's validation agree on the same weights
    let val = layerwise_evaluate::evaluate(&layerwise_evaluate::EvaluateOptions {
        model: out.checkpoint,
        data,
        split: Split::Val,
        out: None,
        device: DeviceKind::Cpu,
    })
    .unwrap();
    assert!((val.accuracy - out.history.last().unwrap().val_accuracy).abs() < 1e-9);
}
