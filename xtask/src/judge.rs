//! The completeness judge: what a run folder holds, judged against the plan before
//! anything runs. A depth is complete when its three files agree with each other, with the
//! parent depth, the dataset and the pipeline; completed depths are never redone, an
//! incomplete one is redone from its start. Also: opening a run (its lock, `--restart`,
//! refusing a changed pipeline), and whether its dataset is prepared and is the run's.

use crate::args::GreedyArgs;
use crate::plan::Plan;
use anyhow::{bail, Context, Result};
use layerwise_core::checkpoint::read_checkpoint_meta;
use layerwise_core::hash::sha256_file;
use layerwise_core::metrics::{Evaluation, TrainHistory};
use layerwise_core::pipeline::Pipeline;
use layerwise_core::run::{
    depth_dir, parse_depth_dir, parse_phase_dir, phase_dir, Phase, RunLock, EVAL_FILE, HISTORY_FILE, LOCK_FILE,
    MODEL_FILE, PIPELINE_FILE, REPORT_FILES,
};
use std::path::{Path, PathBuf};

/// What a depth folder holds, judged against its parent, the dataset and the pipeline.
#[derive(Debug, Clone, PartialEq)]
pub enum DepthState {
    /// Checkpoint, history and evaluation agree with each other, with the parent, the
    /// dataset and the pipeline: kept as it is.
    Complete {
        /// Validation accuracy of its last epoch.
        val_accuracy: f64,
        /// Its checkpoint's SHA-256 (the next depth's parent).
        sha: String,
    },
    /// Checkpoint and history are complete, the evaluation is missing or wrong: only the
    /// evaluation is redone (the checkpoint is never deleted).
    NeedsEvaluation {
        /// Validation accuracy of its last epoch.
        val_accuracy: f64,
        /// Its checkpoint's SHA-256.
        sha: String,
        /// Why the evaluation is not kept.
        why: String,
    },
    /// The depth must be trained (again).
    NeedsTraining {
        /// Why.
        why: String,
    },
}

/// Judge `stage`'s folder of depth `depth`: its checkpoint must come from the stage's
/// regime and settings, from `parent_sha` (the depth before, for the greedy loop; the
/// greedy depth, for fine-tuning; none, for the baseline).
pub fn stage_state(plan: &Plan, stage: Phase, depth: usize, parent_sha: Option<&str>, fingerprint: &str) -> DepthState {
    let dir = phase_dir(&plan.run_dir, stage, depth);
    let regime = stage.regime();
    let model = dir.join(MODEL_FILE);
    let retrain = |why: String| DepthState::NeedsTraining { why };
    if !model.exists() {
        return retrain(format!("{} does not exist", model.display()));
    }
    let meta = match read_checkpoint_meta(&model) {
        Ok(m) => m,
        Err(e) => return retrain(format!("its checkpoint cannot be read ({e:#})")),
    };
    if meta.depth != depth {
        return retrain(format!("its checkpoint is of depth {}", meta.depth));
    }
    if meta.parent_sha256.as_deref() != parent_sha {
        return retrain("its checkpoint grew from another parent than the depth before it now holds".into());
    }
    if meta.dataset_fingerprint != fingerprint {
        return retrain("its checkpoint was trained on another dataset".into());
    }
    if meta.regime != regime {
        return retrain(format!("its checkpoint was made by the `{}` regime", meta.regime.name()));
    }
    if meta.config != plan.pipeline.stage_config(stage) {
        return retrain("its checkpoint was trained with other settings".into());
    }
    let schedule = if stage == Phase::Greedy { plan.pipeline.schedule_name() } else { None };
    if meta.schedule != schedule {
        return retrain(format!(
            "its checkpoint was trained by the {} schedule, the pipeline's is {}",
            meta.schedule.as_deref().unwrap_or("sequential"),
            schedule.as_deref().unwrap_or("sequential")
        ));
    }
    let sha = match sha256_file(&model) {
        Ok(s) => s,
        Err(e) => return retrain(format!("its checkpoint cannot be read ({e:#})")),
    };
    let history = match TrainHistory::read(&dir.join(HISTORY_FILE)) {
        Ok(h) if h.checkpoint_sha256 == sha => h,
        Ok(_) => return retrain("its train.json belongs to another checkpoint".into()),
        Err(e) => return retrain(format!("its training history cannot be read ({e:#})")),
    };
    // A run that keeps its best epoch is judged by that epoch.
    let Some(val_accuracy) = history.kept().map(|e| e.val_accuracy) else {
        return retrain("its train.json has no epochs".into());
    };
    let why = match Evaluation::read(&dir.join(EVAL_FILE)) {
        Err(e) => format!("its evaluation cannot be read ({e:#})"),
        Ok(e) if e.checkpoint_sha256 != sha => "its eval.json belongs to another checkpoint".into(),
        Ok(e) if e.split != plan.pipeline.greedy.evaluate => format!("its eval.json evaluates the {} split", e.split),
        Ok(e) if e.dataset_fingerprint != fingerprint => "its eval.json used another dataset".into(),
        Ok(_) => return DepthState::Complete { val_accuracy, sha },
    };
    DepthState::NeedsEvaluation { val_accuracy, sha, why }
}

