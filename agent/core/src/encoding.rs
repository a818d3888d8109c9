//! Model file format version 2: compressed updates and encoded global models.
//!
//! A learner's update is small when it is sent as its difference from the model it started
//! from, in fewer bits: [`encode`] writes `model - base` per tensor as `f16` or as `int8`
//! with one scale per output channel, and names the base by its digest; [`decode`] adds it
//! back to the base, which the reader must supply. The decoded model is an ordinary f32
//! [`ModelFile`]: everything after decoding (the rules, evaluation, `verify`) is unchanged,
//! and decoding is exact IEEE arithmetic, so every reader gets the same bits.
//!
//! # Format (version 2)
//!
//! A [postcard](https://postcard.jamesmunns.com/wire-format) encoding of:
//!
//! | field            | postcard type        | meaning                                          |
//! |------------------|----------------------|--------------------------------------------------|
//! | `format_version` | varint u32           | 2 (a version-1 file starts with 1: see [`crate::weights`]) |
//! | `architecture`   | string               | [`crate::model::ARCHITECTURE_ID`], or [`crate::spec::SPEC_ARCHITECTURE`] with a `spec` |
//! | `round`          | varint u64           | as in version 1                                  |
//! | `n_samples`      | varint u64           | as in version 1                                  |
//! | `base`           | option, 32 bytes     | SHA-256 of the base model's file ([`ModelFile::to_bytes`]); none: the values are the weights themselves |
//! | `spec`           | option, 32 bytes     | digest of the model spec the file follows ([`crate::spec`]); none: the built-in [`crate::model::ARCHITECTURE_ID`] |
//! | `tensors`        | seq                  | one entry per parameter, in the spec's order     |
//! | `report`         | absent, or option tag 1 then struct | a learner's own evaluation of the model it sends (below) |
//!
//! Each tensor is `name`, `shape` (as in version 1), `encoding` (varint enum) and `data`
//! (bytes):
//! - `F32` (0): little-endian f32, 4 bytes per value;
//! - `F16` (1): little-endian IEEE binary16, 2 bytes per value (rounded to nearest even);
//! - `Int8 { scales }` (2): one little-endian f32 scale per output channel (`shape[0]`),
//!   then one signed byte `q` per value; the value is `q * scale` of its channel (row-major,
//!   so channel `c` is the `c`-th of `shape[0]` equal slices). The writer sets
//!   `scale = max|v| / 127` over the channel and `q = round(v / scale)` (half away from
//!   zero), so the error is at most half a step, `scale / 2`.
//!
//! With a `base`, a tensor's decoded value is `base + value` in f32; without, it is `value`.
//! - `Zero` (3): no data; every value is 0 (in a file relative to a base: the tensor is the
//!   base's, as for the tensors of model groups a learner does not train).
//!
//! The writer uses `Zero` for a tensor whose difference from the base is +0.0 throughout,
//! else `Int8` for tensors of rank 2 or more and f32 for biases (490 values:
//! int8 with a scale per value would save nothing), and `F16` for every tensor under
//! `f16`. The digest recorded on chain is the SHA-256 of the file's bytes, as for version 1.
//!
//! Decoding checks what the version-1 loader checks (names, order, shapes, data lengths,
//! finite values, here after decoding) plus the encodings' own fields (scale count, finite
//! non-negative scales, finite f16 values, that the base is the one named), and names the
//! tensor at fault.
//!
//! # The learner's report
//! A learner's update may end with its own evaluation of the model it sends, on its own
//! test set: after `tensors`, the postcard `Some` tag (byte 1) and `accuracy` (f32, in
//! [0, 1]), `loss` (f32, mean cross-entropy, finite and >= 0) and `examples` (varint u64,
//! at least 1). A file without a report ends with `tensors`, so every file written before
//! the field existed reads exactly as before (no report), a file's digest is still the
//! SHA-256 of its bytes, and adding a report ([`with_report`]) only appends bytes: the
//! model is the same. A trailing `None` tag (byte 0) is refused, so a report-less file has
//! one form. The aggregator records the figures and never uses them to aggregate (the
//! board is not trusted; `verify` only checks the record says what the files say). Version
//! 1 has no room for a report: an `f32` update of the built-in model carries none.
//!
//! # Which encoding
//! `f32` writes the exact version-1 file (absolute weights, no base), as before this format
//! existed, except for a model that names a spec: version 1 has no room for it, so its
//! absolute weights are a version-2 file of f32 tensors ([`ModelFile::to_bytes`]); `f16` and `int8` write version 2 deltas. Measured on MNIST (README, `make
//! bench-compression`): an update is 2.48 MB in f32, 1.24 MB in f16 and 0.62 MB in int8.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, ensure, Context, Result};
use half::f16;
use serde::{Deserialize, Serialize};

