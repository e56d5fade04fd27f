//! The export stage: a trained checkpoint as a standard ONNX graph (opset 17), the whole
//! forward pass from pixels to class probabilities, written with prost.
//!
//! The graph takes `pixels`: float `[batch, C, H, W]`, the image's values 0–255 in CHW order
//! (RGB channels; what an image library decodes, transposed from HWC), and gives
//! `probabilities`: float `[batch, classes]`. In between, exactly what `layerwise-predict`
//! computes: the input contract's scaling (`/255`, and for a standardized dataset
//! `- mean`, `/ std` per channel), each hidden layer `Gemm` + `Relu`, the output layer
//! `Gemm`, `Softmax`. The metadata holds the input contract and the class names.
#![deny(missing_docs)]

pub mod cli;
pub mod onnx;

use anyhow::{Context, Result};
use layerwise_core::checkpoint::{hidden_name, load_network, Dense, Network};
use layerwise_core::config::Normalize;
use layerwise_core::input::InputContract;
use onnx::*;
use prost::Message;
use std::path::{Path, PathBuf};

/// The opset the graph uses.
pub const OPSET: i64 = 17;
/// The ONNX IR version written.
pub const IR_VERSION: i64 = 8;

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// The checkpoint.
    pub model: PathBuf,
    /// The ONNX file to write.
    pub out: PathBuf,
    /// The dataset the model was trained on, for a checkpoint without an input contract.
    pub data: Option<PathBuf>,
}

fn float_tensor(name: &str, dims: &[usize], values: &[f32]) -> TensorProto {
    TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: FLOAT,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        name: name.into(),
        ..Default::default()
    }
}

fn node(op: &str, name: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        name: name.into(),
        op_type: op.into(),
        attribute,
        ..Default::default()
    }
}

fn int_attr(name: &str, i: i64) -> AttributeProto {
    AttributeProto { name: name.into(), i, r#type: ATTR_INT, ..Default::default() }
}

fn value_info(name: &str, dims: &[Option<usize>], doc: &str) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(v) => DimValue::DimValue(*v as i64),
                None => DimValue::DimParam("batch".into()),
            }),
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeTensor { elem_type: FLOAT, shape: Some(TensorShapeProto { dim }) }),
        }),
        doc_string: doc.into(),
    }
}

/// The ONNX model of `hidden` + `head` for input `contract`.
pub fn model_proto(hidden: &[Dense], head: &Dense, contract: &InputContract, sha256: &str) -> Result<ModelProto> {
    let [c, h, w] = contract.shape;
    let size = c * h * w;
    let mut nodes = Vec::new();
    let mut init = Vec::new();
    nodes.push(node("Flatten", "flatten", &["pixels"], "flat", vec![int_attr("axis", 1)]));
    init.push(float_tensor("scale", &[], &[255.0]));
    nodes.push(node("Div", "unit", &["flat", "scale"], "unit", vec![]));
    let mut x = "unit".to_string();
    if contract.normalize == Normalize::Standardize {
        let per_value = |v: &[f64]| -> Vec<f32> { (0..size).map(|i| v[i / (h * w)] as f32).collect() };
        init.push(float_tensor("mean", &[size], &per_value(&contract.mean)));
        init.push(float_tensor("std", &[size], &per_value(&contract.std)));
        nodes.push(node("Sub", "center", &["unit", "mean"], "centered", vec![]));
        nodes.push(node("Div", "standardize", &["centered", "std"], "standardized", vec![]));
        x = "standardized".into();
    }
    for (i, layer) in hidden.iter().chain(std::iter::once(head)).enumerate() {
        let is_head = i == hidden.len();
        let name = if is_head { "head".to_string() } else { hidden_name(i) };
        let (wn, bn) = (format!("{name}.weight"), format!("{name}.bias"));
        init.push(float_tensor(&wn, &[layer.outputs, layer.inputs], &layer.weight));
        init.push(float_tensor(&bn, &[layer.outputs], &layer.bias));
        let z = if is_head { "logits".to_string() } else { format!("{name}.z") };
        nodes.push(node("Gemm", &format!("{name}.gemm"), &[&x, &wn, &bn], &z, vec![int_attr("transB", 1)]));
        if is_head {
            nodes.push(node("Softmax", "softmax", &["logits"], "probabilities", vec![int_attr("axis", 1)]));
        } else {
            let a = format!("{name}.relu");
            nodes.push(node("Relu", &a, &[&z], &a, vec![]));
            x = a;
        }
    }
    let graph = GraphProto {
        node: nodes,
        name: "layerwise".into(),
        initializer: init,
        doc_string: "A layerwise greedy layer-wise network: pixels (0-255, CHW) to class probabilities".into(),
        input: vec![value_info("pixels", &[None, Some(c), Some(h), Some(w)], "pixel values 0-255, CHW, RGB")],
        output: vec![value_info("probabilities", &[None, Some(head.outputs)], "softmax over the classes")],
    };
    let prop = |k: &str, v: String| StringStringEntryProto { key: k.into(), value: v };
    Ok(ModelProto {
        ir_version: IR_VERSION,
        producer_name: "layerwise".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        domain: String::new(),
        model_version: 1,
        doc_string: String::new(),
        graph: Some(graph),
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET }],
        metadata_props: vec![
            prop("layerwise.input", serde_json::to_string(contract)?),
            prop("layerwise.classes", serde_json::to_string(&contract.classes)?),
            prop("layerwise.checkpoint_sha256", sha256.into()),
        ],
    })
}

/// Export the checkpoint as ONNX, written atomically; returns the file's size.
pub fn export(opts: &ExportOptions) -> Result<usize> {
    let (Network::Mlp(mlp), meta) = load_network(&opts.model)? else {
        anyhow::bail!(
            "{} holds a convolutional network (checkpoint version 2): ONNX export covers MLPs so far; run it with \
             layerwise-predict, or in PyTorch or numpy from its interop contract (scripts/cnn-forward.py)",
            opts.model.display()
        );
    };
    let contract = meta.input_contract(&opts.model, opts.data.as_deref())?;
    let sha = layerwise_core::hash::sha256_file(&opts.model)?;
    let bytes = model_proto(&mlp.hidden, &mlp.head, &contract, &sha)?.encode_to_vec();
    layerwise_core::atomic::write_bytes_atomic(&opts.out, &bytes)
        .with_context(|| format!("cannot write {}", opts.out.display()))?;
    Ok(bytes.len())
}

/// Read an ONNX file this stage wrote back (for checks): its model.
pub fn read(path: &Path) -> Result<ModelProto> {
    let bytes = layerwise_core::fsread::read_capped(path, "ONNX model", 4 << 30)?;
    ModelProto::decode(&bytes[..]).with_context(|| format!("{}: not an ONNX model", path.display()))
}
