//! Heterogeneous models (the paper's future work): a federation may declare several model
//! specs, its model groups. Each learner is registered to one group and trains that
//! group's network; the aggregator averages each group's updates with the round's rule,
//! and the global model is the ensemble of the group models: its prediction is the mean of
//! their softmax outputs.
//!
//! # How an ensemble is published
//! As one model file, so that everything that carries, hashes, encodes, keeps and checks a
//! global model does so unchanged: the file names the groups' digest (below) as its spec,
//! and holds every group's tensors in group order, each name prefixed with `g<N>.` (1-based:
//! `g1.conv1.weight`, ..., `g2.fc1.bias`). A learner takes its group's tensors out
//! ([`FederationModel::member`]), trains them, puts them back ([`FederationModel::embed`])
//! and sends the whole file as its update: relative to the global model, the other groups'
//! tensors are unchanged and cost nothing (format 2's `Zero` tensors).
//!
//! # The groups' digest
//! The registry fixes one digest per federation (`modelSpec`). For model groups it is the
//! SHA-256 of this canonical text, on IPFS as one raw block like a spec:
//!
//! ```text
//! # fl-model-groups v1 (canonical form: its SHA-256 is the federation's model digest)
//! groups = ["<digest of group 1's spec>", "<digest of group 2's spec>"]
//! ```
//!
//! Every group's spec is on IPFS too. The groups share the input shape and the classes
//! (one data set evaluates them all, and their softmax outputs are averaged); there are 2
//! to 16 of them, all different.

use std::fmt;
use std::path::PathBuf;

use anyhow::{bail, ensure, Context, Result};

use crate::data::{Dataset, InputShape};
use crate::network::{Evaluation, Network};
use crate::rng::derive_seed;
use crate::rules::{Aggregation, Outcome};
use crate::spec::{ModelSpec, SPEC_ARCHITECTURE};
use crate::weights::{digest_from_hex, hex, sha256, ModelFile, NamedTensor, FORMAT_VERSION};

/// First line of the groups' canonical text.
const HEADER: &str = "# fl-model-groups v1 (canonical form: its SHA-256 is the federation's model digest)\n";

/// The most model groups a federation may declare.
pub const MAX_GROUPS: usize = 16;

/// Batch size of ensemble evaluation.
const EVAL_BATCH: usize = 256;

/// Two or more model groups.
#[derive(Debug, Clone, PartialEq)]
pub struct Ensemble {
    /// Each group's spec, in group order (group numbers count from 0 on chain, from 1 in
    /// tensor names).
    pub groups: Vec<ModelSpec>,
}

/// What a federation trains: one spec, or model groups whose global model is an ensemble.
#[derive(Debug, Clone, PartialEq)]
pub enum FederationModel {
    /// One network for every learner (the built-in paper CNN, or a declared spec).
    Single(ModelSpec),
    /// Model groups.
    Groups(Ensemble),
}

impl Ensemble {
    /// Checks the groups: 2 to [`MAX_GROUPS`], all different, one input shape and class count.
    pub fn new(groups: Vec<ModelSpec>) -> Result<Ensemble> {
        ensure!((2..=MAX_GROUPS).contains(&groups.len()), "{} model groups: a federation declares 2 to {MAX_GROUPS}", groups.len());
        let first = &groups[0];
        for (i, spec) in groups.iter().enumerate() {
            ensure!(
                spec.input == first.input && spec.classes == first.classes,
                "model group {} ({spec}) takes {} into {} classes, but group 1 ({first}) takes {} into {}: the groups of an ensemble share their input and classes",
                i + 1,
                spec.input,
                spec.classes,
                first.input,
                first.classes
            );
            if let Some(j) = groups[..i].iter().position(|other| other.digest() == spec.digest()) {
                bail!("model groups {} and {} are the same spec ({spec})", j + 1, i + 1);
            }
        }
        Ok(Ensemble { groups })
    }

    /// The canonical text the digest covers (see the module docs).
    pub fn canonical(&self) -> String {
        let digests: Vec<String> = self.groups.iter().map(|s| format!("\"{}\"", hex(&s.digest()))).collect();
        format!("{HEADER}groups = [{}]\n", digests.join(", "))
    }

