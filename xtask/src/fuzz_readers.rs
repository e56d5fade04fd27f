//! The readers `cargo xtask fuzz` feeds ([`crate::fuzz`]): for each kind of file a user
//! can hand layerwise, a valid input made here and the way a stage reads (and uses) it,
//! so that "accepted but different" can be told from "refused".

use anyhow::{bail, Result};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// How a reader is fed: bytes in memory, or a file at a path.
pub(crate) type ReadFn = Box<dyn Fn(&Path, &[u8]) -> Result<()>>;

/// A reader under test: a valid input of its kind and how it is read.
pub(crate) struct Reader {
    pub(crate) name: &'static str,
    /// A valid input.
    pub(crate) valid: Vec<u8>,
    /// Write the mutated bytes to a file first (file name), or pass them in memory.
    pub(crate) file: Option<&'static str>,
    /// Deeply nested input of this format, for the nesting mutation.
    pub(crate) nest: fn(usize) -> Vec<u8>,
    /// Turn mutated bytes into what is written (the tarball's are gzipped after mutating
    /// the tar inside, so the tar headers themselves get mutated).
    pub(crate) encode: fn(Vec<u8>) -> Vec<u8>,
    /// Read (and use) an input, refusing it with an error.
    pub(crate) read: ReadFn,
}

fn identity(b: Vec<u8>) -> Vec<u8> {
    b
}

/// Give every tar header block (`ustar` magic) a correct checksum again, so that a
/// mutated header (a huge size, a strange name) reaches the reader instead of being
/// refused by the checksum alone; then gzip.
fn tar_gzip(mut b: Vec<u8>) -> Vec<u8> {
    for block in b.chunks_exact_mut(512) {
        if &block[257..262] == b"ustar" {
            block[148..156].copy_from_slice(b"        ");
            let sum: u32 = block.iter().map(|&x| x as u32).sum();
            let field = format!("{sum:06o}\0 ");
            block[148..156].copy_from_slice(&field.as_bytes()[..8]);
        }
    }
    gzip(b)
}

fn gzip(b: Vec<u8>) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = gz.write_all(&b);
    gz.finish().unwrap_or_default()
}

fn nest_json(n: usize) -> Vec<u8> {
    let mut v = b"{\"schema\": ".to_vec();
    v.extend(std::iter::repeat_n(b'[', n));
    v
}

fn nest_toml(n: usize) -> Vec<u8> {
    let mut v = b"name = 'x'\n[train]\nwidth = ".to_vec();
    v.extend(std::iter::repeat_n(b'[', n));
    v
}

fn nest_pickle(n: usize) -> Vec<u8> {
    let mut v = vec![0x80, 2];
    v.extend(std::iter::repeat_n(b']', n));
    v.extend(std::iter::repeat_n(b'a', n.saturating_sub(1)));
    v.push(b'.');
    v
}

fn nest_safetensors(n: usize) -> Vec<u8> {
    let mut header = b"{\"__metadata__\": {\"layerwise\": \"x\"}, \"a\": ".to_vec();
    header.extend(std::iter::repeat_n(b'[', n));
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend(header);
    v
}

fn nest_bytes(n: usize) -> Vec<u8> {
    vec![0xff; n]
}

fn ungzip(b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b).read_to_end(&mut out)?;
    Ok(out)
}

/// A mutated input that a reader used, and that changed what the stage wrote: the worst
/// outcome, worse than a panic (a silent wrong result).
#[derive(Debug)]
pub(crate) struct Different(String);

