//! The export stage: a trained checkpoint, an MLP or a convolutional network, as a standard
//! ONNX graph (opset 17), the whole forward pass from pixels to class probabilities,
//! written with prost.
//!
//! The graph takes `pixels`: float `[batch, C, H, W]`, the image's values 0–255 in CHW order
//! (RGB channels; what an image library decodes, transposed from HWC), and gives
//! `probabilities`: float `[batch, classes]`. In between, exactly what `layerwise-predict`
//! computes: the input contract's scaling (`/255`, and for a standardized dataset
//! `- mean`, `/ std` per channel), then for an MLP each hidden layer `Gemm` + `Relu`, the
//! output layer `Gemm`; for a CNN each stage's downsampling and `Conv`,
//! `BatchNormalization` (inference form, the checkpoint's running statistics), `Relu`, the
//! head ([`cnn_model_proto`]); then `Softmax`. The metadata holds the input contract and
//! the class names.
#![deny(missing_docs)]

pub mod cli;
pub mod onnx;

use anyhow::{Context, Result};
use layerwise_core::checkpoint::{load_network, Dense, Network};
use layerwise_core::cnn::{head_pool_matrix, Cnn, ConvBlock, Downsample, BN_EPS, HEAD_POOL};
use layerwise_core::config::Normalize;
use layerwise_core::input::InputContract;
use layerwise_core::names::TensorPath;
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

fn ints_attr(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), ints: ints.to_vec(), r#type: ATTR_INTS, ..Default::default() }
}