#[cfg(test)]
use crate::model::PARAMS;
use crate::spec::describe;
use crate::weights::{check_tensor_list, expected_tensors, hex, ModelFile, NamedTensor, FORMAT_VERSION};

/// The format version this module writes.
pub const FORMAT_VERSION_2: u32 = 2;

/// How an update (or an encoded global model) is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Encoding {
    /// Today's absolute f32 weights (a version-1 file).
    F32,
    /// The delta from the base in IEEE half precision.
    F16,
    /// The delta from the base in 8 bits with one f32 scale per output channel.
    #[default]
    Int8,
}

impl Encoding {
    /// Every encoding, in the order they are documented.
    pub const ALL: [Encoding; 3] = [Encoding::F32, Encoding::F16, Encoding::Int8];

    /// The name used in configs, flags and round records.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::F32 => "f32",
            Encoding::F16 => "f16",
            Encoding::Int8 => "int8",
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Encoding {
    type Err = anyhow::Error;
    fn from_str(text: &str) -> Result<Encoding> {
        Encoding::ALL
            .into_iter()
            .find(|e| e.name() == text)
            .with_context(|| format!("unknown encoding {text:?}: expected f32, f16 or int8"))
    }
}

/// One tensor's encoding in a version-2 file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum TensorEncoding {
    F32,
    F16,
    Int8 {
        scales: Vec<f32>,
    },
    /// Every value is zero (no data): a tensor an update leaves as its base had it.
    Zero,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct EncodedTensor {
    name: String,
    shape: Vec<u64>,
    encoding: TensorEncoding,
    data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct FileV2 {
    format_version: u32,
    architecture: String,
    round: u64,
    n_samples: u64,
    base: Option<[u8; 32]>,
    spec: Option<[u8; 32]>,
    tensors: Vec<EncodedTensor>,
}

/// A learner's own evaluation of the model it sends, on its own test set (the trailing
/// `report` of a version-2 file; see the module docs): recorded, never trusted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// Fraction of the learner's test examples classified correctly, in [0, 1].
    pub accuracy: f32,
    /// Mean cross-entropy per test example, finite and >= 0.
    pub loss: f32,
    /// Test examples evaluated, at least 1.
    pub examples: u64,
}

impl Report {
    /// Checks the figures are in range; the error names the field.
    pub fn check(&self) -> Result<()> {
        ensure!((0.0..=1.0).contains(&self.accuracy), "report: accuracy {} is not in [0, 1]", self.accuracy);
        ensure!(self.loss.is_finite() && self.loss >= 0.0, "report: loss {} is not a finite number >= 0", self.loss);
        ensure!(self.examples >= 1, "report: examples is 0, expected at least 1 test example");
        Ok(())
    }
}

/// What [`decode`] read: the f32 model and how it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The model's weights (a base-relative file decoded onto its base).
    pub model: ModelFile,
    /// The file's encoding: `F32` for a version-1 file; for version 2 the encoding of its
    /// weight tensors (`Int8` when any tensor is int8, else `F16` when any is f16).
    pub encoding: Encoding,
    /// The digest of the base model the file is relative to, if any.
    pub base: Option<[u8; 32]>,
    /// The learner's own evaluation of the model, if the file carries one (version 2 only).
    pub report: Option<Report>,
}

