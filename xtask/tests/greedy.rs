//! The greedy loop end to end on synthetic CIFAR-10 (the smoke pipeline), resume,
//! `--from`, the refused resume, and `--print-commands` executed line by line.
#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use layerwise_core::metrics::{Evaluation, TrainHistory};
use std::path::{Path, PathBuf};
use std::time::SystemTime;
use xtask::greedy::run;
use xtask::plan::{Plan, Program, Step};
use xtask::print::commands as print_commands;

mod common;
use common::{env, PATIENT};

fn mtime(p: &Path) -> SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

fn depth_files(run: &Path, d: usize) -> [PathBuf; 3] {
    let dir = run.join(format!("depth-{d:02}"));
    [dir.join("model.safetensors"), dir.join("train.json"), dir.join("eval.json")]
}

#[test]
fn smoke_pipeline_end_to_end_then_resume() {
    let e = env();
    let a = e.args("run");
    let out = run(&a).unwrap().unwrap();
    let run_dir = e.dir.path().join("run");
    assert_eq!(out.depths.len(), 3);
    assert!(out.depths.iter().all(|d| !d.reused));
    for d in 1..=3 {
        for f in depth_files(&run_dir, d) {
            assert!(f.exists(), "{} missing", f.display());
        }
    }
    for f in ["report.md", "accuracy.svg", "summary.json", "pipeline.toml"] {
        assert!(run_dir.join(f).exists(), "{f} missing");
    }
    // the report's table holds the metrics' numbers
    let report = std::fs::read_to_string(run_dir.join("report.md")).unwrap();
    assert!(report.contains("| optimizer | Adam: lr 0.001, β1 0.9, β2 0.999, ε 1e-7 |"), "{report}");
    assert!(report.contains("| network | MLP (dense ReLU layers) |"), "{report}");
    for d in 1..=3 {
        let [_, train, eval] = depth_files(&run_dir, d);
        let h = TrainHistory::read(&train).unwrap();
        let ev = Evaluation::read(&eval).unwrap();
        let last = h.last().unwrap();
        for v in [last.val_accuracy, last.train_loss, ev.accuracy, ev.loss] {
            assert!(report.contains(&format!("{v:.4}")), "report lacks {v:.4}:\n{report}");
        }
    }
    assert!(report.contains(&format!("**Best depth: {}**", out.best_depth)));
    let svg = std::fs::read_to_string(run_dir.join("accuracy.svg")).unwrap();
    assert!(svg.contains("depth (hidden layers)") && svg.contains("validation"));

    // A person's notes end the report from the next report on.
    std::fs::write(run_dir.join("notes.md"), "Checked by hand: fine.").unwrap();

    // Interrupt: depth 3 lost its evaluation: only the evaluation is redone.
    let before: Vec<SystemTime> = depth_files(&run_dir, 1).iter().map(|f| mtime(f)).collect();
    let [model3, _, eval3] = depth_files(&run_dir, 3);
    let model3_bytes = std::fs::read(&model3).unwrap();
    std::fs::remove_file(&eval3).unwrap();
    let again = run(&a).unwrap().unwrap();
    assert_eq!(again.depths.iter().map(|d| d.reused).collect::<Vec<_>>(), [true, true, true]);
    assert!(eval3.exists());
    // Depth 3 lost its checkpoint: trained again, to the same bytes.
    std::fs::remove_file(&model3).unwrap();
    let again = run(&a).unwrap().unwrap();
    assert_eq!(again.depths.iter().map(|d| d.reused).collect::<Vec<_>>(), [true, true, false]);
    assert!(std::fs::read(&model3).unwrap() == model3_bytes, "deterministic");
    let after: Vec<SystemTime> = depth_files(&run_dir, 1).iter().map(|f| mtime(f)).collect();
    assert_eq!(before, after, "completed depths are never retrained");
    // an identical rerun of depth 3 gives identical bytes (determinism)
    assert_eq!(again.depths[2].val_accuracy, out.depths[2].val_accuracy);
    let report = std::fs::read_to_string(run_dir.join("report.md")).unwrap();
    assert!(report.contains("## Notes\n\nChecked by hand: fine."), "{report}");

    // More depths: accepted, the old ones are kept.
    let mut more = a.clone();
    more.inputs.max_depth = Some(4);
    let deeper = run(&more).unwrap().unwrap();
    assert_eq!(deeper.depths.iter().map(|d| d.reused).collect::<Vec<_>>(), [true, true, true, false]);

    // A change that affects completed depths is refused, naming the way out.
    let changed = e.smoke_with("changed", &[("seed = 0", "seed = 5")]);
    let mut b = a.clone();
    b.pipeline = Some(changed);
    let err = format!("{:#}", run(&b).unwrap_err());
    assert!(err.contains("--restart") && err.contains("--run-dir"), "{err}");
    // ...naming what changed.
    assert!(err.contains("changed: train.seed 0 → 5"), "{err}");
    // ...and --restart starts over.
    b.restart = true;
    let restarted = run(&b).unwrap().unwrap();
    assert!(restarted.depths.iter().all(|d| !d.reused));
    assert!(!run_dir.join("depth-04").exists());
}

