//! The model file format: one binary encoding of a model's weights that learners upload,
//! the aggregator averages and the chain records by SHA-256 digest.
//!
//! # Format (version 1)
//!
//! A [postcard](https://postcard.jamesmunns.com/wire-format) encoding of [`ModelFile`],
//! with nothing after it:
//!
//! | field            | postcard type | meaning                                          |
//! |------------------|---------------|--------------------------------------------------|
//! | `format_version` | varint u32    | [`FORMAT_VERSION`] (1)                            |
//! | `architecture`   | string        | [`ARCHITECTURE_ID`] (`fl-mnist-cnn-v1`)           |
//! | `round`          | varint u64    | federated round the weights belong to (0: initial)|
//! | `n_samples`      | varint u64    | training examples behind the weights (FedAvg weight)|
//! | `tensors`        | seq           | one entry per parameter, in [`PARAMS`] order      |
//!
//! Each tensor is `name` (string, e.g. `conv1.weight`), `shape` (seq of varint u64),
//! `dtype` (varint enum; 0 = f32, the only one) and `data` (seq of bytes: the values as
//! little-endian IEEE-754 f32, row-major, `4 * product(shape)` bytes).
//!
//! Loading ([`ModelFile::from_bytes`]) rejects a truncated or over-long file, another
//! format version or architecture, missing, extra, reordered or mis-shaped tensors, a
//! data length that does not match the shape, and NaN or infinite values.
//! The digest of a model is the SHA-256 of these bytes ([`sha256`]).
//!
//! A [`ModelFile`] in memory is always the f32 weights, and its bytes are this version-1
//! file. Version 2 ([`crate::encoding`]: f16 and int8 updates relative to a base model,
//! room for a model-spec digest) is read into it by decoding; [`ModelFile::from_bytes`]
//! reads both versions.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::{ARCHITECTURE_ID, PARAMS};

/// Version of the encoding described in this module.
pub const FORMAT_VERSION: u32 = 1;

/// The largest model file anyone downloads: the paper's model is 2.5 MB; anything far
/// larger is not a model of this architecture, and reading it would only waste memory.
pub const MAX_MODEL_BYTES: u64 = 64 << 20;

/// Element type of a tensor. Only f32 exists today; the tag keeps the format open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Dtype {
    /// Little-endian IEEE-754 binary32.
    F32,
}

/// One named parameter tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedTensor {
    /// Stable parameter name, e.g. `conv1.weight`.
    pub name: String,
    /// Dimensions, outermost first.
    pub shape: Vec<u64>,
    /// Element type.
    pub dtype: Dtype,
    /// Values, little-endian, row-major.
    pub data: Vec<u8>,
}

