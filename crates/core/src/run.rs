//! The layout of a run folder, shared by the training stage (which writes a depth
//! folder), the report stage (which reads them) and the orchestrator.
//!
//! ```text
//! RUN/pipeline.toml                      the pipeline this run runs
//! RUN/notes.md                           a person's notes (optional; ends the report)
//! RUN/depth-NN/model.safetensors         checkpoint
//! RUN/depth-NN/train.json                training history
//! RUN/depth-NN/eval.json                 evaluation
//! RUN/finetune-NN/…                      greedy depth NN fine-tuned end to end ([finetune])
//! RUN/baseline-NN/…                      NN layers trained end to end from scratch ([baseline])
//! RUN/autoencoder-NN/…                   the [autoencoder] loop: layer NN pretrained without labels, probed
//! RUN/autoencoder-finetune-NN/…          autoencoder-NN fine-tuned end to end ([autoencoder] with [finetune])
//! RUN/report.md, accuracy.svg, summary.json
//! RUN/.layerwise.lock                    held (flock) by the process working on the run
//! ```

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The lock file of a run folder.
pub const LOCK_FILE: &str = ".layerwise.lock";

/// An exclusive lock on a run folder, held until dropped (and released by the kernel when
/// its process dies, however it dies). The lock is taken on the run folder itself, so
/// deleting the lock file (which stays after a run and looks stale) does not let a second
/// process in; the lock file only says who holds it, and says so in its text. On a file
/// system that cannot lock a folder (NFS emulates `flock` with POSIX locks, which need a
/// file open for writing), the lock file itself is locked instead, and its text says not
/// to delete it while a run is in progress.
#[derive(Debug)]
pub struct RunLock {
    _held: std::fs::File,
}

/// `flock(LOCK_EX | LOCK_NB)` on `file`: `Ok(true)` when taken, `Ok(false)` when another
/// process holds it, `Err` when the file system cannot lock it.
fn try_flock(file: &std::fs::File) -> std::io::Result<bool> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on a file descriptor the caller owns; no memory is shared.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

impl RunLock {
    /// Lock `run` (created if needed) for `what` (the command, for the message a second
    /// process gets), or fail saying who holds it.
    pub fn acquire(run: &Path, what: &str) -> Result<RunLock> {
        use std::io::{Seek, Write};
        std::fs::create_dir_all(run).with_context(|| format!("cannot create run folder {}", run.display()))?;
        let path = run.join(LOCK_FILE);
        let in_use = || {
            let holder = crate::fsread::read_text_capped(&path, "lock file", 4096).unwrap_or_default();
            let holder =
                holder.lines().find_map(|l| l.strip_prefix("held by: ")).unwrap_or("holder unknown").to_string();
            anyhow::anyhow!(
                "run folder {} is in use by another process ({holder}): wait until it finishes, or stop it, or use \
                 another --run-dir",
                run.display(),
            )
        };
        let host = crate::metrics::host_name().unwrap_or_else(|| "this machine".into());
        let holder = format!("held by: pid {} on {host}: {what}\n", std::process::id());
        let dir = std::fs::File::open(run).with_context(|| format!("cannot open run folder {}", run.display()))?;
        match try_flock(&dir) {
            Ok(true) => {
                let text = format!(
                    "layerwise run lock: the process working on this run folder holds a lock on the folder itself \
                     (not on this file), released when it ends; this file only names the last holder and may be \
                     deleted.\n{holder}"
                );
                // Best effort: the lock does not depend on this file.
                let _ = crate::atomic::write_bytes_atomic(&path, text.as_bytes());
                return Ok(RunLock { _held: dir });
            }
            Ok(false) => return Err(in_use()),
            Err(_) => {}
        }
        // No lock on folders here: lock the file (never replaced, only rewritten in place).
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open the run's lock file {}", path.display()))?;
        match try_flock(&file) {
            Ok(true) => {}
            Ok(false) => return Err(in_use()),
            Err(e) => return Err(e).with_context(|| format!("cannot lock {}", path.display())),
        }
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = write!(
            file,
            "layerwise run lock: the process working on this run folder holds a lock on this file (this file \
             system cannot lock folders); do not delete it while a run is in progress.\n{holder}"
        );
        Ok(RunLock { _held: file })
    }
}

/// A depth folder's training state while the depth is being trained (the training stage's
/// `state` module defines its format).
pub const STATE_FILE: &str = ".train-state.bin";

/// What `cargo xtask sweep` writes into a sweep folder: which runs belong to it.
pub const SWEEP_FILE: &str = "sweep.json";
/// `schema` of [`SWEEP_FILE`].
pub const SWEEP_LIST_SCHEMA: &str = "layerwise-sweep";

/// The list of a sweep's runs ([`SWEEP_FILE`]), folder names relative to the sweep folder.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SweepList {
    /// [`SWEEP_LIST_SCHEMA`].
    pub schema: String,
    /// 1.
    pub version: u32,
    /// Run folders, relative to the sweep folder.
    pub runs: Vec<String>,
}

impl SweepList {
    /// A list of these runs.
    pub fn new(runs: Vec<String>) -> Self {
        Self { schema: SWEEP_LIST_SCHEMA.into(), version: 1, runs }
    }
}

/// The pipeline copy a run keeps.
pub const PIPELINE_FILE: &str = "pipeline.toml";
/// Notes a person keeps in a run folder; the report ends with them.
pub const NOTES_FILE: &str = "notes.md";
/// A depth folder's checkpoint.
pub const MODEL_FILE: &str = "model.safetensors";
/// A depth folder's training history.
pub const HISTORY_FILE: &str = "train.json";
/// A depth folder's evaluation.
pub const EVAL_FILE: &str = "eval.json";
/// What the report stage writes into the run folder.
pub const REPORT_FILES: [&str; 3] = ["report.md", "accuracy.svg", "summary.json"];