#[test]
fn from_checkpoint_continues_the_loop() {
    let e = env();
    let mut a = e.args("first");
    a.inputs.max_depth = Some(1);
    run(&a).unwrap();
    let ckpt = e.dir.path().join("first/depth-01/model.safetensors");
    let mut b = e.args("second");
    b.from = Some(ckpt.clone());
    let out = run(&b).unwrap().unwrap();
    assert_eq!(out.depths.iter().map(|d| d.depth).collect::<Vec<_>>(), [2, 3]);
    let (_, meta) =
        layerwise_core::checkpoint::load_checkpoint(&e.dir.path().join("second/depth-02/model.safetensors")).unwrap();
    assert_eq!(meta.parent_sha256.unwrap(), layerwise_core::hash::sha256_file(&ckpt).unwrap());
}

#[test]
fn patience_stops_on_validation_accuracy() {
    let e = env();
    let mut a = e.args("patient");
    a.pipeline = Some(e.smoke_with("patient", &PATIENT));
    let out = run(&a).unwrap().unwrap();
    assert!(out.stopped_early, "{out:?}");
    let best = out.depths.iter().fold(&out.depths[0], |b, d| if d.val_accuracy > b.val_accuracy { d } else { b });
    assert_eq!(out.best_depth, best.depth);
    assert_eq!(out.depths.last().unwrap().depth, out.best_depth + 1);
}

/// Run one printed line: stage commands in-process through their command-line parsers,
/// anything else through the shell.
fn execute(line: &str) {
    if line.starts_with('#') || line.trim().is_empty() {
        return;
    }
    let words: Vec<String> = line.split(' ').map(|w| w.trim_matches('\'').to_string()).collect();
    let Some(program) = Program::from_name(&words[0]) else {
        let status = std::process::Command::new("sh").args(["-c", line]).status().unwrap();
        assert!(status.success(), "{line}");
        return;
    };
    Step::of(program, words[1..].to_vec()).run().unwrap();
}