impl std::fmt::Display for Different {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Different {}

/// Train with the tiny settings of the fuzz fixture.
fn train_tiny(data: &Path, from: Option<&Path>, out: &Path) -> Result<layerwise_train::TrainOutcome> {
    layerwise_train::train(&layerwise_train::TrainOptions {
        overrides: Vec::new(),
        data: data.to_path_buf(),
        from: from.map(Path::to_path_buf),
        out: out.to_path_buf(),
        config: layerwise_core::config::TrainConfig { width: 4, epochs: 3, batch_size: 4, ..Default::default() },
        device: layerwise_nn::device::DeviceKind::Cpu,
        progress: layerwise_train::Progress::Quiet,
        regime: layerwise_core::config::Regime::Grow,
        depth: None,
    })
}

/// Compare what a run that read a mutated file wrote with the clean run's checkpoint.
fn same_checkpoint(out: &layerwise_train::TrainOutcome, clean: &[u8], what: &str) -> Result<()> {
    if std::fs::read(&out.checkpoint)? != clean {
        return Err(Different(format!("a mutated {what} was used and changed the checkpoint")).into());
    }
    Ok(())
}

/// A convolutional network (a stage, then a psi stage) trained with the fuzz fixture's tiny
/// settings: depth 1, or depth 2 grown from `from`.
fn train_tiny_cnn(data: &Path, from: Option<&Path>, out: &Path) -> Result<layerwise_train::TrainOutcome> {
    let stages = vec!["4".parse()?, "psi:4".parse()?];
    layerwise_train::train(&layerwise_train::TrainOptions {
        overrides: Vec::new(),
        data: data.to_path_buf(),
        from: from.map(Path::to_path_buf),
        out: out.to_path_buf(),
        config: layerwise_core::config::TrainConfig {
            epochs: 3,
            batch_size: 4,
            cnn: Some(layerwise_core::cnn::CnnSpec { stages, head_convs: 0 }),
            ..Default::default()
        },
        device: layerwise_nn::device::DeviceKind::Cpu,
        progress: layerwise_train::Progress::Quiet,
        regime: layerwise_core::config::Regime::Grow,
        depth: None,
    })
}

/// How the fixture trains a depth: the MLP's or the CNN's tiny settings.
type TrainTiny = fn(&Path, Option<&Path>, &Path) -> Result<layerwise_train::TrainOutcome>;

/// Depth 2 grown from `parent` into `out`, stopped right after its first epoch's state was
/// saved: that state's path (a real state, as a killed run leaves it).
fn interrupted_state(train: TrainTiny, data: &Path, parent: &Path, out: &Path) -> Result<PathBuf> {
    std::env::set_var(layerwise_train::STOP_AFTER_EPOCH_ENV, "1");
    let stopped = train(data, Some(parent), out);
    std::env::remove_var(layerwise_train::STOP_AFTER_EPOCH_ENV);
    if stopped.is_ok() {
        bail!("internal: the fuzz fixture's training did not stop after epoch 1");
    }
    Ok(out.join(layerwise_train::state::STATE_FILE))
}

/// A training state used where training finds it: the mutated file is the case folder's
/// state, and that folder is the output of depth 2's training, which must end with the
/// clean run's bytes (or refuse the state).
fn state_use(train: TrainTiny, data: &Path, parent: &Path, clean: Vec<u8>, what: &'static str) -> ReadFn {
    let (data, parent) = (data.to_path_buf(), parent.to_path_buf());
    Box::new(move |p, _| {
        let out = train(&data, Some(&parent), p.parent().unwrap_or(Path::new(".")))?;
        same_checkpoint(&out, &clean, what)?;
        if out.resumed {
            Ok(())
        } else {
            bail!("not used: trained from epoch 1")
        }
    })
}

/// A safetensors file's header (metadata values that are JSON parsed too) and its data:
/// what a file says, whatever its whitespace or number spelling.
fn said(bytes: &[u8]) -> Option<(serde_json::Value, &[u8])> {
    let n = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let header = bytes.get(8..8usize.checked_add(n)?)?;
    let mut v: serde_json::Value = serde_json::from_slice(header).ok()?;
    if let Some(meta) = v.get_mut("__metadata__").and_then(|m| m.as_object_mut()) {
        for value in meta.values_mut() {
            if let Some(parsed) = value.as_str().and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok()) {
                *value = parsed;
            }
        }
    }
    Some((v, &bytes[8 + n..]))
}

