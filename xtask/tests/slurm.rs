//! `--scheduler slurm` against a real Slurm cluster (`scripts/slurm-local.sh start`, which
//! `.ci/run` runs): chains give the same bytes as a local run, patience stops a chain where
//! a local run stops, a cancelled job is recovered by submitting again, and a sweep runs as
//! independent chains. The cluster tests are `#[ignore]`d, so `cargo test` counts them as
//! ignored, with the reason; `cargo test -p xtask --test slurm -- --ignored` runs them
//! (`.ci/run` starts a cluster and does). Run without a cluster (no `SLURM_CONF`, or
//! `sinfo` fails) they print that they were skipped, unless `LAYERWISE_REQUIRE_SLURM=1`
//! (CI) makes that a failure. The scripts themselves and the refusals are tested without a
//! cluster.
#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use xtask::greedy::run;

/// One chain at a time: the local cluster has 2 CPUs.
static CLUSTER: Mutex<()> = Mutex::new(());

fn cluster() -> Option<std::sync::MutexGuard<'static, ()>> {
    let up = std::env::var_os("SLURM_CONF").is_some()
        && Command::new("timeout").args(["10", "sinfo", "-h"]).output().is_ok_and(|o| o.status.success());
    if !up {
        assert!(
            std::env::var("LAYERWISE_REQUIRE_SLURM").as_deref() != Ok("1"),
            "LAYERWISE_REQUIRE_SLURM=1 but no Slurm cluster answers (SLURM_CONF={:?})",
            std::env::var_os("SLURM_CONF")
        );
        eprintln!("skipped: no Slurm cluster (scripts/slurm-local.sh start, then export SLURM_CONF=...)");
        return None;
    }
    Some(CLUSTER.lock().unwrap_or_else(|e| e.into_inner()))
}

mod common;
use common::{env, Env, PATIENT};

trait Chains {
    fn local(&self, pipeline: &Path, run_dir: &str) -> xtask::local::GreedyOutcome;
    fn xtask(&self, args: &[&str]) -> Output;
    fn greedy_args(&self, pipeline: &Path, run_dir: &str, extra: &[&str]) -> Vec<String>;
    fn greedy(&self, pipeline: &Path, run_dir: &str, extra: &[&str]) -> Output;
}