#[test]
fn printed_commands_reproduce_the_orchestrated_run() {
    let e = env();
    let a = e.args("orchestrated");
    run(&a).unwrap();
    let b = e.args("by-hand");
    let plan = Plan::new(&b).unwrap();
    let lines = print_commands(&plan, &b).unwrap();
    assert_eq!(lines.iter().filter(|l| l.starts_with("layerwise-train")).count(), 3);
    for line in &lines {
        execute(line);
    }
    for d in 1..=3 {
        let [m1, t1, e1] = depth_files(&e.dir.path().join("orchestrated"), d);
        let [m2, t2, e2] = depth_files(&e.dir.path().join("by-hand"), d);
        assert!(std::fs::read(&m1).unwrap() == std::fs::read(&m2).unwrap(), "depth {d} checkpoints differ");
        let (h1, h2) = (TrainHistory::read(&t1).unwrap(), TrainHistory::read(&t2).unwrap());
        assert_eq!(h1.checkpoint_sha256, h2.checkpoint_sha256);
        let accs = |h: &TrainHistory| h.epochs.iter().map(|e| (e.train_loss, e.val_accuracy)).collect::<Vec<_>>();
        assert_eq!(accs(&h1), accs(&h2));
        let (v1, v2) = (Evaluation::read(&e1).unwrap(), Evaluation::read(&e2).unwrap());
        assert_eq!((v1.loss, v1.accuracy, v1.confusion), (v2.loss, v2.accuracy, v2.confusion));
    }
    assert!(e.dir.path().join("by-hand/report.md").exists());

    // With overrides, the printed plan records the overridden pipeline, as the run does.
    let mut c = e.args("overridden");
    c.seed = Some(4);
    c.inputs.max_depth = Some(1);
    let lines = print_commands(&Plan::new(&c).unwrap(), &c).unwrap();
    for line in &lines {
        execute(line);
    }
    let recorded = layerwise_core::pipeline::Pipeline::load(&e.dir.path().join("overridden/pipeline.toml")).unwrap();
    assert_eq!((recorded.train.seed, recorded.greedy.max_depth), (4, 1));
    let (_, meta) =
        layerwise_core::checkpoint::load_checkpoint(&depth_files(&e.dir.path().join("overridden"), 1)[0]).unwrap();
    assert_eq!(meta.config.seed, 4);
    // ...and the orchestrator accepts that run as complete
    let out = run(&c).unwrap().unwrap();
    assert!(out.depths[0].reused);
}

#[test]
fn another_source_is_prepared_again() {
    let e = env();
    let mut a = e.args("one");
    a.inputs.max_depth = Some(1);
    run(&a).unwrap();
    let data = Plan::new(&a).unwrap().data;
    let first = layerwise_core::dataset::Dataset::open(&data).unwrap().meta.fingerprint;
    // Same settings, same source: the prepared dataset is reused as it is.
    let before = mtime(&data);
    run(&a).unwrap();
    assert_eq!(mtime(&data), before);
    // Same settings, another source (one test label changed): prepared into a file of its
    // own (named after the source), the first one left as it was.
    let other = e.dir.path().join("other");
    let copy = layerwise_testkit::synthetic::write_folder(&other, false, 1000).unwrap();
    let test_batch = copy.join("test_batch.bin");
    let mut bytes = std::fs::read(&test_batch).unwrap();
    bytes[0] = (bytes[0] + 1) % 10;
    std::fs::write(&test_batch, bytes).unwrap();
    let mut b = e.args("two");
    b.inputs.max_depth = Some(1);
    b.inputs.source = Some(copy);
    run(&b).unwrap();
    let other_data = Plan::new(&b).unwrap().data;
    assert_ne!(other_data, data);
    let second = layerwise_core::dataset::Dataset::open(&other_data).unwrap().meta.fingerprint;
    assert_ne!(first, second);
    assert_eq!(mtime(&data), before, "the first source's dataset was not touched");
}

#[test]
fn the_gate_stops_where_the_local_loop_stopped() {
    let e = env();
    let mut a = e.args("patient");
    a.pipeline = Some(e.smoke_with("patient", &PATIENT));
    let out = run(&a).unwrap().unwrap();
    let stop = out.depths.last().unwrap().depth;
    let run_dir = e.dir.path().join("patient");
    for d in 1..=stop {
        assert_eq!(
            xtask::gate::gate(&run_dir, 1, d, None, layerwise_core::run::Phase::Greedy).unwrap(),
            None,
            "depth {d} was trained locally"
        );
    }
    let reason = xtask::gate::gate(&run_dir, 1, stop + 1, None, layerwise_core::run::Phase::Greedy).unwrap().unwrap();
    assert!(reason.contains(&format!("stopped after depth {stop}")), "{reason}");
    // The binary says so with exit status 3; a missing history is an error (1).
    let gate = |depth: usize| {
        std::process::Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["gate", "--run-dir", &run_dir.to_string_lossy(), "--depth", &depth.to_string()])
            .output()
            .unwrap()
    };
    assert_eq!(gate(stop + 1).status.code(), Some(xtask::gate::GATE_STOPPED as i32));
    assert_eq!(gate(stop).status.code(), Some(0));
    std::fs::remove_file(run_dir.join("depth-01/train.json")).unwrap();
    let missing = gate(2);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("depth 1"));
}