    /// SHA-256 of [`Ensemble::canonical`]: the federation's model digest.
    pub fn digest(&self) -> [u8; 32] {
        sha256(self.canonical().as_bytes())
    }

    /// The group digests named by canonical bytes fetched by `digest`, checked.
    fn parse_canonical(bytes: &[u8], digest: &[u8; 32]) -> Result<Vec<[u8; 32]>> {
        let found = sha256(bytes);
        ensure!(&found == digest, "model groups: the bytes fetched have digest {}, not the {} asked for", hex(&found), hex(digest));
        let text = std::str::from_utf8(bytes).context("model groups: not UTF-8 text")?;
        let list = text
            .strip_prefix(HEADER)
            .and_then(|rest| rest.strip_prefix("groups = ["))
            .and_then(|rest| rest.strip_suffix("]\n"))
            .with_context(|| format!("model groups {}: not in canonical form", hex(digest)))?;
        list.split(", ").map(|item| digest_from_hex(item.trim_matches('"'))).collect()
    }

    /// The tensor-name prefix of group `g` (0-based): `g1.` for the first.
    fn prefix(g: usize) -> String {
        format!("g{}.", g + 1)
    }
}

impl FederationModel {
    /// The model a command's spec flags declare (`deploy --model`, `--spec`, given 0 to N
    /// times): none, the built-in paper CNN; one, that spec; several, model groups in that
    /// order, checked as [`Ensemble::new`] checks them. `flag` names them in errors.
    pub fn load(paths: &[PathBuf], flag: &str) -> Result<FederationModel> {
        let mut specs = paths.iter().map(|path| ModelSpec::load(path)).collect::<Result<Vec<_>>>()?;
        match specs.len() {
            0 => Ok(FederationModel::Single(ModelSpec::paper_cnn())),
            1 => Ok(FederationModel::Single(specs.remove(0))),
            n => Ensemble::new(specs).map(FederationModel::Groups).with_context(|| format!("{flag} given {n} times: model groups")),
        }
    }

    /// Whether canonical bytes name model groups rather than one spec.
    pub fn names_groups(bytes: &[u8]) -> bool {
        bytes.starts_with(HEADER.as_bytes())
    }

    /// The model of a federation whose registry records `digest` (`None`: the built-in
    /// paper CNN), its canonical bytes (and, for groups, each group's spec) fetched with
    /// `fetch` (from IPFS, by digest) and checked.
    pub fn resolve(digest: Option<[u8; 32]>, fetch: impl Fn(&[u8; 32]) -> Result<Vec<u8>>) -> Result<FederationModel> {
        let Some(digest) = digest else { return Ok(FederationModel::Single(ModelSpec::paper_cnn())) };
        let bytes = fetch(&digest).with_context(|| format!("fetching the federation's model {}", hex(&digest)))?;
        if !FederationModel::names_groups(&bytes) {
            return Ok(FederationModel::Single(ModelSpec::from_canonical(&bytes, &digest)?));
        }
        let mut groups = Vec::new();
        for (i, group) in Ensemble::parse_canonical(&bytes, &digest)?.iter().enumerate() {
            let spec = ModelSpec::resolve(Some(*group), &fetch).with_context(|| format!("model group {}", i + 1))?;
            groups.push(spec);
        }
        let ensemble = Ensemble::new(groups)?;
        ensure!(ensemble.digest() == digest, "model groups {}: the specs fetched give another digest", hex(&digest));
        Ok(FederationModel::Groups(ensemble))
    }

    /// The canonical texts a federation's readers fetch by digest, with what each is: the
    /// spec (none for the built-in one), or every group's spec and then the groups' list.
    pub fn canonical_texts(&self) -> Vec<(String, String)> {
        match self {
            FederationModel::Single(spec) if spec.is_builtin() => Vec::new(),
            FederationModel::Single(spec) => vec![(format!("model spec {:?}", spec.name), spec.canonical())],
            FederationModel::Groups(ensemble) => {
                let mut texts: Vec<(String, String)> = ensemble
                    .groups
                    .iter()
                    .enumerate()
                    .map(|(g, spec)| (format!("model group {} spec {:?}", g + 1, spec.name), spec.canonical()))
                    .collect();
                texts.push(("the model groups' list".to_string(), ensemble.canonical()));
                texts
            }
        }
    }

