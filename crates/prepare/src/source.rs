//! Finding and reading a dataset in the forms people actually have it: CIFAR-10's official
//! binary release (folder or `cifar-10-binary.tar.gz`) and Python release (folder, as Keras
//! and torchvision leave it, or `cifar-10-python.tar.gz`); CIFAR-100's two releases
//! ([`crate::cifar100`]); MNIST's IDX files ([`crate::idx`]); a folder of images per class
//! ([`crate::folder`]). [`detect`] tells which from the path.

use anyhow::{anyhow, bail, Context, Result};
use layerwise_core::dataset::SourceFile;
use layerwise_core::hash::sha256_hex;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

pub use layerwise_core::cifar10::{CLASSES as CIFAR10_CLASSES, IMAGE_BYTES, RECORD_BYTES};

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

pub(crate) fn open_tar(path: &Path) -> Result<tar::Archive<flate2::read::GzDecoder<std::fs::File>>> {
    let file = layerwise_core::fsread::open_regular(path, "CIFAR-10 tarball")?;
    Ok(tar::Archive::new(flate2::read::GzDecoder::new(file)))
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

/// How a release's files are read: what it is called in messages, and the largest file it
/// holds (nothing larger is read or allocated).
pub(crate) struct Release {
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
    pub(crate) fn read(
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

fn load_pickle(bytes: &[u8], origin: &str) -> Result<serde_pickle::Value> {
    crate::pickle_scan::containers(bytes).map_err(|e| anyhow!("{origin}: not a CIFAR-10 Python pickle: {e:#}"))?;
    serde_pickle::value_from_slice(bytes, serde_pickle::DeOptions::new().replace_unresolved_globals())
        .map_err(|e| anyhow!("{origin}: not a CIFAR-10 Python pickle ({e})"))
}

fn dict_get<'a>(v: &'a serde_pickle::Value, key: &str) -> Option<&'a serde_pickle::Value> {
    use serde_pickle::{HashableValue as H, Value as V};
    let V::Dict(map) = v else { return None };
    map.iter().find_map(|(k, val)| match k {
        H::Bytes(b) if b == key.as_bytes() => Some(val),
        H::String(s) if s == key => Some(val),
        _ => None,
    })
}

/// Find the raw array bytes and shape inside a numpy array's pickled state tuple
/// `(1, shape, dtype, is_fortran, raw_bytes)`.
fn numpy_bytes(v: &serde_pickle::Value) -> Option<(Vec<i64>, &[u8])> {
    use serde_pickle::Value as V;
    let V::Tuple(state) = v else { return None };
    let shape = state.iter().find_map(|x| match x {
        V::Tuple(dims) if !dims.is_empty() && dims.iter().all(|d| matches!(d, V::I64(_))) => {
            Some(dims.iter().filter_map(|d| if let V::I64(n) = d { Some(*n) } else { None }).collect::<Vec<_>>())
        }
        _ => None,
    })?;
    let data = state.iter().find_map(|x| match x {
        V::Bytes(b) => Some(b.as_slice()),
        _ => None,
    })?;
    Some((shape, data))
}

/// Read one Python-release batch: `data` (uint8 `[n, 3072]`) and `labels` (list of ints).
pub fn parse_pickle(bytes: &[u8], origin: &str) -> Result<(Vec<u8>, Vec<u8>)> {
    parse_pickle_with(bytes, "labels", origin)
}

/// [`parse_pickle`] with the labels under `key` (CIFAR-100: `fine_labels`, `coarse_labels`).
pub fn parse_pickle_with(bytes: &[u8], key: &str, origin: &str) -> Result<(Vec<u8>, Vec<u8>)> {
    use serde_pickle::Value as V;
    let root = load_pickle(bytes, origin)?;
    let labels_v =
        dict_get(&root, key).ok_or_else(|| anyhow!("{origin}: pickle has no `{key}` key: not a CIFAR batch"))?;
    let V::List(list) = labels_v else { bail!("{origin}: `{key}` is not a list") };
    let labels = list
        .iter()
        .enumerate()
        .map(|(i, l)| match l {
            V::I64(x) if (0..=255).contains(x) => Ok(*x as u8),
            other => Err(anyhow!("{origin}: label {i} is {other:?}, expected an integer 0-9")),
        })
        .collect::<Result<Vec<u8>>>()?;
    let data_v =
        dict_get(&root, "data").ok_or_else(|| anyhow!("{origin}: pickle has no `data` key: not a CIFAR-10 batch"))?;
    let (shape, data) = numpy_bytes(data_v).ok_or_else(|| anyhow!("{origin}: `data` is not a pickled numpy array"))?;
    let n = labels.len();
    if shape != [n as i64, IMAGE_BYTES as i64] || data.len() != n * IMAGE_BYTES {
        bail!(
            "{origin}: `data` has shape {shape:?} and {} bytes, expected [{n}, {IMAGE_BYTES}] uint8 ({} bytes)",
            data.len(),
            n * IMAGE_BYTES
        );
    }
    Ok((data.to_vec(), labels))
}

fn parse_meta_pickle(bytes: &[u8], origin: &str) -> Result<Vec<String>> {
    pickle_names(bytes, "label_names", 10, origin)
}

/// The `n` class names a release's meta pickle holds under `key`.
pub fn pickle_names(bytes: &[u8], key: &str, n: usize, origin: &str) -> Result<Vec<String>> {
    use serde_pickle::Value as V;
    let root = load_pickle(bytes, origin)?;
    let Some(V::List(list)) = dict_get(&root, key) else {
        bail!("{origin}: no `{key}` list: not the release's meta file")
    };
    let names: Vec<String> = list
        .iter()
        .filter_map(|v| match v {
            V::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
            V::String(s) => Some(s.clone()),
            _ => None,
        })
        .collect();
    if names.len() != n {
        bail!("{origin}: expected {n} class names, found {}", names.len());
    }
    Ok(names)
}
