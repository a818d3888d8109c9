//! `fl-agent run`: the learner's loop. For each round it waits for the previous round's
//! global model (following the registry's events with `eth_getLogs`), fetches it from IPFS
//! and checks its digest against the chain, trains the configured local epochs on its own
//! data, uploads the result to IPFS and records it on the registry.
//!
//! Everything a restart needs is in the state folder or on chain: a finished local model
//! is saved (atomically) before it is uploaded, and the hash of the registering
//! transaction is saved before waiting for it, so a learner killed at any point resumes
//! the round without training again and without registering twice.
//!
//! On a chain that can reorganise, `confirmations = N` makes every chain read and every
//! wait follow `fl_contracts::finality`: the learner acts only on blocks with N blocks on
//! top, and a registering transaction reorganised out is sent again.
//!
//! A board's IPFS repository stays bounded: once its update of round R is recorded, the
//! learner unpins its own uploads of rounds up to R - `keep_rounds` (remembered in the
//! state folder, written there before each upload) and asks its node to collect
//! (`repo/gc`, which also removes the global models it fetched: `cat` never pins). A
//! failure there is logged and tried again after the next round, never fatal.
//!
//! Updates are sent in the configured `update_encoding` (`fl_core::encoding`): by default
//! int8, the difference from the model the learner started from, a quarter of the bytes.
//! When the round record of the global model names an encoded copy (the aggregator's
//! `--global-encoding`), the learner downloads that instead and starts from its decoding;
//! it needs no setting for it, and falls back to the f32 model if the copy is unavailable.
//! The update file also carries the learner's accuracy, loss and example count of the model
//! it sends on its own test set (format 2's `report`; not in a version-1 f32 update), which
//! the aggregator records and shows when it has no test set of its own.
//!
//! In an asynchronous federation (the registry's mode, so no setting here) the loop is the
//! same: the learner trains on the latest global model and sends the update for the round
//! after it, which the registry accepts while it is at most `maxStaleness` rounds behind the
//! current one. An update that would arrive staler than that (or, in synchronous rounds,
//! after its round closed without it) is dropped, and the learner starts again from the
//! latest global model.
//!
//! What it does is also written to `status.json` for `fl-agent status` ([`status`]).

mod config;
mod state;
pub mod status;

pub use config::{LearnerConfig, ShardConfig, DEFAULT_KEEP_ROUNDS};

use std::ffi::OsString;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fl_contracts::{is_transient, Address, GlobalUpdate, Registry, H256};
use fl_core::data::{load_source, Dataset, Split};
use fl_core::encoding;
use fl_core::ensemble::FederationModel;
use fl_core::record::{EncodedGlobal, RoundRecord};
use fl_core::rounds;
use fl_core::spec::MAX_SPEC_BYTES;
use fl_core::train;
use fl_core::weights::{digest_from_hex, hex, ModelFile, MAX_MODEL_BYTES};
use fl_ipfs::Backoff;

use state::{Cleanup, ErrorSeen, GlobalFetched, PendingState, Recorded, StateDir, Trained};

/// `fl-agent run`.
pub fn main(args: Vec<OsString>) -> Result<()> {
    let Some(config) = LearnerConfig::parse(args)? else { return Ok(()) };
    run(&config)
}

/// The federation's model and this board's data, checked to fit it (model groups share
/// their input and classes, so the data fits every group or none).
pub struct LocalData {
    /// What every model of the federation follows (read from the registry).
    pub model: FederationModel,
    /// The learner's training set, after sharding.
    pub train: Dataset,
    /// The learner's test set.
    pub test: Dataset,
    /// Where the data came from, for messages (`images data in /data/camera (0.2 held out
    /// for testing)` and the like).
    pub origin: String,
}

