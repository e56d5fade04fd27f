//! `--scheduler slurm`: the plan's steps as Slurm batch jobs.
//!
//! The Slurm executor of a run's [`Schedule`]: the schedule's walk hands it what is left of
//! the plan ([`remaining_jobs`]: no job for what is complete on disk, or for what a gate
//! whose files are there has ruled out), each as a [`JobSpec`] (a step, the jobs it waits
//! for, its gate), and this module writes them as scripts and submits them.
//!
//! ```text
//! RUN/slurm/NN-LABEL.sh     one batch script per job: #SBATCH lines, then exactly the
//!                           stage command line that --print-commands prints
//! RUN/slurm/submit.sh       sbatch of every job in order, --dependency=afterok chained;
//!                           prints "RUN LABEL JOBID" per job (what --submit runs)
//! RUN/slurm/jobs.tsv        the last submission's jobs (written by submit.sh)
//! RUN/slurm/logs/LABEL-JOBID.log   one log per job
//! RUN/slurm/bin/            the stage programs the jobs run: a copy of this xtask
//!                           binary, which is also every stage (called by the stage's name)
//! ```
//!
//! Patience on a cluster: a train or evaluate job first asks `xtask gate` whether the loop
//! has stopped before its depth ([`crate::gate`]: from the `train.json` files on disk, the
//! rule the local loop applies); if so it ends at once, successfully, saying why in its log.

use crate::args::GreedyArgs;
use crate::gate::{Gate, GATE_STOPPED};
use crate::plan::{shell_quote, Plan, Program, Step};
use crate::schedule::{Executor, Handed, Schedule};
use anyhow::{bail, Context, Result};
use layerwise_core::pipeline::SlurmConfig;
use layerwise_nn::device::DeviceKind;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// One job: a step of a plan, what it waits for, and its gate.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// Unique within a submission, a shell-variable name part (`train_03`).
    pub key: String,
    /// Its name in file names and messages (`train-03`).
    pub label: String,
    /// The run folder it belongs to: its script and log go to RUN/slurm/.
    pub run_dir: PathBuf,
    /// The stage command it runs.
    pub step: Step,
    /// Skip the job when the loop has stopped before this depth.
    pub gate: Option<Gate>,
    /// Whether it needs a GPU.
    pub gpu: bool,
    /// Keys of the jobs that must have succeeded first (`afterok`).
    pub after: Vec<String>,
}

/// The folder of the scheduler files of a run (or sweep) folder.
pub fn slurm_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("slurm")
}

fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        Ok(std::env::current_dir().context("cannot read the working folder")?.join(p))
    }
}

fn run_name(run_dir: &Path) -> String {
    run_dir.file_name().map_or_else(|| "run".into(), |n| n.to_string_lossy().into_owned())
}

/// Put the stage programs the jobs run in HOME/slurm/bin: `xtask` (this executable, hard
/// linked or copied, so rebuilding during a chain does not change it) and one link per
/// stage name (the xtask binary runs the stage it is called by).
fn install_bin(home: &Path, exe: &Path) -> Result<PathBuf> {
    let bin = slurm_dir(home).join("bin");
    std::fs::create_dir_all(&bin).with_context(|| format!("cannot create {}", bin.display()))?;
    let target = bin.join("xtask");
    let tmp = layerwise_core::atomic::temp_path_for(&target);
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(exe, &tmp).is_err() {
        std::fs::copy(exe, &tmp).with_context(|| format!("cannot copy {} to {}", exe.display(), tmp.display()))?;
    }
    std::fs::rename(&tmp, &target).with_context(|| format!("cannot write {}", target.display()))?;
    // Renaming a link onto another link of the same file does nothing: drop the temp name.
    let _ = std::fs::remove_file(&tmp);
    for program in Program::ALL {
        let link = bin.join(program.name());
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("xtask", &link).with_context(|| format!("cannot create {}", link.display()))?;
    }
    Ok(bin)
}

fn write_script(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    layerwise_core::atomic::write_bytes_atomic(path, text.as_bytes())?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot make {} executable", path.display()))
}

