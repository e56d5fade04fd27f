//! `report.md`.

use crate::summary::{Summary, TUTORIAL_TEST_ACCURACY};
use layerwise_core::config::Optimizer;
use layerwise_core::run::Phase;
use std::fmt::Write;

fn opt(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.4}"))
}

/// The objective, with the autoencoder's settings.
fn objective(t: &layerwise_core::config::TrainConfig) -> String {
    match t.objective {
        layerwise_core::config::Objective::Supervised => "supervised".into(),
        layerwise_core::config::Objective::Autoencoder => format!(
            "denoising autoencoder (masking noise {}, {} decoder), then a probe for {} epochs",
            t.corruption,
            t.decoder,
            t.probe_epochs()
        ),
    }
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
        let cnn = p.model.cnn();
        let _ = writeln!(md, "## Settings\n");
        let _ = writeln!(md, "| setting | value |\n| --- | --- |");
        for (k, v) in [
            ("normalization", p.data.normalize.name().to_string()),
            ("validation fraction", format!("{} (the last images of the training set)", p.data.val_fraction)),
            (
                "images",
                {
                    let limits = if p.data.limit_train == 0 && p.data.limit_test == 0 {
                        "all the source's".to_string()
                    } else {
                        format!(
                            "the source's first {} train and {} test images at most (the pipeline's limits)",
                            p.data.limit_train, p.data.limit_test
                        )
                    };
                    // What was really there: the evaluation counted its split.
                    match s.depths.iter().find_map(|r| Some((r.eval_samples?, r.eval_split.clone()?))) {
                        Some((n, split)) => format!("{limits}; {n} {split} images evaluated"),
                        None => limits,
                    }
                },
            ),
            (
                "network",
                match &cnn {
                    Some(c) => format!(
                        "convolutional: stages {}; {} conv block(s) in each head before its 2×2 pooling and linear layer",
                        c.stages.iter().map(|st| st.to_string()).collect::<Vec<_>>().join(", "),
                        c.head_convs
                    ),
                    None => "MLP (dense ReLU layers)".into(),
                },
            ),
            (
                "hidden width",
                if cnn.is_some() {
                    "— (the stages' channels)".into()
                } else if t.widths.is_empty() {
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
                    "dropout {}, weight decay {} ({}), label smoothing {}, lr schedule {}{}, augmentation {}",
                    t.dropout,
                    t.weight_decay,
                    match t.optimizer {
                        Optimizer::Adam => "AdamW: decoupled",
                        Optimizer::Sgd | Optimizer::Lion => "decoupled: weights shrink by lr × decay a step",
                    },
                    t.label_smoothing,
                    t.lr_schedule,
                    if t.warmup_epochs > 0 {
                        format!(" after {} warm-up epoch(s)", t.warmup_epochs)
                    } else {
                        String::new()
                    },
                    t.augment
                ),
            ),
            ("objective", objective(t)),
            (
                "autoencoder loop",
                p.autoencoder.as_ref().map_or("none".into(), |a| {
                    let c = a.config(t);
                    format!("beside the loop: {}, {} pretraining epochs, lr {}", objective(&c), c.epochs, c.lr)
                }),
            ),
            ("head from depth 2", t.head.name().to_string()),
            ("epochs per depth", t.epochs.to_string()),
            ("batch size", t.batch_size.to_string()),
            ("optimizer", t.optimizer_spec().to_string()),
            ("seed", t.seed.to_string()),
            ("max depth", p.greedy.max_depth.to_string()),
            (
                "fine-tuning",
                p.finetune.as_ref().map_or("none".into(), |f| {
                    format!(
                        "{} depth(s), {} epochs, lr {}",
                        f.depths.name(),
                        p.stage_config(Phase::Finetune).epochs,
                        p.stage_config(Phase::Finetune).lr
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
            (
                "patience",
                if p.greedy.patience == 0 { "none".into() } else { layerwise_core::plural(p.greedy.patience, "depth") },
            ),
        ] {
            let _ = writeln!(md, "| {k} | {v} |");
        }
        md.push('\n');
    }
    let split = s.depths.iter().find_map(|r| r.eval_split.clone()).unwrap_or_else(|| "test".into());
    let tutorial = s.compares_with_tutorial();
    let word = s.depth_word();
    let _ = writeln!(md, "## Results by {word}\n");
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
    let _ = write!(md, "| {word} | train loss | train acc | val loss | val acc | {split} loss | {split} acc |");
    if tutorial {
        md.push_str(" tutorial test acc | Δ |");
    }
    let hosts = s.depths.iter().any(|r| r.host.is_some());
    let cnn = s.is_cnn();
    if cnn {
        md.push_str(" block | conv MMACs/image |");
    }
    md.push_str(" trainable params | total params | trained | seconds |");
    if hosts {
        md.push_str(" host |");
    }
    md.push_str("\n|");
    let cols = 12 + if tutorial { 2 } else { 0 } + if cnn { 2 } else { 0 } + usize::from(hosts) - 1;
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
        if cnn {
            let _ = write!(
                md,
                " {} | {} |",
                r.block.as_deref().unwrap_or("–"),
                r.block_mmacs.map_or("–".into(), |m| format!("{m:.1}"))
            );
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
            "**Best {word}: {}** by validation accuracy ({:.4}); its {split} accuracy is {}. \
             The best {word} is chosen on validation accuracy only, never on {split} accuracy.\n",
            b.depth,
            b.val_accuracy,
            opt(b.eval_accuracy)
        );
    }
    if let Some((best, per_class)) = s.best().and_then(|b| Some((b.depth, b.eval_per_class.as_ref()?))) {
        let _ = writeln!(md, "Per-class {split} accuracy at the best {word} ({best}):\n");
        let _ = writeln!(md, "| {} |", per_class.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>().join(" | "));
        let _ = writeln!(md, "|{}", " ---: |".repeat(per_class.len()));
        let _ =
            writeln!(md, "| {} |\n", per_class.iter().map(|(_, a)| format!("{a:.3}")).collect::<Vec<_>>().join(" | "));
    }
    if s.has_other_stages() {
        compare(&mut md, s, &split);
    }
    if s.has_reconstruction() {
        reconstruction(&mut md, s);
    }
    let models: usize = layerwise_core::run::Phase::ALL.iter().map(|&st| s.rows(st).len()).sum();
    if models > s.depths.len() {
        let _ = writeln!(
            md,
            "Total time: {:.1} s of training and evaluation over {models} models ({} greedy depths).\n",
            s.total_seconds,
            s.depths.len()
        );
    } else {
        let _ = writeln!(
            md,
            "Total time: {:.1} s over {}.\n",
            s.total_seconds,
            layerwise_core::plural(s.depths.len(), word)
        );
    }
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

/// The run's models side by side in the layout of Bengio et al. (2007)'s table: a row per
/// way of training (no pretraining; supervised greedy, before and after fine-tuning;
/// autoencoder greedy, before and after fine-tuning), validation and evaluation accuracy
/// by depth; then the run's best model (chosen on validation accuracy among all of them).
fn compare(md: &mut String, s: &Summary, split: &str) {
    use layerwise_core::run::Phase;
    let _ = writeln!(md, "## Does greedy pretraining help?\n");
    let _ = writeln!(
        md,
        "Each depth every way the run trained it (the layout of Bengio et al. 2007, Table 1): a network trained end \
         to end from a fresh initialization (`[baseline]`); the greedy stack as its loop left it; the same stack \
         fine-tuned end to end (`[finetune]`, the epoch with the best validation accuracy kept). An autoencoder \
         stack before fine-tuning is scored by its probe, a softmax layer trained on the frozen features. Cells \
         are validation / {split} accuracy.\n"
    );
    // The paper's order: no pretraining, supervised, unsupervised.
    let order = [Phase::Baseline, Phase::Greedy, Phase::Finetune, Phase::Autoencoder, Phase::AutoencoderFinetune];
    let order: Vec<Phase> = if s.loop_is_autoencoder() {
        [Phase::Baseline, Phase::Greedy, Phase::Finetune].into_iter().collect()
    } else {
        order.into_iter().collect()
    };
    let mut all: Vec<usize> = Phase::ALL.iter().flat_map(|&st| s.rows(st).iter().map(|r| r.depth)).collect();
    all.sort_unstable();
    all.dedup();
    let _ = write!(md, "| training |");
    for d in &all {
        let _ = write!(md, " depth {d} |");
    }
    let _ = writeln!(md, "\n| --- |{}", " ---: |".repeat(all.len()));
    for stage in order {
        let rows = s.rows(stage);
        if rows.is_empty() {
            continue;
        }
        let _ = write!(md, "| {} |", s.stage_label(stage));
        for d in &all {
            let cell = rows
                .iter()
                .find(|r| r.depth == *d)
                .map_or("–".into(), |r| format!("{:.4} / {}", r.val_accuracy, opt(r.eval_accuracy)));
            let _ = write!(md, " {cell} |");
        }
        md.push('\n');
    }
    md.push('\n');
    if let Some(b) = &s.best {
        let _ = writeln!(
            md,
            "**Best model of the run: {}, depth {}**, by validation accuracy ({:.4}) among every model above; \
             its {split} accuracy is {}. It is chosen on validation accuracy only.\n",
            s.stage_label(b.stage),
            b.depth,
            b.val_accuracy,
            opt(b.test_accuracy)
        );
    }
}

/// Reconstruction loss by depth of every autoencoder-pretrained depth.
fn reconstruction(md: &mut String, s: &Summary) {
    use layerwise_core::run::Phase;
    let _ = writeln!(md, "## Reconstruction by depth\n");
    let _ = writeln!(
        md,
        "Each autoencoder layer's denoising objective at its last pretraining epoch: the mean squared error between \
         its clean input (the images at depth 1, the frozen stack's features after) and the reconstruction from a \
         corrupted copy, on the training split (during the epoch) and on the validation split (after it, with fixed \
         masks). Depths differ in what they reconstruct, so compare a depth's two columns, not depths with each \
         other.\n"
    );
    let _ = writeln!(md, "| loop | depth | train reconstruction | val reconstruction | probe val acc |\n| --- | ---: | ---: | ---: | ---: |");
    for stage in [Phase::Greedy, Phase::Autoencoder] {
        for r in s.rows(stage) {
            if let (Some(t), Some(v)) = (r.reconstruction_loss, r.val_reconstruction_loss) {
                let _ = writeln!(md, "| {} | {} | {t:.5} | {v:.5} | {:.4} |", stage.name(), r.depth, r.val_accuracy);
            }
        }
    }
    md.push('\n');
}
