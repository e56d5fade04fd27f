//! The autoencoder objective on small synthetic data: the reconstruction loss falls, a
//! tied decoder has no weight of its own, the probe trains only `head.*`, pretraining
//! reads no labels, and bad settings are refused.
#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use layerwise_core::checkpoint::load_checkpoint;
use layerwise_core::config::{Decoder, HeadMode, Objective, Regime, TrainConfig};
use layerwise_core::st::MappedSafetensors;
use layerwise_nn::device::DeviceKind;
use layerwise_train::{train, Progress, TrainOptions, TrainOutcome};
use std::path::{Path, PathBuf};

fn dataset(dir: &Path, name: &str, relabel: fn(u8) -> u8) -> PathBuf {
    let data = dir.join(name);
    layerwise_testkit::prepared_dataset_relabelled(&data, 600, 200, 100, 7, relabel).unwrap();
    data
}

fn config() -> TrainConfig {
    TrainConfig {
        width: 32,
        epochs: 4,
        batch_size: 50,
        seed: 1,
        lr: 1e-2,
        objective: Objective::Autoencoder,
        corruption: 0.3,
        probe_epochs: Some(20),
        ..TrainConfig::default()
    }
}

fn run(
    data: &Path,
    from: Option<&Path>,
    out: &Path,
    config: TrainConfig,
    regime: Regime,
) -> anyhow::Result<TrainOutcome> {
    train(&TrainOptions {
        overrides: Vec::new(),
        data: data.to_path_buf(),
        from: from.map(Path::to_path_buf),
        out: out.to_path_buf(),
        config,
        device: DeviceKind::Cpu,
        progress: Progress::Quiet,
        regime,
        depth: None,
    })
}

/// The raw bytes of every tensor of a checkpoint whose name starts with `prefix`.
fn tensors(path: &Path, prefix: &str) -> Vec<(String, Vec<u8>)> {
    let file = MappedSafetensors::open(path, layerwise_core::checkpoint::CHECKPOINT_FORMAT, "checkpoint").unwrap();
    let mut names: Vec<String> = file.names().into_iter().filter(|n| n.starts_with(prefix)).collect();
    names.sort();
    names.into_iter().map(|n| (n.clone(), file.raw(&n).unwrap().to_vec())).collect()
}

#[test]
fn reconstruction_falls_and_the_probe_learns_at_two_depths() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), "data.safetensors", |l| l);
    let d1 = run(&data, None, &dir.path().join("d1"), config(), Regime::Grow).unwrap();
    let h = &d1.history;
    assert_eq!(h.pretraining.len(), 4);
    assert_eq!(h.epochs.len(), 20, "the probe's epochs");
    let (first, last) = (&h.pretraining[0], &h.pretraining[3]);
    assert!(last.reconstruction_loss < first.reconstruction_loss, "{h:?}");
    assert!(last.val_reconstruction_loss < first.val_reconstruction_loss, "{h:?}");
    assert!(h.epochs[19].val_accuracy > 0.5, "the probe learns the synthetic rule: {:?}", h.epochs);
    // A tied decoder has a bias of its own and no weight: it is the encoder's.
    assert_eq!(h.trained_tensors, ["hidden.0.weight", "hidden.0.bias", "head.weight", "head.bias", "decoder.0.bias"]);
    let decoder = tensors(&d1.checkpoint, "decoder.");
    assert_eq!(decoder.len(), 1);
    assert_eq!(decoder[0].0, "decoder.0.bias");
    // The checkpoint loads as a network (evaluation ignores the decoder).
    let (model, meta) = load_checkpoint(&d1.checkpoint).unwrap();
    assert_eq!((model.depth(), meta.config.objective), (1, Objective::Autoencoder));

    // Depth 2 pretrains on depth 1's features, leaving depth 1 as it was.
    let d2 = run(&data, Some(&d1.checkpoint), &dir.path().join("d2"), config(), Regime::Grow).unwrap();
    let p2 = &d2.history.pretraining;
    assert!(p2[3].reconstruction_loss < p2[0].reconstruction_loss);
    assert_eq!(tensors(&d2.checkpoint, "hidden.0"), tensors(&d1.checkpoint, "hidden.0"));
    assert_eq!(d2.meta.frozen, ["hidden.0"]);
    assert_eq!(d2.meta.trained, ["hidden.1", "head"]);
    assert_eq!(d2.prefix_rows, 0, "depth 1's outputs read from the features file its probe used");

    // An untied decoder keeps a weight of its own, [inputs, width].
    let untied = TrainConfig { decoder: Decoder::Untied, ..config() };
    let u = run(&data, None, &dir.path().join("untied"), untied, Regime::Grow).unwrap();
    let names: Vec<String> = tensors(&u.checkpoint, "decoder.").into_iter().map(|t| t.0).collect();
    assert_eq!(names, ["decoder.0.bias", "decoder.0.weight"]);
    assert_eq!(tensors(&u.checkpoint, "decoder.0.weight")[0].1.len(), 3072 * 32 * 4);
    assert_ne!(tensors(&u.checkpoint, "hidden.0"), tensors(&d1.checkpoint, "hidden.0"));
}

