//! What the xtask test files share: a temp folder with a synthetic CIFAR-10 release, the
//! smoke pipeline's arguments, and variants of the smoke pipeline.
#![allow(dead_code, clippy::unwrap_used)] // each test file uses part of it; helpers panic on purpose

use std::path::PathBuf;
use xtask::args::{GreedyArgs, RunInputs};

/// Edits to the smoke pipeline under which nothing improves after depth 1, so patience 1
/// stops the loop at depth 2 of 5.
pub const PATIENT: [(&str, &str); 3] =
    [("lr = 0.001", "lr = 0.0000001"), ("patience = 0", "patience = 1"), ("max_depth = 3", "max_depth = 5")];

pub struct Env {
    pub dir: tempfile::TempDir,
    pub source: PathBuf,
}

/// A synthetic release big enough for the smoke pipeline (3,000 train, 1,000 test).
pub fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let source = layerwise_testkit::synthetic::write_folder(dir.path(), false, 1000).unwrap();
    Env { dir, source }
}

impl Env {
    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// The smoke pipeline into run folder `run_dir`, with the synthetic release.
    pub fn args(&self, run_dir: &str) -> GreedyArgs {
        GreedyArgs {
            pipeline: Some(xtask::repo_root().join("pipelines/smoke.toml")),
            run_dir: Some(self.path(run_dir)),
            seed: None,
            from: None,
            restart: false,
            print_commands: false,
            inputs: RunInputs {
                source: Some(self.source.clone()),
                artifacts: Some(self.path("artifacts")),
                plain: true,
                ..Default::default()
            },
        }
    }

    /// The smoke pipeline with text replacements, as NAME.toml.
    pub fn smoke_with(&self, name: &str, edits: &[(&str, &str)]) -> PathBuf {
        let mut text = std::fs::read_to_string(xtask::repo_root().join("pipelines/smoke.toml")).unwrap();
        for (a, b) in edits {
            assert!(text.contains(a), "{a} not in smoke.toml");
            text = text.replace(a, b);
        }
        let p = self.path(&format!("{name}.toml"));
        std::fs::write(&p, text).unwrap();
        p
    }
}