/// The batch script of one job.
fn job_script(job: &JobSpec, cfg: &SlurmConfig, cwd: &Path, bin: &Path, logs: &Path) -> String {
    let q = |p: &Path| shell_quote(&p.to_string_lossy());
    let mut s = String::from("#!/bin/bash\n");
    let mut opt = |o: String| s.push_str(&format!("#SBATCH {o}\n"));
    opt(format!("--job-name=lw-{}-{}", run_name(&job.run_dir), job.label));
    opt(format!("--output={}", logs.join(format!("{}-%j.log", job.label)).display()));
    opt(format!("--chdir={}", cwd.display()));
    opt("--kill-on-invalid-dep=yes".into());
    let cpus = if job.step.program == Program::Report { 1 } else { cfg.cpus_per_task.unwrap_or(2) };
    opt(format!("--cpus-per-task={cpus}"));
    // A decoupled run under MPI: one task a rank; mpirun starts them inside the allocation.
    opt(format!("--ntasks={}", job.step.tasks()));
    let partition =
        if job.gpu { cfg.gpu_partition.as_ref().or(cfg.partition.as_ref()) } else { cfg.partition.as_ref() };
    if let Some(p) = partition {
        opt(format!("--partition={p}"));
    }
    if job.gpu {
        opt("--gres=gpu:1".into());
    }
    if let Some(t) = &cfg.time {
        opt(format!("--time={t}"));
    }
    if let Some(m) = &cfg.mem {
        opt(format!("--mem={m}"));
    }
    for a in &cfg.sbatch_args {
        opt(a.clone());
    }
    s.push_str(&format!(
        "# layerwise: {} of run {}, written by `cargo xtask` (rerun it to rewrite).\n\
         set -euo pipefail\n\
         cd {}\n\
         export PATH={}:\"$PATH\"\n\
         # The stages use the CPUs given to the job.\n\
         export RAYON_NUM_THREADS=\"${{SLURM_CPUS_PER_TASK:-{cpus}}}\"\n\
         echo \"layerwise job {}: host $(hostname), Slurm job ${{SLURM_JOB_ID:-none}}, started $(date -u +%FT%TZ)\"\n",
        job.label,
        job.run_dir.display(),
        q(cwd),
        q(bin),
        job.label,
    ));
    if let Some(g) = job.gate {
        let args: Vec<String> = g.args(&job.run_dir).iter().map(|a| shell_quote(a)).collect();
        s.push_str(&format!(
            "# Patience: end at once, successfully, when the loop stopped before this depth\n\
             # (or, after the loop, when this depth is not one this stage covers).\n\
             status=0\n\
             xtask gate {} || status=$?\n\
             if [ \"$status\" -eq {GATE_STOPPED} ]; then exit 0; elif [ \"$status\" -ne 0 ]; then exit \"$status\"; fi\n",
            args.join(" ")
        ));
    }
    if job.step.launch.first().map(String::as_str) == Some("mpirun") {
        s.push_str(
            "# The decoupled run's groups as MPI ranks, one task each, started by mpirun inside the allocation\n\
             # (Open MPI refuses to run as root, as containers do, without these two).\n\
             export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1\n",
        );
    }
    s.push_str(&job.step.command_line());
    s.push('\n');
    s.push_str(&format!("echo \"layerwise job {}: done $(date -u +%FT%TZ)\"\n", job.label));
    s
}

/// Files written for a submission.
#[derive(Debug, Clone)]
pub struct Written {
    /// HOME/slurm/submit.sh.
    pub submit: PathBuf,
    /// Each job's script, in job order.
    pub scripts: Vec<PathBuf>,
}

