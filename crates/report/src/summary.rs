//! A run folder read into a [`Summary`]: one [`DepthRow`] per completed model, the best
//! one chosen on validation, and the tutorial's published numbers to show beside it.

use anyhow::{Context, Result};
use layerwise_core::checkpoint::{read_checkpoint_meta, CheckpointMeta};
use layerwise_core::dataset::Split;
use layerwise_core::hash::sha256_file;
pub(crate) use layerwise_core::metrics::best_by_validation;
use layerwise_core::metrics::{Evaluation, TrainHistory};
use layerwise_core::pipeline::Pipeline;
use serde::Serialize;
use std::path::Path;

/// The tutorial's test accuracy after each of its 10 depths.
pub const TUTORIAL_TEST_ACCURACY: [f64; 10] =
    [0.4847, 0.5137, 0.5049, 0.5003, 0.4873, 0.4874, 0.4802, 0.4819, 0.4786, 0.4790];
/// The tutorial's test loss after each depth.
pub const TUTORIAL_TEST_LOSS: [f64; 10] =
    [1.4798, 1.3948, 1.4666, 1.6670, 1.9361, 2.1698, 2.3333, 2.4703, 2.5734, 2.6469];

use layerwise_core::run::{parse_phase_dir, phase_dir, Phase, EVAL_FILE, HISTORY_FILE, MODEL_FILE, PIPELINE_FILE};

/// One depth's numbers.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DepthRow {
    /// Depth (hidden layers).
    pub depth: usize,
    /// Training loss, last epoch.
    pub train_loss: f64,
    /// Training accuracy, last epoch.
    pub train_accuracy: f64,
    /// Validation loss, last epoch.
    pub val_loss: f64,
    /// Validation accuracy, last epoch.
    pub val_accuracy: f64,
    /// Evaluation split (usually test), if evaluated.
    pub eval_split: Option<String>,
    /// Evaluation loss.
    pub eval_loss: Option<f64>,
    /// Evaluation accuracy.
    pub eval_accuracy: Option<f64>,
    /// Images evaluated.
    pub eval_samples: Option<usize>,
    /// Evaluation accuracy per class, with the class names.
    pub eval_per_class: Option<Vec<(String, f64)>>,
    /// Trainable parameters at this depth.
    pub trainable_params: usize,
    /// All parameters.
    pub total_params: usize,
    /// Layers trained at this depth.
    pub trained: Vec<String>,
    /// Wall seconds of training plus evaluation.
    pub seconds: f64,
    /// Epochs trained.
    pub epochs: usize,
    /// The machine that trained it (from `train.json`), when recorded.
    pub host: Option<String>,
    /// The autoencoder objective: the last pretraining epoch's reconstruction loss (train).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconstruction_loss: Option<f64>,
    /// A convolutional stage: what it is (`maxpool, 64→128 at 16×16`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block: Option<String>,
    /// A convolutional stage: its convolution's multiply-adds per image, in millions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_mmacs: Option<f64>,
    /// The autoencoder objective: the last pretraining epoch's validation reconstruction loss.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_reconstruction_loss: Option<f64>,
}

/// The best model of a run, chosen on validation accuracy among every stage's models.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BestModel {
    /// The stage that made it (`greedy`, `finetune`, `baseline`, `autoencoder`, `autoencoder-finetune`).
    pub stage: Phase,
    /// Its depth.
    pub depth: usize,
    /// Its validation accuracy (the kept epoch's).
    pub val_accuracy: f64,
    /// Its accuracy on the evaluated split (usually test), reported, never used to choose.
    pub test_accuracy: Option<f64>,
}

impl Summary {
    /// Whether the run trained a convolutional network (its depths are stages).
    pub fn is_cnn(&self) -> bool {
        self.depths.iter().any(|r| r.block.is_some())
    }

    /// What a depth is called: `stage` or `depth`.
    pub fn depth_word(&self) -> &'static str {
        if self.is_cnn() {
            "stage"
        } else {
            "depth"
        }
    }
}

