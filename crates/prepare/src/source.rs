//! Finding and reading a dataset in the forms people actually have it: CIFAR-10's official
//! binary release (folder or `cifar-10-binary.tar.gz`) and Python release (folder, as Keras
//! and torchvision leave it, or `cifar-10-python.tar.gz`); CIFAR-100's two releases
//! ([`crate::cifar100`]); MNIST's IDX files ([`crate::idx`]); a folder of images per class
//! ([`crate::folder`]). [`detect`] tells which from the path.

use anyhow::{anyhow, bail, Context, Result};
use layerwise_core::dataset::SourceFile;
use layerwise_core::hash::sha256_hex;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use crate::pickles::{parse_pickle, parse_pickle_with, pickle_names};
pub use crate::release::RawImages;
pub use layerwise_core::cifar10::{CLASSES as CIFAR10_CLASSES, IMAGE_BYTES, RECORD_BYTES};

use crate::pickles::parse_meta_pickle;
use crate::release::{open_tar, Release};

const BIN_DIR: &str = "cifar-10-batches-bin";
const PY_DIR: &str = "cifar-10-batches-py";
const TRAIN_BATCHES: usize = 5;

/// The largest member file a CIFAR-10 release holds is a batch: 30,730,000 bytes in the
/// binary release, about 31 MB pickled. Nothing larger is ever read or allocated.
pub const MAX_MEMBER_BYTES: u64 = 64 << 20;

/// Which official form a source is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// `cifar-10-batches-bin/` folder.
    BinaryFolder,
    /// `cifar-10-binary.tar.gz`.
    BinaryTarball,
    /// `cifar-10-batches-py/` folder.
    PythonFolder,
    /// `cifar-10-python.tar.gz`.
    PythonTarball,
    /// CIFAR-100's binary release: a folder (`false`) or its tarball (`true`).
    Cifar100Binary(bool),
    /// CIFAR-100's Python release: a folder (`false`) or its tarball (`true`).
    Cifar100Python(bool),
    /// MNIST or Fashion-MNIST IDX files.
    Idx,
    /// A folder of images per class.
    ImageFolder,
}

impl SourceKind {
    /// Name recorded in the dataset metadata.
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::BinaryFolder => "binary-folder",
            SourceKind::BinaryTarball => "binary-tarball",
            SourceKind::PythonFolder => "python-folder",
            SourceKind::PythonTarball => "python-tarball",
            SourceKind::Cifar100Binary(false) => "cifar-100-binary-folder",
            SourceKind::Cifar100Binary(true) => "cifar-100-binary-tarball",
            SourceKind::Cifar100Python(false) => "cifar-100-python-folder",
            SourceKind::Cifar100Python(true) => "cifar-100-python-tarball",
            SourceKind::Idx => "idx",
            SourceKind::ImageFolder => "image-folder",
        }
    }
}

/// How a source is read beyond its files: CIFAR-100's labels, an image folder's size.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ReadOptions {
    /// CIFAR-100: fine or coarse labels.
    pub labels: crate::cifar100::Labels,
    /// An image folder: resize every image to (width, height).
    pub resize: Option<(u32, u32)>,
}

