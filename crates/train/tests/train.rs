//! The training stage on small synthetic data: learning, freezing per head mode, the
//! once-per-depth frozen features, determinism, and bad inputs.
#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use layerwise_core::checkpoint::{load_checkpoint, save_checkpoint, CheckpointMeta, Mlp};
use layerwise_core::config::{HeadMode, Optimizer, Regime, TrainConfig};
use layerwise_core::metrics::TrainHistory;
use layerwise_nn::device::DeviceKind;
use layerwise_train::{train, Progress, TrainOptions, TrainOutcome};
use std::path::Path;

mod common;
use common::Fixture;

fn fixture() -> Fixture {
    Fixture::new(600, 200, 100)
}

fn config() -> TrainConfig {
    TrainConfig { width: 32, epochs: 3, batch_size: 50, seed: 1, ..TrainConfig::default() }
}

trait Runs {
    fn run(&self, from: Option<&Path>, out: &str, cfg: TrainConfig) -> anyhow::Result<TrainOutcome>;
}

impl Runs for Fixture {
    fn run(&self, from: Option<&Path>, out: &str, cfg: TrainConfig) -> anyhow::Result<TrainOutcome> {
        train(&self.options(from, out, cfg))
    }
}

#[test]
fn depth_one_learns_a_learnable_rule() {
    let f = fixture();
    let out = f.run(None, "d1", config()).unwrap();
    let last = out.history.last().unwrap();
    assert!(last.val_accuracy > 0.9, "val accuracy {}", last.val_accuracy);
    assert!(out.history.epochs[0].train_loss > last.train_loss);
    assert_eq!(out.history.epochs.len(), 3);
    assert_eq!(out.meta.depth, 1);
    assert_eq!(out.meta.trained, ["hidden.0", "head"]);
    assert_eq!(out.prefix_rows, 0);
    // train.json on disk is what was returned, and names the checkpoint written
    let on_disk = TrainHistory::read(&f.dir.path().join("d1/train.json")).unwrap();
    assert_eq!(on_disk, out.history);
    assert_eq!(on_disk.checkpoint_sha256, layerwise_core::hash::sha256_file(&out.checkpoint).unwrap());
}

#[test]
fn every_optimizer_trains_an_mlp() {
    // The one optimizer serves every network: SGD and Lion learn the rule too, each with
    // its own state (one buffer) in the checkpointed run.
    let f = fixture();
    for (optimizer, lr) in [(Optimizer::Sgd, 0.05), (Optimizer::Lion, 3e-4)] {
        let cfg = TrainConfig { optimizer, lr, beta2: 0.99, ..config() };
        let out = f.run(None, optimizer.name(), cfg).unwrap();
        let last = out.history.last().unwrap();
        assert!(last.val_accuracy > 0.9, "{optimizer}: val accuracy {}", last.val_accuracy);
        assert_eq!(out.meta.config.optimizer, optimizer);
    }
}

fn layers(path: &Path) -> (Mlp, CheckpointMeta) {
    load_checkpoint(path).unwrap()
}