/// A run, as the report sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Run folder name.
    pub run: String,
    /// The pipeline it ran, if recorded.
    pub pipeline: Option<Pipeline>,
    /// Completed depths of the greedy loop, in order.
    pub depths: Vec<DepthRow>,
    /// Greedy depths fine-tuned end to end (`[finetune]`), in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub finetune: Vec<DepthRow>,
    /// Networks of the same depths trained end to end from scratch (`[baseline]`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub baseline: Vec<DepthRow>,
    /// The `[autoencoder]` loop's depths (pretrained without labels, then probed).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub autoencoder: Vec<DepthRow>,
    /// The `[autoencoder]` loop's depths fine-tuned end to end.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub autoencoder_finetune: Vec<DepthRow>,
    /// Best greedy depth by validation accuracy (never by test accuracy).
    pub best_depth: Option<usize>,
    /// The best model of the run among every stage, chosen on validation accuracy.
    pub best: Option<BestModel>,
    /// Sum of the depths' seconds.
    pub total_seconds: f64,
    /// Depths between the first and the last reported one that have no checkpoint and
    /// history: a hole the report marks (a run should have none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_depths: Vec<usize>,
    /// What else is wrong with the run folder (an unreadable evaluation, ...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

impl Summary {
    /// Whether the tutorial's numbers belong beside this run.
    pub fn compares_with_tutorial(&self) -> bool {
        self.pipeline.as_ref().is_some_and(|p| p.reference.as_deref() == Some("keras-tutorial"))
    }
    /// The best row.
    pub fn best(&self) -> Option<&DepthRow> {
        self.best_depth.and_then(|d| self.depths.iter().find(|r| r.depth == d))
    }

    /// The rows of `stage`.
    pub fn rows(&self, stage: Phase) -> &[DepthRow] {
        match stage {
            Phase::Greedy => &self.depths,
            Phase::Finetune => &self.finetune,
            Phase::Baseline => &self.baseline,
            Phase::Autoencoder => &self.autoencoder,
            Phase::AutoencoderFinetune => &self.autoencoder_finetune,
        }
    }

    fn rows_mut(&mut self, stage: Phase) -> &mut Vec<DepthRow> {
        match stage {
            Phase::Greedy => &mut self.depths,
            Phase::Finetune => &mut self.finetune,
            Phase::Baseline => &mut self.baseline,
            Phase::Autoencoder => &mut self.autoencoder,
            Phase::AutoencoderFinetune => &mut self.autoencoder_finetune,
        }
    }

    /// Whether any model besides the `[train]` loop's is in the run.
    pub fn has_other_stages(&self) -> bool {
        Phase::ALL.iter().any(|&s| s != Phase::Greedy && !self.rows(s).is_empty())
    }

    /// Whether any depth was pretrained as an autoencoder.
    pub fn has_reconstruction(&self) -> bool {
        [Phase::Greedy, Phase::Autoencoder]
            .iter()
            .any(|&st| self.rows(st).iter().any(|r| r.reconstruction_loss.is_some()))
    }

    /// Whether the `[train]` loop pretrained its layers as autoencoders.
    pub fn loop_is_autoencoder(&self) -> bool {
        self.pipeline.as_ref().is_some_and(|p| p.train.objective == layerwise_core::config::Objective::Autoencoder)
    }

    /// What `stage`'s models are, in the words of Bengio et al. (2007)'s table.
    pub fn stage_label(&self, stage: Phase) -> &'static str {
        let autoencoder = self.loop_is_autoencoder();
        match stage {
            Phase::Baseline => "end to end from scratch (no pretraining)",
            Phase::Greedy if autoencoder => "autoencoder greedy, probe only (before fine-tuning)",
            Phase::Greedy => "supervised greedy (before fine-tuning)",
            Phase::Finetune if autoencoder => "autoencoder greedy + fine-tuning",
            Phase::Finetune => "supervised greedy + fine-tuning",
            Phase::Autoencoder => "autoencoder greedy, probe only (before fine-tuning)",
            Phase::AutoencoderFinetune => "autoencoder greedy + fine-tuning",
        }
    }
}

