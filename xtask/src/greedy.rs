//! `cargo xtask greedy`: a run's plan handed to one of the three executors of its
//! schedule: `--print-commands` ([`crate::print`]), `--scheduler slurm`
//! ([`crate::slurm`]), or this machine ([`crate::local`]).
//!
//! A run folder holds `pipeline.toml` (the pipeline it runs), `depth-NN/` folders
//! (`model.safetensors`, `train.json`, `eval.json`), the folders of the stages after the
//! loop, and the report. Complete folders are never redone ([`crate::judge`]).

use crate::args::{GreedyArgs, Scheduler};
use crate::local::GreedyOutcome;
use crate::plan::Plan;
use anyhow::Result;

/// Run (or print, or hand to a scheduler) the greedy loop. The outcome is the local run's.
pub fn run(a: &GreedyArgs) -> Result<Option<GreedyOutcome>> {
    // A run on this machine needs the device in this build: said before anything is read
    // or made (printed commands and Slurm jobs may run on another machine's build).
    let here = !a.print_commands && a.inputs.scheduler.is_none();
    if here && a.inputs.device == layerwise_nn::device::DeviceKind::Cuda && !layerwise_nn::device::CUDA_BUILT {
        return Err(layerwise_nn::device::cuda_missing());
    }
    let plan = Plan::new(a)?;
    if a.print_commands {
        for line in crate::print::commands(&plan, a)? {
            println!("{line}");
        }
        return Ok(None);
    }
    a.inputs.slurm.check(a.inputs.scheduler)?;
    match a.inputs.scheduler {
        Some(Scheduler::Slurm) => {
            crate::slurm::greedy(&plan, a)?;
            Ok(None)
        }
        None => crate::local::run(&plan, a).map(Some),
    }
}