    /// The digest the registry records (`None`: the built-in paper CNN).
    pub fn digest(&self) -> Option<[u8; 32]> {
        match self {
            FederationModel::Single(spec) => spec.file_digest(),
            FederationModel::Groups(ensemble) => Some(ensemble.digest()),
        }
    }

    /// How many model groups (1 for a single spec).
    pub fn groups(&self) -> usize {
        match self {
            FederationModel::Single(_) => 1,
            FederationModel::Groups(ensemble) => ensemble.groups.len(),
        }
    }

    /// The spec of group `g` (0-based; the only spec of a single-spec federation).
    pub fn group_spec(&self, g: usize) -> Result<&ModelSpec> {
        match self {
            FederationModel::Single(spec) if g == 0 => Ok(spec),
            FederationModel::Groups(ensemble) if g < ensemble.groups.len() => Ok(&ensemble.groups[g]),
            _ => bail!("model group {} does not exist: the federation has {}", g + 1, self.groups()),
        }
    }

    /// What every example is.
    pub fn input(&self) -> InputShape {
        self.first().input
    }

    /// The output classes.
    pub fn classes(&self) -> usize {
        self.first().classes
    }

    fn first(&self) -> &ModelSpec {
        match self {
            FederationModel::Single(spec) => spec,
            FederationModel::Groups(ensemble) => &ensemble.groups[0],
        }
    }

    /// The initial global model for `seed`: the spec's, or each group's for its own seed
    /// stream (`derive_seed(seed, group)`, groups counted from 1).
    pub fn initial_model(&self, seed: u64) -> ModelFile {
        match self {
            FederationModel::Single(spec) => spec.initial_model(seed),
            FederationModel::Groups(ensemble) => {
                let members: Vec<ModelFile> =
                    ensemble.groups.iter().enumerate().map(|(g, spec)| spec.initial_model(derive_seed(seed, g as u64 + 1))).collect();
                self.assemble(&members, 0, 0)
            }
        }
    }

    /// Checks that `model` is a global model (or an update) of this federation: its spec
    /// and every tensor's name and shape.
    pub fn check_model(&self, model: &ModelFile) -> Result<()> {
        let FederationModel::Groups(ensemble) = self else {
            return self.first().check_model(model);
        };
        ensure!(
            model.spec == Some(ensemble.digest()) && model.architecture == SPEC_ARCHITECTURE,
            "model file: follows {}, but the federation's model is {self}",
            crate::spec::describe(&model.architecture, model.spec)
        );
        let expected: Vec<(String, Vec<usize>)> = ensemble
            .groups
            .iter()
            .enumerate()
            .flat_map(|(g, spec)| spec.params().into_iter().map(move |(name, shape)| (format!("{}{name}", Ensemble::prefix(g)), shape)))
            .collect();
        let listed: Vec<(&str, &[u64])> = model.tensors.iter().map(|t| (t.name.as_str(), t.shape.as_slice())).collect();
        crate::weights::check_tensor_list(&listed, &expected)
    }

    /// Group `g`'s model out of an ensemble model (renamed, naming the group's spec, with
    /// the ensemble's round and samples); a single spec's model is itself.
    pub fn member(&self, model: &ModelFile, g: usize) -> Result<ModelFile> {
        let spec = self.group_spec(g)?;
        if let FederationModel::Single(_) = self {
            return Ok(model.clone());
        }
        self.check_model(model)?;
        let prefix = Ensemble::prefix(g);
        let tensors = model
            .tensors
            .iter()
            .filter_map(|t| t.name.strip_prefix(&prefix).map(|name| NamedTensor { name: name.to_string(), ..t.clone() }))
            .collect();
        let member = ModelFile {
            format_version: FORMAT_VERSION,
            architecture: spec.architecture().to_string(),
            spec: spec.file_digest(),
            round: model.round,
            n_samples: model.n_samples,
            tensors,
        };
        spec.check_model(&member)?;
        Ok(member)
    }

