//! Aggregation rules: how the learners' updates of a round become the next global model.
//! FedAvg, or one of the Byzantine-robust rules that bound what a few bad updates (faulty
//! boards, poisoned data, attackers) can do to it, optionally after clipping every
//! update's distance from the previous global model.
//!
//! # Rules
//!
//! A rule is written as text (a flag value, a log line) in one canonical form;
//! `text.parse::<Rule>()` reads it and `to_string()` writes it back unchanged.
//!
//! | text             | rule                         | weights by `n_samples` | needs N ≥ |
//! |------------------|------------------------------|------------------------|-----------|
//! | `fedavg`         | federated averaging          | yes                    | 1         |
//! | `median`         | coordinate-wise median       | no                     | 1         |
//! | `trimmed-mean:B` | coordinate-wise trimmed mean | no                     | 1         |
//! | `krum:F`         | Krum                         | no (picks one update)  | 2F + 3    |
//! | `multi-krum:F`   | Multi-Krum                   | among the selected     | 2F + 3    |
//!
//! B is the fraction trimmed at each end (0 ≤ B < 0.5, written as Rust's shortest f64
//! text, e.g. `trimmed-mean:0.2`); F ≥ 0 the number of bad updates to tolerate.
//!
//! - `fedavg` (McMahan et al., "Communication-Efficient Learning of Deep Networks from
//!   Decentralized Data", AISTATS 2017) is exactly [`crate::fedavg::FedAvg`], which it runs:
//!   the mean weighted by each update's `n_samples`, summed in f64 in ascending node id
//!   order, divided by the total and rounded to f32. Without clipping its bytes are those
//!   of `FedAvg` over the same updates. One update can move it anywhere.
//! - `median` and `trimmed-mean:B` (Yin, Chen, Ramchandran and Bartlett, "Byzantine-Robust
//!   Distributed Learning: Towards Optimal Statistical Rates", ICML 2018) treat every
//!   coordinate on its own. The median of N values (ordered by `f32::total_cmp`) is the
//!   middle one, or for even N the mean of the two middle ones computed in f64 and rounded
//!   to f32. The trimmed mean drops the k = floor(B × N) smallest and k largest values of
//!   each coordinate (rounded down: `trimmed-mean:0.2` trims nothing below N = 5, one
//!   value at each end for N = 5 to 9) and returns the mean of the N − 2k others, summed
//!   in f64 in ascending value order from +0, divided by N − 2k and rounded to f32;
//!   `trimmed-mean:0` is the unweighted mean. A coordinate stays within the range of the
//!   honest values as long as fewer than half the updates (median) or at most k
//!   (trimmed mean) are bad in that coordinate.
//! - `krum:F` (Blanchard, El Mhamdi, Guerraoui and Stainer, "Machine Learning with
//!   Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017) scores each update
//!   by the sum of its squared L2 distances to its N − F − 2 nearest other updates
//!   (distances summed in f64 over the coordinates in order, then the nearest ones summed
//!   in ascending order) and returns the update with the lowest score, ties going to the
//!   lowest node id, unchanged: one learner's model, so the others' data only count
//!   through the choice. Its guarantee needs N ≥ 2F + 3 and at most F bad updates.
//! - `multi-krum:F` (same paper) computes the same scores and returns the FedAvg of the
//!   m updates with the lowest (score, node id). The paper leaves m free; here m = N − F:
//!   every update but the F that Krum finds most suspect. With F = 0 it is FedAvg of all.
//!
//! The robust rules count each learner once: `n_samples` is a learner's own claim, and a
//! rule that trusted it would let one liar outweigh everybody. Multi-Krum weights by it
//! only among updates that passed the selection. All these rules assume the honest
//! updates are alike; when learners' data differ a lot (non-IID shards), they also
//! discard honest minorities and the global model learns less from them.
//!
//! # Clipping (`clip_norm`)
//!
//! With a clip norm C (norm bounding, Sun et al., "Can You Really Backdoor Federated
//! Learning?", 2019), each update's L2 distance from the previous global model is computed
//! in f64 over all coordinates in order; an update farther than C becomes
//! `previous + (update − previous) × (C / distance)`, computed in f64 and rounded to f32
//! (so its distance may exceed C by that rounding). The rule then sees the clipped
//! values; [`Outcome::clipped`] lists the node ids concerned. Clipping limits how far one
//! update can pull an average; it does not remove it.
//!
//! # Output
//!
//! [`Outcome::model`] has the first update's format and architecture, the largest input
//! round (callers set the round they publish) and as `n_samples` the total of the
//! [`Outcome::selected`] updates.
//!
//! # Determinism
//!
//! Updates are added in ascending node id order, so a result does not depend on the
//! order they arrived in: it is a function of the inputs' bytes and node ids only,
//! identical on x86-64 (with or without AVX2 or AVX-512) and aarch64 whatever the thread
//! count. The code is single-threaded scalar loops in a fixed order, uses no SIMD
//! intrinsics or fused multiply-add, and Rust never reassociates or contracts
//! floating-point operations, so each addition happens in the order written, in IEEE-754
//! arithmetic; processing in chunks (below) never changes an addition order. The tests
//! pin a SHA-256 per rule (computed on x86-64) over fixed seeded inputs.
//!
//! # Cost
//!
//! With d values per model: fedavg O(N·d); median O(N·d) (a selection per coordinate);
//! trimmed mean O(N log N·d) (a sort per coordinate); Krum and Multi-Krum O(N²·d) for the
//! pairwise distances. `make bench-rules` measures them on the paper's CNN: for N = 100
//! on one x86-64 core, about 0.1 s for fedavg, 0.8 s median, 1.5 to 2 s trimmed mean and Krum.
//!
//! # Memory and disk
//!
//! `fedavg` streams: a running f64 sum (twice a model's size), whatever N. The other rules
//! need every update at once but never hold N models in memory: each added update (after
//! clipping) is written to one temporary spill file of N × model size bytes (in
//! [`std::env::temp_dir`] or [`Aggregation::with_spill_dir`], removed when the
//! aggregation is dropped or finished), and [`Aggregation::finish`] reads it back in
//! chunks of coordinates: N × width × 4 bytes ≤ 64 MiB, at least 1,024 coordinates wide
//! (so for N above 16,384 a chunk takes N × 4 KiB). Krum's N × N matrix of squared
//! distances accumulates chunk by chunk; Multi-Krum re-reads its selected updates one at
//! a time. Peak memory is thus about 64 MiB + a few model sizes (the previous model when
//! clipping, one update, the result) + N² × 8 bytes for the Krum rules (80 MB at
//! N = 3,162), plus N × model size on disk: 75 MiB of RSS at N = 100 with the paper's
//! 2.4 MB model (`make bench-rules`), against 16 MiB for fedavg.

use std::borrow::Cow;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{anyhow, bail, ensure, Context, Result};

use crate::fedavg::FedAvg;
use crate::weights::{check_layout, ModelFile, NamedTensor};

/// How the updates of a round are combined (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    /// Sample-weighted mean: [`FedAvg`].
    FedAvg,
    /// Coordinate-wise median, unweighted.
    Median,
    /// Coordinate-wise mean without the floor(beta × N) smallest and largest values.
    TrimmedMean {
        /// Fraction trimmed at each end, 0 ≤ beta < 0.5.
        beta: f64,
    },
    /// The update closest to its N − f − 2 nearest neighbours.
    Krum {
        /// Number of faulty updates to tolerate.
        f: usize,
    },
    /// FedAvg of the N − f updates with the best Krum scores.
    MultiKrum {
        /// Number of faulty updates to tolerate.
        f: usize,
    },
}

