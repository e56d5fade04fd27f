//! The settings of decoupled greedy learning (Belilovsky, Eickenberg & Oyallon 2020):
//! `[greedy] schedule = "decoupled"` trains every stage of a convolutional pipeline at
//! once, and `[decoupled]` says how: how many groups of stages, whether the groups step in
//! lockstep (synchronous: the bytes of the one-group run) or through bounded buffers
//! (asynchronous), and which launcher runs the groups (threads of one process, or MPI
//! ranks). The training stage runs them (`layerwise_train::decoupled`); the orchestrator
//! schedules them as one job.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// How the greedy loop trains its depths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// One depth after another: depth k trains once depths 1..k−1 are done (the default).
    #[default]
    Sequential,
    /// Every depth at once: each stage trains on its predecessor's current output.
    Decoupled,
}

named_enum!(Schedule, "schedule", { Sequential => "sequential", Decoupled => "decoupled" });

/// How the groups of a decoupled run step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every stage trains on batch t after its predecessor did: the same bytes however the
    /// stages are grouped and launched.
    #[default]
    Sync,
    /// Each link holds a bounded buffer; a stage trains on the freshest least-reused batch
    /// there, never waiting for a slower predecessor once the buffer holds one.
    Async,
}

named_enum!(Mode, "decoupled mode", { Sync => "sync", Async => "async" });

/// What runs the groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Launcher {
    /// Threads of one process, linked by bounded in-process channels.
    #[default]
    Threads,
    /// MPI ranks (`mpirun -n N` or `srun`), one group each; needs the `mpi` build feature.
    Mpi,
}

named_enum!(Launcher, "launcher", { Threads => "threads", Mpi => "mpi" });

/// The largest buffer of a link, in batches.
pub const MAX_BUFFER: usize = 1024;
/// The largest reuse limit.
pub const MAX_REUSE: u32 = 1000;

/// `[decoupled]`: how a decoupled schedule runs. Every key is optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecoupledConfig {
    /// Groups of contiguous stages (1 to the number of stages); `--groups` overrides it.
    pub groups: usize,
    /// `sync` (the default) or `async`.
    pub mode: Mode,
    /// Asynchronous mode: batches a link's buffer holds.
    pub buffer: usize,
    /// Asynchronous mode: the most times a stage trains on one batch.
    pub reuse: u32,
    /// `threads` (the default) or `mpi`; `--launcher` overrides it.
    pub launcher: Launcher,
}

impl Default for DecoupledConfig {
    fn default() -> Self {
        Self { groups: 1, mode: Mode::Sync, buffer: 4, reuse: 2, launcher: Launcher::Threads }
    }
}

impl DecoupledConfig {
    /// Check every value against a network of `stages` stages, naming the key.
    pub fn validate(&self, stages: usize) -> Result<()> {
        if self.groups == 0 || self.groups > stages {
            bail!(
                "`decoupled.groups` is {}: it must be 1 to the {} the loop trains (a group is a run of whole stages)",
                self.groups,
                crate::plural(stages, "stage")
            );
        }
        if self.buffer == 0 || self.buffer > MAX_BUFFER {
            bail!("`decoupled.buffer` is {}: it must be 1 to {MAX_BUFFER} batches", self.buffer);
        }
        if self.reuse == 0 || self.reuse > MAX_REUSE {
            bail!("`decoupled.reuse` is {}: it must be 1 to {MAX_REUSE} uses of a batch", self.reuse);
        }
        Ok(())
    }

    /// How a checkpoint names the schedule that trained it (`decoupled sync`): settings
    /// that change what is computed, not how it is run (groups, launcher).
    pub fn schedule_name(&self) -> String {
        match self.mode {
            Mode::Sync => "decoupled sync".into(),
            Mode::Async => format!("decoupled async, buffer {}, reuse {}", self.buffer, self.reuse),
        }
    }

    /// The stages (0-based, `first..end`) of each of `groups` groups over `stages` stages:
    /// contiguous, as even as they can be, earlier groups one stage longer.
    pub fn split(stages: usize, groups: usize) -> Vec<std::ops::Range<usize>> {
        let groups = groups.clamp(1, stages.max(1));
        let (base, extra) = (stages / groups, stages % groups);
        let mut start = 0;
        (0..groups)
            .map(|g| {
                let len = base + usize::from(g < extra);
                start += len;
                start - len..start
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::DecoupledConfig;

    #[test]
    fn groups_are_contiguous_runs_of_whole_stages() {
        assert_eq!(DecoupledConfig::split(3, 1), [0..3]);
        assert_eq!(DecoupledConfig::split(3, 3), [0..1, 1..2, 2..3]);
        assert_eq!(DecoupledConfig::split(5, 2), [0..3, 3..5]);
        assert_eq!(DecoupledConfig::split(4, 9), [0..1, 1..2, 2..3, 3..4]);
    }

    #[test]
    fn a_bad_value_is_named() {
        let e = |c: DecoupledConfig| format!("{:#}", c.validate(3).unwrap_err());
        assert!(e(DecoupledConfig { groups: 4, ..Default::default() }).contains("`decoupled.groups` is 4"));
        assert!(e(DecoupledConfig { buffer: 0, ..Default::default() }).contains("`decoupled.buffer`"));
        assert!(e(DecoupledConfig { reuse: 0, ..Default::default() }).contains("`decoupled.reuse`"));
        assert!(DecoupledConfig::default().validate(3).is_ok());
    }
}
