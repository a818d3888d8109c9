//! The model spec: the network a federation trains, declared by its operator in a small
//! TOML file and named everywhere by a digest.
//!
//! # The file (`model.toml`)
//!
//! ```toml
//! name = "sensor-dense"       # free text, up to 64 characters
//! features = 13               # the input: a feature count ...
//! # input = [28, 28, 1]       # ... or an image's height, width and channels
//! classes = 4                 # the softmax output's classes (2 to 256)
//!
//! [[layer]]
//! conv = 32                   # 3x3 "same" convolution with this many filters, ReLU
//! pool = true                 # then a 2x2 "same" max-pool (28 -> 14, 7 -> 4); default false
//!
//! [[layer]]
//! dense = 64                  # dense layer with this many units, ReLU
//!
//! [[layer]]
//! dropout = 0.25              # dropout on the dense layer just before (training only)
//!
//! [adam]                      # optional; these are the defaults (Keras')
//! learning_rate = 0.001
//! beta1 = 0.9
//! beta2 = 0.999
//! epsilon = 1e-7
//! ```
//!
//! Layers run in the order written: convolutions first (image input only), then dense
//! layers, each optionally followed by one dropout; the output layer (dense to `classes`,
//! softmax folded into the cross-entropy) is always added last. The flatten between the
//! last convolution and the first dense layer is channel-major (NCHW), as candle's.
//!
//! Parameters are named `conv1`, `conv2`, ... and `fc1`, `fc2`, ... (the output layer is
//! the last `fc`), each with a `.weight` (OIHW for convolutions, (out, in) for dense
//! layers) and a `.bias`: the paper's CNN ([`ModelSpec::paper_cnn`], the built-in default)
//! is exactly `conv1`-`conv3`, `fc1`, `fc2`.
//!
//! # The digest
//! A spec is read, checked, and written back in one canonical form ([`ModelSpec::canonical`]:
//! fixed key order, no comments, numbers in Rust's shortest round-trip form); its SHA-256
//! is the spec's digest ([`ModelSpec::digest`]). Formatting and comments of the operator's
//! file do not change it; any change of meaning does. The canonical bytes are what the
//! aggregator adds to IPFS (as one raw block, so the CID follows from the digest) and what
//! a model file names (format 2's `spec` field; the built-in spec is named by
//! [`crate::model::ARCHITECTURE_ID`] and written as format 1, as before specs existed).

use std::fmt;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;

pub use crate::data::InputShape;
use crate::rng::Rng;
use crate::weights::{hex, sha256, ModelFile, NamedTensor, FORMAT_VERSION, MAX_MODEL_BYTES};

/// The architecture name of every model file that follows a declared spec (its `spec`
/// field names which); the built-in spec keeps [`crate::model::ARCHITECTURE_ID`].
pub const SPEC_ARCHITECTURE: &str = "fl-model-spec-v1";

/// The largest spec file read (a spec is a few hundred bytes).
pub const MAX_SPEC_BYTES: usize = 64 << 10;

/// First line of the canonical form: says what the file is and its format version.
const CANONICAL_HEADER: &str = "# fl-model-spec v1 (canonical form: its SHA-256 is the spec's digest)\n";

/// One layer of a spec, before the output layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Layer {
    /// 3x3 "same" convolution with `filters` outputs, ReLU, then a 2x2 "same" max-pool if
    /// `pool`.
    Conv {
        /// Output channels.
        filters: usize,
        /// Whether a 2x2 "same" max-pool follows.
        pool: bool,
    },
    /// Dense layer with ReLU.
    Dense {
        /// Output units.
        units: usize,
    },
    /// Inverted dropout on the preceding dense layer's output (training only).
    Dropout {
        /// Probability of dropping a unit, in [0, 1).
        rate: f32,
    },
}

/// Adam's settings (no weight decay).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamSettings {
    /// Step size.
    pub learning_rate: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the second moment's square root.
    pub epsilon: f64,
}

impl Default for AdamSettings {
    /// Keras' defaults, which the paper uses.
    fn default() -> Self {
        AdamSettings { learning_rate: 0.001, beta1: 0.9, beta2: 0.999, epsilon: 1e-7 }
    }
}