/// A run never changes its dataset: refuse when the run folder holds depths trained on
/// another dataset than the file the plan now finds (another `--source` given for the same
/// run folder, or a dataset file prepared again from changed source files).
pub fn check_dataset_of_run(plan: &Plan, fingerprint: &str) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(&plan.run_dir) else { return Ok(()) };
    let mut depths: Vec<usize> = entries.flatten().filter_map(|e| parse_depth_dir(e.file_name().to_str()?)).collect();
    depths.sort_unstable();
    for depth in depths {
        let model = depth_dir(&plan.run_dir, depth).join(MODEL_FILE);
        let Ok(meta) = read_checkpoint_meta(&model) else { continue };
        if meta.dataset_fingerprint != fingerprint {
            bail!(
                "{} holds depths trained on dataset fingerprint {}… ({} depth {depth}), but {} now holds fingerprint {}… \
                 (another --source, or changed source files?). A run never changes its dataset: pass the --source it was \
                 trained on, or use --restart to train it again on this dataset, or --run-dir for a new run",
                plan.run_dir.display(),
                &meta.dataset_fingerprint[..12.min(meta.dataset_fingerprint.len())],
                model.display(),
                plan.data.display(),
                &fingerprint[..12.min(fingerprint.len())]
            );
        }
    }
    Ok(())
}

/// Where the loop starts: depth 1 from nothing, or the depth after `--from`'s checkpoint.
pub fn start(from: Option<&Path>) -> Result<(usize, Option<PathBuf>)> {
    match from {
        Some(c) => Ok((read_checkpoint_meta(c)?.depth + 1, Some(c.to_path_buf()))),
        None => Ok((1, None)),
    }
}

/// Open (or start) the run folder: `--restart` clears it, a changed pipeline is refused,
/// the pipeline is recorded. Shared by the local loop and the scheduler backends.
pub fn open_run(plan: &Plan, a: &GreedyArgs) -> Result<RunLock> {
    let what = std::env::args().collect::<Vec<_>>().join(" ");
    let lock = RunLock::acquire(&plan.run_dir, &what)?;
    if a.restart && !plan.run_dir.join(PIPELINE_FILE).exists() {
        let other = std::fs::read_dir(&plan.run_dir)?.flatten().any(|e| e.file_name() != LOCK_FILE);
        if other {
            bail!(
                "--restart deletes a run's depth folders and report, and {} is not a layerwise run (it has no {}): \
                 refusing to delete anything in it; choose another --run-dir",
                plan.run_dir.display(),
                PIPELINE_FILE
            );
        }
    }
    if a.restart {
        for entry in std::fs::read_dir(&plan.run_dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if parse_phase_dir(&name).is_some() || REPORT_FILES.contains(&name.as_str()) || name == PIPELINE_FILE {
                let path = entry.path();
                let r = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
                r.with_context(|| format!("--restart: cannot remove {}", path.display()))?;
            }
        }
    }
    check_resume(plan)?;
    record_pipeline(plan, a.overrides_pipeline())?;
    Ok(lock)
}

/// Whether the plan's dataset is prepared already, with the pipeline's settings and (given
/// `--source`) from the same source files.
pub fn dataset_ready(plan: &Plan, source: Option<&Path>) -> Result<bool> {
    let d = &plan.pipeline.data;
    let limits = ((d.limit_train > 0).then_some(d.limit_train), (d.limit_test > 0).then_some(d.limit_test));
    let source = source.or(d.source.as_deref());
    Ok(layerwise_prepare::matches_existing(&plan.data, d.normalize, d.val_fraction, limits, source)?.is_some())
}

/// The settings that decide what a completed depth contains: a change in them makes the
/// run's completed depths stale.
fn affects_completed(p: &Pipeline) -> impl PartialEq + std::fmt::Debug {
    (p.data.clone(), p.train.clone(), p.greedy.evaluate)
}

/// A `[finetune]`, `[baseline]` or `[autoencoder]` section that differs from the recorded
/// one (changed, removed or added) while the run folder holds that stage's folders would
/// leave those outputs stale, like a changed `[train]`. (Removing a section and adding it
/// back with other values is a change too: the folders are still there.)
fn changed_stage_sections(old: &Pipeline, new: &Pipeline, run_dir: &Path) -> Option<&'static str> {
    let present: Vec<Phase> = std::fs::read_dir(run_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(parse_phase_dir).map(|(s, _)| s))
        .collect();
    let has_folders = |stages: &[Phase]| present.iter().any(|s| stages.contains(s));
    if old.finetune != new.finetune && has_folders(&[Phase::Finetune, Phase::AutoencoderFinetune]) {
        Some("[finetune]")
    } else if old.baseline != new.baseline && has_folders(&[Phase::Baseline]) {
        Some("[baseline]")
    } else if old.autoencoder != new.autoencoder && has_folders(&[Phase::Autoencoder, Phase::AutoencoderFinetune]) {
        Some("[autoencoder]")
    } else {
        None
    }
}

