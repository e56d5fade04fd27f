//! The report verifies what it pairs, as the orchestrator does: an evaluation of another
//! checkpoint or split, swapped depth folders, impossible accuracies and edited documents
//! are flagged in the report and never shown as results (RELIABILITY.md, finding 4).
#![allow(clippy::unwrap_used)] // test helpers panic on purpose

mod common;

use common::env;
use layerwise_core::dataset::Split;
use layerwise_core::metrics::{write_sealed, Evaluation, TrainHistory};
use std::path::Path;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn problems(run: &Path) -> (layerwise_report::Summary, String) {
    let s = layerwise_report::collect(run).unwrap();
    let text = s.problems.join("\n");
    (s, text)
}

#[test]
fn the_report_flags_what_does_not_belong_together() {
    let e = env();
    let a = e.args("run");
    xtask::greedy::run(&a).unwrap().unwrap();
    let run = e.path("run");
    let (clean, text) = problems(&run);
    assert!(text.is_empty(), "{text}");
    assert_eq!(clean.depths.len(), 3);
    let variant = |name: &str| {
        let dir = e.path(name);
        copy_dir(&run, &dir);
        dir
    };

    // A depth retrained by hand without being evaluated: its old eval.json is of another
    // checkpoint, and its result is not shown beside the new validation accuracy.
    let v = variant("retrained");
    let data = std::fs::read_dir(e.path("artifacts/datasets")).unwrap().flatten().next().unwrap().path();
    let pipeline = layerwise_core::pipeline::Pipeline::load(&run.join("pipeline.toml")).unwrap();
    layerwise_train::train(&layerwise_train::TrainOptions {
        overrides: Vec::new(),
        data,
        from: Some(v.join("depth-01/model.safetensors")),
        out: v.join("depth-02"),
        config: layerwise_core::config::TrainConfig { seed: 9, ..pipeline.train.clone() },
        device: layerwise_nn::device::DeviceKind::Cpu,
        progress: layerwise_train::Progress::Quiet,
        regime: layerwise_core::config::Regime::Grow,
        depth: None,
    })
    .unwrap();
    let (s, text) = problems(&v);
    assert!(text.contains("depth 2") && text.contains("evaluates another checkpoint"), "{text}");
    assert_eq!(s.depths[1].eval_accuracy, None);
    // Depth 3 grew from the depth 2 that was replaced: it no longer belongs to this run.
    assert!(text.contains("depth 3: not shown") && text.contains("made from another checkpoint"), "{text}");
    assert_eq!(s.depths.iter().map(|r| r.depth).collect::<Vec<_>>(), [1, 2]);

    // An evaluation of the train split is not shown as test.
    let v = variant("train-split");
    let path = v.join("depth-03/eval.json");
    let mut ev = Evaluation::read(&path).unwrap();
    ev.split = Split::Train;
    write_sealed(&path, &ev).unwrap();
    let (s, text) = problems(&v);
    assert!(text.contains("evaluates the train split, not test"), "{text}");
    assert_eq!(s.depths[2].eval_accuracy, None);

    // Swapped depth folders: neither is shown, nor depth 2 (its parent folder now holds
    // another checkpoint), and none can be the best depth.
    let v = variant("swapped");
    std::fs::rename(v.join("depth-01"), v.join("tmp")).unwrap();
    std::fs::rename(v.join("depth-03"), v.join("depth-01")).unwrap();
    std::fs::rename(v.join("tmp"), v.join("depth-03")).unwrap();
    let (s, text) = problems(&v);
    assert!(text.contains("holds a depth-3 checkpoint, not depth 1"), "{text}");
    assert!(text.contains("holds a depth-1 checkpoint, not depth 3"), "{text}");
    assert!(text.contains("depth 2: not shown") && text.contains("made from another checkpoint"), "{text}");
    assert!(s.depths.is_empty() && s.best_depth.is_none() && s.best.is_none());

    // An accuracy of 7.5 (sealed again, so only the range check can find it) is not
    // shown and does not choose the best depth; 1e308 in an evaluation neither.
    let v = variant("impossible");
    let path = v.join("depth-03/train.json");
    let mut h = TrainHistory::read(&path).unwrap();
    h.epochs.last_mut().unwrap().val_accuracy = 7.5;
    write_sealed(&path, &h).unwrap();
    let path = v.join("depth-02/eval.json");
    let mut ev = Evaluation::read(&path).unwrap();
    ev.accuracy = 1e308;
    write_sealed(&path, &ev).unwrap();
    let (s, text) = problems(&v);
    assert!(text.contains("depth 3: not shown") && text.contains("outside [0, 1]"), "{text}");
    assert!(text.contains("depth 2: its evaluation is not shown"), "{text}");
    assert!(s.depths.iter().all(|r| r.depth != 3 && r.val_accuracy <= 1.0));
    assert_ne!(s.best_depth, Some(3));

    // A value edited by hand, without the seal: refused by the seal.
    let v = variant("edited");
    let path = v.join("depth-01/eval.json");
    let mut doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(doc["content_sha256"].is_string());
    doc["accuracy"] = serde_json::json!(0.99);
    std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    let (s, text) = problems(&v);
    assert!(text.contains("content_sha256"), "{text}");
    assert_eq!(s.depths[0].eval_accuracy, None);
}