/// The base a version-2 file names, read without decoding the rest (`None` for a version-1
/// file or an absolute version-2 file).
pub fn base_of(bytes: &[u8]) -> Result<Option<[u8; 32]>> {
    match format_version(bytes)? {
        FORMAT_VERSION => Ok(None),
        _ => Ok(parse_v2(bytes)?.0.base),
    }
}

/// `bytes` (a version-2 file without a report) with `report` appended: the same model, now
/// carrying the learner's figures. `None` for a version-1 file, which has no room for one.
pub fn with_report(bytes: &[u8], report: &Report) -> Result<Option<Vec<u8>>> {
    if format_version(bytes)? == FORMAT_VERSION {
        return Ok(None);
    }
    report.check()?;
    ensure!(parse_v2(bytes)?.1.is_none(), "model file: already carries a report");
    let mut out = bytes.to_vec();
    // Serialising a plain struct into a Vec cannot fail.
    out.extend(postcard::to_stdvec(&Some(report)).unwrap_or_default());
    Ok(Some(out))
}

/// Writes `model` in `encoding`: `F32` gives the version-1 file of the absolute weights;
/// `F16` and `Int8` a version-2 file of `model - base` naming `base` by digest (`base`
/// `None`: the absolute weights, as for an encoded global model).
pub fn encode(model: &ModelFile, base: Option<&ModelFile>, encoding: Encoding) -> Result<Vec<u8>> {
    if encoding == Encoding::F32 {
        return Ok(model.to_bytes());
    }
    if let Some(base) = base {
        crate::weights::check_layout(model, Some(base), "encoding", "the model", "its base")?;
    }
    Ok(encode_v2(model, base, encoding))
}

