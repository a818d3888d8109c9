//! `fl-aggregator run`: the header node's loop. It opens round 0 with a seeded initial
//! model, then for each round waits for the learners' updates (following the registry's
//! `LocalWeightSet` events over bounded `eth_getLogs` ranges), fetches each model from IPFS
//! and checks it against the digest on chain, feeds it to the aggregation rule (`--rule`,
//! FedAvg by default, streaming; see `fl_core::rules`), evaluates the result and publishes
//! it with its round record ([`crate::record`]) and the commitment to both.
//!
//! The accuracy, loss and example count each board reported for its update on its own test
//! set (`fl_core::encoding::Report`) go into the round record (`reported`), whatever the
//! flags, and never into aggregation. Without `--data` the aggregator has no test set and
//! evaluates nothing: the outputs show the boards' figures, marked as reported (the global
//! model's: the examples-weighted mean of its inputs').
//!
//! All progress lives on the chain: a restarted aggregator reads the current round and
//! carries on; the contract refuses a round published twice. By default a round waits for
//! every registered learner; `--min-learners K --round-timeout S` lets it close without
//! the stragglers once S seconds have passed and K updates are in (the paper's "global
//! updates that do not wait for every learner"). A rule that needs more updates than are
//! in (Krum: 2F + 3) keeps the round open, and says so, until enough are.
//!
//! On a registry deployed for asynchronous rounds (`deploy --mode async --buffer K
//! --max-staleness S`; read from the chain, no flag here) a round does not wait for
//! learners: it closes as soon as K usable updates were mined since the previous global
//! model closed, whatever round each was trained for (at most S behind; the latest of each
//! learner), and each update enters rebased onto the latest global model with its step
//! damped by its staleness (`fl_core::staleness`). The round record says which round each
//! input is of and the block range it covers (see `fl_core::record`, version 3).
//!
//! With `--confirmations N` (chains that reorganise) it reads events and state only from
//! blocks with N blocks on top and waits for N confirmations of each publication; one
//! reorganised out comes back as a dropped transaction, a transient error, and the round
//! is aggregated and published again.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fl_contracts::{commitment, is_transient, Event, LocalUpdate, Mode, Registry, TransactionReceipt, H256};
use fl_core::data::{load_eval, Dataset};
use fl_core::encoding::{self, Bases, Decoded, Encoding, Report};
use fl_core::ensemble::FederationModel;
use fl_core::files::write_atomic;
use fl_core::flags::DataFlags;
use fl_core::rules::{Aggregation, Outcome};
use fl_core::spec::MAX_SPEC_BYTES;
use fl_core::staleness;
use fl_core::train::Evaluation;
use fl_core::weights::{hex, sha256, ModelFile, MAX_MODEL_BYTES};
use fl_ipfs::Backoff;

pub use crate::config::{Parsed, RunConfig};
use crate::fetch::fetch_in_order;
use crate::record::{AsyncRound, EncodedGlobal, RoundRecord};
use crate::report::{header, row, unix_now, LearnerResult, Published, Reported, Results, RoundResult, Timings, REPORTED_NOTE};
use crate::service::{LeftOut, Monitor, Probe, Waiting};

/// Parses the flags of `fl-aggregator run` and runs it.
pub fn main(args: Vec<OsString>) -> Result<()> {
    match RunConfig::parse(args)? {
        Parsed::Run(config) => run(&config),
        Parsed::Printed => Ok(()),
    }
}

fn log(message: &str) {
    eprintln!("fl-aggregator: {message}");
}