impl NamedTensor {
    /// An f32 tensor from values.
    pub fn from_f32(name: &str, shape: &[usize], values: &[f32]) -> NamedTensor {
        NamedTensor {
            name: name.to_string(),
            shape: shape.iter().map(|&d| d as u64).collect(),
            dtype: Dtype::F32,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// The values as f32.
    pub fn to_f32(&self) -> Vec<f32> {
        self.data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }

    /// The shape as `usize`s.
    pub fn dims(&self) -> Vec<usize> {
        self.shape.iter().map(|&d| d as usize).collect()
    }
}

/// A model's weights plus the metadata FedAvg and the chain need.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelFile {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// [`ARCHITECTURE_ID`].
    pub architecture: String,
    /// Federated round (0 for an initial model).
    pub round: u64,
    /// Number of training examples behind these weights (the FedAvg weight).
    pub n_samples: u64,
    /// The digest of the model spec the weights follow ([`crate::spec`]), `None` for the
    /// built-in [`ARCHITECTURE_ID`]. Not part of a version-1 file: a model with a spec is
    /// always written as version 2 ([`ModelFile::to_bytes`]).
    #[serde(skip)]
    pub spec: Option<[u8; 32]>,
    /// Parameters in [`PARAMS`] order (or the spec's).
    pub tensors: Vec<NamedTensor>,
}

/// Bytes of an f32 tensor of `shape`, `None` if that overflows 64 bits.
pub fn f32_byte_len(shape: &[u64]) -> Option<u64> {
    shape.iter().try_fold(4u64, |bytes, &d| bytes.checked_mul(d))
}

/// The one check that a model can be combined with others: with a `reference` (a template
/// whose tensors may hold no data), the same format, architecture, tensor names, shapes and
/// dtypes, and data of the length the shapes say; without one, the data lengths only.
/// Messages start with `what` (the rule, e.g. "fedavg"), name the model `label` and the
/// reference `whose` (e.g. "the first model").
pub fn check_layout(model: &ModelFile, reference: Option<&ModelFile>, what: &str, label: &str, whose: &str) -> Result<()> {
    let Some(first) = reference else {
        for t in &model.tensors {
            let expected = f32_byte_len(&t.shape)
                .with_context(|| format!("{what}: {label} tensor {} has an impossible shape {:?}", t.name, t.shape))?;
            ensure!(
                t.data.len() as u64 == expected,
                "{what}: {label} tensor {} has {} bytes, expected {expected} for shape {:?}",
                t.name,
                t.data.len(),
                t.shape
            );
        }
        return Ok(());
    };
    ensure!(
        model.format_version == first.format_version && model.architecture == first.architecture,
        "{what}: {label} is architecture {:?} format {}, but {whose} is {:?} format {}",
        model.architecture,
        model.format_version,
        first.architecture,
        first.format_version
    );
    ensure!(
        model.tensors.len() == first.tensors.len(),
        "{what}: {label} has {} tensors, {whose} has {}",
        model.tensors.len(),
        first.tensors.len()
    );
    for (mine, theirs) in first.tensors.iter().zip(&model.tensors) {
        if mine.name != theirs.name || mine.shape != theirs.shape || mine.dtype != theirs.dtype {
            bail!(
                "{what}: {label} has tensor {:?} with shape {:?}, where {whose} has {:?} with shape {:?}",
                theirs.name,
                theirs.shape,
                mine.name,
                mine.shape
            );
        }
        let expected = f32_byte_len(&mine.shape).with_context(|| format!("{what}: {whose} has an impossible shape {:?}", mine.shape))?;
        ensure!(
            theirs.data.len() as u64 == expected,
            "{what}: {label} tensor {} has {} bytes, expected {expected}",
            theirs.name,
            theirs.data.len()
        );
    }
    Ok(())
}

/// The one check of a file's list of tensors (name and shape, in file order) against
/// the parameters of its spec (`expected`, from [`crate::spec::ModelSpec::params`]), for
/// both format versions: every parameter present, in its place, with its shape, and
/// nothing more. Errors name the tensor.
pub(crate) fn check_tensor_list(tensors: &[(&str, &[u64])], expected: &[(String, Vec<usize>)]) -> Result<()> {
    for (i, (name, shape)) in expected.iter().enumerate() {
        let Some((found, dims)) = tensors.get(i) else {
            bail!("model file: tensor {name} is missing (found {} tensors, expected {})", tensors.len(), expected.len());
        };
        if found != name {
            if tensors.iter().any(|(t, _)| t == name) {
                bail!("model file: tensor {i} is {found:?}, expected {name} in that position");
            }
            bail!("model file: tensor {name} is missing (found {found:?} in its place)");
        }
        ensure!(
            dims.len() == shape.len() && dims.iter().zip(shape.iter()).all(|(&d, &s)| d == s as u64),
            "model file: tensor {name} has shape {dims:?}, expected {shape:?}"
        );
    }
    if let Some((extra, _)) = tensors.get(expected.len()) {
        bail!("model file: unexpected extra tensor {extra:?}");
    }
    Ok(())
}

/// The tensors a model file must hold, as far as the file alone says: the built-in
/// architecture's parameters, or for a file that names a spec by digest (which the
/// reader may not have yet) its own list, checked for sanity only (unique names, ranks 1
/// to 4, at most 256 tensors, a size a model file can hold); [`crate::spec::ModelSpec::check_model`]
/// then checks it against the spec.
pub(crate) fn expected_tensors(architecture: &str, spec: Option<[u8; 32]>, listed: &[(&str, &[u64])]) -> Result<Vec<(String, Vec<usize>)>> {
    let Some(digest) = spec else {
        ensure!(architecture == ARCHITECTURE_ID, "model file: architecture {architecture:?} is not {ARCHITECTURE_ID:?}");
        return Ok(builtin_params().to_vec());
    };
    ensure!(
        architecture == crate::spec::SPEC_ARCHITECTURE,
        "model file: names model spec {} but architecture {architecture:?}, not {:?}",
        hex(&digest),
        crate::spec::SPEC_ARCHITECTURE
    );
    ensure!((1..=256).contains(&listed.len()), "model file: {} tensors (a model has 1 to 256)", listed.len());
    let mut total = 0u64;
    for (i, (name, shape)) in listed.iter().enumerate() {
        ensure!(!name.is_empty() && name.len() <= 64, "model file: tensor {i} has a name of {} bytes (1 to 64)", name.len());
        ensure!(!listed[..i].iter().any(|(n, _)| n == name), "model file: tensor {name:?} appears twice");
        ensure!((1..=4).contains(&shape.len()), "model file: tensor {name} has rank {} (1 to 4)", shape.len());
        total = f32_byte_len(shape)
            .and_then(|b| total.checked_add(b))
            .filter(|&t| t <= MAX_MODEL_BYTES)
            .with_context(|| format!("model file: tensor {name} of shape {shape:?} makes the model larger than {MAX_MODEL_BYTES} bytes"))?;
    }
    Ok(listed.iter().map(|(n, s)| (n.to_string(), s.iter().map(|&d| d as usize).collect())).collect())
}

/// The built-in architecture's parameters (the paper's CNN), as a spec lists them.
pub(crate) fn builtin_params() -> &'static [(String, Vec<usize>)] {
    static PARAMS_OWNED: std::sync::OnceLock<Vec<(String, Vec<usize>)>> = std::sync::OnceLock::new();
    PARAMS_OWNED.get_or_init(|| PARAMS.iter().map(|(n, s)| (n.to_string(), s.to_vec())).collect())
}

