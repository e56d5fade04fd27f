//! `layerwise-export --format onnx` run in onnxruntime, and the checkpoint run in numpy
//! as README shows it, both against `layerwise-predict`'s probabilities (within 1e-5), on
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

#[test]
fn the_onnx_file_and_the_numpy_lines_give_predicts_probabilities() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let source = common::source_or_synthetic(root);
    let (_, model) = common::small_model(root, &source, IMAGES, 2);
    let pngs = root.join("pngs");
    std::fs::create_dir_all(&pngs).unwrap();
    for (i, (_, chw)) in common::test_images(&source, IMAGES).into_iter().enumerate() {
        common::write_png(&pngs.join(format!("{i:03}.png")), &chw);
    }
    let onnx = root.join("model.onnx");
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
        model: model.clone(),
        inputs: vec![pngs.clone()],
        top_k: classes,
        resize: false,
        data: None,
    };
    let (mut expected, mut pixels) = (Vec::new(), Vec::new());
    let contract = layerwise_predict::Model::load(&model, None).unwrap().contract;
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
    let out =
        Command::new("python3").arg(&script).args([&model, &onnx, &px, &ex]).arg(IMAGES.to_string()).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{text}");
    assert!(out.status.success(), "{text}");
    assert!(text.contains("same top class for every image: True"), "{text}");
}
