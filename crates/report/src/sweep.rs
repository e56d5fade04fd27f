//! The report over several runs (a sweep over seeds and pipelines): mean, standard
//! deviation, minimum and maximum of validation and evaluation accuracy by depth, per
//! pipeline and stage; how often each depth was chosen as best; a plot with a band.

use crate::summary::{best_by_validation, collect, DepthRow, Summary, TUTORIAL_TEST_ACCURACY};
use anyhow::{bail, Context, Result};
use layerwise_core::run::Phase;
use layerwise_core::run::{SweepList, PIPELINE_FILE, SWEEP_FILE, SWEEP_LIST_SCHEMA};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// `schema` of a sweep's `summary.json`.
pub const SWEEP_SCHEMA: &str = "layerwise-sweep-summary";
/// Mean, sample standard deviation (n − 1; 0 for one value), minimum and maximum.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stat {
    /// Values.
    pub n: usize,
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation.
    pub std: f64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
}

impl Stat {
    /// Of these values; `None` when there are none.
    pub fn of(values: &[f64]) -> Option<Stat> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let var = if n > 1 { values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64 } else { 0.0 };
        let (min, max) = values.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        Some(Stat { n, mean, std: var.sqrt(), min, max })
    }
}

/// One depth across a group's runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DepthStat {
    /// Depth.
    pub depth: usize,
    /// Validation accuracy (last epoch) over the runs that trained this depth.
    pub val_accuracy: Stat,
    /// Evaluation accuracy over the runs that evaluated it.
    pub eval_accuracy: Option<Stat>,
    /// Evaluation loss over the runs that evaluated it.
    pub eval_loss: Option<Stat>,
    /// In how many runs this depth was the best by validation accuracy.
    pub chosen_as_best: usize,
}

/// One run of a sweep.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRow {
    /// Run folder name.
    pub run: String,
    /// Its pipeline's name.
    pub pipeline: String,
    /// Its seed.
    pub seed: Option<u64>,
    /// Depths trained.
    pub depths: usize,
    /// Its best depth by validation accuracy.
    pub best_depth: Option<usize>,
    /// Validation accuracy of that depth.
    pub best_val_accuracy: Option<f64>,
    /// Evaluation accuracy of that depth.
    pub best_eval_accuracy: Option<f64>,
    /// Seconds of training and evaluation.
    pub seconds: f64,
    /// The hosts its depths ran on.
    pub hosts: Vec<String>,
}

/// The runs of one pipeline, at one stage of training.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group {
    /// Pipeline name.
    pub pipeline: String,
    /// Phase: `greedy` (the loop's depths), `finetune`, `baseline`, `autoencoder` or
    /// `autoencoder-finetune`.
    pub stage: String,
    /// The pipeline's published reference (`keras-tutorial`), if any.
    pub reference: Option<String>,
    /// Its runs.
    pub runs: Vec<String>,
    /// Split evaluated (usually test).
    pub eval_split: String,
    /// By depth.
    pub depths: Vec<DepthStat>,
    /// Validation accuracy of each run's best depth.
    pub best_val_accuracy: Option<Stat>,
    /// Evaluation accuracy of each run's best depth (chosen on validation).
    pub best_eval_accuracy: Option<Stat>,
}

/// A sweep's `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct SweepSummary {
    /// [`SWEEP_SCHEMA`].
    pub schema: String,
    /// 1.
    pub version: u32,
    /// Per pipeline and stage.
    pub groups: Vec<Group>,
    /// Per run.
    pub runs: Vec<RunRow>,
}

/// The runs of a sweep folder: those its `sweep.json` lists, else every sub-folder that
/// holds a `pipeline.toml`.
pub fn sweep_runs(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        bail!("sweep folder {} does not exist", dir.display());
    }
    let list = dir.join(SWEEP_FILE);
    if list.exists() {
        let text =
            layerwise_core::fsread::read_text_capped(&list, "sweep list", layerwise_core::fsread::MAX_JSON_BYTES)?;
        let l: SweepList = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a layerwise sweep list (or is damaged)", list.display()))?;
        if l.schema != SWEEP_LIST_SCHEMA || l.version != 1 {
            bail!(
                "{}: schema `{}` version {}, expected `{SWEEP_LIST_SCHEMA}` version 1",
                list.display(),
                l.schema,
                l.version
            );
        }
        return Ok(l.runs.iter().map(|r| dir.join(r)).collect());
    }
    let mut runs: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join(PIPELINE_FILE).is_file())
        .collect();
    runs.sort();
    if runs.is_empty() {
        bail!("{} holds no run folders (sub-folders with a pipeline.toml) and no {SWEEP_FILE}", dir.display());
    }
    Ok(runs)
}