/// The version-2 file of `model` in `encoding` relative to `base` (whose layout the caller
/// checked), or of the absolute f32 weights for `F32` (how a model that names a spec is
/// written whole: version 1 has no room for the spec).
pub(crate) fn encode_v2(model: &ModelFile, base: Option<&ModelFile>, encoding: Encoding) -> Vec<u8> {
    let base = if encoding == Encoding::F32 { None } else { base };
    let mut tensors = Vec::with_capacity(model.tensors.len());
    for (i, tensor) in model.tensors.iter().enumerate() {
        let mut values = tensor.to_f32();
        if let Some(base) = base {
            for (v, b) in values.iter_mut().zip(base.tensors[i].to_f32()) {
                *v -= b;
            }
        }
        let (encoding, data) = match encoding {
            // A delta that is zero throughout (the tensors of another model group, which a
            // learner does not train) costs nothing.
            _ if base.is_some() && values.iter().all(|v| v.to_bits() == 0) => (TensorEncoding::Zero, Vec::new()),
            Encoding::Int8 if tensor.shape.len() >= 2 => {
                let (scales, data) = quantize(&values, tensor.shape[0] as usize);
                (TensorEncoding::Int8 { scales }, data)
            }
            Encoding::F16 => (TensorEncoding::F16, values.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect()),
            _ => (TensorEncoding::F32, values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        };
        tensors.push(EncodedTensor { name: tensor.name.clone(), shape: tensor.shape.clone(), encoding, data });
    }
    let file = FileV2 {
        format_version: FORMAT_VERSION_2,
        architecture: model.architecture.clone(),
        round: model.round,
        n_samples: model.n_samples,
        base: base.map(ModelFile::sha256),
        spec: model.spec,
        tensors,
    };
    // Serialising plain structs into a Vec cannot fail.
    postcard::to_stdvec(&file).unwrap_or_default()
}

/// Symmetric int8 per output channel: the scales and the bytes (see the module docs).
fn quantize(values: &[f32], channels: usize) -> (Vec<f32>, Vec<u8>) {
    let per_channel = values.len() / channels.max(1);
    let mut scales = Vec::with_capacity(channels);
    let mut data = Vec::with_capacity(values.len());
    for channel in values.chunks(per_channel.max(1)) {
        let max = channel.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = max / 127.0;
        scales.push(scale);
        for v in channel {
            let q = if scale > 0.0 { (v / scale).round().clamp(-127.0, 127.0) } else { 0.0 };
            data.push(q as i8 as u8);
        }
    }
    (scales, data)
}

/// Reads the version a model file starts with.
fn format_version(bytes: &[u8]) -> Result<u32> {
    let (version, _): (u32, &[u8]) = postcard::take_from_bytes(bytes)
        .map_err(|e| anyhow::anyhow!("decoding model file ({} bytes): {e} (truncated or not a model file)", bytes.len()))?;
    Ok(version)
}

/// The file and its report: a file that ends with its tensors has none (every file written
/// before reports existed), else what follows must be exactly one valid report.
fn parse_v2(bytes: &[u8]) -> Result<(FileV2, Option<Report>)> {
    let (file, rest): (FileV2, &[u8]) = postcard::take_from_bytes(bytes)
        .map_err(|e| anyhow::anyhow!("decoding model file ({} bytes): {e} (truncated or not a model file)", bytes.len()))?;
    if rest.is_empty() {
        return Ok((file, None));
    }
    let (report, after): (Option<Report>, &[u8]) = postcard::take_from_bytes(rest)
        .map_err(|e| anyhow::anyhow!("decoding model file: the {} bytes after the model are not a report: {e}", rest.len()))?;
    let report = report.context("decoding model file: an empty report after the model (a file without a report ends with the model)")?;
    ensure!(after.is_empty(), "decoding model file: {} unexpected bytes after the report", after.len());
    report.check().context("model file")?;
    Ok((file, Some(report)))
}

/// Decodes a model file of either version. A file relative to a base needs that base
/// (checked by digest); an absolute file ignores `base`.
pub fn decode(bytes: &[u8], base: Option<&ModelFile>) -> Result<Decoded> {
    let version = format_version(bytes)?;
    if version == FORMAT_VERSION {
        let model = ModelFile::from_v1_bytes(bytes)?;
        return Ok(Decoded { model, encoding: Encoding::F32, base: None, report: None });
    }
    ensure!(
        version == FORMAT_VERSION_2,
        "model file: format version {version} is not supported (this program reads {FORMAT_VERSION} and {FORMAT_VERSION_2})"
    );
    let (file, report) = parse_v2(bytes)?;
    let base = match (file.base, base) {
        (None, _) => None,
        (Some(named), None) => {
            bail!("model file: holds the difference from model {}, which is needed to decode it", hex(&named))
        }
        (Some(named), Some(base)) => {
            let given = base.sha256();
            ensure!(
                given == named,
                "model file: holds the difference from model {}, not from the model given ({})",
                hex(&named),
                hex(&given)
            );
            Some(base)
        }
    };
    let listed: Vec<(&str, &[u64])> = file.tensors.iter().map(|t| (t.name.as_str(), t.shape.as_slice())).collect();
    let expected = expected_tensors(&file.architecture, file.spec, &listed)?;
    check_tensor_list(&listed, &expected)?;
    if let Some(base) = base {
        ensure!(
            base.spec == file.spec,
            "model file: follows {}, but its base model follows {}",
            describe(&file.architecture, file.spec),
            describe(&base.architecture, base.spec)
        );
        let base_list: Vec<(&str, &[u64])> = base.tensors.iter().map(|t| (t.name.as_str(), t.shape.as_slice())).collect();
        check_tensor_list(&base_list, &expected).context("model file: its base model has other tensors")?;
    }
    let mut tensors = Vec::with_capacity(expected.len());
    let mut kind = Encoding::F32;
    for (i, (tensor, (name, shape))) in file.tensors.iter().zip(&expected).enumerate() {
        let count: usize = shape.iter().product();
        let mut values = decode_tensor(name, tensor, count)?;
        match tensor.encoding {
            TensorEncoding::Int8 { .. } => kind = Encoding::Int8,
            TensorEncoding::F16 if kind == Encoding::F32 => kind = Encoding::F16,
            _ => {}
        }
        if let Some(base) = base {
            for (v, b) in values.iter_mut().zip(base.tensors[i].to_f32()) {
                *v += b;
            }
        }
        if let Some(pos) = values.iter().position(|v| !v.is_finite()) {
            bail!("model file: tensor {name} has a non-finite value (NaN or infinity) at index {pos}");
        }
        tensors.push(NamedTensor::from_f32(name, shape, &values));
    }
    let model = ModelFile {
        format_version: FORMAT_VERSION,
        architecture: file.architecture,
        spec: file.spec,
        round: file.round,
        n_samples: file.n_samples,
        tensors,
    };
    Ok(Decoded { model, encoding: kind, base: file.base, report })
}

/// One tensor's stored values as f32 (before the base is added).
fn decode_tensor(name: &str, tensor: &EncodedTensor, count: usize) -> Result<Vec<f32>> {
    let expect_len = |per_value: usize, extra: usize| -> Result<()> {
        ensure!(
            tensor.data.len() == per_value * count + extra,
            "model file: tensor {name} has {} bytes of data, expected {} for {count} values",
            tensor.data.len(),
            per_value * count + extra
        );
        Ok(())
    };
    match &tensor.encoding {
        TensorEncoding::F32 => {
            expect_len(4, 0)?;
            Ok(tensor.data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
        }
        TensorEncoding::F16 => {
            expect_len(2, 0)?;
            let values: Vec<f32> = tensor.data.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
            if let Some(pos) = values.iter().position(|v| !v.is_finite()) {
                bail!("model file: tensor {name} has a non-finite f16 value at index {pos}");
            }
            Ok(values)
        }
        TensorEncoding::Int8 { scales } => {
            expect_len(1, 0)?;
            let channels = tensor.shape.first().copied().unwrap_or(0) as usize;
            ensure!(
                tensor.shape.len() >= 2 && scales.len() == channels,
                "model file: tensor {name} has {} int8 scales, expected one per output channel ({channels})",
                scales.len()
            );
            if let Some(pos) = scales.iter().position(|s| !s.is_finite() || *s < 0.0) {
                bail!("model file: tensor {name} has an invalid int8 scale {} for channel {pos}", scales[pos]);
            }
            let per_channel = count / channels;
            Ok(tensor.data.chunks(per_channel).zip(scales).flat_map(|(qs, s)| qs.iter().map(move |&q| f32::from(q as i8) * s)).collect())
        }
        TensorEncoding::Zero => {
            expect_len(0, 0)?;
            Ok(vec![0.0; count])
        }
    }
}

/// The model a learner starts from when it downloads `global` in `encoding`: the global
/// model itself for `F32`, else what decoding its encoded form gives (deterministic).
pub fn start_model(global: &ModelFile, encoding: Encoding) -> Result<ModelFile> {
    match encoding {
        Encoding::F32 => Ok(global.clone()),
        e => Ok(decode(&encode(global, None, e)?, None)?.model),
    }
}

/// The models an update of the round after `global` may be relative to: the global model,
/// and what a learner decodes from its f16 and int8 forms (the aggregator's
/// `--global-encoding`). An update names its base by digest; any other base is refused.
pub struct Bases {
    round: u64,
    models: Vec<(Encoding, [u8; 32], ModelFile)>,
}

impl Bases {
    /// The bases of the round after `global`.
    pub fn of(global: &ModelFile) -> Result<Bases> {
        let mut models = Vec::with_capacity(Encoding::ALL.len());
        for encoding in Encoding::ALL {
            let model = start_model(global, encoding)?;
            models.push((encoding, model.sha256(), model));
        }
        Ok(Bases { round: global.round, models })
    }

    /// The base model of digest `named` (one of these), or the f32 global model for `None`:
    /// what an update's step is measured from (an absolute file's from the global model).
    pub fn model(&self, named: Option<[u8; 32]>) -> Option<&ModelFile> {
        match named {
            None => Some(&self.models[0].2),
            Some(digest) => self.models.iter().find(|(_, d, _)| *d == digest).map(|(_, _, m)| m),
        }
    }

    /// The f32 global model these are the bases of.
    pub fn global(&self) -> &ModelFile {
        &self.models[0].2
    }

    /// Decodes an update: a version-1 or absolute file as it is, a difference onto the base
    /// it names, which must be one of these.
    pub fn decode(&self, bytes: &[u8]) -> Result<Decoded> {
        let Some(named) = base_of(bytes)? else { return decode(bytes, None) };
        match self.models.iter().find(|(_, digest, _)| *digest == named) {
            Some((_, _, base)) => decode(bytes, Some(base)),
            None => bail!(
                "model file: holds the difference from model {}, which is neither the global model of round {} ({}) nor its f16 or int8 form",
                hex(&named),
                self.round,
                hex(&self.models[0].1)
            ),
        }
    }
}

/// The size in bytes of `model` written as an update in each encoding (for reports).
pub fn sizes(model: &ModelFile, base: &ModelFile) -> Result<Vec<(Encoding, usize)>> {
    Encoding::ALL.into_iter().map(|e| Ok((e, encode(model, Some(base), e)?.len()))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (ModelFile, ModelFile) {
        let base = ModelFile { round: 2, ..ModelFile::initial(4) };
        let other = ModelFile { round: 3, n_samples: 30_000, ..ModelFile::initial(5) };
        // A trained model is its base plus a small step: mix 99% base, 1% other.
        let mut model = base.clone();
        model.round = 3;
        model.n_samples = 30_000;
        for (t, o) in model.tensors.iter_mut().zip(&other.tensors) {
            // Initial biases are zero in both: a trained model's have moved (else the
            // step would be all zeros, which format 2 writes as a `Zero` tensor).
            let step = |i: usize| if t.shape.len() == 1 { 1e-3 * (i % 7) as f32 + 1e-4 } else { 0.0 };
            let values: Vec<f32> = t.to_f32().iter().zip(o.to_f32()).enumerate().map(|(i, (b, o))| 0.99 * b + 0.01 * o + step(i)).collect();
            *t = NamedTensor::from_f32(&t.name.clone(), &t.dims(), &values);
        }
        (model, base)
    }

    fn max_error(a: &ModelFile, b: &ModelFile) -> Vec<f32> {
        a.tensors
            .iter()
            .zip(&b.tensors)
            .map(|(x, y)| x.to_f32().iter().zip(y.to_f32()).fold(0f32, |m, (p, q)| m.max((p - q).abs())))
            .collect()
    }

    #[test]
    fn each_encoding_round_trips_within_its_precision_and_is_deterministic() {
        let (model, base) = pair();
        let sizes = sizes(&model, &base).unwrap();
        let f32_len = sizes[0].1;
        assert_eq!(f32_len, model.to_bytes().len());
        // f16: half; int8: a quarter plus scales and f32 biases (goal: <= 0.65 MB).
        assert!(sizes[1].1 < f32_len / 2 + 400, "{sizes:?}");
        assert!(sizes[2].1 <= 650_000 && sizes[2].1 * 38 < f32_len * 10, "{sizes:?}");

        let f32_file = encode(&model, Some(&base), Encoding::F32).unwrap();
        let decoded = decode(&f32_file, Some(&base)).unwrap();
        assert_eq!((decoded.model, decoded.encoding, decoded.base), (model.clone(), Encoding::F32, None));

        for encoding in [Encoding::F16, Encoding::Int8] {
            let bytes = encode(&model, Some(&base), encoding).unwrap();
            assert_eq!(bytes, encode(&model, Some(&base), encoding).unwrap());
            let decoded = decode(&bytes, Some(&base)).unwrap();
            assert_eq!(decoded.encoding, encoding);
            assert_eq!(decoded.base, Some(base.sha256()));
            assert_eq!(base_of(&bytes).unwrap(), Some(base.sha256()));
            assert_eq!((decoded.model.round, decoded.model.n_samples), (3, 30_000));
            for ((i, err), (name, _)) in max_error(&decoded.model, &model).into_iter().enumerate().zip(PARAMS) {
                let delta = model.tensors[i].to_f32().iter().zip(base.tensors[i].to_f32()).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                // f16: 11 significant bits; int8: half a step of the largest channel.
                let bound = match encoding {
                    Encoding::F16 => delta / 1024.0,
                    _ if PARAMS[i].1.len() == 1 => 0.0,
                    _ => delta / 254.0,
                };
                assert!(err <= bound * 1.01 + 1e-6, "{encoding} {name}: error {err} above {bound}");
            }
            // The decoded model is an ordinary f32 model: its bytes are a version-1 file.
            assert_eq!(ModelFile::from_bytes(&decoded.model.to_bytes()).unwrap(), decoded.model);
        }
        // An absolute (base-less) encoded model decodes without a base.
        let absolute = encode(&model, None, Encoding::Int8).unwrap();
        let decoded = ModelFile::from_bytes(&absolute).unwrap();
        assert!(max_error(&decoded, &model).iter().all(|e| *e < 0.01));
    }

    #[test]
    fn decoding_names_what_is_wrong() {
        let (model, base) = pair();
        let bytes = encode(&model, Some(&base), Encoding::Int8).unwrap();
        let err = |bytes: &[u8], base: Option<&ModelFile>| format!("{:#}", decode(bytes, base).unwrap_err());
        assert!(err(&bytes, None).contains(&format!("holds the difference from model {}, which is needed", hex(&base.sha256()))));
        assert!(err(&bytes, Some(&model)).contains("not from the model given"));
        assert!(format!("{:#}", ModelFile::from_bytes(&bytes).unwrap_err()).contains("which is needed to decode it"));
        assert!(err(&bytes[..bytes.len() / 2], Some(&base)).contains("truncated"));

        let (file, _) = parse_v2(&bytes).unwrap();
        let rewrite = |change: &dyn Fn(&mut FileV2)| {
            let mut f = file.clone();
            change(&mut f);
            postcard::to_stdvec(&f).unwrap()
        };
        let case = |change: &dyn Fn(&mut FileV2), needle: &str| {
            let text = err(&rewrite(change), Some(&base));
            assert!(text.contains(needle), "{text:?} does not contain {needle:?}");
        };
        case(&|f| f.format_version = 3, "format version 3 is not supported");
        case(&|f| f.architecture = "resnet".into(), "architecture \"resnet\"");
        case(&|f| f.spec = Some([7; 32]), "names model spec 0707");
        case(&|f| f.tensors.swap(0, 1), "expected conv1.weight in that position");
        case(&|f| f.tensors[9].shape = vec![11], "tensor fc2.bias has shape [11], expected [10]");
        case(&|f| f.tensors[6].data.pop().map(drop).unwrap_or(()), "tensor fc1.weight has 524287 bytes of data, expected 524288");
        case(
            &|f| {
                if let TensorEncoding::Int8 { scales } = &mut f.tensors[2].encoding {
                    scales.pop();
                }
            },
            "tensor conv2.weight has 63 int8 scales, expected one per output channel (64)",
        );
        case(
            &|f| {
                if let TensorEncoding::Int8 { scales } = &mut f.tensors[4].encoding {
                    scales[5] = f32::NAN;
                }
            },
            "tensor conv3.weight has an invalid int8 scale NaN for channel 5",
        );
        case(
            &|f| {
                if let TensorEncoding::Int8 { scales } = &mut f.tensors[4].encoding {
                    scales[5] = f32::MAX;
                }
                f.tensors[4].data[5 * 576] = 127;
            },
            "tensor conv3.weight has a non-finite value (NaN or infinity) at index 2880",
        );
        case(&|f| f.tensors.truncate(9), "tensor fc2.bias is missing");

        let (f16, _) = parse_v2(&encode(&model, Some(&base), Encoding::F16).unwrap()).unwrap();
        let mut bad = f16.clone();
        bad.tensors[1].data[2..4].copy_from_slice(&f16::NAN.to_le_bytes());
        let text = err(&postcard::to_stdvec(&bad).unwrap(), Some(&base));
        assert!(text.contains("tensor conv1.bias has a non-finite f16 value at index 1"), "{text}");
        // Bases: the global model and its encoded forms, nothing else.
        let bases = Bases::of(&base).unwrap();
        assert_eq!(bases.decode(&bytes).unwrap().model, decode(&bytes, Some(&base)).unwrap().model);
        let from_int8_global = encode(&model, Some(&start_model(&base, Encoding::Int8).unwrap()), Encoding::F16).unwrap();
        assert_eq!(bases.decode(&from_int8_global).unwrap().encoding, Encoding::F16);
        let text = format!("{:#}", bases.decode(&encode(&base, Some(&model), Encoding::Int8).unwrap()).unwrap_err());
        assert!(text.contains("which is neither the global model of round 2"), "{text}");
        assert!("int4".parse::<Encoding>().unwrap_err().to_string().contains("unknown encoding \"int4\""));
    }

    #[test]
    fn a_report_rides_after_the_model_and_files_without_one_read_as_before() {
        let (model, base) = pair();
        let report = Report { accuracy: 0.9712, loss: 0.0931, examples: 500 };
        for encoding in [Encoding::F16, Encoding::Int8] {
            let plain = encode(&model, Some(&base), encoding).unwrap();
            let with = with_report(&plain, &report).unwrap().unwrap();
            // Appended: the tag, two f32 and the varint 500 (2 bytes).
            assert_eq!((&with[..plain.len()], with.len() - plain.len()), (&plain[..], 1 + 4 + 4 + 2));
            let (bare, carrying) = (decode(&plain, Some(&base)).unwrap(), decode(&with, Some(&base)).unwrap());
            // A file written before the field existed: no report, the same model.
            assert_eq!(bare.report, None);
            assert_eq!(carrying.report, Some(report));
            assert_eq!((&carrying.model, carrying.encoding, carrying.base), (&bare.model, bare.encoding, bare.base));
            assert_eq!(carrying.model.to_bytes(), bare.model.to_bytes());
            assert_eq!(base_of(&with).unwrap(), Some(base.sha256()));
            assert!(format!("{:#}", with_report(&with, &report).unwrap_err()).contains("already carries a report"));
        }
        // A version-1 file (f32 update of the built-in model) has no room for one.
        assert_eq!(with_report(&encode(&model, Some(&base), Encoding::F32).unwrap(), &report).unwrap(), None);
        // Out of range: refused when written and when read, naming the field.
        let plain = encode(&model, Some(&base), Encoding::Int8).unwrap();
        let bad = [
            (Report { accuracy: 1.5, ..report }, "report: accuracy 1.5 is not in [0, 1]"),
            (Report { accuracy: f32::NAN, ..report }, "report: accuracy NaN is not in [0, 1]"),
            (Report { loss: -0.5, ..report }, "report: loss -0.5 is not a finite number >= 0"),
            (Report { loss: f32::INFINITY, ..report }, "report: loss inf is not a finite number >= 0"),
            (Report { examples: 0, ..report }, "report: examples is 0"),
        ];
        for (bad, needle) in bad {
            assert!(format!("{:#}", with_report(&plain, &bad).unwrap_err()).contains(needle), "{needle}");
            let mut bytes = plain.clone();
            bytes.extend(postcard::to_stdvec(&Some(bad)).unwrap());
            let text = format!("{:#}", decode(&bytes, Some(&base)).unwrap_err());
            assert!(text.contains(needle), "{text}");
        }
        let err = |tail: &[u8]| format!("{:#}", decode(&[&plain[..], tail].concat(), Some(&base)).unwrap_err());
        assert!(err(&[0]).contains("an empty report after the model"));
        assert!(err(&[1, 0, 0]).contains("3 bytes after the model are not a report"));
        let mut two = postcard::to_stdvec(&Some(report)).unwrap();
        two.push(9);
        assert!(err(&two).contains("1 unexpected bytes after the report"));
    }
}