/// Runs rounds until global round `config.rounds` is published.
pub fn run(config: &RunConfig) -> Result<()> {
    let client = config.endpoints.signing_client()?;
    let registry = Registry::at(&client, config.endpoints.registry()?);
    let owner = registry.owner()?;
    if owner != client.address() {
        bail!("registry {:?} is owned by {owner:?}, but the aggregator's key is {:?}", registry.address(), client.address());
    }
    registry.require_current_version()?;
    let mode = registry.mode()?;
    if matches!(mode, Mode::Async { .. }) && (config.min_learners.is_some() || config.round_timeout.is_some()) {
        bail!("registry {:?} runs {mode}: --min-learners and --round-timeout apply to synchronous rounds only", registry.address());
    }
    let ipfs = config.endpoints.ipfs_logging_retries(log);
    let model = FederationModel::resolve(registry.model_spec()?, |digest| Ok(ipfs.fetch_by_sha256(digest, MAX_SPEC_BYTES as u64)?))?;
    let set = match &config.data {
        Some(path) => Some(test_set(config, path, &model)?),
        None => None,
    };
    let eval = Evaluator { model, set };
    let mut results = Results::load_or_default(config.results.as_deref())?;
    results.registry = format!("{:?}", registry.address());
    results.chain_id = client.chain_id();
    log(&format!(
        "aggregating on chain {} registry {:?} ({mode}, model {}) as {:?} ({} confirmations), IPFS {}, {} test examples, rule {}{}",
        client.chain_id(),
        registry.address(),
        eval.model,
        client.address(),
        client.confirmations(),
        config.endpoints.ipfs_api,
        eval.set.as_ref().map_or("no --data: the boards' reported".into(), |set| set.len().to_string()),
        config.recipe.rule,
        config.recipe.clip_norm.map(|c| format!(" clipped to {c}")).unwrap_or_default()
    ));
    let from_block = match config.from_block {
        Some(block) => block,
        None => registry.deployed_at()?,
    };
    let mut cursor = Cursor::new(from_block);
    let monitor = Monitor::new(
        client.chain_id(),
        format!("{:?}", registry.address()),
        format!("{}{}", config.recipe.rule, config.recipe.clip_norm.map(|c| format!(", clipped to {c}")).unwrap_or_default()),
        eval.model.to_string(),
        mode,
        config.rounds,
    );
    monitor.resumed(&results.rounds);
    if let Some(addr) = config.listen {
        let probe = Probe::new(&config.endpoints.rpc_url, &config.endpoints.ipfs_api)?;
        let bound = crate::service::serve(addr, monitor.clone(), probe)?;
        log(&format!("serving the dashboard at http://{bound}/ (and /healthz, /metrics)"));
    }
    let mut header_printed = false;
    // The server's node or IPFS may go away for a while: such failures are retried (all
    // progress is on chain); any other error ends the run with its cause.
    let mut retry = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
    loop {
        let mut record = match step(config, &registry, &ipfs, &eval, mode, &mut cursor, &monitor) {
            Ok(Step::Done(round)) => {
                log(&format!("global model of round {} is published; done", round - 1));
                monitor.phase("done");
                break;
            }
            Ok(Step::Again) => continue,
            Ok(Step::Record(record, left_out)) => {
                retry.reset();
                monitor.published(&record, left_out);
                *record
            }
            Err(err) if is_transient(&err) => {
                log(&format!("{err:#}; retrying in {:?}", retry.next_pause()));
                retry.wait();
                continue;
            }
            Err(err) => return Err(err),
        };
        if config.verify {
            record.timings.verify_s = self_verify(config, from_block, record.round, &monitor);
        }
        let ids = match registry.learner_ids() {
            Ok(mut ids) => {
                ids.sort_unstable();
                ids
            }
            // Only the table's columns depend on it: the round itself is published.
            Err(_) => record.learners.iter().map(|l| l.node_id).collect(),
        };
        if !header_printed {
            println!("{}", header(&ids));
            if eval.set.is_none() {
                println!("{REPORTED_NOTE}");
            }
            header_printed = true;
        }
        println!("{}", row(&record, &ids));
        results.record(record);
        save_outputs(config, &results)?;
    }
    save_outputs(config, &results)?;
    eprint!("\n{}", results.table());
    Ok(())
}

/// What one pass of the loop produced.
enum Step {
    /// Every round up to `--rounds` is published; the chain's current round.
    Done(u64),
    /// The round was published by someone else meanwhile: look again.
    Again,
    /// A round this run published, and the node ids its record leaves out.
    Record(Box<RoundResult>, Vec<u64>),
}

/// Recomputes round `round` with `verify`'s code right after publishing it, logs and
/// reports the outcome; returns the seconds it took. A mismatch is reported, not fatal:
/// the round is on chain, and the operator must see it (the dashboard, the metrics).
fn self_verify(config: &RunConfig, from_block: u64, round: u64, monitor: &Monitor) -> f64 {
    monitor.phase("verifying");
    let started = Instant::now();
    let outcome = crate::verify::verify(&config.endpoints, round, Some(from_block)).map(|v| v.problems).map_err(|e| format!("{e:#}"));
    let seconds = started.elapsed().as_secs_f64();
    match &outcome {
        Ok(problems) if problems.is_empty() => log(&format!("round {round}: recomputed by verify: matched ({seconds:.2} s)")),
        Ok(problems) => {
            for problem in problems {
                log(&format!("round {round}: recomputed by verify: MISMATCH: {problem}"));
            }
        }
        Err(why) => log(&format!("round {round}: could not recompute it with verify: {why}")),
    }
    monitor.verified(round, outcome, seconds);
    seconds
}

/// The federation's model and the test set every model is evaluated on.
pub struct Evaluator {
    /// The model (one spec, or model groups) every model of the federation follows (read
    /// from the registry).
    pub model: FederationModel,
    /// The aggregator's test set, checked to fit the model (`None`: run without `--data`).
    pub set: Option<Dataset>,
}

impl Evaluator {
    /// Accuracy and loss of `model` (which must follow the federation's model: for model
    /// groups, of their ensemble) on the test set; `None` without one.
    pub fn evaluate(&self, model: &ModelFile) -> Result<Option<Evaluation>> {
        self.set.as_ref().map(|set| self.model.evaluate(model, set)).transpose()
    }

    /// Accuracy and loss of model group `group`'s part of `model` alone; `None` without a
    /// test set.
    pub fn evaluate_group(&self, model: &ModelFile, group: usize) -> Result<Option<Evaluation>> {
        self.set.as_ref().map(|set| self.model.evaluate_group(model, group, set)).transpose()
    }
}