/// A checked model spec.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// Free text naming the spec.
    pub name: String,
    /// What one example is.
    pub input: InputShape,
    /// Output classes.
    pub classes: usize,
    /// The layers before the output layer, in order.
    pub layers: Vec<Layer>,
    /// The optimiser.
    pub adam: AdamSettings,
}

/// The file as written, before checks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecFile {
    name: String,
    input: Option<Vec<usize>>,
    features: Option<usize>,
    classes: usize,
    #[serde(default)]
    layer: Vec<LayerFile>,
    adam: Option<AdamFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LayerFile {
    conv: Option<usize>,
    pool: Option<bool>,
    dense: Option<usize>,
    dropout: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdamFile {
    learning_rate: Option<f64>,
    beta1: Option<f64>,
    beta2: Option<f64>,
    epsilon: Option<f64>,
}

/// One stage of the network as the kernels run it, with its shapes (per example).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stage {
    /// Convolution `index` (1-based): input `h x w x c_in`, output `c_out` channels,
    /// pooled or not.
    Conv {
        /// 1-based number, as in the parameter names.
        index: usize,
        /// Input channels.
        c_in: usize,
        /// Output channels.
        c_out: usize,
        /// Input height.
        h: usize,
        /// Input width.
        w: usize,
        /// Whether a 2x2 "same" max-pool follows.
        pool: bool,
    },
    /// Dense layer `index` (1-based): `inputs` to `outputs`, with ReLU unless it is the
    /// output layer, and a dropout rate if one follows.
    Dense {
        /// 1-based number, as in the parameter names.
        index: usize,
        /// Input width.
        inputs: usize,
        /// Output width.
        outputs: usize,
        /// ReLU after (every dense layer but the output).
        relu: bool,
        /// Dropout rate applied to the output in training, if any.
        dropout: Option<f32>,
    },
}

impl Stage {
    /// Values per example this stage writes.
    pub fn outputs_per_example(&self) -> usize {
        match *self {
            Stage::Conv { c_out, h, w, pool, .. } => {
                let (oh, ow) = if pool { (h.div_ceil(2), w.div_ceil(2)) } else { (h, w) };
                c_out * oh * ow
            }
            Stage::Dense { outputs, .. } => outputs,
        }
    }
}

impl ModelSpec {
    /// The paper's CNN: 28x28x1 input, Conv(32)-Pool-Conv(64)-Pool-Conv(128)-Pool(same),
    /// Dense 256, Dropout 0.5, Dense 10; Adam with Keras' defaults. The built-in spec.
    pub fn paper_cnn() -> ModelSpec {
        ModelSpec {
            name: "paper-mnist-cnn".into(),
            input: InputShape::Image { height: 28, width: 28, channels: 1 },
            classes: 10,
            layers: vec![
                Layer::Conv { filters: 32, pool: true },
                Layer::Conv { filters: 64, pool: true },
                Layer::Conv { filters: 128, pool: true },
                Layer::Dense { units: 256 },
                Layer::Dropout { rate: 0.5 },
            ],
            adam: AdamSettings::default(),
        }
    }

    /// Reads and checks a spec file; errors name the file.
    pub fn load(path: &Path) -> Result<ModelSpec> {
        let meta = std::fs::metadata(path).with_context(|| format!("reading model spec {}", path.display()))?;
        ensure!(
            meta.len() <= MAX_SPEC_BYTES as u64,
            "model spec {}: {} bytes, more than a spec can be ({MAX_SPEC_BYTES})",
            path.display(),
            meta.len()
        );
        let text = std::fs::read_to_string(path).with_context(|| format!("reading model spec {}", path.display()))?;
        ModelSpec::parse(&text).with_context(|| format!("model spec {}", path.display()))
    }