/// Write every job's script into its run's `slurm/` folder, and `submit.sh` (which submits
/// them all in order) into HOME/slurm/. `exe` is the xtask binary the jobs run.
pub fn write_jobs(jobs: &[JobSpec], home: &Path, cfg: &SlurmConfig, exe: &Path) -> Result<Written> {
    let cwd = std::env::current_dir().context("cannot read the working folder")?;
    let home_abs = absolute(home)?;
    let bin = install_bin(&home_abs, exe)?;
    // Scripts of an earlier write describe jobs that may be done by now: start afresh.
    let mut cleared: Vec<PathBuf> = Vec::new();
    let mut index: HashMap<PathBuf, usize> = HashMap::new();
    let mut scripts = Vec::new();
    let mut submit = String::from("#!/bin/sh\n");
    submit.push_str(&format!(
        "# Submits the layerwise jobs below in order, each after the jobs it needs\n\
         # (--dependency=afterok), and prints \"RUN LABEL JOBID\" per job. Written by `cargo xtask`.\n\
         set -eu\n\
         cd {}\n\
         jobs={}\n\
         : > \"$jobs\"\n\
         submit() {{ # RUN LABEL SCRIPT [SBATCH OPTION]\n\
         \x20 id=$(sbatch --parsable ${{4:+\"$4\"}} \"$3\") || {{ echo \"sbatch failed for $1 $2\" >&2; exit 1; }}\n\
         \x20 id=${{id%%;*}}\n\
         \x20 printf '%s\\t%s\\t%s\\n' \"$1\" \"$2\" \"$id\" >> \"$jobs\"\n\
         \x20 echo \"$1 $2 $id\"\n\
         }}\n",
        shell_quote(&cwd.to_string_lossy()),
        shell_quote(&slurm_dir(&home_abs).join("jobs.tsv").to_string_lossy()),
    ));
    let keys: HashMap<&str, &JobSpec> = jobs.iter().map(|j| (j.key.as_str(), j)).collect();
    for job in jobs {
        let dir = slurm_dir(&absolute(&job.run_dir)?);
        if !cleared.contains(&dir) {
            std::fs::create_dir_all(dir.join("logs")).with_context(|| format!("cannot create {}", dir.display()))?;
            for entry in std::fs::read_dir(&dir)?.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let numbered = name.len() > 3 && name.as_bytes()[..2].iter().all(u8::is_ascii_digit);
                if numbered && name.ends_with(".sh") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
            cleared.push(dir.clone());
        }
        let n = index.entry(dir.clone()).or_insert(0);
        *n += 1;
        let path = dir.join(format!("{:02}-{}.sh", *n, job.label));
        write_script(&path, &job_script(job, cfg, &cwd, &bin, &dir.join("logs")))?;
        let mut deps = Vec::new();
        for a in &job.after {
            if !keys.contains_key(a.as_str()) {
                bail!("internal: job {} waits for unknown job {a}", job.key);
            }
            deps.push(format!("$j_{a}"));
        }
        let dep = if deps.is_empty() { String::new() } else { format!(" --dependency=afterok:{}", deps.join(":")) };
        submit.push_str(&format!(
            "submit {} {} {}{dep}\nj_{}=$id\n",
            shell_quote(&run_name(&job.run_dir)),
            job.label,
            shell_quote(&path.to_string_lossy()),
            job.key
        ));
        scripts.push(path);
    }
    let submit_path = slurm_dir(&home_abs).join("submit.sh");
    write_script(&submit_path, &submit)?;
    Ok(Written { submit: submit_path, scripts })
}

/// A submitted job.
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    /// Its run folder's name.
    pub run: String,
    /// Its label (`train-03`).
    pub label: String,
    /// Slurm's job id.
    pub id: String,
}

fn sbatch_available() -> Result<()> {
    match Command::new("sbatch").arg("--version").output() {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "--submit needs Slurm's `sbatch` on PATH, and it is not there. Run this on the cluster's login node, \
             or install a Slurm client configured for your cluster (Debian/Ubuntu: apt-get install slurm-client; \
             SLURM_CONF names its slurm.conf). Without --submit the job scripts are written and can be submitted by hand"
        ),
        Err(e) => Err(e).context("cannot run sbatch"),
    }
}

/// Jobs of an earlier submission (HOME/slurm/jobs.tsv) still pending or running.
fn still_queued(home: &Path) -> Result<Vec<Submitted>> {
    let Ok(text) = std::fs::read_to_string(slurm_dir(home).join("jobs.tsv")) else { return Ok(vec![]) };
    let old = parse_submitted(&text);
    if old.is_empty() {
        return Ok(vec![]);
    }
    let states = squeue(&old)?;
    Ok(old.into_iter().filter(|j| states.get(&j.id).is_some_and(|s| !is_terminal(s))).collect())
}

fn parse_submitted(text: &str) -> Vec<Submitted> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split(['\t', ' ']).filter(|w| !w.is_empty());
            Some(Submitted { run: w.next()?.into(), label: w.next()?.into(), id: w.next()?.into() })
        })
        .collect()
}

