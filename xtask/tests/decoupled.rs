//! Decoupled greedy learning through `cargo xtask greedy`: the synchronous schedule gives
//! the same bytes however its stages are grouped (and resumed), the asynchronous one
//! records what its buffers did, the printed plan shows the decoupled job (and the mpirun
//! line), and wrong settings are refused by name. SIGKILLs at random moments are the chaos
//! harness's (`decoupled` scenario, xtask/tests/robustness.rs); MPI ranks are checked by
//! scripts/mpi-check.sh in .ci/run, whose build has the `mpi` feature.
#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use xtask::greedy::run;
use xtask::plan::Plan;
use xtask::print::commands;

mod common;

fn decoupled_smoke(e: &common::Env, run_dir: &str, edits: &[(&str, &str)]) -> xtask::args::GreedyArgs {
    let mut a = e.args(run_dir);
    a.pipeline = Some(e.pipeline_with("decoupled-smoke", run_dir, edits));
    a
}

fn model(e: &common::Env, run_dir: &str, d: usize) -> Vec<u8> {
    std::fs::read(e.path(&format!("{run_dir}/depth-{d:02}/model.safetensors"))).unwrap()
}

#[test]
fn synchronous_groups_give_the_bytes_of_one_group_and_resume_across_groupings() {
    let e = common::env();
    let one = decoupled_smoke(&e, "one", &[]);
    let out = run(&one).unwrap().unwrap();
    assert_eq!(out.depths.len(), 3);
    let mut three = decoupled_smoke(&e, "three", &[]);
    three.groups = Some(3);
    run(&three).unwrap().unwrap();
    for d in 1..=3 {
        assert!(model(&e, "one", d) == model(&e, "three", d), "depth {d}: 1 group and 3 groups differ");
        let meta =
            layerwise_core::checkpoint::read_checkpoint_meta(&e.path(&format!("one/depth-{d:02}/model.safetensors")))
                .unwrap();
        assert_eq!(meta.schedule.as_deref(), Some("decoupled sync"));
        assert_eq!(meta.depth, d);
    }
    // Each depth names its parent, the depth before it, as sequential growing does.
    let sha1 = layerwise_core::hash::sha256_file(&e.path("one/depth-01/model.safetensors")).unwrap();
    let meta2 = layerwise_core::checkpoint::read_checkpoint_meta(&e.path("one/depth-02/model.safetensors")).unwrap();
    assert_eq!(meta2.parent_sha256, Some(sha1));
    // decoupled.json says how the groups ran: 2 links' frames and bytes.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(e.path("three/decoupled.json")).unwrap()).unwrap();
    let groups = report["group_reports"].as_array().unwrap();
    assert_eq!(groups.len(), 3);
    assert!(groups[0]["sent"]["bytes"].as_u64().unwrap() > 0 && groups[2]["sent"]["frames"].as_u64().unwrap() == 0);
    assert_eq!(groups[1]["received"]["frames"], groups[0]["sent"]["frames"]);
    // No state is left once the checkpoints are written, and a rerun keeps them.
    for d in 1..=3 {
        let names: Vec<String> = std::fs::read_dir(e.path(&format!("three/depth-{d:02}")))
            .unwrap()
            .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.starts_with(".decoupled-e")), "{names:?}");
    }
    let again = run(&three).unwrap().unwrap();
    assert!(again.depths.iter().all(|d| d.reused));

    // Stopped after epoch 1 with 3 groups, resumed with 2: the uninterrupted bytes.
    let mut stopped = decoupled_smoke(&e, "stopped", &[]);
    stopped.groups = Some(3);
    std::env::set_var(layerwise_train::STOP_AFTER_EPOCH_ENV, "1");
    let first = run(&stopped);
    std::env::remove_var(layerwise_train::STOP_AFTER_EPOCH_ENV);
    assert!(format!("{:#}", first.unwrap_err()).contains("stopped after epoch 1"));
    assert!(e.path("stopped/depth-03/.decoupled-e001.bin").is_file());
    stopped.groups = Some(2);
    run(&stopped).unwrap().unwrap();
    for d in 1..=3 {
        assert!(model(&e, "one", d) == model(&e, "stopped", d), "depth {d}: the resumed run differs");
    }
}