/// SHA-256 of `bytes` (the digest recorded on chain for a model file).
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Lower-case hex of a digest.
pub fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A SHA-256 digest from its 64 hex digits (as [`hex`] writes it).
pub fn digest_from_hex(text: &str) -> Result<[u8; 32]> {
    ensure!(text.len() == 64 && text.is_ascii(), "sha256 {text:?} is not 64 hex digits");
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).with_context(|| format!("sha256 {text:?} is not hex"))?;
    }
    Ok(digest)
}

impl ModelFile {
    /// Encodes the model (see the module documentation for the layout).
    /// A model that names a spec is written as version 2 (absolute f32 weights): version 1
    /// has no room for the spec.
    pub fn to_bytes(&self) -> Vec<u8> {
        if self.spec.is_some() {
            return crate::encoding::encode_v2(self, None, crate::encoding::Encoding::F32);
        }
        // Serialising plain structs into a Vec cannot fail.
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decodes and validates a model file of either version (see [`crate::encoding`] for
    /// version 2); a file holding a difference from a base model needs
    /// [`crate::encoding::decode`] with that base.
    pub fn from_bytes(bytes: &[u8]) -> Result<ModelFile> {
        Ok(crate::encoding::decode(bytes, None)?.model)
    }

    /// Decodes and validates a version-1 file.
    pub(crate) fn from_v1_bytes(bytes: &[u8]) -> Result<ModelFile> {
        let (model, rest): (ModelFile, &[u8]) = postcard::take_from_bytes(bytes)
            .map_err(|e| anyhow::anyhow!("decoding model file ({} bytes): {e} (truncated or not a model file)", bytes.len()))?;
        ensure!(rest.is_empty(), "decoding model file: {} unexpected bytes after the model", rest.len());
        model.validate()?;
        Ok(model)
    }

    /// Checks version, architecture, names, shapes, data lengths and finiteness.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.format_version == FORMAT_VERSION,
            "model file: format version {} is not supported (expected {FORMAT_VERSION})",
            self.format_version
        );
        let listed: Vec<(&str, &[u64])> = self.tensors.iter().map(|t| (t.name.as_str(), t.shape.as_slice())).collect();
        let expected = expected_tensors(&self.architecture, self.spec, &listed)?;
        check_tensor_list(&listed, &expected)?;
        for (tensor, (name, shape)) in self.tensors.iter().zip(&expected) {
            ensure!(tensor.dtype == Dtype::F32, "model file: tensor {name} is not f32");
            let expected = 4 * shape.iter().product::<usize>();
            ensure!(
                tensor.data.len() == expected,
                "model file: tensor {name} has {} bytes of data, expected {expected}",
                tensor.data.len()
            );
            if let Some(pos) = tensor.to_f32().iter().position(|v| !v.is_finite()) {
                bail!("model file: tensor {name} has a non-finite value (NaN or infinity) at index {pos}");
            }
        }
        Ok(())
    }

