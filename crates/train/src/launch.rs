//! Where a decoupled run starts: the launcher its settings name. Threads of this process
//! ([`run_threads`]), or MPI ranks (`mpi_links.rs`).

use crate::decoupled::{say, write_checkpoints, DecoupledOptions, Shared};
use crate::group::{run_group, GroupReport};
use crate::links::{Inbox, LinkClosed, Outbox, ThreadInbox, ThreadOut, ThreadOutbox};
use crate::options::TrainOutcome;
use anyhow::{anyhow, Result};
use layerwise_core::decoupled::{Launcher, Mode};
use std::sync::mpsc;
use std::time::Instant;

/// Train every stage at once and write each depth's checkpoint; returns them in depth
/// order (an MPI rank other than 0 returns none: rank 0 writes them).
pub fn train_decoupled(opts: &DecoupledOptions) -> Result<Vec<TrainOutcome>> {
    match opts.decoupled.launcher {
        Launcher::Threads => run_threads(opts),
        Launcher::Mpi => crate::mpi_links::run_mpi(opts),
    }
}

/// Run every group as a thread of this process (each with its share of the cores for
/// its products), then write the checkpoints.
pub(crate) fn run_threads(opts: &DecoupledOptions) -> Result<Vec<TrainOutcome>> {
    let shared = Shared::new(opts)?;
    let started = Instant::now();
    let groups = shared.groups();
    let all = 0..shared.stages.len();
    let epoch = shared.latest_saved(all);
    say(&shared, epoch);
    let reports = if epoch == opts.config.epochs {
        Vec::new()
    } else {
        // Each group's products get its share of the threads this process may use
        // (RAYON_NUM_THREADS, else the cores).
        let per_group = (rayon::current_num_threads() / groups.len()).max(1);
        let progress = opts.progress;
        let mut inboxes: Vec<Option<ThreadInbox>> = vec![None];
        let mut outboxes: Vec<Option<ThreadOutbox>> = Vec::new();
        for g in 1..groups.len() {
            let link = groups[g].start;
            let (tx, rx) = match opts.decoupled.mode {
                Mode::Sync => {
                    let (tx, rx) = mpsc::sync_channel(opts.decoupled.buffer);
                    (ThreadOut::Bounded(tx), rx)
                }
                Mode::Async => {
                    let (tx, rx) = mpsc::channel();
                    (ThreadOut::Unbounded(tx), rx)
                }
            };
            outboxes.push(Some(ThreadOutbox { tx, link }));
            inboxes.push(Some(ThreadInbox { rx, link }));
        }
        outboxes.push(None);
        let results: Vec<Result<GroupReport>> = std::thread::scope(|s| {
            let handles: Vec<_> = groups
                .iter()
                .cloned()
                .enumerate()
                .zip(inboxes.into_iter().zip(outboxes))
                .map(|((g, range), (inbox, outbox))| {
                    let shared = &shared;
                    s.spawn(move || -> Result<GroupReport> {
                        let pool = rayon::ThreadPoolBuilder::new().num_threads(per_group).build()?;
                        pool.install(|| {
                            let inbox = inbox.map(|b| Box::new(b) as Box<dyn Inbox>);
                            let outbox = outbox.map(|b| Box::new(b) as Box<dyn Outbox>);
                            run_group(shared, g, range, epoch, inbox, outbox, progress)
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("a group's thread panicked"))))
                .collect()
        });
        first_cause(results)?
    };
    let reports = reports.iter().map(serde_json::to_value).collect::<Result<Vec<_>, _>>()?;
    write_checkpoints(&shared, &reports, started, epoch > 0)
}

/// The groups' reports, or the error that stopped the run: a group's own, before the
/// links that closed because of it.
pub(crate) fn first_cause(results: Vec<Result<GroupReport>>) -> Result<Vec<GroupReport>> {
    let mut closed = None;
    let mut reports = Vec::new();
    for (g, r) in results.into_iter().enumerate() {
        match r {
            Ok(rep) => reports.push(rep),
            Err(e) if e.downcast_ref::<LinkClosed>().is_some() => {
                closed.get_or_insert(e);
            }
            Err(e) => return Err(e.context(format!("group {g} of the decoupled run failed"))),
        }
    }
    match closed {
        Some(e) => Err(e),
        None => Ok(reports),
    }
}
