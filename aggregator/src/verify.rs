//! `fl-aggregator verify --round N`: anyone with RPC and IPFS access recomputes round N's
//! global model from what the chain records, and checks every claim of it. Needs no key.
//!
//! Steps: find the round's `GlobalWeightSet` event (its CID, digest, commitment, the node
//! ids of the rule's inputs and the round record, see [`crate::record`]); find those
//! learners' `LocalWeightSet` events of the round; check they and the record hash to the
//! published commitment; check every update of the round that the aggregator had read is
//! an input or left out with a reason; fetch each model (checked against its digest on
//! chain) and, with clipping, the previous global model; apply the recorded rule in
//! ascending node id order, as the aggregator does; compare the bytes, and the updates the
//! rule selected and clipping changed with what the record says. Round 0 is recomputed from
//! its recorded seed. A round of a version-1 registry (no record) is checked as FedAvg.
//! Compressed updates (`fl_core::encoding`) are decoded onto the base they name, which must
//! be the previous global model or its encoded copy's decoding, and each input's encoding is
//! checked against the record's `encodings`; a recorded encoded copy of the global model
//! (`global_encoded`) is derived again from the model and its digest and CID compared.
//! What each input's file reports (its board's own accuracy, loss and example count, record
//! version 4's `reported`) is read from the files and compared with the record: the
//! figures are not checked for truth (no one but the board has its test set), only that the
//! record says what the files say.
//! An asynchronous round (record version 3) takes each input's update of the round the
//! record names, mined in the round's block range (after the previous global model's
//! `closed_at_block`); it checks every update mined in that range is an input or left out,
//! that no input is staler than the bound the registry sets and that the buffer and bound
//! are the registry's, and recomputes the model from the inputs rebased onto the previous
//! global model with their staleness weights (`fl_core::staleness`).
//! Every mismatch is printed; the exit status is 1 if there is any.

use std::collections::BTreeMap;
use std::ffi::OsString;

use anyhow::{bail, Context, Result};
use fl_contracts::endpoints::{EndpointSettings, Endpoints, Missing, CHAIN_HELP, IPFS_HELP};
use fl_contracts::{commitment, Event, GlobalUpdate, LocalUpdate, Mode, Registry};
use fl_core::encoding::{Bases, Decoded, Encoding, Report};
use fl_core::ensemble::FederationModel;
use fl_core::flags::number;
use fl_core::rules::{Aggregation, Outcome, Recipe, Rule};
use fl_core::spec::MAX_SPEC_BYTES;
use fl_core::staleness;
use fl_core::weights::{hex, sha256, ModelFile, MAX_MODEL_BYTES};
use lexopt::prelude::*;

use crate::fetch::fetch_in_order;
use crate::record::{AsyncRound, RoundRecord};

/// Threads fetching a round's inputs at once (as `run`'s default `--fetch-workers`).
const FETCH_WORKERS: usize = 4;

const USAGE: &str = "\
usage: fl-aggregator verify --round N [flags]

recomputes round N's global model with the rule its round record names, from the local
updates it commits to, and checks its bytes, its commitment, the updates it selected and
clipped, and that every update of the round is used or left out with a reason; prints each
mismatch and exits with status 1 if there is any. Round 0 is recomputed from its seed.

  --round N              the round to check
  --from-block N         first block to search for events (default: the registry's deployment)
";

/// What `verify` found: every check that failed is in `problems`.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub round: u64,
    /// The rule and clipping the round record names (FedAvg for a version-1 registry).
    pub recipe: String,
    pub published_digest: [u8; 32],
    /// `None` when nothing could be recomputed (the inputs are not what the event says).
    pub recomputed_digest: Option<[u8; 32]>,
    pub node_ids: Vec<u64>,
    pub problems: Vec<String>,
}

