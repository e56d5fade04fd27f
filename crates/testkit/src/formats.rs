//! The other dataset forms `layerwise-prepare` reads, built from given images (CIFAR-10's,
//! real or synthetic) or synthetic ones: a CIFAR-100 binary release with remapped labels,
//! MNIST IDX files (gzipped or not), and a folder of PNG images per class.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// CIFAR-100 binary records from CIFAR-10 images (CHW, 3,072 bytes each) and labels: fine
/// label `10·label + i % 10` (100 classes), coarse label `fine / 5` (20 superclasses).
pub fn cifar100_records(images: &[u8], labels: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(labels.len() * 3074);
    for (i, (img, &l)) in images.chunks_exact(3072).zip(labels).enumerate() {
        let fine = l * 10 + (i % 10) as u8;
        out.extend([fine / 5, fine]);
        out.extend_from_slice(img);
    }
    out
}

/// A `cifar-100-binary/` folder in `dir` (train.bin, test.bin, the class-name files).
pub fn write_cifar100_binary(dir: &Path, train: (&[u8], &[u8]), test: (&[u8], &[u8])) -> Result<PathBuf> {
    let root = dir.join("cifar-100-binary");
    std::fs::create_dir_all(&root)?;
    std::fs::write(root.join("train.bin"), cifar100_records(train.0, train.1))?;
    std::fs::write(root.join("test.bin"), cifar100_records(test.0, test.1))?;
    let names = |n: usize, what: &str| (0..n).map(|i| format!("{what}_{i}\n")).collect::<String>();
    std::fs::write(root.join("fine_label_names.txt"), names(100, "fine"))?;
    std::fs::write(root.join("coarse_label_names.txt"), names(20, "coarse"))?;
    Ok(root)
}

/// A `cifar-100-python/` folder in `dir` (train, test and meta pickles), labels remapped
/// as [`cifar100_records`] does.
pub fn write_cifar100_python(dir: &Path, train: (&[u8], &[u8]), test: (&[u8], &[u8])) -> Result<PathBuf> {
    let root = dir.join("cifar-100-python");
    std::fs::create_dir_all(&root)?;
    let pickle = |(images, labels): (&[u8], &[u8])| {
        let fine: Vec<u8> = labels.iter().enumerate().map(|(i, &l)| l * 10 + (i % 10) as u8).collect();
        let coarse: Vec<u8> = fine.iter().map(|f| f / 5).collect();
        crate::synthetic::python_pickle(images, &[("fine_labels", &fine), ("coarse_labels", &coarse)])
    };
    std::fs::write(root.join("train"), pickle(train))?;
    std::fs::write(root.join("test"), pickle(test))?;
    let names = |n: usize, what: &str| (0..n).map(|i| format!("{what}_{i}")).collect::<Vec<_>>();
    let meta = crate::synthetic::python_names(&[
        ("fine_label_names", &names(100, "fine")),
        ("coarse_label_names", &names(20, "coarse")),
    ]);
    std::fs::write(root.join("meta"), meta)?;
    Ok(root)
}

/// An IDX file of `n` images of `h × w` bytes.
pub fn idx_images(images: &[u8], n: usize, h: usize, w: usize) -> Vec<u8> {
    let mut out = vec![0, 0, 8, 3];
    for d in [n, h, w] {
        out.extend((d as u32).to_be_bytes());
    }
    out.extend_from_slice(images);
    out
}

/// An IDX file of labels.
pub fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, 1];
    out.extend((labels.len() as u32).to_be_bytes());
    out.extend_from_slice(labels);
    out
}

/// `n` synthetic 28 × 28 digits: class `c` brightens the `c`-th of ten column bands, on
/// top of noise. Deterministic for a seed.
pub fn digits(n: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let mut state = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    let (mut images, mut labels) = (Vec::with_capacity(n * 784), Vec::with_capacity(n));
    for i in 0..n {
        let c = (i * 3 + (next() % 2) as usize) % 10;
        labels.push(c as u8);
        for _row in 0..28 {
            for col in 0..28 {
                let band = col * 10 / 28 == c;
                images.push(((if band { 160 } else { 0 }) + next() % 90).min(255) as u8);
            }
        }
    }
    (images, labels)
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes)?;
    Ok(e.finish()?)
}

/// A folder of MNIST-style IDX files of synthetic digits in `dir/name`, gzipped or not.
pub fn write_idx_folder(dir: &Path, name: &str, n_train: usize, n_test: usize, gz: bool) -> Result<PathBuf> {
    let root = dir.join(name);
    std::fs::create_dir_all(&root)?;
    let (tr, trl) = digits(n_train, 1);
    let (te, tel) = digits(n_test, 2);
    let files = [
        ("train-images-idx3-ubyte", idx_images(&tr, n_train, 28, 28)),
        ("train-labels-idx1-ubyte", idx_labels(&trl)),
        ("t10k-images-idx3-ubyte", idx_images(&te, n_test, 28, 28)),
        ("t10k-labels-idx1-ubyte", idx_labels(&tel)),
    ];
    for (file, bytes) in files {
        if gz {
            std::fs::write(root.join(format!("{file}.gz")), gzip(&bytes)?)?;
        } else {
            std::fs::write(root.join(file), bytes)?;
        }
    }
    Ok(root)
}

/// PNG bytes of one CHW RGB image of `side × side`.
pub fn png(chw: &[u8], side: usize) -> Result<Vec<u8>> {
    let plane = side * side;
    let mut hwc = vec![0u8; 3 * plane];
    for c in 0..3 {
        for i in 0..plane {
            hwc[i * 3 + c] = chw[c * plane + i];
        }
    }
    let img = image::RgbImage::from_raw(side as u32, side as u32, hwc).context("image size")?;
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)?;
    Ok(out.into_inner())
}

/// A folder of 32 × 32 PNG images per class in `dir/name`: `train/<class>/` and
/// `test/<class>/` when `split`, else `<class>/` holding the training images only.
pub fn write_image_folder(
    dir: &Path,
    name: &str,
    classes: &[&str],
    train: (&[u8], &[u8]),
    test: Option<(&[u8], &[u8])>,
) -> Result<PathBuf> {
    let root = dir.join(name);
    let write = |sub: &Path, (images, labels): (&[u8], &[u8])| -> Result<()> {
        for (i, (img, &l)) in images.chunks_exact(3072).zip(labels).enumerate() {
            let d = sub.join(classes[l as usize]);
            std::fs::create_dir_all(&d)?;
            std::fs::write(d.join(format!("{i:05}.png")), png(img, 32)?)?;
        }
        Ok(())
    };
    match test {
        Some(t) => {
            write(&root.join("train"), train)?;
            write(&root.join("test"), t)?;
        }
        None => write(&root, train)?,
    }
    Ok(root)
}
