//! The evaluation stage against a plain reference implementation, and its refusals.
#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use layerwise_core::checkpoint::{save_checkpoint, CheckpointMeta, Mlp, CHECKPOINT_VERSION};
use layerwise_core::config::TrainConfig;
use layerwise_core::dataset::{Dataset, Split};
use layerwise_evaluate::{evaluate, EvaluateOptions};
use layerwise_nn::device::DeviceKind;
use layerwise_nn::glorot_dense;
use std::path::{Path, PathBuf};

fn model() -> Mlp {
    Mlp { hidden: vec![glorot_dense(3072, 24, 1), glorot_dense(24, 16, 2)], head: glorot_dense(16, 10, 3) }
}

fn meta(model: &Mlp, fingerprint: &str) -> CheckpointMeta {
    CheckpointMeta {
        overrides: Vec::new(),
        schedule: None,
        version: CHECKPOINT_VERSION,
        depth: model.depth(),
        input_size: 3072,
        widths: model.widths(),
        activation: "relu".into(),
        classes: layerwise_testkit::CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
        frozen: vec![],
        trained: vec![],
        trainable_params: 0,
        dataset_fingerprint: fingerprint.into(),
        dataset_name: "synthetic-cifar".into(),
        parent_sha256: None,
        config: TrainConfig::default(),
        device: "cpu".into(),
        regime: Default::default(),
        input: None,
        cnn: None,
    }
}

/// Plain f64 forward pass and cross-entropy: the reference.
fn reference(model: &Mlp, images: &[f32], labels: &[u8]) -> (f64, f64) {
    let (mut loss, mut correct) = (0.0, 0);
    for (x, &y) in images.chunks(3072).zip(labels) {
        let mut h: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        for (i, l) in model.hidden.iter().chain([&model.head]).enumerate() {
            let mut out: Vec<f64> = (0..l.outputs)
                .map(|o| {
                    l.bias[o] as f64 + (0..l.inputs).map(|k| l.weight[o * l.inputs + k] as f64 * h[k]).sum::<f64>()
                })
                .collect();
            if i < model.hidden.len() {
                out.iter_mut().for_each(|v| *v = v.max(0.0));
            }
            h = out;
        }
        let max = h.iter().cloned().fold(f64::MIN, f64::max);
        let lse = max + h.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
        loss += lse - h[y as usize];
        let pred = (0..h.len()).fold(0, |b, i| if h[i] > h[b] { i } else { b });
        correct += (pred == y as usize) as usize;
    }
    (loss / labels.len() as f64, correct as f64 / labels.len() as f64)
}

fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.safetensors");
    let dm = layerwise_testkit::prepared_dataset(&data, 50, 30, 70, 3).unwrap();
    let ckpt = dir.path().join("m.safetensors");
    let m = model();
    save_checkpoint(&ckpt, &m, &meta(&m, &dm.fingerprint)).unwrap();
    (dir, data, ckpt)
}

fn opts(model: &Path, data: &Path, split: Split, out: Option<PathBuf>) -> EvaluateOptions {
    EvaluateOptions { model: model.into(), data: data.into(), split, out, device: DeviceKind::Cpu }
}

#[test]
fn matches_a_plain_reference_and_writes_consistent_json() {
    let (dir, data, ckpt) = setup();
    let out = dir.path().join("eval.json");
    let e = evaluate(&opts(&ckpt, &data, Split::Test, Some(out.clone()))).unwrap();
    let ds = Dataset::open(&data).unwrap();
    let test = ds.split(Split::Test).unwrap();
    let (loss, acc) = reference(&model(), &test.images, test.labels);
    assert!((e.loss - loss).abs() < 1e-4, "{} vs {loss}", e.loss);
    assert_eq!(e.accuracy, acc);
    assert_eq!(e.samples, 70);
    let total: u64 = e.confusion.iter().flatten().sum();
    assert_eq!(total, 70);
    let trace: u64 = (0..10).map(|i| e.confusion[i][i]).sum();
    assert_eq!(trace as f64 / 70.0, e.accuracy);
    for c in 0..10 {
        let row: u64 = e.confusion[c].iter().sum();
        if row > 0 {
            assert_eq!(e.per_class_accuracy[c], e.confusion[c][c] as f64 / row as f64);
        }
    }
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    for key in ["loss", "accuracy", "per_class_accuracy", "confusion", "checkpoint_sha256", "depth"] {
        assert!(json.get(key).is_some(), "missing {key}");
    }
    assert_eq!(json["depth"], 2);
    // another split, other numbers
    let v = evaluate(&opts(&ckpt, &data, Split::Val, None)).unwrap();
    assert_eq!(v.samples, 30);
}

