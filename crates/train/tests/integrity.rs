//! A file the training stage wrote itself is verified when it is read back, never trusted:
//! the frozen-features file and the training state, damaged by hand, are set aside and the
//! depth ends with the bytes of a clean run; special files in their place are refused at
//! once; counts beyond their limits are refused before anything is allocated.
//! (RELIABILITY.md: the integrity findings, one test each.)
#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use bincode::Options;
use layerwise_core::config::{Objective, TrainConfig};
use layerwise_core::features::FEATURES_FILE;
use layerwise_core::metrics::EpochMetrics;
use layerwise_train::state::{LoopState, TrainState, Training, STATE_FILE};
use layerwise_train::{train, TrainOptions, TrainOutcome, STOP_AFTER_EPOCH_ENV};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The stop-after-epoch variable is process-wide: the tests that set it take turns.
static ENV: Mutex<()> = Mutex::new(());

mod common;
use common::Fixture;

fn fixture() -> Fixture {
    Fixture::new(300, 100, 50)
}

fn config() -> TrainConfig {
    TrainConfig { width: 16, epochs: 3, batch_size: 50, seed: 1, ..TrainConfig::default() }
}

trait Runs {
    fn run(&self, from: Option<&Path>, out: &str, cfg: TrainConfig) -> anyhow::Result<TrainOutcome>;
    fn run_now(&self, from: Option<&Path>, out: &str, cfg: TrainConfig) -> anyhow::Result<TrainOutcome>;
    fn with_turn<T>(&self, go: impl FnOnce() -> T) -> T;
    fn interrupted(&self, from: Option<&Path>, out: &str, cfg: TrainConfig, epoch: usize) -> PathBuf;
}

impl Runs for Fixture {
    fn run(&self, from: Option<&Path>, out: &str, cfg: TrainConfig) -> anyhow::Result<TrainOutcome> {
        // No run while another test has the stop variable set.
        let _turn = ENV.lock().unwrap_or_else(|e| e.into_inner());
        self.run_now(from, out, cfg)
    }

    fn run_now(&self, from: Option<&Path>, out: &str, cfg: TrainConfig) -> anyhow::Result<TrainOutcome> {
        train(&self.options(from, out, cfg))
    }

    fn with_turn<T>(&self, go: impl FnOnce() -> T) -> T {
        let _turn = ENV.lock().unwrap_or_else(|e| e.into_inner());
        go()
    }

    /// Train `out` until the state of epoch `epoch` is saved, as an interrupted run leaves it.
    fn interrupted(&self, from: Option<&Path>, out: &str, cfg: TrainConfig, epoch: usize) -> PathBuf {
        let _turn = ENV.lock().unwrap_or_else(|e| e.into_inner());
        std::env::set_var(STOP_AFTER_EPOCH_ENV, epoch.to_string());
        let stopped = self.run_now(from, out, cfg);
        std::env::remove_var(STOP_AFTER_EPOCH_ENV);
        let err = format!("{:#}", stopped.unwrap_err());
        assert!(err.contains("stopped after"), "{err}");
        let state = self.path(out).join(STATE_FILE);
        assert!(state.exists());
        state
    }
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

/// The state's body, decoded (its last 32 bytes are the SHA-256 of the rest).
fn decode(path: &Path) -> TrainState {
    let b = bytes(path);
    bincode::DefaultOptions::new().deserialize(&b[..b.len() - 32]).unwrap()
}

/// Offsets of a features file's `train.features` and `val.features` data.
fn feature_offsets(file: &[u8], train_values: usize) -> (usize, usize) {
    let header = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    let data = 8 + header; // train.features sorts before val.features
    (data, data + 4 * train_values)
}

#[test]
fn damaged_or_foreign_features_are_set_aside_and_the_depth_is_the_clean_one() {
    let f = fixture();
    let d1 = f.run(None, "d1", config()).unwrap();
    let d2 = f.run(Some(&d1.checkpoint), "d2", config()).unwrap();
    let clean = f.run(Some(&d2.checkpoint), "d3-clean", config()).unwrap();
    assert_eq!(clean.prefix_rows, 0, "the clean depth 3 reads depth 2's features");
    let features = f.path("d2").join(FEATURES_FILE);
    let good = bytes(&features);
    let (train_at, val_at) = feature_offsets(&good, 300 * 16);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // Finding 1a: 3.0 added to one training value.
        ("one value +3", {
            let mut b = good.clone();
            let v = f32::from_le_bytes(b[train_at + 40..train_at + 44].try_into().unwrap()) + 3.0;
            b[train_at + 40..train_at + 44].copy_from_slice(&v.to_le_bytes());
            b
        }),
        // Finding 1b: the validation rows zeroed (the val accuracy would be recorded wrong).
        ("val rows zeroed", {
            let mut b = good.clone();
            b[val_at..].iter_mut().for_each(|x| *x = 0);
            b
        }),
    ];
    for (what, damaged) in cases {
        std::fs::write(&features, &damaged).unwrap();
        let out = f.run(Some(&d2.checkpoint), &format!("d3-{}", what.replace(' ', "-")), config()).unwrap();
        assert_eq!(out.prefix_rows, 400, "{what}: recomputed from the images");
        assert!(bytes(&out.checkpoint) == bytes(&clean.checkpoint), "{what}: the clean run's bytes");
        assert_eq!(out.history.epochs.last().unwrap().val_accuracy, clean.history.epochs.last().unwrap().val_accuracy);
    }
    // Finding 1c: another run's features (another seed), its checkpoint hash rewritten to
    // this run's: the metadata and the content hash agree, the values do not.
    let o1 = f.run(None, "o1", TrainConfig { seed: 2, ..config() }).unwrap();
    let o2 = f.run(Some(&o1.checkpoint), "o2", TrainConfig { seed: 2, ..config() }).unwrap();
    let mut foreign = bytes(&f.path("o2").join(FEATURES_FILE));
    let (from, to) = (o2.history.checkpoint_sha256.as_bytes(), d2.history.checkpoint_sha256.as_bytes());
    let at = foreign.windows(from.len()).position(|w| w == from).unwrap();
    foreign[at..at + to.len()].copy_from_slice(to);
    std::fs::write(&features, &foreign).unwrap();
    let sha = layerwise_core::hash::sha256_file(&d2.checkpoint).unwrap();
    let fp = &d2.meta.dataset_fingerprint;
    assert!(
        layerwise_core::features::Features::open_for(&features, &sha, fp, 16, 300, 100).is_ok(),
        "the rewritten file passes every check of the file alone"
    );
    let out = f.run(Some(&d2.checkpoint), "d3-foreign", config()).unwrap();
    assert_eq!(out.prefix_rows, 400, "refused by the rows recomputed from the images");
    assert!(bytes(&out.checkpoint) == bytes(&clean.checkpoint));
    // The intact file is still used.
    std::fs::write(&features, &good).unwrap();
    assert_eq!(f.run(Some(&d2.checkpoint), "d3-again", config()).unwrap().prefix_rows, 0);
}