/// Submit with HOME/slurm/submit.sh (refusing while an earlier chain of HOME is queued).
pub fn submit(home: &Path, written: &Written) -> Result<Vec<Submitted>> {
    sbatch_available()?;
    let queued = still_queued(home)?;
    if !queued.is_empty() {
        let ids: Vec<&str> = queued.iter().map(|j| j.id.as_str()).collect();
        bail!(
            "jobs of an earlier submission for {} are still queued or running ({}): two chains would write the same \
             files. Wait for them (squeue -j {}), or cancel them (scancel {}), then submit again",
            home.display(),
            queued.iter().map(|j| format!("{} {}", j.label, j.id)).collect::<Vec<_>>().join(", "),
            ids.join(","),
            ids.join(" ")
        );
    }
    let out = Command::new("sh")
        .arg(&written.submit)
        .output()
        .with_context(|| format!("cannot run {}", written.submit.display()))?;
    let submitted = parse_submitted(&String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!(
            "submitting failed after {} of {} jobs ({}): {}{}",
            submitted.len(),
            written.scripts.len(),
            written.submit.display(),
            String::from_utf8_lossy(&out.stderr).trim(),
            if submitted.is_empty() {
                String::new()
            } else {
                format!(
                    "; cancel the submitted ones with: scancel {}",
                    submitted.iter().map(|j| j.id.as_str()).collect::<Vec<_>>().join(" ")
                )
            }
        );
    }
    Ok(submitted)
}

/// Slurm job states that do not change any more.
fn is_terminal(state: &str) -> bool {
    matches!(
        state,
        "COMPLETED"
            | "FAILED"
            | "CANCELLED"
            | "TIMEOUT"
            | "NODE_FAIL"
            | "PREEMPTED"
            | "OUT_OF_MEMORY"
            | "BOOT_FAIL"
            | "DEADLINE"
            | "SPECIAL_EXIT"
    )
}

/// `squeue` states of these jobs, finished ones included while the
/// controller still knows them. Jobs it no longer knows are absent.
fn squeue(jobs: &[Submitted]) -> Result<HashMap<String, String>> {
    let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
    let out = Command::new("squeue")
        .args(["-h", "-t", "all", "-o", "%i|%T", "-j", &ids.join(",")])
        .output()
        .context("cannot run squeue (is a Slurm client on PATH?)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        // Every id purged from the controller: nothing is known any more.
        if err.contains("Invalid job id") {
            return Ok(HashMap::new());
        }
        bail!("squeue failed: {}", err.trim());
    }
    Ok(text
        .lines()
        .filter_map(|l| {
            let (id, state) = l.split_once('|')?;
            Some((id.trim().to_string(), state.trim().to_string()))
        })
        .collect())
}

/// The log file of a submitted job.
pub fn log_path(run_dir: &Path, job: &Submitted) -> PathBuf {
    slurm_dir(run_dir).join("logs").join(format!("{}-{}.log", job.label, job.id))
}

/// Wait until every job has ended. Prints each state change; fails naming each job that
/// did not complete (with its log's last lines) and the jobs that never ran because of it.
pub fn wait(jobs: &[Submitted], run_dirs: &HashMap<String, PathBuf>, poll: Duration) -> Result<()> {
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    let mut unknown_rounds = 0;
    loop {
        let states = squeue(jobs)?;
        let mut done = true;
        for j in jobs {
            let state = match states.get(&j.id) {
                Some(s) => s.clone(),
                // Known before, gone now: purged after it ended.
                None if last.get(&j.id).is_some_and(|s| is_terminal(s)) => last[&j.id].clone(),
                None => "UNKNOWN".into(),
            };
            if last.get(&j.id) != Some(&state) {
                eprintln!("slurm: {} {} (job {}): {}", j.run, j.label, j.id, state);
                last.insert(j.id.clone(), state.clone());
            }
            done &= is_terminal(&state);
        }
        // A job the controller never reports is lost (purged before we saw it end).
        if last.values().any(|s| s == "UNKNOWN") {
            unknown_rounds += 1;
            if unknown_rounds > 30 {
                done = true;
            }
        }
        if done {
            break;
        }
        std::thread::sleep(poll);
    }
    let failed: Vec<&Submitted> =
        jobs.iter().filter(|j| last.get(&j.id).map(String::as_str) != Some("COMPLETED")).collect();
    if failed.is_empty() {
        return Ok(());
    }
    let mut msg = String::new();
    for j in &failed {
        let state = &last[&j.id];
        let log = run_dirs.get(&j.run).map(|r| log_path(r, j));
        match log.as_ref().filter(|l| l.exists()) {
            Some(log) => {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect();
                msg.push_str(&format!(
                    "\n  {} {} (job {}) {}: log {}\n    {}",
                    j.run,
                    j.label,
                    j.id,
                    state,
                    log.display(),
                    tail.join("\n    ")
                ));
            }
            None => msg.push_str(&format!(
                "\n  {} {} (job {}) {}: never ran (a job it needs did not complete)",
                j.run, j.label, j.id, state
            )),
        }
    }
    bail!(
        "{} of {} Slurm jobs did not complete:{msg}\nFix the cause and submit the same command again: complete depths are kept",
        failed.len(),
        jobs.len()
    )
}

