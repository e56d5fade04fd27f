//! A folder of images per class, as people keep their own data: `ROOT/train/<class>/…` and
//! `ROOT/test/<class>/…`, or `ROOT/<class>/…` (then the last sixth of each class, by file
//! name, is the test split). Class names are the folder names, in sorted order; PNG, JPEG,
//! BMP and WebP files are read, told by their content. Every image must have one size,
//! unless a size to resize to is given. Grayscale images stay one channel when every image
//! is grayscale; otherwise every image is RGB.
//!
//! The training images are taken class by class in turn (the first of each class, then the
//! second…), so the validation split (the last fraction, as for CIFAR-10) holds every class.

use crate::release::RawImages;
use anyhow::{bail, Context, Result};
use layerwise_core::dataset::SourceFile;
use layerwise_core::hash::sha256_hex;
use std::path::{Path, PathBuf};

/// Image file extensions read (case-insensitive).
pub const EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "bmp", "webp"];
/// The largest image file read.
pub const MAX_FILE_BYTES: u64 = 64 << 20;
/// The largest side an image may have (after any resize, the model's input).
pub const MAX_SIDE: u32 = 4096;
/// The most images a folder dataset may hold.
pub const MAX_IMAGES: usize = 2_000_000;

fn is_image(p: &Path) -> bool {
    p.is_file()
        && p.extension().and_then(|e| e.to_str()).is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read folder {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .collect();
    v.sort();
    Ok(v)
}

/// The class folders of `dir` (sub-folders holding image files), sorted by name.
fn class_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in sorted_entries(dir)? {
        if p.is_dir() && sorted_entries(&p)?.iter().any(|f| is_image(f)) {
            out.push(p);
        }
    }
    Ok(out)
}

/// Whether `dir` looks like an image folder dataset.
pub fn is_image_folder(dir: &Path) -> bool {
    let split = dir.join("train").is_dir() && dir.join("test").is_dir();
    split || class_dirs(dir).is_ok_and(|c| c.len() >= 2)
}