/// Decide what `path` is. A folder may be the batches folder itself or hold one.
pub fn detect(path: &Path) -> Result<(SourceKind, PathBuf)> {
    if path.is_dir() {
        if path.join("data_batch_1.bin").exists() || path.join("test_batch.bin").exists() {
            return Ok((SourceKind::BinaryFolder, path.to_path_buf()));
        }
        if path.join("data_batch_1").exists() || path.join("batches.meta").exists() {
            return Ok((SourceKind::PythonFolder, path.to_path_buf()));
        }
        if path.join("train.bin").exists() && path.join("test.bin").exists() {
            return Ok((SourceKind::Cifar100Binary(false), path.to_path_buf()));
        }
        if path.join("train").is_file() && path.join("test").is_file() {
            return Ok((SourceKind::Cifar100Python(false), path.to_path_buf()));
        }
        if crate::idx::is_idx_folder(path) {
            return Ok((SourceKind::Idx, path.to_path_buf()));
        }
        for (sub, kind) in [(BIN_DIR, SourceKind::BinaryFolder), (PY_DIR, SourceKind::PythonFolder)] {
            if path.join(sub).is_dir() {
                return detect(&path.join(sub)).map(|(_, p)| (kind, p));
            }
        }
        for sub in [crate::cifar100::BIN_DIR, crate::cifar100::PY_DIR] {
            if path.join(sub).is_dir() {
                return detect(&path.join(sub));
            }
        }
        if crate::folder::is_image_folder(path) {
            return Ok((SourceKind::ImageFolder, path.to_path_buf()));
        }
        for (file, kind) in [
            ("cifar-10-binary.tar.gz", SourceKind::BinaryTarball),
            ("cifar-10-python.tar.gz", SourceKind::PythonTarball),
        ] {
            if path.join(file).is_file() {
                return Ok((kind, path.join(file)));
            }
        }
        bail!(
            "{} holds no dataset layerwise reads: expected CIFAR-10 (data_batch_1.bin … test_batch.bin, or the Python \
             release's data_batch_1 … test_batch, or an official tarball), CIFAR-100 (train.bin and test.bin, or the \
             Python release's train and test), MNIST IDX files (train-images-idx3-ubyte[.gz] …), or a folder of \
             images per class (ROOT/<class>/*.png, or ROOT/train/<class>/ and ROOT/test/<class>/)",
            path.display()
        );
    }
    if path.is_file() {
        return Ok((tarball_kind(path)?, path.to_path_buf()));
    }
    bail!("source {} does not exist", path.display())
}

/// Look inside a tarball to tell the binary release from the Python release.
fn tarball_kind(path: &Path) -> Result<SourceKind> {
    let mut archive = open_tar(path)?;
    let entries = archive.entries().with_context(|| not_cifar_tar(path))?;
    for entry in entries {
        let entry = entry.with_context(|| not_cifar_tar(path))?;
        let name = entry.path().with_context(|| not_cifar_tar(path))?.to_string_lossy().into_owned();
        if name.starts_with(BIN_DIR) {
            return Ok(SourceKind::BinaryTarball);
        }
        if name.starts_with(PY_DIR) {
            return Ok(SourceKind::PythonTarball);
        }
        if name.starts_with(crate::cifar100::BIN_DIR) {
            return Ok(SourceKind::Cifar100Binary(true));
        }
        if name.starts_with(crate::cifar100::PY_DIR) {
            return Ok(SourceKind::Cifar100Python(true));
        }
    }
    bail!(
        "{}: the archive holds none of {BIN_DIR}/, {PY_DIR}/, {}/, {}/: it is not a CIFAR-10 release (nor a CIFAR-100 one)",
        path.display(),
        crate::cifar100::BIN_DIR,
        crate::cifar100::PY_DIR
    )
}

fn not_cifar_tar(path: &Path) -> String {
    format!(
        "{} is not a readable .tar.gz archive (expected cifar-10-binary.tar.gz or cifar-10-python.tar.gz)",
        path.display()
    )
}

/// The member files each release needs, in order: five training batches, the test batch,
/// then the (optional) class-name file.
fn member_names(kind: SourceKind) -> Vec<String> {
    let binary = matches!(kind, SourceKind::BinaryFolder | SourceKind::BinaryTarball);
    let ext = if binary { ".bin" } else { "" };
    let mut names: Vec<String> = (1..=TRAIN_BATCHES).map(|i| format!("data_batch_{i}{ext}")).collect();
    names.push(format!("test_batch{ext}"));
    names.push(if binary { "batches.meta.txt".into() } else { "batches.meta".into() });
    names
}

/// Read the needed member files (name → bytes) from a folder or tarball.
fn read_members(kind: SourceKind, path: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let wanted = member_names(kind);
    let tarball = matches!(kind, SourceKind::BinaryTarball | SourceKind::PythonTarball);
    let dir = if kind == SourceKind::BinaryTarball { BIN_DIR } else { PY_DIR };
    let release = Release { what: "CIFAR-10", largest: "30,730,000", max_bytes: MAX_MEMBER_BYTES };
    release.read(path, tarball.then_some(dir), &wanted, &wanted[..=TRAIN_BATCHES])
}