    /// Parses and checks the text of a spec file.
    pub fn parse(text: &str) -> Result<ModelSpec> {
        ensure!(text.len() <= MAX_SPEC_BYTES, "{} bytes, more than a spec can be ({MAX_SPEC_BYTES})", text.len());
        let file: SpecFile = toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?;
        let input = match (file.input, file.features) {
            (Some(dims), None) => {
                ensure!(dims.len() == 3, "input = {dims:?}: give [height, width, channels]");
                InputShape::Image { height: dims[0], width: dims[1], channels: dims[2] }
            }
            (None, Some(n)) => InputShape::Features(n),
            (Some(_), Some(_)) => bail!("give either input = [height, width, channels] or features = N, not both"),
            (None, None) => bail!("no input: give input = [height, width, channels] or features = N"),
        };
        let mut layers = Vec::with_capacity(file.layer.len());
        for (i, layer) in file.layer.iter().enumerate() {
            let at = format!("layer {} ([[layer]] number {} in the file)", i + 1, i + 1);
            let layer = match (layer.conv, layer.dense, layer.dropout) {
                (Some(filters), None, None) => Layer::Conv { filters, pool: layer.pool.unwrap_or(false) },
                (None, Some(units), None) => {
                    ensure!(layer.pool.is_none(), "{at}: pool belongs to a conv layer");
                    Layer::Dense { units }
                }
                (None, None, Some(rate)) => {
                    ensure!(layer.pool.is_none(), "{at}: pool belongs to a conv layer");
                    Layer::Dropout { rate: rate as f32 }
                }
                _ => bail!("{at}: give exactly one of conv = FILTERS, dense = UNITS or dropout = RATE"),
            };
            layers.push(layer);
        }
        let defaults = AdamSettings::default();
        let adam = match file.adam {
            None => defaults,
            Some(a) => AdamSettings {
                learning_rate: a.learning_rate.unwrap_or(defaults.learning_rate),
                beta1: a.beta1.unwrap_or(defaults.beta1),
                beta2: a.beta2.unwrap_or(defaults.beta2),
                epsilon: a.epsilon.unwrap_or(defaults.epsilon),
            },
        };
        let spec = ModelSpec { name: file.name, input, classes: file.classes, layers, adam };
        spec.check()?;
        Ok(spec)
    }

    /// Checks what the kernels support and the sizes a model file can hold.
    pub fn check(&self) -> Result<()> {
        ensure!(
            !self.name.is_empty() && self.name.chars().count() <= 64 && !self.name.chars().any(char::is_control),
            "name {:?} must be 1 to 64 characters, none a control character",
            self.name
        );
        match self.input {
            InputShape::Image { height, width, channels } => ensure!(
                (1..=4096).contains(&height) && (1..=4096).contains(&width) && (1..=64).contains(&channels),
                "input [{height}, {width}, {channels}]: height and width must be 1 to 4096, channels 1 to 64"
            ),
            InputShape::Features(n) => ensure!((1..=1 << 20).contains(&n), "features = {n}: must be 1 to {}", 1 << 20),
        }
        ensure!((2..=256).contains(&self.classes), "classes = {}: must be 2 to 256", self.classes);
        let mut seen_dense = false;
        let mut previous: Option<Layer> = None;
        for (i, layer) in self.layers.iter().enumerate() {
            let at = format!("layer {}", i + 1);
            match *layer {
                Layer::Conv { filters, .. } => {
                    ensure!(matches!(self.input, InputShape::Image { .. }), "{at}: a conv layer needs an image input (input = [h, w, c])");
                    ensure!(!seen_dense, "{at}: conv layers must come before every dense layer");
                    ensure!((1..=4096).contains(&filters), "{at}: conv = {filters}: filters must be 1 to 4096");
                }
                Layer::Dense { units } => {
                    seen_dense = true;
                    ensure!((1..=65536).contains(&units), "{at}: dense = {units}: units must be 1 to 65536");
                }
                Layer::Dropout { rate } => {
                    ensure!(matches!(previous, Some(Layer::Dense { .. })), "{at}: dropout must follow a dense layer");
                    ensure!((0.0..1.0).contains(&rate), "{at}: dropout = {rate}: the rate must be in [0, 1)");
                }
            }
            previous = Some(*layer);
        }
        let AdamSettings { learning_rate, beta1, beta2, epsilon } = self.adam;
        ensure!(learning_rate.is_finite() && learning_rate > 0.0, "adam.learning_rate = {learning_rate}: must be positive");
        ensure!((0.0..1.0).contains(&beta1), "adam.beta1 = {beta1}: must be in [0, 1)");
        ensure!((0.0..1.0).contains(&beta2), "adam.beta2 = {beta2}: must be in [0, 1)");
        ensure!(epsilon.is_finite() && epsilon > 0.0, "adam.epsilon = {epsilon}: must be positive");
        let count = self.stages().iter().try_fold(0u64, |total, stage| {
            let (weights, biases) = stage_param_counts(stage);
            total.checked_add(weights)?.checked_add(biases)
        });
        let limit = MAX_MODEL_BYTES / 4 - 1024;
        ensure!(
            count.is_some_and(|c| c <= limit),
            "the network has {} parameters, more than a model file holds ({limit})",
            count.map_or("too many".to_string(), |c| c.to_string())
        );
        Ok(())
    }