#[test]
fn pretraining_reads_no_labels_and_the_probe_trains_only_the_head() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), "data.safetensors", |l| l);
    // The same images, every label moved to the next class.
    let other = dataset(dir.path(), "relabelled.safetensors", |l| (l + 1) % 10);
    let a = run(&data, None, &dir.path().join("a"), config(), Regime::Grow).unwrap();
    let b = run(&other, None, &dir.path().join("b"), config(), Regime::Grow).unwrap();
    assert_ne!(a.meta.dataset_fingerprint, b.meta.dataset_fingerprint, "the labels differ");
    assert_eq!(tensors(&a.checkpoint, "hidden."), tensors(&b.checkpoint, "hidden."), "pretraining saw no label");
    assert_eq!(tensors(&a.checkpoint, "decoder."), tensors(&b.checkpoint, "decoder."));
    assert_eq!(a.history.pretraining.len(), b.history.pretraining.len());
    for (x, y) in a.history.pretraining.iter().zip(&b.history.pretraining) {
        assert_eq!(
            (x.reconstruction_loss, x.val_reconstruction_loss),
            (y.reconstruction_loss, y.val_reconstruction_loss)
        );
    }
    assert_ne!(tensors(&a.checkpoint, "head."), tensors(&b.checkpoint, "head."), "the probe read the labels");

    // More probe epochs change the head and nothing else.
    let longer = TrainConfig { probe_epochs: Some(22), ..config() };
    let c = run(&data, None, &dir.path().join("c"), longer, Regime::Grow).unwrap();
    assert_eq!(tensors(&a.checkpoint, "hidden."), tensors(&c.checkpoint, "hidden."));
    assert_eq!(tensors(&a.checkpoint, "decoder."), tensors(&c.checkpoint, "decoder."));
    assert_ne!(tensors(&a.checkpoint, "head."), tensors(&c.checkpoint, "head."));
    // Same command, same bytes.
    let again = run(&data, None, &dir.path().join("again"), config(), Regime::Grow).unwrap();
    assert_eq!(std::fs::read(&a.checkpoint).unwrap(), std::fs::read(&again.checkpoint).unwrap());
    // The head mode does not apply: the probe is a new output layer.
    let frozen = TrainConfig { head: HeadMode::Frozen, ..config() };
    let d2 = run(&data, Some(&a.checkpoint), &dir.path().join("d2"), frozen, Regime::Grow).unwrap();
    assert!(d2.meta.trained.contains(&"head".to_string()));
}

#[test]
fn bad_autoencoder_settings_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), "data.safetensors", |l| l);
    let cli = |extra: &[&str]| {
        let mut args = vec!["layerwise-train".to_string(), "--data".into(), data.to_string_lossy().into_owned()];
        args.extend(["--out".into(), dir.path().join("x").to_string_lossy().into_owned(), "--quiet".into()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        format!("{:#}", layerwise_train::cli::run(args).unwrap_err())
    };
    let e = cli(&["--objective", "autoencoder", "--corruption", "1"]);
    assert!(e.contains("corruption") && e.contains("[0, 1)"), "{e}");
    let e = cli(&["--objective", "autoencoder", "--corruption=-0.1"]);
    assert!(e.contains("corruption"), "{e}");
    let e = cli(&["--objective", "autoencoder", "--decoder", "tide"]);
    assert!(e.contains("unknown decoder `tide`: use tied or untied"), "{e}");
    let e = cli(&["--objective", "autoencodr"]);
    assert!(e.contains("unknown objective `autoencodr`"), "{e}");
    let e = cli(&["--objective", "autoencoder", "--probe-epochs", "0"]);
    assert!(e.contains("probe_epochs"), "{e}");
    let e = cli(&["--objective", "autoencoder", "--augment", "flip-crop"]);
    assert!(e.contains("augment"), "{e}");
    // Fine-tuning learns from the labels: an explicit autoencoder objective is refused.
    let d1 = run(&data, None, &dir.path().join("d1"), config(), Regime::Grow).unwrap();
    let from = d1.checkpoint.to_string_lossy().into_owned();
    let e = cli(&["--regime", "finetune", "--from", &from, "--objective", "autoencoder"]);
    assert!(e.contains("autoencoder objective") && e.contains("--regime grow"), "{e}");
    let e = cli(&["--regime", "scratch", "--depth", "2", "--objective", "autoencoder"]);
    assert!(e.contains("autoencoder objective"), "{e}");

    // A probe needs labels: a dataset of one class has none to learn.
    let single = dir.path().join("single.safetensors");
    let split = |n: usize| layerwise_core::dataset::SplitData { images: vec![0.5; n * 3072], labels: vec![0; n] };
    let (tr, va, te) = (split(20), split(10), split(10));
    let meta = layerwise_core::dataset::DatasetMeta::describe(
        "one-class",
        vec!["thing".into()],
        layerwise_core::dataset::Normalization::unit(3),
        1.0 / 3.0,
        "synthetic",
        vec![],
        [&tr, &va, &te],
    );
    layerwise_core::dataset::write_dataset(&single, &meta, [&tr, &va, &te]).unwrap();
    let e = format!("{:#}", run(&single, None, &dir.path().join("s"), config(), Regime::Grow).unwrap_err());
    assert!(e.contains("probe") && e.contains("labels"), "{e}");
}