#[test]
fn a_local_sweep_aggregates_its_runs() {
    let e = env();
    let sweep_dir = e.dir.path().join("sweep");
    let a = xtask::sweep::SweepArgs {
        pipelines: vec![xtask::repo_root().join("pipelines/smoke.toml")],
        seeds: "0-1".into(),
        sweep_dir: Some(sweep_dir.clone()),
        inputs: xtask::args::RunInputs {
            source: Some(e.source.clone()),
            artifacts: Some(e.dir.path().join("artifacts")),
            max_depth: Some(2),
            plain: true,
            ..Default::default()
        },
    };
    xtask::sweep::run(&a).unwrap();
    let val = |run: &str, d: usize| {
        TrainHistory::read(&sweep_dir.join(run).join(format!("depth-{d:02}/train.json")))
            .unwrap()
            .last()
            .unwrap()
            .val_accuracy
    };
    let test = |run: &str, d: usize| {
        Evaluation::read(&sweep_dir.join(run).join(format!("depth-{d:02}/eval.json"))).unwrap().accuracy
    };
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sweep_dir.join("summary.json")).unwrap()).unwrap();
    let g = &summary["groups"][0];
    assert_eq!(g["pipeline"], "smoke");
    assert_eq!(g["runs"], serde_json::json!(["smoke-seed0", "smoke-seed1"]));
    for d in 1..=2 {
        let row = &g["depths"][d - 1];
        let (v0, v1) = (val("smoke-seed0", d), val("smoke-seed1", d));
        let close = |a: &serde_json::Value, b: f64| (a.as_f64().unwrap() - b).abs() < 1e-12;
        assert!(close(&row["val_accuracy"]["mean"], (v0 + v1) / 2.0), "{row}");
        assert!(close(&row["val_accuracy"]["min"], v0.min(v1)) && close(&row["val_accuracy"]["max"], v0.max(v1)));
        assert!(close(&row["val_accuracy"]["std"], (v0 - v1).abs() / 2f64.sqrt()), "sample standard deviation");
        let (t0, t1) = (test("smoke-seed0", d), test("smoke-seed1", d));
        assert!(close(&row["eval_accuracy"]["mean"], (t0 + t1) / 2.0));
    }
    let chosen: u64 = g["depths"].as_array().unwrap().iter().map(|d| d["chosen_as_best"].as_u64().unwrap()).sum();
    assert_eq!(chosen, 2, "each run's best depth counted once");
    let report = std::fs::read_to_string(sweep_dir.join("report.md")).unwrap();
    assert!(report.contains("smoke-seed1") && report.contains("chosen as best"), "{report}");
    let svg = std::fs::read_to_string(sweep_dir.join("accuracy.svg")).unwrap();
    assert!(svg.contains("range of 2 runs") && svg.contains("<polygon"), "a band per series");
    // The same report from `layerwise-report --runs ... --out`.
    let out = e.dir.path().join("by-hand");
    Step::of(
        Program::Report,
        vec![
            "--runs".into(),
            sweep_dir.join("smoke-seed0").to_string_lossy().into_owned(),
            sweep_dir.join("smoke-seed1").to_string_lossy().into_owned(),
            "--out".into(),
            out.to_string_lossy().into_owned(),
        ],
    )
    .run()
    .unwrap();
    assert_eq!(std::fs::read_to_string(out.join("report.md")).unwrap(), report);
    // A sweep folder without runs, and --runs without --out, are refused.
    let empty = e.dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let err =
        Step::of(Program::Report, vec!["--sweep".into(), empty.to_string_lossy().into_owned()]).run().unwrap_err();
    assert!(format!("{err:#}").contains("no run folders"), "{err:#}");
    let err = Step::of(Program::Report, vec!["--runs".into(), "x".into()]).run().unwrap_err();
    assert!(format!("{err:#}").contains("--out"), "{err:#}");
}