/// The SHA-256 of each file of a source, as a prepared dataset records them (cheap: the
/// files are read and hashed, not parsed).
pub fn hashes(kind: SourceKind, path: &Path) -> Result<Vec<SourceFile>> {
    match kind {
        SourceKind::Cifar100Binary(t) => return crate::cifar100::hashes(path, true, t),
        SourceKind::Cifar100Python(t) => return crate::cifar100::hashes(path, false, t),
        SourceKind::Idx => return crate::idx::hashes(path),
        SourceKind::ImageFolder => return crate::folder::hashes(path),
        _ => {}
    }
    Ok(read_members(kind, path)?
        .iter()
        .map(|(name, bytes)| SourceFile { name: name.clone(), sha256: sha256_hex(bytes) })
        .collect())
}

/// Read a detected source.
pub fn read_with(kind: SourceKind, path: &Path, opts: ReadOptions) -> Result<RawImages> {
    match kind {
        SourceKind::Cifar100Binary(t) => crate::cifar100::read(path, true, t, opts.labels),
        SourceKind::Cifar100Python(t) => crate::cifar100::read(path, false, t, opts.labels),
        SourceKind::Idx => crate::idx::read(path),
        SourceKind::ImageFolder => crate::folder::read(path, opts.resize),
        _ => read(kind, path),
    }
}

/// Read CIFAR-10 from a detected source.
pub fn read(kind: SourceKind, path: &Path) -> Result<RawImages> {
    let members = read_members(kind, path)?;
    let names = member_names(kind);
    let binary = matches!(kind, SourceKind::BinaryFolder | SourceKind::BinaryTarball);
    let mut raw = RawImages { name: "cifar-10".into(), image_shape: [3, 32, 32], ..Default::default() };
    let mut per_batch = None;
    for (i, name) in names[..=TRAIN_BATCHES].iter().enumerate() {
        let bytes = &members[name];
        let origin = format!("{} ({name})", path.display());
        let (images, labels) = if binary { parse_binary(bytes, &origin)? } else { parse_pickle(bytes, &origin)? };
        if let Some(n) = labels.iter().position(|&l| l > 9) {
            bail!("{origin}: record {n} has label {}, but CIFAR-10 labels are 0-9: the file is corrupt", labels[n]);
        }
        match per_batch {
            None => per_batch = Some(labels.len()),
            Some(expected) if expected != labels.len() => bail!(
                "{origin}: holds {} images, but {} holds {expected}: every CIFAR-10 batch has the same size; \
                 the file is truncated or too long",
                labels.len(),
                names[0]
            ),
            Some(_) => {}
        }
        if i < TRAIN_BATCHES {
            raw.train_images.extend_from_slice(&images);
            raw.train_labels.extend_from_slice(&labels);
        } else {
            raw.test_images = images;
            raw.test_labels = labels;
        }
    }
    let meta_name = &names[TRAIN_BATCHES + 1];
    raw.classes = match members.get(meta_name) {
        Some(bytes) if binary => parse_meta_txt(bytes, &format!("{} ({meta_name})", path.display()))?,
        Some(bytes) => parse_meta_pickle(bytes, &format!("{} ({meta_name})", path.display()))?,
        None => CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
    };
    raw.sources =
        members.iter().map(|(name, bytes)| SourceFile { name: name.clone(), sha256: sha256_hex(bytes) }).collect();
    Ok(raw)
}

/// Split a binary batch into image bytes and labels.
pub fn parse_binary(bytes: &[u8], origin: &str) -> Result<(Vec<u8>, Vec<u8>)> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD_BYTES) {
        bail!(
            "{origin}: {} bytes is not a whole number of {RECORD_BYTES}-byte records: the file is truncated or too long",
            bytes.len()
        );
    }
    let n = bytes.len() / RECORD_BYTES;
    let mut images = Vec::with_capacity(n * IMAGE_BYTES);
    let mut labels = Vec::with_capacity(n);
    for rec in bytes.chunks_exact(RECORD_BYTES) {
        labels.push(rec[0]);
        images.extend_from_slice(&rec[1..]);
    }
    Ok((images, labels))
}

fn parse_meta_txt(bytes: &[u8], origin: &str) -> Result<Vec<String>> {
    let n = 10;
    let text = std::str::from_utf8(bytes).map_err(|_| anyhow!("{origin}: class-name file is not text"))?;
    let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    if names.len() != n {
        bail!("{origin}: expected {n} class names, found {}", names.len());
    }
    Ok(names)
}
