//! The model leaves the federation: a model file written so that other tools can use it.
//! Any spec's model ([`crate::spec`]); below, the paper's CNN as the example.
//!
//! - **safetensors** ([`safetensors`]): every tensor under its name (`conv1.weight` ...
//!   `fc2.bias` for the paper's CNN; the spec's [`crate::spec::ModelSpec::params`] in
//!   general), f32: convolution weights `(out, in, 3, 3)` (PyTorch's layout), dense weights
//!   `(out, in)` (so `y = x @ W.T + b`), and the flatten before the first dense layer is
//!   channel-major: `(n, 128, 4, 4)` reshaped to `(n, 2048)` (PyTorch's `flatten(1)`, not
//!   Keras' NHWC order).
//! - **ONNX** ([`onnx`], opset 13, IR version 8): the whole network as a graph with the
//!   weights inside. Input `images`: `(n, C, H, W)` f32 (NCHW; an IDX or image-folder pixel
//!   is byte / 255), or for a spec with a feature input `features`: `(n, F)` f32 as the CSV
//!   holds them; output `probabilities`: `(n, classes)`, the softmax. Nodes: each
//!   convolution is `Conv` (3x3, pads 1) → `Relu`, then if pooled `MaxPool` (2x2, stride 2,
//!   `ceil_mode` 1, which is Keras' "same" pooling: 28 → 14 → 7 → 4); a `Flatten` before
//!   the first dense layer of an image input; each dense layer `Gemm` (`transB` 1) → `Relu`
//!   but the last, then `Softmax` (axis 1). Dropout is training only and not in the graph.
//!
//! The ONNX file is protobuf, written here field by field from `onnx.proto` (the message
//! and field numbers are cited at each writer), so no protobuf crate is needed.

use std::path::Path;

use anyhow::{Context, Result};

use crate::data::InputShape;
use crate::spec::{ModelSpec, Stage};
use crate::weights::ModelFile;

/// Writes `model` of `spec` as safetensors (the tensors only; round and sample count stay
/// behind).
pub fn safetensors(spec: &ModelSpec, model: &ModelFile, path: &Path) -> Result<()> {
    model.validate()?;
    spec.check_model(model)?;
    model.save_safetensors(path)
}

/// The ONNX opset the graph uses.
pub const OPSET: i64 = 13;
/// The ONNX IR version of the file (IR 8 came with opset 17; readers of opset 13 accept it).
const IR_VERSION: i64 = 8;

/// `model` of `spec` as an ONNX model (see the module documentation).
pub fn onnx(spec: &ModelSpec, model: &ModelFile) -> Result<Vec<u8>> {
    model.validate()?;
    spec.check_model(model)?;
    let mut graph = Vec::new();
    let (input, input_dims) = match spec.input {
        InputShape::Image { height, width, channels } => {
            ("images", vec![None, Some(channels as u64), Some(height as u64), Some(width as u64)])
        }
        InputShape::Features(n) => ("features", vec![None, Some(n as u64)]),
    };
    // Nodes, in order (GraphProto.node = 1).
    let mut x = input.to_string();
    let mut image_shaped = matches!(spec.input, InputShape::Image { .. });
    for stage in spec.stages() {
        match stage {
            Stage::Conv { index, pool, .. } => {
                let conv = format!("conv{index}");
                let (c, r) = (format!("{conv}_out"), format!("{conv}_relu"));
                let conv_attrs = [attr_ints("kernel_shape", &[3, 3]), attr_ints("pads", &[1, 1, 1, 1]), attr_ints("strides", &[1, 1])];
                field_bytes(
                    &mut graph,
                    1,
                    &node("Conv", &conv, &[&x, &format!("{conv}.weight"), &format!("{conv}.bias")], &c, &conv_attrs),
                );
                field_bytes(&mut graph, 1, &node("Relu", &r, &[&c], &r, &[]));
                x = r;
                if pool {
                    let p = format!("pool{index}");
                    let pool_attrs = [attr_ints("kernel_shape", &[2, 2]), attr_ints("strides", &[2, 2]), attr_int("ceil_mode", 1)];
                    field_bytes(&mut graph, 1, &node("MaxPool", &p, &[&x], &p, &pool_attrs));
                    x = p;
                }
            }
            Stage::Dense { index, relu, .. } => {
                if image_shaped {
                    field_bytes(&mut graph, 1, &node("Flatten", "flatten", &[&x], "flat", &[attr_int("axis", 1)]));
                    x = "flat".into();
                    image_shaped = false;
                }
                let fc = format!("fc{index}");
                let out = if relu { format!("{fc}_out") } else { "logits".to_string() };
                let gemm_inputs = [x.as_str(), &format!("{fc}.weight"), &format!("{fc}.bias")];
                field_bytes(&mut graph, 1, &node("Gemm", &fc, &gemm_inputs, &out, &[attr_int("transB", 1)]));
                x = out;
                if relu {
                    let r = format!("{fc}_relu");
                    field_bytes(&mut graph, 1, &node("Relu", &r, &[&x], &r, &[]));
                    x = r;
                }
            }
        }
    }
    field_bytes(&mut graph, 1, &node("Softmax", "softmax", &[&x], "probabilities", &[attr_int("axis", 1)]));
    // GraphProto.name = 2.
    field_bytes(&mut graph, 2, spec.name.as_bytes());
    // Weights: GraphProto.initializer = 5, TensorProto.
    for tensor in &model.tensors {
        let mut t = Vec::new();
        for &d in &tensor.shape {
            field_varint(&mut t, 1, d); // TensorProto.dims = 1
        }
        field_varint(&mut t, 2, 1); // TensorProto.data_type = 2: FLOAT = 1
        field_bytes(&mut t, 8, tensor.name.as_bytes()); // TensorProto.name = 8
        field_bytes(&mut t, 9, &tensor.data); // TensorProto.raw_data = 9: little-endian f32
        field_bytes(&mut graph, 5, &t);
    }
    // GraphProto.input = 11 and output = 12, ValueInfoProto.
    field_bytes(&mut graph, 11, &value_info(input, &input_dims));
    field_bytes(&mut graph, 12, &value_info("probabilities", &[None, Some(spec.classes as u64)]));

    let mut out = Vec::new();
    field_varint(&mut out, 1, IR_VERSION as u64); // ModelProto.ir_version = 1
    field_bytes(&mut out, 2, b"fl-agent"); // ModelProto.producer_name = 2
    field_bytes(&mut out, 3, env!("CARGO_PKG_VERSION").as_bytes()); // producer_version = 3
    field_bytes(&mut out, 7, &graph); // ModelProto.graph = 7
    let mut opset = Vec::new();
    field_bytes(&mut opset, 1, b""); // OperatorSetIdProto.domain = 1: the default domain
    field_varint(&mut opset, 2, OPSET as u64); // OperatorSetIdProto.version = 2
    field_bytes(&mut out, 8, &opset); // ModelProto.opset_import = 8
    Ok(out)
}