/// The learner's training and test data for `model`, after sharding; a clear error if the
/// data does not fit it (shape, class count).
pub fn load_data(config: &LearnerConfig, model: &FederationModel) -> Result<LocalData> {
    let (input, classes) = (model.input(), model.classes());
    let source = config.data.source(input, config.seed, "set data_dir, FL_DATA_DIR or --data")?;
    let (train_set, test_set) = load_source(&source)?;
    let origin = source.to_string();
    train_set
        .check_fits(input, classes, &origin)
        .with_context(|| format!("learner {}: this board's data does not fit the federation's model {model}", config.node_id))?;
    test_set
        .check_fits(input, classes, &origin)
        .with_context(|| format!("learner {}: this board's test data does not fit the federation's model {model}", config.node_id))?;
    let train_set = train_set.take(config.train_limit.unwrap_or(usize::MAX));
    let test_set = test_set.take(config.test_limit.unwrap_or(usize::MAX));
    let train_set = match &config.shard {
        None => train_set,
        Some(shard) => {
            let split: Split = shard.split.parse()?;
            // Same derivation as `fl-aggregator simulate`: the same examples in each shard
            // (kept in index order, cut out in place so the full set is never held twice).
            let mut shards = rounds::shards(train_set.labels(), shard.count, split, shard.seed)?;
            train_set.into_subset(shards.swap_remove(shard.index))?
        }
    };
    if train_set.is_empty() {
        bail!("learner {}: no training data in {origin}", config.node_id);
    }
    Ok(LocalData { model: model.clone(), train: train_set, test: test_set, origin })
}

fn log(message: &str) {
    eprintln!("fl-agent: {message}");
}

/// First pause of every poll and retry: a fresh round is noticed quickly, and the pause
/// doubles from there so that an idle learner costs the node little.
const FIRST_PAUSE: Duration = Duration::from_millis(500);

/// The name of the state folder of `registry` on chain `chain_id`, under `state_dir`.
/// Work in progress belongs to one registry: a model saved for round R of another (an old
/// deployment the fleet moved from) must never be sent as this one's round R.
pub fn state_folder_name(chain_id: u64, registry: Address) -> String {
    format!("chain-{chain_id}-{registry:?}")
}

/// Runs the learner until global round `config.rounds` is published (or forever).
pub fn run(config: &LearnerConfig) -> Result<()> {
    let client = config.endpoints.signing_client()?;
    let state = StateDir::open(&config.state_dir.join(state_folder_name(client.chain_id(), config.registry)))?;
    state.update_status(|s| {
        s.node_id = config.node_id;
        s.started_at = state::now();
        s.set_activity("starting");
    });
    let result = federation_data(config, &client).and_then(|data| run_with_state(config, &client, &state, &data));
    if let Err(err) = &result {
        state.update_status(|s| {
            s.set_activity("stopped by the error below");
            s.last_error = Some(ErrorSeen { message: format!("{err:#}"), at: state::now() });
        });
    }
    result
}

/// The federation's model spec, read from the registry (and IPFS), and this board's data,
/// checked to fit it.
fn federation_data(config: &LearnerConfig, client: &fl_contracts::Client) -> Result<LocalData> {
    let registry = Registry::at(client, config.registry);
    registry.require_current_version()?;
    let ipfs = config.endpoints.ipfs_logging_retries(log);
    let model = FederationModel::resolve(registry.model_spec()?, |digest| Ok(ipfs.fetch_by_sha256(digest, MAX_SPEC_BYTES as u64)?))?;
    log(&format!("the federation trains {model}"));
    load_data(config, &model)
}

