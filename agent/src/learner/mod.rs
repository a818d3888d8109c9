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

mod config;
mod state;

pub use config::{LearnerConfig, ShardConfig};

use std::ffi::OsString;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fl_contracts::{is_transient, Address, Registry, H256};
use fl_core::data::{Dataset, Mnist, Split};
use fl_core::rounds;
use fl_core::train;
use fl_core::weights::{hex, ModelFile, MAX_MODEL_BYTES};
use fl_ipfs::Backoff;

use state::{PendingState, StateDir};

/// `fl-agent run`.
pub fn main(args: Vec<OsString>) -> Result<()> {
    let Some(config) = LearnerConfig::parse(args)? else { return Ok(()) };
    run(&config)
}

/// The learner's training and test data, after sharding.
pub fn load_data(config: &LearnerConfig) -> Result<(Dataset, Dataset)> {
    let mnist = Mnist::load(&config.data_dir)?;
    let train_set = mnist.train.take(config.train_limit.unwrap_or(usize::MAX));
    let test_set = mnist.test.take(config.test_limit.unwrap_or(usize::MAX));
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
        bail!("learner {}: no training data in {}", config.node_id, config.data_dir.display());
    }
    Ok((train_set, test_set))
}

fn log(message: &str) {
    eprintln!("fl-agent: {message}");
}

/// First pause of every poll and retry: a fresh round is noticed quickly, and the pause
/// doubles from there so that an idle learner costs the node little.
const FIRST_PAUSE: Duration = Duration::from_millis(500);

/// Runs the learner until global round `config.rounds` is published (or forever).
pub fn run(config: &LearnerConfig) -> Result<()> {
    let (train_set, test_set) = load_data(config)?;
    let client = config.endpoints.signing_client()?;
    // Work in progress belongs to one registry: a model saved for round R of another
    // (an old deployment the fleet moved from) must never be sent as this one's round R.
    let state = StateDir::open(&config.state_dir.join(format!("chain-{}-{:?}", client.chain_id(), config.registry)))?;
    let registry = Registry::at(&client, config.registry);
    let ipfs = config.endpoints.ipfs();
    log(&format!(
        "learner {} ({:?}) on chain {} registry {:?} ({} confirmations), IPFS {}, {} training / {} test images",
        config.node_id,
        client.address(),
        client.chain_id(),
        config.registry,
        config.endpoints.confirmations,
        config.endpoints.ipfs_api,
        train_set.len(),
        test_set.len()
    ));
    registry.require_current_version()?;
    wait_until_registered(&registry, config)?;

    // Events are followed from the (confirmed) block where we start; anything older is
    // already reflected in the contract's current round, read at that block or later.
    let mut cursor = client.confirmed_head()?;
    // A board on flaky Wi-Fi loses its node now and then: such failures are retried
    // (everything needed to resume is on chain or in the state folder); any other error
    // ends the run with its cause.
    let mut retry = Backoff::new(FIRST_PAUSE, Duration::from_secs(60));
    loop {
        match step(config, &registry, &ipfs, &state, &mut cursor, &train_set, &test_set) {
            Ok(Flow::Done) => return Ok(()),
            Ok(Flow::Continue) => retry.reset(),
            Err(err) if is_transient(&err) => {
                log(&format!("{err:#}; retrying in {:?}", retry.next_pause()));
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
fn step(
    config: &LearnerConfig,
    registry: &Registry,
    ipfs: &fl_ipfs::Client,
    state: &StateDir,
    cursor: &mut u64,
    train_set: &Dataset,
    test_set: &Dataset,
) -> Result<Flow> {
    let round = registry.current_round()?;
    if round == 0 {
        log("waiting for the initial global model (round 0)");
        *cursor = wait_for_global(registry, 0, *cursor, config.max_poll)?;
        return Ok(Flow::Continue);
    }
    // Global round `round - 1` is published: we are done once it is the last one.
    if config.rounds.is_some_and(|last| round > last) {
        log(&format!("global model of round {} is published; done", round - 1));
        return Ok(Flow::Done);
    }
    let me = registry.local_update(config.node_id)?;
    let address = registry.client().address();
    if me.account != address {
        bail!("node id {} is bound to {:?} on the registry, but this learner's key is {address:?}", config.node_id, me.account);
    }
    if me.latest.as_ref().is_some_and(|u| u.round == round) {
        log(&format!("round {round}: already submitted; waiting for the global model"));
        *cursor = wait_for_global(registry, round, *cursor, config.max_poll)?;
        return Ok(Flow::Continue);
    }
    submit_round(config, registry, ipfs, state, round, me.max_samples, train_set, test_set)?;
    state.prune(round);
    Ok(Flow::Continue)
}

/// Trains (or reuses the saved model of) `round`, uploads it and registers it, claiming at
/// most `max_samples` samples (this learner's cap on the registry).
#[allow(clippy::too_many_arguments)]
fn submit_round(
    config: &LearnerConfig,
    registry: &Registry,
    ipfs: &fl_ipfs::Client,
    state: &StateDir,
    round: u64,
    max_samples: u64,
    train_set: &Dataset,
    test_set: &Dataset,
) -> Result<()> {
    let mut model = match state.local_model(round) {
        Some(model) => {
            log(&format!("round {round}: reusing the saved local model {}", state.model_path(round).display()));
            model
        }
        None => {
            let global = registry.global_update()?.context("the registry has a round but no global model")?;
            if global.round + 1 != round {
                bail!("the registry's latest global model is round {}, expected {}", global.round, round - 1);
            }
            let started = Instant::now();
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
            let train_config = rounds::local_train_config(
                config.seed,
                round,
                config.node_id,
                config.local_epochs,
                config.batch_size,
                format!("learner {} round {round}", config.node_id),
            );
            let started = Instant::now();
            let mut model = train::train(&start, train_set, None, &train_config, &mut |_| {})?.model;
            model.round = round;
            log(&format!("round {round}: trained {} epoch(s) in {:.1}s", config.local_epochs, started.elapsed().as_secs_f64()));
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
    let evaluation = train::evaluate(&model, test_set)?;
    let bytes = model.to_bytes();
    let digest = fl_core::weights::sha256(&bytes);
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
            None => send_local(config, registry, state, round, &cid, digest, model.n_samples)?,
        };
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
            return Err(anyhow::Error::from(client.explain_failure("setLocalWeight", &receipt)))
                .with_context(|| format!("round {round}: the registering transaction {:?} reverted", receipt.transaction_hash));
        }
    }
    println!(
        "learner {} round {round}: test accuracy {:.2}% (loss {:.4}), {} samples, cid {cid}, tx {:?}, gas {}, upload {:.2}s",
        config.node_id,
        100.0 * evaluation.accuracy,
        evaluation.loss,
        model.n_samples,
        receipt.transaction_hash,
        receipt.gas_used.map(|g| g.to_string()).unwrap_or_else(|| "?".into()),
        upload_seconds
    );
    Ok(())
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