/// The valid rule texts, for error messages.
const VALID_RULES: &str = "fedavg, median, trimmed-mean:B (0 <= B < 0.5), krum:F or multi-krum:F (F >= 0)";

impl Rule {
    /// The fewest updates the rule accepts: 1, or 2F + 3 for Krum and Multi-Krum
    /// (Blanchard et al.'s condition N ≥ 2F + 3).
    pub fn min_inputs(&self) -> usize {
        match *self {
            Rule::FedAvg | Rule::Median | Rule::TrimmedMean { .. } => 1,
            Rule::Krum { f } | Rule::MultiKrum { f } => f.saturating_mul(2).saturating_add(3),
        }
    }

    /// True if updates count in proportion to their `n_samples` (FedAvg, and Multi-Krum
    /// among the selected updates).
    pub fn weighted_by_samples(&self) -> bool {
        matches!(self, Rule::FedAvg | Rule::MultiKrum { .. })
    }

    /// Rejects parameters out of range (also for rules built in code, not parsed).
    fn check(&self) -> Result<()> {
        if let Rule::TrimmedMean { beta } = *self {
            ensure!(!beta.is_nan(), "{self}: B is not a number, expected 0 <= B < 0.5");
            ensure!((0.0..0.5).contains(&beta), "{self}: B must be at least 0 and below 0.5");
        }
        Ok(())
    }
}

impl FromStr for Rule {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Rule> {
        let (name, parameter) = match text.split_once(':') {
            Some((name, parameter)) => (name, Some(parameter)),
            None => (text, None),
        };
        let count = |parameter: &str| -> Result<usize> {
            parameter.parse().map_err(|_| anyhow!("{text}: F {parameter:?} is not a whole number of faulty updates (F >= 0)"))
        };
        let rule = match (name, parameter) {
            ("fedavg", None) => Rule::FedAvg,
            ("median", None) => Rule::Median,
            ("trimmed-mean", Some(parameter)) => {
                let beta: f64 =
                    parameter.parse().map_err(|_| anyhow!("{text}: B {parameter:?} is not a number (e.g. trimmed-mean:0.2)"))?;
                // + 0.0 turns -0 into 0, so that one rule has one text.
                Rule::TrimmedMean { beta: beta + 0.0 }
            }
            ("krum", Some(parameter)) => Rule::Krum { f: count(parameter)? },
            ("multi-krum", Some(parameter)) => Rule::MultiKrum { f: count(parameter)? },
            ("fedavg" | "median", Some(_)) => bail!("{text}: {name} takes no parameter (write {name})"),
            ("trimmed-mean", None) => bail!("{text}: missing parameter, write trimmed-mean:B with 0 <= B < 0.5 (e.g. trimmed-mean:0.2)"),
            ("krum" | "multi-krum", None) => {
                bail!("{text}: missing parameter, write {name}:F with F the number of faulty updates to tolerate (e.g. {name}:1)")
            }
            _ => bail!("unknown aggregation rule {text:?}: expected {VALID_RULES}"),
        };
        rule.check()?;
        Ok(rule)
    }
}

impl fmt::Display for Rule {
    /// The canonical text; B is written as Rust's shortest f64 text that reads back the
    /// same (`trimmed-mean:0.2`).
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::FedAvg => write!(out, "fedavg"),
            Rule::Median => write!(out, "median"),
            Rule::TrimmedMean { beta } => write!(out, "trimmed-mean:{beta}"),
            Rule::Krum { f } => write!(out, "krum:{f}"),
            Rule::MultiKrum { f } => write!(out, "multi-krum:{f}"),
        }
    }
}

/// How a global model is made: the rule, and the clip norm applied to every update first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recipe {
    /// The aggregation rule.
    pub rule: Rule,
    /// If set, updates farther than this (L2) from the previous global model are scaled
    /// back onto that sphere before the rule sees them.
    pub clip_norm: Option<f64>,
}

/// Reads a clip norm (a flag value): a finite number above 0.
pub fn parse_clip_norm(text: &str) -> Result<f64> {
    let norm: f64 = text.parse().map_err(|_| anyhow!("clip norm {text:?} is not a number"))?;
    check_clip_norm(norm)?;
    Ok(norm)
}

fn check_clip_norm(norm: f64) -> Result<()> {
    ensure!(norm.is_finite() && norm > 0.0, "clip norm {norm} must be a finite number above 0");
    Ok(())
}

/// The result of [`Aggregation::finish`].
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The aggregated model.
    pub model: ModelFile,
    /// Node ids the result is drawn from (Krum: the one chosen; Multi-Krum: the N − F
    /// chosen; the other rules: all), ascending.
    pub selected: Vec<u64>,
    /// Per input, by ascending node id: (node id, Krum score) for Krum and Multi-Krum,
    /// empty for the other rules.
    pub scores: Vec<(u64, f64)>,
    /// Node ids of the updates that were clipped, ascending.
    pub clipped: Vec<u64>,
}

/// Chunks of coordinates read back from the spill file hold at most this many bytes.
const CHUNK_BUDGET: usize = 64 << 20;
/// ... and are at least this many coordinates wide, so reads stay large for any N.
const MIN_CHUNK_WIDTH: usize = 1024;

/// Aggregates one round's updates under a [`Recipe`], one update at a time.
#[derive(Debug)]
pub struct Aggregation {
    recipe: Recipe,
    /// Format, architecture, tensor names and shapes (without data) every update must
    /// match: the previous global model's if given, else the first update's.
    template: Option<ModelFile>,
    /// Whether `template` comes from the previous global model (for error messages).
    template_is_previous: bool,
    /// The previous global model's values, flat, when clipping.
    previous: Option<Vec<f32>>,
    /// Values per model.
    n_values: usize,
    node_ids: Vec<u64>,
    n_samples: Vec<u64>,
    total_samples: u64,
    max_round: u64,
    clipped: Vec<u64>,
    store: Store,
    chunk_budget: usize,
    min_chunk_width: usize,
}

/// Where the updates go.
#[derive(Debug)]
enum Store {
    /// FedAvg's running sum.
    Streaming(FedAvg),
    /// Every update's values in a spill file (created by the first update) in `dir`.
    Spilled { dir: PathBuf, spill: Option<Spill> },
}

impl Aggregation {
    /// An empty aggregation. `previous` is the global model the updates started from:
    /// required when `recipe.clip_norm` is set, and if given every update must match its
    /// shapes.
    pub fn new(recipe: &Recipe, previous: Option<&ModelFile>) -> Result<Aggregation> {
        let rule = recipe.rule;
        rule.check()?;
        if let Some(norm) = recipe.clip_norm {
            check_clip_norm(norm)?;
            ensure!(previous.is_some(), "{rule}: clipping to norm {norm} needs the previous global model");
        }
        let store = match rule {
            Rule::FedAvg => Store::Streaming(FedAvg::new()),
            _ => Store::Spilled { dir: std::env::temp_dir(), spill: None },
        };
        let mut aggregation = Aggregation {
            recipe: *recipe,
            template: None,
            template_is_previous: false,
            previous: None,
            n_values: 0,
            node_ids: Vec::new(),
            n_samples: Vec::new(),
            total_samples: 0,
            max_round: 0,
            clipped: Vec::new(),
            store,
            chunk_budget: CHUNK_BUDGET,
            min_chunk_width: MIN_CHUNK_WIDTH,
        };
        if let Some(previous) = previous {
            aggregation.check(previous, "the previous global model")?;
            aggregation.set_template(previous);
            aggregation.template_is_previous = true;
            if recipe.clip_norm.is_some() {
                aggregation.previous = Some(values(previous).collect());
            }
        }
        Ok(aggregation)
    }