/// [`run`] once the model spec, the data, the key and the state folder are there.
fn run_with_state(config: &LearnerConfig, client: &fl_contracts::Client, state: &StateDir, data: &LocalData) -> Result<()> {
    let registry = Registry::at(client, config.registry);
    let ipfs = config.endpoints.ipfs_logging_retries(log);
    log(&format!(
        "learner {} ({:?}) on chain {} registry {:?} ({} confirmations), IPFS {}, {} training / {} test examples from {}",
        config.node_id,
        client.address(),
        client.chain_id(),
        config.registry,
        config.endpoints.confirmations,
        config.endpoints.ipfs_api,
        data.train.len(),
        data.test.len(),
        data.origin
    ));
    match config.keep_rounds {
        0 => log("keep_rounds 0: every upload stays pinned on the IPFS node"),
        n => log(&format!("keeping the latest {n} uploads pinned; older ones are unpinned and collected")),
    }
    let mode = registry.mode()?;
    log(&format!("the federation runs {mode}"));
    wait_until_registered(&registry, config)?;

    // Events are followed from the (confirmed) block where we start; anything older is
    // already reflected in the contract's current round, read at that block or later.
    let mut cursor = client.confirmed_head()?;
    // A board on flaky Wi-Fi loses its node now and then: such failures are retried
    // (everything needed to resume is on chain or in the state folder); any other error
    // ends the run with its cause.
    let mut retry = Backoff::new(FIRST_PAUSE, Duration::from_secs(60));
    loop {
        match step(config, &registry, mode.max_staleness(), &ipfs, state, &mut cursor, data) {
            Ok(Flow::Done) => return Ok(()),
            Ok(Flow::Continue) => retry.reset(),
            Err(err) if is_transient(&err) => {
                log(&format!("{err:#}; retrying in {:?}", retry.next_pause()));
                state.update_status(|s| s.last_error = Some(ErrorSeen { message: format!("{err:#} (retried)"), at: state::now() }));
                retry.wait();
            }
            Err(err) => return Err(err),
        }
    }
}

/// What the loop does after one step.
enum Flow {
    Continue,
    Done,
}

/// One pass of the learner's loop: wait, or train and submit the current round.
#[allow(clippy::too_many_arguments)]
fn step(
    config: &LearnerConfig,
    registry: &Registry,
    max_staleness: u64,
    ipfs: &fl_ipfs::Client,
    state: &StateDir,
    cursor: &mut u64,
    data: &LocalData,
) -> Result<Flow> {
    let round = registry.current_round()?;
    if round == 0 {
        log("waiting for the initial global model (round 0)");
        state.update_status(|s| s.set_activity("waiting for the initial global model (round 0)"));
        *cursor = wait_for_global(registry, 0, *cursor, config.max_poll)?;
        return Ok(Flow::Continue);
    }
    // Global round `round - 1` is published: we are done once it is the last one.
    if config.rounds.is_some_and(|last| round > last) {
        log(&format!("global model of round {} is published; done", round - 1));
        state.update_status(|s| s.set_activity(format!("done: the global model of round {} is published", round - 1)));
        return Ok(Flow::Done);
    }
    let me = registry.local_update(config.node_id)?;
    let address = registry.client().address();
    if me.account != address {
        bail!("node id {} is bound to {:?} on the registry, but this learner's key is {address:?}", config.node_id, me.account);
    }
    if me.latest.as_ref().is_some_and(|u| u.round == round) {
        log(&format!("round {round}: already submitted; waiting for the global model"));
        state.update_status(|s| s.set_activity(format!("round {round} recorded; waiting for its global model")));
        *cursor = wait_for_global(registry, round, *cursor, config.max_poll)?;
        return Ok(Flow::Continue);
    }
    // Two reads of the chain may disagree: a node under load or behind a load balancer can
    // answer from an older block, and the aggregator may publish in between. Either way the
    // round is read again rather than trusted (100 learners on one anvil showed the first).
    let global = match registry.global_update()? {
        Some(global) if global.round + 1 == round => global,
        other => {
            let seen = other.map(|g| format!("round {}", g.round)).unwrap_or_else(|| "none".into());
            log(&format!("round {round}: the node now reports {seen} as the latest global model; reading the round again"));
            std::thread::sleep(FIRST_PAUSE);
            return Ok(Flow::Continue);
        }
    };
    // A learner's model group is the registry's, and the operator may set it until the
    // learner's first update (registering first, then the group): read it for every round
    // rather than once at start, or a board started early would train the wrong group.
    let group = match data.model.groups() {
        1 => 0,
        _ => registry.learner_group(config.node_id)? as usize,
    };
    submit_round(config, registry, max_staleness, ipfs, state, &global, me.max_samples, data, group)?;
    release_old_uploads(config, ipfs, state, round);
    state.prune(round);
    Ok(Flow::Continue)
}

