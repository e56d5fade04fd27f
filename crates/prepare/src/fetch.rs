//! Finding CIFAR-10 on this machine, and downloading the official binary release when it
//! is nowhere to be found.

use anyhow::{anyhow, bail, Context, Result};
use md5::{Digest, Md5};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The official binary release.
pub const CIFAR10_BINARY_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
/// Its published MD5.
pub const CIFAR10_BINARY_MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";
/// File name the download is kept under, in the artifacts folder.
pub const TARBALL_NAME: &str = "cifar-10-binary.tar.gz";

/// Where to download from, and the checksum to insist on.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// URL of a `cifar-10-binary.tar.gz`.
    pub url: String,
    /// Expected hex MD5 of the download.
    pub md5: String,
    /// Show a progress bar.
    pub progress: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self { url: CIFAR10_BINARY_URL.into(), md5: CIFAR10_BINARY_MD5.into(), progress: true }
    }
}

/// Places searched, in order, when no source is given.
pub fn candidates(artifacts: &Path) -> Vec<PathBuf> {
    let mut c = Vec::new();
    if let Some(dir) = std::env::var_os("CIFAR10_DIR") {
        c.push(PathBuf::from(dir));
    }
    for name in ["cifar-10-batches-bin", "cifar-10-batches-py", TARBALL_NAME, "cifar-10-python.tar.gz"] {
        c.push(artifacts.join(name));
    }
    let keras = std::env::var_os("KERAS_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".keras")));
    if let Some(k) = keras {
        let ds = k.join("datasets");
        c.push(ds.join("cifar-10-batches-py-target").join("cifar-10-batches-py")); // Keras 3
        c.push(ds.join("cifar-10-batches-py")); // Keras 2
        c.push(ds.join("cifar-10-batches-py.tar.gz"));
    }
    c
}

/// The first existing candidate. `CIFAR10_DIR` set to a path that does not exist is an
/// error, not a reason to look elsewhere (or download): the user named where the data is.
pub fn find_local(artifacts: &Path) -> Result<Option<PathBuf>> {
    if let Some(dir) = std::env::var_os("CIFAR10_DIR").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        if !dir.exists() {
            bail!(
                "CIFAR10_DIR is {}, which does not exist: point it at the CIFAR-10 folder (cifar-10-batches-bin or \
                 cifar-10-batches-py) or an official tarball, or unset it to let prepare search and download",
                dir.display()
            );
        }
    }
    Ok(candidates(artifacts).into_iter().find(|p| p.exists()))
}

/// Download the tarball into `artifacts/cifar-10-binary.tar.gz`, verifying its MD5 while
/// streaming. Nothing is kept unless the checksum matches.
pub fn download(artifacts: &Path, opts: &FetchOptions) -> Result<PathBuf> {
    let dest = artifacts.join(TARBALL_NAME);
    let searched = candidates(artifacts).iter().map(|p| format!("  {}", p.display())).collect::<Vec<_>>().join("\n");
    let hint = format!(
        "put CIFAR-10 (the folder cifar-10-batches-bin or cifar-10-batches-py, or an official tarball) in one of:\n{searched}\n\
         or pass --source PATH, or set CIFAR10_DIR"
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_recv_body(Some(Duration::from_secs(60)))
        .build()
        .into();
    let response =
        agent.get(&opts.url).call().map_err(|e| anyhow!("cannot download CIFAR-10 from {} ({e}); {hint}", opts.url))?;
    let total = response.body().content_length();
    let bar = if opts.progress {
        layerwise_core::progress::add(indicatif::ProgressBar::new(total.unwrap_or(0)))
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "downloading CIFAR-10 {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut reader = bar.wrap_read(response.into_body().into_reader());
    let mut hasher = Md5::new();
    layerwise_core::atomic::write_atomic(&dest, |w| {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = reader.read(&mut buf).map_err(|e| anyhow!("download from {} broke off ({e}); {hint}", opts.url))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            w.write_all(&buf[..n]).with_context(|| format!("cannot write {}", dest.display()))?;
        }
        let got = hex::encode(hasher.finalize_reset());
        if got != opts.md5 {
            bail!(
                "download from {} has MD5 {got}, expected {}: the file is damaged or not CIFAR-10; nothing was kept",
                opts.url,
                opts.md5
            );
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    Ok(dest)
}