#[test]
fn head_modes_freeze_exactly_what_they_say() {
    let f = fixture();
    let d1 = f.run(None, "d1", config()).unwrap();
    let (parent, _) = layers(&d1.checkpoint);

    let frozen = f.run(Some(&d1.checkpoint), "frozen", TrainConfig { head: HeadMode::Frozen, ..config() }).unwrap();
    let (m, meta) = layers(&frozen.checkpoint);
    assert_eq!(m.hidden[0], parent.hidden[0], "frozen hidden layer must be bit-identical");
    assert_eq!(m.head, parent.head, "head frozen: bit-identical");
    assert_ne!(m.hidden[1].weight, layerwise_nn::glorot_dense(32, 32, 0).weight);
    assert_eq!(meta.frozen, ["hidden.0", "head"]);
    assert_eq!(meta.trained, ["hidden.1"]);
    assert_eq!(meta.trainable_params, 32 * 32 + 32);
    assert_eq!(meta.parent_sha256.as_deref(), Some(d1.history.checkpoint_sha256.as_str()));

    let retrain = f.run(Some(&d1.checkpoint), "retrain", TrainConfig { head: HeadMode::Retrain, ..config() }).unwrap();
    let (m, meta) = layers(&retrain.checkpoint);
    assert_eq!(m.hidden[0], parent.hidden[0]);
    assert_ne!(m.head.weight, parent.head.weight, "retrain: the head trains");
    assert_eq!(meta.trained, ["hidden.1", "head"]);

    let fresh =
        f.run(Some(&d1.checkpoint), "fresh", TrainConfig { head: HeadMode::Fresh, width: 16, ..config() }).unwrap();
    let (m, _) = layers(&fresh.checkpoint);
    assert_eq!(m.hidden[0], parent.hidden[0]);
    assert_eq!((m.hidden[1].outputs, m.head.inputs), (16, 16));

    // a kept head needs the same width
    let err =
        f.run(Some(&d1.checkpoint), "bad", TrainConfig { head: HeadMode::Retrain, width: 16, ..config() }).unwrap_err();
    assert!(format!("{err:#}").contains("--width 32"), "{err:#}");
}

#[test]
fn frozen_layers_run_once_per_depth_whatever_the_epochs() {
    let f = fixture();
    let d1 = f.run(None, "d1", TrainConfig { epochs: 1, ..config() }).unwrap();
    // Without the parent's features file, the frozen layer runs once over train + val.
    std::fs::remove_file(f.dir.path().join("d1/features.safetensors")).unwrap();
    let d2 = f.run(Some(&d1.checkpoint), "d2", TrainConfig { epochs: 4, ..config() }).unwrap();
    assert_eq!(d2.prefix_rows, 600 + 200, "train + val rows, once");
    std::fs::remove_file(f.dir.path().join("d2/features.safetensors")).unwrap();
    let d3 = f.run(Some(&d2.checkpoint), "d3", TrainConfig { epochs: 2, ..config() }).unwrap();
    assert_eq!(d3.prefix_rows, 800);
    let (m, _) = layers(&d3.checkpoint);
    let (p, _) = layers(&d2.checkpoint);
    assert_eq!(m.hidden[..2], p.hidden[..2]);
}

#[test]
fn a_depth_reads_its_parents_features_and_falls_back_when_they_do_not_fit() {
    use layerwise_core::features::{Features, FEATURES_FILE};
    let f = fixture();
    let cfg = || TrainConfig { epochs: 2, ..config() };
    let d1 = f.run(None, "d1", cfg()).unwrap();
    let d2 = f.run(Some(&d1.checkpoint), "d2", cfg()).unwrap();
    assert_eq!(d2.prefix_rows, 0, "depth 1's output read from its features file");
    let features = f.dir.path().join("d2").join(FEATURES_FILE);
    let fp = &d2.meta.dataset_fingerprint;
    let sha = layerwise_core::hash::sha256_file(&d2.checkpoint).unwrap();
    let file = Features::open_for(&features, &sha, fp, 32, 600, 200).unwrap();
    assert_eq!(file.meta.depth, 2);
    assert!(Features::open_for(&features, "0000", fp, 32, 600, 200).is_err(), "another checkpoint's");
    assert!(Features::open_for(&features, &sha, "other", 32, 600, 200).is_err(), "another dataset's");
    drop(file);
    // Depth 3 from the file gives the bytes depth 3 from the images gives.
    let with = f.run(Some(&d2.checkpoint), "d3-with", cfg()).unwrap();
    assert_eq!(with.prefix_rows, 0);
    let saved = std::fs::read(&features).unwrap();
    std::fs::remove_file(&features).unwrap();
    let without = f.run(Some(&d2.checkpoint), "d3-without", cfg()).unwrap();
    assert_eq!(without.prefix_rows, 800, "recomputed from the images through both frozen layers");
    let bytes = |p: &Path| std::fs::read(p).unwrap();
    assert!(bytes(&with.checkpoint) == bytes(&without.checkpoint), "the file only saves time");
    // Features of another checkpoint (depth 1's, put in depth 2's place) are refused and
    // recomputed, with the same result.
    std::fs::copy(f.dir.path().join("d1").join(FEATURES_FILE), &features).unwrap();
    let other = f.run(Some(&d2.checkpoint), "d3-other", cfg()).unwrap();
    assert_eq!(other.prefix_rows, 800);
    assert!(bytes(&other.checkpoint) == bytes(&with.checkpoint));
    // A damaged file (a NaN written into its data) is refused too.
    let mut damaged = saved.clone();
    let end = damaged.len();
    damaged[end - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&features, &damaged).unwrap();
    let err = Features::open_for(&features, &sha, fp, 32, 600, 200).err().unwrap();
    assert!(format!("{err:#}").contains("content_sha256"), "{err:#}");
    let again = f.run(Some(&d2.checkpoint), "d3-damaged", cfg()).unwrap();
    assert_eq!(again.prefix_rows, 800);
}