    /// Puts the spill file in `dir` instead of [`std::env::temp_dir`]; takes effect when
    /// the first update is added (FedAvg spills nothing).
    pub fn with_spill_dir(mut self, dir: &Path) -> Aggregation {
        if let Store::Spilled { dir: spill_dir, .. } = &mut self.store {
            *spill_dir = dir.to_path_buf();
        }
        self
    }

    /// Reads the spill file back in chunks of at most `bytes` (at least one coordinate
    /// wide), instead of 64 MiB and at least 1,024 coordinates: for tests, which check that
    /// the chunk size never changes a result.
    #[doc(hidden)]
    pub fn with_chunk_budget(mut self, bytes: usize) -> Aggregation {
        self.chunk_budget = bytes;
        self.min_chunk_width = 1;
        self
    }

    /// Number of updates added so far.
    pub fn len(&self) -> usize {
        self.node_ids.len()
    }

    /// Node ids of the updates added, ascending.
    pub fn node_ids(&self) -> &[u64] {
        &self.node_ids
    }

    /// True if no update was added.
    pub fn is_empty(&self) -> bool {
        self.node_ids.is_empty()
    }

    /// Adds the update of learner `node_id`; `label` names it in errors (a file name, a
    /// CID). Updates come in strictly ascending node id order. Errors, changing nothing,
    /// if the order is wrong, `n_samples` is 0, a value is not finite, or the format,
    /// architecture, tensor names or shapes differ from the previous global model's (if
    /// given) or the first update's.
    pub fn add(&mut self, node_id: u64, model: &ModelFile, label: &str) -> Result<()> {
        let rule = self.recipe.rule;
        if let Some(&last) = self.node_ids.last() {
            ensure!(
                node_id > last,
                "{rule}: {label} has node id {node_id}, not above the previous update's {last} (add updates in ascending node id order)"
            );
        }
        ensure!(model.n_samples > 0, "{rule}: {label} has n_samples 0 (an update comes from at least one sample)");
        self.check(model, label)?;
        let total_samples =
            self.total_samples.checked_add(model.n_samples).with_context(|| format!("{rule}: total sample count overflows at {label}"))?;
        let (seen, clipped) = self.clip(model);
        let row = self.node_ids.len();
        let n_values = values_in(&model.tensors);
        match &mut self.store {
            Store::Streaming(fedavg) => fedavg.add(&seen, label)?,
            Store::Spilled { dir, spill } => {
                if spill.is_none() {
                    *spill = Some(Spill::create(dir, n_values)?);
                }
                if let Some(spill) = spill {
                    spill.write_row(row, &seen.tensors)?;
                }
            }
        }
        if self.template.is_none() {
            self.set_template(model);
        }
        if clipped {
            self.clipped.push(node_id);
        }
        self.node_ids.push(node_id);
        self.n_samples.push(model.n_samples);
        self.total_samples = total_samples;
        self.max_round = self.max_round.max(model.round);
        Ok(())
    }

    /// Applies the rule to the updates added. Errors if there are fewer than
    /// [`Rule::min_inputs`].
    pub fn finish(self) -> Result<Outcome> {
        let rule = self.recipe.rule;
        let n = self.node_ids.len();
        let needs = rule.min_inputs();
        if n < needs {
            let why = if needs > 1 { "s (2F + 3)" } else { "" };
            bail!("{rule} needs at least {needs} update{why}, got {n}");
        }
        let width = self.chunk_width();
        let Aggregation { template, n_values, node_ids, n_samples, max_round, clipped, store, .. } = self;
        let template = template.context("no template despite updates")?;
        let all = (0..n).collect();
        let (tensors, selected, scores): (_, Vec<usize>, _) = match (store, rule) {
            (Store::Streaming(fedavg), _) => (fedavg.finish()?.tensors, all, Vec::new()),
            (Store::Spilled { spill: Some(mut spill), .. }, Rule::Krum { f } | Rule::MultiKrum { f }) => {
                let krum = krum_scores(&mut spill, n, width, f)?;
                let mut ranking: Vec<usize> = (0..n).collect();
                ranking.sort_by(|&a, &b| krum[a].total_cmp(&krum[b]).then(a.cmp(&b)));
                let scores = node_ids.iter().copied().zip(krum).collect();
                if let Rule::Krum { .. } = rule {
                    (spill.read_tensors(ranking[0], &template)?, vec![ranking[0]], scores)
                } else {
                    let mut chosen = ranking[..n - f].to_vec();
                    chosen.sort_unstable();
                    let mut fedavg = FedAvg::new();
                    for &i in &chosen {
                        let tensors = spill.read_tensors(i, &template)?;
                        let update =
                            ModelFile { architecture: template.architecture.clone(), n_samples: n_samples[i], tensors, ..template };
                        fedavg.add(&update, &format!("node {}", node_ids[i]))?;
                    }
                    (fedavg.finish()?.tensors, chosen, scores)
                }
            }
            (Store::Spilled { spill: Some(mut spill), .. }, _) => {
                let trim = match rule {
                    Rule::TrimmedMean { beta } => Some(trim_count(beta, n)),
                    _ => None,
                };
                let values = coordinate_wise(&mut spill, n, width, n_values, trim)?;
                (tensors_from_values(&template, &values), all, Vec::new())
            }
            (Store::Spilled { spill: None, .. }, _) => bail!("{rule}: no spill file despite {n} updates"),
        };
        let model = ModelFile { round: max_round, n_samples: selected.iter().map(|&i| n_samples[i]).sum(), tensors, ..template };
        Ok(Outcome { model, selected: selected.iter().map(|&i| node_ids[i]).collect(), scores, clipped })
    }

    /// Checks a model against the template, or on its own if there is none yet.
    fn check(&self, model: &ModelFile, label: &str) -> Result<()> {
        let rule = self.recipe.rule;
        let whose = if self.template_is_previous { "the previous global model" } else { "the first model" };
        check_layout(model, self.template.as_ref(), &rule.to_string(), label, whose)?;
        for t in &model.tensors {
            if let Some(index) = t.data.chunks_exact(4).position(|b| !f32_le(b).is_finite()) {
                bail!("{rule}: {label} tensor {} has a non-finite value (NaN or infinity) at index {index}", t.name);
            }
        }
        Ok(())
    }

    /// Keeps `model`'s metadata, tensor names and shapes, without data.
    fn set_template(&mut self, model: &ModelFile) {
        let tensors = model.tensors.iter().map(|t| with_data(t, Vec::new())).collect();
        self.n_values = values_in(&model.tensors);
        self.template = Some(ModelFile { architecture: model.architecture.clone(), tensors, ..*model });
    }