/// Read a run folder: every `depth-NN` folder holding a checkpoint and its training
/// history, in depth order (a run continued with `--from` may start above depth 1).
pub fn collect(run: &Path) -> Result<Summary> {
    if !run.is_dir() {
        anyhow::bail!("run folder {} does not exist", run.display());
    }
    let pipeline_path = run.join(PIPELINE_FILE);
    let pipeline = if pipeline_path.exists() { Some(Pipeline::load(&pipeline_path)?) } else { None };
    let mut found: Vec<(Phase, usize)> = std::fs::read_dir(run)
        .with_context(|| format!("cannot list {}", run.display()))?
        .flatten()
        .filter_map(|e| parse_phase_dir(e.file_name().to_str()?))
        .collect();
    found.sort_unstable_by_key(|(s, d)| (Phase::ALL.iter().position(|x| x == s), *d));
    let name = run.file_name().map_or_else(|| run.display().to_string(), |n| n.to_string_lossy().into_owned());
    let mut s = Summary {
        run: name,
        pipeline,
        depths: Vec::new(),
        finetune: Vec::new(),
        baseline: Vec::new(),
        autoencoder: Vec::new(),
        autoencoder_finetune: Vec::new(),
        best_depth: None,
        best: None,
        total_seconds: 0.0,
        missing_depths: Vec::new(),
        problems: Vec::new(),
    };
    let split = s.pipeline.as_ref().map_or(Split::Test, |p| p.greedy.evaluate);
    // Each checkpoint is hashed once, though a depth's parent is checked by its child too.
    let mut shas = std::collections::HashMap::new();
    for (stage, depth) in found {
        let dir = phase_dir(run, stage, depth);
        if let Some(p) = &s.pipeline {
            if !p.has_stage(stage) {
                if dir.join(MODEL_FILE).exists() {
                    s.problems.push(format!(
                        "{} is in the run folder, but the run's pipeline has no [{}] section (it was removed?): \
                         not shown",
                        dir.display(),
                        stage.section()
                    ));
                }
                continue;
            }
        }
        let Some(r) = row(run, stage, depth, split, &mut shas, &mut s.problems) else { continue };
        s.rows_mut(stage).push(r);
    }
    let depths = &s.depths;
    s.best_depth = best_by_validation(depths.iter().map(|r| (r.depth, r.val_accuracy))).map(|(d, _)| d);
    s.missing_depths = match (depths.first(), depths.last()) {
        (Some(a), Some(b)) => (a.depth..b.depth).filter(|d| !depths.iter().any(|r| r.depth == *d)).collect(),
        _ => Vec::new(),
    };
    // The best model of the run, among every stage, on validation accuracy, by the rule
    // the loop uses (the first on a tie, in the order of `Phase::ALL`, shallower before
    // deeper).
    let all: Vec<(Phase, &DepthRow)> =
        Phase::ALL.into_iter().flat_map(|stage| s.rows(stage).iter().map(move |r| (stage, r))).collect();
    let best = best_by_validation(all.iter().enumerate().map(|(i, (_, r))| (i, r.val_accuracy))).map(|(i, _)| {
        let (stage, r) = all[i];
        BestModel { stage, depth: r.depth, val_accuracy: r.val_accuracy, test_accuracy: r.eval_accuracy }
    });
    let total_seconds = all.iter().map(|(_, r)| r.seconds).sum();
    s.best = best;
    s.total_seconds = total_seconds;
    Ok(s)
}

