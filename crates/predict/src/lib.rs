//! The predict stage: a trained checkpoint on the user's own images.
//!
//! # Brief overview
//! - [`image_input`]: decode one file (PNG, JPEG, BMP, WebP), convert it to the model's
//!   channels and size (saying so), and lay it out as the checkpoint's input contract says
//!   ([`layerwise_core::input`]).
//! - [`predict`]: every image of the files and folders given, in batches, through the same
//!   host kernels `layerwise-evaluate` uses; the top-k classes with their probabilities.
//! - [`cli`]: `layerwise-predict --model M IMAGE|FOLDER… [--top-k K] [--format table|json|csv]`.
//!
//! A file that cannot be read is an error of its own, and the others are still classified.
#![deny(missing_docs)]

pub mod cli;
mod decode;

pub use decode::{image_input, Decoded, MAX_IMAGE_BYTES, MAX_SIDE};

use anyhow::{bail, Result};
use layerwise_core::checkpoint::{load_network, CheckpointMeta, Network};
use layerwise_core::input::InputContract;
use std::path::{Path, PathBuf};

/// Image files a folder contributes (by extension, case-insensitive).
pub const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "bmp", "webp"];

/// One class of a prediction.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Ranked {
    /// Output index.
    pub index: usize,
    /// Class name.
    pub class: String,
    /// Softmax probability.
    pub probability: f64,
}

/// What the model says of one image.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Prediction {
    /// The image file.
    pub path: PathBuf,
    /// The `top_k` most probable classes, best first (ties: the lower index first).
    pub top: Vec<Ranked>,
}

/// A model ready to predict: its layers and its input contract.
pub struct Model {
    /// The network (an MLP or a convolutional network).
    pub network: Network,
    /// Its checkpoint's metadata.
    pub meta: CheckpointMeta,
    /// How it wants its input.
    pub contract: InputContract,
}

impl Model {
    /// Load a checkpoint; its input contract comes from the checkpoint, or (for one
    /// written before checkpoints recorded it) from `data`, the dataset it was trained on.
    pub fn load(path: &Path, data: Option<&Path>) -> Result<Model> {
        let (network, meta) = load_network(path)?;
        let contract = meta.input_contract(path, data)?;
        Ok(Model { network, meta, contract })
    }

    /// Class probabilities of `rows` input rows (`rows × input_size`), through the host
    /// kernels `layerwise-evaluate` uses, in chunks.
    pub fn probabilities(&self, inputs: &[f32], rows: usize) -> Vec<Vec<f64>> {
        let mut out = Vec::with_capacity(rows);
        match &self.network {
            Network::Mlp(mlp) => {
                let classes = mlp.head.outputs;
                layerwise_nn::host::forward_chunks(
                    &mlp.hidden,
                    Some(&mlp.head),
                    inputs,
                    rows,
                    layerwise_nn::CHUNK,
                    |_, logits| out.extend(logits.chunks_exact(classes).map(softmax)),
                );
            }
            Network::Cnn(cnn) => {
                let classes = cnn.head.linear.outputs;
                layerwise_nn::convnet::ConvNet::from_cnn(cnn)
                    .logits_chunks(inputs, rows, |_, logits| out.extend(logits.chunks_exact(classes).map(softmax)));
            }
        }
        out
    }
}

/// Softmax in f64 (max subtracted first).
pub fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let e: Vec<f64> = logits.iter().map(|&v| (v as f64 - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|v| v / sum).collect()
}

/// The `k` most probable classes, best first; ties go to the lower index.
pub fn top_k(probabilities: &[f64], classes: &[String], k: usize) -> Vec<Ranked> {
    let mut order: Vec<usize> = (0..probabilities.len()).collect();
    order.sort_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(k)
        .map(|i| Ranked { index: i, class: classes.get(i).cloned().unwrap_or_default(), probability: probabilities[i] })
        .collect()
}

/// A file of the inputs, or a path that could not be read with why.
pub type Found = std::result::Result<PathBuf, (PathBuf, anyhow::Error)>;

