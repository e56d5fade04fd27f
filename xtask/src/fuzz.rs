//! `cargo xtask fuzz`: every reader of a file a user can hand layerwise, fed seeded
//! mutations of a valid file (truncation, bit flips, length fields set huge, spliced
//! chunks, deep nesting). A reader may refuse an input with an error; it may never panic,
//! overflow its stack or allocate beyond a bound (the xtask binary's allocator refuses,
//! loudly, any single allocation over [`ALLOCATION_BOUND`] while fuzzing). Reproducible:
//! case `i` of a reader is drawn from `--seed` and `i` alone; a panicking input is saved.

use crate::fuzz_readers::{readers, Different};
use anyhow::{bail, Context, Result};
use layerwise_core::mix_seed;
use rand::{Rng, SeedableRng};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The largest single allocation a reader may make on any input while fuzzing.
pub const ALLOCATION_BOUND: usize = 256 << 20;

/// Whether the bound is enforced now (only around a reader's call).
pub static BOUND_ON: AtomicBool = AtomicBool::new(false);
/// The reader and case being run (for the allocator's message).
pub static CURRENT: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];

/// Called by the xtask binary's allocator for an allocation over the bound while
/// fuzzing: say which reader and case asked (without allocating), then abort.
pub fn allocation_over_bound(size: usize) -> ! {
    fn put(buf: &mut [u8], at: &mut usize, s: &[u8]) {
        for &c in s {
            if *at < buf.len() {
                buf[*at] = c;
                *at += 1;
            }
        }
    }
    fn num(buf: &mut [u8], at: &mut usize, mut v: usize) {
        let mut digits = [0u8; 20];
        let mut n = 0;
        loop {
            digits[n] = b'0' + (v % 10) as u8;
            n += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        for i in (0..n).rev() {
            put(buf, at, &[digits[i]]);
        }
    }
    let mut buf = [0u8; 200];
    let mut at = 0;
    put(&mut buf, &mut at, b"fuzz: reader #");
    num(&mut buf, &mut at, CURRENT[0].load(Ordering::SeqCst));
    put(&mut buf, &mut at, b", case ");
    num(&mut buf, &mut at, CURRENT[1].load(Ordering::SeqCst));
    put(&mut buf, &mut at, b": an allocation of ");
    num(&mut buf, &mut at, size);
    put(&mut buf, &mut at, b" bytes, over the bound\n");
    // SAFETY: write(2) on stderr with a buffer this function owns.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), at);
    }
    std::process::abort()
}

/// `cargo xtask fuzz` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct FuzzArgs {
    /// Cases per reader.
    #[arg(long, default_value_t = 300)]
    pub cases: usize,
    /// Seed of the mutations.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Only this reader (default: all; see the table for their names).
    #[arg(long)]
    pub reader: Option<String>,
    /// Where inputs that made a reader panic are saved.
    #[arg(long, default_value = "target/fuzz-failures")]
    pub failures: PathBuf,
}

/// One seeded mutation of `valid`.
fn mutate(valid: &[u8], rng: &mut rand_chacha::ChaCha8Rng, nest: fn(usize) -> Vec<u8>) -> Vec<u8> {
    let mut b = valid.to_vec();
    let rounds = rng.gen_range(1..=3);
    for _ in 0..rounds {
        let len = b.len().max(1);
        match rng.gen_range(0..7) {
            0 => b.truncate(rng.gen_range(0..len)),
            1 => {
                for _ in 0..rng.gen_range(1..=8) {
                    let i = rng.gen_range(0..len);
                    if let Some(x) = b.get_mut(i) {
                        *x ^= 1 << rng.gen_range(0..8);
                    }
                }
            }
            2 | 3 => {
                // A length field set huge: 8 little-endian bytes, or the header length of a
                // safetensors file, or an octal tar size field.
                let huge = [u64::MAX, 1 << 60, 1 << 40, u32::MAX as u64, (1 << 31) + 7][rng.gen_range(0..5)];
                let at = match rng.gen_range(0..3) {
                    0 => 0,
                    1 => 124 + 512 * rng.gen_range(0..(len / 512).max(1)),
                    _ => rng.gen_range(0..len),
                };
                let bytes: Vec<u8> = if at % 512 == 124 && rng.gen_bool(0.5) {
                    b"77777777777\0".to_vec()
                } else {
                    huge.to_le_bytes().to_vec()
                };
                for (k, x) in bytes.into_iter().enumerate() {
                    if let Some(slot) = b.get_mut(at + k) {
                        *slot = x;
                    }
                }
            }
            4 => {
                // Splice: a chunk copied elsewhere.
                let (from, to) = (rng.gen_range(0..len), rng.gen_range(0..len));
                let n = rng.gen_range(1..=64.min(len));
                let chunk: Vec<u8> = b.iter().skip(from).take(n).copied().collect();
                let at = to.min(b.len());
                b.splice(at..at, chunk);
            }
            5 => {
                let at = rng.gen_range(0..len).min(b.len());
                let v = [0u8, 0xff, 0x7f, 0x80][rng.gen_range(0..4)];
                let n = rng.gen_range(1..=16);
                b.splice(at..at, std::iter::repeat_n(v, n));
            }
            _ => {
                // Deep nesting (rarely: it is the slowest mutation).
                if rng.gen_ratio(1, 8) {
                    b = nest(rng.gen_range(1_000..100_000));
                }
            }
        }
    }
    b
}