/// The aggregator's test set from `--data` (`path`), checked to fit the federation's model.
fn test_set(config: &RunConfig, path: &std::path::Path, model: &FederationModel) -> Result<Dataset> {
    let data = DataFlags {
        path: Some(path.to_path_buf()),
        format: Some(config.data_format.clone()),
        label_column: config.label_column.clone(),
        ..DataFlags::default()
    };
    let source = data.source(model.input(), config.seed, "--data PATH")?;
    let set = load_eval(&source)?.take(config.test_limit.unwrap_or(usize::MAX));
    set.check_fits(model.input(), model.classes(), &source.to_string())
        .with_context(|| format!("the aggregator's test data does not fit the federation's model {model}"))?;
    Ok(set)
}

fn step(
    config: &RunConfig,
    registry: &Registry,
    ipfs: &fl_ipfs::Client,
    eval: &Evaluator,
    mode: Mode,
    cursor: &mut Cursor,
    monitor: &Monitor,
) -> Result<Step> {
    let round = registry.current_round()?;
    if round > config.rounds {
        return Ok(Step::Done(round));
    }
    if round == 0 {
        monitor.phase("publishing");
        return publish_initial(config, registry, ipfs, eval).map(|record| Step::Record(Box::new(record), Vec::new()));
    }
    Ok(match aggregate_round(config, registry, ipfs, eval, round, mode, cursor, monitor)? {
        Some((record, left_out)) => Step::Record(Box::new(record), left_out),
        None => Step::Again,
    })
}

fn save_outputs(config: &RunConfig, results: &Results) -> Result<()> {
    if let Some(path) = &config.results {
        results.save(path)?;
    }
    if let Some(path) = &config.plot {
        write_atomic(path, results.svg().as_bytes()).with_context(|| format!("writing plot {}", path.display()))?;
    }
    Ok(())
}

/// Publishes the seeded initial model as global round 0.
fn publish_initial(config: &RunConfig, registry: &Registry, ipfs: &fl_ipfs::Client, eval: &Evaluator) -> Result<RoundResult> {
    let model = eval.model.initial_model(config.seed);
    let started = Instant::now();
    let evaluation = eval.evaluate(&model)?;
    let evaluate_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut record = RoundRecord::initial(config.seed);
    record.global_encoded = encode_global(config, ipfs, &model, 0)?;
    let (global, _receipt) = publish(registry, ipfs, &model, 0, [0u8; 32], &[], &record.to_bytes())?;
    keep_for_verify(ipfs, registry, 0, &[], &global.cid, record.global_encoded.as_ref());
    log(&format!("round 0: published the initial model {} (seed {})", global.cid, config.seed));
    Ok(RoundResult {
        round: 0,
        learners: Vec::new(),
        global: Published { accuracy: evaluation.map(|e| e.accuracy), loss: evaluation.map(|e| e.loss), ..global },
        group_accuracy: Vec::new(),
        timings: Timings { evaluate_s, publish_s: started.elapsed().as_secs_f64(), ..Timings::default() },
        published_at: unix_now(),
    })
}

/// With `--global-encoding`, uploads the global model of `round` in that encoding (absolute
/// weights, no base) for learners to download instead, and says where for the record.
fn encode_global(config: &RunConfig, ipfs: &fl_ipfs::Client, model: &ModelFile, round: u64) -> Result<Option<EncodedGlobal>> {
    if config.global_encoding == Encoding::F32 {
        return Ok(None);
    }
    let bytes = encoding::encode(model, None, config.global_encoding)?;
    let cid =
        ipfs.add(&bytes).with_context(|| format!("uploading the {} copy of the global model of round {round}", config.global_encoding))?;
    log(&format!("round {round}: the {} copy of the global model is {cid} ({} bytes)", config.global_encoding, bytes.len()));
    Ok(Some(EncodedGlobal { encoding: config.global_encoding.to_string(), cid, sha256: hex(&sha256(&bytes)) }))
}

/// Uploads `model` and records it as global round `round`.
fn publish(
    registry: &Registry,
    ipfs: &fl_ipfs::Client,
    model: &ModelFile,
    round: u64,
    inputs_commitment: [u8; 32],
    node_ids: &[u64],
    record: &[u8],
) -> Result<(Published, TransactionReceipt)> {
    let bytes = model.to_bytes();
    let digest = sha256(&bytes);
    let cid = ipfs.add(&bytes).with_context(|| format!("uploading the global model of round {round}"))?;
    let receipt = registry
        .set_global_weight(round, &cid, digest, inputs_commitment, node_ids, record)
        .with_context(|| format!("publishing the global model of round {round}"))?;
    let published = Published {
        accuracy: None,
        loss: None,
        cid,
        digest: hex(&digest),
        samples: model.n_samples,
        tx: Some(format!("{:?}", receipt.transaction_hash)),
        gas: receipt.gas_used.map(|g| g.as_u64()),
        reported: None,
    };
    Ok((published, receipt))
}

/// Where the event scan has got to, the updates it has seen for the round at hand (the
/// latest of each learner), and those that could not be used, by (node id, round), with the
/// reason. In asynchronous rounds also the updates a newer one of the same learner replaced,
/// the start of the open round's block range, and the bases of the rounds it may draw from.
struct Cursor {
    next_block: u64,
    round: u64,
    seen: BTreeMap<u64, (LocalUpdate, H256)>,
    rejected: BTreeMap<(u64, u64), String>,
    superseded: Vec<LocalUpdate>,
    opened_after: u64,
    bases: BTreeMap<u64, Bases>,
}

