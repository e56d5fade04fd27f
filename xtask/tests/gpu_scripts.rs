//! The GPU scripts that run here before any device time is spent: the preflight's PTX rule
//! (a driver of CUDA 13.0 loads PTX ISA 9.0 at most) on fixture modules, and the summary
//! table of a check that ran on the CPU only.
#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use std::process::Command;

fn preflight_ptx(fixture: &str) -> (bool, String) {
    let root = xtask::repo_root();
    let out = Command::new("bash")
        .arg(root.join("scripts/gpu-preflight.sh"))
        .arg("--ptx")
        .arg(root.join("scripts/fixtures").join(fixture))
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn the_preflight_passes_ptx_9_0_and_refuses_9_5_naming_the_file_and_version() {
    let (ok, text) = preflight_ptx("ptx-9.0.ptx");
    assert!(ok, "{text}");
    assert!(text.contains("1 PTX module(s)"), "{text}");
    let (ok, text) = preflight_ptx("ptx-9.5.ptx");
    assert!(!ok, "PTX 9.5 must be refused: {text}");
    assert!(text.contains("ptx-9.5.ptx"), "names the file: {text}");
    assert!(text.contains(".version 9.5, above 9.0"), "names the version: {text}");
    assert!(text.contains("fixture_too_new"), "names the module's first kernel: {text}");
}

#[test]
fn the_summary_of_a_cpu_only_check_says_not_run_for_cuda() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("verify-cpu.json"),
        r#"[{"device":"cpu","tf32":"unset","check":"cnn grow stage 1: gradients","worst":"head.linear.weight","rel_error":3e-7,"ok":true}]"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("flow.jsonl"),
        "{\"device\":\"cpu\",\"run\":\"cnn1\",\"test_acc\":0.41,\"test_loss\":1.7,\"val_acc\":0.4,\"epoch_s\":1.5}\n",
    )
    .unwrap();
    let out = Command::new("python3")
        .arg(xtask::repo_root().join("scripts/gpu-summary.py"))
        .arg(dir.path())
        .arg("cpu")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let row = text.lines().find(|l| l.starts_with("| cnn grow stage 1")).unwrap();
    assert_eq!(row, "| cnn grow stage 1: gradients | not run | not run | 3.0e-07 |");
    let row = text.lines().find(|l| l.starts_with("| cnn1 |")).unwrap();
    assert_eq!(row, "| cnn1 | not run | 0.4100 (1.50 s) | not run |");
    // A cpu run without its MLP rows: those failed, they were not skipped.
    let row = text.lines().find(|l| l.starts_with("| mlp depth 1 |")).unwrap();
    assert_eq!(row, "| mlp depth 1 | not run | FAILED | not run |");
    assert!(text.contains("| (cuda) | | not run |"), "{text}");
}