/// Trains (or reuses the saved model of) the round after `global`'s, uploads it and
/// registers it, claiming at most `max_samples` samples (this learner's cap on the registry).
#[allow(clippy::too_many_arguments)]
fn submit_round(
    config: &LearnerConfig,
    registry: &Registry,
    max_staleness: u64,
    ipfs: &fl_ipfs::Client,
    state: &StateDir,
    global: &GlobalUpdate,
    max_samples: u64,
    data: &LocalData,
    group: usize,
) -> Result<()> {
    let round = global.round + 1;
    let spec = data.model.group_spec(group)?;
    if data.model.groups() > 1 {
        log(&format!("round {round}: this learner trains group {}: {spec}", group + 1));
    }
    // The model this round starts from; fetched again after a restart too, since the update
    // is encoded as the difference from it.
    let start = fetch_start(registry, ipfs, global)?;
    state.update_status(|s| s.global = Some(GlobalFetched { round: global.round, cid: global.cid.clone(), at: state::now() }));
    let mut model = match state.local_model(round) {
        Some(model) => {
            log(&format!("round {round}: reusing the saved local model {}", state.model_path(round).display()));
            state.update_status(|s| s.set_activity(format!("round {round}: reusing the saved local model")));
            model
        }
        None => {
            state.update_status(|s| s.set_activity(format!("training round {round}")));
            let train_config = rounds::local_train_config(
                config.seed,
                round,
                config.node_id,
                config.local_epochs,
                config.batch_size,
                format!("learner {} round {round}", config.node_id),
            );
            let started = Instant::now();
            // A learner of a model group trains its group's part of the ensemble and sends
            // the whole, the other groups' parts unchanged.
            let mine = data.model.member(&start, group)?;
            let mut trained = train::train(spec, &mine, &data.train, None, &train_config, &mut |_| {})?.model;
            trained.round = round;
            let model = data.model.embed(&start, group, &trained)?;
            let took = started.elapsed();
            log(&format!("round {round}: trained {} epoch(s) in {:.1}s", config.local_epochs, took.as_secs_f64()));
            if config.slowdown > 1.0 {
                let wait = took.mul_f64(config.slowdown - 1.0);
                log(&format!(
                    "round {round}: emulating a board {}x slower (slowdown): waiting {:.1}s",
                    config.slowdown,
                    wait.as_secs_f64()
                ));
                std::thread::sleep(wait);
            }
            state.save_model(&model)?;
            model
        }
    };
    if model.n_samples > max_samples {
        // The registry refuses more; an honest learner with more data than its cap claims
        // the cap (its weight in FedAvg is the cap either way).
        log(&format!("round {round}: trained on {} samples, claiming the registry's cap of {max_samples}", model.n_samples));
        model.n_samples = max_samples;
    }
    let bytes = encoding::encode(&model, Some(&start), config.update_encoding)?;
    // What the aggregator will decode: the model this learner's accuracy is reported for.
    let sent = encoding::decode(&bytes, Some(&start))?.model;
    let evaluation = data.model.evaluate_group(&sent, group, &data.test)?;
    // The figures travel in the file (recorded by the aggregator, never trusted); a
    // version-1 file (an f32 update of the built-in model) has no room for them, and
    // figures out of range (a diverged model's loss) are left out rather than sent.
    let report = encoding::Report { accuracy: evaluation.accuracy as f32, loss: evaluation.loss as f32, examples: evaluation.n as u64 };
    let bytes = match encoding::with_report(&bytes, &report) {
        Ok(with) => with.unwrap_or(bytes),
        Err(err) => {
            log(&format!("round {round}: sending the update without its test figures: {err:#}"));
            bytes
        }
    };
    state.update_status(|s| {
        s.trained = Some(Trained {
            round,
            samples: model.n_samples,
            accuracy: evaluation.accuracy,
            loss: evaluation.loss,
            test_images: evaluation.n,
            at: state::now(),
        });
        s.set_activity(format!("round {round}: uploading the local model"));
    });
    let digest = fl_core::weights::sha256(&bytes);
    if config.keep_rounds > 0 {
        // Noted before the node pins it, so a learner killed in between still unpins it later.
        let mut pins = state.pins().unwrap_or_else(|err| {
            log(&format!("starting a new list of uploads to unpin: {err:#} (the uploads it listed stay pinned)"));
            Default::default()
        });
        pins.record(round, &fl_ipfs::cid_of(&bytes));
        state.set_pins(&pins)?;
    }
    // Adding the same bytes again gives the same CID, so a restart may simply add again.
    let started = Instant::now();
    let cid = ipfs.add(&bytes).with_context(|| format!("uploading the round-{round} local model"))?;
    let upload_seconds = started.elapsed().as_secs_f64();

    let client = registry.client();
    let mut drops = 0;
    let receipt = loop {
        let pending = state.pending();
        let hash = match pending.tx.filter(|_| pending.round == round) {
            Some(hash) => {
                log(&format!("round {round}: waiting for the registering transaction {hash:?} sent before a restart"));
                hash
            }
            // Checked just before sending, when training and the upload are done: a round
            // that moved on too far would refuse the update.
            None if too_late(registry, round, max_staleness)? => return Ok(()),
            None => match send_local(config, registry, state, round, &cid, digest, model.n_samples) {
                Ok(hash) => hash,
                // The round moved on between the check and the send.
                Err(err) if is_late(&err) && too_late(registry, round, max_staleness)? => return Ok(()),
                Err(err) => return Err(err),
            },
        };
        state.update_status(|s| s.set_activity(format!("round {round}: waiting for the registering transaction {hash:?}")));
        match client.wait_receipt("setLocalWeight", hash)? {
            Some(receipt) => break receipt,
            // Dropped by the node, or reorganised out and not back in its pool: nothing of
            // it is on chain, so send again (the contract refuses a second update anyway).
            None => {
                drops += 1;
                if drops >= MAX_DROPS {
                    bail!("round {round}: the registering transaction was dropped {drops} times (last {hash:?}); giving up");
                }
                log(&format!("round {round}: the registering transaction {hash:?} was dropped or reorganised out; sending it again"));
                state.set_pending(&PendingState::default())?;
            }
        }
    };
    state.set_pending(&PendingState::default())?;
    if receipt.status != Some(1u64.into()) {
        // Reverted: most likely a duplicate after a restart; the chain says which.
        let me = registry.local_update(config.node_id)?;
        if me.latest.as_ref().is_none_or(|u| u.round != round) {
            let failure = client.explain_failure("setLocalWeight", &receipt);
            if is_late_revert(&failure) && too_late(registry, round, max_staleness)? {
                state.set_pending(&PendingState::default())?;
                return Ok(());
            }
            return Err(anyhow::Error::from(failure))
                .with_context(|| format!("round {round}: the registering transaction {:?} reverted", receipt.transaction_hash));
        }
    }
    let succeeded = receipt.status == Some(1u64.into());
    state.update_status(|s| {
        s.recorded = Some(Recorded {
            round,
            cid: cid.clone(),
            tx: succeeded.then_some(receipt.transaction_hash),
            gas: receipt.gas_used.filter(|_| succeeded).map(|g| g.low_u64()),
            at: state::now(),
        });
        s.set_activity(format!("round {round} recorded; waiting for its global model"));
    });
    println!(
        "learner {} round {round}: test accuracy {:.2}% (loss {:.4}), {} samples, cid {cid} ({}, {} bytes), tx {:?}, gas {}, upload {:.2}s",
        config.node_id,
        100.0 * evaluation.accuracy,
        evaluation.loss,
        model.n_samples,
        config.update_encoding,
        bytes.len(),
        receipt.transaction_hash,
        receipt.gas_used.map(|g| g.to_string()).unwrap_or_else(|| "?".into()),
        upload_seconds
    );
    Ok(())
}

