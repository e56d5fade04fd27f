//! What the training stage's test files share: a temp folder with a synthetic prepared
//! dataset, and the options of a quiet CPU run on it.
#![allow(dead_code, clippy::unwrap_used)] // each test file uses part of it; helpers panic on purpose

use layerwise_core::config::{Regime, TrainConfig};
use layerwise_nn::device::DeviceKind;
use layerwise_train::{Progress, TrainOptions};
use std::path::{Path, PathBuf};

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
}

impl Fixture {
    /// A dataset of `train`, `val` and `test` synthetic images.
    pub fn new(train: usize, val: usize, test: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data.safetensors");
        layerwise_testkit::prepared_dataset(&data, train, val, test, 7).unwrap();
        Fixture { dir, data }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Grow `from` (or train depth 1) into `out`, quietly, on the CPU.
    pub fn options(&self, from: Option<&Path>, out: &str, config: TrainConfig) -> TrainOptions {
        TrainOptions {
            overrides: Vec::new(),
            data: self.data.clone(),
            from: from.map(Path::to_path_buf),
            out: self.path(out),
            config,
            device: DeviceKind::Cpu,
            progress: Progress::Quiet,
            regime: Regime::Grow,
            depth: None,
        }
    }
}