    /// The stages the network runs, with their shapes.
    pub fn stages(&self) -> Vec<Stage> {
        let mut stages = Vec::new();
        let (mut h, mut w, mut c) = match self.input {
            InputShape::Image { height, width, channels } => (height, width, channels),
            InputShape::Features(n) => (1, 1, n),
        };
        let (mut convs, mut denses) = (0, 0);
        for layer in &self.layers {
            match *layer {
                Layer::Conv { filters, pool } => {
                    convs += 1;
                    stages.push(Stage::Conv { index: convs, c_in: c, c_out: filters, h, w, pool });
                    if pool {
                        (h, w) = (h.div_ceil(2), w.div_ceil(2));
                    }
                    c = filters;
                }
                Layer::Dense { units } => {
                    denses += 1;
                    stages.push(Stage::Dense { index: denses, inputs: h * w * c, outputs: units, relu: true, dropout: None });
                    (h, w, c) = (1, 1, units);
                }
                Layer::Dropout { rate } => {
                    if let Some(Stage::Dense { dropout, .. }) = stages.last_mut() {
                        *dropout = Some(rate);
                    }
                }
            }
        }
        stages.push(Stage::Dense { index: denses + 1, inputs: h * w * c, outputs: self.classes, relu: false, dropout: None });
        stages
    }

    /// Every parameter with its shape, in model-file order.
    pub fn params(&self) -> Vec<(String, Vec<usize>)> {
        let mut params = Vec::new();
        for stage in self.stages() {
            match stage {
                Stage::Conv { index, c_in, c_out, .. } => {
                    params.push((format!("conv{index}.weight"), vec![c_out, c_in, 3, 3]));
                    params.push((format!("conv{index}.bias"), vec![c_out]));
                }
                Stage::Dense { index, inputs, outputs, .. } => {
                    params.push((format!("fc{index}.weight"), vec![outputs, inputs]));
                    params.push((format!("fc{index}.bias"), vec![outputs]));
                }
            }
        }
        params
    }

    /// Total number of parameters.
    pub fn param_count(&self) -> usize {
        self.params().iter().map(|(_, shape)| shape.iter().product::<usize>()).sum()
    }

    /// The canonical text of the spec (see the module docs): what the digest covers.
    pub fn canonical(&self) -> String {
        let mut out = String::from(CANONICAL_HEADER);
        // toml's string form escapes what needs escaping.
        out.push_str(&format!("name = {}\n", toml::Value::String(self.name.clone())));
        match self.input {
            InputShape::Image { height, width, channels } => out.push_str(&format!("input = [{height}, {width}, {channels}]\n")),
            InputShape::Features(n) => out.push_str(&format!("features = {n}\n")),
        }
        out.push_str(&format!("classes = {}\n", self.classes));
        for layer in &self.layers {
            out.push_str("\n[[layer]]\n");
            match *layer {
                Layer::Conv { filters, pool } => out.push_str(&format!("conv = {filters}\npool = {pool}\n")),
                Layer::Dense { units } => out.push_str(&format!("dense = {units}\n")),
                Layer::Dropout { rate } => out.push_str(&format!("dropout = {}\n", float(rate as f64))),
            }
        }
        let a = self.adam;
        out.push_str(&format!(
            "\n[adam]\nlearning_rate = {}\nbeta1 = {}\nbeta2 = {}\nepsilon = {}\n",
            float(a.learning_rate),
            float(a.beta1),
            float(a.beta2),
            float(a.epsilon)
        ));
        out
    }

    /// SHA-256 of [`ModelSpec::canonical`].
    pub fn digest(&self) -> [u8; 32] {
        sha256(self.canonical().as_bytes())
    }

