//! The convolutional smoke pipeline end to end through `cargo xtask greedy`: every
//! checkpoint follows the interop contract (PyTorch names and layouts, the architecture in
//! metadata keys), a numpy forward pass written from that contract alone
//! (`scripts/cnn-forward.py`) reproduces `layerwise-evaluate`'s accuracy, and a second run
//! gives the same bytes. Uses `CIFAR10_DIR` when set, else synthetic images; the numpy
//! check needs Python 3 with numpy and safetensors (installed with pip when missing;
//! skipped, saying so, only without Python).
#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use layerwise_core::checkpoint::{load_cnn, BATCHNORM_KEY, HEAD_KEY, STAGES_KEY};
use layerwise_core::metrics::Evaluation;
use layerwise_core::st::MappedSafetensors;
use std::process::Command;
use xtask::greedy::run;

mod common;

fn python() -> bool {
    let has = || Command::new("python3").args(["-c", "import numpy, safetensors"]).output().map(|o| o.status.success());
    match has() {
        Err(_) => {
            eprintln!("skipped the numpy check: no python3 on PATH");
            false
        }
        Ok(true) => true,
        Ok(false) => {
            let _ = Command::new("python3").args(["-m", "pip", "install", "--quiet", "numpy", "safetensors"]).output();
            assert!(has().unwrap_or(false), "python3 has no numpy/safetensors and pip could not install them");
            true
        }
    }
}

#[test]
fn the_cnn_smoke_pipeline_follows_the_interop_contract_and_numpy_reproduces_it() {
    let e = common::env();
    let source = common::source_or_synthetic(e.dir.path());
    let mut a = e.args("run");
    a.pipeline = Some(xtask::repo_root().join("pipelines/cnn-smoke.toml"));
    a.inputs.source = Some(source);
    let out = run(&a).unwrap().unwrap();
    assert_eq!(out.depths.len(), 3);
    let run_dir = e.path("run");
    let model = |d: usize| run_dir.join(format!("depth-{d:02}/model.safetensors"));
    for d in 1..=3 {
        let f = MappedSafetensors::open(&model(d), "layerwise-checkpoint", "checkpoint").unwrap();
        let mut names = f.names();
        names.sort();
        let mut expect = vec!["head.linear.bias".to_string(), "head.linear.weight".to_string()];
        for i in 0..d {
            expect.push(format!("stages.{i}.conv.weight"));
            for t in ["bias", "running_mean", "running_var", "weight"] {
                expect.push(format!("stages.{i}.bn.{t}"));
            }
        }
        expect.sort();
        assert_eq!(names, expect, "depth {d}");
        let stages: serde_json::Value = serde_json::from_str(f.key(STAGES_KEY).unwrap()).unwrap();
        assert_eq!(stages.as_array().unwrap().len(), d);
        assert_eq!(stages[0], serde_json::json!({"downsample": "none", "out": 8}));
        assert_eq!(f.key(HEAD_KEY).unwrap(), r#"{"convs":0,"pool":2}"#);
        assert_eq!(f.key(BATCHNORM_KEY).unwrap(), r#"{"eps":0.00001,"momentum":0.1}"#);
        let (net, meta) = load_cnn(&model(d)).unwrap();
        assert_eq!((meta.version, net.depth()), (2, d));
    }
    let (net, _) = load_cnn(&model(3)).unwrap();
    assert_eq!(net.head.linear.inputs, 16 * 4, "2×2 pooling of 16 channels, flattened");

    // The report's axis is the stage, with each stage's block and its cost.
    let report = std::fs::read_to_string(run_dir.join("report.md")).unwrap();
    assert!(report.contains("## Results by stage") && report.contains("**Best stage: "), "{report}");
    assert!(report.contains("| maxpool, 8→16 at 16×16 | 0.3 |"), "{report}");
    // The settings that ran: SGD with its momentum, not Adam's β (it said "Adam | lr 0.1, β1 …").
    assert!(report.contains("| optimizer | SGD: lr 0.05, momentum 0.9 |"), "{report}");
    assert!(report.contains("| network | convolutional: stages 8, maxpool:16, psi:16;"), "{report}");
    assert!(
        report.contains("weight decay 0.0005 (decoupled: weights shrink by lr × decay a step), label smoothing 0.1")
    );
    assert!(!report.contains("β1"), "{report}");
    assert!(std::fs::read_to_string(run_dir.join("accuracy.svg")).unwrap().contains("stage (conv blocks)"));

    // numpy, from the contract alone, gives evaluate's accuracy.
    let eval = Evaluation::read(&run_dir.join("depth-03/eval.json")).unwrap();
    let data = std::fs::read_dir(e.path("artifacts/datasets")).unwrap().next().unwrap().unwrap().path();
    if python() {
        let script = xtask::repo_root().join("scripts/cnn-forward.py");
        let o = Command::new("python3").arg(&script).arg(model(3)).arg(&data).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let acc = r["accuracy"].as_f64().unwrap();
        assert_eq!(r["samples"].as_u64().unwrap() as usize, eval.samples);
        assert!((acc - eval.accuracy).abs() <= 1.0 / eval.samples as f64, "numpy {acc}, evaluate {}", eval.accuracy);
    }

    // A second run into another folder: the same bytes, depth by depth.
    let b = e.args("again");
    let b = xtask::args::GreedyArgs { pipeline: a.pipeline.clone(), inputs: a.inputs.clone(), ..b };
    run(&b).unwrap().unwrap();
    for d in 1..=3 {
        let other = e.path(&format!("again/depth-{d:02}/model.safetensors"));
        assert!(std::fs::read(other).unwrap() == std::fs::read(model(d)).unwrap(), "depth {d}: same bytes");
    }
}