fn name_of(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// One decoded image: RGB bytes (HWC), and whether it had color.
fn decode(
    path: &Path,
    bytes: &[u8],
    size: Option<(u32, u32)>,
    expect: &mut Option<(u32, u32)>,
) -> Result<(Vec<u8>, bool)> {
    layerwise_core::imagefile::check_complete(bytes).with_context(|| format!("{}", path.display()))?;
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .with_context(|| format!("{}: cannot read it", path.display()))?;
    if reader.format().is_none() {
        bail!("{}: not an image layerwise reads (PNG, JPEG, BMP or WebP)", path.display());
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(256 << 20);
    reader.limits(limits);
    let img = reader
        .decode()
        .with_context(|| format!("{}: cannot decode it (damaged, truncated or too large)", path.display()))?;
    let color = img.color().has_color();
    let img = match size {
        Some((w, h)) if (img.width(), img.height()) != (w, h) => {
            img.resize_exact(w, h, image::imageops::FilterType::Triangle)
        }
        _ => img,
    };
    let dims = (img.width(), img.height());
    match expect {
        None => *expect = Some(dims),
        Some(e) if *e != dims => bail!(
            "{}: it is {}×{}, the images before it {}×{}: every image must have one size; give --resize WxH to resize them all",
            path.display(),
            dims.0,
            dims.1,
            e.0,
            e.1
        ),
        Some(_) => {}
    }
    Ok((img.to_rgb8().into_raw(), color))
}

/// The files of each class (sorted), for `classes` under `dir`.
fn files_by_class(dir: &Path, classes: &[String]) -> Result<Vec<Vec<PathBuf>>> {
    classes
        .iter()
        .map(|c| {
            let d = dir.join(c);
            if !d.is_dir() {
                return Ok(Vec::new());
            }
            Ok(sorted_entries(&d)?.into_iter().filter(|p| is_image(p)).collect())
        })
        .collect()
}

/// Class by class in turn: the first file of each class, then the second...
fn interleave(by_class: Vec<Vec<(PathBuf, u8)>>) -> Vec<(PathBuf, u8)> {
    let longest = by_class.iter().map(Vec::len).max().unwrap_or(0);
    let mut out = Vec::new();
    for i in 0..longest {
        for class in &by_class {
            if let Some(f) = class.get(i) {
                out.push(f.clone());
            }
        }
    }
    out
}

/// The dataset's files, labelled: the training and the test images, each class by class in
/// turn, and the class names.
type Listing = (Vec<(PathBuf, u8)>, Vec<(PathBuf, u8)>, Vec<String>);

fn list(root: &Path) -> Result<Listing> {
    let split = root.join("train").is_dir() && root.join("test").is_dir();
    let class_root = if split { root.join("train") } else { root.to_path_buf() };
    let classes: Vec<String> = class_dirs(&class_root)?.iter().map(|p| name_of(p)).collect();
    if classes.len() < 2 || classes.len() > 256 {
        bail!(
            "{}: {} class folders with images; an image folder dataset has 2 to 256 (ROOT/<class>/*.png, or \
             ROOT/train/<class>/ and ROOT/test/<class>/)",
            class_root.display(),
            classes.len()
        );
    }
    // A name is written into the report's tables and the dataset's source listing (a line
    // a file): a newline or another control character would break both.
    if let Some(c) = classes.iter().find(|c| c.chars().any(char::is_control)) {
        bail!(
            "{}: class folder {c:?} has a control character (a newline, a tab…) in its name, which would break the \
             report's tables: rename the folder",
            class_root.display()
        );
    }
    let label = |files: Vec<Vec<PathBuf>>| -> Vec<Vec<(PathBuf, u8)>> {
        files.into_iter().enumerate().map(|(c, v)| v.into_iter().map(|p| (p, c as u8)).collect()).collect()
    };
    let (train, test) = if split {
        let test_classes: Vec<String> = class_dirs(&root.join("test"))?.iter().map(|p| name_of(p)).collect();
        if let Some(c) = test_classes.iter().find(|c| !classes.contains(c)) {
            bail!("{}: class `{c}` has test images but no training images", root.display());
        }
        (label(files_by_class(&class_root, &classes)?), label(files_by_class(&root.join("test"), &classes)?))
    } else {
        let mut train = Vec::new();
        let mut test = Vec::new();
        for (c, v) in label(files_by_class(&class_root, &classes)?).into_iter().enumerate() {
            // Without train/ and test/ folders a sixth of each class is held out to test:
            // a class of one image would have none to train on.
            if v.len() < 2 {
                bail!(
                    "{}: class `{}` has {} image: each class needs at least 2 (one to train on, one to test); add \
                     images or remove the folder",
                    class_root.display(),
                    classes[c],
                    v.len()
                );
            }
            let held = v.len().div_ceil(6);
            let (a, b) = v.split_at(v.len() - held);
            train.push(a.to_vec());
            test.push(b.to_vec());
        }
        (train, test)
    };
    let (train, test) = (interleave(train), interleave(test));
    if let Some((p, _)) = train.iter().chain(&test).find(|(p, _)| name_of(p).chars().any(char::is_control)) {
        bail!(
            "{}: a control character (a newline, a tab…) in the file name {:?} would break the dataset's source \
             listing: rename the file",
            root.display(),
            name_of(p)
        );
    }
    if train.len() + test.len() > MAX_IMAGES {
        bail!("{}: {} images, more than layerwise reads ({MAX_IMAGES})", root.display(), train.len() + test.len());
    }
    if train.is_empty() || test.is_empty() {
        bail!("{}: {} training and {} test images: both are needed", root.display(), train.len(), test.len());
    }
    Ok((train, test, classes))
}

/// A split's files as one source entry: the SHA-256 of "path<TAB>file SHA-256" lines.
fn source(root: &Path, what: &str, files: &[(PathBuf, u8)], hashes: &[String]) -> SourceFile {
    let mut listing = String::new();
    for ((p, _), h) in files.iter().zip(hashes) {
        listing.push_str(&format!("{}\t{h}\n", p.strip_prefix(root).unwrap_or(p).to_string_lossy()));
    }
    SourceFile {
        name: format!("{what} ({} images: each path and its file's SHA-256, a line each)", files.len()),
        sha256: sha256_hex(listing.as_bytes()),
    }
}

/// The folder's sources as a dataset records them, without decoding an image.
pub fn hashes(root: &Path) -> Result<Vec<SourceFile>> {
    let (train, test, _) = list(root)?;
    let hash = |files: &[(PathBuf, u8)]| -> Result<Vec<String>> {
        files
            .iter()
            .map(|(p, _)| Ok(sha256_hex(&layerwise_core::fsread::read_capped(p, "image", MAX_FILE_BYTES)?)))
            .collect()
    };
    Ok(vec![source(root, "train", &train, &hash(&train)?), source(root, "test", &test, &hash(&test)?)])
}

/// Read an image folder dataset; `size`: resize every image to (width, height).
pub fn read(root: &Path, size: Option<(u32, u32)>) -> Result<RawImages> {
    let (train, test, classes) = list(root)?;
    let mut expect = None;
    let mut any_color = false;
    // Per split: each image's RGB bytes, the labels, each file's SHA-256.
    type Decoded = (Vec<Vec<u8>>, Vec<u8>, Vec<String>);
    let mut decoded = |files: &[(PathBuf, u8)]| -> Result<Decoded> {
        let mut images = Vec::with_capacity(files.len());
        let mut hashes = Vec::with_capacity(files.len());
        for (p, _) in files {
            let bytes = layerwise_core::fsread::read_capped(p, "image", MAX_FILE_BYTES)?;
            let (rgb, color) = decode(p, &bytes, size, &mut expect)?;
            any_color |= color;
            hashes.push(sha256_hex(&bytes));
            images.push(rgb);
        }
        Ok((images, files.iter().map(|f| f.1).collect(), hashes))
    };
    let (train_rgb, train_labels, train_list) = decoded(&train)?;
    let (test_rgb, test_labels, test_list) = decoded(&test)?;
    let (w, h) = expect.map_or((0, 0), |(w, h)| (w as usize, h as usize));
    let channels = if any_color { 3 } else { 1 };
    let chw = |rgb: Vec<Vec<u8>>| -> Vec<u8> {
        let plane = w * h;
        let mut out = Vec::with_capacity(rgb.len() * channels * plane);
        for img in rgb {
            for c in 0..channels {
                out.extend(img.chunks_exact(3).map(|px| px[c]));
            }
        }
        out
    };
    Ok(RawImages {
        name: name_of(root),
        image_shape: [channels, h, w],
        sources: vec![source(root, "train", &train, &train_list), source(root, "test", &test, &test_list)],
        train_images: chw(train_rgb),
        train_labels,
        test_images: chw(test_rgb),
        test_labels,
        classes,
    })
}
