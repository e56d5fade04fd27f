//! `layerwise-predict` against `layerwise-evaluate`: test-set images written out as PNG
//! files are classified as the evaluation classified the same images from the dataset
//! (real CIFAR-10 when `CIFAR10_DIR` is set, else a synthetic release), and bad files are
//! errors of their own while the rest are classified.
#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use layerwise_core::metrics::Evaluation;
use layerwise_predict::{predict, Format, PredictOptions, Prediction};
use std::path::PathBuf;
use xtask::plan::Program;

mod common;

const IMAGES: usize = 500;

struct Trained {
    _dir: tempfile::TempDir,
    root: PathBuf,
    model: PathBuf,
    labels: Vec<u8>,
    eval: Evaluation,
}

/// A depth-1 model on a dataset of `IMAGES` test images (standardized, so the contract's
/// statistics matter), its evaluation, and the same test images as PNG files.
fn trained() -> Trained {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let source = common::source_or_synthetic(&root);
    let (data, model) = common::small_model(&root, &source, IMAGES, 1);
    let out = model.parent().unwrap().to_path_buf();
    let eval_path = out.join("eval.json");
    common::step(Program::Evaluate, &[&"--model", &model, &"--data", &data, &"--split", &"test", &"--out", &eval_path]);
    let pngs = root.join("pngs");
    std::fs::create_dir_all(&pngs).unwrap();
    let mut labels = Vec::new();
    for (i, (label, chw)) in common::test_images(&source, IMAGES).into_iter().enumerate() {
        common::write_png(&pngs.join(format!("{i:04}.png")), &chw);
        labels.push(label);
    }
    Trained { _dir: dir, root, model, labels, eval: Evaluation::read(&eval_path).unwrap() }
}

type Predicted = Vec<(Prediction, Vec<String>)>;

fn run(opts: &PredictOptions) -> (Predicted, Vec<String>, usize) {
    let (mut ok, mut errors) = (Vec::new(), Vec::new());
    let failed = predict(opts, |r| {
        match r {
            Ok(p) => ok.push(p),
            Err((_, e)) => errors.push(format!("{e:#}")),
        }
        Ok(())
    })
    .unwrap();
    (ok, errors, failed)
}

/// PNG's CRC-32 (so a header edited by hand is still a valid chunk).
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn options(t: &Trained, inputs: Vec<PathBuf>) -> PredictOptions {
    PredictOptions { model: t.model.clone(), inputs, top_k: 3, resize: true, data: None }
}

#[test]
fn predictions_on_png_files_agree_with_the_evaluation() {
    let t = trained();
    let (preds, errors, failed) = run(&options(&t, vec![t.root.join("pngs")]));
    assert_eq!((errors.len(), failed), (0, 0), "{errors:?}");
    assert_eq!(preds.len(), IMAGES);
    // The same confusion matrix as layerwise-evaluate's over the same images.
    let classes = t.eval.classes.len();
    let mut confusion = vec![vec![0u64; classes]; classes];
    for ((p, notes), &label) in preds.iter().zip(&t.labels) {
        assert!(notes.is_empty(), "{notes:?}");
        confusion[label as usize][p.top[0].index] += 1;
        let sum: f64 = p.top.iter().map(|r| r.probability).sum();
        assert!(p.top.len() == 3 && sum <= 1.0 + 1e-9 && p.top[0].probability >= p.top[1].probability);
    }
    assert_eq!(confusion, t.eval.confusion, "predict's classes are evaluate's");
    // The input rows predict builds from the PNGs are the dataset's rows, bit for bit.
    let ds = layerwise_core::dataset::Dataset::open(&t.root.join("data.safetensors")).unwrap();
    let test = ds.split(layerwise_core::dataset::Split::Test).unwrap();
    let model = layerwise_predict::Model::load(&t.model, None).unwrap();
    for i in [0, 1, 77, IMAGES - 1] {
        let d =
            layerwise_predict::image_input(&t.root.join(format!("pngs/{i:04}.png")), &model.contract, false).unwrap();
        assert!(d.input == test.images[i * 3072..(i + 1) * 3072], "image {i}");
    }
    // JSON lines: one object per image, best first.
    let line = layerwise_predict::render(&preds[0].0, Format::Json).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert!(v["path"].as_str().unwrap().ends_with("0000.png") && v["top"].as_array().unwrap().len() == 3, "{line}");
    assert_eq!(v["top"][0]["class"].as_str().unwrap(), t.eval.classes[preds[0].0.top[0].index]);
}

#[test]
fn bad_files_are_named_and_the_rest_are_classified() {
    let t = trained();
    let bad = t.root.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    let good = t.root.join("pngs/0000.png");
    std::fs::copy(&good, bad.join("a-good.png")).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(bad.join("b-truncated.png"), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(bad.join("c-text.png"), b"not an image at all").unwrap();
    // A PNG whose header claims 100,000 x 100,000 pixels.
    let mut huge = bytes.clone();
    huge[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    huge[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32(&huge[12..29]);
    huge[29..33].copy_from_slice(&crc.to_be_bytes());
    std::fs::write(bad.join("d-huge.png"), &huge).unwrap();
    // Grayscale and 64x64: converted and resized, saying so.
    image::GrayImage::from_pixel(32, 32, image::Luma([128])).save(bad.join("e-gray.png")).unwrap();
    image::RgbImage::from_pixel(64, 64, image::Rgb([10, 200, 30])).save(bad.join("f-big.jpg")).unwrap();
    let (preds, errors, failed) = run(&options(&t, vec![bad.clone(), t.root.join("missing.png")]));
    assert_eq!(failed, 4, "{errors:?}");
    let names: Vec<String> =
        preds.iter().map(|(p, _)| p.path.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["a-good.png", "e-gray.png", "f-big.jpg"]);
    let has = |needle: &str, what: &str| {
        assert!(errors.iter().any(|e| e.contains(needle) && e.contains(what)), "{needle} {what}: {errors:#?}")
    };
    has("b-truncated.png", "the PNG is cut short");
    has("c-text.png", "not an image");
    has("d-huge.png", "larger than layerwise decodes");
    has("missing.png", "does not exist");
    assert!(preds[1].1.iter().any(|n| n.contains("converted to RGB")), "{:?}", preds[1].1);
    assert!(preds[2].1.iter().any(|n| n.contains("resized from 64×64 to 32×32")), "{:?}", preds[2].1);
    // --no-resize refuses the 64x64 image instead.
    let mut strict = options(&t, vec![bad.join("f-big.jpg")]);
    strict.resize = false;
    let (_, errors, failed) = run(&strict);
    assert!(failed == 1 && errors[0].contains("drop --no-resize"), "{errors:?}");
}

#[test]
fn evaluation_refuses_data_scaled_otherwise_than_the_model_wants() {
    let t = trained();
    let source = common::source_or_synthetic(&t.root.join("src"));
    let unit = t.root.join("unit.safetensors");
    common::step(
        Program::Prepare,
        &[
            &"--source",
            &source,
            &"--out",
            &unit,
            &"--limit-train",
            &"2000",
            &"--limit-test",
            &"500",
            &"--artifacts",
            &t.root,
        ],
    );
    let out = t.root.join("eval-unit.json");
    let args = [
        "layerwise-evaluate",
        "--model",
        &t.model.to_string_lossy(),
        "--data",
        &unit.to_string_lossy(),
        "--out",
        &out.to_string_lossy(),
    ];
    let err = format!("{:#}", layerwise_evaluate::cli::run(args.map(String::from)).unwrap_err());
    assert!(err.contains("normalization standardize") && err.contains("the dataset has unit"), "{err}");
}
