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
            groups: None,
            launcher: None,
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
        self.pipeline_with("smoke", name, edits)
    }

    /// The committed pipeline `base` (pipelines/BASE.toml) with text replacements, as NAME.toml.
    pub fn pipeline_with(&self, base: &str, name: &str, edits: &[(&str, &str)]) -> PathBuf {
        let mut text = std::fs::read_to_string(xtask::repo_root().join(format!("pipelines/{base}.toml"))).unwrap();
        for (a, b) in edits {
            assert!(text.contains(a), "{a} not in {base}.toml");
            text = text.replace(a, b);
        }
        let p = self.path(&format!("{name}.toml"));
        std::fs::write(&p, text).unwrap();
        p
    }
}

/// Run a stage in this process through its command line.
pub fn step(program: xtask::plan::Program, args: &[&dyn AsRef<std::ffi::OsStr>]) {
    let args = args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect();
    xtask::plan::Step::of(program, args).run().unwrap();
}

/// The real CIFAR-10 (`CIFAR10_DIR`), else a synthetic binary release written into `root`.
pub fn source_or_synthetic(root: &std::path::Path) -> PathBuf {
    match std::env::var_os("CIFAR10_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            eprintln!("CIFAR10_DIR not set: synthetic images stand in for CIFAR-10's");
            layerwise_testkit::synthetic::write_folder(root, false, 1000).unwrap()
        }
    }
}

/// A standardized dataset of 2,000 training and `test` test images of `source` (so the
/// input contract's statistics matter), and a small model of `depth` layers grown on it:
/// (dataset, checkpoint of the deepest layer).
pub fn small_model(root: &std::path::Path, source: &std::path::Path, test: usize, depth: usize) -> (PathBuf, PathBuf) {
    use xtask::plan::Program;
    let data = root.join("data.safetensors");
    let test = test.to_string();
    step(
        Program::Prepare,
        &[
            &"--source",
            &source,
            &"--out",
            &data,
            &"--normalize",
            &"standardize",
            &"--limit-train",
            &"2000",
            &"--limit-test",
            &test,
            &"--artifacts",
            &root,
        ],
    );
    let mut parent: Option<PathBuf> = None;
    for d in 1..=depth {
        let out = root.join(format!("depth-{d:02}"));
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
            vec![&"--data", &data, &"--out", &out, &"--epochs", &"2", &"--width", &"32", &"--batch-size", &"100"];
        if let Some(p) = &parent {
            args.push(&"--from");
            args.push(p);
        }
        step(Program::Train, &args);
        parent = Some(out.join("model.safetensors"));
    }
    (data, parent.unwrap())
}

/// The first `n` test images of a binary release folder: (label, CHW pixels).
pub fn test_images(source: &std::path::Path, n: usize) -> Vec<(u8, Vec<u8>)> {
    let bytes = std::fs::read(source.join("test_batch.bin")).unwrap();
    bytes.chunks_exact(3073).take(n).map(|r| (r[0], r[1..].to_vec())).collect()
}

/// Write CHW pixels of a 32×32 RGB image as a PNG file.
pub fn write_png(path: &std::path::Path, chw: &[u8]) {
    let mut hwc = vec![0u8; 3072];
    for c in 0..3 {
        for i in 0..1024 {
            hwc[i * 3 + c] = chw[c * 1024 + i];
        }
    }
    image::RgbImage::from_raw(32, 32, hwc).unwrap().save(path).unwrap();
}
