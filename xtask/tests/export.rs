//! `layerwise-export --format onnx` run in onnxruntime, and the checkpoint run in numpy
//! as docs/guide.md shows it, both against `layerwise-predict`'s probabilities (within 1e-5), on
//! a two-layer model of a standardized dataset. Needs Python 3 with numpy, onnxruntime
//! and safetensors: installed with pip when missing; skipped, saying so, only where there
//! is no Python.
#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use std::process::Command;
use xtask::plan::Program;

mod common;

const IMAGES: usize = 64;

/// Whether `python3` has the modules, installing them with pip if not. None: no Python.
fn python() -> Option<()> {
    let has = || {
        Command::new("python3")
            .args(["-c", "import numpy, onnxruntime, safetensors"])
            .output()
            .map(|o| o.status.success())
    };
    match has() {
        Err(_) => {
            eprintln!("skipped: no python3 on PATH (the ONNX check runs the model in Python's onnxruntime)");
            return None;
        }
        Ok(true) => return Some(()),
        Ok(false) => {}
    }
    let pip = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "numpy", "onnxruntime", "safetensors"])
        .output()
        .unwrap();
    assert!(
        has().unwrap_or(false),
        "python3 has no numpy/onnxruntime/safetensors and pip could not install them: {}",
        String::from_utf8_lossy(&pip.stderr)
    );
    Some(())
}

/// Export `model`, classify `IMAGES` test images written as PNG files with
/// `layerwise-predict` (every class's probability), and run the ONNX graph (and, for an MLP,
/// the guide's numpy lines) on the same pixels in Python: within 1e-5 of predict.
fn onnx_agrees_with_predict(root: &std::path::Path, source: &std::path::Path, model: &std::path::Path) {
    let pngs = root.join("pngs");
    std::fs::create_dir_all(&pngs).unwrap();
    for (i, (_, chw)) in common::test_images(source, IMAGES).into_iter().enumerate() {
        common::write_png(&pngs.join(format!("{i:03}.png")), &chw);
    }
    let onnx = model.with_extension("onnx");
    common::step(Program::Export, &[&"--model", &model, &"--format", &"onnx", &"--out", &onnx]);
    // What the file holds, read back: opset, input and output, the contract.
    let m = layerwise_export::read(&onnx).unwrap();
    let g = m.graph.as_ref().unwrap();
    assert_eq!(
        (m.opset_import[0].version, g.input[0].name.as_str(), g.output[0].name.as_str()),
        (17, "pixels", "probabilities")
    );
    assert!(m.metadata_props.iter().any(|p| p.key == "layerwise.input" && p.value.contains("standardize")));
    // predict's probabilities (every class) and the pixels it classified.
    let classes = 10;
    let opts = layerwise_predict::PredictOptions {
        model: model.to_path_buf(),
        inputs: vec![pngs.clone()],
        top_k: classes,
        resize: false,
        data: None,
    };
    let (mut expected, mut pixels) = (Vec::new(), Vec::new());
    let contract = layerwise_predict::Model::load(model, None).unwrap().contract;
    layerwise_predict::predict(&opts, |r| {
        let (p, _) = r.map_err(|(_, e)| e)?;
        let mut row = vec![0f64; classes];
        for r in &p.top {
            row[r.index] = r.probability;
        }
        expected.extend(row);
        let d = layerwise_predict::image_input(&p.path, &contract, false)?;
        pixels.extend(d.pixels.iter().map(|&b| b as f32));
        Ok(())
    })
    .unwrap();
    let Some(()) = python() else { return };
    let (px, ex) = (root.join("pixels.f32"), root.join("expected.f64"));
    std::fs::write(&px, pixels.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    std::fs::write(&ex, expected.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    let script = xtask::repo_root().join("scripts/onnx-check.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(model)
        .args([&onnx, &px, &ex])
        .arg(IMAGES.to_string())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{text}");
    assert!(out.status.success(), "{text}");
    assert!(text.contains("same top class for every image: True"), "{text}");
}

#[test]
fn the_onnx_file_and_the_numpy_lines_give_predicts_probabilities() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let source = common::source_or_synthetic(root);
    let (_, model) = common::small_model(root, &source, IMAGES, 2);
    onnx_agrees_with_predict(root, &source, &model);
}

/// A convolutional network of `stages` with `head_convs` conv blocks in its head, grown
/// stage by stage (1 epoch each) on `data`.
fn small_cnn(root: &std::path::Path, data: &std::path::Path, stages: &str, head_convs: &str) -> std::path::PathBuf {
    let mut parent: Option<std::path::PathBuf> = None;
    for d in 1..=stages.split(',').count() {
        let out = root.join(format!("cnn-{d:02}"));
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
            &"--data",
            &data,
            &"--out",
            &out,
            &"--epochs",
            &"1",
            &"--stages",
            &stages,
            &"--optimizer",
            &"sgd",
            &"--lr",
            &"0.05",
            &"--batch-size",
            &"100",
            &"--head-convs",
            &head_convs,
        ];
        if let Some(p) = &parent {
            args.push(&"--from");
            args.push(p);
        }
        common::step(Program::Train, &args);
        parent = Some(out.join("model.safetensors"));
    }
    parent.unwrap()
}

#[test]
fn convolutional_networks_export_to_onnx_that_gives_predicts_probabilities() {
    // cnn-smoke's stages (max-pooling, then psi in PixelUnshuffle's channel order), and a
    // max-pooling network with a conv block in its head: both against predict, within 1e-5.
    for (name, stages, head_convs) in [("psi", "8,maxpool:16,psi:16", "0"), ("maxpool", "8,maxpool:8", "1")] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let source = common::source_or_synthetic(root);
        let (data, _) = common::small_model(root, &source, IMAGES, 1);
        let model = small_cnn(root, &data, stages, head_convs);
        eprintln!("{name}: {stages}");
        onnx_agrees_with_predict(root, &source, &model);
    }
}