    /// The values the rule sees: `model`, or a copy clipped to the clip norm around the
    /// previous global model (then also `true`).
    fn clip<'a>(&self, model: &'a ModelFile) -> (Cow<'a, ModelFile>, bool) {
        let (Some(norm), Some(previous)) = (self.recipe.clip_norm, &self.previous) else { return (Cow::Borrowed(model), false) };
        let squared = with_previous(model, previous).fold(0.0, |sum, (t, previous)| {
            t.data.chunks_exact(4).zip(previous).fold(sum, |sum, (b, &p)| {
                let d = f32_le(b) as f64 - p as f64;
                sum + d * d
            })
        });
        let distance = squared.sqrt();
        if distance <= norm {
            return (Cow::Borrowed(model), false);
        }
        let scale = norm / distance;
        let tensors = with_previous(model, previous)
            .map(|(t, previous)| {
                let values: Vec<f32> =
                    t.data.chunks_exact(4).zip(previous).map(|(b, &p)| (p as f64 + (f32_le(b) as f64 - p as f64) * scale) as f32).collect();
                NamedTensor::from_f32(&t.name, &t.dims(), &values)
            })
            .collect();
        (Cow::Owned(ModelFile { architecture: model.architecture.clone(), tensors, ..*model }), true)
    }

    /// Coordinates per chunk when reading the spill file back.
    fn chunk_width(&self) -> usize {
        (self.chunk_budget / (4 * self.node_ids.len().max(1))).max(self.min_chunk_width).min(self.n_values).max(1)
    }
}

/// A tensor's name, shape and dtype with other data.
fn with_data(tensor: &NamedTensor, data: Vec<u8>) -> NamedTensor {
    NamedTensor { name: tensor.name.clone(), shape: tensor.shape.clone(), dtype: tensor.dtype, data }
}

/// Each tensor of `model` with its part of the flat `previous` values (of the same shapes:
/// checked when the update was added).
fn with_previous<'a>(model: &'a ModelFile, previous: &'a [f32]) -> impl Iterator<Item = (&'a NamedTensor, &'a [f32])> {
    let mut rest = previous;
    model.tensors.iter().map(move |t| {
        let (mine, others) = rest.split_at((t.data.len() / 4).min(rest.len()));
        rest = others;
        (t, mine)
    })
}

/// Values in a list of checked tensors.
fn values_in(tensors: &[NamedTensor]) -> usize {
    tensors.iter().map(|t| t.data.len() / 4).sum()
}

fn f32_le(b: &[u8]) -> f32 {
    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// A model's values in order, tensor after tensor.
fn values(model: &ModelFile) -> impl Iterator<Item = f32> + '_ {
    model.tensors.iter().flat_map(|t| t.data.chunks_exact(4).map(f32_le))
}

/// Tensors shaped like `template`'s holding `values` in order.
fn tensors_from_values(template: &ModelFile, values: &[f32]) -> Vec<NamedTensor> {
    let mut start = 0;
    template
        .tensors
        .iter()
        .map(|t| {
            let end = start + t.shape.iter().product::<u64>() as usize;
            let tensor = NamedTensor::from_f32(&t.name, &t.dims(), &values[start..end]);
            start = end;
            tensor
        })
        .collect()
}

/// k = floor(beta × n) values trimmed at each end, at most (n − 1) / 2 so that one value
/// always remains (beta < 0.5 already ensures it unless beta × n rounds up to n / 2).
fn trim_count(beta: f64, n: usize) -> usize {
    ((beta * n as f64).floor() as usize).min((n - 1) / 2)
}

/// The median or (with `trim`) trimmed mean of every coordinate, in order.
fn coordinate_wise(spill: &mut Spill, n: usize, width: usize, n_values: usize, trim: Option<usize>) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(n_values);
    let mut column = vec![0f32; n];
    spill.for_each_chunk(n, width, |w, rows| {
        for j in 0..w {
            for (value, &row_value) in column.iter_mut().zip(rows[j..].iter().step_by(w)) {
                *value = row_value;
            }
            out.push(match trim {
                None => median(&mut column),
                Some(k) => trimmed_mean(&mut column, k),
            });
        }
    })?;
    Ok(out)
}

/// The middle value under `f32::total_cmp`, or the mean of the two middle ones (f64,
/// rounded to f32). `values` is reordered; it is never empty.
fn median(values: &mut [f32]) -> f32 {
    let middle = values.len() / 2;
    let (lower, &mut upper, _) = values.select_nth_unstable_by(middle, f32::total_cmp);
    match lower.iter().copied().max_by(f32::total_cmp) {
        Some(below) if values.len().is_multiple_of(2) => ((below as f64 + upper as f64) / 2.0) as f32,
        _ => upper,
    }
}

/// The mean of `values` without the `k` smallest and `k` largest, summed in ascending order
/// in f64 from +0 (an explicit fold: `Iterator::sum` has changed its starting value
/// between Rust versions), rounded to f32. `values` is reordered.
fn trimmed_mean(values: &mut [f32], k: usize) -> f32 {
    values.sort_unstable_by(f32::total_cmp);
    let kept = &values[k..values.len() - k];
    (kept.iter().fold(0.0, |sum, &v| sum + v as f64) / kept.len() as f64) as f32
}

/// Krum scores: per update, the sum (ascending, from +0) of its n − f − 2 smallest squared
/// distances to the others.
fn krum_scores(spill: &mut Spill, n: usize, width: usize, f: usize) -> Result<Vec<f64>> {
    // distances[i * n + j] for i < j, accumulated chunk by chunk in coordinate order.
    let cells = n.checked_mul(n).with_context(|| format!("the {n} x {n} distance matrix of {n} updates does not fit in memory"))?;
    let mut distances = vec![0f64; cells];
    spill.for_each_chunk(n, width, |w, rows| {
        let row = |i: usize| &rows[i * w..(i + 1) * w];
        for i in 0..n {
            let mut j = i + 1;
            while j + 4 <= n {
                add_squared_distances(row(i), [row(j), row(j + 1), row(j + 2), row(j + 3)], &mut distances[i * n + j..i * n + j + 4]);
                j += 4;
            }
            for j in j..n {
                add_squared_distances(row(i), [row(j)], &mut distances[i * n + j..i * n + j + 1]);
            }
        }
    })?;
    let neighbours = n - f - 2;
    let mut nearest = Vec::with_capacity(n);
    Ok((0..n)
        .map(|i| {
            nearest.clear();
            nearest.extend((0..n).filter(|&j| j != i).map(|j| distances[i.min(j) * n + i.max(j)]));
            nearest.sort_unstable_by(f64::total_cmp);
            nearest[..neighbours].iter().fold(0.0, |sum, d| sum + d)
        })
        .collect())
}

/// Adds to `sums[k]` the squared distance between `a` and `others[k]`, coordinate by
/// coordinate in order. Several pairs per pass only give the CPU independent additions to
/// overlap; each sum still adds its terms in the same order.
fn add_squared_distances<const K: usize>(a: &[f32], others: [&[f32]; K], sums: &mut [f64]) {
    let others = others.map(|o| &o[..a.len()]);
    let mut acc: [f64; K] = std::array::from_fn(|k| sums[k]);
    for (c, &x) in a.iter().enumerate() {
        for k in 0..K {
            let d = x as f64 - others[k][c] as f64;
            acc[k] += d * d;
        }
    }
    sums[..K].copy_from_slice(&acc);
}

/// Distinguishes the spill files of one process.
static SPILL_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temporary file of updates, each `row_bytes` long (its f32 values, little-endian),
/// removed on drop.
#[derive(Debug)]
struct Spill {
    path: PathBuf,
    file: File,
    row_bytes: u64,
}

impl Spill {
    /// A new, unique file in `dir` for updates of `n_values` values.
    fn create(dir: &Path, n_values: usize) -> Result<Spill> {
        loop {
            let name = format!("fl-core-rules-{}-{}.spill", std::process::id(), SPILL_COUNTER.fetch_add(1, Ordering::Relaxed));
            let path = dir.join(name);
            match OpenOptions::new().read(true).write(true).create_new(true).open(&path) {
                Ok(file) => return Ok(Spill { path, file, row_bytes: 4 * n_values as u64 }),
                // Left behind by a killed process that had the same id: take the next name.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("creating spill file {}", path.display())),
            }
        }
    }