impl Cursor {
    fn new(from_block: u64) -> Cursor {
        Cursor {
            next_block: from_block,
            round: 0,
            seen: BTreeMap::new(),
            rejected: BTreeMap::new(),
            superseded: Vec::new(),
            opened_after: 0,
            bases: BTreeMap::new(),
        }
    }

    /// Reads the events of the blocks not read yet and keeps the round-`round` updates
    /// (synchronous rounds), or every update (asynchronous rounds: the scan restarts after
    /// `opened_after`, the block the previous global model closed at, when the round changes).
    fn advance(&mut self, registry: &Registry, round: u64, opened_after: Option<u64>) -> Result<()> {
        if self.round != round {
            self.round = round;
            self.seen.retain(|_, (u, _)| u.round == round);
            self.rejected.clear();
            self.superseded.clear();
            if let Some(after) = opened_after {
                self.seen.clear();
                self.next_block = after + 1;
                self.opened_after = after;
            }
        }
        // Only blocks with the client's confirmations: an update read from a block that a
        // reorganisation can still remove could end up in a global model it is not under.
        let latest = registry.client().confirmed_head()?;
        if latest < self.next_block {
            return Ok(());
        }
        let asynchronous = opened_after.is_some();
        let (seen, superseded) = (&mut self.seen, &mut self.superseded);
        registry.for_each_event(self.next_block, latest, &mut |logged| {
            if let Event::LocalWeightSet(update) = logged.event {
                if asynchronous || update.round >= round {
                    if let Some((older, _)) = seen.insert(update.node_id, (update, logged.transaction_hash)) {
                        superseded.push(older);
                    }
                }
            }
            Ok(())
        })?;
        self.next_block = latest + 1;
        Ok(())
    }
}

/// The updates a round will fetch, and what it knows of them before fetching.
struct Collected {
    inputs: Vec<(LocalUpdate, H256)>,
    expected: Vec<u64>,
    closed_at_block: u64,
    /// Asynchronous rounds: updates left out before fetching, with why.
    left_early: Vec<(LocalUpdate, LeftOut, String)>,
}

/// Synchronous rounds: waits until every registered learner's update of `round` is in (or
/// `--min-learners` after `--round-timeout`). `None` if the round was published meanwhile.
fn collect_sync(
    config: &RunConfig,
    registry: &Registry,
    round: u64,
    cursor: &mut Cursor,
    monitor: &Monitor,
    poll: &mut Backoff,
) -> Result<Option<Collected>> {
    let waiting_since = Instant::now();
    let mut last_report = String::new();
    let rule = &config.recipe.rule;
    loop {
        cursor.advance(registry, round, None)?;
        if registry.current_round()? != round {
            return Ok(None);
        }
        let expected = registry.learner_ids()?;
        let arrived: Vec<(LocalUpdate, H256)> =
            cursor.seen.values().filter(|(u, _)| u.round == round && expected.contains(&u.node_id)).cloned().collect();
        let usable: Vec<(LocalUpdate, H256)> =
            arrived.iter().filter(|(u, _)| !cursor.rejected.contains_key(&(u.node_id, u.round))).cloned().collect();
        let all_in = !expected.is_empty() && arrived.len() == expected.len();
        let timed_out = match (config.min_learners, config.round_timeout) {
            (Some(min), Some(timeout)) => waiting_since.elapsed() >= timeout && usable.len() >= min,
            _ => false,
        };
        let mut report = format!("round {round}: {} of {} learner updates in", arrived.len(), expected.len());
        if !cursor.rejected.is_empty() {
            report += &format!(", {} left out", cursor.rejected.len());
        }
        let mut waiting = Waiting::ForLearners;
        if (all_in || timed_out) && usable.len() < rule.min_inputs() {
            // Not published until the rule can run: more learners may register and send.
            report += &format!("; rule {rule} needs at least {} usable updates, so the round stays open", rule.min_inputs());
            waiting = Waiting::RuleNeedsMoreUpdates;
        } else if all_in || timed_out {
            if !all_in {
                let timeout = config.round_timeout.unwrap_or_default();
                log(&format!("round {round}: closing after {timeout:?} with {} of {} learners", arrived.len(), expected.len()));
            }
            let closed_at_block = cursor.next_block.saturating_sub(1);
            return Ok(Some(Collected { inputs: usable, expected, closed_at_block, left_early: Vec::new() }));
        }
        keep_waiting(monitor, round, &expected, &arrived, (waiting, report), &mut last_report, poll);
    }
}

/// Shows why the round is still open (on the dashboard; in the log when the reason
/// changed) and waits before the next poll.
fn keep_waiting(
    monitor: &Monitor,
    round: u64,
    expected: &[u64],
    arrived: &[(LocalUpdate, H256)],
    (waiting, report): (Waiting, String),
    last_report: &mut String,
    poll: &mut Backoff,
) {
    let seen: Vec<(u64, String)> = arrived.iter().map(|(u, _)| (u.node_id, u.cid.clone())).collect();
    monitor.collecting(round, expected, &seen, Some((waiting, report.clone())));
    if report != *last_report {
        log(&report);
        *last_report = report;
    }
    poll.wait();
}