/// True (and says so) if an update of `round` would now be refused: the federation moved
/// on more than `max_staleness` rounds (0 in synchronous rounds: the round closed without
/// this learner's update). The saved model is then of no use; the next step starts from the
/// latest global model.
fn too_late(registry: &Registry, round: u64, max_staleness: u64) -> Result<bool> {
    let current = registry.current_round()?;
    if current.saturating_sub(round) <= max_staleness {
        return Ok(false);
    }
    let why = match max_staleness {
        0 => format!("round {round} closed without this update (the federation is at round {current})"),
        s => format!(
            "the federation is at round {current}, so this round-{round} update would be {} rounds stale (at most {s})",
            current - round
        ),
    };
    log(&format!("round {round}: {why}; dropping it and starting from the latest global model"));
    Ok(true)
}

/// True if `err` is the registry refusing an update for its round (closed, or too stale).
fn is_late(err: &anyhow::Error) -> bool {
    err.downcast_ref::<fl_contracts::Error>().is_some_and(is_late_revert)
}

/// True if the registry reverted an update because its round closed or it is too stale.
fn is_late_revert(err: &fl_contracts::Error) -> bool {
    matches!(err.revert_name(), Some("WrongRound" | "TooStale"))
}

/// The model the round after `global` starts from: the encoded copy its round record names
/// (decoded), or else the f32 global model, each checked against its digest. A copy that
/// cannot be found or read is logged and the f32 model fetched instead.
fn fetch_start(registry: &Registry, ipfs: &fl_ipfs::Client, global: &GlobalUpdate) -> Result<ModelFile> {
    let round = global.round + 1;
    let started = Instant::now();
    match encoded_copy(registry, global) {
        Ok(None) => {}
        Ok(Some(copy)) => {
            let fetched = digest_from_hex(&copy.sha256).and_then(|digest| {
                let bytes = ipfs.fetch_verified(&copy.cid, &digest, MAX_MODEL_BYTES)?;
                let model = encoding::decode(&bytes, None)?.model;
                Ok((model, bytes.len()))
            });
            match fetched {
                Ok((model, len)) => {
                    log(&format!(
                        "round {round}: fetched the {} copy {} of global model {} ({len} bytes) in {:.2}s",
                        copy.encoding,
                        copy.cid,
                        global.cid,
                        started.elapsed().as_secs_f64()
                    ));
                    return Ok(model);
                }
                Err(err) => log(&format!(
                    "round {round}: the {} copy {} of the global model is not usable ({err:#}); fetching the f32 model",
                    copy.encoding, copy.cid
                )),
            }
        }
        Err(err) => log(&format!(
            "round {round}: could not read the round record of global round {} ({err:#}); fetching the f32 model",
            global.round
        )),
    }
    let bytes = ipfs
        .fetch_verified(&global.cid, &global.digest, MAX_MODEL_BYTES)
        .with_context(|| format!("fetching the global model of round {}", global.round))?;
    let start = ModelFile::from_bytes(&bytes).with_context(|| format!("global model {} of round {}", global.cid, global.round))?;
    log(&format!(
        "round {round}: fetched global model {} ({} bytes, sha256 {}) in {:.2}s",
        global.cid,
        bytes.len(),
        hex(&global.digest),
        started.elapsed().as_secs_f64()
    ));
    Ok(start)
}

