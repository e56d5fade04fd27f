//! `report.md`.

use crate::{Summary, TUTORIAL_TEST_ACCURACY};
use std::fmt::Write;

fn opt(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.4}"))
}

pub(crate) fn render(s: &Summary, notes: Option<&str>) -> String {
    let mut md = String::new();
    let name = s.pipeline.as_ref().map_or("(pipeline not recorded)", |p| p.name.as_str());
    let _ = writeln!(md, "# layerwise run: {name}\n");
    if let Some(p) = &s.pipeline {
        if !p.description.is_empty() {
            let _ = writeln!(md, "{}\n", p.description);
        }
        let t = &p.train;
        let _ = writeln!(md, "## Settings\n");
        let _ = writeln!(md, "| setting | value |\n| --- | --- |");
        for (k, v) in [
            ("normalization", p.data.normalize.name().to_string()),
            ("validation fraction", format!("{} (the last images of the training set)", p.data.val_fraction)),
            (
                "images",
                if p.data.limit_train == 0 {
                    "all".into()
                } else {
                    format!("first {} train, {} test", p.data.limit_train, p.data.limit_test)
                },
            ),
            (
                "hidden width",
                if t.widths.is_empty() {
                    t.width.to_string()
                } else {
                    format!(
                        "{} by depth ({} beyond)",
                        t.widths.iter().map(|w| w.to_string()).collect::<Vec<_>>().join(", "),
                        t.width
                    )
                },
            ),
            (
                "regularization and schedule",
                format!(
                    "dropout {}, weight decay {} (AdamW), lr schedule {}{}, augmentation {}",
                    t.dropout,
                    t.weight_decay,
                    t.lr_schedule,
                    if t.warmup_epochs > 0 {
                        format!(" after {} warm-up epoch(s)", t.warmup_epochs)
                    } else {
                        String::new()
                    },
                    t.augment
                ),
            ),
            ("head from depth 2", t.head.name().to_string()),
            ("epochs per depth", t.epochs.to_string()),
            ("batch size", t.batch_size.to_string()),
            ("Adam", format!("lr {}, β1 {}, β2 {}, ε {:e}", t.lr, t.beta1, t.beta2, t.epsilon)),
            ("seed", t.seed.to_string()),
            ("max depth", p.greedy.max_depth.to_string()),
            (
                "fine-tuning",
                p.finetune.as_ref().map_or("none".into(), |f| {
                    format!(
                        "{} depth(s), {} epochs, lr {}",
                        f.depths.name(),
                        f.epochs.unwrap_or(t.epochs),
                        f.lr.unwrap_or(t.lr / 10.0)
                    )
                }),
            ),
            (
                "baseline from scratch",
                p.baseline.as_ref().map_or("none".into(), |b| {
                    format!(
                        "{} depth(s), {} epochs, lr {}",
                        b.depths.name(),
                        b.epochs.unwrap_or(t.epochs),
                        b.lr.unwrap_or(t.lr)
                    )
                }),
            ),
            ("patience", if p.greedy.patience == 0 { "none".into() } else { format!("{} depths", p.greedy.patience) }),
        ] {
            let _ = writeln!(md, "| {k} | {v} |");
        }
        md.push('\n');
    }
    let split = s.depths.iter().find_map(|r| r.eval_split.clone()).unwrap_or_else(|| "test".into());
    let tutorial = s.compares_with_tutorial();
    let _ = writeln!(md, "## Results by depth\n");
    if !s.missing_depths.is_empty() {
        let list: Vec<String> = s.missing_depths.iter().map(|d| d.to_string()).collect();
        let _ = writeln!(
            md,
            "> **Incomplete run: depth {} missing** (no checkpoint and training history). The table, the plot and \
             the best depth cover only the depths present; finish the run (rerun the same `cargo xtask greedy`) \
             before drawing conclusions.\n",
            list.join(", ")
        );
    }
    for p in &s.problems {
        let _ = writeln!(md, "> **Warning:** {p}\n");
    }
    let _ = write!(md, "| depth | train loss | train acc | val loss | val acc | {split} loss | {split} acc |");
    if tutorial {
        md.push_str(" tutorial test acc | Δ |");
    }
    let hosts = s.depths.iter().any(|r| r.host.is_some());
    md.push_str(" trainable params | total params | trained | seconds |");
    if hosts {
        md.push_str(" host |");
    }
    md.push_str("\n|");
    let cols = 12 + if tutorial { 2 } else { 0 } + usize::from(hosts) - 1;
    md.push_str(&" ---: |".repeat(cols));
    md.push('\n');
    for r in &s.depths {
        let best = if Some(r.depth) == s.best_depth { " **(best)**" } else { "" };
        let _ = write!(
            md,
            "| {}{best} | {:.4} | {:.4} | {:.4} | {:.4} | {} | {} |",
            r.depth,
            r.train_loss,
            r.train_accuracy,
            r.val_loss,
            r.val_accuracy,
            opt(r.eval_loss),
            opt(r.eval_accuracy)
        );
        if tutorial {
            let t = TUTORIAL_TEST_ACCURACY.get(r.depth - 1).copied();
            let d = t.zip(r.eval_accuracy).map(|(t, a)| format!("{:+.4}", a - t)).unwrap_or("–".into());
            let _ = write!(md, " {} | {d} |", opt(t));
        }
        let _ =
            write!(md, " {} | {} | {} | {:.1} |", r.trainable_params, r.total_params, r.trained.join(", "), r.seconds);
        if hosts {
            let _ = write!(md, " {} |", r.host.as_deref().unwrap_or("–"));
        }
        md.push('\n');
    }
    md.push('\n');
    if let Some(b) = s.best() {
        let _ = writeln!(
            md,
            "**Best depth: {}** by validation accuracy ({:.4}); its {split} accuracy is {}. \
             The best depth is chosen on validation accuracy only, never on {split} accuracy.\n",
            b.depth,
            b.val_accuracy,
            opt(b.eval_accuracy)
        );
    }
    if let Some((best, per_class)) = s.best().and_then(|b| Some((b.depth, b.eval_per_class.as_ref()?))) {
        let _ = writeln!(md, "Per-class {split} accuracy at the best depth ({best}):\n");
        let _ = writeln!(md, "| {} |", per_class.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>().join(" | "));
        let _ = writeln!(md, "|{}", " ---: |".repeat(per_class.len()));
        let _ =
            writeln!(md, "| {} |\n", per_class.iter().map(|(_, a)| format!("{a:.3}")).collect::<Vec<_>>().join(" | "));
    }
    if !s.finetune.is_empty() || !s.baseline.is_empty() {
        compare(&mut md, s, &split);
    }
    let _ = writeln!(md, "Total time: {:.1} s over {} depths.\n", s.total_seconds, s.depths.len());
    let _ = writeln!(md, "![accuracy and loss by depth](accuracy.svg)\n");
    if tutorial {
        let _ = writeln!(
            md,
            "The tutorial column is the Keras tutorial's single published run \
             (test accuracy 0.4847, 0.5137, 0.5049, 0.5003, 0.4873, 0.4874, 0.4802, 0.4819, 0.4786, 0.4790); \
             the same Keras code varies by a few points from run to run.\n"
        );
    }
    if let Some(notes) = notes {
        let _ = writeln!(md, "## Notes\n\n{}", notes.trim());
    }
    md
}