/// Asynchronous rounds: waits until at least `buffer` usable updates (of any round within
/// the staleness bound, the latest of each learner) were mined since the previous global
/// model closed. `None` if the round was published meanwhile.
#[allow(clippy::too_many_arguments)]
fn collect_async(
    config: &RunConfig,
    registry: &Registry,
    round: u64,
    (buffer, max_staleness): (u64, u64),
    opened_after: u64,
    cursor: &mut Cursor,
    monitor: &Monitor,
    poll: &mut Backoff,
) -> Result<Option<Collected>> {
    let mut last_report = String::new();
    let rule = &config.recipe.rule;
    let needed = (buffer as usize).max(rule.min_inputs());
    loop {
        cursor.advance(registry, round, Some(opened_after))?;
        if registry.current_round()? != round {
            return Ok(None);
        }
        let expected = registry.learner_ids()?;
        let fresh = |u: &LocalUpdate| staleness::within(round, u.round, max_staleness);
        let usable: Vec<(LocalUpdate, H256)> = cursor
            .seen
            .values()
            .filter(|(u, _)| expected.contains(&u.node_id) && fresh(u) && !cursor.rejected.contains_key(&(u.node_id, u.round)))
            .cloned()
            .collect();
        if usable.len() >= needed {
            let mut left_early = Vec::new();
            for (u, _) in cursor.seen.values().filter(|(u, _)| !fresh(u)) {
                let why = format!(
                    "too stale: trained on the global model of round {}, {} rounds behind (at most {max_staleness})",
                    u.round - 1,
                    round - u.round
                );
                left_early.push((u.clone(), LeftOut::TooStale, why));
            }
            for u in &cursor.superseded {
                let newer = cursor.seen.get(&u.node_id).map(|(n, _)| n.round).unwrap_or_default();
                left_early.push((u.clone(), LeftOut::Superseded, format!("superseded by the same learner's round-{newer} update")));
            }
            let closed_at_block = cursor.next_block.saturating_sub(1);
            return Ok(Some(Collected { inputs: usable, expected, closed_at_block, left_early }));
        }
        let report = format!(
            "round {round}: {} of {needed} usable updates in since block {} (asynchronous: buffer {buffer}, staleness at most {max_staleness})",
            usable.len(),
            opened_after + 1
        );
        keep_waiting(monitor, round, &expected, &usable, (Waiting::ForLearners, report), &mut last_report, poll);
    }
}