/// The encoded copy of `global` that its round record names, if any.
fn encoded_copy(registry: &Registry, global: &GlobalUpdate) -> Result<Option<EncodedGlobal>> {
    let head = registry.client().confirmed_head()?;
    let event = registry
        .global_event_of_round(global.round, registry.deployed_at()?, head)?
        .with_context(|| format!("no GlobalWeightSet event of round {} up to block {head}", global.round))?;
    if event.record.is_empty() {
        return Ok(None);
    }
    Ok(RoundRecord::from_bytes(&event.record)?.global_encoded)
}

/// Once the update of `round` is recorded: unpins this learner's uploads of rounds up to
/// `round - keep_rounds` and asks the node to collect them. Never fails: what could not be
/// unpinned or collected is logged, kept in `pins.json` and tried again after the next
/// round. Nothing that `verify` needs is lost: the aggregator keeps every update it used in
/// its own node's MFS, which neither an unpin nor a collection touches.
fn release_old_uploads(config: &LearnerConfig, ipfs: &fl_ipfs::Client, state: &StateDir, round: u64) {
    let Some(through) = round.checked_sub(config.keep_rounds).filter(|_| config.keep_rounds > 0) else { return };
    let mut pins = match state.pins() {
        Ok(pins) => pins,
        Err(err) => {
            log(&format!("not unpinning old uploads: {err:#}"));
            return;
        }
    };
    let due = pins.take_through(through);
    if due.is_empty() && !pins.gc_due {
        return;
    }
    let mut cleanup = Cleanup::default();
    for upload in due {
        match ipfs.pin_rm(&upload.cid) {
            Ok(removed) => {
                if removed {
                    log(&format!("round {round}: unpinned the round-{} upload {}", upload.round, upload.cid));
                } else {
                    log(&format!("round {round}: the round-{} upload {} was not pinned any more", upload.round, upload.cid));
                }
                cleanup.unpinned_rounds.push(upload.round);
                pins.gc_due = true;
            }
            Err(err) => {
                log(&format!(
                    "round {round}: could not unpin the round-{} upload ({err}); trying again after the next round",
                    upload.round
                ));
                cleanup.failed += 1;
                pins.pinned.push(upload);
            }
        }
    }
    cleanup.unpinned_rounds.dedup();
    if pins.gc_due {
        match ipfs.repo_gc() {
            Ok(blocks) => {
                log(&format!("round {round}: the IPFS node collected {blocks} blocks"));
                cleanup.gc_blocks = Some(blocks);
                pins.gc_due = false;
            }
            Err(err) => {
                log(&format!("round {round}: the IPFS node's garbage collection failed ({err}); asking again after the next round"));
                cleanup.gc_error = Some(err.to_string());
            }
        }
    }
    // Sorted back into upload order (failed unpins were taken out and put back last).
    pins.pinned.sort_by_key(|u| u.round);
    if let Err(err) = state.set_pins(&pins) {
        log(&format!("could not update the list of uploads to unpin: {err:#}"));
    }
    cleanup.at = state::now();
    state.update_status(|s| s.cleanup = Some(cleanup));
}