/// Write `st` as a state whose hash is right (the damage is then found by validation).
fn save(path: &Path, st: &TrainState) {
    layerwise_train::state::save(path, st).unwrap();
}

#[test]
fn a_damaged_training_state_is_not_used_and_the_depth_ends_as_a_clean_run() {
    let f = fixture();
    let d1 = f.run(None, "d1", config()).unwrap();
    let clean = f.run(Some(&d1.checkpoint), "clean", config()).unwrap();
    let state = f.interrupted(Some(&d1.checkpoint), "stopped", config(), 1);
    let good = bytes(&state);
    // The intact state is used, to the clean bytes.
    let resumed = f.run(Some(&d1.checkpoint), "stopped", config()).unwrap();
    assert!(resumed.resumed && bytes(&resumed.checkpoint) == bytes(&clean.checkpoint));
    assert!(!state.exists());
    let st = {
        std::fs::write(&state, &good).unwrap();
        decode(&state)
    };
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    // Finding 2a: five flipped bits in the weights.
    let mut flipped = good.clone();
    for k in 0..5 {
        flipped[good.len() / 2 + 13 * k] ^= 1 << k;
    }
    cases.push(("five flipped bits", flipped));
    let with = |edit: &dyn Fn(&mut LoopState<EpochMetrics>)| {
        let mut s = st.clone();
        let Training::Supervised(loop_state) = &mut s.training else { panic!("a supervised state") };
        edit(loop_state);
        let p = f.path("edited.bin");
        save(&p, &s);
        bytes(&p)
    };
    // Finding 2b: NaN weights, with a right hash.
    cases.push(("NaN weights", with(&|s| s.tensors[0].1[3] = f32::NAN)));
    // Finding 2d: moments of the wrong size, and NaN moments (once "diverged").
    cases.push(("short moments", with(&|s| s.optimizer[0].1.truncate(2))));
    cases.push(("NaN moments", with(&|s| s.optimizer[0].2[0] = f32::NAN)));
    cases.push(("negative second moment", with(&|s| s.optimizer[0].2[0] = -1.0)));
    cases.push(("epoch out of range", with(&|s| s.epoch = 7)));
    cases.push(("Adam's step count", with(&|s| s.optimizer_t = -5)));
    cases.push(("history", with(&|s| s.epochs.clear())));
    cases.push(("truncated", good[..good.len() - 9].to_vec()));
    for (what, damaged) in cases {
        std::fs::write(&state, &damaged).unwrap();
        let out = f.run(Some(&d1.checkpoint), "stopped", config()).unwrap_or_else(|e| panic!("{what}: {e:#}"));
        assert!(!out.resumed, "{what}: not used");
        assert!(bytes(&out.checkpoint) == bytes(&clean.checkpoint), "{what}: the clean run's bytes");
    }
}