#[test]
fn a_run_never_silently_changes_its_dataset() {
    let e = env();
    let mut a = e.args("r1");
    a.inputs.max_depth = Some(2);
    run(&a).unwrap();
    let model = e.path("r1/depth-01/model.safetensors");
    let (bytes, when) = (std::fs::read(&model).unwrap(), mtime(&model));
    // Source B: A with one pixel changed, prepared by a second run into its own file.
    let other = layerwise_testkit::synthetic::write_folder(&e.path("b"), false, 1000).unwrap();
    let batch = other.join("data_batch_1.bin");
    let mut pixels = std::fs::read(&batch).unwrap();
    pixels[1] = pixels[1].wrapping_add(1);
    std::fs::write(&batch, pixels).unwrap();
    let mut b = e.args("r2");
    b.inputs.max_depth = Some(1);
    b.inputs.source = Some(other.clone());
    run(&b).unwrap();
    // r1 again, pointed at B: it would train on other data. Refused, saying why.
    let mut again = a.clone();
    again.inputs.source = Some(other);
    let err = format!("{:#}", run(&again).unwrap_err());
    assert!(err.contains("never changes its dataset") && err.contains("--source"), "{err}");
    assert_eq!((std::fs::read(&model).unwrap(), mtime(&model)), (bytes.clone(), when), "nothing retrained");
    // With its own source named, the dataset is prepared from A again and every depth is kept.
    let out = run(&a).unwrap().unwrap();
    assert!(out.depths.iter().all(|d| d.reused), "{out:?}");
    assert_eq!(std::fs::read(&model).unwrap(), bytes);
}

