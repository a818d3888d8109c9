//! `fl-aggregator run`: the header node's loop. It opens round 0 with a seeded initial
//! model, then for each round waits for the learners' updates (following the registry's
//! `LocalWeightSet` events over bounded `eth_getLogs` ranges), fetches each model from IPFS
//! and checks it against the digest on chain, feeds it to the aggregation rule (`--rule`,
//! FedAvg by default, streaming; see `fl_core::rules`), evaluates the result and publishes
//! it with its round record ([`crate::record`]) and the commitment to both.
//!
//! All progress lives on the chain: a restarted aggregator reads the current round and
//! carries on; the contract refuses a round published twice. By default a round waits for
//! every registered learner; `--min-learners K --round-timeout S` lets it close without
//! the stragglers once S seconds have passed and K updates are in (the paper's "global
//! updates that do not wait for every learner"). A rule that needs more updates than are
//! in (Krum: 2F + 3) keeps the round open, and says so, until enough are.
//!
//! With `--confirmations N` (chains that reorganise) it reads events and state only from
//! blocks with N blocks on top and waits for N confirmations of each publication; one
//! reorganised out comes back as a dropped transaction, a transient error, and the round
//! is aggregated and published again.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fl_contracts::{commitment, is_transient, Event, LocalUpdate, Registry, TransactionReceipt, H256};
use fl_core::data::{Dataset, Mnist};
use fl_core::encoding::{self, Bases, Decoded, Encoding};
use fl_core::files::write_atomic;
use fl_core::rules::Aggregation;
use fl_core::train::{evaluate, Evaluation};
use fl_core::weights::{hex, sha256, ModelFile, MAX_MODEL_BYTES};
use fl_ipfs::Backoff;