#[test]
fn the_asynchronous_mode_trains_every_stage_and_records_its_buffers() {
    let e = common::env();
    let mut a = decoupled_smoke(&e, "async", &[("mode = \"sync\"", "mode = \"async\"\nbuffer = 3\nreuse = 2")]);
    a.groups = Some(3);
    let out = run(&a).unwrap().unwrap();
    assert_eq!(out.depths.len(), 3);
    let meta = layerwise_core::checkpoint::read_checkpoint_meta(&e.path("async/depth-03/model.safetensors")).unwrap();
    assert_eq!(meta.schedule.as_deref(), Some("decoupled async, buffer 3, reuse 2"));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(e.path("async/decoupled.json")).unwrap()).unwrap();
    for g in 1..3 {
        let replay = &report["group_reports"][g]["received"]["replay"];
        // Every step sampled a batch; some were reused or pushed out when a stage ran ahead.
        let steps = report["group_reports"][g]["steps"].as_u64().unwrap();
        assert_eq!(replay["sampled"].as_u64().unwrap(), steps, "{replay}");
        assert!(replay["pushed"].as_u64().unwrap() > 0, "{replay}");
    }
}

#[test]
fn the_printed_plan_shows_the_decoupled_job_and_the_mpirun_line() {
    let e = common::env();
    let mut a = decoupled_smoke(&e, "print", &[]);
    let lines = commands(&Plan::new(&a).unwrap(), &a).unwrap();
    let train: Vec<&String> = lines.iter().filter(|l| l.starts_with("layerwise-train")).collect();
    assert_eq!(train.len(), 1, "{lines:#?}");
    assert!(train[0].ends_with("--decoupled"), "{}", train[0]);
    assert_eq!(lines.iter().filter(|l| l.starts_with("layerwise-evaluate")).count(), 3);
    assert!(lines.iter().any(|l| l.starts_with("# decoupled: every depth at once, decoupled sync (1 group")));
    a.groups = Some(3);
    a.launcher = Some(layerwise_core::decoupled::Launcher::Mpi);
    let lines = commands(&Plan::new(&a).unwrap(), &a).unwrap();
    let mpi = lines.iter().find(|l| l.starts_with("mpirun")).unwrap();
    assert!(
        mpi.starts_with("mpirun -n 3 --oversubscribe layerwise-train ") && mpi.contains("--groups 3 --launcher mpi")
    );
}

#[test]
fn wrong_decoupled_settings_are_refused_by_name() {
    let e = common::env();
    let mut a = decoupled_smoke(&e, "wrong", &[]);
    a.groups = Some(4);
    assert!(format!("{:#}", Plan::new(&a).unwrap_err()).contains("`decoupled.groups` is 4"));
    // --groups on a sequential pipeline.
    let mut s = e.args("sequential");
    s.groups = Some(2);
    let msg = format!("{:#}", Plan::new(&s).unwrap_err());
    assert!(msg.contains("--groups and --launcher") && msg.contains("schedule = \"decoupled\""), "{msg}");
    // An MLP pipeline asking for the decoupled schedule.
    let p = e.smoke_with("mlp-decoupled", &[("max_depth = 3", "max_depth = 3\nschedule = \"decoupled\"")]);
    let msg = format!("{:#}", layerwise_core::pipeline::Pipeline::load(&p).unwrap_err());
    assert!(msg.contains("kind = \"cnn\""), "{msg}");
    // The MPI launcher in a build without it says how to build one.
    if !cfg!(feature = "mpi") {
        let mut m = decoupled_smoke(&e, "no-mpi", &[("launcher = \"threads\"", "launcher = \"mpi\"")]);
        m.groups = Some(3);
        let err = format!("{:#}", run(&m).unwrap_err());
        assert!(err.contains("--features mpi") || err.contains("mpirun"), "{err}");
    }
}