/// Read the runs and aggregate them.
pub fn collect_sweep(runs: &[PathBuf]) -> Result<SweepSummary> {
    if runs.is_empty() {
        bail!("no runs to report on");
    }
    let mut summaries: Vec<Summary> = Vec::new();
    for r in runs {
        let s = collect(r).with_context(|| format!("run {}", r.display()))?;
        if s.depths.is_empty() {
            bail!(
                "run {} holds no completed depth: finish it (or leave it out) before reporting the sweep",
                r.display()
            );
        }
        summaries.push(s);
    }
    let pipeline_name =
        |s: &Summary| s.pipeline.as_ref().map_or_else(|| "(unrecorded)".to_string(), |p| p.name.clone());
    let mut groups: BTreeMap<String, Vec<&Summary>> = BTreeMap::new();
    for s in &summaries {
        groups.entry(pipeline_name(s)).or_default().push(s);
    }
    let mut out_groups = Vec::new();
    for (pipeline, members) in groups {
        for stage in Phase::ALL {
            let rows_of = |s: &'_ Summary| -> Vec<DepthRow> { s.rows(stage).to_vec() };
            if members.iter().all(|s| rows_of(s).is_empty()) {
                continue;
            }
            #[derive(Default)]
            struct Acc {
                val: Vec<f64>,
                eval: Vec<f64>,
                eval_loss: Vec<f64>,
                chosen: usize,
            }
            let mut by_depth: BTreeMap<usize, Acc> = BTreeMap::new();
            // Each run's best depth of this stage, on validation accuracy.
            let mut bests: Vec<&DepthRow> = Vec::new();
            let rows: Vec<Vec<DepthRow>> = members.iter().map(|s| rows_of(s)).collect();
            for run_rows in &rows {
                let best = best_by_validation(run_rows.iter().map(|r| (r.depth, r.val_accuracy))).map(|b| b.0);
                for r in run_rows {
                    let e = by_depth.entry(r.depth).or_default();
                    e.val.push(r.val_accuracy);
                    e.eval.extend(r.eval_accuracy);
                    e.eval_loss.extend(r.eval_loss);
                    e.chosen += usize::from(best == Some(r.depth));
                    if best == Some(r.depth) {
                        bests.push(r);
                    }
                }
            }
            let depths = by_depth
                .into_iter()
                .filter_map(|(depth, a)| {
                    Some(DepthStat {
                        depth,
                        val_accuracy: Stat::of(&a.val)?,
                        eval_accuracy: Stat::of(&a.eval),
                        eval_loss: Stat::of(&a.eval_loss),
                        chosen_as_best: a.chosen,
                    })
                })
                .collect();
            let best_val: Vec<f64> = bests.iter().map(|b| b.val_accuracy).collect();
            let best_eval: Vec<f64> = bests.iter().filter_map(|b| b.eval_accuracy).collect();
            let eval_split = rows.iter().flatten().find_map(|r| r.eval_split.clone()).unwrap_or_else(|| "test".into());
            out_groups.push(Group {
                pipeline: pipeline.clone(),
                stage: stage.name().into(),
                reference: if stage == Phase::Greedy {
                    members.iter().find_map(|s| s.pipeline.as_ref()?.reference.clone())
                } else {
                    None
                },
                runs: members.iter().map(|s| s.run.clone()).collect(),
                eval_split,
                depths,
                best_val_accuracy: Stat::of(&best_val),
                best_eval_accuracy: Stat::of(&best_eval),
            });
        }
    }
    let groups = out_groups;
    let runs = summaries
        .iter()
        .map(|s| {
            let mut hosts: Vec<String> = s.depths.iter().filter_map(|r| r.host.clone()).collect();
            hosts.sort();
            hosts.dedup();
            RunRow {
                run: s.run.clone(),
                pipeline: pipeline_name(s),
                seed: s.pipeline.as_ref().map(|p| p.train.seed),
                depths: s.depths.len(),
                best_depth: s.best_depth,
                best_val_accuracy: s.best().map(|b| b.val_accuracy),
                best_eval_accuracy: s.best().and_then(|b| b.eval_accuracy),
                seconds: s.total_seconds,
                hosts,
            }
        })
        .collect();
    Ok(SweepSummary { schema: SWEEP_SCHEMA.into(), version: 1, groups, runs })
}