/// How many times a round's registering transaction may be dropped before the learner
/// stops: a chain that keeps dropping it needs an operator, not more of the same.
const MAX_DROPS: u32 = 5;

/// Sends the round's `setLocalWeight` and records its hash in the state folder before
/// anything waits for it.
fn send_local(
    config: &LearnerConfig,
    registry: &Registry,
    state: &StateDir,
    round: u64,
    cid: &str,
    digest: [u8; 32],
    samples: u64,
) -> Result<H256> {
    let client = registry.client();
    let data = Registry::set_local_weight_calldata(config.node_id, round, cid, digest, samples)?;
    let pending = client.send("setLocalWeight", Some(registry.address()), data)?;
    state.set_pending(&PendingState { round, tx: Some(pending.hash) })?;
    Ok(pending.hash)
}

/// Waits until this learner's node id is bound on the registry (boards may boot before the
/// operator registers them).
fn wait_until_registered(registry: &Registry, config: &LearnerConfig) -> Result<()> {
    let mut backoff = Backoff::new(FIRST_PAUSE, config.max_poll);
    let mut said = false;
    loop {
        let me = registry.local_update(config.node_id)?;
        if me.account != Address::zero() {
            return Ok(());
        }
        if !said {
            log(&format!(
                "node id {} is not registered yet; waiting (operator: `fl-aggregator learners add {} {:?}`)",
                config.node_id,
                config.node_id,
                registry.client().address()
            ));
            said = true;
        }
        backoff.wait();
    }
}

/// Follows `GlobalWeightSet` events from block `from` until one of round `round` or later
/// appears; returns the block to continue from. Each poll reads a bounded block range, up
/// to the confirmed head only.
fn wait_for_global(registry: &Registry, round: u64, from: u64, max_poll: Duration) -> Result<u64> {
    let mut backoff = Backoff::new(FIRST_PAUSE, max_poll);
    let mut from = from;
    loop {
        let latest = registry.client().confirmed_head()?;
        if latest >= from {
            let published = registry.global_updates(from, latest)?;
            from = latest + 1;
            if published.iter().any(|g| g.round >= round) {
                return Ok(from);
            }
        }
        // The event may predate `from` (published while we were busy): the round says so.
        if registry.current_round()? > round {
            return Ok(from);
        }
        backoff.wait();
    }
}

/// A fresh folder for one test of the learner's modules (removed first if a killed run
/// left it behind).
#[cfg(test)]
fn temp_dir(label: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("fl-learner-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
