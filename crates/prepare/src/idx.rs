//! MNIST and Fashion-MNIST: the IDX files (`train-images-idx3-ubyte`,
//! `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`), gzipped
//! (`.gz`) or not, in one folder: 1 × 28 × 28 grayscale images. A folder whose name says
//! "fashion" gets Fashion-MNIST's class names; otherwise the digits.

use crate::release::RawImages;
use anyhow::{bail, Context, Result};
use layerwise_core::dataset::SourceFile;
use layerwise_core::hash::sha256_hex;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The four files, training images first.
pub const FILES: [&str; 4] =
    ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"];
/// The largest file read, gzipped or not (MNIST's training images: 47 MB).
pub const MAX_FILE_BYTES: u64 = 128 << 20;
/// The most images one file may claim (MNIST has 60,000; EMNIST's largest about 700,000).
pub const MAX_ITEMS: u32 = 1_000_000;
/// The largest image side a file may claim.
pub const MAX_SIDE: u32 = 1024;

const FASHION: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

/// Where `name` is in `dir`: the plain file or its `.gz`.
pub fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    [dir.join(name), dir.join(format!("{name}.gz"))].into_iter().find(|p| p.is_file())
}

/// Whether `dir` holds MNIST-style IDX files.
pub fn is_idx_folder(dir: &Path) -> bool {
    find(dir, FILES[0]).is_some()
}

/// A file's SHA-256 (of its bytes as stored) and its bytes, gunzipped when it is gzipped
/// (by its magic bytes), never more than [`MAX_FILE_BYTES`] either way.
fn read_file(path: &Path) -> Result<(String, Vec<u8>)> {
    let raw = layerwise_core::fsread::read_capped(path, "IDX file", MAX_FILE_BYTES)?;
    let sha = sha256_hex(&raw);
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut out)
            .with_context(|| format!("{}: the gzip stream is truncated or damaged", path.display()))?;
        if out.len() as u64 > MAX_FILE_BYTES {
            bail!("{}: it unpacks to more than {} MiB: not an MNIST file", path.display(), MAX_FILE_BYTES >> 20);
        }
        Ok((sha, out))
    } else {
        Ok((sha, raw))
    }
}

/// Parse an IDX file of unsigned bytes with `dims` dimensions: its sizes and its values,
/// checked against the sizes it claims before anything is allocated.
pub fn parse(bytes: &[u8], dims: usize, origin: &str) -> Result<(Vec<usize>, Vec<u8>)> {
    if bytes.len() < 4 + 4 * dims {
        bail!("{origin}: {} bytes is too short for an IDX header", bytes.len());
    }
    if bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 || bytes[3] as usize != dims {
        bail!(
            "{origin}: not an IDX file of unsigned bytes with {dims} dimension(s) (magic {:02x} {:02x} {:02x} {:02x})",
            bytes[0],
            bytes[1],
            bytes[2],
            bytes[3]
        );
    }
    let sizes: Vec<u32> = (0..dims)
        .map(|i| u32::from_be_bytes([bytes[4 + 4 * i], bytes[5 + 4 * i], bytes[6 + 4 * i], bytes[7 + 4 * i]]))
        .collect();
    if sizes[0] > MAX_ITEMS || sizes[1..].iter().any(|&s| s == 0 || s > MAX_SIDE) {
        bail!("{origin}: it claims sizes {sizes:?}: more than layerwise reads ({MAX_ITEMS} items, {MAX_SIDE} a side)");
    }
    let count: usize = sizes.iter().map(|&s| s as usize).product();
    let body = &bytes[4 + 4 * dims..];
    if body.len() != count {
        bail!("{origin}: its header claims {count} values, it holds {}: truncated or too long", body.len());
    }
    Ok((sizes.iter().map(|&s| s as usize).collect(), body.to_vec()))
}

/// Read the four files of `dir`.
pub fn read(dir: &Path) -> Result<RawImages> {
    let mut parts = Vec::new();
    let mut sources = Vec::new();
    for (i, name) in FILES.iter().enumerate() {
        let path = find(dir, name).with_context(|| {
            format!("{} has no {name} (or {name}.gz): an MNIST folder holds {}", dir.display(), FILES.join(", "))
        })?;
        let (sha256, bytes) = read_file(&path)?;
        sources.push(SourceFile {
            name: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            sha256,
        });
        parts.push(parse(&bytes, if i % 2 == 0 { 3 } else { 1 }, &path.display().to_string())?);
    }
    let (train, test) = ((&parts[0], &parts[1]), (&parts[2], &parts[3]));
    for ((images, labels), which) in [(train, "train"), (test, "t10k")] {
        if images.0[0] != labels.0[0] {
            bail!("{}: {which} has {} images and {} labels", dir.display(), images.0[0], labels.0[0]);
        }
        if let Some(i) = labels.1.iter().position(|&l| l > 9) {
            bail!("{}: {which} label {i} is {}, beyond the 10 classes", dir.display(), labels.1[i]);
        }
    }
    let (h, w) = (train.0 .0[1], train.0 .0[2]);
    if (test.0 .0[1], test.0 .0[2]) != (h, w) {
        bail!("{}: the training images are {h}×{w}, the test images {}×{}", dir.display(), test.0 .0[1], test.0 .0[2]);
    }
    let fashion = dir.to_string_lossy().to_ascii_lowercase().contains("fashion");
    let classes = if fashion {
        FASHION.iter().map(|s| s.to_string()).collect()
    } else {
        (0..10).map(|d| d.to_string()).collect()
    };
    let mut values = parts.into_iter().map(|(_, v)| v);
    let mut next = || values.next().unwrap_or_default();
    Ok(RawImages {
        name: if fashion { "fashion-mnist".into() } else { "mnist".into() },
        image_shape: [1, h, w],
        train_images: next(),
        train_labels: next(),
        test_images: next(),
        test_labels: next(),
        classes,
        sources,
    })
}

/// The files of `dir` with their SHA-256 (as read, gzipped or not).
pub fn hashes(dir: &Path) -> Result<Vec<SourceFile>> {
    Ok(read(dir)?.sources)
}