/// The image files of `inputs`: a file as given, a folder's image files (by extension,
/// recursively, sorted; links to files are taken, links to folders inside a folder are
/// skipped with a note, so a link back up cannot loop). A path that is neither is an
/// error of its own.
pub fn collect_files(inputs: &[PathBuf]) -> Vec<Found> {
    fn walk(dir: &Path, out: &mut Vec<Found>) {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                let e = anyhow::Error::from(e).context(format!("cannot read folder {}", dir.display()));
                return out.push(Err((dir.to_path_buf(), e)));
            }
        };
        let mut paths: Vec<(PathBuf, bool)> =
            entries.flatten().map(|e| (e.path(), e.file_type().is_ok_and(|t| t.is_symlink()))).collect();
        paths.sort();
        for (p, link) in paths {
            if link && p.is_dir() {
                // A link `up -> ..` would walk the tree again and again.
                eprintln!(
                    "layerwise-predict: note: skipped {}: a link to a folder inside a folder is not followed (name it \
                     on the command line to include it)",
                    p.display()
                );
            } else if p.is_dir() {
                walk(&p, out);
            } else if p
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
            {
                out.push(Ok(p));
            }
        }
    }
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            walk(p, &mut out);
        } else if p.exists() {
            out.push(Ok(p.clone()));
        } else {
            out.push(Err((p.clone(), anyhow::anyhow!("{} does not exist", p.display()))));
        }
    }
    out
}

/// How predictions are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A header row, then one line per image: the path, then `class (probability)` best first.
    Table,
    /// One JSON object per line and image: `{"path", "top": [{"index", "class", "probability"}]}`,
    /// or `{"path", "error"}` for a file that could not be classified.
    Json,
    /// `path,rank,index,class,probability`, a row per class shown.
    Csv,
}

/// Render one prediction in `format` (no trailing newline).
pub fn render(p: &Prediction, format: Format) -> Result<String> {
    Ok(match format {
        Format::Table => {
            let top: Vec<String> = p.top.iter().map(|r| format!("{} ({:.4})", r.class, r.probability)).collect();
            format!("{}\t{}", p.path.display(), top.join("  "))
        }
        Format::Json => serde_json::to_string(p)?,
        Format::Csv => {
            let quote = |s: &str| {
                if s.contains([',', '"', '\n']) {
                    format!("\"{}\"", s.replace('"', "\"\""))
                } else {
                    s.to_string()
                }
            };
            let path = quote(&p.path.to_string_lossy());
            p.top
                .iter()
                .enumerate()
                .map(|(i, r)| format!("{path},{},{},{},{}", i + 1, r.index, quote(&r.class), r.probability))
                .collect::<Vec<_>>()
                .join("\n")
        }
    })
}

/// The first line of `format`'s output, if it has one: the table's and the CSV's column names.
pub fn header(format: Format) -> Option<&'static str> {
    match format {
        Format::Table => Some("path\ttop classes (probability), best first"),
        Format::Csv => Some("path,rank,index,class,probability"),
        Format::Json => None,
    }
}

/// A file that could not be classified, in `format`, where the format has a record for it:
/// JSON's `{"path": …, "error": …}` (the table and CSV say it on stderr only).
pub fn render_error(path: &Path, error: &anyhow::Error, format: Format) -> Option<String> {
    (format == Format::Json)
        .then(|| serde_json::json!({ "path": path.to_string_lossy(), "error": format!("{error:#}") }).to_string())
}

/// What to predict.
#[derive(Debug, Clone)]
pub struct PredictOptions {
    /// The checkpoint.
    pub model: PathBuf,
    /// Image files and folders.
    pub inputs: Vec<PathBuf>,
    /// Classes shown per image.
    pub top_k: usize,
    /// Resize images of another size (else refuse them).
    pub resize: bool,
    /// The dataset the model was trained on, for a checkpoint without an input contract.
    pub data: Option<PathBuf>,
}

/// What [`predict`] hands on per file: the prediction and its notes, or the file and why
/// it could not be classified.
pub type Outcome = std::result::Result<(Prediction, Vec<String>), (PathBuf, anyhow::Error)>;

