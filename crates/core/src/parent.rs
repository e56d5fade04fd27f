//! A process started for another ends when that one does: mpirun when the xtask that
//! launched it is killed, an MPI rank when its mpirun is. Without it a SIGKILL of the
//! orchestrator would leave ranks writing into a run folder that a rerun is using.

/// Ask the kernel to SIGKILL this process when its parent exits (Linux's
/// `PR_SET_PDEATHSIG`); elsewhere nothing. Call it first thing in a launched process, or
/// in a child between fork and exec.
pub fn die_with_parent() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a signal for this process; it is
    // async-signal-safe, so it may run between fork and exec.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
}