    /// SHA-256 of [`ModelFile::to_bytes`].
    pub fn sha256(&self) -> [u8; 32] {
        sha256(&self.to_bytes())
    }

    /// Writes the encoded model to `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_bytes()).with_context(|| format!("writing model to {}", path.display()))
    }

    /// Reads and validates a model file.
    pub fn load(path: &Path) -> Result<ModelFile> {
        let bytes = std::fs::read(path).with_context(|| format!("reading model from {}", path.display()))?;
        ModelFile::from_bytes(&bytes).with_context(|| format!("loading model from {}", path.display()))
    }

    /// The paper's CNN's initial model for `seed` (round 0, no samples): the built-in
    /// spec's [`crate::spec::ModelSpec::initial_model`].
    pub fn initial(seed: u64) -> ModelFile {
        crate::spec::ModelSpec::paper_cnn().initial_model(seed)
    }

    /// Snapshot of the parameters in `varmap` (which must hold exactly [`PARAMS`]).
    pub fn from_varmap(varmap: &VarMap, round: u64, n_samples: u64) -> Result<ModelFile> {
        let vars = varmap.data().lock().map_err(|_| anyhow::anyhow!("varmap lock poisoned"))?;
        ensure!(vars.len() == PARAMS.len(), "varmap holds {} tensors, expected {}", vars.len(), PARAMS.len());
        let mut tensors = Vec::with_capacity(PARAMS.len());
        for (name, shape) in PARAMS {
            let var = vars.get(*name).with_context(|| format!("varmap has no tensor {name}"))?;
            ensure!(var.dims() == *shape, "varmap tensor {name} has shape {:?}, expected {shape:?}", var.dims());
            let values = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            tensors.push(NamedTensor::from_f32(name, shape, &values));
        }
        Ok(ModelFile { format_version: FORMAT_VERSION, architecture: ARCHITECTURE_ID.to_string(), spec: None, round, n_samples, tensors })
    }

    /// A fresh `VarMap` holding these weights as trainable variables.
    // Test reference only (the candle model in `model.rs`, the bench's profile mode):
    // training never builds a `VarMap`.
    #[doc(hidden)]
    pub fn to_varmap(&self, device: &Device) -> Result<VarMap> {
        let varmap = VarMap::new();
        {
            let mut vars = varmap.data().lock().map_err(|_| anyhow::anyhow!("varmap lock poisoned"))?;
            for (name, tensor) in self.to_tensors(device)? {
                vars.insert(name, Var::from_tensor(&tensor)?);
            }
        }
        Ok(varmap)
    }

    /// The weights as candle tensors by name.
    pub fn to_tensors(&self, device: &Device) -> Result<HashMap<String, Tensor>> {
        self.tensors.iter().map(|t| Ok((t.name.clone(), Tensor::from_vec(t.to_f32(), t.dims(), device)?))).collect()
    }

    /// Writes the weights as a safetensors file (same names and shapes), readable by
    /// Python's `safetensors` package; round and sample count are not carried over
    /// (`fl-agent export --format safetensors`, see [`crate::export`] for the layout).
    pub fn save_safetensors(&self, path: &Path) -> Result<()> {
        candle_core::safetensors::save(&self.to_tensors(&Device::Cpu)?, path)
            .with_context(|| format!("writing safetensors to {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> ModelFile {
        ModelFile { round: 3, n_samples: 30_000, ..ModelFile::initial(4) }
    }

    fn rejects(model: &ModelFile, needle: &str) {
        let err = format!("{:#}", ModelFile::from_bytes(&model.to_bytes()).expect_err("expected rejection"));
        assert!(err.contains(needle), "error {err:?} does not contain {needle:?}");
    }

    #[test]
    fn round_trips_through_bytes_varmap_and_disk() {
        let m = model();
        let bytes = m.to_bytes();
        // 619,786 f32 plus a small header.
        assert!(bytes.len() > 4 * 619_786 && bytes.len() < 4 * 619_786 + 400, "{} bytes", bytes.len());
        let back = ModelFile::from_bytes(&bytes).unwrap();
        assert_eq!(back, m);
        let again = ModelFile::from_varmap(&back.to_varmap(&Device::Cpu).unwrap(), 3, 30_000).unwrap();
        assert_eq!(again.to_bytes(), bytes);
        assert_eq!(m.sha256(), sha256(&bytes));
        let path = std::env::temp_dir().join(format!("fl-agent-weights-{}.bin", std::process::id()));
        m.save(&path).unwrap();
        assert_eq!(ModelFile::load(&path).unwrap(), m);
        let st = path.with_extension("safetensors");
        m.save_safetensors(&st).unwrap();
        let loaded = candle_core::safetensors::load(&st, &Device::Cpu).unwrap();
        assert_eq!(loaded["fc2.bias"].dims(), &[10]);
        assert_eq!(loaded["conv1.weight"].flatten_all().unwrap().to_vec1::<f32>().unwrap(), m.tensors[0].to_f32());
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&st);
    }

    #[test]
    fn sha256_matches_a_published_vector() {
        // FIPS 180-2 example: SHA-256("abc").
        assert_eq!(hex(&sha256(b"abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(digest_from_hex(&hex(&sha256(b"abc"))).unwrap(), sha256(b"abc"));
        assert!(digest_from_hex("ab").unwrap_err().to_string().contains("is not 64 hex digits"));
        assert!(digest_from_hex(&"g".repeat(64)).unwrap_err().to_string().contains("is not hex"));
    }

    #[test]
    fn rejects_truncated_and_trailing_bytes() {
        let bytes = model().to_bytes();
        for cut in [0, 1, 10, bytes.len() / 2, bytes.len() - 1] {
            let err = format!("{:#}", ModelFile::from_bytes(&bytes[..cut]).unwrap_err());
            assert!(err.contains("truncated"), "cut at {cut}: {err}");
        }
        let mut long = bytes.clone();
        long.push(0);
        let err = format!("{:#}", ModelFile::from_bytes(&long).unwrap_err());
        assert!(err.contains("1 unexpected bytes after the model"), "{err}");
    }

    #[test]
    fn rejects_wrong_version_and_architecture() {
        let mut m = model();
        m.format_version = 3;
        rejects(&m, "format version 3 is not supported");
        let mut m = model();
        m.architecture = "resnet".into();
        rejects(&m, "architecture \"resnet\" is not \"fl-mnist-cnn-v1\"");
    }

    #[test]
    fn rejects_missing_extra_renamed_and_misshaped_tensors() {
        let mut m = model();
        m.tensors.pop();
        rejects(&m, "tensor fc2.bias is missing");
        let mut m = model();
        m.tensors.push(NamedTensor::from_f32("fc3.bias", &[1], &[0.0]));
        rejects(&m, "unexpected extra tensor \"fc3.bias\"");
        let mut m = model();
        m.tensors[1].name = "conv1.b".into();
        rejects(&m, "tensor conv1.bias is missing");
        let mut m = model();
        m.tensors.swap(0, 1);
        rejects(&m, "expected conv1.weight in that position");
        let mut m = model();
        m.tensors[9] = NamedTensor::from_f32("fc2.bias", &[11], &[0.0; 11]);
        rejects(&m, "tensor fc2.bias has shape [11], expected [10]");
        let mut m = model();
        m.tensors[9].data.truncate(36);
        rejects(&m, "tensor fc2.bias has 36 bytes of data, expected 40");
    }

    #[test]
    fn rejects_nan_and_infinity() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut m = model();
            let mut values = m.tensors[6].to_f32();
            values[123] = bad;
            m.tensors[6] = NamedTensor::from_f32("fc1.weight", &[256, 2048], &values);
            rejects(&m, "tensor fc1.weight has a non-finite value (NaN or infinity) at index 123");
        }
    }
}
