//! Groups of a decoupled run as MPI ranks (`--launcher mpi`, the `mpi` feature): rank g
//! runs group g, started by `mpirun -n N` or `srun`; links are MPI messages between
//! neighbouring ranks carrying the same frames as threads' channels.

use crate::decoupled::DecoupledOptions;
use crate::options::TrainOutcome;
use anyhow::Result;

/// Whether this build runs groups as MPI ranks (the `mpi` feature).
pub const MPI_BUILT: bool = cfg!(feature = "mpi");

/// How to get an MPI build, for a build without one.
pub const NO_MPI: &str = "this build has no MPI launcher: install Open MPI (or MPICH) and libclang \
     (Debian: apt-get install openmpi-bin libopenmpi-dev libclang-dev), build with `cargo build --release --workspace \
     --features mpi`, then run target/release/xtask under mpirun (the printed plan shows the line), or use \
     `--launcher threads`";

/// Run this rank's group, then (rank 0) write the checkpoints.
#[cfg(not(feature = "mpi"))]
pub(crate) fn run_mpi(_opts: &DecoupledOptions) -> Result<Vec<TrainOutcome>> {
    anyhow::bail!("{NO_MPI}")
}

#[cfg(feature = "mpi")]
pub(crate) use with_mpi::run_mpi;

#[cfg(feature = "mpi")]
mod with_mpi {
    use super::{DecoupledOptions, Result, TrainOutcome};
    use crate::decoupled::{say, write_checkpoints, Shared};
    use crate::group::run_group;
    use crate::links::{Inbox, Outbox};
    use anyhow::{anyhow, bail};
    use layerwise_core::decoupled::Mode;
    use mpi::collective::SystemOperation;
    use mpi::environment::Threading;
    use mpi::point_to_point::{Destination, Source};
    use mpi::topology::{Communicator, SimpleCommunicator};
    use mpi::traits::*;
    use std::time::Instant;

    /// The tag of frames on a link.
    const FRAME_TAG: i32 = 7;