    /// `whole` with group `g`'s tensors replaced by `member`'s (a group model of that
    /// group's spec), and `member`'s round and samples: what a learner of group `g` sends.
    pub fn embed(&self, whole: &ModelFile, g: usize, member: &ModelFile) -> Result<ModelFile> {
        self.group_spec(g)?.check_model(member)?;
        let FederationModel::Groups(_) = self else { return Ok(member.clone()) };
        self.check_model(whole)?;
        let prefix = Ensemble::prefix(g);
        let mut trained = member.tensors.iter();
        let tensors = whole
            .tensors
            .iter()
            .map(|t| match t.name.strip_prefix(&prefix) {
                Some(_) => trained.next().map(|m| NamedTensor { name: t.name.clone(), ..m.clone() }).unwrap_or_else(|| t.clone()),
                None => t.clone(),
            })
            .collect();
        Ok(ModelFile { tensors, round: member.round, n_samples: member.n_samples, ..whole.clone() })
    }

    /// The ensemble model of the group models `members` (in group order), of `round`, with
    /// `n_samples`.
    pub fn assemble(&self, members: &[ModelFile], round: u64, n_samples: u64) -> ModelFile {
        let FederationModel::Groups(ensemble) = self else {
            let mut model = members[0].clone();
            (model.round, model.n_samples) = (round, n_samples);
            return model;
        };
        let tensors = members
            .iter()
            .enumerate()
            .flat_map(|(g, m)| {
                m.tensors.iter().map(move |t| NamedTensor { name: format!("{}{}", Ensemble::prefix(g), t.name), ..t.clone() })
            })
            .collect();
        ModelFile {
            format_version: FORMAT_VERSION,
            architecture: SPEC_ARCHITECTURE.to_string(),
            spec: Some(ensemble.digest()),
            round,
            n_samples,
            tensors,
        }
    }

    /// The global model of `round` from each group's aggregation of its inputs (one per
    /// group, in group order): a group without inputs keeps its part of `previous`. The
    /// aggregator and `verify` both come here, so what one publishes the other recomputes.
    /// `selected`, `scores` and `clipped` gather every group's, by ascending node id.
    pub fn finish(&self, aggregations: Vec<Aggregation>, previous: &ModelFile, round: u64) -> Result<Outcome> {
        ensure!(
            aggregations.len() == self.groups(),
            "{} aggregations for a federation of {} model groups",
            aggregations.len(),
            self.groups()
        );
        let (mut members, mut n_samples) = (Vec::new(), 0u64);
        let (mut selected, mut scores, mut clipped) = (Vec::new(), Vec::new(), Vec::new());
        for (g, aggregation) in aggregations.into_iter().enumerate() {
            if aggregation.is_empty() {
                members.push(self.member(previous, g)?);
                continue;
            }
            let outcome = aggregation.finish()?;
            selected.extend(outcome.selected);
            scores.extend(outcome.scores);
            clipped.extend(outcome.clipped);
            n_samples = n_samples.checked_add(outcome.model.n_samples).context("the groups' sample count overflows")?;
            members.push(self.member(&outcome.model, g)?);
        }
        selected.sort_unstable();
        scores.sort_by_key(|&(id, _)| id);
        clipped.sort_unstable();
        Ok(Outcome { model: self.assemble(&members, round, n_samples), selected, scores, clipped })
    }