#[test]
fn identical_runs_give_identical_bytes() {
    let f = fixture();
    let a = f.run(None, "a", config()).unwrap();
    let b = f.run(None, "b", config()).unwrap();
    let bytes = |o: &TrainOutcome| std::fs::read(&o.checkpoint).unwrap();
    assert!(bytes(&a) == bytes(&b), "same command twice must give the same checkpoint bytes");
    let c = f.run(None, "c", TrainConfig { seed: 2, ..config() }).unwrap();
    assert!(bytes(&a) != bytes(&c), "another seed must give another checkpoint");
}

#[test]
fn divergence_stops_with_a_clear_error_and_no_checkpoint() {
    let f = fixture();
    let err = f.run(None, "nan", TrainConfig { lr: 1e38, ..config() }).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("epoch") && msg.contains("batch") && msg.contains("--lr"), "{msg}");
    assert!(!f.dir.path().join("nan/model.safetensors").exists());
}

fn expect_err(f: &Fixture, from: &Path, needle: &str) {
    let err = f.run(Some(from), "out", config()).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains(needle), "expected {needle:?} in: {msg}");
    assert!(!f.dir.path().join("out/model.safetensors").exists());
}

#[test]
fn bad_checkpoints_are_refused_clearly() {
    let f = fixture();
    let d1 = f.run(None, "d1", config()).unwrap();
    let bytes = std::fs::read(&d1.checkpoint).unwrap();
    let dir = f.dir.path();

    let p = dir.join("truncated.safetensors");
    std::fs::write(&p, &bytes[..bytes.len() - 64]).unwrap();
    expect_err(&f, &p, "truncated");

    let (model, meta) = layers(&d1.checkpoint);
    // misnamed tensor: rewrite the header text
    let text = bytes.iter().map(|&b| b as char).collect::<String>();
    let renamed: Vec<u8> = text.replacen("head.bias", "head.bial", 1).chars().map(|c| c as u8).collect();
    let p = dir.join("renamed.safetensors");
    std::fs::write(&p, renamed).unwrap();
    expect_err(&f, &p, "head.bias");

    // wrong shapes: metadata says width 32, tensors are 16 wide
    let mut small = model.clone();
    small.hidden[0] = layerwise_nn::glorot_dense(3072, 16, 0);
    small.head = layerwise_nn::glorot_dense(16, 10, 0);
    let p = dir.join("shapes.safetensors");
    let bytes =
        layerwise_core::checkpoint::checkpoint_bytes(&small, &CheckpointMeta { widths: vec![16], ..meta.clone() }, &[])
            .unwrap();
    let text = bytes.iter().map(|&b| b as char).collect::<String>().replacen("widths\\\":[16]", "widths\\\":[32]", 1);
    std::fs::write(&p, text.chars().map(|c| c as u8).collect::<Vec<u8>>()).unwrap();
    expect_err(&f, &p, "expected F32 [32, 3072]");

    // another dataset's checkpoint
    let p = dir.join("other.safetensors");
    save_checkpoint(&p, &model, &CheckpointMeta { dataset_fingerprint: "ab".repeat(32), ..meta.clone() }).unwrap();
    expect_err(&f, &p, "fingerprint");

    // edited metadata: another activation, other class names
    let p = dir.join("tanh.safetensors");
    save_checkpoint(&p, &model, &CheckpointMeta { activation: "tanh".into(), ..meta.clone() }).unwrap();
    expect_err(&f, &p, "activation `tanh`");
    // (a checkpoint of a dataset with other class names: its input contract names them too)
    let p = dir.join("classes.safetensors");
    let mut classes = meta.classes.clone();
    classes.swap(0, 1);
    let input = meta.input.clone().map(|c| layerwise_core::input::InputContract { classes: classes.clone(), ..c });
    save_checkpoint(&p, &model, &CheckpointMeta { classes: classes.clone(), input, ..meta.clone() }).unwrap();
    expect_err(&f, &p, "names its classes");
    // ...and one whose contract disagrees with its own metadata is refused when loaded.
    assert!(meta.input.is_some(), "a trained checkpoint records its input contract");
    let p = dir.join("contract.safetensors");
    save_checkpoint(&p, &model, &CheckpointMeta { classes, ..meta.clone() }).unwrap();
    expect_err(&f, &p, "its input contract");

    // not a checkpoint at all: the dataset itself
    expect_err(&f, &f.data.clone(), "not a layerwise checkpoint");
}