    /// A synchronous link's sending end: a standard send, which waits for the receiver
    /// once a frame is past MPI's eager size (every batch of activations is).
    struct MpiOutbox<'c> {
        world: &'c SimpleCommunicator,
        to: i32,
    }

    impl Outbox for MpiOutbox<'_> {
        fn send(&mut self, frame: Vec<u8>) -> Result<()> {
            self.world.process_at_rank(self.to).send_with_tag(&frame[..], FRAME_TAG);
            Ok(())
        }
    }

    /// An asynchronous link's sending end: frames go to a thread of their own that sends
    /// them in order, so the group never waits for its successor (MPI_THREAD_MULTIPLE).
    struct MpiAsyncOutbox {
        tx: Option<std::sync::mpsc::Sender<Vec<u8>>>,
        sender: Option<std::thread::JoinHandle<()>>,
    }

    impl MpiAsyncOutbox {
        fn new(to: i32) -> Self {
            let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
            let sender = std::thread::spawn(move || {
                let world = SimpleCommunicator::world();
                for frame in rx {
                    world.process_at_rank(to).send_with_tag(&frame[..], FRAME_TAG);
                }
            });
            Self { tx: Some(tx), sender: Some(sender) }
        }
    }

    impl Outbox for MpiAsyncOutbox {
        fn send(&mut self, frame: Vec<u8>) -> Result<()> {
            let tx = self.tx.as_ref().ok_or_else(|| anyhow!("internal: the link's sender has finished"))?;
            tx.send(frame).map_err(|_| anyhow!("the link's sender thread stopped"))
        }
    }

    impl Drop for MpiAsyncOutbox {
        /// Every frame handed over is sent before the rank goes on (to MPI_Finalize).
        fn drop(&mut self) {
            drop(self.tx.take());
            if let Some(h) = self.sender.take() {
                let _ = h.join();
            }
        }
    }

    struct MpiInbox<'c> {
        world: &'c SimpleCommunicator,
        from: i32,
    }

    impl Inbox for MpiInbox<'_> {
        fn recv(&mut self) -> Result<Vec<u8>> {
            let (bytes, _status) = self.world.process_at_rank(self.from).receive_vec_with_tag::<u8>(FRAME_TAG);
            Ok(bytes)
        }

        fn try_recv(&mut self) -> Result<Option<Vec<u8>>> {
            match self.world.process_at_rank(self.from).immediate_probe_with_tag(FRAME_TAG) {
                Some(_) => self.recv().map(Some),
                None => Ok(None),
            }
        }
    }

    fn range_first(groups: &[std::ops::Range<usize>], g: usize) -> usize {
        groups[g].start + 1
    }

    /// The smallest of every rank's `v`.
    fn min_all(world: &SimpleCommunicator, v: u64) -> u64 {
        let mut out = 0u64;
        world.all_reduce_into(&v, &mut out, SystemOperation::min());
        out
    }

    pub(crate) fn run_mpi(opts: &DecoupledOptions) -> Result<Vec<TrainOutcome>> {
        // A rank ends with the mpirun that started it.
        layerwise_core::parent::die_with_parent();
        let (universe, threading) = mpi::initialize_with_threading(Threading::Multiple)
            .ok_or_else(|| anyhow!("MPI was initialized already in this process"))?;
        let world = universe.world();
        if opts.decoupled.mode == Mode::Async && threading != Threading::Multiple {
            bail!(
                "this MPI library gives no MPI_THREAD_MULTIPLE, which the asynchronous mode's sending thread needs: \
                 use mode = \"sync\" or an MPI built with thread support"
            );
        }
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        // The ranks on one machine share its cores (RAYON_NUM_THREADS, else all of them):
        // this rank's products get its share, set before anything runs on rayon's pool.
        let on_this_machine = world.split_shared(rank as i32).size().max(1) as usize;
        let cores = std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let _ = rayon::ThreadPoolBuilder::new().num_threads((cores / on_this_machine).max(1)).build_global();
        let shared = Shared::new(opts)?;
        let groups = shared.groups();
        if size != groups.len() {
            bail!(
                "{size} MPI ranks run a decoupled run of {} groups: start it with mpirun -n {} (or srun -n {}), or \
                 pass --groups {size}",
                groups.len(),
                groups.len(),
                groups.len()
            );
        }
        let started = Instant::now();
        let range = groups[rank].clone();
        // The epoch every rank resumes after: the last one all of them saved.
        let mine = shared.latest_saved(range.clone()) as u64;
        let mut epoch = min_all(&world, mine) as usize;
        let ok = shared.all_saved(range.clone(), epoch);
        if min_all(&world, u64::from(ok)) == 0 {
            epoch = 0;
        }
        if rank == 0 {
            say(&shared, epoch);
        }
        let result = if epoch == opts.config.epochs {
            Ok(None)
        } else {
            let inbox =
                (rank > 0).then(|| Box::new(MpiInbox { world: &world, from: rank as i32 - 1 }) as Box<dyn Inbox>);
            let to = rank as i32 + 1;
            let outbox = (rank + 1 < size).then(|| match opts.decoupled.mode {
                Mode::Sync => Box::new(MpiOutbox { world: &world, to }) as Box<dyn Outbox>,
                Mode::Async => Box::new(MpiAsyncOutbox::new(to)) as Box<dyn Outbox>,
            });
            let progress = if rank == 0 { opts.progress } else { crate::Progress::Quiet };
            run_group(&shared, rank, range, epoch, inbox, outbox, progress).map(Some)
        };
        // A rank that fails ends the job (its neighbours wait on it otherwise): mpirun
        // then stops every rank, and a rerun resumes from what all of them saved.
        let report = match result {
            Ok(r) => r,
            Err(e) => {
                eprintln!(
                    "error: rank {rank} (group {rank}, depths {}-{}): {e:#}",
                    range_first(&groups, rank),
                    groups[rank].end
                );
                world.abort(1)
            }
        };
        // Every rank's report to rank 0, as JSON text (data, never code).
        let text = match &report {
            Some(r) => serde_json::to_string(r)?,
            None => String::new(),
        };
        let mut reports = Vec::new();
        if rank == 0 {
            reports.push(text);
            for r in 1..size {
                let (bytes, _) = world.process_at_rank(r as i32).receive_vec::<u8>();
                reports.push(String::from_utf8_lossy(&bytes).into_owned());
            }
        } else {
            world.process_at_rank(0).send(text.as_bytes());
            return Ok(Vec::new());
        }
        let parsed: Vec<serde_json::Value> = reports.iter().filter_map(|t| serde_json::from_str(t).ok()).collect();
        write_checkpoints(&shared, &parsed, started, epoch > 0)
    }
}