/// A convolutional checkpoint, used: loaded, evaluated on `images`, and written again from
/// what was loaded, which must say what the file says (a value the loader ignored, a
/// BatchNorm ε say, would be "accepted but different").
fn cnn_checkpoint_use(images: Vec<f32>, labels: Vec<u8>) -> ReadFn {
    Box::new(move |p, bytes| {
        let (network, meta) = layerwise_core::checkpoint::load_network(p)?;
        let layerwise_core::checkpoint::Network::Cnn(cnn) = network else { bail!("not a convolutional checkpoint") };
        let n = labels.len();
        if cnn.input_size() * n == images.len() {
            let sums = layerwise_nn::convnet::evaluate_cnn(&layerwise_nn::device::cpu(0), &cnn, &images, &labels);
            if sums.samples != n as u64 {
                return Err(Different(format!("evaluated {} of {n} images", sums.samples)).into());
            }
        }
        let again = layerwise_core::checkpoint::cnn_checkpoint_bytes(&cnn, &meta)?;
        if said(&again) != said(bytes) {
            return Err(Different("loaded, but what was loaded is not what the file says".into()).into());
        }
        Ok(())
    })
}

/// Valid files of every kind, made here: a synthetic release, a dataset, a checkpoint,
/// its frozen features, history and evaluation, a training state, a pipeline, the
/// convolutional checkpoint and state, an input contract; and how each is read.
pub(crate) fn readers(work: &Path) -> Result<Vec<Reader>> {
    use layerwise_core::features::FEATURES_FILE;
    use layerwise_core::run::MODEL_FILE;
    use layerwise_testkit::synthetic;
    let data = work.join("valid-dataset.safetensors");
    layerwise_testkit::prepared_dataset(&data, 12, 4, 4, 1)?;
    // Depth 1, and depth 2 grown from it, clean: what every use of a mutated state or
    // features file must reproduce, or refuse the file.
    let trained = train_tiny(&data, None, &work.join("valid-depth"))?;
    let parent = trained.checkpoint.clone();
    let clean = std::fs::read(train_tiny(&data, Some(&parent), &work.join("clean-depth-2"))?.checkpoint)?;
    // A real state: depth 2 stopped right after its first epoch's state was saved.
    let state_path = interrupted_state(train_tiny, &data, &parent, &work.join("interrupted-depth-2"))?;
    let eval_path = work.join("valid-depth/eval.json");
    layerwise_evaluate::evaluate(&layerwise_evaluate::EvaluateOptions {
        model: trained.checkpoint.clone(),
        data: data.clone(),
        split: layerwise_core::dataset::Split::Test,
        out: Some(eval_path.clone()),
        device: layerwise_nn::device::DeviceKind::Cpu,
    })?;
    // The convolutional fixture: depth 1, depth 2 grown from it clean, and depth 2 stopped
    // after its first epoch's state was saved.
    let cnn_parent = train_tiny_cnn(&data, None, &work.join("cnn-depth-1"))?.checkpoint;
    let cnn_clean = std::fs::read(train_tiny_cnn(&data, Some(&cnn_parent), &work.join("cnn-clean-2"))?.checkpoint)?;
    let cnn_state_path = interrupted_state(train_tiny_cnn, &data, &cnn_parent, &work.join("cnn-interrupted-2"))?;
    let cnn_state_use = state_use(train_tiny_cnn, &data, &cnn_parent, cnn_clean, "convolutional training state");
    let (test_images, test_labels) = {
        let ds = layerwise_core::dataset::Dataset::open(&data)?;
        let split = ds.split(layerwise_core::dataset::Split::Test)?;
        (split.images.to_vec(), split.labels.to_vec())
    };
    // Export, fed mutated MLP checkpoints.
    let export_use: ReadFn = Box::new(|p, _| {
        let out = p.with_extension("onnx");
        layerwise_export::export(&layerwise_export::ExportOptions { model: p.to_path_buf(), out, data: None })
            .map(|_| ())
    });
    // The input contract as a checkpoint carries it, used by predict (a PNG through it,
    // resized to its shape) and by export (a graph of its size, when small enough to build).
    let standardized = layerwise_core::dataset::Normalization {
        kind: layerwise_core::config::Normalize::Standardize,
        mean: vec![0.49, 0.48, 0.45],
        std: vec![0.25, 0.24, 0.26],
    };
    let classes: Vec<String> = layerwise_testkit::CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect();
    let contract_valid =
        serde_json::to_vec(&layerwise_core::input::InputContract::new([3, 32, 32], &standardized, classes))?;
    let mlp_state_use = state_use(train_tiny, &data, &parent, clean.clone(), "training state");
    // The features file is used where the next depth finds it: beside its parent checkpoint.
    let features_use: ReadFn = {
        let (data, parent, clean) = (data.clone(), parent.clone(), clean.clone());
        Box::new(move |p, _| {
            let dir = p.parent().unwrap_or(Path::new("."));
            let model = dir.join(MODEL_FILE);
            if !model.exists() {
                std::fs::copy(&parent, &model)?;
            }
            let out = train_tiny(&data, Some(&model), &dir.join("out"))?;
            same_checkpoint(&out, &clean, "features file")?;
            if out.prefix_rows == 0 {
                Ok(())
            } else {
                bail!("not used: computed from the images")
            }
        })
    };
    let binary_tar = ungzip(&synthetic::tarball_bytes(false, 2)?)?;
    let python_tar = ungzip(&synthetic::tarball_bytes(true, 2)?)?;
    let tar_read: ReadFn = Box::new(|p, _| {
        let (kind, path) = layerwise_prepare::source::detect(p)?;
        layerwise_prepare::source::read(kind, &path).map(|_| ())
    });
    let python_tar_read: ReadFn = Box::new(|p, _| {
        let (kind, path) = layerwise_prepare::source::detect(p)?;
        layerwise_prepare::source::read(kind, &path).map(|_| ())
    });
    // The other dataset forms: an IDX file of images (gzipped, beside valid label and test
    // files), CIFAR-100 records, one image of a folder of images per class (beside a valid
    // one of another class), and an image given to predict.
    let (digits, labels) = layerwise_testkit::formats::digits(3, 1);
    let idx_valid = layerwise_testkit::formats::idx_images(&digits, 3, 28, 28);
    let idx_gz = {
        use std::io::Write as _;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&idx_valid)?;
        e.finish()?
    };
    let idx_others = [
        ("train-labels-idx1-ubyte", layerwise_testkit::formats::idx_labels(&labels)),
        ("t10k-images-idx3-ubyte", layerwise_testkit::formats::idx_images(&digits, 3, 28, 28)),
        ("t10k-labels-idx1-ubyte", layerwise_testkit::formats::idx_labels(&labels)),
    ];
    let idx_read: ReadFn = Box::new(move |p, _| {
        let dir = p.parent().unwrap_or(Path::new("."));
        for (name, bytes) in &idx_others {
            if !dir.join(name).exists() {
                std::fs::write(dir.join(name), bytes)?;
            }
        }
        layerwise_prepare::idx::read(dir).map(|_| ())
    });
    let (imgs, lbls) = synthetic::images(3, 1);
    let png = layerwise_testkit::formats::png(&imgs[..3072], 32)?;
    let other_png = layerwise_testkit::formats::png(&imgs[3072..6144], 32)?;
    let folder_read: ReadFn = Box::new(move |p, _| {
        // p is ROOT/cat/0.png, beside a valid ROOT/cat/1.png (a class needs two images);
        // ROOT/dog/ holds valid images of another class.
        let root = p.parent().and_then(Path::parent).unwrap_or(Path::new("."));
        let dog = root.join("dog");
        if !dog.join("0.png").exists() {
            std::fs::create_dir_all(&dog)?;
            std::fs::write(dog.join("0.png"), &other_png)?;
            std::fs::write(dog.join("1.png"), &other_png)?;
            std::fs::write(root.join("cat").join("1.png"), &other_png)?;
        }
        layerwise_prepare::folder::read(root, None).map(|_| ())
    });
    let classes: Vec<String> = layerwise_testkit::CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect();
    let unit = layerwise_core::dataset::Normalization::unit(3);
    let contract = layerwise_core::input::InputContract::new([3, 32, 32], &unit, classes);
    let predict_read: ReadFn = Box::new(move |p, _| layerwise_predict::image_input(p, &contract, true).map(|_| ()));
    let contract_use: ReadFn = {
        let png_path = work.join("contract-image.png");
        std::fs::write(&png_path, &png)?;
        Box::new(move |_, b| {
            let c: layerwise_core::input::InputContract = serde_json::from_slice(b)?;
            c.validate()?;
            let d = layerwise_predict::image_input(&png_path, &c, true)?;
            if d.input.len() != c.input_size() {
                return Err(Different(format!("{} inputs for a contract of {}", d.input.len(), c.input_size())).into());
            }
            if c.input_size() <= 1 << 16 {
                let head = layerwise_nn::glorot_dense(c.input_size(), c.classes.len().max(1), 1);
                layerwise_export::model_proto(&[], &head, &c, "fuzz")?;
            }
            Ok(())
        })
    };
    let c100 = layerwise_testkit::formats::cifar100_records(&imgs, &lbls);
    Ok(vec![
        Reader {
            name: "idx-gzip",
            valid: idx_gz,
            file: Some("train-images-idx3-ubyte.gz"),
            nest: nest_bytes,
            encode: identity,
            read: idx_read,
        },
        Reader {
            name: "idx-images",
            valid: idx_valid,
            file: None,
            nest: nest_bytes,
            encode: identity,
            read: Box::new(|_, b| layerwise_prepare::idx::parse(b, 3, "idx").map(|_| ())),
        },
        Reader {
            name: "cifar100-binary",
            valid: c100,
            file: None,
            nest: nest_bytes,
            encode: identity,
            read: Box::new(|_, b| {
                layerwise_prepare::cifar100::parse_binary(b, layerwise_core::config::Labels::Fine, "c100").map(|_| ())
            }),
        },
        Reader {
            name: "image-folder",
            valid: png.clone(),
            file: Some("cat/0.png"),
            nest: nest_bytes,
            encode: identity,
            read: folder_read,
        },
        Reader {
            name: "predict-image",
            valid: png,
            file: Some("image.png"),
            nest: nest_bytes,
            encode: identity,
            read: predict_read,
        },
        Reader {
            name: "cifar-binary",
            valid: synthetic::binary_batch(3, 1),
            file: None,
            nest: nest_bytes,
            encode: identity,
            read: Box::new(|_, b| layerwise_prepare::source::parse_binary(b, "batch").map(|_| ())),
        },
        Reader {
            name: "cifar-pickle",
            valid: synthetic::python_batch(3, 1),
            file: None,
            nest: nest_pickle,
            encode: identity,
            read: Box::new(|_, b| layerwise_prepare::source::parse_pickle(b, "batch").map(|_| ())),
        },
        Reader {
            name: "tarball-binary",
            valid: binary_tar,
            file: Some("cifar-10-binary.tar.gz"),
            nest: nest_bytes,
            encode: tar_gzip,
            read: tar_read,
        },
        Reader {
            name: "tarball-python",
            valid: python_tar,
            file: Some("cifar-10-python.tar.gz"),
            nest: nest_pickle,
            encode: tar_gzip,
            read: python_tar_read,
        },
        Reader {
            name: "dataset",
            valid: std::fs::read(&data)?,
            file: Some("d.safetensors"),
            nest: nest_safetensors,
            encode: identity,
            read: Box::new(|p, _| {
                let ds = layerwise_core::dataset::Dataset::open(p)?;
                ds.verify()
            }),
        },
        Reader {
            name: "checkpoint",
            valid: std::fs::read(&trained.checkpoint)?,
            file: Some("m.safetensors"),
            nest: nest_safetensors,
            encode: identity,
            read: Box::new(|p, _| layerwise_core::checkpoint::load_checkpoint(p).map(|_| ())),
        },
        Reader {
            name: "features",
            valid: std::fs::read(work.join("valid-depth").join(FEATURES_FILE))?,
            file: Some(FEATURES_FILE),
            nest: nest_safetensors,
            encode: identity,
            read: features_use,
        },
        Reader {
            name: "train-json",
            valid: std::fs::read(work.join("valid-depth/train.json"))?,
            file: Some("train.json"),
            nest: nest_json,
            encode: identity,
            read: Box::new(|p, _| layerwise_core::metrics::TrainHistory::read(p).map(|_| ())),
        },
        Reader {
            name: "eval-json",
            valid: std::fs::read(&eval_path)?,
            file: Some("eval.json"),
            nest: nest_json,
            encode: identity,
            read: Box::new(|p, _| layerwise_core::metrics::Evaluation::read(p).map(|_| ())),
        },
        Reader {
            name: "pipeline-toml",
            valid: std::fs::read(crate::repo_root().join("pipelines/recommended.toml"))?,
            file: None,
            nest: nest_toml,
            encode: identity,
            read: Box::new(|_, b| {
                let text = std::str::from_utf8(b)?;
                layerwise_core::pipeline::Pipeline::from_toml(text, "fuzz.toml").map(|_| ())
            }),
        },
        Reader {
            name: "train-state",
            valid: std::fs::read(&state_path)?,
            file: Some(layerwise_train::state::STATE_FILE),
            nest: nest_bytes,
            encode: identity,
            read: mlp_state_use,
        },
        Reader {
            name: "cnn-checkpoint",
            valid: std::fs::read(&cnn_parent)?,
            file: Some("m.safetensors"),
            nest: nest_safetensors,
            encode: identity,
            read: cnn_checkpoint_use(test_images, test_labels),
        },
        Reader {
            name: "cnn-train-state",
            valid: std::fs::read(&cnn_state_path)?,
            file: Some(layerwise_train::state::STATE_FILE),
            nest: nest_bytes,
            encode: identity,
            read: cnn_state_use,
        },
        Reader {
            name: "input-contract",
            valid: contract_valid,
            file: None,
            nest: nest_json,
            encode: identity,
            read: contract_use,
        },
        Reader {
            name: "export",
            valid: std::fs::read(&trained.checkpoint)?,
            file: Some("m.safetensors"),
            nest: nest_safetensors,
            encode: identity,
            read: export_use,
        },
        Reader {
            name: "link-frame",
            valid: link_frame().encode()?,
            file: None,
            nest: nest_bytes,
            encode: identity,
            read: Box::new(|_, bytes| {
                // A receiver expecting this link and any batch: what it accepts is finite
                // where the valid frame was, and of the expected size.
                let expected = link_expected();
                let f = layerwise_core::link::Frame::decode(bytes, &expected)?;
                let end = f.kind == layerwise_core::link::FrameKind::End;
                if f.values.len() != f.labels.len() * 12 || f.labels.is_empty() != end {
                    anyhow::bail!("internal: a frame of the wrong size was accepted");
                }
                Ok(())
            }),
        },
    ])
}

/// A valid frame of link 1 (two examples of shape 2 × 2 × 3), for the link reader.
fn link_frame() -> layerwise_core::link::Frame {
    layerwise_core::link::Frame {
        kind: layerwise_core::link::FrameKind::Train,
        link: 1,
        batch: 3,
        shape: vec![2, 2, 3],
        values: (0..24).map(|i| i as f32 / 8.0).collect(),
        labels: vec![1, 7],
    }
}

/// What a receiver on link 1 expects.
fn link_expected() -> layerwise_core::link::Expected {
    layerwise_core::link::Expected { link: 1, next: None, shape: vec![2, 2, 3], max_rows: 256 }
}