impl Chains for Env {
    fn local(&self, pipeline: &Path, run_dir: &str) -> xtask::local::GreedyOutcome {
        let mut a = self.args(run_dir);
        a.pipeline = Some(pipeline.to_path_buf());
        run(&a).unwrap().unwrap()
    }
    /// `xtask ARGS` in the temp folder (so the plan's paths are relative to it).
    fn xtask(&self, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_xtask")).args(args).current_dir(self.dir.path()).output().unwrap();
        eprintln!(
            "xtask {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
    fn greedy_args(&self, pipeline: &Path, run_dir: &str, extra: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = ["greedy", "--pipeline"].map(String::from).to_vec();
        v.push(pipeline.to_string_lossy().into_owned());
        for a in
            ["--source", &self.source.to_string_lossy(), "--artifacts", "artifacts", "--run-dir", run_dir, "--plain"]
        {
            v.push(a.into());
        }
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }
    fn greedy(&self, pipeline: &Path, run_dir: &str, extra: &[&str]) -> Output {
        let args = self.greedy_args(pipeline, run_dir, extra);
        self.xtask(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }
}

const SUBMIT: [&str; 5] = ["--scheduler", "slurm", "--submit", "--cpus-per-task", "1"];

fn submit_and_wait(e: &Env, pipeline: &Path, run_dir: &str) -> Output {
    let mut extra = SUBMIT.to_vec();
    extra.push("--wait");
    e.greedy(pipeline, run_dir, &extra)
}

fn depths_with_model(run: &Path) -> Vec<usize> {
    (1..=10).filter(|d| run.join(format!("depth-{d:02}/model.safetensors")).exists()).collect()
}

fn assert_same_models(a: &Path, b: &Path) {
    let (da, db) = (depths_with_model(a), depths_with_model(b));
    assert_eq!(da, db, "{} and {} hold other depths", a.display(), b.display());
    for d in da {
        let f = format!("depth-{d:02}/model.safetensors");
        assert!(
            std::fs::read(a.join(&f)).unwrap() == std::fs::read(b.join(&f)).unwrap(),
            "depth {d} checkpoints differ"
        );
    }
}

/// Files a killed or cancelled writer could leave: temp files (`.NAME.tmp-PID`).
fn leftovers(run: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![run.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if e.file_name().to_string_lossy().contains(".tmp-") {
                found.push(p);
            }
        }
    }
    found
}

#[test]
fn job_scripts_run_exactly_the_printed_commands_in_a_chain() {
    // No cluster needed: the scripts are written without --submit.
    let e = env();
    let smoke = xtask::repo_root().join("pipelines/smoke.toml");
    let out =
        e.greedy(&smoke, "runs/smoke", &["--scheduler", "slurm", "--partition", "cpu", "--sbatch-arg=--qos=short"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("slurm/submit.sh"), "says how to submit");
    let printed = e.greedy(&smoke, "runs/smoke", &["--print-commands"]);
    let printed = String::from_utf8_lossy(&printed.stdout).into_owned();
    let stage_lines: Vec<&str> = printed.lines().filter(|l| l.starts_with("layerwise-")).collect();
    let slurm = e.path("runs/smoke/slurm");
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(&slurm)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sh") && !p.ends_with("submit.sh"))
        .collect();
    scripts.sort();
    assert_eq!(scripts.len(), stage_lines.len(), "one job per printed stage command");
    for (script, line) in scripts.iter().zip(&stage_lines) {
        let text = std::fs::read_to_string(script).unwrap();
        assert!(text.lines().any(|l| l == *line), "{} does not run `{line}`:\n{text}", script.display());
        assert!(text.contains("#SBATCH --partition=cpu") && text.contains("#SBATCH --qos=short"), "{text}");
        assert!(!text.contains("--gres"), "no GPU asked on the CPU");
    }
    // The chain: training depth 2 waits for training depth 1 only, never for an evaluation;
    // the report waits for everything.
    let submit = std::fs::read_to_string(slurm.join("submit.sh")).unwrap();
    let dep = |label: &str| {
        let line = submit.lines().find(|l| l.starts_with(&format!("submit smoke {label} "))).unwrap();
        line.split("--dependency=afterok:").nth(1).unwrap_or("").to_string()
    };
    assert_eq!(dep("train-02"), "$j_train_01");
    assert_eq!(dep("evaluate-02"), "$j_train_02");
    for j in ["prepare", "train_01", "evaluate_01", "train_03", "evaluate_03"] {
        assert!(dep("report").contains(&format!("$j_{j}")), "report waits for {j}");
    }
    // The gate guards training and evaluation.
    let train2 = std::fs::read_to_string(slurm.join("04-train-02.sh")).unwrap();
    assert!(train2.contains("xtask gate --run-dir runs/smoke --first 1 --depth 2"), "{train2}");
    // Every stage the jobs call is in the job's bin folder, as a name of the xtask binary.
    for program in xtask::plan::Program::ALL {
        assert!(slurm.join("bin").join(program.name()).exists(), "{}", program.name());
    }
    // The binary called by a stage's name is that stage.
    let version = Command::new(slurm.join("bin/layerwise-report")).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).contains("layerwise-report"));
}

#[test]
fn gpu_jobs_ask_for_a_gpu_on_their_partition() {
    let e = env();
    let smoke =
        e.smoke_with("gpu", &[("[greedy]", "[slurm]\npartition = \"cpu\"\ngpu_partition = \"gpu\"\n\n[greedy]")]);
    let out = e.greedy(&smoke, "runs/gpu", &["--scheduler", "slurm", "--device", "cuda"]);
    assert!(out.status.success());
    let slurm = e.path("runs/gpu/slurm");
    let train = std::fs::read_to_string(slurm.join("02-train-01.sh")).unwrap();
    assert!(train.contains("#SBATCH --gres=gpu:1") && train.contains("#SBATCH --partition=gpu"), "{train}");
    assert!(train.contains("--device cuda"), "{train}");
    let prepare = std::fs::read_to_string(slurm.join("01-prepare.sh")).unwrap();
    assert!(!prepare.contains("--gres") && prepare.contains("#SBATCH --partition=cpu"), "{prepare}");
}

#[test]
fn bad_scheduler_options_are_refused() {
    let e = env();
    let smoke = xtask::repo_root().join("pipelines/smoke.toml");
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();
    let o = e.greedy(&smoke, "runs/x", &["--scheduler", "pbs"]);
    assert!(!o.status.success() && stderr(&o).contains("slurm"), "unknown scheduler");
    let o = e.greedy(&smoke, "runs/x", &["--submit"]);
    assert!(!o.status.success() && stderr(&o).contains("--scheduler slurm"));
    let o = e.greedy(&smoke, "runs/x", &["--scheduler", "slurm", "--wait"]);
    assert!(!o.status.success() && stderr(&o).contains("--submit"));
    let o = e.greedy(&smoke, "runs/x", &["--scheduler", "slurm", "--cpus-per-task", "0"]);
    assert!(!o.status.success() && stderr(&o).contains("cpus_per_task"));
    // --submit without sbatch on PATH says what to install.
    let args = e.greedy_args(&smoke, "runs/x", &["--scheduler", "slurm", "--submit"]);
    let empty = e.path("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(&args)
        .current_dir(e.dir.path())
        .env("PATH", &empty)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("sbatch") && stderr(&o).contains("slurm-client"), "{}", stderr(&o));
}

#[test]
#[ignore = "needs a Slurm cluster: scripts/slurm-local.sh start, then cargo test -p xtask --test slurm -- --ignored (.ci/run does both)"]
fn smoke_chain_gives_the_local_bytes_and_resumes() {
    let Some(_c) = cluster() else { return };
    let e = env();
    let smoke = xtask::repo_root().join("pipelines/smoke.toml");
    e.local(&smoke, "local");
    let out = submit_and_wait(&e, &smoke, "chain");
    assert!(out.status.success());
    let chain = e.path("chain");
    assert_same_models(&e.path("local"), &chain);
    assert_eq!(depths_with_model(&chain), [1, 2, 3]);
    for f in ["report.md", "accuracy.svg", "summary.json", "depth-03/eval.json"] {
        assert!(chain.join(f).exists(), "{f}");
    }
    // Where each depth ran is recorded and reported.
    let h = layerwise_core::metrics::TrainHistory::read(&chain.join("depth-02/train.json")).unwrap();
    assert!(h.host.is_some() && h.slurm_job_id.is_some(), "{h:?}");
    let report = std::fs::read_to_string(chain.join("report.md")).unwrap();
    assert!(report.contains("| host |") && report.contains(h.host.as_deref().unwrap()));
    // One log per job.
    let logs = std::fs::read_dir(chain.join("slurm/logs")).unwrap().count();
    assert_eq!(logs, 7, "3 × (train, evaluate), report (the local run prepared the dataset)");
    // Submitting again: every depth is complete, only the report is redone.
    let again = submit_and_wait(&e, &smoke, "chain");
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("wrote 1 Slurm job scripts (0 to train)"));
    assert!(leftovers(&chain).is_empty(), "{:?}", leftovers(&chain));
}