#[test]
fn refuses_a_checkpoint_of_another_dataset() {
    let (dir, _data, ckpt) = setup();
    let other = dir.path().join("other.safetensors");
    layerwise_testkit::prepared_dataset(&other, 50, 30, 70, 99).unwrap();
    let out = dir.path().join("eval.json");
    let err = format!("{:#}", evaluate(&opts(&ckpt, &other, Split::Test, Some(out.clone()))).unwrap_err());
    assert!(err.contains("fingerprint") && err.contains("other.safetensors"), "{err}");
    assert!(!out.exists());
    // and a dataset given where the checkpoint belongs
    let err = format!("{:#}", evaluate(&opts(&other, &other, Split::Test, None)).unwrap_err());
    assert!(err.contains("not a layerwise checkpoint"), "{err}");
}

#[test]
fn an_out_that_is_not_a_regular_file_is_never_replaced() {
    let (dir, data, ckpt) = setup();
    // A named pipe stands in for a device node such as /dev/full (which, as root, the
    // atomic rename used to replace with a regular file).
    let fifo = dir.path().join("pipe");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let err = format!("{:#}", evaluate(&opts(&ckpt, &data, Split::Test, Some(fifo.clone()))).unwrap_err());
    assert!(err.contains("not a regular file"), "{err}");
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo(), "the pipe is still a pipe");
}

#[test]
fn an_empty_split_is_an_error_not_a_zero_accuracy() {
    // RELIABILITY.md: evaluate on a split with no images exited 0 with "accuracy 0.0000 (0 images)".
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.safetensors");
    let ds = layerwise_testkit::prepared_dataset(&data, 20, 5, 0, 1).unwrap();
    let m = model();
    let ckpt = dir.path().join("m.safetensors");
    save_checkpoint(&ckpt, &m, &meta(&m, &ds.fingerprint)).unwrap();
    let opts = EvaluateOptions {
        model: ckpt,
        data,
        split: Split::Test,
        out: Some(dir.path().join("eval.json")),
        device: DeviceKind::Cpu,
    };
    let err = format!("{:#}", evaluate(&opts).unwrap_err());
    assert!(err.contains("test split holds no images"), "{err}");
    assert!(!dir.path().join("eval.json").exists());
}

#[test]
fn a_loss_that_is_not_finite_is_an_error_naming_the_checkpoint_not_a_result() {
    // Weights at f32's edge overflow the logits: the loss was NaN, exit 0, `"loss": null`.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.safetensors");
    let ds = layerwise_testkit::prepared_dataset(&data, 20, 5, 10, 1).unwrap();
    let mut m = model();
    m.head.weight.iter_mut().for_each(|w| *w = 3e38);
    m.hidden[1].weight.iter_mut().for_each(|w| *w = 3e38);
    let ckpt = dir.path().join("m.safetensors");
    save_checkpoint(&ckpt, &m, &meta(&m, &ds.fingerprint)).unwrap();
    let out = dir.path().join("eval.json");
    let err = format!("{:#}", evaluate(&opts(&ckpt, &data, Split::Test, Some(out.clone()))).unwrap_err());
    assert!(err.contains("m.safetensors: its loss on the test split"), "{err}");
    assert!(err.contains("not finite"), "{err}");
    assert!(!out.exists(), "no eval.json for a loss that is not a number");
}

#[test]
fn a_dataset_file_replaced_by_another_source_is_named_as_such() {
    // Two runs with another --source shared one dataset file: the first then failed at
    // evaluation over means differing in the 7th decimal.
    let (dir, data, _) = setup();
    let m = model();
    let ckpt = dir.path().join("from-another-source.safetensors");
    let mut trained_on = meta(&m, "0123456789abcdef");
    trained_on.dataset_name = "my-photos".into();
    save_checkpoint(&ckpt, &m, &trained_on).unwrap();
    let err = format!("{:#}", evaluate(&opts(&ckpt, &data, Split::Test, None)).unwrap_err());
    assert!(err.contains("now holds another dataset"), "{err}");
    assert!(err.contains("not the `my-photos` (fingerprint 0123456789ab…) it was trained on"), "{err}");
    assert!(err.contains("The dataset file was replaced since this checkpoint was trained"), "{err}");
}