/// `cargo xtask greedy --scheduler slurm`: write (and with --submit, submit; with --wait,
/// wait for) the jobs of what remains of the plan.
pub fn greedy(plan: &Plan, a: &GreedyArgs) -> Result<()> {
    let cfg = a.inputs.slurm.config(&plan.pipeline.slurm)?;
    let _lock = crate::judge::open_run(plan, a)?;
    let jobs = remaining_jobs(plan, a)?;
    let exe = std::env::current_exe().context("cannot locate the xtask binary the jobs are to run")?;
    let written = write_jobs(&jobs, &plan.run_dir, &cfg, &exe)?;
    announce(
        &jobs,
        &written,
        &[(run_name(&plan.run_dir), plan.run_dir.clone())],
        a.inputs.slurm.submit,
        a.inputs.slurm.wait,
        &plan.run_dir,
    )
}

/// Print what was written, and submit/wait as asked.
pub fn announce(
    jobs: &[JobSpec],
    written: &Written,
    runs: &[(String, PathBuf)],
    do_submit: bool,
    do_wait: bool,
    home: &Path,
) -> Result<()> {
    let trains = jobs.iter().filter(|j| j.step.program == Program::Train).count();
    eprintln!(
        "wrote {} Slurm job scripts ({} to train) under {}",
        written.scripts.len(),
        trains,
        runs.iter().map(|(_, r)| slurm_dir(r).display().to_string()).collect::<Vec<_>>().join(", ")
    );
    if !do_submit {
        eprintln!(
            "submit them with: sh {}   (or add --submit; the run folder must be on a file system the cluster's nodes share)",
            written.submit.display()
        );
        return Ok(());
    }
    let submitted = submit(home, written)?;
    for j in &submitted {
        println!("{} {} {}", j.run, j.label, j.id);
    }
    eprintln!(
        "submitted {} jobs; each job logs to slurm/logs/ in its run folder ({} ...); follow them with: squeue -j {}",
        submitted.len(),
        slurm_dir(&runs[0].1).display(),
        submitted.iter().map(|j| j.id.as_str()).collect::<Vec<_>>().join(",")
    );
    if do_wait {
        let dirs: HashMap<String, PathBuf> = runs.iter().cloned().collect();
        wait(&submitted, &dirs, Duration::from_millis(1000))?;
        eprintln!("all {} jobs completed", submitted.len());
    }
    Ok(())
}

/// What remains of the plan, as jobs: the schedule's walk, with every job it hands over
/// written down instead of run. No prepare job when the dataset is prepared; complete
/// models get no job, a model whose evaluation alone is wrong gets an evaluate job; from
/// the first model to train on, every job of its chain is a job, after the jobs it needs,
/// so evaluating depth d never holds up training depth d+1; the report comes last. A gate
/// whose files are all there is decided now (no train job past the depth where the
/// complete depths stop the loop); the others are written into the jobs' scripts.
pub fn remaining_jobs(plan: &Plan, a: &GreedyArgs) -> Result<Vec<JobSpec>> {
    let schedule = Schedule::build(plan, a.inputs.source.as_deref(), a.from.as_deref())?;
    let mut ex = Collect { plan, jobs: Vec::new(), keys: HashMap::new() };
    schedule.walk(plan, a.inputs.source.as_deref(), &mut ex)?;
    Ok(ex.jobs)
}

/// Collects the jobs a walk hands over.
struct Collect<'a> {
    plan: &'a Plan,
    jobs: Vec<JobSpec>,
    /// The key of each collected job, by its index in the schedule.
    keys: HashMap<usize, String>,
}

impl Executor for Collect<'_> {
    fn dispatch(&mut self, h: Handed<'_>) -> Result<bool> {
        let label = h.job.task.label();
        let key = label.replace('-', "_");
        let mut after = Vec::new();
        for i in &h.after {
            match self.keys.get(i) {
                Some(k) => after.push(k.clone()),
                None => bail!("internal: job {label} waits for a job that was not handed on"),
            }
        }
        let program = h.job.step.program;
        self.jobs.push(JobSpec {
            key: key.clone(),
            label,
            run_dir: self.plan.run_dir.clone(),
            gpu: self.plan.device != DeviceKind::Cpu && matches!(program, Program::Train | Program::Evaluate),
            step: h.job.step.clone(),
            gate: h.gate,
            after,
        });
        self.keys.insert(h.index, key);
        Ok(false)
    }
}