    /// Whether this is the built-in spec (the paper's CNN): its model files are format 1
    /// and name [`crate::model::ARCHITECTURE_ID`] rather than a digest.
    pub fn is_builtin(&self) -> bool {
        self.digest() == ModelSpec::paper_cnn().digest()
    }

    /// What a model file following this spec puts in its `spec` field: `None` for the
    /// built-in spec.
    pub fn file_digest(&self) -> Option<[u8; 32]> {
        (!self.is_builtin()).then(|| self.digest())
    }

    /// Reads a spec from its canonical bytes as fetched by digest, checking the digest.
    pub fn from_canonical(bytes: &[u8], digest: &[u8; 32]) -> Result<ModelSpec> {
        let found = sha256(bytes);
        ensure!(&found == digest, "model spec: the bytes fetched have digest {}, not the {} asked for", hex(&found), hex(digest));
        let text = std::str::from_utf8(bytes).context("model spec: not UTF-8 text")?;
        let spec = ModelSpec::parse(text).with_context(|| format!("model spec {}", hex(digest)))?;
        ensure!(spec.canonical() == text, "model spec {}: not in canonical form", hex(digest));
        Ok(spec)
    }

    /// The spec of a federation whose registry records `digest` (`None`: the built-in
    /// paper CNN), its canonical bytes fetched with `fetch` (from IPFS, by digest) and
    /// checked.
    pub fn resolve(digest: Option<[u8; 32]>, fetch: impl FnOnce(&[u8; 32]) -> Result<Vec<u8>>) -> Result<ModelSpec> {
        match digest {
            None => Ok(ModelSpec::paper_cnn()),
            Some(digest) => {
                let bytes = fetch(&digest).with_context(|| format!("fetching the federation's model spec {}", hex(&digest)))?;
                ModelSpec::from_canonical(&bytes, &digest)
            }
        }
    }

    /// The initial model for `seed` (round 0, no samples): Keras' defaults (Glorot-uniform
    /// weights, zero biases), drawn from `Rng::new(seed)` in parameter order.
    pub fn initial_model(&self, seed: u64) -> ModelFile {
        let mut rng = Rng::new(seed);
        let tensors = self
            .params()
            .iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                let values: Vec<f32> = if shape.len() == 1 {
                    vec![0.0; n]
                } else {
                    // Glorot/Xavier uniform: limit = sqrt(6 / (fan_in + fan_out)), where for
                    // a convolution both fans include the kernel area (Keras' convention).
                    let receptive: usize = shape[2..].iter().product();
                    let limit = (6.0 / ((shape[1] + shape[0]) * receptive) as f64).sqrt() as f32;
                    (0..n).map(|_| (rng.next_f32() * 2.0 - 1.0) * limit).collect()
                };
                NamedTensor::from_f32(name, shape, &values)
            })
            .collect();
        ModelFile {
            format_version: FORMAT_VERSION,
            architecture: self.architecture().into(),
            spec: self.file_digest(),
            round: 0,
            n_samples: 0,
            tensors,
        }
    }

    /// The architecture a model file of this spec names.
    pub fn architecture(&self) -> &'static str {
        if self.is_builtin() {
            crate::model::ARCHITECTURE_ID
        } else {
            SPEC_ARCHITECTURE
        }
    }

    /// Checks that `model` follows this spec: the spec it names, then every tensor's name
    /// and shape in order (values were checked when the file was read).
    pub fn check_model(&self, model: &ModelFile) -> Result<()> {
        ensure!(
            model.spec == self.file_digest() && model.architecture == self.architecture(),
            "model file: follows {}, but the federation's model is {}",
            describe(&model.architecture, model.spec),
            self
        );
        let expected = self.params();
        let listed: Vec<(&str, &[u64])> = model.tensors.iter().map(|t| (t.name.as_str(), t.shape.as_slice())).collect();
        crate::weights::check_tensor_list(&listed, &expected)
    }

    /// A table of the layers, output shapes and parameter counts, ending with
    /// `total params: N`.
    pub fn summary(&self) -> String {
        let mut out = format!("model spec: {self}\n{:<26} {:<16} {:>9}\n", "layer", "output shape", "params");
        let input = match self.input {
            InputShape::Image { height, width, channels } => format!("({channels}, {height}, {width})"),
            InputShape::Features(n) => format!("({n})"),
        };
        out.push_str(&format!("{:<26} {input:<16} {:>9}\n", "input", 0));
        for stage in self.stages() {
            let (weights, biases) = stage_param_counts(&stage);
            let params = weights + biases;
            match stage {
                Stage::Conv { index, c_out, h, w, pool, .. } => {
                    out.push_str(&format!(
                        "{:<26} {:<16} {params:>9}\n",
                        format!("conv{index} 3x3 same + relu"),
                        format!("({c_out}, {h}, {w})")
                    ));
                    if pool {
                        let shape = format!("({c_out}, {}, {})", h.div_ceil(2), w.div_ceil(2));
                        out.push_str(&format!("{:<26} {shape:<16} {:>9}\n", "maxpool 2x2 same", 0));
                    }
                }
                Stage::Dense { index, outputs, relu, dropout, .. } => {
                    let what = if relu { format!("fc{index} dense + relu") } else { format!("fc{index} dense (logits)") };
                    out.push_str(&format!("{what:<26} {:<16} {params:>9}\n", format!("({outputs})")));
                    if let Some(rate) = dropout {
                        out.push_str(&format!("{:<26} {:<16} {:>9}\n", format!("dropout {rate} (training)"), format!("({outputs})"), 0));
                    }
                }
            }
        }
        out.push_str(&format!("total params: {}\n", self.param_count()));
        out
    }
}