    /// Accuracy and mean cross-entropy of `model` on `set`: for an ensemble, of the mean of
    /// the group models' softmax outputs.
    pub fn evaluate(&self, model: &ModelFile, set: &Dataset) -> Result<Evaluation> {
        let FederationModel::Groups(ensemble) = self else {
            return crate::train::evaluate(self.first(), model, set);
        };
        ensure!(!set.is_empty(), "the test set is empty");
        let classes = self.classes();
        let mut mean = vec![0f32; set.len() * classes];
        for (g, spec) in ensemble.groups.iter().enumerate() {
            let probabilities = Network::new(spec, &self.member(model, g)?)?.predict(set, EVAL_BATCH)?;
            for (m, p) in mean.iter_mut().zip(probabilities) {
                *m += p / ensemble.groups.len() as f32;
            }
        }
        let (mut loss, mut correct) = (0f64, 0usize);
        for (row, &label) in mean.chunks_exact(classes).zip(set.labels()) {
            let best = row.iter().enumerate().fold(0, |best, (j, &v)| if v > row[best] { j } else { best });
            correct += usize::from(best == label as usize);
            loss -= (row[label as usize].max(f32::MIN_POSITIVE) as f64).ln();
        }
        let n = set.len();
        Ok(Evaluation { accuracy: correct as f64 / n as f64, loss: loss / n as f64, n })
    }

    /// Accuracy of group `g`'s model alone (the whole federation's for a single spec).
    pub fn evaluate_group(&self, model: &ModelFile, g: usize, set: &Dataset) -> Result<Evaluation> {
        crate::train::evaluate(self.group_spec(g)?, &self.member(model, g)?, set)
    }
}