/// Waits for round `round`'s updates, aggregates and publishes them. `None` if another
/// aggregator (or an earlier run of this one) published the round meanwhile, or too few
/// usable updates remained after fetching.
#[allow(clippy::too_many_arguments)]
fn aggregate_round(
    config: &RunConfig,
    registry: &Registry,
    ipfs: &fl_ipfs::Client,
    eval: &Evaluator,
    round: u64,
    mode: Mode,
    cursor: &mut Cursor,
    monitor: &Monitor,
) -> Result<Option<(RoundResult, Vec<u64>)>> {
    let waiting_since = Instant::now();
    let mut poll = Backoff::new(Duration::from_millis(250), config.max_poll);
    let rule = &config.recipe.rule;
    let collected = match mode {
        Mode::Sync => collect_sync(config, registry, round, cursor, monitor, &mut poll)?,
        Mode::Async { buffer, max_staleness } => {
            let opened_after = opened_after(registry, round)?;
            collect_async(config, registry, round, (buffer, max_staleness), opened_after, cursor, monitor, &mut poll)?
        }
    };
    let Some(Collected { inputs, expected, closed_at_block, left_early }) = collected else { return Ok(None) };
    let wait_s = waiting_since.elapsed().as_secs_f64();
    let seen: Vec<(u64, String)> = inputs.iter().map(|(u, _)| (u.node_id, u.cid.clone())).collect();
    monitor.collecting(round, &expected, &seen, None);
    monitor.phase("fetching");

    // The global models the updates start from: what compressed updates are differences
    // from (directly, or through an encoded copy), what clipping measures each update's
    // distance from, and in asynchronous rounds what stale steps are rebased onto.
    let from_block = registry.deployed_at()?;
    let mut rounds: Vec<u64> = inputs.iter().map(|(u, _)| u.round).chain([round]).collect();
    rounds.sort_unstable();
    rounds.dedup();
    cursor.bases.retain(|r, _| rounds.contains(r));
    for r in rounds {
        if let std::collections::btree_map::Entry::Vacant(entry) = cursor.bases.entry(r) {
            entry.insert(Bases::of(&global_of_round(registry, ipfs, r - 1, from_block)?)?);
        }
    }
    let bases = &cursor.bases;
    let previous = bases[&round].global();
    // Model groups: each input goes to its learner's group, and each group's inputs are
    // combined on their own (one group for a federation of one model).
    let groups = eval.model.groups();
    let mut group_of = BTreeMap::new();
    if groups > 1 {
        for (update, _) in &inputs {
            group_of.insert(update.node_id, registry.learner_group(update.node_id)? as usize);
        }
    }
    let group = |node_id: u64| group_of.get(&node_id).copied().unwrap_or(0);
    // Models are fetched and fed to the rule one at a time: FedAvg keeps a running sum and
    // the other rules spill to disk, so memory does not grow with the fleet.
    let mut aggregations =
        (0..groups).map(|_| Aggregation::new(&config.recipe, config.recipe.clip_norm.map(|_| previous))).collect::<Result<Vec<_>>>()?;
    let mut encodings: Vec<(u64, Encoding)> = Vec::new();
    // What each input's file reported: recorded and shown, never used to aggregate.
    let mut reports: Vec<(u64, Report)> = Vec::new();
    let mut used: Vec<LocalUpdate> = Vec::new();
    let mut learners = Vec::new();
    let mut timings = Timings { wait_s, ..Timings::default() };
    let mut rejected = Vec::new();
    // Fetched and checked by `--fetch-workers` threads, folded here in node-id order: the
    // bytes do not depend on which fetch finished first (see crate::fetch for the bound).
    let fetch_one = |(update, tx): &(LocalUpdate, H256)| {
        let bases = &bases[&update.round];
        // Each failure with the reason it counts under in the metrics.
        let fetched = ipfs
            .fetch_verified(&update.cid, &update.digest, MAX_MODEL_BYTES)
            .map_err(|e| match e {
                fl_ipfs::Error::DigestMismatch { .. } => (LeftOut::DigestMismatch, anyhow::Error::from(e)),
                e => (LeftOut::Unavailable, anyhow::Error::from(e)),
            })
            .and_then(|bytes| bases.decode(&bytes).map_err(|e| (LeftOut::InvalidFile, e)))
            .and_then(|Decoded { model, encoding, base, report }| {
                if model.n_samples != update.samples || model.round != update.round {
                    let e = anyhow::anyhow!(
                        "the file says round {} with {} samples, the chain says round {} with {}",
                        model.round,
                        model.n_samples,
                        update.round,
                        update.samples
                    );
                    return Err((LeftOut::WrongRoundOrSamples, e));
                }
                match mode {
                    Mode::Sync => Ok((model, encoding, report)),
                    // Named bases were checked by decoding; an absolute file's is the f32 model.
                    Mode::Async { .. } => bases
                        .model(base)
                        .context("the update's base is not among its round's")
                        .and_then(|b| staleness::rebase(&model, b, previous, round - update.round))
                        .map(|m| (m, encoding, report))
                        .map_err(|e| (LeftOut::Incompatible, e)),
                }
            });
        let gas = registry.client().rpc().transaction_receipt(*tx).ok().flatten().and_then(|r| r.gas_used).map(|g| g.as_u64());
        (fetched, gas)
    };
    let fetching_since = Instant::now();
    let workers = config.fetch_workers;
    fetch_in_order(&inputs, workers, 2 * workers, fetch_one, |index, (fetched, gas)| {
        let (update, tx) = &inputs[index];
        let label = format!("learner {} round {}", update.node_id, update.round);
        let mut entry = LearnerResult {
            node_id: update.node_id,
            model: Published {
                accuracy: None,
                loss: None,
                cid: update.cid.clone(),
                digest: hex(&update.digest),
                samples: update.samples,
                tx: Some(format!("{tx:?}")),
                gas,
                reported: None,
            },
            used: false,
            note: None,
        };
        let added = fetched.and_then(|(model, encoding, report)| {
            log(&format!("round {round}: fetched and verified {label} ({}, {encoding})", update.cid));
            entry.model.reported = report.as_ref().map(Reported::of);
            if config.local_eval {
                let started = Instant::now();
                let evaluation = eval.evaluate_group(&model, group(update.node_id)).map_err(|e| (LeftOut::Incompatible, e))?;
                timings.evaluate_s += started.elapsed().as_secs_f64();
                entry.model.accuracy = evaluation.map(|e| e.accuracy);
                entry.model.loss = evaluation.map(|e| e.loss);
            }
            let started = Instant::now();
            // A file that does not fit the others (another architecture) is refused here.
            aggregations[group(update.node_id)].add(update.node_id, &model, &label).map_err(|e| (LeftOut::Incompatible, e))?;
            timings.average_s += started.elapsed().as_secs_f64();
            encodings.push((update.node_id, encoding));
            reports.extend(report.map(|r| (update.node_id, r)));
            Ok(())
        });
        match added {
            Ok(()) => {
                entry.used = true;
                used.push(update.clone());
            }
            Err((why, err)) => {
                // One bad or unreachable update must not stall the federation: leave it out,
                // say so, and let the round record say why.
                log(&format!("round {round}: leaving out {label}: {err:#}"));
                monitor.left_out(why);
                entry.note = Some(format!("{err:#}"));
                rejected.push(((update.node_id, update.round), format!("{err:#}")));
            }
        }
        learners.push(entry);
        Ok(())
    })?;
    cursor.rejected.extend(rejected);
    // The time this thread waited for fetches: the rest went to evaluating and folding.
    timings.fetch_s = (fetching_since.elapsed().as_secs_f64() - timings.evaluate_s - timings.average_s).max(0.0);
    let needed = match mode {
        Mode::Sync => config.min_learners.unwrap_or(0).max(rule.min_inputs()),
        Mode::Async { buffer, .. } => (buffer as usize).max(rule.min_inputs()),
    };
    // A group's rule needs its minimum too (a group without inputs keeps its model).
    let short_group = aggregations.iter().position(|a| !a.is_empty() && a.len() < rule.min_inputs());
    if let Some(g) = short_group {
        log(&format!(
            "round {round}: model group {} has {} usable updates, rule {rule} needs at least {}: not publishing yet",
            g + 1,
            aggregations[g].len(),
            rule.min_inputs()
        ));
        return Ok(None);
    }
    if used.len() < needed {
        // Left-out updates are remembered: the round waits for more rather than refetching.
        let waiting = if used.len() < rule.min_inputs() { Waiting::RuleNeedsMoreUpdates } else { Waiting::MinLearners };
        let seen: Vec<(u64, String)> =
            cursor.seen.values().filter(|(u, _)| u.round == round).map(|(u, _)| (u.node_id, u.cid.clone())).collect();
        monitor.collecting(round, &expected, &seen, Some((waiting, format!("only {} usable updates after fetching", used.len()))));
        log(&format!(
            "round {round}: only {} usable updates after fetching ({} left out); {needed} needed (rule {rule}{}): not publishing yet",
            used.len(),
            cursor.rejected.len(),
            match mode {
                Mode::Sync => config.min_learners.map(|min| format!(", --min-learners {min}")).unwrap_or_default(),
                Mode::Async { buffer, .. } => format!(", buffer {buffer}"),
            }
        ));
        return Ok(None);
    }
    monitor.phase("aggregating");
    let started = Instant::now();
    let group_inputs: Vec<Vec<u64>> = aggregations.iter().map(|a| a.node_ids().to_vec()).collect();
    let Outcome { model: global, selected, clipped, .. } = eval.model.finish(aggregations, previous, round)?;
    timings.average_s += started.elapsed().as_secs_f64();

    // The record accounts for every update read so far that is not an input: of the round
    // (synchronous), or mined since the previous global model closed (asynchronous).
    let mut record = RoundRecord::aggregated(&config.recipe, closed_at_block);
    record.selected = selected.clone();
    record.clipped = clipped;
    if groups > 1 {
        record.groups = group_inputs;
    }
    for (node_id, encoding) in encodings {
        record.note_encoding(node_id, encoding);
    }
    record.reported = reports.iter().copied().collect();
    let of_round = |u: &LocalUpdate| match mode {
        Mode::Sync => None,
        Mode::Async { .. } => Some(u.round),
    };
    for (update, why, reason) in &left_early {
        log(&format!("round {round}: leaving out learner {} round {}: {reason}", update.node_id, update.round));
        monitor.left_out(*why);
        record.leave_out_of_round(update.node_id, of_round(update), reason);
    }
    let considered = cursor.seen.values().filter(|(u, _)| match mode {
        Mode::Sync => u.round == round,
        Mode::Async { max_staleness, .. } => staleness::within(round, u.round, max_staleness),
    });
    for (update, _) in considered {
        if let Some(reason) = cursor.rejected.get(&(update.node_id, update.round)) {
            record.leave_out_of_round(update.node_id, of_round(update), reason);
        } else if !expected.contains(&update.node_id) {
            record.leave_out_of_round(update.node_id, of_round(update), "the learner is no longer registered");
            monitor.left_out(LeftOut::Unregistered);
        }
    }
    if let Mode::Async { buffer, max_staleness } = mode {
        record.asynchronous = Some(AsyncRound {
            buffer,
            max_staleness,
            weighting: staleness::WEIGHTING.into(),
            opened_after_block: cursor.opened_after,
            rounds: used.iter().map(|u| u.round).collect(),
        });
    }
    for entry in learners.iter_mut().filter(|l| l.used && !selected.contains(&l.node_id)) {
        entry.note = Some(format!("an input of {rule}, not selected"));
    }
    monitor.phase("evaluating");
    let started = Instant::now();
    let evaluation = eval.evaluate(&global)?;
    let group_accuracy = match groups {
        1 => Vec::new(),
        _ => (0..groups)
            .filter_map(|g| eval.evaluate_group(&global, g).transpose())
            .map(|e| e.map(|e| e.accuracy))
            .collect::<Result<Vec<_>>>()?,
    };
    timings.evaluate_s += started.elapsed().as_secs_f64();
    let reported = Reported::mean(&reports.iter().map(|(_, r)| Reported::of(r)).collect::<Vec<_>>());
    monitor.phase("publishing");
    let started = Instant::now();
    record.global_encoded = encode_global(config, ipfs, &global, round)?;
    let record_bytes = record.to_bytes();
    let inputs_commitment = commitment(&used, Some(&record_bytes))?;
    let node_ids: Vec<u64> = used.iter().map(|u| u.node_id).collect();
    let (published, _receipt) = match publish(registry, ipfs, &global, round, inputs_commitment, &node_ids, &record_bytes) {
        Ok(done) => done,
        Err(err) if registry.current_round()? != round => {
            log(&format!("round {round}: already published elsewhere ({err:#}); moving on"));
            return Ok(None);
        }
        Err(err) => return Err(err),
    };
    keep_for_verify(ipfs, registry, round, &used, &published.cid, record.global_encoded.as_ref());
    timings.publish_s = started.elapsed().as_secs_f64();
    let mut staleness_note = match &record.asynchronous {
        Some(a) => format!(", input rounds {:?}", a.rounds),
        None => String::new(),
    };
    if groups > 1 {
        let each: Vec<String> = group_accuracy.iter().enumerate().map(|(g, a)| format!("group {} {:.2}%", g + 1, 100.0 * a)).collect();
        staleness_note += &format!(", groups' inputs {:?}, alone: {}; the ensemble's", record.groups, each.join(", "));
    }
    log(&format!(
        "round {round}: published global model {} by {rule} from {} learners (selected {:?}, clipped {:?}, left out {:?}{staleness_note}), test accuracy {}, commitment {}",
        published.cid,
        used.len(),
        record.selected,
        record.clipped,
        record.left_out.iter().map(|l| l.node_id).collect::<Vec<_>>(),
        match (evaluation, reported) {
            (Some(e), _) => format!("{:.2}%", 100.0 * e.accuracy),
            (None, Some(r)) => format!("{:.2}% (reported by the inputs' boards, on {} examples)", 100.0 * r.accuracy, r.examples),
            (None, None) => "unknown (no --data, and no input reported one)".into(),
        },
        hex(&inputs_commitment)
    ));
    let left_out = record.left_out.iter().map(|l| l.node_id).collect();
    let result = RoundResult {
        round,
        learners,
        global: Published { accuracy: evaluation.map(|e| e.accuracy), loss: evaluation.map(|e| e.loss), reported, ..published },
        group_accuracy,
        timings,
        published_at: unix_now(),
    };
    Ok(Some((result, left_out)))
}