/// Writes `bytes` to `path` atomically, naming the file in errors.
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::files::write_atomic(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// NodeProto: input = 1, output = 2, name = 3, op_type = 4, attribute = 5.
fn node(op: &str, name: &str, inputs: &[&str], output: &str, attributes: &[Vec<u8>]) -> Vec<u8> {
    let mut n = Vec::new();
    for input in inputs {
        field_bytes(&mut n, 1, input.as_bytes());
    }
    field_bytes(&mut n, 2, output.as_bytes());
    field_bytes(&mut n, 3, name.as_bytes());
    field_bytes(&mut n, 4, op.as_bytes());
    for a in attributes {
        field_bytes(&mut n, 5, a);
    }
    n
}

/// AttributeProto with one int: name = 1, i = 3, type = 20 (INT = 2).
fn attr_int(name: &str, value: i64) -> Vec<u8> {
    let mut a = Vec::new();
    field_bytes(&mut a, 1, name.as_bytes());
    field_varint(&mut a, 3, value as u64);
    field_varint(&mut a, 20, 2);
    a
}

/// AttributeProto with ints: name = 1, ints = 8 (one entry each), type = 20 (INTS = 7).
fn attr_ints(name: &str, values: &[i64]) -> Vec<u8> {
    let mut a = Vec::new();
    field_bytes(&mut a, 1, name.as_bytes());
    for &v in values {
        field_varint(&mut a, 8, v as u64);
    }
    field_varint(&mut a, 20, 7);
    a
}

/// ValueInfoProto (name = 1, type = 2) of an f32 tensor; `None` dims are the batch,
/// named `n` (TypeProto.tensor_type = 1; Tensor.elem_type = 1, shape = 2;
/// TensorShapeProto.dim = 1; Dimension.dim_value = 1, dim_param = 2).
fn value_info(name: &str, dims: &[Option<u64>]) -> Vec<u8> {
    let mut shape = Vec::new();
    for dim in dims {
        let mut d = Vec::new();
        match dim {
            Some(v) => field_varint(&mut d, 1, *v),
            None => field_bytes(&mut d, 2, b"n"),
        }
        field_bytes(&mut shape, 1, &d);
    }
    let mut tensor = Vec::new();
    field_varint(&mut tensor, 1, 1); // FLOAT
    field_bytes(&mut tensor, 2, &shape);
    let mut ty = Vec::new();
    field_bytes(&mut ty, 1, &tensor);
    let mut v = Vec::new();
    field_bytes(&mut v, 1, name.as_bytes());
    field_bytes(&mut v, 2, &ty);
    v
}

/// A varint field (wire type 0).
fn field_varint(out: &mut Vec<u8>, field: u32, value: u64) {
    varint(out, u64::from(field) << 3);
    varint(out, value);
}

/// A length-delimited field (wire type 2).
fn field_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    varint(out, (u64::from(field) << 3) | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_fields_follow_the_protobuf_encoding() {
        // The protobuf encoding guide's example: 150 is 0x96 0x01; field 1 varint 150 is
        // 08 96 01, and field 2 string "testing" is 12 07 74 65 73 74 69 6e 67.
        let mut out = Vec::new();
        field_varint(&mut out, 1, 150);
        assert_eq!(out, [0x08, 0x96, 0x01]);
        let mut out = Vec::new();
        field_bytes(&mut out, 2, b"testing");
        assert_eq!(out, [0x12, 0x07, 0x74, 0x65, 0x73, 0x74, 0x69, 0x6e, 0x67]);
        // A negative int64 takes ten bytes (two's complement, as protobuf does).
        let mut out = Vec::new();
        varint(&mut out, -1i64 as u64);
        assert_eq!(out.len(), 10);
    }

    #[test]
    fn the_graph_holds_every_weight_byte_for_byte() {
        let model = ModelFile::initial(3);
        let bytes = onnx(&ModelSpec::paper_cnn(), &model).unwrap();
        for tensor in &model.tensors {
            let at = bytes.windows(tensor.data.len().min(64)).position(|w| w == &tensor.data[..tensor.data.len().min(64)]);
            assert!(at.is_some(), "{} is not in the file", tensor.name);
        }
        // Weights plus a little structure.
        let weights: usize = model.tensors.iter().map(|t| t.data.len()).sum();
        assert!(bytes.len() > weights && bytes.len() < weights + 4096, "{} bytes for {weights} of weights", bytes.len());
    }
}