impl fmt::Display for FederationModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FederationModel::Single(spec) => spec.fmt(f),
            FederationModel::Groups(ensemble) => {
                write!(f, "an ensemble of {} model groups (", ensemble.groups.len())?;
                for (g, spec) in ensemble.groups.iter().enumerate() {
                    write!(f, "{}{}: {:?}", if g > 0 { ", " } else { "" }, g + 1, spec.name)?;
                }
                write!(f, "; groups {})", hex(&ensemble.digest()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dense() -> ModelSpec {
        ModelSpec::parse("name = \"small\"\ninput = [28, 28, 1]\nclasses = 10\n[[layer]]\ndense = 16\n").unwrap()
    }

    #[test]
    fn an_ensemble_splits_and_joins_its_groups_and_averages_their_outputs() {
        let federation = FederationModel::Groups(Ensemble::new(vec![ModelSpec::paper_cnn(), dense()]).unwrap());
        let global = federation.initial_model(3);
        federation.check_model(&global).unwrap();
        assert_eq!(global.tensors[0].name, "g1.conv1.weight");
        assert_eq!(global.tensors.last().unwrap().name, "g2.fc2.bias");
        // Group 1 is the paper's CNN from seed stream 1: the built-in model file.
        let cnn = federation.member(&global, 0).unwrap();
        assert_eq!(cnn.to_bytes(), ModelSpec::paper_cnn().initial_model(derive_seed(3, 1)).to_bytes());
        let mut small = federation.member(&global, 1).unwrap();
        assert_eq!(small.spec, Some(dense().digest()));
        // A learner of group 2 trains its part; the rest of the ensemble stays as it was.
        small.tensors[0].data[0] ^= 1;
        small.round = 1;
        let sent = federation.embed(&global, 1, &small).unwrap();
        assert_eq!(sent.round, 1);
        assert_eq!(federation.member(&sent, 0).unwrap().tensors, cnn.tensors);
        assert_eq!(federation.member(&sent, 1).unwrap().tensors, small.tensors);
        assert_eq!(federation.assemble(&[cnn.clone(), small.clone()], 1, 0).tensors, sent.tensors);
        // Its update relative to the global model: the CNN's tensors cost no bytes.
        let bytes = crate::encoding::encode(&sent, Some(&global), crate::encoding::Encoding::Int8).unwrap();
        assert!(bytes.len() < 20_000, "{} bytes", bytes.len());
        assert_eq!(crate::encoding::decode(&bytes, Some(&global)).unwrap().model.tensors[..10], global.tensors[..10]);
        // A group model or another ensemble is not this federation's global model.
        let err = federation.check_model(&cnn).unwrap_err().to_string();
        assert!(err.contains("but the federation's model is an ensemble of 2 model groups"), "{err}");

        // The ensemble's prediction is the mean of the groups' softmax outputs.
        let mut rng = crate::rng::Rng::new(1);
        let images: Vec<u8> = (0..20 * 784).map(|_| (rng.next_f32() * 255.0) as u8).collect();
        let set = Dataset::from_raw(images, (0..20).map(|i| i % 10).collect()).unwrap();
        let a = Network::new(&ModelSpec::paper_cnn(), &cnn).unwrap().predict(&set, 7).unwrap();
        let b = Network::new(&dense(), &federation.member(&global, 1).unwrap()).unwrap().predict(&set, 7).unwrap();
        let expected = (0..20)
            .filter(|&i| {
                let row: Vec<f32> = (0..10).map(|j| (a[i * 10 + j] + b[i * 10 + j]) / 2.0).collect();
                let best = (0..10).fold(0, |best, j| if row[j] > row[best] { j } else { best });
                best == i % 10
            })
            .count();
        assert_eq!(federation.evaluate(&global, &set).unwrap().accuracy, expected as f64 / 20.0);
    }

    #[test]
    fn finishing_a_round_averages_each_group_and_keeps_a_group_without_inputs() {
        use crate::rules::{Recipe, Rule};
        let federation = FederationModel::Groups(Ensemble::new(vec![ModelSpec::paper_cnn(), dense()]).unwrap());
        let previous = federation.initial_model(5);
        let recipe = Recipe { rule: Rule::FedAvg, clip_norm: None };
        let new = || Aggregation::new(&recipe, None).unwrap();
        let mut aggregations = vec![new(), new()];
        // Two learners of group 2 send their part of the ensemble: 1.0 and 3.0 everywhere,
        // from 100 and 300 samples.
        for (node_id, value, samples) in [(4, 1.0f32, 100), (9, 3.0, 300)] {
            let mut small = federation.member(&previous, 1).unwrap();
            for t in &mut small.tensors {
                t.data = value.to_le_bytes().repeat(t.data.len() / 4);
            }
            (small.round, small.n_samples) = (1, samples);
            aggregations[1].add(node_id, &federation.embed(&previous, 1, &small).unwrap(), "update").unwrap();
        }
        let outcome = federation.finish(aggregations, &previous, 1).unwrap();
        assert_eq!((outcome.model.round, outcome.model.n_samples), (1, 400));
        assert_eq!((outcome.selected, outcome.clipped), (vec![4, 9], vec![]));
        assert_eq!(federation.member(&outcome.model, 0).unwrap().tensors, federation.member(&previous, 0).unwrap().tensors);
        let averaged = federation.member(&outcome.model, 1).unwrap();
        assert!(averaged.tensors.iter().all(|t| t.data.chunks(4).all(|v| v == 2.5f32.to_le_bytes())));
        let err = federation.finish(vec![new()], &previous, 1).unwrap_err().to_string();
        assert!(err.contains("1 aggregations for a federation of 2 model groups"), "{err}");
    }

    #[test]
    fn groups_resolve_from_their_canonical_bytes_and_must_share_input_and_classes() {
        let ensemble = Ensemble::new(vec![ModelSpec::paper_cnn(), dense()]).unwrap();
        let store = |d: &[u8; 32]| -> Result<Vec<u8>> {
            for text in [ensemble.canonical(), ModelSpec::paper_cnn().canonical(), dense().canonical()] {
                if &sha256(text.as_bytes()) == d {
                    return Ok(text.into_bytes());
                }
            }
            bail!("not stored")
        };
        let resolved = FederationModel::resolve(Some(ensemble.digest()), store).unwrap();
        assert_eq!(resolved, FederationModel::Groups(ensemble.clone()));
        assert_eq!(FederationModel::resolve(Some(dense().digest()), store).unwrap(), FederationModel::Single(dense()));
        let other = ModelSpec::parse("name = \"s\"\nfeatures = 784\nclasses = 10\n").unwrap();
        let err = Ensemble::new(vec![dense(), other]).unwrap_err().to_string();
        assert!(err.contains("share their input and classes"), "{err}");
        let err = Ensemble::new(vec![dense(), dense()]).unwrap_err().to_string();
        assert!(err.contains("are the same spec"), "{err}");
        assert!(Ensemble::new(vec![dense()]).is_err());
    }
}