#[test]
#[ignore = "needs a Slurm cluster: scripts/slurm-local.sh start, then cargo test -p xtask --test slurm -- --ignored (.ci/run does both)"]
fn patience_stops_a_chain_at_the_local_depth() {
    let Some(_c) = cluster() else { return };
    let e = env();
    // Nothing improves after depth 1, so patience 1 stops at depth 2 of 5.
    let p = e.smoke_with("patient", &PATIENT);
    let local = e.local(&p, "local");
    assert!(local.stopped_early);
    let out = submit_and_wait(&e, &p, "chain");
    assert!(out.status.success());
    assert_same_models(&e.path("local"), &e.path("chain"));
    // The jobs past the stop ended at once, successfully, saying why.
    let stop = local.depths.last().unwrap().depth;
    let log = std::fs::read_dir(e.path("chain/slurm/logs"))
        .unwrap()
        .flatten()
        .find(|f| f.file_name().to_string_lossy().starts_with(&format!("train-{:02}-", stop + 1)))
        .unwrap();
    let text = std::fs::read_to_string(log.path()).unwrap();
    assert!(text.contains("stopped after depth") && !text.contains("wrote"), "{text}");
    let local_report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(e.path("local/summary.json")).unwrap()).unwrap();
    let chain_report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(e.path("chain/summary.json")).unwrap()).unwrap();
    assert_eq!(local_report["best_depth"], chain_report["best_depth"]);
    assert_eq!(local_report["depths"].as_array().unwrap().len(), chain_report["depths"].as_array().unwrap().len());
}

