//! CIFAR-100: the binary release (`cifar-100-binary/`: `train.bin`, `test.bin`, records of
//! a coarse label byte, a fine label byte and 3,072 image bytes; `fine_label_names.txt`,
//! `coarse_label_names.txt`) and the Python release (`cifar-100-python/`: `train`, `test`
//! and `meta` pickles), as folders or their official tarballs. Fine labels (100 classes)
//! by default, coarse (20 superclasses) on request.

use crate::release::{RawImages, Release};
use anyhow::{anyhow, bail, Result};
use layerwise_core::cifar10::IMAGE_BYTES;
use layerwise_core::dataset::SourceFile;
use layerwise_core::hash::sha256_hex;
use std::collections::BTreeMap;
use std::path::Path;

/// The binary release's folder.
pub const BIN_DIR: &str = "cifar-100-binary";
/// The Python release's folder.
pub const PY_DIR: &str = "cifar-100-python";
/// Bytes of a binary record: coarse label, fine label, image.
pub const RECORD_BYTES: usize = IMAGE_BYTES + 2;
/// The largest file of a release (the training set, 50,000 records, about 154 MB).
pub const MAX_FILE_BYTES: u64 = 256 << 20;

pub use layerwise_core::config::Labels;

fn class_count(labels: Labels) -> usize {
    match labels {
        Labels::Fine => 100,
        Labels::Coarse => 20,
    }
}

const RELEASE: Release = Release { what: "CIFAR-100", largest: "about 155 MB", max_bytes: MAX_FILE_BYTES };

/// The files of a release, binary or Python, the required ones first.
fn files(binary: bool) -> (Vec<String>, usize) {
    let names: &[&str] = if binary {
        &["train.bin", "test.bin", "fine_label_names.txt", "coarse_label_names.txt"]
    } else {
        &["train", "test", "meta"]
    };
    (names.iter().map(|s| s.to_string()).collect(), 2)
}

fn read_files(path: &Path, binary: bool, tarball: bool) -> Result<BTreeMap<String, Vec<u8>>> {
    let (wanted, required) = files(binary);
    let dir = if binary { BIN_DIR } else { PY_DIR };
    RELEASE.read(path, tarball.then_some(dir), &wanted, &wanted[..required])
}

/// The files of a release with their SHA-256.
pub fn hashes(path: &Path, binary: bool, tarball: bool) -> Result<Vec<SourceFile>> {
    Ok(read_files(path, binary, tarball)?
        .iter()
        .map(|(name, bytes)| SourceFile { name: name.clone(), sha256: sha256_hex(bytes) })
        .collect())
}

/// Split a binary file into image bytes and the chosen labels.
pub fn parse_binary(bytes: &[u8], labels: Labels, origin: &str) -> Result<(Vec<u8>, Vec<u8>)> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD_BYTES) {
        bail!(
            "{origin}: {} bytes is not a whole number of {RECORD_BYTES}-byte CIFAR-100 records: the file is truncated \
             or too long",
            bytes.len()
        );
    }
    let n = bytes.len() / RECORD_BYTES;
    let (mut images, mut out) = (Vec::with_capacity(n * IMAGE_BYTES), Vec::with_capacity(n));
    for (i, rec) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
        let (coarse, fine) = (rec[0], rec[1]);
        if coarse >= 20 || fine >= 100 {
            bail!("{origin}: record {i} has labels {coarse} (coarse) and {fine} (fine), beyond CIFAR-100's 20 and 100");
        }
        out.push(if labels == Labels::Fine { fine } else { coarse });
        images.extend_from_slice(&rec[2..]);
    }
    Ok((images, out))
}

fn names_txt(bytes: Option<&Vec<u8>>, n: usize, origin: &str) -> Result<Vec<String>> {
    let Some(bytes) = bytes else { return Ok((0..n).map(|i| format!("class-{i}")).collect()) };
    let text = std::str::from_utf8(bytes).map_err(|_| anyhow!("{origin}: class-name file is not text"))?;
    let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    if names.len() != n {
        bail!("{origin}: expected {n} class names, found {}", names.len());
    }
    Ok(names)
}

/// Read CIFAR-100 from a folder or tarball.
pub fn read(path: &Path, binary: bool, tarball: bool, labels: Labels) -> Result<RawImages> {
    let files = read_files(path, binary, tarball)?;
    let origin = |name: &str| format!("{} ({name})", path.display());
    let mut raw = RawImages {
        name: if labels == Labels::Fine { "cifar-100".into() } else { "cifar-100-coarse".into() },
        image_shape: [3, 32, 32],
        ..Default::default()
    };
    let n = class_count(labels);
    if binary {
        (raw.train_images, raw.train_labels) = parse_binary(&files["train.bin"], labels, &origin("train.bin"))?;
        (raw.test_images, raw.test_labels) = parse_binary(&files["test.bin"], labels, &origin("test.bin"))?;
        let txt = if labels == Labels::Fine { "fine_label_names.txt" } else { "coarse_label_names.txt" };
        raw.classes = names_txt(files.get(txt), n, &origin(txt))?;
    } else {
        let key = if labels == Labels::Fine { "fine_labels" } else { "coarse_labels" };
        (raw.train_images, raw.train_labels) =
            crate::pickles::parse_pickle_with(&files["train"], key, &origin("train"))?;
        (raw.test_images, raw.test_labels) = crate::pickles::parse_pickle_with(&files["test"], key, &origin("test"))?;
        let names_key = if labels == Labels::Fine { "fine_label_names" } else { "coarse_label_names" };
        raw.classes = match files.get("meta") {
            Some(b) => crate::pickles::pickle_names(b, names_key, n, &origin("meta"))?,
            None => (0..n).map(|i| format!("class-{i}")).collect(),
        };
    }
    for (split, labels_of) in [("train", &raw.train_labels), ("test", &raw.test_labels)] {
        if let Some(i) = labels_of.iter().position(|&l| l as usize >= n) {
            bail!(
                "{}: {split} image {i} has label {}, beyond the {n} {} classes",
                path.display(),
                labels_of[i],
                labels.name()
            );
        }
    }
    raw.sources =
        files.iter().map(|(name, bytes)| SourceFile { name: name.clone(), sha256: sha256_hex(bytes) }).collect();
    Ok(raw)
}
