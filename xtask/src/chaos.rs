//! `cargo xtask chaos`: fault injection. Runs a greedy pipeline through the xtask binary,
//! kills it with SIGKILL at seeded random moments (during prepare, training, evaluation,
//! the report, or an atomic write), reruns the same command each time, and checks that
//! every run that completes holds exactly what an uninterrupted run holds, and nothing
//! else: no temp file, no training state, no empty folder.
//!
//! Scenarios: the smoke pipeline (3 depths of 1 epoch: kills land in every stage), a
//! longer one (8 epochs of width 128 per depth: kills land between and inside epochs, so
//! depths resume mid-way from their training state), a convolutional one (two conv
//! stages, one after psi, 3 epochs each, then the best fine-tuned end to end), and the
//! decoupled schedule of three stages in 3 groups, as threads (`decoupled`) and, in a
//! build with the `mpi` feature, as MPI ranks under mpirun (`decoupled-mpi`; run only
//! when named).

use anyhow::{bail, Context, Result};
use layerwise_core::mix_seed;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// `cargo xtask chaos` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ChaosArgs {
    /// SIGKILLs per scenario.
    #[arg(long, default_value_t = 20)]
    pub kills: usize,
    /// Seed of the kill moments.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Work in this folder and keep it (default: a temp folder, removed at the end).
    #[arg(long)]
    pub keep: Option<PathBuf>,
    /// Only this scenario (smoke, resume, cnn, decoupled or decoupled-mpi; default: all
    /// but decoupled-mpi).
    #[arg(long)]
    pub scenario: Option<String>,
}

/// What one scenario found.
#[derive(Debug, Clone, Default)]
pub struct ChaosOutcome {
    /// Kills sent while the run was going on.
    pub kills: usize,
    /// Completed runs compared with the reference.
    pub rounds: usize,
    /// Reruns (killed ones included) that continued a depth mid-way from its training state.
    pub resumed_mid_depth: usize,
    /// Files that differ from the reference (or are missing).
    pub differences: Vec<String>,
    /// What was left behind: temp files, training states, empty folders.
    pub leftovers: Vec<String>,
}

struct Scenario {
    name: &'static str,
    pipeline: PathBuf,
    /// Arguments after the pipeline's (`--groups 3`).
    extra: &'static [&'static str],
}

/// Keys whose values are wall times, machine names or the run folder's name: they differ
/// between any two runs; and the seal of a metrics document, which hashes them.
const TIMING_KEYS: [&str; 8] = [
    "seconds",
    "samples_per_second",
    "frozen_features_seconds",
    "total_seconds",
    "host",
    "slurm_job_id",
    "run",
    "content_sha256",
];

fn strip_timing(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for k in TIMING_KEYS {
                map.remove(k);
            }
            map.values_mut().for_each(strip_timing);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_timing),
        _ => {}
    }
}

/// Files below `dir`, relative, sorted; skipping the lock file and scheduler folders.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if e.file_name() != layerwise_core::run::LOCK_FILE {
                out.push(p.strip_prefix(dir).map(Path::to_path_buf).unwrap_or(p));
            }
        }
    }
    out.sort();
    out
}

/// Differences between a completed run and the reference.
fn compare(reference: &Path, run: &Path) -> Vec<String> {
    let mut diffs = Vec::new();
    let (a, b) = (files(reference), files(run));
    if a != b {
        diffs.push(format!("{}: other files than the reference ({a:?} vs {b:?})", run.display()));
    }
    for f in &a {
        let (x, y) = (reference.join(f), run.join(f));
        let (Ok(bx), Ok(by)) = (std::fs::read(&x), std::fs::read(&y)) else {
            diffs.push(format!("{}: missing", y.display()));
            continue;
        };
        let name = f.to_string_lossy();
        let same = if name.ends_with(layerwise_train::decoupled::DECOUPLED_FILE) {
            true // how the groups ran this time: wall times, steps since the last resume
        } else if name.ends_with(".json") {
            let parse = |b: &[u8]| -> Option<serde_json::Value> {
                let mut v = serde_json::from_slice(b).ok()?;
                strip_timing(&mut v);
                Some(v)
            };
            parse(&bx).is_some() && parse(&bx) == parse(&by)
        } else if name.ends_with("report.md") || name.ends_with(".svg") {
            true // they show wall times; summary.json carries the same numbers
        } else {
            bx == by
        };
        if !same {
            diffs.push(format!("{}: differs from the uninterrupted run's", y.display()));
        }
    }
    diffs
}