#[test]
fn a_width_beyond_the_machines_memory_is_refused_before_allocating() {
    let f = fixture();
    let err = format!("{:#}", f.run(None, "wide", TrainConfig { width: 1_000_000, ..config() }).unwrap_err());
    assert!(err.contains("GiB of memory") && err.contains("--width"), "{err}");
    // Past the limit on widths, refused before the memory is even estimated.
    let err = format!("{:#}", f.run(None, "wide", TrainConfig { width: 100_000_000, ..config() }).unwrap_err());
    assert!(err.contains("`width`") && err.contains("limit of 1048576"), "{err}");
    assert!(!f.dir.path().join("wide/model.safetensors").exists());
}

#[test]
fn an_epsilon_that_stops_every_step_is_refused() {
    let f = fixture();
    let err = f.run(None, "eps", TrainConfig { epsilon: 1e300, ..config() }).unwrap_err();
    assert!(format!("{err:#}").contains("`epsilon`"), "{err:#}");
}

#[test]
fn cuda_without_the_feature_says_how_to_build_it() {
    if layerwise_nn::device::CUDA_BUILT {
        return;
    }
    let f = fixture();
    let err = train(&TrainOptions {
        overrides: Vec::new(),
        data: f.data.clone(),
        from: None,
        out: f.dir.path().join("gpu"),
        config: config(),
        device: DeviceKind::Cuda,
        progress: Progress::Quiet,
        regime: layerwise_core::config::Regime::Grow,
        depth: None,
    })
    .unwrap_err();
    assert!(format!("{err:#}").contains("--features cuda"), "{err:#}");
}