/// Images per batch through the network, at most.
pub const BATCH: usize = 256;
/// Input values per batch, at most (64 Mi floats, 256 MB): a model of large images takes
/// fewer images a batch, down to one (an image is at most
/// [`layerwise_core::limits::MAX_IMAGE_VALUES`], the contract's check).
pub const BATCH_VALUES: usize = 1 << 26;

/// Predict every image of `opts.inputs`, handing each prediction (or each file's error) to
/// `each` in order, with the notes said about it (conversions, resizing). Returns how many
/// files failed.
pub fn predict(opts: &PredictOptions, mut each: impl FnMut(Outcome) -> Result<()>) -> Result<usize> {
    if opts.top_k == 0 {
        bail!("--top-k is 0: show at least one class");
    }
    let model = Model::load(&opts.model, opts.data.as_deref())?;
    let k = opts.top_k.min(model.contract.classes.len());
    let files = collect_files(&opts.inputs);
    if files.is_empty() {
        bail!("no image files found in {:?} (extensions: {})", opts.inputs, IMAGE_EXTENSIONS.join(", "));
    }
    let mut failed = 0;
    let per_batch = (BATCH_VALUES / model.contract.input_size().max(1)).clamp(1, BATCH);
    let mut files = files.into_iter().peekable();
    while files.peek().is_some() {
        // Up to `per_batch` files: each decoded (or its error handed on at once), then one pass.
        let (mut rows, mut batch) = (Vec::new(), Vec::new());
        for file in files.by_ref().take(per_batch) {
            let decoded = file.and_then(|path| match image_input(&path, &model.contract, opts.resize) {
                Ok(d) => Ok((path, d)),
                Err(e) => Err((path, e)),
            });
            match decoded {
                Ok((path, d)) => {
                    rows.extend(d.input);
                    batch.push((path, d.notes));
                }
                Err(e) => {
                    failed += 1;
                    each(Err(e))?;
                }
            }
        }
        let probs = model.probabilities(&rows, batch.len());
        for ((path, notes), p) in batch.into_iter().zip(probs) {
            each(Ok((Prediction { path, top: top_k(&p, &model.contract.classes, k) }, notes)))?;
        }
    }
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use crate::collect_files;
    use crate::header;
    use crate::render_error;
    use crate::Format;
    use anyhow::Result;
    use std::path::Path;
    use std::path::PathBuf;

    #[test]
    fn an_unreadable_file_has_a_json_record_and_the_table_a_header() {
        let e = anyhow::anyhow!("x.png: not an image layerwise reads");
        let line = render_error(Path::new("photos/x.png"), &e, Format::Json).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        assert_eq!(v["path"], "photos/x.png");
        assert_eq!(v["error"], "x.png: not an image layerwise reads");
        assert!(render_error(Path::new("x"), &e, Format::Table).is_none());
        assert_eq!(header(Format::Table), Some("path\ttop classes (probability), best first"));
        assert_eq!(header(Format::Json), None);
    }

    #[test]
    fn links_to_folders_inside_a_folder_are_not_followed_so_a_loop_ends() -> Result<()> {
        // Two `up -> ..` links made the walk exponential: past 180 s, each image 41 times.
        let dir = tempfile::tempdir()?;
        let inner = dir.path().join("a").join("b");
        std::fs::create_dir_all(&inner)?;
        std::fs::write(inner.join("x.png"), b"not decoded here")?;
        std::fs::write(dir.path().join("y.png"), b"")?;
        std::os::unix::fs::symlink("..", inner.join("up"))?;
        std::os::unix::fs::symlink("../..", inner.join("up2"))?;
        std::os::unix::fs::symlink(inner.join("x.png"), dir.path().join("link.png"))?;
        let found: Vec<PathBuf> = collect_files(&[dir.path().to_path_buf()]).into_iter().flatten().collect();
        let names: Vec<String> =
            found.iter().map(|p| p.strip_prefix(dir.path()).unwrap_or(p).display().to_string()).collect();
        assert_eq!(names, ["a/b/x.png", "link.png", "y.png"]);
        // A link named on the command line is followed.
        let named = collect_files(&[inner.join("up")]);
        assert_eq!(named.len(), 1, "{named:?}");
        Ok(())
    }
}