/// Temp files, training states and empty folders below `dir`.
fn leftovers(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        let mut empty = true;
        for e in entries.flatten() {
            empty = false;
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                stack.push(p);
            } else if name.contains(".tmp")
                || name == layerwise_core::run::STATE_FILE
                || name.starts_with(".decoupled-e")
            {
                found.push(p.display().to_string());
            }
        }
        if empty && d != dir {
            found.push(format!("{} (empty folder)", d.display()));
        }
    }
    found
}

fn greedy(exe: &Path, work: &Path, s: &Scenario, source: &Path, artifacts: &str, run: &str) -> Command {
    let mut c = Command::new(exe);
    c.arg("greedy")
        .arg("--pipeline")
        .arg(&s.pipeline)
        .arg("--source")
        .arg(source)
        .arg("--artifacts")
        .arg(work.join(artifacts))
        .arg("--run-dir")
        .arg(work.join(run))
        .arg("--plain")
        .args(s.extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

fn scenario(exe: &Path, work: &Path, source: &Path, s: &Scenario, index: u64, a: &ChaosArgs) -> Result<ChaosOutcome> {
    let reference = format!("{}-reference", s.name);
    // Each scenario prepares its own datasets: artifacts folders of its own.
    let (reference_artifacts, chaos_artifacts) =
        (format!("{}-reference-artifacts", s.name), format!("{}-chaos-artifacts", s.name));
    let t0 = Instant::now();
    let status = greedy(exe, work, s, source, &reference_artifacts, &reference).status()?;
    if !status.success() {
        bail!("the uninterrupted {} run failed", s.name);
    }
    let span = t0.elapsed();
    let mut out = ChaosOutcome::default();
    let run = format!("{}-chaos", s.name);
    let mut attempt = 0u64;
    while out.kills < a.kills {
        let mut child = greedy(exe, work, s, source, &chaos_artifacts, &run).stderr(Stdio::piped()).spawn()?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(mix_seed(a.seed, &[index, attempt]));
        attempt += 1;
        let delay = span.mul_f64(rng.gen_range(0.0..1.0));
        std::thread::sleep(delay);
        if child.try_wait()?.is_none() {
            child.kill()?; // SIGKILL
            out.kills += 1;
        }
        // (its log is small: a few lines per epoch, well within a pipe's buffer)
        let log = child.wait_with_output()?.stderr;
        let said = String::from_utf8_lossy(&log);
        if said.contains("resuming at epoch") || said.contains("resuming every stage") {
            out.resumed_mid_depth += 1;
        }
        if attempt > 20 * a.kills as u64 + 20 {
            bail!("the {} run kept finishing before a kill could land", s.name);
        }
        // Every few kills, let a rerun finish and compare, then start over.
        let finish = out.kills == a.kills || rng.gen_ratio(1, 8);
        if finish {
            let done = greedy(exe, work, s, source, &chaos_artifacts, &run).stderr(Stdio::piped()).output()?;
            let said = String::from_utf8_lossy(&done.stderr);
            if said.contains("resuming at epoch") || said.contains("resuming every stage") {
                out.resumed_mid_depth += 1;
            }
            if !done.status.success() {
                out.differences.push(format!("a rerun after {} kills failed", out.kills));
            }
            out.rounds += 1;
            out.differences.extend(compare(&work.join(&reference), &work.join(&run)));
            out.differences.extend(compare(&work.join(&reference_artifacts), &work.join(&chaos_artifacts)));
            out.leftovers.extend(leftovers(&work.join(&run)));
            out.leftovers.extend(leftovers(&work.join(&chaos_artifacts)));
            std::fs::remove_dir_all(work.join(&run)).context("cannot start a new round")?;
            std::fs::remove_dir_all(work.join(&chaos_artifacts)).context("cannot start a new round")?;
        }
    }
    Ok(out)
}

/// The convolutional scenario's pipeline: small enough for many kills, long enough (3
/// epochs a stage) for kills inside a depth.
const CNN_PIPELINE: &str = r#"name = "chaos-cnn"
[data]
normalize = "standardize"
val_fraction = 0.2
limit_train = 500
limit_test = 100
[model]
kind = "cnn"
stages = [{ out = 4 }, { out = 8, downsample = "psi" }]
[train]
epochs = 3
batch_size = 50
optimizer = "sgd"
momentum = 0.9
lr = 0.05
label_smoothing = 0.1
seed = 0
[greedy]
max_depth = 2
evaluate = "test"
[finetune]
depths = "best"
epochs = 2
lr = 0.01
"#;

/// The decoupled scenarios' pipeline: three stages at once, 6 epochs each (kills land
/// between and inside epochs).
const DECOUPLED_PIPELINE: &str = r#"name = "chaos-decoupled"
[data]
normalize = "standardize"
val_fraction = 0.2
limit_train = 1000
limit_test = 100
[model]
kind = "cnn"
stages = [{ out = 4 }, { out = 8, downsample = "maxpool" }, { out = 8, downsample = "psi" }]
[train]
epochs = 6
batch_size = 50
optimizer = "sgd"
momentum = 0.9
lr = 0.05
label_smoothing = 0.1
seed = 0
[greedy]
max_depth = 3
evaluate = "test"
schedule = "decoupled"
"#;

/// Run the chaos test; fails on any difference or leftover.
pub fn run(a: &ChaosArgs) -> Result<Vec<(String, ChaosOutcome)>> {
    let temp;
    let work = match &a.keep {
        Some(p) => {
            std::fs::create_dir_all(p)?;
            p.clone()
        }
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let exe = std::env::current_exe().context("cannot locate the xtask binary")?;
    let source = layerwise_testkit::synthetic::write_folder(&work.join("source"), false, 1000)?;
    let smoke = crate::repo_root().join("pipelines/smoke.toml");
    let text = std::fs::read_to_string(&smoke)?;
    let longer = work.join("chaos-resume.toml");
    let edited = text
        .replace("name = \"smoke\"", "name = \"chaos-resume\"")
        .replace("epochs = 1 ", "epochs = 8 ")
        .replace("width = 64 ", "width = 128 ");
    if edited == text {
        bail!("internal: pipelines/smoke.toml no longer has the keys chaos edits");
    }
    std::fs::write(&longer, edited)?;
    // Convolutional stages (one with psi), grown, then the best one fine-tuned end to end:
    // kills land in conv epochs and their saved states, and in the fine-tuning.
    let cnn = work.join("chaos-cnn.toml");
    std::fs::write(&cnn, CNN_PIPELINE)?;
    let decoupled = work.join("chaos-decoupled.toml");
    std::fs::write(&decoupled, DECOUPLED_PIPELINE)?;
    let scenarios = [
        Scenario { name: "smoke", pipeline: smoke, extra: &[] },
        Scenario { name: "resume", pipeline: longer, extra: &[] },
        Scenario { name: "cnn", pipeline: cnn, extra: &[] },
        Scenario { name: "decoupled", pipeline: decoupled.clone(), extra: &["--groups", "3"] },
        Scenario { name: "decoupled-mpi", pipeline: decoupled, extra: &["--groups", "3", "--launcher", "mpi"] },
    ];
    if let Some(name) = &a.scenario {
        if !scenarios.iter().any(|s| s.name == name) {
            bail!("no chaos scenario `{name}`: use smoke, resume, cnn, decoupled or decoupled-mpi");
        }
    }
    let mut results = Vec::new();
    let mut failed = false;
    for (i, s) in scenarios.iter().enumerate() {
        let chosen = match a.scenario.as_deref() {
            Some(n) => n == s.name,
            None => s.name != "decoupled-mpi",
        };
        if !chosen {
            continue;
        }
        let t = Instant::now();
        let o = scenario(&exe, &work, &source, s, i as u64, a)?;
        println!(
            "chaos {}: {} kills, {} completed runs compared, {} reruns resumed a depth mid-way, {} differences, {} leftovers ({:.0} s, seed {})",
            s.name,
            o.kills,
            o.rounds,
            o.resumed_mid_depth,
            o.differences.len(),
            o.leftovers.len(),
            t.elapsed().as_secs_f64(),
            a.seed
        );
        for d in o.differences.iter().chain(&o.leftovers) {
            println!("  {d}");
        }
        failed |= !o.differences.is_empty() || !o.leftovers.is_empty();
        results.push((s.name.to_string(), o));
    }
    if failed {
        bail!("chaos found differences or leftovers (listed above)");
    }
    Ok(results)
}