/// The training phases of a run, each with a folder per depth: the greedy loop, the
/// `[autoencoder]` loop, and the phases after the loops (fine-tuning, the baseline). Not
/// to be confused with the stage programs (prepare, train, evaluate, report). Files and
/// messages call a phase a "stage" (`summary.json`'s `best.stage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The greedy loop's depths (`depth-NN`).
    Greedy,
    /// Greedy depths fine-tuned end to end (`finetune-NN`).
    Finetune,
    /// Networks of the same depths trained end to end from scratch (`baseline-NN`).
    Baseline,
    /// The `[autoencoder]` loop: the same depths, each layer pretrained without labels
    /// and probed (`autoencoder-NN`).
    Autoencoder,
    /// Its depths fine-tuned end to end (`autoencoder-finetune-NN`).
    #[serde(rename = "autoencoder-finetune")]
    AutoencoderFinetune,
}

impl Phase {
    /// Every phase, in report order.
    pub const ALL: [Phase; 5] =
        [Phase::Greedy, Phase::Finetune, Phase::Autoencoder, Phase::AutoencoderFinetune, Phase::Baseline];

    /// The training regime that makes this phase's models.
    pub fn regime(self) -> crate::config::Regime {
        match self {
            Phase::Greedy | Phase::Autoencoder => crate::config::Regime::Grow,
            Phase::Finetune | Phase::AutoencoderFinetune => crate::config::Regime::Finetune,
            Phase::Baseline => crate::config::Regime::Scratch,
        }
    }

    /// The pipeline section that configures it (`train`, `finetune`, `baseline`,
    /// `autoencoder`).
    pub fn section(self) -> &'static str {
        match self {
            Phase::Greedy => "train",
            Phase::Finetune | Phase::AutoencoderFinetune => "finetune",
            Phase::Baseline => "baseline",
            Phase::Autoencoder => "autoencoder",
        }
    }

    /// The model that `stage`'s model of `depth` is made from, in the same run folder: the
    /// loop's depth before (a grown depth), the loop's same depth (fine-tuning), none (a
    /// loop's depth 1, the baseline).
    pub fn parent(self, depth: usize) -> Option<(Phase, usize)> {
        match self {
            Phase::Greedy | Phase::Autoencoder => (depth > 1).then(|| (self, depth - 1)),
            Phase::Finetune => Some((Phase::Greedy, depth)),
            Phase::AutoencoderFinetune => Some((Phase::Autoencoder, depth)),
            Phase::Baseline => None,
        }
    }

    /// The folder prefix: `depth`, `finetune`, `baseline`.
    pub fn prefix(self) -> &'static str {
        match self {
            Phase::Greedy => "depth",
            Phase::Finetune => "finetune",
            Phase::Baseline => "baseline",
            Phase::Autoencoder => "autoencoder",
            Phase::AutoencoderFinetune => "autoencoder-finetune",
        }
    }

    /// The greedy loop whose depths this phase covers (fine-tuning: the loop it
    /// fine-tunes; a loop: itself; the baseline: the `[train]` loop's depths).
    pub fn loop_phase(self) -> Phase {
        match self {
            Phase::Autoencoder | Phase::AutoencoderFinetune => Phase::Autoencoder,
            _ => Phase::Greedy,
        }
    }
}

named_enum!(Phase, "stage", {
    Greedy => "greedy",
    Finetune => "finetune",
    Baseline => "baseline",
    Autoencoder => "autoencoder",
    AutoencoderFinetune => "autoencoder-finetune",
});

/// Folder of phase `stage` at `depth` inside a run: `depth-NN`, `finetune-NN`, `baseline-NN`.
pub fn phase_dir(run: &Path, stage: Phase, depth: usize) -> PathBuf {
    run.join(format!("{}-{depth:02}", stage.prefix()))
}

/// The phase and depth a folder name stands for (`finetune-03` → finetune, 3;
/// `autoencoder-finetune-03` → autoencoder-finetune, 3).
pub fn parse_phase_dir(name: &str) -> Option<(Phase, usize)> {
    Phase::ALL.into_iter().find_map(|s| Some((s, name.strip_prefix(s.prefix())?.strip_prefix('-')?.parse().ok()?)))
}

/// Folder of depth `depth` inside a run: `depth-NN`.
pub fn depth_dir(run: &Path, depth: usize) -> PathBuf {
    run.join(format!("depth-{depth:02}"))
}

/// The depth a folder name stands for (`depth-03` → 3).
pub fn parse_depth_dir(name: &str) -> Option<usize> {
    name.strip_prefix("depth-")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use crate::run::Phase;
    use crate::run::RunLock;
    use crate::run::LOCK_FILE;

    #[test]
    fn each_variant_has_one_string_form() {
        crate::config::check_string_forms(Phase::VARIANTS);
    }

    #[test]
    fn a_second_lock_on_a_run_says_who_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let lock = RunLock::acquire(dir.path(), "cargo xtask greedy (first)").unwrap();
        let err = format!("{:#}", RunLock::acquire(dir.path(), "second").unwrap_err());
        assert!(err.contains("in use") && err.contains("cargo xtask greedy (first)"), "{err}");
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
        // The lock file stays after a run and looks stale: deleting it lets nobody in.
        let text = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert!(text.starts_with("layerwise run lock") && text.contains("may be deleted"), "{text}");
        std::fs::remove_file(dir.path().join(LOCK_FILE)).unwrap();
        let err = format!("{:#}", RunLock::acquire(dir.path(), "third").unwrap_err());
        assert!(err.contains("in use") && err.contains("holder unknown"), "{err}");
        drop(lock);
        RunLock::acquire(dir.path(), "second").unwrap();
    }
}