#[test]
fn a_damaged_evaluation_never_costs_its_checkpoint() {
    let e = env();
    let a = e.args("run");
    run(&a).unwrap();
    let [model, history, eval] = depth_files(&e.path("run"), 2);
    let kept = (std::fs::read(&model).unwrap(), std::fs::read(&history).unwrap());
    let text = std::fs::read(&eval).unwrap();
    std::fs::write(&eval, &text[..text.len() / 2]).unwrap();
    if !layerwise_nn::device::CUDA_BUILT {
        // A rerun whose steps fail (CUDA asked of a CPU build) leaves depth 2 as it was.
        let mut gpu = a.clone();
        gpu.inputs.device = layerwise_nn::device::DeviceKind::Cuda;
        assert!(run(&gpu).is_err());
        assert_eq!((std::fs::read(&model).unwrap(), std::fs::read(&history).unwrap()), kept.clone());
    }
    // A working rerun evaluates depth 2 again, and trains nothing.
    let out = run(&a).unwrap().unwrap();
    assert!(out.depths.iter().all(|d| d.reused), "{out:?}");
    assert_eq!((std::fs::read(&model).unwrap(), std::fs::read(&history).unwrap()), kept);
    assert_eq!(Evaluation::read(&eval).unwrap().checkpoint_sha256, layerwise_core::hash::sha256_file(&model).unwrap());
    // A hole in the depths is marked by the report, not passed over.
    std::fs::remove_file(&model).unwrap();
    std::fs::remove_file(&history).unwrap();
    Step::of(Program::Report, vec!["--run".into(), e.path("run").to_string_lossy().into_owned()]).run().unwrap();
    let report = std::fs::read_to_string(e.path("run/report.md")).unwrap();
    assert!(report.contains("Incomplete run: depth 2 missing"), "{report}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(e.path("run/summary.json")).unwrap()).unwrap();
    assert_eq!(summary["missing_depths"], serde_json::json!([2]));
}

#[test]
fn a_run_folder_is_locked_and_restart_spares_what_is_not_a_run() {
    let e = env();
    let a = e.args("run");
    let lock = layerwise_core::run::RunLock::acquire(&e.path("run"), "cargo xtask greedy (the other one)").unwrap();
    let err = format!("{:#}", run(&a).unwrap_err());
    assert!(err.contains("in use") && err.contains("the other one"), "{err}");
    drop(lock);
    // --restart on a folder that is not a layerwise run deletes nothing.
    let mine = e.path("mine");
    std::fs::create_dir_all(mine.join("depth-7")).unwrap();
    std::fs::write(mine.join("depth-7/notes.txt"), "my own work").unwrap();
    let mut r = e.args("mine");
    r.restart = true;
    let err = format!("{:#}", run(&r).unwrap_err());
    assert!(err.contains("not a layerwise run"), "{err}");
    assert!(mine.join("depth-7/notes.txt").exists());
}

const STAGES: [(&str, &str); 1] = [(
    "[greedy]",
    "[finetune]\ndepths = \"all\"\nepochs = 2\n\n[baseline]\ndepths = \"all\"\nepochs = 1\nlr = 0.002\n\n[greedy]",
)];

#[test]
fn finetune_and_baseline_follow_the_loop_and_resume() {
    let e = env();
    let mut a = e.args("run");
    a.pipeline = Some(e.smoke_with("stages", &STAGES));
    a.inputs.max_depth = Some(2);
    let out = run(&a).unwrap().unwrap();
    let run_dir = e.path("run");
    let got: Vec<(String, usize)> = out.stages.iter().map(|s| (s.stage.name().to_string(), s.depth)).collect();
    assert_eq!(got, [("finetune".into(), 1), ("finetune".into(), 2), ("baseline".into(), 1), ("baseline".into(), 2)]);
    for dir in ["finetune-01", "finetune-02", "baseline-01", "baseline-02"] {
        for f in ["model.safetensors", "train.json", "eval.json"] {
            assert!(run_dir.join(dir).join(f).exists(), "{dir}/{f}");
        }
    }
    let (_, meta) =
        layerwise_core::checkpoint::load_checkpoint(&run_dir.join("finetune-02/model.safetensors")).unwrap();
    assert_eq!(meta.regime, layerwise_core::config::Regime::Finetune);
    assert_eq!(meta.config.lr, 0.0001, "a tenth of [train]'s rate by default");
    assert_eq!(
        meta.parent_sha256.unwrap(),
        layerwise_core::hash::sha256_file(&run_dir.join("depth-02/model.safetensors")).unwrap()
    );
    let (_, meta) =
        layerwise_core::checkpoint::load_checkpoint(&run_dir.join("baseline-02/model.safetensors")).unwrap();
    assert_eq!((meta.regime, meta.depth, meta.config.lr), (layerwise_core::config::Regime::Scratch, 2, 0.002));
    // The report compares the three, and chooses the best model on validation accuracy.
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("summary.json")).unwrap()).unwrap();
    let mut best = ("greedy", 0, f64::MIN);
    for (stage, key) in [("greedy", "depths"), ("finetune", "finetune"), ("baseline", "baseline")] {
        for r in summary[key].as_array().unwrap() {
            let v = r["val_accuracy"].as_f64().unwrap();
            if v > best.2 {
                best = (stage, r["depth"].as_u64().unwrap() as usize, v);
            }
        }
    }
    assert_eq!(summary["best"]["stage"], best.0);
    assert_eq!(summary["best"]["depth"], best.1);
    let report = std::fs::read_to_string(run_dir.join("report.md")).unwrap();
    assert!(
        report.contains("## Does greedy pretraining help?")
            && report.contains("| end to end from scratch (no pretraining) |")
            && report.contains("Best model of the run")
    );
    // Resume: everything is complete and kept; a lost evaluation is redone alone.
    std::fs::remove_file(run_dir.join("baseline-01/eval.json")).unwrap();
    let model = std::fs::read(run_dir.join("baseline-01/model.safetensors")).unwrap();
    let again = run(&a).unwrap().unwrap();
    assert!(again.stages.iter().all(|s| s.reused), "{:?}", again.stages);
    assert!(std::fs::read(run_dir.join("baseline-01/model.safetensors")).unwrap() == model);
    assert!(run_dir.join("baseline-01/eval.json").exists());
    // The printed plan, run by hand, gives the same models.
    let mut b = e.args("by-hand");
    b.pipeline = a.pipeline.clone();
    b.inputs.max_depth = Some(2);
    for line in print_commands(&Plan::new(&b).unwrap(), &b).unwrap() {
        execute(&line);
    }
    for dir in ["finetune-02", "baseline-01"] {
        let f = |r: &str| std::fs::read(e.path(r).join(dir).join("model.safetensors")).unwrap();
        assert!(f("run") == f("by-hand"), "{dir}");
    }
    // A changed [finetune] section is refused, like a changed [train].
    let mut c = a.clone();
    c.pipeline =
        Some(e.smoke_with("changed-stages", &[(STAGES[0].0, &STAGES[0].1.replace("epochs = 2", "epochs = 3"))]));
    let err = format!("{:#}", run(&c).unwrap_err());
    assert!(err.contains("[finetune]") && err.contains("--restart"), "{err}");
    assert!(err.contains("finetune.epochs 2 → 3"), "{err}");
    // So is a removed one while its folders are there: removing it and adding it back
    // with other values no longer slips past the check (RELIABILITY.md).
    let mut d = a.clone();
    d.pipeline = Some(e.smoke_with("no-stages", &[]));
    let err = format!("{:#}", run(&d).unwrap_err());
    assert!(err.contains("[finetune]") && err.contains("[finetune] removed"), "{err}");
}