/// Greedy, greedy + fine-tuned and end to end from scratch, side by side by depth, and the
/// run's best model (chosen on validation accuracy among all of them).
fn compare(md: &mut String, s: &Summary, split: &str) {
    let _ = writeln!(md, "## Greedy, fine-tuned, and trained from scratch\n");
    let _ = writeln!(
        md,
        "Each depth three ways: the greedy stack as the loop left it, the same stack fine-tuned end to end \
         (`[finetune]`, the epoch with the best validation accuracy kept), and a network of the same depth \
         trained end to end from Glorot initialization (`[baseline]`).\n"
    );
    let _ = writeln!(
        md,
        "| depth | greedy val | greedy {split} | fine-tuned val | fine-tuned {split} | from scratch val | from scratch {split} |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let mut all: Vec<usize> = s.depths.iter().chain(&s.finetune).chain(&s.baseline).map(|r| r.depth).collect();
    all.sort_unstable();
    all.dedup();
    let cell = |rows: &[crate::DepthRow], d: usize| -> (String, String) {
        rows.iter()
            .find(|r| r.depth == d)
            .map_or(("–".into(), "–".into()), |r| (format!("{:.4}", r.val_accuracy), opt(r.eval_accuracy)))
    };
    for d in all {
        let (gv, gt) = cell(&s.depths, d);
        let (fv, ft) = cell(&s.finetune, d);
        let (bv, bt) = cell(&s.baseline, d);
        let _ = writeln!(md, "| {d} | {gv} | {gt} | {fv} | {ft} | {bv} | {bt} |");
    }
    md.push('\n');
    if let Some(b) = &s.best {
        let stage = match b.stage {
            layerwise_core::run::Stage::Greedy => "greedy",
            layerwise_core::run::Stage::Finetune => "greedy + fine-tuned",
            layerwise_core::run::Stage::Baseline => "end to end from scratch",
        };
        let _ = writeln!(
            md,
            "**Best model of the run: {stage}, depth {}**, by validation accuracy ({:.4}) among every model above; \
             its {split} accuracy is {}. It is chosen on validation accuracy only.\n",
            b.depth,
            b.val_accuracy,
            opt(b.test_accuracy)
        );
    }
}