pub use crate::config::{Parsed, RunConfig};
use crate::fetch::fetch_in_order;
use crate::record::{EncodedGlobal, RoundRecord};
use crate::report::{header, row, unix_now, LearnerResult, Published, Results, RoundResult, Timings};
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
    let test_set = Mnist::load_test(&config.data)?.take(config.test_limit.unwrap_or(usize::MAX));
    let client = config.endpoints.signing_client()?;
    let registry = Registry::at(&client, config.endpoints.registry()?);
    let owner = registry.owner()?;
    if owner != client.address() {
        bail!("registry {:?} is owned by {owner:?}, but the aggregator's key is {:?}", registry.address(), client.address());
    }
    registry.require_current_version()?;
    let ipfs = config.endpoints.ipfs_logging_retries(log);
    let mut results = Results::load_or_default(config.results.as_deref())?;
    results.registry = format!("{:?}", registry.address());
    results.chain_id = client.chain_id();
    log(&format!(
        "aggregating on chain {} registry {:?} as {:?} ({} confirmations), IPFS {}, {} test images, rule {}{}",
        client.chain_id(),
        registry.address(),
        client.address(),
        client.confirmations(),
        config.endpoints.ipfs_api,
        test_set.len(),
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
        let mut record = match step(config, &registry, &ipfs, &test_set, &mut cursor, &monitor) {
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

fn step(
    config: &RunConfig,
    registry: &Registry,
    ipfs: &fl_ipfs::Client,
    test_set: &Dataset,
    cursor: &mut Cursor,
    monitor: &Monitor,
) -> Result<Step> {
    let round = registry.current_round()?;
    if round > config.rounds {
        return Ok(Step::Done(round));
    }
    if round == 0 {
        monitor.phase("publishing");
        return publish_initial(config, registry, ipfs, test_set).map(|record| Step::Record(Box::new(record), Vec::new()));
    }
    Ok(match aggregate_round(config, registry, ipfs, test_set, round, cursor, monitor)? {
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
fn publish_initial(config: &RunConfig, registry: &Registry, ipfs: &fl_ipfs::Client, test_set: &Dataset) -> Result<RoundResult> {
    let model = ModelFile::initial(config.seed)?;
    let started = Instant::now();
    let evaluation = evaluate(&model, test_set)?;
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
        global: Published { accuracy: Some(evaluation.accuracy), loss: Some(evaluation.loss), ..global },
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
    };
    Ok((published, receipt))
}

/// Where the event scan has got to, the updates it has seen for the round at hand, and
/// those of them that could not be used (by node id, with the reason).
struct Cursor {
    next_block: u64,
    round: u64,
    seen: BTreeMap<u64, (LocalUpdate, H256)>,
    rejected: BTreeMap<u64, String>,
}

impl Cursor {
    fn new(from_block: u64) -> Cursor {
        Cursor { next_block: from_block, round: 0, seen: BTreeMap::new(), rejected: BTreeMap::new() }
    }

    /// Reads the events of the blocks not read yet and keeps the round-`round` updates.
    fn advance(&mut self, registry: &Registry, round: u64) -> Result<()> {
        if self.round != round {
            self.round = round;
            self.seen.retain(|_, (u, _)| u.round == round);
            self.rejected.clear();
        }
        // Only blocks with the client's confirmations: an update read from a block that a
        // reorganisation can still remove could end up in a global model it is not under.
        let latest = registry.client().confirmed_head()?;
        if latest < self.next_block {
            return Ok(());
        }
        let seen = &mut self.seen;
        registry.for_each_event(self.next_block, latest, &mut |logged| {
            if let Event::LocalWeightSet(update) = logged.event {
                if update.round >= round {
                    seen.insert(update.node_id, (update, logged.transaction_hash));
                }
            }
            Ok(())
        })?;
        self.next_block = latest + 1;
        Ok(())
    }
}

/// Waits for round `round`'s updates, averages and publishes them. `None` if another
/// aggregator (or an earlier run of this one) published the round meanwhile.
fn aggregate_round(
    config: &RunConfig,
    registry: &Registry,
    ipfs: &fl_ipfs::Client,
    test_set: &Dataset,
    round: u64,
    cursor: &mut Cursor,
    monitor: &Monitor,
) -> Result<Option<(RoundResult, Vec<u64>)>> {
    let waiting_since = Instant::now();
    let mut poll = Backoff::new(Duration::from_millis(250), config.max_poll);
    let mut last_report = String::new();
    let rule = &config.recipe.rule;
    let (inputs, expected, closed_at_block) = loop {
        cursor.advance(registry, round)?;
        if registry.current_round()? != round {
            return Ok(None);
        }
        let expected = registry.learner_ids()?;
        let arrived: Vec<(LocalUpdate, H256)> =
            cursor.seen.values().filter(|(u, _)| u.round == round && expected.contains(&u.node_id)).cloned().collect();
        let usable: Vec<(LocalUpdate, H256)> = arrived.iter().filter(|(u, _)| !cursor.rejected.contains_key(&u.node_id)).cloned().collect();
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
            break (usable, expected, cursor.next_block.saturating_sub(1));
        }
        let seen: Vec<(u64, String)> = arrived.iter().map(|(u, _)| (u.node_id, u.cid.clone())).collect();
        monitor.collecting(round, &expected, &seen, Some((waiting, report.clone())));
        if report != last_report {
            log(&report);
            last_report = report;
        }
        poll.wait();
    };
    let wait_s = waiting_since.elapsed().as_secs_f64();
    let seen: Vec<(u64, String)> = inputs.iter().map(|(u, _)| (u.node_id, u.cid.clone())).collect();
    monitor.collecting(round, &expected, &seen, None);
    monitor.phase("fetching");

    // The previous global model: what compressed updates are differences from (directly, or
    // through its encoded copy), and what clipping measures each update's distance from.
    let previous = previous_global(registry, ipfs, round)?;
    let bases = Bases::of(&previous)?;
    // Models are fetched and fed to the rule one at a time: FedAvg keeps a running sum and
    // the other rules spill to disk, so memory does not grow with the fleet.
    let mut aggregation = Aggregation::new(&config.recipe, config.recipe.clip_norm.map(|_| &previous))?;
    let mut encodings: Vec<(u64, Encoding)> = Vec::new();
    let mut used: Vec<LocalUpdate> = Vec::new();
    let mut learners = Vec::new();
    let mut timings = Timings { wait_s, ..Timings::default() };
    // Fetched and checked by `--fetch-workers` threads, folded here in node-id order: the
    // bytes do not depend on which fetch finished first (see crate::fetch for the bound).
    let fetch_one = |(update, tx): &(LocalUpdate, H256)| {
        // Each failure with the reason it counts under in the metrics.
        let fetched = ipfs
            .fetch_verified(&update.cid, &update.digest, MAX_MODEL_BYTES)
            .map_err(|e| match e {
                fl_ipfs::Error::DigestMismatch { .. } => (LeftOut::DigestMismatch, anyhow::Error::from(e)),
                e => (LeftOut::Unavailable, anyhow::Error::from(e)),
            })
            .and_then(|bytes| bases.decode(&bytes).map_err(|e| (LeftOut::InvalidFile, e)))
            .and_then(|Decoded { model, encoding, .. }| {
                if model.n_samples != update.samples || model.round != round {
                    let e = anyhow::anyhow!(
                        "the file says round {} with {} samples, the chain says round {round} with {}",
                        model.round,
                        model.n_samples,
                        update.samples
                    );
                    return Err((LeftOut::WrongRoundOrSamples, e));
                }
                Ok((model, encoding))
            });
        let gas = registry.client().rpc().transaction_receipt(*tx).ok().flatten().and_then(|r| r.gas_used).map(|g| g.as_u64());
        (fetched, gas)
    };
    let fetching_since = Instant::now();
    let workers = config.fetch_workers;
    fetch_in_order(&inputs, workers, 2 * workers, fetch_one, |index, (fetched, gas)| {
        let (update, tx) = &inputs[index];
        let label = format!("learner {} round {round}", update.node_id);
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
            },
            used: false,
            note: None,
        };
        let added = fetched.and_then(|(model, encoding)| {
            log(&format!("round {round}: fetched and verified {label} ({}, {encoding})", update.cid));
            if config.local_eval {
                let started = Instant::now();
                let Evaluation { accuracy, loss, .. } = evaluate(&model, test_set).map_err(|e| (LeftOut::Incompatible, e))?;
                timings.evaluate_s += started.elapsed().as_secs_f64();
                entry.model.accuracy = Some(accuracy);
                entry.model.loss = Some(loss);
            }
            let started = Instant::now();
            // A file that does not fit the others (another architecture) is refused here.
            aggregation.add(update.node_id, &model, &label).map_err(|e| (LeftOut::Incompatible, e))?;
            timings.average_s += started.elapsed().as_secs_f64();
            encodings.push((update.node_id, encoding));
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
                cursor.rejected.insert(update.node_id, format!("{err:#}"));
            }
        }
        learners.push(entry);
        Ok(())
    })?;
    // The time this thread waited for fetches: the rest went to evaluating and folding.
    timings.fetch_s = (fetching_since.elapsed().as_secs_f64() - timings.evaluate_s - timings.average_s).max(0.0);
    if used.len() < rule.min_inputs() || config.min_learners.is_some_and(|min| used.len() < min) {
        // Left-out updates are remembered: the round waits for more rather than refetching.
        let waiting = if used.len() < rule.min_inputs() { Waiting::RuleNeedsMoreUpdates } else { Waiting::MinLearners };
        let seen: Vec<(u64, String)> =
            cursor.seen.values().filter(|(u, _)| u.round == round).map(|(u, _)| (u.node_id, u.cid.clone())).collect();
        monitor.collecting(round, &expected, &seen, Some((waiting, format!("only {} usable updates after fetching", used.len()))));
        log(&format!(
            "round {round}: only {} usable updates after fetching ({} left out); rule {rule} needs {}{}: not publishing yet",
            used.len(),
            cursor.rejected.len(),
            rule.min_inputs(),
            config.min_learners.map(|min| format!(", --min-learners {min}")).unwrap_or_default()
        ));
        return Ok(None);
    }
    monitor.phase("aggregating");
    let started = Instant::now();
    let outcome = aggregation.finish()?;
    let mut global = outcome.model;
    global.round = round;
    timings.average_s += started.elapsed().as_secs_f64();

    // The record accounts for every round-`round` update read so far that is not an input.
    let mut record = RoundRecord::aggregated(&config.recipe, closed_at_block);
    record.selected = outcome.selected.clone();
    record.clipped = outcome.clipped.clone();
    for (node_id, encoding) in encodings {
        record.note_encoding(node_id, encoding);
    }
    for (update, _) in cursor.seen.values().filter(|(u, _)| u.round == round) {
        if let Some(reason) = cursor.rejected.get(&update.node_id) {
            record.leave_out(update.node_id, reason);
        } else if !expected.contains(&update.node_id) {
            record.leave_out(update.node_id, "the learner is no longer registered");
            monitor.left_out(LeftOut::Unregistered);
        }
    }
    for entry in learners.iter_mut().filter(|l| l.used && !outcome.selected.contains(&l.node_id)) {
        entry.note = Some(format!("an input of {rule}, not selected"));
    }
    monitor.phase("evaluating");
    let started = Instant::now();
    let evaluation = evaluate(&global, test_set)?;
    timings.evaluate_s += started.elapsed().as_secs_f64();
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
    log(&format!(
        "round {round}: published global model {} by {rule} from {} learners (selected {:?}, clipped {:?}, left out {:?}), test accuracy {:.2}%, commitment {}",
        published.cid,
        used.len(),
        record.selected,
        record.clipped,
        record.left_out.iter().map(|l| l.node_id).collect::<Vec<_>>(),
        100.0 * evaluation.accuracy,
        hex(&inputs_commitment)
    ));
    let left_out = record.left_out.iter().map(|l| l.node_id).collect();
    let result = RoundResult {
        round,
        learners,
        global: Published { accuracy: Some(evaluation.accuracy), loss: Some(evaluation.loss), ..published },
        timings,
        published_at: unix_now(),
    };
    Ok(Some((result, left_out)))
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

/// The global model of round `round - 1` (the latest while `round` is open), checked
/// against its digest on chain.
fn previous_global(registry: &Registry, ipfs: &fl_ipfs::Client, round: u64) -> Result<ModelFile> {
    let global = registry.global_update()?.context("no global model published yet")?;
    if global.round + 1 != round {
        bail!("round {round}: the latest global model is of round {}, expected {}", global.round, round - 1);
    }
    let bytes = ipfs
        .fetch_verified(&global.cid, &global.digest, MAX_MODEL_BYTES)
        .with_context(|| format!("fetching the global model of round {}, which round {round}'s updates start from", global.round))?;
    ModelFile::from_bytes(&bytes).with_context(|| format!("the global model of round {} ({})", global.round, global.cid))
}