/// Refuse to resume a run whose completed depths were made with other settings.
fn check_resume(plan: &Plan) -> Result<()> {
    let recorded = plan.run_dir.join(PIPELINE_FILE);
    if !recorded.exists() {
        return Ok(());
    }
    let old = Pipeline::load(&recorded)
        .with_context(|| format!("cannot read the run's recorded pipeline {}", recorded.display()))?;
    let new = &plan.pipeline;
    if let Some(section) = changed_stage_sections(&old, new, &plan.run_dir) {
        let key = section.trim_matches(|c| c == '[' || c == ']');
        bail!(
            "{} was run with another {section} section than {} now has ({}; {} records it), and that section's \
             outputs are in the folder: they would not match. Put the section back as it was, or use --restart to \
             start the run over, or --run-dir for a new run",
            plan.run_dir.display(),
            plan.pipeline_path.display(),
            changed_keys(&old, new, &[key]),
            recorded.display()
        );
    }
    if affects_completed(&old) != affects_completed(new) {
        bail!(
            "{} was run with other settings than {} now has ({}; {} records the old ones): its completed depths \
             would not match. Put them back, or use --restart to start the run over, or --run-dir for a new run",
            plan.run_dir.display(),
            plan.pipeline_path.display(),
            changed_keys(&old, new, &["data", "train", "greedy.evaluate"]),
            recorded.display()
        );
    }
    Ok(())
}

/// The keys under `sections` whose values differ between two pipelines, said as
/// `train.lr 0.001 → 0.002` (a section removed or added is said as a whole).
fn changed_keys(old: &Pipeline, new: &Pipeline, sections: &[&str]) -> String {
    fn at<'a>(v: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
        path.split('.').try_fold(v, |v, k| v.get(k)).filter(|v| !v.is_null())
    }
    fn said(v: Option<&serde_json::Value>) -> String {
        v.map_or("(none)".into(), |v| v.to_string())
    }
    let (a, b) = (serde_json::to_value(old).unwrap_or_default(), serde_json::to_value(new).unwrap_or_default());
    let mut out = Vec::new();
    for s in sections {
        let (x, y) = (at(&a, s), at(&b, s));
        match (x.and_then(|v| v.as_object()), y.and_then(|v| v.as_object())) {
            (Some(x), Some(y)) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    if x.get(k) != y.get(k) {
                        out.push(format!("{s}.{k} {} → {}", said(x.get(k)), said(y.get(k))));
                    }
                }
            }
            // A whole section went or came; a plain value (`greedy.evaluate`) is said as a change.
            (Some(_), None) if y.is_none() => out.push(format!("[{s}] removed")),
            (None, Some(_)) if x.is_none() => out.push(format!("[{s}] added")),
            _ if x != y => out.push(format!("{s} {} → {}", said(x), said(y))),
            _ => {}
        }
    }
    if out.is_empty() {
        "changed".into()
    } else {
        format!("changed: {}", out.join(", "))
    }
}

/// Record the pipeline in the run folder: the file itself, or its canonical form when
/// arguments overrode it.
fn record_pipeline(plan: &Plan, overridden: bool) -> Result<()> {
    let dest = plan.run_dir.join(PIPELINE_FILE);
    let text = if overridden {
        plan.pipeline.to_toml()?
    } else {
        std::fs::read_to_string(&plan.pipeline_path)
            .with_context(|| format!("cannot read {}", plan.pipeline_path.display()))?
    };
    layerwise_core::atomic::write_bytes_atomic(&dest, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use crate::judge::changed_keys;
    use layerwise_core::pipeline::Pipeline;

    fn pipeline(extra: &str) -> Pipeline {
        let text = format!("name = \"x\"\n[train]\nepochs = 3\n[greedy]\nmax_depth = 2\n{extra}");
        Pipeline::from_toml(&text, "x.toml").unwrap_or_else(|e| panic!("{e:#}"))
    }

    #[test]
    fn a_changed_plain_value_is_said_as_a_change_not_as_a_section_removed() {
        // Every refusal used to add a false "[greedy.evaluate] removed".
        let (a, b) = (pipeline("evaluate = \"test\"\n"), pipeline("evaluate = \"val\"\n"));
        let said = changed_keys(&a, &b, &["greedy.evaluate", "train"]);
        assert_eq!(said, "changed: greedy.evaluate \"test\" → \"val\"");
        let said = changed_keys(&pipeline(""), &pipeline(""), &["greedy.evaluate", "train"]);
        assert_eq!(said, "changed");
        let mut c = pipeline("");
        c.train.epochs = 4;
        assert_eq!(changed_keys(&pipeline(""), &c, &["greedy.evaluate", "train"]), "changed: train.epochs 3 → 4");
        // A whole section, still said as one.
        let with = pipeline("[finetune]\nepochs = 2\n");
        assert_eq!(changed_keys(&with, &pipeline(""), &["finetune"]), "changed: [finetune] removed");
        assert_eq!(changed_keys(&pipeline(""), &with, &["finetune"]), "changed: [finetune] added");
    }
}
