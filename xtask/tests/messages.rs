//! The messages a user meets first, each held to its text: a pipeline named by its name, a
//! missing one listing those there are, a `CIFAR10_DIR` that does not exist, the CUDA hint
//! of a CPU build, and what an interrupt says.
#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use std::process::Command;

mod common;

fn xtask(args: &[&str], envs: &[(&str, &str)]) -> (bool, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xtask"));
    c.args(args).current_dir(xtask::repo_root());
    for (k, v) in envs {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn a_pipeline_is_named_by_its_name_and_a_missing_one_lists_the_others() {
    let (ok, text) = xtask(&["greedy", "--pipeline", "smoke", "--print-commands"], &[]);
    assert!(ok, "{text}");
    assert!(text.contains("pipeline `smoke` (") && text.contains("pipelines/smoke.toml"), "{text}");
    let (ok, text) = xtask(&["greedy", "--pipeline", "smoek", "--print-commands"], &[]);
    assert!(!ok);
    assert!(text.contains("no pipeline smoek") && text.contains("seed, smoke"), "{text}");
    assert!(text.contains("recommended"), "{text}");
}

#[test]
fn a_cifar10_dir_that_does_not_exist_is_an_error_not_a_download() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-folder");
    let out = dir.path().join("d.safetensors");
    // The xtask binary called by a stage's name is that stage.
    let prepare = dir.path().join("layerwise-prepare");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_xtask"), &prepare).unwrap();
    let o = Command::new(&prepare)
        .args(["--out", &out.to_string_lossy(), "--artifacts", &dir.path().to_string_lossy()])
        .env("CIFAR10_DIR", &missing)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(text.contains("CIFAR10_DIR is") && text.contains("does not exist") && text.contains("unset it"), "{text}");
    assert!(!text.contains("downloading") && !dir.path().join("cifar-10-binary.tar.gz").exists(), "{text}");
}

#[test]
fn cuda_on_a_cpu_build_says_how_to_build_the_orchestrator_with_it() {
    let hint = format!("{:#}", layerwise_nn::device::cuda_missing());
    assert!(hint.contains("cargo run --release -p xtask --features cuda -- greedy --device cuda"), "{hint}");
    assert!(
        hint.contains("the `cargo xtask` alias builds without it") && hint.contains("scripts/cuda-build.sh"),
        "{hint}"
    );
}

#[test]
fn an_interrupt_says_how_to_resume() {
    let m = layerwise_core::atomic::interrupted_message(1);
    assert!(m.contains("Rerun the same command to resume"), "{m}");
}

#[test]
fn cuda_on_a_cpu_build_is_refused_before_any_folder_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.safetensors");
    layerwise_testkit::prepared_dataset(&data, 8, 2, 2, 1).unwrap();
    let out = dir.path().join("depth-01");
    let train = dir.path().join("layerwise-train");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_xtask"), &train).unwrap();
    let o = Command::new(&train)
        .args(["--data", &data.to_string_lossy(), "--out", &out.to_string_lossy(), "--device", "cuda"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stderr);
    if layerwise_nn::device::CUDA_BUILT {
        return eprintln!("a CUDA build: nothing to check");
    }
    assert!(!o.status.success() && text.contains("has no CUDA support"), "{text}");
    assert!(!out.exists(), "an empty {} was left behind", out.display());
    // The orchestrator, likewise, before its run folder.
    let runs = dir.path().join("runs");
    let (ok, text) = xtask(
        &["greedy", "--pipeline", "smoke", "--device", "cuda", "--artifacts", &runs.to_string_lossy()],
        &[("CIFAR10_DIR", &dir.path().join("none").to_string_lossy())],
    );
    assert!(!ok && text.contains("has no CUDA support"), "{text}");
    assert!(!runs.join("runs").exists() && !runs.join("datasets").exists(), "{text}");
}

#[test]
fn source_and_pipeline_help_say_what_they_take() {
    let (ok, text) = xtask(&["greedy", "--help"], &[]);
    assert!(ok, "{text}");
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(text.contains("a folder of images per class"), "{text}");
    assert!(text.contains("the name of one in pipelines/"), "{text}");
}

#[test]
fn predict_and_export_run_from_the_orchestrators_binary() {
    // `cargo run -p layerwise-predict` compiled dfdx, gemm and syn a third time.
    let (ok, text) = xtask(&["predict", "--help"], &[]);
    assert!(ok && text.contains("Usage: layerwise-predict") && text.contains("--top-k"), "{text}");
    let (ok, text) = xtask(&["export", "--model", "/no/such/model.safetensors", "--out", "/tmp/x.onnx"], &[]);
    assert!(!ok && text.contains("layerwise-export: error"), "{text}");
}

#[test]
fn a_resumed_depth_is_said_to_resume_not_to_train_again() {
    // It printed "training again: …model.safetensors does not exist" right before
    // "resuming at epoch 2 of 2".
    let e = common::env();
    let pipeline = e.smoke_with("smoke-2", &[("epochs = 1 ", "epochs = 2 ")]);
    let args = |run: &str| {
        vec![
            "greedy".to_string(),
            "--pipeline".into(),
            pipeline.to_string_lossy().into_owned(),
            "--source".into(),
            e.source.to_string_lossy().into_owned(),
            "--artifacts".into(),
            e.path("artifacts").to_string_lossy().into_owned(),
            "--run-dir".into(),
            e.path(run).to_string_lossy().into_owned(),
            "--plain".into(),
        ]
    };
    let run = |envs: &[(&str, &str)]| {
        let a = args("run");
        xtask(&a.iter().map(String::as_str).collect::<Vec<_>>(), envs)
    };
    let (ok, text) = run(&[(layerwise_train::STOP_AFTER_EPOCH_ENV, "1")]);
    assert!(!ok, "the run was to stop after depth 1's first epoch: {text}");
    let (ok, text) = run(&[]);
    assert!(ok, "{text}");
    assert!(text.contains("resuming at epoch 2 of 2"), "{text}");
    assert!(!text.contains("training again"), "{text}");
}