#[test]
fn the_binary_takes_defaults_from_a_pipeline_and_flags_override() {
    let f = fixture();
    let pipeline = f.dir.path().join("p.toml");
    std::fs::write(&pipeline, "name = \"t\"\n[train]\nwidth = 8\nepochs = 1\nbatch_size = 100\n").unwrap();
    let out = f.dir.path().join("cli");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_layerwise-train"))
        .args([
            "--data",
            f.data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--pipeline",
            pipeline.to_str().unwrap(),
            "--epochs",
            "2",
            "--quiet",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let (m, meta) = layers(&out.join("model.safetensors"));
    assert_eq!(m.widths(), [8]);
    assert_eq!(meta.config.epochs, 2);
    assert_eq!(meta.config.batch_size, 100);
    // The flag given beside the pipeline is recorded as an override; none without one.
    assert_eq!(meta.overrides, ["epochs=2"]);
    // A phase takes its settings from the pipeline's section, as the orchestrator's plan
    // does, and sets the regime; a regime that contradicts it is refused.
    std::fs::write(
        &pipeline,
        "name = \"t\"\n[train]\nwidth = 8\nepochs = 1\nbatch_size = 100\nlr = 0.01\n[finetune]\nepochs = 2\n",
    )
    .unwrap();
    let cli = |out: &Path, extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_layerwise-train"))
            .args(["--data", f.data.to_str().unwrap(), "--out", out.to_str().unwrap()])
            .args(["--pipeline", pipeline.to_str().unwrap(), "--quiet"])
            .args(extra)
            .output()
            .unwrap()
    };
    let from = out.join("model.safetensors");
    let ft = f.dir.path().join("ft");
    let o = cli(&ft, &["--phase", "finetune", "--from", from.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (_, meta) = layers(&ft.join("model.safetensors"));
    assert_eq!((meta.regime, meta.config.epochs, meta.config.lr), (Regime::Finetune, 2, 0.001));
    assert!(meta.overrides.is_empty(), "{:?}", meta.overrides);
    let o = cli(&ft, &["--phase", "finetune", "--regime", "grow"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--regime grow contradicts --phase finetune"));
    // a bad flag value is an error naming it, not a panic
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_layerwise-train"))
        .args(["--data", f.data.to_str().unwrap(), "--out", out.to_str().unwrap(), "--epochs", "0", "--quiet"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("epochs"));
}

#[test]
fn a_depth_killed_between_epochs_resumes_to_the_same_bytes() {
    let f = fixture();
    killed_and_resumed(&f, &["--width", "32", "--epochs", "150"], "grow");
    killed_and_resumed(&f, &["--width", "32", "--epochs", "150", "--optimizer", "lion"], "lion");
    // Fine-tuning keeps its best epoch's weights in the state too.
    let d1 = f.run(None, "d1", config()).unwrap();
    let from = d1.checkpoint.to_string_lossy().into_owned();
    killed_and_resumed(&f, &["--width", "32", "--epochs", "150", "--regime", "finetune", "--from", &from], "finetune");
    // The autoencoder objective: killed while pretraining, and (most likely) in its probe.
    let ae = ["--width", "32", "--objective", "autoencoder", "--corruption", "0.3"];
    killed_and_resumed(&f, &[&ae[..], &["--epochs", "150", "--probe-epochs", "3"]].concat(), "pretraining");
    killed_and_resumed(&f, &[&ae[..], &["--epochs", "2", "--probe-epochs", "150"]].concat(), "probe");
}

#[test]
fn a_conv_stage_killed_mid_training_resumes_to_the_same_bytes() {
    let f = fixture();
    let conv = ["--stages", "4,maxpool:6", "--optimizer", "sgd", "--nesterov", "--label-smoothing", "0.1"];
    let d1 = f.dir.path().join("conv-d1");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_layerwise-train"))
        .args(["--data", &f.data.to_string_lossy(), "--out", &d1.to_string_lossy(), "--epochs", "1"])
        .args(conv)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Stage 2 grows on stage 1's cached output; fine-tuning keeps its best epoch in the state.
    let from = d1.join("model.safetensors").to_string_lossy().into_owned();
    killed_and_resumed(&f, &[&conv[..], &["--epochs", "40", "--from", &from]].concat(), "conv-grow");
    killed_and_resumed(&f, &["--epochs", "25", "--regime", "finetune", "--from", &from], "conv-finetune");
}

/// Train with `extra` arguments (the epochs among them) three ways: uninterrupted; SIGKILLed once its state file
/// exists, then rerun; and from a copy of that state with another learning rate. The
/// rerun resumes to the uninterrupted run's bytes; the other command does not resume.
fn killed_and_resumed(f: &Fixture, extra: &[&str], tag: &str) {
    let out = f.dir.path().join(format!("{tag}-killed"));
    let state = out.join(layerwise_train::state::STATE_FILE);
    let args = |out: &Path, lr: &str| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_layerwise-train"));
        c.args(["--data", &f.data.to_string_lossy(), "--out", &out.to_string_lossy()]);
        c.args(["--batch-size", "50", "--seed", "1", "--lr", lr]);
        c.args(extra);
        c
    };
    let whole = f.dir.path().join(format!("{tag}-whole"));
    assert!(args(&whole, "0.001").output().unwrap().status.success());
    let mut child = args(&out, "0.001").stderr(std::process::Stdio::null()).spawn().unwrap();
    let started = std::time::Instant::now();
    while !state.exists() {
        assert!(started.elapsed().as_secs() < 60 && child.try_wait().unwrap().is_none(), "no state was written");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    std::thread::sleep(std::time::Duration::from_millis(30));
    child.kill().unwrap(); // SIGKILL: between epochs, or in the middle of one
    assert!(!child.wait().unwrap().success(), "killed before it finished");
    assert!(!out.join("model.safetensors").exists());
    // Another command (another learning rate) does not use that state.
    let elsewhere = f.dir.path().join(format!("{tag}-elsewhere"));
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::copy(&state, elsewhere.join(layerwise_train::state::STATE_FILE)).unwrap();
    let other = args(&elsewhere, "0.002").output().unwrap();
    let log = String::from_utf8_lossy(&other.stderr);
    assert!(
        other.status.success()
            && log.contains("not resuming")
            && log.contains("another training command")
            && log.contains("config.lr 0.001 → 0.002"),
        "{log}"
    );
    // The same command continues it, to the bytes of an uninterrupted run.
    let again = args(&out, "0.001").output().unwrap();
    let log = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{log}");
    assert!(log.contains("resuming at epoch"), "{log}");
    assert!(
        std::fs::read(out.join("model.safetensors")).unwrap()
            == std::fs::read(whole.join("model.safetensors")).unwrap(),
        "{tag}: a resumed run writes the same checkpoint as an uninterrupted one"
    );
    assert!(!state.exists(), "the state file is removed once the depth is complete");
    let h = TrainHistory::read(&out.join("train.json")).unwrap();
    let w = TrainHistory::read(&whole.join("train.json")).unwrap();
    assert_eq!(h.epochs.len(), w.epochs.len());
    assert_eq!(h.pretraining.len(), w.pretraining.len());
    assert_eq!(h.best_epoch, w.best_epoch);
}

fn with_regime(
    f: &Fixture,
    from: Option<&Path>,
    out: &str,
    cfg: TrainConfig,
    regime: Regime,
    depth: Option<usize>,
) -> anyhow::Result<TrainOutcome> {
    train(&TrainOptions {
        overrides: Vec::new(),
        data: f.data.clone(),
        from: from.map(Path::to_path_buf),
        out: f.dir.path().join(out),
        config: cfg,
        device: DeviceKind::Cpu,
        progress: Progress::Quiet,
        regime,
        depth,
    })
}

#[test]
fn finetune_trains_every_tensor_and_keeps_its_best_epoch() {
    let f = fixture();
    let d1 = f.run(None, "d1", config()).unwrap();
    let d2 = f.run(Some(&d1.checkpoint), "d2", TrainConfig { head: HeadMode::Frozen, ..config() }).unwrap();
    let cfg = TrainConfig { epochs: 4, lr: 1e-4, ..config() };
    let ft = with_regime(&f, Some(&d2.checkpoint), "ft", cfg.clone(), Regime::Finetune, None).unwrap();
    let (before, _) = layers(&d2.checkpoint);
    let (after, meta) = layers(&ft.checkpoint);
    assert_eq!((meta.depth, meta.regime), (2, Regime::Finetune), "fine-tuning appends nothing");
    assert_eq!(meta.frozen, Vec::<String>::new());
    assert_eq!(meta.trained, ["hidden.0", "hidden.1", "head"]);
    for i in 0..2 {
        assert_ne!(before.hidden[i].weight, after.hidden[i].weight, "hidden.{i}.weight trained");
        assert_ne!(before.hidden[i].bias, after.hidden[i].bias, "hidden.{i}.bias trained");
    }
    assert_ne!(before.head.weight, after.head.weight);
    assert_eq!(ft.history.trained_tensors.len(), 6);
    assert_eq!(ft.history.regime, Regime::Finetune);
    // The kept epoch is the first with the highest validation accuracy.
    let accs: Vec<f64> = ft.history.epochs.iter().map(|e| e.val_accuracy).collect();
    let best = accs.iter().enumerate().fold(0, |b, (i, a)| if *a > accs[b] { i } else { b }) + 1;
    assert_eq!(ft.history.best_epoch, Some(best));
    // ...and the same command gives the same bytes.
    let again = with_regime(&f, Some(&d2.checkpoint), "ft2", cfg, Regime::Finetune, None).unwrap();
    assert!(std::fs::read(&again.checkpoint).unwrap() == std::fs::read(&ft.checkpoint).unwrap());
}

#[test]
fn scratch_trains_a_fresh_network_end_to_end() {
    let f = fixture();
    let s = with_regime(&f, None, "s3", config(), Regime::Scratch, Some(3)).unwrap();
    let (_, meta) = layers(&s.checkpoint);
    assert_eq!((meta.depth, meta.regime, meta.parent_sha256.clone()), (3, Regime::Scratch, None));
    assert_eq!(meta.trained, ["hidden.0", "hidden.1", "hidden.2", "head"]);
    assert!(meta.frozen.is_empty());
    assert_eq!(s.prefix_rows, 0, "nothing frozen, nothing cached");
    assert!(s.history.last().unwrap().val_accuracy > 0.3, "{:?}", s.history.last());
    // Regimes refuse what makes no sense for them.
    let err = |r: anyhow::Result<TrainOutcome>| format!("{:#}", r.unwrap_err());
    assert!(err(with_regime(&f, None, "x", config(), Regime::Finetune, None)).contains("--from"));
    assert!(err(with_regime(&f, Some(&s.checkpoint), "x", config(), Regime::Scratch, Some(2))).contains("drop --from"));
    assert!(err(with_regime(&f, None, "x", config(), Regime::Grow, Some(2))).contains("--depth"));
}

#[test]
fn dropout_augmentation_schedule_and_decay_are_reproducible() {
    use layerwise_core::config::{Augment, LrSchedule};
    let f = fixture();
    let recipe = TrainConfig {
        dropout: 0.2,
        weight_decay: 0.05,
        lr_schedule: LrSchedule::Cosine,
        warmup_epochs: 1,
        augment: Augment::FlipCrop,
        ..config()
    };
    let a = f.run(None, "a", recipe.clone()).unwrap();
    let b = f.run(None, "b", recipe.clone()).unwrap();
    let bytes = |o: &TrainOutcome| std::fs::read(&o.checkpoint).unwrap();
    assert!(bytes(&a) == bytes(&b), "same seed, same bytes");
    let plain = f.run(None, "plain", config()).unwrap();
    assert!(bytes(&a) != bytes(&plain), "the recipe changes the training");
    // Depth 2 with augmentation recomputes the frozen layer per batch, reproducibly.
    let d2 =
        |out: &str| f.run(Some(&a.checkpoint), out, TrainConfig { head: HeadMode::Retrain, ..recipe.clone() }).unwrap();
    let (x, y) = (d2("a2"), d2("b2"));
    assert!(bytes(&x) == bytes(&y));
    assert!(x.prefix_rows > 600, "the frozen layer ran per batch: {}", x.prefix_rows);
    // Bad values name their key.
    for (cfg, key) in [
        (TrainConfig { dropout: 1.0, ..config() }, "dropout"),
        (TrainConfig { warmup_epochs: 3, ..config() }, "warmup_epochs"),
        (TrainConfig { weight_decay: -1.0, ..config() }, "weight_decay"),
        (TrainConfig { widths: vec![8, 0], ..config() }, "widths"),
    ] {
        let err = format!("{:#}", f.run(None, "bad", cfg).unwrap_err());
        assert!(err.contains(key), "{err}");
    }
}

#[test]
fn widths_set_each_depth() {
    let f = fixture();
    let cfg = TrainConfig { widths: vec![24, 12], head: HeadMode::Fresh, ..config() };
    let d1 = f.run(None, "d1", cfg.clone()).unwrap();
    let d2 = f.run(Some(&d1.checkpoint), "d2", cfg.clone()).unwrap();
    assert_eq!(d2.meta.widths, [24, 12]);
    let s = with_regime(&f, None, "s", cfg, Regime::Scratch, Some(2)).unwrap();
    assert_eq!(s.meta.widths, [24, 12]);
}