/// Asynchronous rounds: the block after which round `round`'s updates count, the block the
/// previous global model closed at (for round 1, the block before `deployed_at`).
fn opened_after(registry: &Registry, round: u64) -> Result<u64> {
    let deployed_at = registry.deployed_at()?;
    if round == 1 {
        return Ok(deployed_at.saturating_sub(1));
    }
    let head = registry.client().confirmed_head()?;
    let previous = registry
        .global_event_of_round(round - 1, deployed_at, head)?
        .with_context(|| format!("round {round}: no GlobalWeightSet event of round {} up to block {head}", round - 1))?;
    let record = RoundRecord::from_bytes(&previous.record).with_context(|| format!("the round record of global round {}", round - 1))?;
    record.closed_at_block.with_context(|| format!("the round record of global round {} has no closed_at_block", round - 1))
}

/// Keeps a published round's inputs and global model in the aggregator's IPFS node, under
/// `/fl-aggregator/<registry>/round-<R>/` in MFS (`learner-<id>`, `global`), so that `verify`
/// can recompute the round long after the learners unpinned their uploads (`keep_rounds`)
/// and their nodes collected them. The inputs are on this node already (just fetched), so
/// nothing is downloaded again. A failure is logged, not fatal: the round is published, and
/// the learners keep their uploads for a few more rounds.
fn keep_for_verify(
    ipfs: &fl_ipfs::Client,
    registry: &Registry,
    round: u64,
    inputs: &[LocalUpdate],
    global_cid: &str,
    encoded: Option<&EncodedGlobal>,
) {
    let folder = format!("/fl-aggregator/{:?}/round-{round}", registry.address());
    let inputs = inputs.iter().map(|u| (u.cid.as_str(), format!("{folder}/learner-{}", u.node_id)));
    let encoded = encoded.map(|e| (e.cid.as_str(), format!("{folder}/global-{}", e.encoding)));
    for (cid, path) in inputs.chain([(global_cid, format!("{folder}/global"))]).chain(encoded) {
        if let Err(err) = ipfs.mfs_keep(cid, &path) {
            log(&format!(
                "round {round}: could not keep {cid} at {path} in the IPFS node's MFS ({err}); verify needs it once its uploader unpins it"
            ));
        }
    }
}

/// The global model of round `round`, found by its event (newest blocks first) and checked
/// against its digest on chain.
fn global_of_round(registry: &Registry, ipfs: &fl_ipfs::Client, round: u64, from_block: u64) -> Result<ModelFile> {
    let head = registry.client().confirmed_head()?;
    let global = registry
        .global_event_of_round(round, from_block, head)?
        .with_context(|| format!("no global model of round {round} on chain up to block {head}"))?;
    let bytes = ipfs
        .fetch_verified(&global.cid, &global.digest, MAX_MODEL_BYTES)
        .with_context(|| format!("fetching the global model of round {round}, which round {}'s updates start from", round + 1))?;
    ModelFile::from_bytes(&bytes).with_context(|| format!("the global model of round {round} ({})", global.cid))
}
