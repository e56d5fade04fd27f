//! What every dataset reader shares: the raw images it gives, and reading a release's files
//! from a folder or a `.tar.gz` with a size cap per file.

use anyhow::{bail, Context, Result};
use layerwise_core::dataset::SourceFile;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// A dataset read into memory: raw bytes, before any normalization.
#[derive(Debug, Clone, Default)]
pub struct RawImages {
    /// The dataset's name (`cifar-10`, `cifar-100`, `mnist`, the image folder's name).
    pub name: String,
    /// `[channels, height, width]` of every image.
    pub image_shape: [usize; 3],
    /// Training images, `[n, C·H·W]` CHW bytes, the source's order.
    pub train_images: Vec<u8>,
    /// Training labels.
    pub train_labels: Vec<u8>,
    /// Test images.
    pub test_images: Vec<u8>,
    /// Test labels.
    pub test_labels: Vec<u8>,
    /// Class names.
    pub classes: Vec<String>,
    /// Files read, with hashes.
    pub sources: Vec<SourceFile>,
}

/// How a release's files are read: what it is called in messages, and the largest file it
/// holds (nothing larger is read or allocated).
pub struct Release {
    /// Its name in messages.
    pub what: &'static str,
    /// Its largest file's size, as said in messages.
    pub largest: &'static str,
    /// The most bytes one file may hold.
    pub max_bytes: u64,
}

impl Release {
    /// The `wanted` files (name → bytes) of a folder, or (`tar_dir` given) of a `.tar.gz`
    /// whose files are under `tar_dir/`; fails unless every `required` one is there.
    pub fn read(
        &self,
        path: &Path,
        tar_dir: Option<&str>,
        wanted: &[String],
        required: &[String],
    ) -> Result<BTreeMap<String, Vec<u8>>> {
        let mut found = BTreeMap::new();
        let (what, largest, max) = (self.what, self.largest, self.max_bytes);
        match tar_dir {
            None => {
                for name in wanted {
                    let p = path.join(name);
                    if p.exists() {
                        let size = std::fs::metadata(&p).with_context(|| format!("cannot read {}", p.display()))?.len();
                        if size > max {
                            bail!(
                                "{}: {size} bytes is far more than any {what} file holds ({largest}): not {what}",
                                p.display()
                            );
                        }
                        found.insert(name.clone(), layerwise_core::fsread::read_capped(&p, what, max)?);
                    }
                }
            }
            Some(dir) => {
                let not_tar = || format!("{} is not a readable .tar.gz archive of {what}", path.display());
                let mut archive = open_tar(path)?;
                for entry in archive.entries().with_context(not_tar)? {
                    let mut entry = entry.with_context(not_tar)?;
                    let member = entry.path().with_context(not_tar)?.to_string_lossy().into_owned();
                    // Only regular files named exactly `<dir>/<expected name>` are read; links,
                    // absolute paths and anything else are ignored, and nothing is extracted.
                    let Some(name) = member.strip_prefix(dir).and_then(|r| r.strip_prefix('/')) else {
                        continue;
                    };
                    if !entry.header().entry_type().is_file() || !wanted.iter().any(|w| w == name) {
                        continue;
                    }
                    // Never allocate from a size the archive claims before checking it.
                    let size = entry.size();
                    if size > max {
                        bail!(
                            "{}: member {member} claims {size} bytes, far more than any {what} file holds ({largest}): \
                             the archive is corrupt or not {what}",
                            path.display()
                        );
                    }
                    let mut bytes = Vec::with_capacity(size as usize);
                    entry.by_ref().take(max).read_to_end(&mut bytes).with_context(|| {
                        format!("{}: cannot read member {member}: the archive is truncated or corrupt", path.display())
                    })?;
                    found.insert(name.to_string(), bytes);
                }
                // Read the compressed stream to its end: the gzip trailer's CRC and length
                // catch a truncated or damaged tarball that the tar entries alone would not.
                let mut rest = archive.into_inner();
                std::io::copy(&mut rest, &mut std::io::sink()).with_context(|| {
                    format!(
                        "{}: the gzip stream is truncated or fails its checksum: the download is incomplete or \
                         damaged; fetch the tarball again",
                        path.display()
                    )
                })?;
            }
        }
        let missing: Vec<&str> = required.iter().filter(|n| !found.contains_key(*n)).map(String::as_str).collect();
        if !missing.is_empty() {
            bail!(
                "{} is missing {}: a complete {what} release has {}",
                path.display(),
                missing.join(", "),
                required.join(", ")
            );
        }
        Ok(found)
    }
}

/// A `.tar.gz` archive, opened for reading its entries in order (regular files only).
pub fn open_tar(path: &Path) -> Result<tar::Archive<flate2::read::GzDecoder<std::fs::File>>> {
    let file = layerwise_core::fsread::open_regular(path, "CIFAR-10 tarball")?;
    Ok(tar::Archive::new(flate2::read::GzDecoder::new(file)))
}