    /// Writes update `row` (rewriting whatever a failed earlier write left there).
    fn write_row(&mut self, row: usize, tensors: &[NamedTensor]) -> Result<()> {
        let path = &self.path;
        self.file
            .seek(SeekFrom::Start(row as u64 * self.row_bytes))
            .with_context(|| format!("seeking in spill file {}", path.display()))?;
        for t in tensors {
            self.file.write_all(&t.data).with_context(|| format!("writing spill file {}", path.display()))?;
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes of update `row` from its value `first`.
    fn read(&mut self, row: usize, first: usize, buf: &mut [u8]) -> Result<()> {
        let path = &self.path;
        self.file
            .seek(SeekFrom::Start(row as u64 * self.row_bytes + 4 * first as u64))
            .with_context(|| format!("seeking in spill file {}", path.display()))?;
        self.file.read_exact(buf).with_context(|| format!("reading spill file {}", path.display()))
    }

    /// Update `row` as tensors shaped like `template`'s.
    fn read_tensors(&mut self, row: usize, template: &ModelFile) -> Result<Vec<NamedTensor>> {
        let mut first = 0;
        let mut tensors = Vec::with_capacity(template.tensors.len());
        for t in &template.tensors {
            let mut data = vec![0u8; 4 * t.shape.iter().product::<u64>() as usize];
            self.read(row, first, &mut data)?;
            first += data.len() / 4;
            tensors.push(with_data(t, data));
        }
        Ok(tensors)
    }

    /// Calls `f(w, rows)` for consecutive chunks of `width` coordinates (the last one
    /// narrower), in order; `rows` holds the chunk of update i at `i * w..(i + 1) * w`.
    fn for_each_chunk(&mut self, n: usize, width: usize, mut f: impl FnMut(usize, &[f32])) -> Result<()> {
        let n_values = (self.row_bytes / 4) as usize;
        let mut bytes = vec![0u8; 4 * width];
        let mut rows = vec![0f32; n * width];
        let mut first = 0;
        while first < n_values {
            let w = width.min(n_values - first);
            for (i, row) in rows.chunks_exact_mut(w).take(n).enumerate() {
                self.read(i, first, &mut bytes[..4 * w])?;
                for (value, b) in row.iter_mut().zip(bytes.chunks_exact(4)) {
                    *value = f32_le(b);
                }
            }
            f(w, &rows[..n * w]);
            first += w;
        }
        Ok(())
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        // Best effort: an error here has nobody to report to.
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{derive_seed, Rng};
    use crate::weights::hex;

    /// A two-tensor model (not the CNN: the rules do not care about the layout).
    fn tiny(n_samples: u64, a: [f32; 4], b: f32) -> ModelFile {
        ModelFile {
            format_version: 1,
            architecture: "test".into(),
            spec: None,
            round: 1,
            n_samples,
            tensors: vec![NamedTensor::from_f32("a", &[2, 2], &a), NamedTensor::from_f32("b", &[1], &[b])],
        }
    }

    /// A model whose five values are all `v`.
    fn flat(n_samples: u64, v: f32) -> ModelFile {
        tiny(n_samples, [v; 4], v)
    }

    fn recipe(rule: &str, clip_norm: Option<f64>) -> Recipe {
        Recipe { rule: rule.parse().unwrap(), clip_norm }
    }

    /// Runs `recipe` over `(node id, model)` pairs.
    fn run(recipe: &Recipe, previous: Option<&ModelFile>, updates: &[(u64, ModelFile)]) -> Result<Outcome> {
        let mut aggregation = Aggregation::new(recipe, previous)?;
        for (id, model) in updates {
            aggregation.add(*id, model, &format!("node {id}"))?;
        }
        aggregation.finish()
    }

    fn values_of(outcome: &Outcome) -> Vec<f32> {
        values(&outcome.model).collect()
    }

    /// The CNN's initial model plus uniform noise in [-scale, scale] from `seed` (integer
    /// and f32 arithmetic only, so the same on every CPU).
    fn perturbed(base: &ModelFile, seed: u64, scale: f32, n_samples: u64) -> ModelFile {
        let mut rng = Rng::new(seed);
        let tensors = base
            .tensors
            .iter()
            .map(|t| {
                let values: Vec<f32> = t.to_f32().iter().map(|&v| v + (rng.next_f32() * 2.0 - 1.0) * scale).collect();
                NamedTensor::from_f32(&t.name, &t.dims(), &values)
            })
            .collect();
        ModelFile { round: 1, n_samples, tensors, ..base.clone() }
    }

    /// Seven CNN updates around `ModelFile::initial(7)` (node ids 10, 20, ..., 70): five
    /// honest ones with noise 0.01 (distance about 4.5 from the start) and two outliers
    /// (nodes 30 and 60) with noise 0.5, with different sample counts.
    fn cnn_round() -> (ModelFile, Vec<(u64, ModelFile)>) {
        let base = ModelFile::initial(7);
        let updates = (1..=7u64)
            .map(|k| {
                let scale = if k == 3 || k == 6 { 0.5 } else { 0.01 };
                (10 * k, perturbed(&base, derive_seed(99, k), scale, 100 * k))
            })
            .collect();
        (base, updates)
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fl-core-rules-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn rules_round_trip_through_their_text() {
        let rules = [
            (Rule::FedAvg, "fedavg"),
            (Rule::Median, "median"),
            (Rule::TrimmedMean { beta: 0.2 }, "trimmed-mean:0.2"),
            (Rule::TrimmedMean { beta: 0.0 }, "trimmed-mean:0"),
            (Rule::TrimmedMean { beta: 0.1 + 0.2 }, "trimmed-mean:0.30000000000000004"),
            (Rule::TrimmedMean { beta: 1e-9 }, "trimmed-mean:0.000000001"),
            (Rule::TrimmedMean { beta: 0.49999999999999994 }, "trimmed-mean:0.49999999999999994"),
            (Rule::Krum { f: 0 }, "krum:0"),
            (Rule::Krum { f: 7 }, "krum:7"),
            (Rule::MultiKrum { f: 3 }, "multi-krum:3"),
        ];
        for (rule, text) in rules {
            assert_eq!(rule.to_string(), text);
            assert_eq!(text.parse::<Rule>().unwrap(), rule, "{text}");
        }
        // Other spellings of the same rule read back, and write the canonical text.
        assert_eq!("trimmed-mean:-0".parse::<Rule>().unwrap().to_string(), "trimmed-mean:0");
        assert_eq!("trimmed-mean:2e-1".parse::<Rule>().unwrap().to_string(), "trimmed-mean:0.2");
        assert_eq!(Rule::Krum { f: 2 }.min_inputs(), 7);
        assert_eq!(Rule::MultiKrum { f: 0 }.min_inputs(), 3);
        assert_eq!(Rule::Krum { f: usize::MAX }.min_inputs(), usize::MAX);
        assert_eq!(Rule::TrimmedMean { beta: 0.4 }.min_inputs(), 1);
        let weighted: Vec<bool> = rules.iter().map(|(r, _)| r.weighted_by_samples()).collect();
        assert_eq!(weighted, [true, false, false, false, false, false, false, false, false, true]);
    }

    #[test]
    fn bad_rule_texts_and_clip_norms_are_explained() {
        let cases = [
            ("mean", "unknown aggregation rule \"mean\": expected fedavg, median, trimmed-mean:B (0 <= B < 0.5), krum:F or multi-krum:F"),
            ("", "unknown aggregation rule \"\""),
            ("Median", "unknown aggregation rule \"Median\""),
            ("fedavg:1", "fedavg:1: fedavg takes no parameter"),
            ("trimmed-mean", "trimmed-mean: missing parameter, write trimmed-mean:B with 0 <= B < 0.5"),
            ("trimmed-mean:", "trimmed-mean:: B \"\" is not a number"),
            ("trimmed-mean:x", "trimmed-mean:x: B \"x\" is not a number"),
            ("trimmed-mean:0.5", "trimmed-mean:0.5: B must be at least 0 and below 0.5"),
            ("trimmed-mean:-0.1", "trimmed-mean:-0.1: B must be at least 0 and below 0.5"),
            ("trimmed-mean:inf", "trimmed-mean:inf: B must be at least 0 and below 0.5"),
            ("trimmed-mean:NaN", "trimmed-mean:NaN: B is not a number, expected 0 <= B < 0.5"),
            ("krum", "krum: missing parameter, write krum:F with F the number of faulty updates"),
            ("multi-krum", "multi-krum: missing parameter, write multi-krum:F"),
            ("krum:-1", "krum:-1: F \"-1\" is not a whole number of faulty updates (F >= 0)"),
            ("multi-krum:1.5", "multi-krum:1.5: F \"1.5\" is not a whole number"),
        ];
        for (text, expected) in cases {
            let err = format!("{:#}", text.parse::<Rule>().unwrap_err());
            assert!(err.contains(expected), "{text:?}: {err}");
        }
        assert_eq!(parse_clip_norm("2.5").unwrap(), 2.5);
        for (text, expected) in [
            ("abc", "clip norm \"abc\" is not a number"),
            ("0", "clip norm 0 must be a finite number above 0"),
            ("-1", "clip norm -1 must be"),
            ("inf", "clip norm inf must be"),
            ("NaN", "clip norm NaN must be"),
        ] {
            let err = format!("{:#}", parse_clip_norm(text).unwrap_err());
            assert!(err.contains(expected), "{text:?}: {err}");
        }
        // Rules and recipes built in code are checked too.
        let err = Aggregation::new(&Recipe { rule: Rule::TrimmedMean { beta: 0.7 }, clip_norm: None }, None).unwrap_err();
        assert!(err.to_string().contains("trimmed-mean:0.7: B must be at least 0 and below 0.5"), "{err}");
        let err = Aggregation::new(&recipe("median", Some(0.0)), None).unwrap_err();
        assert!(err.to_string().contains("clip norm 0 must be"), "{err}");
        let err = Aggregation::new(&recipe("median", Some(1.0)), None).unwrap_err();
        assert_eq!(err.to_string(), "median: clipping to norm 1 needs the previous global model");
    }

    #[test]
    fn median_by_hand_for_odd_and_even_counts() {
        // Per coordinate, by hand. Odd (3): a0 = median(1, 5, -2) = 1, a1 = median(2, 2, 9) = 2,
        // a2 = median(0, -1, 1) = 0, a3 = median(7, 8, 6) = 7, b = median(10, -10, 0) = 0.
        let updates = vec![
            (1, tiny(1, [1.0, 2.0, 0.0, 7.0], 10.0)),
            (2, tiny(50, [5.0, 2.0, -1.0, 8.0], -10.0)),
            (3, tiny(3, [-2.0, 9.0, 1.0, 6.0], 0.0)),
        ];
        let outcome = run(&recipe("median", None), None, &updates).unwrap();
        assert_eq!(values_of(&outcome), [1.0, 2.0, 0.0, 7.0, 0.0]);
        assert_eq!((outcome.selected.as_slice(), outcome.model.n_samples), (&[1, 2, 3][..], 54));
        assert!(outcome.scores.is_empty() && outcome.clipped.is_empty());
        // Even (4, a fourth update added): the mean of the two middle values.
        // a0: 1, 5, -2, 4 -> (1 + 4) / 2 = 2.5; a1: 2, 2, 9, 3 -> 2.5; a2: 0, -1, 1, 0.25 ->
        // (0 + 0.25) / 2 = 0.125; a3: 7, 8, 6, 7 -> 7; b: 10, -10, 0, 1e-7 -> 5e-8 (in f64,
        // then rounded to f32: the f32 nearest 1e-7 halved exactly).
        let mut updates = updates;
        updates.push((4, tiny(1, [4.0, 3.0, 0.25, 7.0], 1e-7)));
        let outcome = run(&recipe("median", None), None, &updates).unwrap();
        assert_eq!(values_of(&outcome), [2.5, 2.5, 0.125, 7.0, 1e-7 / 2.0]);
    }

    #[test]
    fn trimmed_mean_by_hand() {
        // N = 5, B = 0.2: k = floor(1.0) = 1 value dropped at each end of every coordinate.
        // a0: 1, 2, 3, 4, 100 -> (2 + 3 + 4) / 3 = 3; a1: -50, 0, 0, 3, 6 -> 1;
        // a2: 1, 1, 1, 1, 1 -> 1; a3: 0.5, 0.25, 0, 0.1, 9 -> (0.1 + 0.25 + 0.5) / 3 (the f32
        // 0.1 summed in f64 from the smallest up, divided, rounded to f32);
        // b: 7, 7, 8, 9, 9 -> 8.
        let updates = vec![
            (1, tiny(1, [100.0, -50.0, 1.0, 0.5], 7.0)),
            (2, tiny(9, [1.0, 0.0, 1.0, 0.25], 9.0)),
            (3, tiny(1, [2.0, 0.0, 1.0, 0.0], 8.0)),
            (4, tiny(1, [3.0, 3.0, 1.0, 0.1], 7.0)),
            (5, tiny(1, [4.0, 6.0, 1.0, 9.0], 9.0)),
        ];
        let outcome = run(&recipe("trimmed-mean:0.2", None), None, &updates).unwrap();
        assert_eq!(values_of(&outcome), [3.0, 1.0, 1.0, ((0.1f32 as f64 + 0.25 + 0.5) / 3.0) as f32, 8.0]);
        assert_eq!(outcome.model.n_samples, 13);
        // B = 0 trims nothing: the unweighted mean (sample counts 1 and 9 do not matter),
        // here a0 = (100 + 1 + 2 + 3 + 4) / 5 = 22, b = (7 + 9 + 8 + 7 + 9) / 5 = 8.
        let outcome = run(&recipe("trimmed-mean:0", None), None, &updates).unwrap();
        assert_eq!(values_of(&outcome)[0], 22.0);
        assert_eq!(values_of(&outcome)[4], 8.0);
        // B = 0.19 with N = 5: floor(0.95) = 0, the rounding is down.
        let outcome_019 = run(&recipe("trimmed-mean:0.19", None), None, &updates).unwrap();
        assert_eq!(outcome_019.model, outcome.model);
        assert_eq!(trim_count(0.49999999999999994, 2), 0);
        assert_eq!(trim_count(0.4, 3), 1);
    }

    #[test]
    fn krum_picks_the_honest_cluster_and_breaks_ties_by_node_id() {
        // Every value of update i is v_i, so the squared distance of i and j is 5 (v_i - v_j)^2.
        // v = 0, 1, 3, 4, 100 with N = 5, F = 1: each score sums the N - F - 2 = 2 nearest:
        // v=0: 5 + 45 = 50; v=1: 5 + 20 = 25; v=3: 5 + 20 = 25; v=4: 5 + 45 = 50;
        // v=100: 5 * 96^2 + 5 * 97^2 = 93125. Nodes 7 and 8 tie at 25: the lower id wins.
        let updates: Vec<(u64, ModelFile)> = [(3, 0.0), (7, 1.0), (8, 3.0), (20, 4.0), (21, 100.0)]
            .iter()
            .zip([1, 2, 3, 4, 100])
            .map(|(&(id, v), n)| (id, flat(n, v)))
            .collect();
        let outcome = run(&recipe("krum:1", None), None, &updates).unwrap();
        assert_eq!(outcome.scores, [(3, 50.0), (7, 25.0), (8, 25.0), (20, 50.0), (21, 93125.0)]);
        assert_eq!(outcome.selected, [7]);
        assert_eq!(outcome.model.tensors, updates[1].1.tensors);
        assert_eq!((outcome.model.n_samples, outcome.model.round), (2, 1));
        // Multi-Krum keeps m = N - F = 4 (the outlier goes) and averages them by sample count:
        // (0 * 1 + 1 * 2 + 3 * 3 + 4 * 4) / 10 = 2.7, the same bytes as FedAvg over them.
        let outcome = run(&recipe("multi-krum:1", None), None, &updates).unwrap();
        assert_eq!(outcome.selected, [3, 7, 8, 20]);
        assert_eq!(outcome.model.n_samples, 10);
        assert_eq!(values_of(&outcome), [2.7f32; 5]);
        let fedavg = run(&recipe("fedavg", None), None, &updates[..4]).unwrap();
        assert_eq!(outcome.model.to_bytes(), fedavg.model.to_bytes());
    }

    #[test]
    fn krum_and_multi_krum_exclude_outliers_of_a_cnn_round() {
        let (_, updates) = cnn_round();
        let outcome = run(&recipe("krum:2", None), None, &updates).unwrap();
        let chosen = outcome.selected[0];
        assert!(chosen != 30 && chosen != 60, "krum chose outlier {chosen}");
        let index = updates.iter().position(|(id, _)| *id == chosen).unwrap();
        assert_eq!(outcome.model.tensors, updates[index].1.tensors);
        let outcome = run(&recipe("multi-krum:2", None), None, &updates).unwrap();
        assert_eq!(outcome.selected, [10, 20, 40, 50, 70]);
        assert_eq!(outcome.model.n_samples, 100 + 200 + 400 + 500 + 700);
        let honest: Vec<(u64, ModelFile)> = updates.iter().filter(|(id, _)| outcome.selected.contains(id)).cloned().collect();
        assert_eq!(outcome.model.to_bytes(), run(&recipe("fedavg", None), None, &honest).unwrap().model.to_bytes());
        // The outliers' scores are far above every honest one.
        let worst_honest = outcome.scores.iter().filter(|(id, _)| *id != 30 && *id != 60).map(|s| s.1).fold(0.0, f64::max);
        assert!(outcome.scores.iter().filter(|(id, _)| *id == 30 || *id == 60).all(|s| s.1 > 100.0 * worst_honest), "{:?}", outcome.scores);
    }

    #[test]
    fn too_few_updates_are_an_error_naming_the_rule() {
        let updates: Vec<(u64, ModelFile)> = (1..=4).map(|id| (id, flat(1, id as f32))).collect();
        let err = run(&recipe("multi-krum:1", None), None, &updates).unwrap_err();
        assert_eq!(err.to_string(), "multi-krum:1 needs at least 5 updates (2F + 3), got 4");
        let err = run(&recipe("krum:0", None), None, &updates[..2]).unwrap_err();
        assert_eq!(err.to_string(), "krum:0 needs at least 3 updates (2F + 3), got 2");
        assert!(run(&recipe("krum:0", None), None, &updates[..3]).is_ok());
        for rule in ["fedavg", "median", "trimmed-mean:0.1"] {
            let err = run(&recipe(rule, None), None, &[]).unwrap_err();
            assert_eq!(err.to_string(), format!("{rule} needs at least 1 update, got 0"));
        }
    }

    #[test]
    fn clipping_by_hand() {
        // Update 1 is (3, 0, 0, 0, 4) away from the previous model: distance 5 > C = 2.5, so
        // it is scaled by 2.5 / 5 = 0.5 around the previous model. Update 2 is at distance 2.
        let previous = tiny(0, [1.0, 1.0, 1.0, 1.0], 1.0);
        let updates = vec![(4, tiny(1, [4.0, 1.0, 1.0, 1.0], 5.0)), (9, tiny(3, [1.0, 3.0, 1.0, 1.0], 1.0))];
        let outcome = run(&recipe("fedavg", Some(2.5)), Some(&previous), &updates).unwrap();
        assert_eq!(outcome.clipped, [4]);
        // FedAvg of (2.5, 1, 1, 1, 3) x 1 and (1, 3, 1, 1, 1) x 3: (2.5 + 3) / 4, (1 + 9) / 4, 1, 1, (3 + 3) / 4.
        assert_eq!(values_of(&outcome), [1.375, 2.5, 1.0, 1.0, 1.5]);
        let outcome = run(&recipe("median", Some(2.5)), Some(&previous), &updates).unwrap();
        assert_eq!(values_of(&outcome), [1.75, 2.0, 1.0, 1.0, 2.0]);
        assert_eq!(outcome.clipped, [4]);
        // A clip norm above every distance changes nothing.
        let unclipped = run(&recipe("fedavg", Some(5.0)), Some(&previous), &updates).unwrap();
        assert!(unclipped.clipped.is_empty());
        assert_eq!(unclipped.model, run(&recipe("fedavg", None), None, &updates).unwrap().model);
        // Updates must match the previous model, which the error names.
        let other =
            ModelFile { tensors: vec![NamedTensor::from_f32("a", &[4], &[0.0; 4]), previous.tensors[1].clone()], ..previous.clone() };
        let err = run(&recipe("fedavg", Some(1.0)), Some(&previous), &[(1, ModelFile { n_samples: 1, ..other })]).unwrap_err();
        assert!(
            err.to_string().contains("node 1 has tensor \"a\" with shape [4], where the previous global model has \"a\" with shape [2, 2]"),
            "{err}"
        );
    }

    #[test]
    fn fedavg_without_clipping_is_fedavg_byte_for_byte() {
        let (_, updates) = cnn_round();
        let outcome = run(&recipe("fedavg", None), None, &updates).unwrap();
        let reference = crate::fedavg::average(updates.iter().map(|(id, m)| (m, id.to_string()))).unwrap();
        assert_eq!(outcome.model.to_bytes(), reference.to_bytes());
        assert_eq!(outcome.selected, [10, 20, 30, 40, 50, 60, 70]);
        assert!(outcome.scores.is_empty() && outcome.clipped.is_empty());
    }

    /// The recipes the chunking and pinned-digest tests run on `cnn_round`.
    fn cnn_recipes() -> Vec<Recipe> {
        vec![
            recipe("fedavg", None),
            recipe("fedavg", Some(5.0)),
            recipe("median", None),
            recipe("trimmed-mean:0.2", None),
            recipe("krum:2", None),
            recipe("multi-krum:2", Some(5.0)),
        ]
    }

    #[test]
    fn chunk_size_never_changes_a_result() {
        let (base, updates) = cnn_round();
        for recipe in cnn_recipes() {
            let default = run(&recipe, Some(&base), &updates).unwrap();
            // 777 coordinates per chunk: chunks straddle tensor boundaries.
            let mut aggregation = Aggregation::new(&recipe, Some(&base)).unwrap().with_chunk_budget(7 * 4 * 777);
            for (id, model) in &updates {
                aggregation.add(*id, model, "x").unwrap();
            }
            assert_eq!(aggregation.finish().unwrap(), default, "{}", recipe.rule);
        }
        // One coordinate per chunk, on the hand-sized inputs.
        let updates: Vec<(u64, ModelFile)> =
            (1..=5).map(|id| (id, tiny(id, [id as f32, 0.5, -(id as f32), 2.0], 1.0 / id as f32))).collect();
        for rule in ["median", "trimmed-mean:0.2", "krum:1", "multi-krum:1"] {
            let mut aggregation = Aggregation::new(&recipe(rule, None), None).unwrap().with_chunk_budget(1);
            for (id, model) in &updates {
                aggregation.add(*id, model, "x").unwrap();
            }
            assert_eq!(aggregation.finish().unwrap(), run(&recipe(rule, None), None, &updates).unwrap(), "{rule}");
        }
    }

    #[test]
    fn pinned_digests_are_the_same_on_every_cpu() {
        // SHA-256 of the result's model file, computed once on x86-64; every CPU (aarch64,
        // e.g. under qemu) must give exactly these bytes: a difference means an addition
        // order or a rounding changed somewhere.
        let expected = [
            ("fedavg", "0c57897e9d75a75804bfc9dc5eb2d747824c4d646e7b5de4102b53edaf9c4766"),
            ("fedavg clip 5", "32891d3f96bf6b7a6c55356409c133c2852e28b4d1ddaed27db265c0e1480b8f"),
            ("median", "e23f7668e66c3c4c12fdcc726dccb8ca7fa37794ccd3d36f2e86ff0b1dde8f8d"),
            ("trimmed-mean:0.2", "1272db6731a920950e19984de2c77e4c3ea2eefe23ceafc372957905ec9a8735"),
            ("krum:2", "552b39db599febac6f74d79e83867a477f0c15f92ab0825d40bbf4642e4f0195"),
            ("multi-krum:2 clip 5", "dc29077272237bfdf06b7c7912fc8edb07d0f0aefdd16bb1cd4a529ed7d8e81f"),
        ];
        let (base, updates) = cnn_round();
        let mut got = Vec::new();
        for (recipe, (name, _)) in cnn_recipes().iter().zip(expected) {
            let outcome = run(recipe, Some(&base), &updates).unwrap();
            // Clipping to 5 catches exactly the two outliers (distance about 227).
            let expected_clipped: &[u64] = if recipe.clip_norm.is_some() { &[30, 60] } else { &[] };
            assert_eq!(outcome.clipped, expected_clipped, "{name}");
            got.push((name, hex(&outcome.model.sha256())));
        }
        assert_eq!(got, expected.map(|(name, digest)| (name, digest.to_string())));
    }

    #[test]
    fn updates_come_in_ascending_node_id_order() {
        let mut aggregation = Aggregation::new(&recipe("median", None), None).unwrap();
        aggregation.add(5, &flat(1, 1.0), "five.bin").unwrap();
        let err = aggregation.add(5, &flat(1, 2.0), "again.bin").unwrap_err();
        assert_eq!(
            err.to_string(),
            "median: again.bin has node id 5, not above the previous update's 5 (add updates in ascending node id order)"
        );
        assert!(aggregation.add(3, &flat(1, 2.0), "three.bin").is_err());
        aggregation.add(6, &flat(1, 3.0), "six.bin").unwrap();
        assert_eq!(aggregation.len(), 2);
        assert_eq!(aggregation.finish().unwrap().selected, [5, 6]);
    }

    #[test]
    fn rejects_mismatched_inputs_naming_them() {
        for rule in ["fedavg", "krum:0"] {
            let good = flat(1, 0.0);
            let mut aggregation = Aggregation::new(&recipe(rule, None), None).unwrap();
            aggregation.add(1, &good, "first.bin").unwrap();
            let mut other_arch = good.clone();
            other_arch.architecture = "other".into();
            let mut other_shape = good.clone();
            other_shape.tensors[0] = NamedTensor::from_f32("a", &[4], &[0.0; 4]);
            let mut other_name = good.clone();
            other_name.tensors[1].name = "c".into();
            let mut fewer = good.clone();
            fewer.tensors.pop();
            let mut empty = good.clone();
            empty.n_samples = 0;
            let mut short = good.clone();
            short.tensors[1].data.pop();
            let mut nan = good.clone();
            nan.tensors[0] = NamedTensor::from_f32("a", &[2, 2], &[0.0, 0.0, f32::NAN, 0.0]);
            let cases = [
                (other_arch, "b.bin is architecture \"other\" format 1, but the first model is \"test\" format 1"),
                (other_shape, "c.bin has tensor \"a\" with shape [4], where the first model has \"a\" with shape [2, 2]"),
                (other_name, "d.bin has tensor \"c\""),
                (fewer, "e.bin has 1 tensors, the first model has 2"),
                (empty, "f.bin has n_samples 0"),
                (short, "g.bin tensor b has 3 bytes, expected 4"),
                (nan, "h.bin tensor a has a non-finite value (NaN or infinity) at index 2"),
            ];
            for (i, (model, expected)) in cases.into_iter().enumerate() {
                let label = format!("{}.bin", (b'b' + i as u8) as char);
                let err = aggregation.add(10 + i as u64, &model, &label).unwrap_err().to_string();
                assert!(err.starts_with(&format!("{rule}: ")) && err.contains(expected), "{err}");
            }
            // Rejected inputs changed nothing.
            assert_eq!(aggregation.len(), 1);
        }
        // The first update is checked on its own.
        let mut broken = flat(1, 0.0);
        broken.tensors[0].shape = vec![u64::MAX, 2];
        let err = Aggregation::new(&recipe("median", None), None).unwrap().add(1, &broken, "big.bin").unwrap_err();
        assert!(err.to_string().contains("big.bin tensor a has an impossible shape"), "{err}");
    }

    #[test]
    fn the_spill_file_goes_away_and_errors_name_it() {
        let dir = temp_dir("spill");
        let files = || std::fs::read_dir(&dir).unwrap().count();
        let mut aggregation = Aggregation::new(&recipe("median", None), None).unwrap().with_spill_dir(&dir);
        assert_eq!(files(), 0, "no file before the first update");
        aggregation.add(1, &flat(1, 1.0), "one").unwrap();
        aggregation.add(2, &flat(1, 2.0), "two").unwrap();
        assert_eq!(files(), 1);
        let spill = std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path();
        assert_eq!(std::fs::metadata(&spill).unwrap().len(), 2 * 5 * 4);
        drop(aggregation);
        assert_eq!(files(), 0, "dropped");
        let mut aggregation = Aggregation::new(&recipe("krum:0", None), None).unwrap().with_spill_dir(&dir);
        for id in 1..=3 {
            aggregation.add(id, &flat(1, id as f32), "x").unwrap();
        }
        aggregation.finish().unwrap();
        assert_eq!(files(), 0, "finished");
        // FedAvg never spills.
        let mut aggregation = Aggregation::new(&recipe("fedavg", None), None).unwrap().with_spill_dir(&dir);
        aggregation.add(1, &flat(1, 1.0), "one").unwrap();
        assert_eq!(files(), 0);
        let missing = dir.join("missing");
        let err =
            Aggregation::new(&recipe("median", None), None).unwrap().with_spill_dir(&missing).add(1, &flat(1, 1.0), "one").unwrap_err();
        assert!(format!("{err:#}").contains(&format!("creating spill file {}/fl-core-rules-", missing.display())), "{err:#}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