/// Outcome counts of one reader.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    /// Inputs read without error.
    pub accepted: usize,
    /// Of those, mutated inputs whose bytes the mutation left unchanged (a round that drew
    /// the rare nesting mutation and skipped it).
    pub unchanged: usize,
    /// Inputs refused with an error.
    pub refused: usize,
    /// Inputs that made the reader panic.
    pub panicked: usize,
    /// Inputs that were used and changed what the stage wrote (the state and features
    /// readers, whose use is checked).
    pub different: usize,
}

/// Run the harness; fails if any reader panicked.
pub fn run(a: &FuzzArgs) -> Result<()> {
    let work = tempfile::tempdir().context("cannot create a temp folder")?;
    let all = readers(work.path())?;
    if let Some(r) = &a.reader {
        if !all.iter().any(|x| x.name == r) {
            bail!("no reader named `{r}`: use one of {}", all.iter().map(|x| x.name).collect::<Vec<_>>().join(", "));
        }
    }
    let started = std::time::Instant::now();
    println!(
        "| reader | cases | refused | accepted | of which unchanged | accepted but different | panicked | seconds |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let mut total = Tally::default();
    for (r_index, reader) in all.iter().enumerate() {
        if a.reader.as_deref().is_some_and(|r| r != reader.name) {
            continue;
        }
        // The valid input itself must be accepted, or the mutations test nothing.
        let mut tally = Tally::default();
        let valid_bytes = (reader.encode)(reader.valid.clone());
        let t0 = std::time::Instant::now();
        let case_dir = work.path().join(format!("case-{}", reader.name));
        std::fs::create_dir_all(&case_dir)?;
        for case in 0..=a.cases {
            let bytes = if case == 0 {
                (reader.encode)(reader.valid.clone())
            } else {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(mix_seed(a.seed, &[r_index as u64, case as u64]));
                (reader.encode)(mutate(&reader.valid, &mut rng, reader.nest))
            };
            let path = case_dir.join(reader.file.unwrap_or("input"));
            if reader.file.is_some() {
                if let Some(d) = path.parent() {
                    std::fs::create_dir_all(d)?;
                }
                std::fs::write(&path, &bytes).with_context(|| format!("cannot write {}", path.display()))?;
            }
            CURRENT[0].store(r_index, Ordering::SeqCst);
            CURRENT[1].store(case, Ordering::SeqCst);
            BOUND_ON.store(true, Ordering::SeqCst);
            let outcome = catch_unwind(AssertUnwindSafe(|| (reader.read)(&path, &bytes)));
            BOUND_ON.store(false, Ordering::SeqCst);
            match outcome {
                Ok(Ok(())) => {
                    tally.accepted += 1;
                    if case > 0 && bytes == valid_bytes {
                        tally.unchanged += 1;
                    }
                }
                Ok(Err(e)) if e.downcast_ref::<Different>().is_some() => {
                    tally.different += 1;
                    std::fs::create_dir_all(&a.failures)?;
                    let saved = a.failures.join(format!("{}-seed{}-case{case}.bin", reader.name, a.seed));
                    std::fs::write(&saved, &bytes)?;
                    eprintln!("fuzz: {} case {case}: {e}; input saved as {}", reader.name, saved.display());
                }
                Ok(Err(_)) if case > 0 => tally.refused += 1,
                Ok(Err(e)) => bail!("reader {}: its valid input was refused: {e:#}", reader.name),
                Err(_) => {
                    tally.panicked += 1;
                    std::fs::create_dir_all(&a.failures)?;
                    let saved = a.failures.join(format!("{}-seed{}-case{case}.bin", reader.name, a.seed));
                    std::fs::write(&saved, &bytes)?;
                    eprintln!("fuzz: {} panicked on case {case}; input saved as {}", reader.name, saved.display());
                }
            }
        }
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} |",
            reader.name,
            a.cases,
            tally.refused,
            tally.accepted.saturating_sub(1),
            tally.unchanged,
            tally.different,
            tally.panicked,
            t0.elapsed().as_secs_f64()
        );
        total.refused += tally.refused;
        total.accepted += tally.accepted.saturating_sub(1);
        total.panicked += tally.panicked;
        total.different += tally.different;
    }
    let cases = total.refused + total.accepted + total.panicked + total.different;
    println!(
        "fuzz: {cases} cases, {} panics, {} accepted but different, no allocation over {} MiB, {:.0} s (seed {})",
        total.panicked,
        total.different,
        ALLOCATION_BOUND >> 20,
        started.elapsed().as_secs_f64(),
        a.seed
    );
    if total.panicked > 0 || total.different > 0 {
        bail!(
            "{} inputs made a reader panic and {} were used with a different result (saved under {})",
            total.panicked,
            total.different,
            a.failures.display()
        );
    }
    Ok(())
}