fn squeue_state(id: &str) -> String {
    let o = Command::new("squeue").args(["-h", "-t", "all", "-o", "%T", "-j", id]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
#[ignore = "needs a Slurm cluster: scripts/slurm-local.sh start, then cargo test -p xtask --test slurm -- --ignored (.ci/run does both)"]
fn a_cancelled_training_job_is_recovered_by_submitting_again() {
    let Some(_c) = cluster() else { return };
    let e = env();
    // Long enough epochs that depth 2's training is caught running.
    let p = e.smoke_with("slow", &[("epochs = 1 ", "epochs = 40 "), ("width = 64 ", "width = 256 ")]);
    let out = e.greedy(&p, "chain", &SUBMIT);
    assert!(out.status.success());
    let jobs = String::from_utf8_lossy(&out.stdout).into_owned();
    let id = |label: &str| {
        jobs.lines().find(|l| l.contains(&format!(" {label} "))).unwrap().rsplit(' ').next().unwrap().to_string()
    };
    let (train2, report) = (id("train-02"), id("report"));
    let started = Instant::now();
    while squeue_state(&train2) != "RUNNING" {
        assert!(started.elapsed() < Duration::from_secs(120), "train-02 never ran: {}", squeue_state(&train2));
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(Command::new("scancel").arg(&train2).status().unwrap().success());
    // The jobs after it can never run: Slurm cancels them (--kill-on-invalid-dep).
    let started = Instant::now();
    while squeue_state(&report) != "CANCELLED" {
        assert!(started.elapsed() < Duration::from_secs(120), "report still {}", squeue_state(&report));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!e.path("chain/depth-03/model.safetensors").exists());
    // Submitting the same command again finishes the run: depth 1 is kept.
    let depth1 = std::fs::metadata(e.path("chain/depth-01/model.safetensors")).unwrap().modified().unwrap();
    let mut extra = SUBMIT.to_vec();
    extra.push("--wait");
    let again = e.greedy(&p, "chain", &extra);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("(2 to train)"));
    assert_eq!(std::fs::metadata(e.path("chain/depth-01/model.safetensors")).unwrap().modified().unwrap(), depth1);
    e.local(&p, "local");
    assert_same_models(&e.path("local"), &e.path("chain"));
    assert!(leftovers(&e.path("chain")).is_empty(), "{:?}", leftovers(&e.path("chain")));
}

#[test]
#[ignore = "needs a Slurm cluster: scripts/slurm-local.sh start, then cargo test -p xtask --test slurm -- --ignored (.ci/run does both)"]
fn a_failed_job_is_named_with_its_log() {
    let Some(_c) = cluster() else { return };
    let e = env();
    // A learning rate that makes the loss explode: training depth 1 fails (NaN loss).
    let p = e.smoke_with("explodes", &[("lr = 0.001", "lr = 1e30")]);
    let mut extra = SUBMIT.to_vec();
    extra.push("--wait");
    let out = e.greedy(&p, "chain", &extra);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(err.contains("train-01") && err.contains("FAILED") && err.contains("train-01-"), "{err}");
    assert!(err.contains("never ran"), "{err}");
}

#[test]
#[ignore = "needs a Slurm cluster: scripts/slurm-local.sh start, then cargo test -p xtask --test slurm -- --ignored (.ci/run does both)"]
fn a_sweep_runs_as_independent_chains_and_aggregates() {
    let Some(_c) = cluster() else { return };
    let e = env();
    let smoke = xtask::repo_root().join("pipelines/smoke.toml");
    let args = [
        "sweep",
        "--pipeline",
        &smoke.to_string_lossy(),
        "--seeds",
        "0-1",
        "--source",
        &e.source.to_string_lossy(),
        "--artifacts",
        "artifacts",
        "--sweep-dir",
        "sweep",
        "--max-depth",
        "2",
        "--scheduler",
        "slurm",
        "--submit",
        "--wait",
        "--cpus-per-task",
        "1",
    ];
    let out = e.xtask(&args);
    assert!(out.status.success());
    let sweep = e.path("sweep");
    for run in ["smoke-seed0", "smoke-seed1"] {
        assert_eq!(depths_with_model(&sweep.join(run)), [1, 2], "{run}");
    }
    // Two chains: one shared prepare job, and seed 1's first depth waits for nothing of seed 0's.
    let submit = std::fs::read_to_string(sweep.join("slurm/submit.sh")).unwrap();
    assert_eq!(submit.lines().filter(|l| l.starts_with("submit ") && l.contains(" prepare ")).count(), 1);
    let train1 = submit.lines().find(|l| l.starts_with("submit smoke-seed1 train-01 ")).unwrap();
    assert!(train1.ends_with("--dependency=afterok:$j_r0_prepare"), "{train1}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sweep.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["schema"], "layerwise-sweep-summary");
    assert_eq!(summary["groups"][0]["runs"].as_array().unwrap().len(), 2);
    assert_eq!(summary["groups"][0]["depths"][1]["val_accuracy"]["n"], 2);
    assert!(sweep.join("report.md").exists() && sweep.join("accuracy.svg").exists());
    // The two seeds differ, and the local sweep gives the same bytes.
    let m = |s: &str| std::fs::read(sweep.join(s).join("depth-01/model.safetensors")).unwrap();
    assert!(m("smoke-seed0") != m("smoke-seed1"));
    let local = e.xtask(&args[..13]);
    assert!(local.status.success());
    // (the local sweep reused the complete runs: same folder, nothing retrained)
    assert!(String::from_utf8_lossy(&local.stderr).contains("complete already"));
}

#[test]
#[ignore = "needs a Slurm cluster: scripts/slurm-local.sh start, then cargo test -p xtask --test slurm -- --ignored (.ci/run does both)"]
fn finetune_and_baseline_jobs_give_the_local_bytes() {
    let Some(_c) = cluster() else { return };
    let e = env();
    let p = e.smoke_with(
        "stages",
        &[(
            "[greedy]",
            "[finetune]\ndepths = \"best\"\nepochs = 2\n\n[baseline]\ndepths = \"all\"\nepochs = 1\n\n[greedy]",
        )],
    );
    let local = e.local(&p, "local");
    let out = submit_and_wait(&e, &p, "chain");
    assert!(out.status.success());
    let stages = |run: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(e.path(run))
            .unwrap()
            .flatten()
            .map(|f| f.file_name().to_string_lossy().into_owned())
            .filter(|n| {
                (n.starts_with("finetune-") || n.starts_with("baseline-"))
                    && e.path(run).join(n).join("model.safetensors").exists()
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(stages("chain"), stages("local"));
    assert_eq!(stages("local").iter().filter(|s| s.starts_with("finetune-")).count(), 1, "only the best depth");
    assert_eq!(local.stages.len(), 4);
    for s in stages("local") {
        let f = |run: &str| std::fs::read(e.path(run).join(&s).join("model.safetensors")).unwrap();
        assert!(f("local") == f("chain"), "{s} differs");
    }
    // The fine-tuning jobs of the other depths ended at once, saying why.
    let logs: Vec<String> = std::fs::read_dir(e.path("chain/slurm/logs"))
        .unwrap()
        .flatten()
        .map(|f| std::fs::read_to_string(f.path()).unwrap())
        .filter(|t| t.contains("layerwise job finetune-"))
        .collect();
    assert_eq!(logs.len(), 3);
    assert_eq!(logs.iter().filter(|t| t.contains("is not the best greedy depth")).count(), 2);
}

#[test]
#[ignore = "needs a Slurm cluster: scripts/slurm-local.sh start, then cargo test -p xtask --test slurm -- --ignored (.ci/run does both)"]
fn an_autoencoder_loop_and_its_fine_tuning_chain_to_the_local_bytes() {
    let Some(_c) = cluster() else { return };
    let e = env();
    let p = e.smoke_with(
        "autoencoder",
        &[
            ("max_depth = 3", "max_depth = 2"),
            (
                "[greedy]",
                "[autoencoder]\nepochs = 1\nprobe_epochs = 1\n\n[finetune]\ndepths = \"best\"\nepochs = 1\n\n[greedy]",
            ),
        ],
    );
    let local = e.local(&p, "local");
    let out = submit_and_wait(&e, &p, "chain");
    assert!(out.status.success());
    assert_same_models(&e.path("local"), &e.path("chain"));
    for s in &local.stages {
        let f = layerwise_core::run::phase_dir(Path::new(""), s.stage, s.depth).join("model.safetensors");
        let (a, b) = (std::fs::read(e.path("local").join(&f)).unwrap(), std::fs::read(e.path("chain").join(&f)));
        assert!(b.is_ok_and(|b| b == a), "{}: the chain's differs from the local run's", f.display());
    }
    // The fine-tuning jobs of depths not best in their loop ended at once.
    let ft = std::fs::read_dir(e.path("chain"))
        .unwrap()
        .flatten()
        .filter(|d| d.file_name().to_string_lossy().starts_with("autoencoder-finetune-"));
    assert_eq!(ft.count(), 1, "only the autoencoder loop's best depth is fine-tuned");
}

#[test]
#[ignore = "needs a Slurm cluster: scripts/slurm-local.sh start, then cargo test -p xtask --test slurm -- --ignored (.ci/run does both)"]
fn a_decoupled_run_is_one_job_and_gives_the_local_bytes() {
    let Some(_c) = cluster() else { return };
    let e = env();
    let pipeline = xtask::repo_root().join("pipelines/decoupled-smoke.toml");
    e.local(&pipeline, "local");
    // Two groups as threads in one job; in a build with the `mpi` feature (scripts/mpi-check.sh
    // runs this test in one), two MPI ranks: one job of 2 tasks, mpirun inside the allocation.
    let mut extra = SUBMIT.to_vec();
    extra.extend(["--wait", "--groups", "2"]);
    if cfg!(feature = "mpi") {
        extra.extend(["--launcher", "mpi"]);
    }
    let out = e.greedy(&pipeline, "chain", &extra);
    assert!(out.status.success());
    let chain = e.path("chain");
    assert_same_models(&e.path("local"), &chain);
    let script = std::fs::read_dir(chain.join("slurm"))
        .unwrap()
        .flatten()
        .find(|f| f.file_name().to_string_lossy().contains("decoupled"))
        .map(|f| std::fs::read_to_string(f.path()).unwrap())
        .unwrap();
    let tasks = if cfg!(feature = "mpi") { "--ntasks=2" } else { "--ntasks=1" };
    assert!(script.contains(tasks) && script.contains("--decoupled"), "{script}");
    assert!(leftovers(&chain).is_empty(), "{:?}", leftovers(&chain));
}