fn float_attr(name: &str, f: f32) -> AttributeProto {
    AttributeProto { name: name.into(), f, r#type: ATTR_FLOAT, ..Default::default() }
}

fn int64_tensor(name: &str, values: &[i64]) -> TensorProto {
    TensorProto {
        dims: vec![values.len() as i64],
        data_type: INT64,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        name: name.into(),
        ..Default::default()
    }
}

/// A graph being built: its nodes and initializers.
#[derive(Default)]
struct Graph {
    nodes: Vec<NodeProto>,
    init: Vec<TensorProto>,
}

impl Graph {
    /// Add node `op` named `name` with `inputs`; its output is named `name` too.
    fn op(&mut self, op: &str, name: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.nodes.push(node(op, name, inputs, name, attrs));
        name.to_string()
    }

    /// The contract's scaling of `pixels` (`[batch, C, H, W]`, 0–255): `/255`, and for a
    /// standardized dataset `- mean[c]`, `/ std[c]`, on every value of channel c.
    fn scaled_pixels(&mut self, contract: &InputContract) -> String {
        let c = contract.shape[0];
        self.init.push(float_tensor("scale", &[], &[255.0]));
        let mut x = self.op("Div", "unit", &["pixels", "scale"], vec![]);
        if contract.normalize == Normalize::Standardize {
            let per_channel = |v: &[f64]| -> Vec<f32> { v.iter().map(|&m| m as f32).collect() };
            self.init.push(float_tensor("mean", &[1, c, 1, 1], &per_channel(&contract.mean)));
            self.init.push(float_tensor("std", &[1, c, 1, 1], &per_channel(&contract.std)));
            let centered = self.op("Sub", "centered", &[&x, "mean"], vec![]);
            x = self.op("Div", "standardized", &[&centered, "std"], vec![]);
        }
        x
    }

    /// `x · layerᵀ + bias` under `name`, then Relu unless it is the output layer.
    fn dense(&mut self, x: &str, name: &TensorPath, layer: &Dense, relu: bool) -> String {
        let [wn, bn] = name.pair();
        self.init.push(float_tensor(&wn, &[layer.outputs, layer.inputs], &layer.weight));
        self.init.push(float_tensor(&bn, &[layer.outputs], &layer.bias));
        let z = self.op("Gemm", &name.tensor("gemm"), &[x, &wn, &bn], vec![int_attr("transB", 1)]);
        if relu {
            self.op("Relu", &name.tensor("relu"), &[&z], vec![])
        } else {
            z
        }
    }

    /// A conv block under `name` (`stages.0`): 3 × 3 convolution (padding 1, no bias),
    /// BatchNorm in inference form with its running statistics, ReLU.
    fn conv_block(&mut self, x: &str, name: &TensorPath, b: &ConvBlock) -> String {
        let wn = name.conv().weight();
        self.init.push(float_tensor(&wn, &[b.outputs, b.inputs, 3, 3], &b.weight));
        let conv = self.op(
            "Conv",
            name.conv().as_str(),
            &[x, &wn],
            vec![ints_attr("kernel_shape", &[3, 3]), ints_attr("pads", &[1, 1, 1, 1])],
        );
        let mut bn_inputs = vec![conv.clone()];
        for (suffix, v) in b.bn.tensors() {
            let t = name.bn().tensor(suffix);
            self.init.push(float_tensor(&t, &[b.outputs], v));
            bn_inputs.push(t);
        }
        let refs: Vec<&str> = bn_inputs.iter().map(String::as_str).collect();
        let bn = self.op("BatchNormalization", name.bn().as_str(), &refs, vec![float_attr("epsilon", BN_EPS)]);
        self.op("Relu", &name.tensor("relu"), &[&bn], vec![])
    }

    /// The model around this graph: input `pixels` of `contract`'s shape, output
    /// `probabilities` over `classes`, the contract and the checkpoint's hash as metadata.
    fn model(self, contract: &InputContract, classes: usize, sha256: &str) -> Result<ModelProto> {
        let [c, h, w] = contract.shape;
        let graph = GraphProto {
            node: self.nodes,
            name: "layerwise".into(),
            initializer: self.init,
            doc_string: "A layerwise greedy layer-wise network: pixels (0-255, CHW) to class probabilities".into(),
            input: vec![value_info("pixels", &[None, Some(c), Some(h), Some(w)], "pixel values 0-255, CHW, RGB")],
            output: vec![value_info("probabilities", &[None, Some(classes)], "softmax over the classes")],
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
}

/// The ONNX model of `hidden` + `head` for input `contract`.
pub fn model_proto(hidden: &[Dense], head: &Dense, contract: &InputContract, sha256: &str) -> Result<ModelProto> {
    let mut g = Graph::default();
    let scaled = g.scaled_pixels(contract);
    let mut x = g.op("Flatten", "flat", &[&scaled], vec![int_attr("axis", 1)]);
    for (i, layer) in hidden.iter().enumerate() {
        x = g.dense(&x, &TensorPath::hidden(i), layer, true);
    }
    let logits = g.dense(&x, &TensorPath::head(), head, false);
    g.op("Softmax", "probabilities", &[&logits], vec![int_attr("axis", 1)]);
    g.model(contract, head.outputs, sha256)
}

/// The ONNX model of a convolutional network for input `contract`: each stage's
/// downsampling (`MaxPool` 2 × 2, or psi as `Reshape`–`Transpose`–`Reshape`: channel
/// `4c + 2·dy + dx` holds pixel `(2y+dy, 2x+dx)`, PyTorch's `PixelUnshuffle(2)`), its conv
/// block; the head's conv blocks, its adaptive 2 × 2 average pooling (a `MatMul` by the
/// pooling matrix over the flattened map, exact for any size), `Flatten` channel-major,
/// `Gemm`, `Softmax`.
pub fn cnn_model_proto(cnn: &Cnn, contract: &InputContract, sha256: &str) -> Result<ModelProto> {
    let mut g = Graph::default();
    let mut x = g.scaled_pixels(contract);
    let [mut c, mut h, mut w] = cnn.input;
    for (i, stage) in cnn.stages.iter().enumerate() {
        let name = TensorPath::stage(i);
        match stage.downsample {
            Downsample::None => {}
            Downsample::Maxpool => {
                let attrs = vec![ints_attr("kernel_shape", &[2, 2]), ints_attr("strides", &[2, 2])];
                x = g.op("MaxPool", &name.tensor("maxpool"), &[&x], attrs);
                (h, w) = (h / 2, w / 2);
            }
            Downsample::Psi => {
                let (h2, w2) = ((h / 2) as i64, (w / 2) as i64);
                let split = name.tensor("psi.split_shape");
                g.init.push(int64_tensor(&split, &[0, c as i64, h2, 2, w2, 2]));
                let merged = name.tensor("psi.merged_shape");
                g.init.push(int64_tensor(&merged, &[0, 4 * c as i64, h2, w2]));
                let a = g.op("Reshape", &name.tensor("psi.split"), &[&x, &split], vec![]);
                let t =
                    g.op("Transpose", &name.tensor("psi.order"), &[&a], vec![ints_attr("perm", &[0, 1, 3, 5, 2, 4])]);
                x = g.op("Reshape", &name.tensor("psi"), &[&t, &merged], vec![]);
                (c, h, w) = (4 * c, h / 2, w / 2);
            }
        }
        if stage.conv.inputs != c {
            anyhow::bail!("internal: stage {} takes {} channels, its input has {c}", i + 1, stage.conv.inputs);
        }
        x = g.conv_block(&x, &name, &stage.conv);
        c = stage.conv.outputs;
    }
    for (j, b) in cnn.head.convs.iter().enumerate() {
        x = g.conv_block(&x, &TensorPath::head_conv(j), b);
        c = b.outputs;
    }
    let p = HEAD_POOL * HEAD_POOL;
    g.init.push(int64_tensor("head.pool.map_shape", &[0, c as i64, (h * w) as i64]));
    g.init.push(float_tensor("head.pool.matrix", &[h * w, p], &head_pool_matrix(h, w)));
    let map = g.op("Reshape", "head.pool.map", &[&x, "head.pool.map_shape"], vec![]);
    let pooled = g.op("MatMul", "head.pool", &[&map, "head.pool.matrix"], vec![]);
    let flat = g.op("Flatten", "head.flat", &[&pooled], vec![int_attr("axis", 1)]);
    let logits = g.dense(&flat, &TensorPath::head_linear(), &cnn.head.linear, false);
    g.op("Softmax", "probabilities", &[&logits], vec![int_attr("axis", 1)]);
    g.model(contract, cnn.head.linear.outputs, sha256)
}

/// Export the checkpoint as ONNX, written atomically; returns the file's size.
pub fn export(opts: &ExportOptions) -> Result<usize> {
    let (network, meta) = load_network(&opts.model)?;
    let contract = meta.input_contract(&opts.model, opts.data.as_deref())?;
    let sha = layerwise_core::hash::sha256_file(&opts.model)?;
    let model = match &network {
        Network::Mlp(mlp) => model_proto(&mlp.hidden, &mlp.head, &contract, &sha)?,
        Network::Cnn(cnn) => cnn_model_proto(cnn, &contract, &sha)?,
    };
    let bytes = model.encode_to_vec();
    layerwise_core::atomic::write_bytes_atomic(&opts.out, &bytes)
        .with_context(|| format!("cannot write {}", opts.out.display()))?;
    Ok(bytes.len())
}

/// Read an ONNX file this stage wrote back (for checks): its model.
pub fn read(path: &Path) -> Result<ModelProto> {
    let bytes = layerwise_core::fsread::read_capped(path, "ONNX model", 4 << 30)?;
    ModelProto::decode(&bytes[..]).with_context(|| format!("{}: not an ONNX model", path.display()))
}
