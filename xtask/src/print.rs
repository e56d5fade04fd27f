//! The print executor (`--print-commands`): every job of a run's [`Schedule`] as a shell
//! line, in order, after the lines that record the pipeline; the gates become comments
//! (the printed plan lists every depth, and says which lines a gate would skip).

use crate::args::GreedyArgs;
use crate::plan::{shell_quote, Plan};
use crate::schedule::{after_loop_stages, Schedule, Task};
use anyhow::Result;
use layerwise_core::pipeline::Depths;
use layerwise_core::run::{Phase, PIPELINE_FILE};

/// The whole plan as shell lines: comments, then one stage command per line.
pub fn commands(plan: &Plan, a: &GreedyArgs) -> Result<Vec<String>> {
    let schedule = Schedule::build(plan, a.inputs.source.as_deref(), a.from.as_deref())?;
    let p = &plan.pipeline;
    let mut lines = vec![
        format!(
            "# layerwise greedy plan: pipeline `{}` ({}), up to depth {}",
            p.name,
            plan.pipeline_path.display(),
            p.greedy.max_depth
        ),
        "# stage binaries on PATH: cargo install --path crates/<stage>, or export PATH=\"$PWD/target/release:$PATH\" \
         after cargo build --release"
            .into(),
    ];
    if p.greedy.patience > 0 {
        lines.push(format!(
            "# patience {}: `cargo xtask greedy` stops once validation accuracy has not improved for {}; \
             this plan lists every depth",
            p.greedy.patience,
            layerwise_core::plural(p.greedy.patience, "depth")
        ));
    }
    let run_dir = shell_quote(&plan.run_dir.to_string_lossy());
    let recorded = shell_quote(&plan.run_dir.join(PIPELINE_FILE).to_string_lossy());
    lines.push(if a.overrides_pipeline() {
        // The run records the pipeline with the overrides applied, written out line by line.
        let text = plan.pipeline.to_toml()?;
        let args: Vec<String> = text.lines().map(shell_quote).collect();
        format!("mkdir -p {run_dir} && printf '%s\\n' {} > {recorded}", args.join(" "))
    } else {
        format!("mkdir -p {run_dir} && cp {} {recorded}", shell_quote(&plan.pipeline_path.to_string_lossy()))
    });
    let sections = after_loop_stages(p);
    let mut section: Option<Phase> = Some(Phase::Greedy);
    for job in &schedule.jobs {
        if job.task == Task::Decoupled {
            let d = &plan.decoupled;
            lines.push(format!(
                "# decoupled: every depth at once, {} ({} {}, launcher {}); then each depth's evaluation",
                p.decoupled.schedule_name(),
                d.groups,
                if d.groups == 1 { "group" } else { "groups" },
                d.launcher
            ));
        }
        if let Task::Train { stage, .. } = job.task {
            if section != Some(stage) {
                section = Some(stage);
                lines.push(match sections.iter().find(|(s, _)| *s == stage).map(|(_, c)| c.depths) {
                    None => "# [autoencoder]: the same depths again, each layer pretrained without labels, then probed"
                        .into(),
                    Some(Depths::All) => format!("# [{}]: every depth the loop trained", stage.name()),
                    Some(Depths::Best) => format!(
                        "# [{}] depths = \"best\": run only the best depth's two lines (the highest validation \
                         accuracy in {}-NN/train.json, the first on a tie); `cargo xtask greedy` decides this itself",
                        stage.name(),
                        stage.loop_phase().prefix()
                    ),
                });
            }
        }
        lines.push(job.step.command_line());
    }
    Ok(lines)
}
