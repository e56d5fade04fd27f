//! The contracts every layerwise stage shares, and nothing else: the stages never import
//! each other, they exchange files whose formats are defined here.
//!
//! # Brief overview
//! - [`dataset`]: the prepared dataset (safetensors, memory-mapped) and its metadata.
//! - [`checkpoint`]: a network's weights in PyTorch's names and layouts with metadata that
//!   refuses a mismatched dataset; [`cnn`]: the convolutional network it may hold.
//! - [`metrics`]: `train.json` and `eval.json`, versioned.
//! - [`pipeline`]: pipeline TOML files; [`config`]: the per-depth training settings.
//! - [`atomic`]: every artifact is written to a temp file and renamed into place;
//!   [`fsread`]: every file read back is a regular file, read no further than its format allows.
#![deny(missing_docs)]

pub mod atomic;
pub mod checkpoint;
pub mod cifar10;
#[macro_use]
pub mod config;
pub mod cnn;
pub mod dataset;
pub mod decoupled;
pub mod dense;
pub mod features;
pub mod fsread;
pub mod hash;
pub mod imagefile;
pub mod input;
pub mod limits;
pub mod link;
pub mod metrics;
pub mod names;
pub mod parent;
pub mod pipeline;
pub mod progress;
pub mod run;
pub mod st;

/// Derive a per-purpose seed from a base seed, so each depth and epoch gets its own stream.
pub fn mix_seed(seed: u64, parts: &[u64]) -> u64 {
    // splitmix64 over the parts: cheap, deterministic, well spread.
    let mut x = seed ^ 0x9E37_79B9_7F4A_7C15;
    for &p in parts {
        x ^= p.wrapping_add(0x9E37_79B9_7F4A_7C15).wrapping_add(x << 6).wrapping_add(x >> 2);
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x = z ^ (z >> 31);
    }
    x
}

/// `n` and `noun`, in the plural unless `n` is 1: `1 depth`, `3 depths`.
pub fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// The end of every stage binary: print the error chain (`{:#}`) as
/// `PROGRAM: error: ...` and exit 1, or exit 0.
pub fn exit_code(program: &str, result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

/// Parse a stage's command line from `args` (program name first) with clap: `--help` and
/// `--version` print and exit like a binary would; a usage error becomes an `Err`.
pub fn parse_args<P: clap::Parser>(args: impl IntoIterator<Item = String>) -> anyhow::Result<P> {
    P::try_parse_from(args).or_else(|e| match e.kind() {
        clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => e.exit(),
        _ => {
            let text = e.render().to_string();
            Err(anyhow::anyhow!("{}", text.trim_start_matches("error: ").trim_end()))
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_depth_is_not_one_depths() {
        assert_eq!(super::plural(1, "depth"), "1 depth");
        assert_eq!(super::plural(0, "depth"), "0 depths");
        assert_eq!(super::plural(3, "depth"), "3 depths");
    }
}