fn pm(s: &Stat) -> String {
    format!("{:.4} ± {:.4}", s.mean, s.std)
}

fn range(s: &Stat) -> String {
    format!("{:.4}–{:.4}", s.min, s.max)
}

/// The sweep's `report.md`.
pub(crate) fn render(s: &SweepSummary) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# layerwise sweep: {} runs\n", s.runs.len());
    let _ = writeln!(
        md,
        "Each row aggregates the runs that trained that depth: mean ± sample standard deviation, \
         and the range (minimum–maximum). A run's best depth is chosen on validation accuracy, \
         never on test accuracy.\n"
    );
    for g in &s.groups {
        let sp = &g.eval_split;
        let _ = writeln!(md, "## Pipeline `{}`, stage {} ({} runs)\n", g.pipeline, g.stage, g.runs.len());
        let tutorial = g.reference.as_deref() == Some("keras-tutorial");
        let _ = write!(
            md,
            "| depth | runs | val acc | val range | {sp} acc | {sp} range | {sp} loss | {sp} loss range | chosen as best |"
        );
        let columns = 9 + usize::from(tutorial);
        if tutorial {
            md.push_str(" tutorial test acc |");
        }
        let _ = writeln!(md, "\n|{}", " ---: |".repeat(columns));
        let both = |s: Option<&Stat>| s.map_or(("–".into(), "–".into()), |e| (pm(e), range(e)));
        for d in &g.depths {
            let (e, er) = both(d.eval_accuracy.as_ref());
            let (l, lr) = both(d.eval_loss.as_ref());
            let _ = write!(
                md,
                "| {} | {} | {} | {} | {e} | {er} | {l} | {lr} | {} of {} |",
                d.depth,
                d.val_accuracy.n,
                pm(&d.val_accuracy),
                range(&d.val_accuracy),
                d.chosen_as_best,
                g.runs.len()
            );
            if tutorial {
                let t = TUTORIAL_TEST_ACCURACY.get(d.depth.wrapping_sub(1));
                let _ = write!(md, " {} |", t.map_or("–".into(), |t| format!("{t:.4}")));
            }
            md.push('\n');
        }
        md.push('\n');
        let mut chosen: Vec<(usize, usize)> =
            g.depths.iter().filter(|d| d.chosen_as_best > 0).map(|d| (d.depth, d.chosen_as_best)).collect();
        chosen.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let chosen: Vec<String> = chosen.iter().map(|(d, n)| format!("depth {d} in {n}")).collect();
        let _ = writeln!(md, "Best depth by validation accuracy: {} of {} runs.", chosen.join(", "), g.runs.len());
        if let (Some(v), Some(e)) = (&g.best_val_accuracy, &g.best_eval_accuracy) {
            let _ = writeln!(
                md,
                "At each run's best depth: validation accuracy {} (range {}), {sp} accuracy {} (range {}).",
                pm(v),
                range(v),
                pm(e),
                range(e)
            );
        }
        md.push('\n');
    }
    let _ = writeln!(md, "![accuracy by depth, mean and range over runs](accuracy.svg)\n");
    let _ = writeln!(md, "## Runs\n");
    let _ = writeln!(
        md,
        "| run | pipeline | seed | depths | best depth | its val acc | its eval acc | seconds | hosts |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    );
    let opt = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.4}"));
    for r in &s.runs {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} | {} |",
            r.run,
            r.pipeline,
            r.seed.map_or("–".into(), |s| s.to_string()),
            r.depths,
            r.best_depth.map_or("–".into(), |d| d.to_string()),
            opt(r.best_val_accuracy),
            opt(r.best_eval_accuracy),
            r.seconds,
            if r.hosts.is_empty() { "–".into() } else { r.hosts.join(", ") }
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::Stat;

    #[test]
    fn stat_is_mean_sample_std_min_max() {
        let s = Stat::of(&[0.5, 0.7, 0.6]).unwrap();
        assert!((s.mean - 0.6).abs() < 1e-12 && (s.std - 0.1).abs() < 1e-12, "{s:?}");
        assert_eq!((s.n, s.min, s.max), (3, 0.5, 0.7));
        assert_eq!(Stat::of(&[0.4]).unwrap().std, 0.0);
        assert_eq!(Stat::of(&[]), None);
    }
}