#[test]
fn an_autoencoder_state_with_a_short_encoder_is_refused_without_a_panic() {
    // Finding 2c: "pretraining finished" with a short encoder panicked in the host kernels.
    let f = fixture();
    let cfg = || TrainConfig { objective: Objective::Autoencoder, epochs: 2, probe_epochs: Some(2), ..config() };
    let clean = f.run(None, "clean", cfg()).unwrap();
    let state = f.interrupted(None, "stopped", cfg(), 2);
    let good = bytes(&state);
    let mut st = decode(&state);
    let Training::Autoencoder { pretrained: p, probe } = &mut st.training else { panic!("an autoencoder state") };
    assert_eq!((p.epoch, probe.is_none()), (2, true), "pretraining finished, the probe not begun");
    // Intact, that state (pretraining done, the probe not begun) is used, to the clean bytes.
    let resumed = f.run(None, "stopped", cfg()).unwrap();
    assert!(resumed.resumed, "the finished pretraining is kept");
    assert!(bytes(&resumed.checkpoint) == bytes(&clean.checkpoint));
    std::fs::write(&state, &good).unwrap();
    p.tensors[0].1.truncate(5);
    save(&state, &st);
    let out = f.run(None, "stopped", cfg()).unwrap();
    assert!(!out.resumed);
    assert!(bytes(&out.checkpoint) == bytes(&clean.checkpoint));
}

#[test]
fn special_files_in_a_states_or_features_place_are_refused_at_once() {
    let f = fixture();
    let d1 = f.run(None, "d1", config()).unwrap();
    // Finding 5: a folder in the state's place fails before the first epoch, naming it.
    std::fs::create_dir_all(f.path("folder").join(STATE_FILE)).unwrap();
    let err = format!("{:#}", f.run(Some(&d1.checkpoint), "folder", config()).unwrap_err());
    assert!(err.contains(STATE_FILE) && err.contains("a folder") && err.contains("remove it"), "{err}");
    // A FIFO (which would hang a reader) and a link to /dev/zero (read until memory runs
    // out) as the state: refused at once.
    let mkfifo = |p: &Path| assert!(std::process::Command::new("mkfifo").arg(p).status().unwrap().success());
    std::fs::create_dir_all(f.path("fifo")).unwrap();
    mkfifo(&f.path("fifo").join(STATE_FILE));
    let err = format!("{:#}", f.run(Some(&d1.checkpoint), "fifo", config()).unwrap_err());
    assert!(err.contains("named pipe"), "{err}");
    std::fs::create_dir_all(f.path("zero")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", f.path("zero").join(STATE_FILE)).unwrap();
    let err = format!("{:#}", f.run(Some(&d1.checkpoint), "zero", config()).unwrap_err());
    assert!(err.contains("a device"), "{err}");
    // A FIFO as the parent's features file: not read, the features are recomputed.
    let features = f.path("d1").join(FEATURES_FILE);
    std::fs::remove_file(&features).unwrap();
    mkfifo(&features);
    let out = f.run(Some(&d1.checkpoint), "d2", config()).unwrap();
    assert_eq!(out.prefix_rows, 400);
    // A FIFO as the dataset.
    let data = f.path("fifo.safetensors");
    mkfifo(&data);
    let opts = TrainOptions { data, ..f.options(None, "x", config()) };
    let err = format!("{:#}", f.with_turn(|| train(&opts)).unwrap_err());
    assert!(err.contains("named pipe"), "{err}");
}

#[test]
fn counts_above_their_limits_are_refused_naming_the_limit() {
    // Finding 3: `--epochs 1152921504606846976` panicked (capacity overflow) and
    // 1000000000000 aborted on allocation.
    let f = fixture();
    for epochs in ["1000000000000", "1152921504606846976"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_layerwise-train"))
            .args(["--data", &f.data.to_string_lossy(), "--out", &f.path("big").to_string_lossy()])
            .args(["--epochs", epochs, "--quiet"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("`epochs`") && err.contains("limit of 100000"), "{err}");
    }
    for (cfg, key) in [
        (TrainConfig { probe_epochs: Some(1 << 40), ..config() }, "probe_epochs"),
        (TrainConfig { batch_size: 1 << 40, ..config() }, "batch_size"),
    ] {
        let err = format!("{:#}", f.run(None, "big", cfg).unwrap_err());
        assert!(err.contains(&format!("`{key}`")) && err.contains("limit"), "{err}");
    }
    assert!(!f.path("big/model.safetensors").exists());
}