/// One stage's model of one depth, as the report shows it: the kept epoch's training and
/// validation numbers (the best epoch where the run kept it), and its evaluation. `None`
/// when the folder holds no checkpoint and history yet, or when they do not belong
/// together (then `problems` says why). The report verifies what it pairs as the
/// orchestrator does: the checkpoint's depth is the folder's, `train.json` and `eval.json`
/// name the checkpoint's SHA-256, the evaluation is of the pipeline's split, and every
/// accuracy is in [0, 1]; what fails is flagged, never shown.
fn row(
    run: &Path,
    stage: Phase,
    depth: usize,
    split: Split,
    shas: &mut std::collections::HashMap<std::path::PathBuf, String>,
    problems: &mut Vec<String>,
) -> Option<DepthRow> {
    let dir = phase_dir(run, stage, depth);
    let (model, history) = (dir.join(MODEL_FILE), dir.join(HISTORY_FILE));
    if !model.exists() || !history.exists() {
        return None;
    }
    let name = format!("{} {depth}", stage.prefix());
    let mut flag = |why: String| problems.push(format!("{name}: {why}"));
    let checked = (|| -> Result<(CheckpointMeta, String, TrainHistory)> {
        let meta = read_checkpoint_meta(&model)?;
        if meta.depth != depth {
            anyhow::bail!(
                "{} holds a depth-{} checkpoint, not depth {depth} (swapped or copied folders?)",
                model.display(),
                meta.depth
            );
        }
        let mut sha_of = |path: &Path| -> Result<String> {
            if let Some(sha) = shas.get(path) {
                return Ok(sha.clone());
            }
            let sha = sha256_file(path)?;
            shas.insert(path.to_path_buf(), sha.clone());
            Ok(sha)
        };
        let sha = sha_of(&model)?;
        if let Some((parent_stage, parent_depth)) = stage.parent(depth) {
            let parent = phase_dir(run, parent_stage, parent_depth).join(MODEL_FILE);
            if parent.exists() && meta.parent_sha256.as_deref() != Some(sha_of(&parent)?.as_str()) {
                anyhow::bail!(
                    "{} was made from another checkpoint than {} now holds (was that one trained again?)",
                    model.display(),
                    parent.display()
                );
            }
        }
        let h = TrainHistory::read(&history)?;
        if h.checkpoint_sha256 != sha || h.depth != depth {
            anyhow::bail!("{} belongs to another checkpoint than {}", history.display(), model.display());
        }
        let kept = h.kept().with_context(|| format!("{} has no epochs", history.display()))?;
        let accuracies = [kept.train_accuracy, kept.val_accuracy];
        if accuracies.iter().any(|a| !(0.0..=1.0).contains(a)) || !kept.val_loss.is_finite() {
            anyhow::bail!("{} records an accuracy outside [0, 1] or a loss that is not finite", history.display());
        }
        Ok((meta, sha, h))
    })();
    let (meta, sha, h) = match checked {
        Ok(x) => x,
        Err(e) => {
            flag(format!("not shown: {e:#}"));
            return None;
        }
    };
    let kept = h.kept()?;
    let eval_path = dir.join(EVAL_FILE);
    let eval = match eval_path.exists().then(|| Evaluation::read(&eval_path)).transpose() {
        Ok(Some(e)) if e.checkpoint_sha256 != sha => {
            flag(format!(
                "its evaluation is not shown: {} evaluates another checkpoint than {} (retrained without being \
                 evaluated?); rerun the greedy command to evaluate it",
                eval_path.display(),
                model.display()
            ));
            None
        }
        Ok(Some(e)) if e.split != split => {
            flag(format!(
                "its evaluation is not shown: {} evaluates the {} split, not {split}",
                eval_path.display(),
                e.split
            ));
            None
        }
        Ok(Some(e)) if e.dataset_fingerprint != meta.dataset_fingerprint || e.depth != depth => {
            flag(format!("its evaluation is not shown: {} used another dataset or depth", eval_path.display()));
            None
        }
        Ok(Some(e))
            if !(0.0..=1.0).contains(&e.accuracy)
                || e.per_class_accuracy.iter().any(|a| !(0.0..=1.0).contains(a))
                || !e.loss.is_finite() =>
        {
            flag(format!("its evaluation is not shown: {} records an accuracy outside [0, 1]", eval_path.display()));
            None
        }
        Ok(e) => e,
        Err(e) => {
            flag(format!("its evaluation is not shown: {e:#}"));
            None
        }
    };
    Some(DepthRow {
        depth,
        train_loss: kept.train_loss,
        train_accuracy: kept.train_accuracy,
        val_loss: kept.val_loss,
        val_accuracy: kept.val_accuracy,
        eval_split: eval.as_ref().map(|e| e.split.to_string()),
        eval_loss: eval.as_ref().map(|e| e.loss),
        eval_accuracy: eval.as_ref().map(|e| e.accuracy),
        eval_samples: eval.as_ref().map(|e| e.samples),
        eval_per_class: eval
            .as_ref()
            .map(|e| e.classes.iter().cloned().zip(e.per_class_accuracy.iter().copied()).collect()),
        trainable_params: meta.trainable_params,
        total_params: h.total_params,
        trained: meta.trained.clone(),
        seconds: h.seconds + eval.as_ref().map_or(0.0, |e| e.seconds),
        epochs: h.epochs.len(),
        host: h.host.clone(),
        reconstruction_loss: h.pretraining.last().map(|e| e.reconstruction_loss),
        val_reconstruction_loss: h.pretraining.last().map(|e| e.val_reconstruction_loss),
        block: conv_block(&meta, depth).map(|b| b.0),
        block_mmacs: conv_block(&meta, depth).map(|b| b.1),
    })
}

/// A convolutional checkpoint's stage `depth`: what it is, and its convolution's
/// multiply-adds per image in millions.
fn conv_block(meta: &CheckpointMeta, depth: usize) -> Option<(String, f64)> {
    let c = meta.cnn.as_ref()?;
    let spec = layerwise_core::cnn::CnnSpec { stages: c.stages.clone(), head_convs: c.head.convs };
    let [cin, h, w] = *spec.conv_inputs(c.image).ok()?.get(depth.checked_sub(1)?)?;
    let s = c.stages.get(depth - 1)?;
    let down = match s.downsample {
        layerwise_core::cnn::Downsample::None => String::new(),
        d => format!("{d}, "),
    };
    Some((format!("{down}{cin}→{} at {h}×{w}", s.out), (9 * cin * s.out * h * w) as f64 / 1e6))
}