/// Beside the loop, the `[autoencoder]` loop over the same depths, and `[finetune]` of both.
const AUTOENCODER: [(&str, &str); 1] = [(
    "[greedy]",
    "[autoencoder]\nepochs = 1\nprobe_epochs = 2\ncorruption = 0.25\n\n[finetune]\ndepths = \"best\"\nepochs = 1\n\n[greedy]",
)];

#[test]
fn the_autoencoder_loop_runs_beside_the_loop_resumes_and_prints() {
    use layerwise_core::checkpoint::read_checkpoint_meta;
    use layerwise_core::config::Objective;
    let e = env();
    let mut a = e.args("run");
    a.pipeline = Some(e.smoke_with("autoencoder", &AUTOENCODER));
    a.inputs.max_depth = Some(2);
    let out = run(&a).unwrap().unwrap();
    let run_dir = e.path("run");
    let got: Vec<(String, usize)> = out.stages.iter().map(|s| (s.stage.name().to_string(), s.depth)).collect();
    assert_eq!(&got[..2], [("autoencoder".into(), 1), ("autoencoder".into(), 2)]);
    assert_eq!(got.len(), 4, "one fine-tuned best depth per loop: {got:?}");
    assert_eq!((got[2].0.as_str(), got[3].0.as_str()), ("finetune", "autoencoder-finetune"));
    let sha = |p: &str| layerwise_core::hash::sha256_file(&run_dir.join(p).join("model.safetensors")).unwrap();
    let meta = |p: &str| read_checkpoint_meta(&run_dir.join(p).join("model.safetensors")).unwrap();
    let ae2 = meta("autoencoder-02");
    assert_eq!(ae2.config.objective, Objective::Autoencoder);
    assert_eq!((ae2.config.corruption, ae2.config.probe_epochs), (0.25, Some(2)));
    assert_eq!(ae2.parent_sha256.unwrap(), sha("autoencoder-01"), "grown from the autoencoder loop");
    let h = TrainHistory::read(&run_dir.join("autoencoder-02/train.json")).unwrap();
    assert_eq!((h.pretraining.len(), h.epochs.len()), (1, 2));
    // The autoencoder loop's best depth (by its probe's validation accuracy) is fine-tuned.
    let best_ae =
        out.stages[..2]
            .iter()
            .fold((0, f64::MIN), |b, s| if s.val_accuracy > b.1 { (s.depth, s.val_accuracy) } else { b });
    assert_eq!(got[3].1, best_ae.0);
    let ft = meta(&format!("autoencoder-finetune-{:02}", best_ae.0));
    assert_eq!(ft.config.objective, Objective::Supervised);
    assert_eq!(ft.parent_sha256.unwrap(), sha(&format!("autoencoder-{:02}", best_ae.0)));
    let report = std::fs::read_to_string(run_dir.join("report.md")).unwrap();
    for needle in [
        "| autoencoder greedy, probe only (before fine-tuning) |",
        "| autoencoder greedy + fine-tuning |",
        "| supervised greedy (before fine-tuning) |",
        "## Reconstruction by depth",
    ] {
        assert!(report.contains(needle), "{needle}\n{report}");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["autoencoder"].as_array().unwrap().len(), 2);
    assert!(summary["autoencoder"][1]["val_reconstruction_loss"].as_f64().unwrap() > 0.0);
    // Resume: everything is kept.
    let again = run(&a).unwrap().unwrap();
    assert!(again.stages.iter().all(|s| s.reused), "{:?}", again.stages);
    // The printed plan, run by hand, gives the same models.
    let mut b = e.args("by-hand");
    b.pipeline = a.pipeline.clone();
    b.inputs.max_depth = Some(2);
    let lines = print_commands(&Plan::new(&b).unwrap(), &b).unwrap();
    assert!(lines.iter().any(|l| l.contains("--phase autoencoder") && l.contains("autoencoder-01/model.safetensors")));
    // The plan names each job by its pipeline and phase: no derived setting travels as a flag.
    for flag in ["--epochs", "--lr", "--objective", "--corruption", "--decoder", "--probe-epochs", "--regime"] {
        assert!(lines.iter().all(|l| !l.split(' ').any(|w| w == flag)), "{flag} in the plan: {lines:#?}");
    }
    for line in lines {
        execute(&line);
    }
    for dir in ["autoencoder-02".to_string(), format!("autoencoder-finetune-{:02}", best_ae.0)] {
        let f = |r: &str| std::fs::read(e.path(r).join(&dir).join("model.safetensors")).unwrap();
        assert!(f("run") == f("by-hand"), "{dir}");
    }

    // The loop itself pretrained as autoencoders (pipelines/autoencoder.toml's shape).
    let mut c = e.args("loop");
    c.pipeline = Some(e.smoke_with(
        "ae-loop",
        &[("head = \"retrain\"", "head = \"fresh\"\nobjective = \"autoencoder\"\nprobe_epochs = 1"), AUTOENCODER[0]],
    ));
    let err = format!("{:#}", run(&c).unwrap_err());
    assert!(err.contains("[autoencoder]") && err.contains("drop one"), "{err}");
    c.pipeline = Some(e.smoke_with(
        "ae-loop",
        &[
            ("head = \"retrain\"", "head = \"fresh\"\nobjective = \"autoencoder\"\nprobe_epochs = 1"),
            ("[greedy]", "[finetune]\ndepths = \"all\"\nepochs = 1\n\n[greedy]"),
        ],
    ));
    c.inputs.max_depth = Some(2);
    let out = run(&c).unwrap().unwrap();
    assert_eq!(out.stages.len(), 2);
    let h = TrainHistory::read(&e.path("loop/depth-02/train.json")).unwrap();
    assert_eq!(h.pretraining.len(), 1);
    let report = std::fs::read_to_string(e.path("loop/report.md")).unwrap();
    assert!(report.contains("| autoencoder greedy + fine-tuning |") && report.contains("## Reconstruction by depth"));
}
