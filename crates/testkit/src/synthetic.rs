//! Small synthetic CIFAR-10 look-alikes in all four official forms, for tests and demos.
//!
//! The images follow a learnable rule: class `c` brightens the `c`-th horizontal band of
//! one colour plane, on top of uniform noise, so a one-hidden-layer MLP separates the
//! classes easily. Deterministic for a given seed.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

use crate::{CIFAR10_CLASSES, IMAGE_BYTES};

/// `n` images and labels (labels cycle through the classes).
pub fn images(n: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    let mut imgs = Vec::with_capacity(n * IMAGE_BYTES);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let c = ((i as u32 * 7 + next() % 3) % 10) as usize;
        labels.push(c as u8);
        for ch in 0..3 {
            for row in 0..32 {
                for _col in 0..32 {
                    let band = row * 10 / 32 == c && ch == c % 3;
                    let base = if band { 150 } else { 0 };
                    imgs.push((base + (next() % 100) as usize).min(255) as u8);
                }
            }
        }
    }
    (imgs, labels)
}

/// Bytes of one binary-release batch file.
pub fn binary_batch(n: usize, seed: u64) -> Vec<u8> {
    let (imgs, labels) = images(n, seed);
    let mut out = Vec::with_capacity(n * (IMAGE_BYTES + 1));
    for (i, l) in labels.iter().enumerate() {
        out.push(*l);
        out.extend_from_slice(&imgs[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES]);
    }
    out
}

/// A minimal protocol-2 pickle of a CIFAR-10 Python batch, as numpy and Python 2 write it:
/// a dict with `data` (a numpy uint8 array via `_reconstruct`) and `labels` (a list).
pub fn python_batch(n: usize, seed: u64) -> Vec<u8> {
    let (imgs, labels) = images(n, seed);
    python_pickle(&imgs, &[("labels", &labels)])
}

/// A protocol-2 pickle of a CIFAR Python batch: `data` (a numpy uint8 array of the CHW
/// images, 3,072 bytes each) and each `(key, labels)` list (CIFAR-10: `labels`; CIFAR-100:
/// `fine_labels` and `coarse_labels`).
pub fn python_pickle(imgs: &[u8], label_lists: &[(&str, &[u8])]) -> Vec<u8> {
    let n = imgs.len() / IMAGE_BYTES;
    let mut p = vec![0x80, 2, b'}', b'('];
    short_str(&mut p, b"data");
    p.extend_from_slice(b"cnumpy.core.multiarray\n_reconstruct\n");
    p.extend_from_slice(b"cnumpy\nndarray\n");
    p.extend_from_slice(b"K\x00\x85"); // (0,)
    short_str(&mut p, b"b");
    p.extend_from_slice(b"\x87R"); // TUPLE3, REDUCE
    p.push(b'('); // state
    p.extend_from_slice(b"K\x01");
    binint(&mut p, n as i32);
    binint(&mut p, IMAGE_BYTES as i32);
    p.push(0x86); // TUPLE2 shape
    p.extend_from_slice(b"cnumpy\ndtype\n");
    short_str(&mut p, b"u1");
    p.extend_from_slice(b"K\x00K\x01\x87R"); // dtype('u1', 0, 1)
    p.push(b'(');
    p.extend_from_slice(b"K\x03");
    short_str(&mut p, b"|");
    p.extend_from_slice(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"); // dtype state, BUILD
    p.push(0x89); // False
    p.push(b'T');
    p.extend_from_slice(&(imgs.len() as u32).to_le_bytes());
    p.extend_from_slice(imgs);
    p.extend_from_slice(b"tb"); // array state, BUILD
    for (key, labels) in label_lists {
        short_str(&mut p, key.as_bytes());
        p.extend_from_slice(b"](");
        for &l in *labels {
            p.extend_from_slice(&[b'K', l]);
        }
        p.extend_from_slice(b"e");
    }
    p.extend_from_slice(b"u.");
    p
}

/// Pickle of `batches.meta`.
pub fn python_meta() -> Vec<u8> {
    let names: Vec<String> = CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect();
    python_names(&[("label_names", &names)])
}

/// A pickle of a dict of name lists (a release's meta file).
pub fn python_names(lists: &[(&str, &[String])]) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}', b'('];
    for (key, names) in lists {
        short_str(&mut p, key.as_bytes());
        p.extend_from_slice(b"](");
        for c in *names {
            short_str(&mut p, c.as_bytes());
        }
        p.extend_from_slice(b"e");
    }
    p.extend_from_slice(b"u.");
    p
}

fn short_str(p: &mut Vec<u8>, s: &[u8]) {
    p.push(b'U');
    p.push(s.len() as u8);
    p.extend_from_slice(s);
}

fn binint(p: &mut Vec<u8>, v: i32) {
    p.push(b'J');
    p.extend_from_slice(&v.to_le_bytes());
}

/// The release's files: (name, bytes). `per_batch` images in each of the six batches.
pub fn release_files(python: bool, per_batch: usize) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for i in 1..=6u64 {
        let name = if i == 6 { "test_batch".to_string() } else { format!("data_batch_{i}") };
        if python {
            files.push((name, python_batch(per_batch, i)));
        } else {
            files.push((format!("{name}.bin"), binary_batch(per_batch, i)));
        }
    }
    if python {
        files.push(("batches.meta".into(), python_meta()));
    } else {
        files.push(("batches.meta.txt".into(), CIFAR10_CLASSES.join("\n").into_bytes()));
    }
    files
}

/// Write a release folder (`cifar-10-batches-bin` or `cifar-10-batches-py`) under `dir`.
pub fn write_folder(dir: &Path, python: bool, per_batch: usize) -> Result<PathBuf> {
    let folder = dir.join(if python { "cifar-10-batches-py" } else { "cifar-10-batches-bin" });
    std::fs::create_dir_all(&folder).with_context(|| format!("cannot create {}", folder.display()))?;
    for (name, bytes) in release_files(python, per_batch) {
        std::fs::write(folder.join(&name), bytes).with_context(|| format!("cannot write {name}"))?;
    }
    Ok(folder)
}

/// The bytes of an official-style tarball.
pub fn tarball_bytes(python: bool, per_batch: usize) -> Result<Vec<u8>> {
    let dir = if python { "cifar-10-batches-py" } else { "cifar-10-batches-bin" };
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, bytes) in release_files(python, per_batch) {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, format!("{dir}/{name}"), bytes.as_slice())?;
    }
    Ok(tar.into_inner()?.finish()?)
}

/// Write an official-style tarball under `dir`; returns its path.
pub fn write_tarball(dir: &Path, python: bool, per_batch: usize) -> Result<PathBuf> {
    let name = if python { "cifar-10-python.tar.gz" } else { "cifar-10-binary.tar.gz" };
    let path = dir.join(name);
    std::fs::write(&path, tarball_bytes(python, per_batch)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}