impl Verdict {
    /// True if every check passed.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Parses the flags of `fl-aggregator verify` and runs it.
pub fn main(args: Vec<OsString>) -> Result<()> {
    let mut parser = lexopt::Parser::from_args(args);
    let mut endpoints = EndpointSettings::default();
    let (mut round, mut from_block) = (None, None);
    while let Some(arg) = parser.next()? {
        match arg {
            Long(flag) if EndpointSettings::handles(flag) => {
                let flag = flag.to_string();
                endpoints.set_flag(&flag, parser.value()?)?;
            }
            Long("round") => round = Some(number::<u64>(&mut parser, "--round")?),
            Long("from-block") => from_block = Some(number(&mut parser, "--from-block")?),
            Short('h') | Long("help") => {
                print!("{USAGE}{CHAIN_HELP}{IPFS_HELP}");
                return Ok(());
            }
            _ => return Err(arg.unexpected().into()),
        }
    }
    let round = round.context("--round N is required")?;
    let endpoints = endpoints.or(EndpointSettings::from_env()?).finish(Missing::Loopback, "")?;
    let verdict = verify(&endpoints, round, from_block)?;
    println!(
        "round {}: {}, inputs {:?}, published sha256 {}, recomputed sha256 {}",
        verdict.round,
        verdict.recipe,
        verdict.node_ids,
        hex(&verdict.published_digest),
        verdict.recomputed_digest.map(|d| hex(&d)).unwrap_or_else(|| "(not recomputed)".into())
    );
    for problem in &verdict.problems {
        println!("round {round}: MISMATCH: {problem}");
    }
    if !verdict.ok() {
        bail!("round {round}: {} check(s) failed: the published global model is not what its record says", verdict.problems.len());
    }
    println!("round {round}: verified");
    Ok(())
}

/// Compares the record's `reported` with what the inputs' files report (`from_files`, by
/// node id): every difference is a problem.
fn check_reported(record: &RoundRecord, from_files: &BTreeMap<u64, Report>, problems: &mut Vec<String>) {
    let figures = |r: &Report| format!("accuracy {}, loss {} on {} examples", r.accuracy, r.loss, r.examples);
    let ids: std::collections::BTreeSet<u64> = record.reported.keys().chain(from_files.keys()).copied().collect();
    for id in ids {
        let (recorded, file) = (record.reported.get(&id), from_files.get(&id));
        if recorded != file {
            problems.push(format!(
                "the record says learner {id} reported {}, its file {}",
                recorded.map_or("nothing".into(), figures),
                file.map_or("carries no report".into(), |r| format!("says {}", figures(r)))
            ));
        }
    }
}

/// The encoded copy of the global model that the record names, derived again from `global`:
/// its digest and CID must be the recorded ones.
fn check_encoded_global(record: &RoundRecord, global: &ModelFile, problems: &mut Vec<String>) -> Result<()> {
    let Some(claimed) = &record.global_encoded else { return Ok(()) };
    let encoding: Encoding = match claimed.encoding.parse() {
        Ok(encoding) => encoding,
        Err(err) => {
            problems.push(format!("the record's encoded global model: {err}"));
            return Ok(());
        }
    };
    let bytes = fl_core::encoding::encode(global, None, encoding)?;
    let (digest, cid) = (hex(&sha256(&bytes)), fl_ipfs::cid_of(&bytes));
    if digest != claimed.sha256 || cid != claimed.cid {
        problems.push(format!(
            "the record's {encoding} copy of the global model is {} (sha256 {}), but encoding the model gives {cid} (sha256 {digest})",
            claimed.cid, claimed.sha256
        ));
    }
    Ok(())
}

/// The checks of an asynchronous round's record against the registry and the previous
/// global model: the buffer and staleness bound are the registry's, the block range starts
/// where the previous global model's ended, there are as many input rounds as inputs and at
/// least `buffer` inputs, and none is staler than the bound.
fn check_async_round(
    registry: &Registry,
    round: u64,
    a: &AsyncRound,
    events: &RoundEvents,
    inputs: usize,
    problems: &mut Vec<String>,
) -> Result<()> {
    match registry.mode()? {
        Mode::Async { buffer, max_staleness } if (buffer, max_staleness) == (a.buffer, a.max_staleness) => {}
        mode => problems.push(format!(
            "the record says asynchronous rounds with buffer {} and staleness at most {}, the registry runs {mode}",
            a.buffer, a.max_staleness
        )),
    }
    if a.weighting != staleness::WEIGHTING {
        problems.push(format!("the record weighs staleness by {:?}, this program knows {:?}", a.weighting, staleness::WEIGHTING));
    }
    let expected_start = match round {
        1 => registry.deployed_at()?.saturating_sub(1),
        _ => {
            let previous = events.bases.get(&(round - 1)).with_context(|| format!("no global model of round {} on chain", round - 1))?;
            RoundRecord::from_bytes(&previous.record)
                .ok()
                .and_then(|r| r.closed_at_block)
                .with_context(|| format!("the round record of global round {} has no closed_at_block", round - 1))?
        }
    };
    if a.opened_after_block != expected_start {
        problems.push(format!(
            "the record's updates start after block {}, but the previous global model closed at block {expected_start}",
            a.opened_after_block
        ));
    }
    if a.rounds.len() != inputs {
        problems.push(format!("the record names {} input rounds for {inputs} inputs", a.rounds.len()));
    }
    if (inputs as u64) < a.buffer {
        problems.push(format!("{inputs} inputs, fewer than the buffer of {}", a.buffer));
    }
    for r in &a.rounds {
        if !staleness::within(round, *r, a.max_staleness) {
            problems.push(format!("an input of round {r} is {} rounds stale, more than {}", round.saturating_sub(*r), a.max_staleness));
        }
    }
    Ok(())
}

/// The events `verify` needs, read in one pass over bounded `eth_getLogs` ranges.
struct RoundEvents {
    global: Option<(GlobalUpdate, u64)>,
    /// The global models the inputs start from, by round (the previous one at least).
    bases: BTreeMap<u64, GlobalUpdate>,
    /// The updates considered, by (node id, round), with the block each was mined in: the
    /// round's (synchronous), or those mined after the round's block range opened
    /// (asynchronous).
    locals: BTreeMap<(u64, u64), (LocalUpdate, u64)>,
}

/// Recomputes round `round` from the chain and IPFS.
pub fn verify(endpoints: &Endpoints, round: u64, from_block: Option<u64>) -> Result<Verdict> {
    let client = endpoints.read_only_client()?;
    let registry = Registry::at(&client, endpoints.registry()?);
    let from_block = match from_block {
        Some(block) => block,
        None => registry.deployed_at()?,
    };
    let ipfs = endpoints.ipfs();
    // Every model of the federation follows the spec fixed in the registry.
    let model = FederationModel::resolve(registry.model_spec()?, |digest| Ok(ipfs.fetch_by_sha256(digest, MAX_SPEC_BYTES as u64)?))?;
    let latest = client.confirmed_head()?;
    // The record says what else to read: an asynchronous round's block range and rounds.
    // Its range ends at the record's closed_at_block: later updates belong to later rounds.
    let (asynchronous, range_end) = match registry.global_event_of_round(round, from_block, latest)? {
        Some(g) if !g.record.is_empty() => match RoundRecord::from_bytes(&g.record) {
            Ok(r) => (r.asynchronous, r.closed_at_block.unwrap_or(latest)),
            Err(_) => (None, latest),
        },
        _ => (None, latest),
    };
    let base_rounds: Vec<u64> = match &asynchronous {
        Some(a) => a.rounds.iter().map(|r| r.saturating_sub(1)).chain([round.saturating_sub(1)]).collect(),
        None => vec![round.saturating_sub(1)],
    };
    let mut events = RoundEvents { global: None, bases: BTreeMap::new(), locals: BTreeMap::new() };
    registry.for_each_event(from_block, latest, &mut |logged| {
        match logged.event {
            Event::GlobalWeightSet(g) if g.round == round => events.global = Some((g, logged.block_number)),
            Event::GlobalWeightSet(g) if round > 0 && base_rounds.contains(&g.round) => {
                events.bases.insert(g.round, g);
            }
            Event::LocalWeightSet(u) => {
                let considered = match &asynchronous {
                    None => u.round == round,
                    Some(a) => logged.block_number > a.opened_after_block && logged.block_number <= range_end,
                };
                if considered {
                    events.locals.insert((u.node_id, u.round), (u, logged.block_number));
                }
            }
            _ => {}
        }
        Ok(())
    })?;
    let (global, _) =
        events.global.take().with_context(|| format!("no global model of round {round} published in blocks {from_block}..={latest}"))?;
    let fetch = |cid: &str, digest: &[u8; 32], what: &str| -> Result<ModelFile> {
        let bytes = ipfs.fetch_verified(cid, digest, MAX_MODEL_BYTES).with_context(|| format!("fetching {what} ({cid})"))?;
        ModelFile::from_bytes(&bytes).with_context(|| format!("{what} ({cid})"))
    };
    // A version-1 registry's round has no record: FedAvg of its inputs, the old commitment.
    let record = match global.record.is_empty() {
        true => None,
        false => Some(RoundRecord::from_bytes(&global.record).with_context(|| format!("round {round}'s record"))?),
    };
    let mut problems = Vec::new();
    if round == 0 {
        let seed = record.as_ref().and_then(|r| r.seed).context("round 0 has no recorded seed to recompute the initial model from")?;
        let initial = model.initial_model(seed);
        let recomputed = sha256(&initial.to_bytes());
        if recomputed != global.digest {
            problems.push(format!("the initial model is not the one seed {seed} gives"));
        }
        if let Some(record) = &record {
            check_encoded_global(record, &initial, &mut problems)?;
        }
        return Ok(Verdict {
            round,
            recipe: format!("initial model, seed {seed}"),
            published_digest: global.digest,
            recomputed_digest: Some(recomputed),
            node_ids: Vec::new(),
            problems,
        });
    }
    let recipe = match &record {
        Some(record) => record.recipe()?,
        None => Recipe { rule: Rule::FedAvg, clip_norm: None },
    };
    let recipe_text = format!("{}{}", recipe.rule, recipe.clip_norm.map(|c| format!(", clip-norm {c}")).unwrap_or_default());

    let closed = record.as_ref().and_then(|r| r.closed_at_block).unwrap_or(u64::MAX);
    // The inputs: each listed node id must have an update of the round on chain (in an
    // asynchronous round, of the round the record names, mined in the round's range).
    let asynchronous = record.as_ref().and_then(|r| r.asynchronous.as_ref());
    let input_rounds: Vec<u64> = match asynchronous {
        Some(a) => {
            check_async_round(&registry, round, a, &events, global.node_ids.len(), &mut problems)?;
            a.rounds.clone()
        }
        None => vec![round; global.node_ids.len()],
    };
    let mut inputs = Vec::with_capacity(global.node_ids.len());
    for (id, input_round) in global.node_ids.iter().zip(&input_rounds) {
        match events.locals.get(&(*id, *input_round)) {
            Some((update, block)) if *block <= closed => inputs.push(update.clone()),
            _ if *input_round == round => {
                problems.push(format!("the event lists learner {id} as an input, but no round-{round} update of it is on chain"))
            }
            _ => problems.push(format!(
                "the event lists learner {id}'s round-{input_round} update as an input, but no round-{input_round} update of it is on chain in this round's blocks"
            )),
        }
    }
    let recorded = record.as_ref().map(|_| global.record.as_slice());
    if commitment(&inputs, recorded)? != global.inputs_commitment {
        problems.push(format!(
            "the commitment {} is not the hash of the listed inputs{}",
            hex(&global.inputs_commitment),
            if record.is_some() { " and the round record" } else { "" }
        ));
    }
    // Accounting: every update of the round read before it closed is an input or left out
    // with a reason.
    if let Some(record) = &record {
        let is_input = |id: u64, r: u64| inputs.iter().any(|u| u.node_id == id && u.round == r);
        for ((id, update_round), (_, block)) in &events.locals {
            let accounted = is_input(*id, *update_round) || record.leaves_out(*id, *update_round, round);
            if !accounted && *block <= closed {
                problems.push(format!(
                    "learner {id}'s round-{update_round} update (block {block}) is neither an input nor left out with a reason"
                ));
            }
        }
        for left in &record.left_out {
            if is_input(left.node_id, left.round.unwrap_or(round)) {
                problems.push(format!("learner {} is both an input and left out ({})", left.node_id, left.reason));
            }
        }
    }
    if problems.iter().any(|p| p.contains("no round-") || p.contains("input rounds for")) {
        // Nothing sound to recompute from.
        return Ok(Verdict {
            round,
            recipe: recipe_text,
            published_digest: global.digest,
            recomputed_digest: None,
            node_ids: global.node_ids,
            problems,
        });
    }

    // Recompute with the recorded rule, from the recorded inputs in ascending node id order,
    // each decoded onto the base it names (the previous global model, or its encoded copy).
    let mut bases = BTreeMap::new();
    for base_round in input_rounds.iter().map(|r| r - 1).chain([round - 1]) {
        if bases.contains_key(&(base_round + 1)) {
            continue;
        }
        let event = events
            .bases
            .get(&base_round)
            .with_context(|| format!("round {round}'s inputs start from round {base_round}'s global model, which is not on chain"))?;
        let model = fetch(&event.cid, &event.digest, &format!("the global model of round {base_round}"))?;
        bases.insert(base_round + 1, Bases::of(&model)?);
    }
    let previous = bases[&round].global();
    // Model groups: the record says which inputs each group combined; each must be its
    // learner's group on the registry (fixed before the learner's first update).
    let groups = model.groups();
    let mut group_of = BTreeMap::new();
    if groups > 1 {
        let listed = record.as_ref().map(|r| r.groups.clone()).unwrap_or_default();
        if listed.len() != groups {
            problems.push(format!("the record lists {} model groups' inputs, the federation has {groups} groups", listed.len()));
        }
        for (g, ids) in listed.iter().enumerate() {
            for id in ids {
                let registered = registry.learner_group(*id)? as usize;
                if registered != g {
                    problems.push(format!(
                        "the record puts learner {id} in model group {}, the registry in group {}",
                        g + 1,
                        registered + 1
                    ));
                }
                group_of.insert(*id, g);
            }
        }
        let mut all: Vec<u64> = group_of.keys().copied().collect();
        all.sort_unstable();
        let mut inputs_listed = global.node_ids.clone();
        inputs_listed.sort_unstable();
        if all != inputs_listed || listed.iter().map(Vec::len).sum::<usize>() != global.node_ids.len() {
            problems.push(format!("the record's groups {listed:?} are not a partition of the inputs {:?}", global.node_ids));
        }
    }
    let group = |node_id: u64| group_of.get(&node_id).copied().unwrap_or(0);
    let mut aggregations =
        (0..groups).map(|_| Aggregation::new(&recipe, recipe.clip_norm.map(|_| previous))).collect::<Result<Vec<_>>>()?;
    // Fetched by a few threads, added in node-id order: the same bytes as one at a time.
    let what = |update: &LocalUpdate| format!("learner {}'s round-{} model", update.node_id, update.round);
    let is_async = asynchronous.is_some();
    let fetch_update = |update: &LocalUpdate| -> Result<Decoded> {
        let bytes =
            ipfs.fetch_verified(&update.cid, &update.digest, MAX_MODEL_BYTES).with_context(|| format!("fetching {}", what(update)))?;
        let its_bases = &bases[&update.round];
        let mut decoded = its_bases.decode(&bytes).with_context(|| format!("{} ({})", what(update), update.cid))?;
        if is_async {
            // The step from the update's base, damped and moved onto the latest global model.
            let base = its_bases.model(decoded.base).context("the update's base is not among its round's")?;
            decoded.model = staleness::rebase(&decoded.model, base, previous, round - update.round)
                .with_context(|| format!("rebasing {}", what(update)))?;
        }
        Ok(decoded)
    };
    let mut encodings = Vec::new();
    let mut reported = BTreeMap::new();
    fetch_in_order(&inputs, FETCH_WORKERS, 2 * FETCH_WORKERS, fetch_update, |index, decoded| {
        let decoded = decoded?;
        reported.extend(decoded.report.map(|r| (inputs[index].node_id, r)));
        encodings.push((inputs[index].node_id, decoded.encoding));
        aggregations[group(inputs[index].node_id)].add(inputs[index].node_id, &decoded.model, &what(&inputs[index]))
    })?;
    let Outcome { model: recomputed, selected, clipped, .. } = model.finish(aggregations, previous, round)?;
    let recomputed_digest = sha256(&recomputed.to_bytes());
    if let Err(err) = model.check_model(&recomputed) {
        problems.push(format!("the inputs do not follow the federation's model {model}: {err:#}"));
    }
    if recomputed_digest != global.digest {
        problems.push(format!("the published model is not what {recipe_text} gives from the listed inputs"));
    }
    if let Some(record) = &record {
        if record.selected != selected {
            problems.push(format!("the record says the rule selected {:?}, it selects {:?}", record.selected, selected));
        }
        if record.clipped != clipped {
            problems.push(format!("the record says {:?} were clipped, clipping changes {:?}", record.clipped, clipped));
        }
        // An input the record names no encoding for (every input before version 2) is f32.
        for (node_id, encoding) in &encodings {
            let recorded = record.encoding_of(*node_id).unwrap_or("f32");
            let listed = record.encodings.get(encoding.name()).is_some_and(|ids| ids.contains(node_id));
            if !listed && recorded != encoding.name() {
                problems.push(format!("the record says learner {node_id}'s update is {recorded}, its file is {encoding}"));
            }
        }
        if let Some(stray) = record.encodings.values().flatten().find(|id| !global.node_ids.contains(id)) {
            problems.push(format!("the record names an encoding for learner {stray}, which is not an input"));
        }
        check_encoded_global(record, &recomputed, &mut problems)?;
        check_reported(record, &reported, &mut problems);
    }
    Ok(Verdict {
        round,
        recipe: recipe_text,
        published_digest: global.digest,
        recomputed_digest: Some(recomputed_digest),
        node_ids: global.node_ids,
        problems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_figures_must_be_what_the_files_say() {
        let report = Report { accuracy: 0.97, loss: 0.1, examples: 500 };
        let mut record = RoundRecord::default();
        record.reported.insert(1, report);
        let mut problems = Vec::new();
        check_reported(&record, &BTreeMap::from([(1, report)]), &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let files = BTreeMap::from([(1, Report { accuracy: 0.5, ..report }), (2, report)]);
        check_reported(&record, &files, &mut problems);
        assert_eq!(
            problems,
            [
                "the record says learner 1 reported accuracy 0.97, loss 0.1 on 500 examples, its file says accuracy 0.5, loss 0.1 on 500 examples",
                "the record says learner 2 reported nothing, its file says accuracy 0.97, loss 0.1 on 500 examples",
            ]
        );
    }
}