/// How a model file's architecture and spec fields read in messages.
pub fn describe(architecture: &str, spec: Option<[u8; 32]>) -> String {
    match spec {
        None => format!("the built-in {architecture}"),
        Some(digest) => format!("model spec {}", hex(&digest)),
    }
}

impl fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_builtin() {
            write!(f, "the built-in {} ({})", crate::model::ARCHITECTURE_ID, self.name)
        } else {
            write!(f, "{:?} (model spec {})", self.name, hex(&self.digest()))
        }
    }
}

/// Weight and bias counts of a stage, in u64 (a spec being checked may overflow usize
/// products on 32-bit boards).
fn stage_param_counts(stage: &Stage) -> (u64, u64) {
    match *stage {
        Stage::Conv { c_in, c_out, .. } => (c_out as u64 * c_in as u64 * 9, c_out as u64),
        Stage::Dense { inputs, outputs, .. } => ((outputs as u64).saturating_mul(inputs as u64), outputs as u64),
    }
}

/// A float as the canonical form writes it: Rust's shortest round-trip form, always with
/// a decimal point or exponent so that TOML reads it back as a float.
fn float(v: f64) -> String {
    let text = format!("{v:?}");
    if text.contains(['.', 'e', 'E']) || !v.is_finite() {
        text
    } else {
        format!("{text}.0")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_papers_cnn_is_the_builtin_spec() {
        let spec = ModelSpec::paper_cnn();
        let names: Vec<(String, Vec<usize>)> = crate::model::PARAMS.iter().map(|(n, s)| (n.to_string(), s.to_vec())).collect();
        assert_eq!(spec.params(), names);
        assert_eq!(spec.param_count(), 619_786);
        assert!(spec.is_builtin());
        assert_eq!(spec.file_digest(), None);
        assert!(spec.summary().ends_with("total params: 619786\n"));
        // The canonical form reads back as itself.
        assert_eq!(ModelSpec::parse(&spec.canonical()).unwrap(), spec);
        assert_eq!(ModelSpec::from_canonical(spec.canonical().as_bytes(), &spec.digest()).unwrap(), spec);
    }

    #[test]
    fn formatting_does_not_change_the_digest_and_meaning_does() {
        let a = ModelSpec::parse("name = \"s\"\nfeatures = 13\nclasses = 4\n[[layer]]\ndense = 8\n[[layer]]\ndropout = 0.25\n").unwrap();
        let b = ModelSpec::parse(
            "# sensors\nclasses=4\nname='s'\nfeatures=13\n\n[[layer]]\ndense=8\n[[layer]]\ndropout=0.25\n[adam]\nlearning_rate=0.001\n",
        )
        .unwrap();
        assert_eq!(a.digest(), b.digest());
        let c = ModelSpec::parse("name = \"s\"\nfeatures = 13\nclasses = 4\n[[layer]]\ndense = 9\n").unwrap();
        assert_ne!(a.digest(), c.digest());
        assert!(!a.is_builtin());
        assert_eq!(
            a.params(),
            vec![
                ("fc1.weight".to_string(), vec![8, 13]),
                ("fc1.bias".to_string(), vec![8]),
                ("fc2.weight".to_string(), vec![4, 8]),
                ("fc2.bias".to_string(), vec![4]),
            ]
        );
        let model = a.initial_model(1);
        assert_eq!((model.spec, model.architecture.as_str()), (Some(a.digest()), SPEC_ARCHITECTURE));
        a.check_model(&model).unwrap();
        let err = c.check_model(&model).unwrap_err().to_string();
        assert!(err.contains("follows model spec") && err.contains("but the federation's model is"), "{err}");
        let err = ModelSpec::from_canonical(a.canonical().as_bytes(), &c.digest()).unwrap_err().to_string();
        assert!(err.contains("not the"), "{err}");
    }

    #[test]
    fn a_conv_net_without_pooling_has_the_shapes_it_says() {
        let spec =
            ModelSpec::parse("name = \"cam\"\ninput = [9, 7, 3]\nclasses = 3\n[[layer]]\nconv = 4\n[[layer]]\nconv = 5\npool = true\n")
                .unwrap();
        assert_eq!(spec.params()[0].1, vec![4, 3, 3, 3]);
        assert_eq!(spec.params()[4], ("fc1.weight".to_string(), vec![3, 5 * 5 * 4]));
        assert_eq!(spec.param_count(), 4 * 27 + 4 + 5 * 36 + 5 + 3 * 100 + 3);
    }

    #[test]
    fn every_mistake_is_named() {
        let cases: &[(&str, &str)] = &[
            ("features = 3\nclasses = 2\n", "missing field `name`"),
            ("name = \"x\"\nclasses = 2\n", "no input"),
            ("name = \"x\"\nfeatures = 3\ninput = [1, 1, 1]\nclasses = 2\n", "not both"),
            ("name = \"x\"\ninput = [28, 28]\nclasses = 2\n", "give [height, width, channels]"),
            ("name = \"x\"\nfeatures = 3\nclasses = 1\n", "classes = 1: must be 2 to 256"),
            ("name = \"x\"\nfeatures = 3\nclasses = 2\n[[layer]]\nconv = 3\n", "layer 1: a conv layer needs an image input"),
            (
                "name = \"x\"\ninput = [4, 4, 1]\nclasses = 2\n[[layer]]\ndense = 3\n[[layer]]\nconv = 3\n",
                "layer 2: conv layers must come before",
            ),
            ("name = \"x\"\nfeatures = 3\nclasses = 2\n[[layer]]\ndropout = 0.5\n", "layer 1: dropout must follow a dense layer"),
            ("name = \"x\"\nfeatures = 3\nclasses = 2\n[[layer]]\ndense = 3\n[[layer]]\ndropout = 1.0\n", "the rate must be in [0, 1)"),
            (
                "name = \"x\"\nfeatures = 3\nclasses = 2\n[[layer]]\ndense = 3\ndropout = 0.5\n",
                "layer 1 ([[layer]] number 1 in the file): give exactly one of",
            ),
            ("name = \"x\"\nfeatures = 3\nclasses = 2\n[[layer]]\ndense = 3\npool = true\n", "pool belongs to a conv layer"),
            ("name = \"x\"\nfeatures = 3\nclasses = 2\nlayers = 3\n", "unknown field `layers`"),
            ("name = \"x\"\nfeatures = 3\nclasses = 2\n[adam]\nlearning_rate = -1.0\n", "adam.learning_rate = -1: must be positive"),
            ("name = \"x\"\nfeatures = 1000000\nclasses = 2\n[[layer]]\ndense = 65536\n", "more than a model file holds"),
            ("name = \"\"\nfeatures = 3\nclasses = 2\n", "must be 1 to 64 characters"),
        ];
        for (text, expected) in cases {
            let err = format!("{:#}", ModelSpec::parse(text).unwrap_err());
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }
}
