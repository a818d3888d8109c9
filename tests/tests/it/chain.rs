//! Registry contract and JSON-RPC client against a real anvil.

use anyhow::{bail, Context, Result};
use fl_contracts::cid::cid_from_bytes;
use fl_contracts::ethers_core::abi::Token;
use fl_contracts::ethers_core::types::{transaction::eip2718::TypedTransaction, Bytes, Eip1559TransactionRequest, Transaction, U64};
use fl_contracts::ethers_core::utils::keccak256;
use fl_contracts::{commitment, Address, Client, Error, Event, FeeMode, LocalUpdate, Mode, Registry, Rpc};
use fl_contracts::{TransactionReceipt, U256};
use fl_tests::anvil::{Anvil, AnvilOptions};
use fl_tests::devnet::MAX_SAMPLES;
use fl_tests::util::free_port;
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;

/// A well-formed CIDv1 (SHA-256 multihash) whose hash is keccak256(label); `dag_pb` picks the
/// `bafy…` codec (0x70) instead of raw `bafk…` (0x55).
/// A round record as the contract sees it: bytes it only emits and the commitment covers.
const RECORD: &[u8] = br#"{"version":1,"rule":"fedavg"}"#;

fn cid(label: &str, dag_pb: bool) -> String {
    let mut bytes = vec![0x01, if dag_pb { 0x70 } else { 0x55 }, 0x12, 0x20];
    bytes.extend(ethers_keccak(label));
    cid_from_bytes(&bytes).expect("test cid is well formed")
}

fn ethers_keccak(label: &str) -> [u8; 32] {
    keccak256(label.as_bytes())
}

fn client(anvil: &Anvil, key: usize) -> Result<Client> {
    Ok(Client::new(Rpc::new(anvil.url())?, anvil.signer(key)?, Some(anvil.chain_id()))?)
}

fn gas(receipt: &fl_contracts::TransactionReceipt) -> u64 {
    receipt.gas_used.map(|g| g.as_u64()).unwrap_or(u64::MAX)
}

/// Expects `result` to be a revert with custom error `name`; returns its arguments.
fn expect_revert<T: std::fmt::Debug>(result: fl_contracts::Result<T>, name: &str) -> Result<Vec<(String, String)>> {
    match result {
        Err(Error::Revert { name: got, args, .. }) if got == name => Ok(args),
        other => bail!("expected a {name} revert, got {other:?}"),
    }
}

fn arg<'a>(args: &'a [(String, String)], name: &str) -> &'a str {
    args.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or("(missing)")
}

/// Every check below that depends on the EVM's rules, on one anvil per rule set we
/// support (anvil's `--hardfork`): the bytecode must run on each (Istanbul has no PUSH0,
/// Shanghai no MCOPY), gas differs between them (Berlin's cold/warm access costs), and
/// Istanbul and Berlin chains have no base fee, so their clients send legacy transactions.
fn every_check_on(hardfork: &'static str) -> Result<()> {
    // Istanbul's gas figures are recomputed from anvil's step traces (see istanbul_gas).
    let steps_tracing = hardfork == "istanbul";
    let anvil = Anvil::start_with(AnvilOptions { hardfork: Some(hardfork), steps_tracing, ..Default::default() })?;
    let before_london = matches!(hardfork, "istanbul" | "berlin");
    let fee_mode = client(&anvil, 0)?.fee_mode();
    assert_eq!(fee_mode, if before_london { FeeMode::Legacy } else { FeeMode::Eip1559 }, "{hardfork}: fee mode");
    deploy_and_the_papers_four_functions_over_two_rounds(&anvil).with_context(|| format!("{hardfork}: the paper's four functions"))?;
    a_learner_cannot_write_another_nodes_update_and_only_the_owner_publishes(&anvil).with_context(|| format!("{hardfork}: permissions"))?;
    wrong_rounds_and_bad_inputs_are_rejected_with_decoded_custom_errors(&anvil).with_context(|| format!("{hardfork}: custom errors"))?;
    gas_of_every_write_and_the_steady_state_learner_update(&anvil, hardfork).with_context(|| format!("{hardfork}: gas"))?;
    asynchronous_rounds_accept_stale_updates_within_the_bound(&anvil, hardfork).with_context(|| format!("{hardfork}: asynchronous"))?;
    Ok(())
}

/// An asynchronous registry (buffer 2, staleness at most 2): updates of older rounds are
/// accepted within the bound and refused beyond it, a learner's rounds only increase, a
/// global model needs the buffer's inputs, and a stale update costs what a fresh one does.
fn asynchronous_rounds_accept_stale_updates_within_the_bound(anvil: &Anvil, hardfork: &str) -> Result<()> {
    let owner = client(anvil, 0)?;
    let err = Registry::deploy_with_mode(&owner, MAX_SAMPLES, Mode::Async { buffer: 0, max_staleness: 1 }).unwrap_err().to_string();
    assert!(err.contains("needs a buffer of at least 1"), "{err}");
    let (registry, _) = Registry::deploy_with_mode(&owner, MAX_SAMPLES, Mode::Async { buffer: 2, max_staleness: 2 })?;
    assert_eq!(registry.mode()?, Mode::Async { buffer: 2, max_staleness: 2 });
    for id in 1..=3 {
        registry.add_learner(id, anvil.address(id as usize), None)?;
    }
    let learners: Vec<Client> = (1..=3).map(|i| client(anvil, i)).collect::<Result<_>>()?;
    let send = |id: u64, round: u64| {
        Registry::at(&learners[id as usize - 1], registry.address()).set_local_weight(
            id,
            round,
            &cid(&format!("{id}/{round}"), false),
            [id as u8; 32],
            10,
        )
    };
    registry.set_global_weight(0, &cid("seed", true), [1; 32], [0; 32], &[], &[])?;
    let publish =
        |round: u64, ids: &[u64]| registry.set_global_weight(round, &cid(&format!("g{round}"), true), [2; 32], [0; 32], ids, RECORD);
    // Round 1: learners 1, 2 and 3 (its first update, which costs more: new storage).
    send(1, 1)?;
    send(2, 1)?;
    send(3, 1)?;
    let args = expect_revert(publish(1, &[1]), "TooFewInputs")?;
    assert_eq!((arg(&args, "count"), arg(&args, "asyncBuffer")), ("1", "2"));
    publish(1, &[1, 2])?;
    for round in 2..=3 {
        send(1, round)?;
        send(2, round)?;
        publish(round, &[1, 2])?;
    }
    // Learner 3 is slow from here on. Current round 4: its update trained on global 1 (round
    // 2) is 2 behind: taken; one trained on global 0 is 3 behind: refused.
    expect_revert(send(3, 1), "TooStale")?;
    let stale = send(3, 2)?;
    let args = expect_revert(send(3, 2), "AlreadySubmitted")?;
    assert_eq!(arg(&args, "round"), "2");
    send(3, 4)?;
    let args = expect_revert(send(3, 3), "OlderThanLatest")?;
    assert_eq!((arg(&args, "round"), arg(&args, "latest")), ("3", "4"));
    expect_revert(send(1, 5), "WrongRound")?;
    let fresh = send(1, 4)?;
    // An input whose learner has nothing within the window: learner 2's latest is round 3,
    // allowed; a learner with no update at all is not.
    registry.add_learner(9, anvil.address(9), None)?;
    let args = expect_revert(publish(4, &[1, 9]), "MissingLocalUpdate")?;
    assert_eq!(arg(&args, "nodeId"), "9");
    publish(4, &[1, 3])?;
    // Issue 14: the learner's update keeps its budget in asynchronous rounds too.
    let cost = |receipt: &TransactionReceipt| if hardfork == "istanbul" { istanbul_gas(owner.rpc(), receipt) } else { Ok(gas(receipt)) };
    let (stale_gas, fresh_gas) = (cost(&stale)?, cost(&fresh)?);
    eprintln!("gas {hardfork:<9} {:<48} {stale_gas:>9}", "setLocalWeight async, 2 rounds stale");
    eprintln!("gas {hardfork:<9} {:<48} {fresh_gas:>9}", "setLocalWeight async, fresh");
    assert!(stale_gas <= 50_000 && fresh_gas <= 50_000, "{hardfork}: {stale_gas} / {fresh_gas}");
    // A synchronous registry refuses an update of an older round, whatever the staleness.
    let (sync, _) = Registry::deploy(&owner, MAX_SAMPLES)?;
    sync.add_learner(1, anvil.address(1), None)?;
    sync.set_global_weight(0, &cid("seed", true), [1; 32], [0; 32], &[], &[])?;
    Registry::at(&learners[0], sync.address()).set_local_weight(1, 1, &cid("s1", false), [1; 32], 10)?;
    sync.set_global_weight(1, &cid("s1g", true), [1; 32], [0; 32], &[1], RECORD)?;
    let args =
        expect_revert(Registry::at(&learners[0], sync.address()).set_local_weight(1, 1, &cid("s1b", false), [1; 32], 10), "WrongRound")?;
    assert_eq!((arg(&args, "given"), arg(&args, "current")), ("1", "2"));
    Ok(())
}

#[test]
fn every_check_on_istanbul() -> Result<()> {
    every_check_on("istanbul")
}

#[test]
fn every_check_on_berlin() -> Result<()> {
    every_check_on("berlin")
}

#[test]
fn every_check_on_london() -> Result<()> {
    every_check_on("london")
}

#[test]
fn every_check_on_paris() -> Result<()> {
    every_check_on("paris")
}

#[test]
fn every_check_on_shanghai() -> Result<()> {
    every_check_on("shanghai")
}

#[test]
fn every_check_on_cancun() -> Result<()> {
    every_check_on("cancun")
}

#[test]
fn every_check_on_prague() -> Result<()> {
    every_check_on("prague")
}

fn deploy_and_the_papers_four_functions_over_two_rounds(anvil: &Anvil) -> Result<()> {
    let owner = client(anvil, 0)?;
    let (learner1, learner2) = (client(anvil, 1)?, client(anvil, 2)?);
    let (registry, deploy) = Registry::deploy(&owner, MAX_SAMPLES)?;
    let expected_type = if owner.fee_mode() == FeeMode::Legacy { 0 } else { 2 };
    assert_eq!(deploy.transaction_type.map(|t| t.as_u64()).unwrap_or(0), expected_type, "transaction type");
    assert_eq!(Some(registry.deployed_at()?), deploy.block_number.map(|b| b.as_u64()));
    assert_eq!(registry.owner()?, anvil.address(0));
    assert_eq!(registry.current_round()?, 0);
    assert_eq!(registry.get_global_weight()?, "");
    assert_eq!(registry.get_local_weight(1)?, "");
    assert!(registry.global_update()?.is_none());

    registry.add_learner(1, anvil.address(1), None)?;
    registry.add_learner(2, anvil.address(2), None)?;
    assert_eq!(registry.learner_ids()?, vec![1, 2]);

    // Round 0: the seeded global model, no inputs.
    let seed = cid("seed", true);
    registry.set_global_weight(0, &seed, [0x11; 32], [0; 32], &[], &[])?;
    assert_eq!(registry.current_round()?, 1);
    assert_eq!(registry.get_global_weight()?, seed);

    // Round 1: both learners submit; each writes only its own node id.
    let mut inputs = Vec::new();
    for (node_id, client) in [(1u64, &learner1), (2u64, &learner2)] {
        let update =
            LocalUpdate { node_id, round: 1, cid: cid(&format!("local {node_id} 1"), true), digest: [node_id as u8; 32], samples: 30_000 };
        Registry::at(client, registry.address()).set_local_weight(node_id, 1, &update.cid, update.digest, update.samples)?;
        assert_eq!(registry.get_local_weight(node_id)?, update.cid);
        inputs.push(update);
    }
    // A restarted learner sees what it already sent for this round.
    let state = registry.local_update(2)?;
    assert_eq!(state.account, anvil.address(2));
    assert_eq!(state.max_samples, MAX_SAMPLES);
    let latest = state.latest.as_ref().context("learner 2's update")?;
    assert_eq!((latest.round, &latest.cid, latest.digest), (1, &inputs[1].cid, inputs[1].digest));

    let global1 = cid("global 1", true);
    let inputs_commitment = commitment(&inputs, Some(RECORD))?;
    registry.set_global_weight(1, &global1, [0x22; 32], inputs_commitment, &[1, 2], RECORD)?;
    assert_eq!(registry.get_global_weight()?, global1);
    let global = registry.global_update()?.context("global model after round 1")?;
    assert_eq!((global.round, global.digest, global.inputs_commitment), (1, [0x22; 32], inputs_commitment));
    assert_eq!(registry.current_round()?, 2);

    // The events tell the whole story, and the commitment can be recomputed from them.
    let head = owner.rpc().block_number()?;
    let from = registry.deployed_at()?;
    let events: Vec<Event> =
        Registry::at(&owner, registry.address()).with_log_range(2).events(from, head)?.into_iter().map(|l| l.event).collect();
    assert_eq!(events.len(), 6, "{events:#?}");
    assert_eq!(events[0], Event::LearnerAdded { node_id: 1, account: anvil.address(1), max_samples: Some(MAX_SAMPLES) });
    assert_eq!(events[1], Event::LearnerAdded { node_id: 2, account: anvil.address(2), max_samples: Some(MAX_SAMPLES) });
    assert!(matches!(&events[2], Event::GlobalWeightSet(g) if g.round == 0 && g.cid == seed && g.node_ids.is_empty()));
    assert_eq!(events[3], Event::LocalWeightSet(inputs[0].clone()));
    assert_eq!(events[4], Event::LocalWeightSet(inputs[1].clone()));
    let Event::GlobalWeightSet(published) = &events[5] else { bail!("expected GlobalWeightSet, got {:?}", events[5]) };
    assert_eq!(published.node_ids, vec![1, 2]);
    assert_eq!(published.record, RECORD);
    let from_logs = registry.local_updates_of_round(1, 0, head)?;
    let used: Vec<LocalUpdate> = from_logs.into_iter().filter(|u| published.node_ids.contains(&u.node_id)).collect();
    assert_eq!(commitment(&used, Some(&published.record))?, published.inputs_commitment);
    assert_eq!(registry.global_updates(0, head)?.len(), 2);

    // Removing a learner keeps its history readable.
    registry.remove_learner(1)?;
    assert_eq!(registry.learner_ids()?, vec![2]);
    assert_eq!(registry.get_local_weight(1)?, inputs[0].cid);
    Ok(())
}

fn a_learner_cannot_write_another_nodes_update_and_only_the_owner_publishes(anvil: &Anvil) -> Result<()> {
    let owner = client(anvil, 0)?;
    let learner2 = client(anvil, 2)?;
    let (registry, _) = Registry::deploy(&owner, MAX_SAMPLES)?;
    registry.add_learner(1, anvil.address(1), None)?;
    registry.add_learner(2, anvil.address(2), None)?;
    registry.set_global_weight(0, &cid("seed", true), [1; 32], [0; 32], &[], &[])?;

    let as_learner2 = Registry::at(&learner2, registry.address());
    let args = expect_revert(as_learner2.set_local_weight(1, 1, &cid("forged", true), [9; 32], 10), "NotLearner")?;
    assert_eq!(arg(&args, "nodeId"), "1");
    assert_eq!(arg(&args, "caller"), format!("{:?}", anvil.address(2)));
    let args = expect_revert(as_learner2.set_local_weight(7, 1, &cid("nobody", true), [9; 32], 10), "UnknownLearner")?;
    assert_eq!(arg(&args, "nodeId"), "7");
    assert_eq!(registry.get_local_weight(1)?, "", "node 1 untouched");

    let args = expect_revert(as_learner2.set_global_weight(1, &cid("g", true), [1; 32], [0; 32], &[2], RECORD), "NotOwner")?;
    assert_eq!(arg(&args, "caller"), format!("{:?}", anvil.address(2)));
    expect_revert(as_learner2.add_learner(3, anvil.address(2), None), "NotOwner")?;
    expect_revert(as_learner2.remove_learner(1), "NotOwner")?;
    let args = expect_revert(registry.add_learner(1, anvil.address(3), None), "AlreadyRegistered")?;
    assert_eq!(arg(&args, "account"), format!("{:?}", anvil.address(1)));
    Ok(())
}

fn wrong_rounds_and_bad_inputs_are_rejected_with_decoded_custom_errors(anvil: &Anvil) -> Result<()> {
    let owner = client(anvil, 0)?;
    let learner1 = client(anvil, 1)?;
    let err = Registry::deploy(&owner, 0).unwrap_err().to_string();
    assert!(err.contains("a federation-wide sample cap of 0"), "{err}");
    let (registry, _) = Registry::deploy(&owner, MAX_SAMPLES)?;
    assert_eq!(registry.version()?, 4);
    assert_eq!((registry.mode()?, registry.model_spec()?), (Mode::Sync, None));
    // The model spec is fixed at deployment: its digest reads back, a zero one is the
    // built-in model, and a version-3 registry (no spec) reads as the built-in model.
    let (declared, _) = Registry::deploy_federation(&owner, MAX_SAMPLES, Mode::Sync, Some([7; 32]), 1)?;
    assert_eq!(declared.model_spec()?, Some([7; 32]));
    let (zero, _) = Registry::deploy_federation(&owner, MAX_SAMPLES, Mode::Sync, Some([0; 32]), 1)?;
    assert_eq!((zero.model_spec()?, zero.model_groups()?), (None, 1));
    // Model groups: each learner registered to one, before its first update, and never to
    // a group the federation does not have; groups need a digest and synchronous rounds.
    let (grouped, _) = Registry::deploy_federation(&owner, MAX_SAMPLES, Mode::Sync, Some([9; 32]), 2)?;
    assert_eq!((grouped.model_spec()?, grouped.model_groups()?), (Some([9; 32]), 2));
    for (spec, mode) in [(None, Mode::Sync), (Some([9; 32]), Mode::Async { buffer: 2, max_staleness: 1 })] {
        let err = Registry::deploy_federation(&owner, MAX_SAMPLES, mode, spec, 2).unwrap_err().to_string();
        assert!(err.contains("2 model groups: a federation has 1 model, or 2 to 16 groups"), "{err}");
    }
    grouped.add_learner(1, anvil.address(1), None)?;
    expect_revert(grouped.set_learner_group(2, 1), "UnknownLearner")?;
    let args = expect_revert(grouped.set_learner_group(1, 2), "InvalidGroup")?;
    assert_eq!(arg(&args, "modelGroups"), "2");
    assert_eq!(grouped.learner_group(1)?, 0);
    grouped.set_learner_group(1, 1)?;
    assert_eq!(grouped.learner_group(1)?, 1);
    grouped.set_global_weight(0, &cid("seed", true), [1; 32], [0; 32], &[], &[])?;
    Registry::at(&learner1, grouped.address()).set_local_weight(1, 1, &cid("g", false), [1; 32], 5)?;
    expect_revert(grouped.set_learner_group(1, 0), "GroupFixed")?;
    let groups_set: Vec<Event> = grouped.events(0, owner.rpc().block_number()?)?.into_iter().map(|l| l.event).collect();
    assert!(groups_set.contains(&Event::LearnerGroupSet { node_id: 1, group: 1 }), "{groups_set:?}");
    let mut creation = fl_contracts::abi::v3::registry_bytecode().to_vec();
    creation.extend(fl_contracts::ethers_core::abi::encode(&[
        fl_contracts::ethers_core::abi::Token::Uint(MAX_SAMPLES.into()),
        fl_contracts::ethers_core::abi::Token::Uint(0.into()),
        fl_contracts::ethers_core::abi::Token::Uint(0.into()),
    ]));
    let (v3, _) = Registry::deploy_bytecode(&owner, creation.into())?;
    assert_eq!((v3.version()?, v3.mode()?, v3.model_spec()?), (3, Mode::Sync, None));
    registry.add_learner(1, anvil.address(1), None)?;
    registry.add_learner(2, anvil.address(2), None)?;
    let as_learner1 = Registry::at(&learner1, registry.address());

    // Before the seed, no local round is open.
    let args = expect_revert(as_learner1.set_local_weight(1, 1, &cid("early", false), [1; 32], 5), "WrongRound")?;
    assert_eq!((arg(&args, "given"), arg(&args, "current")), ("1", "0"));
    let args = expect_revert(registry.set_global_weight(1, &cid("g", true), [1; 32], [0; 32], &[], RECORD), "WrongRound")?;
    assert_eq!((arg(&args, "given"), arg(&args, "current")), ("1", "0"));
    expect_revert(registry.set_global_weight(0, &cid("g", true), [1; 32], [0; 32], &[1], &[]), "SeedHasInputs")?;
    registry.set_global_weight(0, &cid("seed", true), [1; 32], [0; 32], &[], &[])?;

    let args = expect_revert(as_learner1.set_local_weight(1, 2, &cid("late", false), [1; 32], 5), "WrongRound")?;
    assert_eq!((arg(&args, "given"), arg(&args, "current")), ("2", "1"));
    expect_revert(as_learner1.set_local_weight(1, 1, &cid("zero", false), [1; 32], 0), "InvalidSamples")?;
    // Sample counts are capped: the federation-wide cap, or the learner's own.
    let args = expect_revert(as_learner1.set_local_weight(1, 1, &cid("greedy", false), [1; 32], MAX_SAMPLES + 1), "SamplesAboveCap")?;
    assert_eq!(
        (arg(&args, "nodeId"), arg(&args, "samples"), arg(&args, "maxSamples")),
        ("1", (MAX_SAMPLES + 1).to_string().as_str(), MAX_SAMPLES.to_string().as_str())
    );
    registry.add_learner(3, anvil.address(3), Some(100))?;
    assert_eq!((registry.local_update(3)?.max_samples, registry.default_max_samples()?), (100, MAX_SAMPLES));
    let learner3 = client(anvil, 3)?;
    let as_learner3 = Registry::at(&learner3, registry.address());
    expect_revert(as_learner3.set_local_weight(3, 1, &cid("101", false), [1; 32], 101), "SamplesAboveCap")?;
    as_learner3.set_local_weight(3, 1, &cid("100", false), [1; 32], 100)?;
    assert!(registry.add_learner(4, anvil.address(4), Some(0)).unwrap_err().to_string().contains("a sample cap of 0"));
    as_learner1.set_local_weight(1, 1, &cid("first", false), [1; 32], 5)?;
    let args = expect_revert(as_learner1.set_local_weight(1, 1, &cid("again", false), [2; 32], 5), "AlreadySubmitted")?;
    assert_eq!((arg(&args, "nodeId"), arg(&args, "round")), ("1", "1"));

    // A global model may only list node ids that submitted for the round, ascending.
    let args = expect_revert(registry.set_global_weight(1, &cid("g1", true), [1; 32], [0; 32], &[1, 2], RECORD), "MissingLocalUpdate")?;
    assert_eq!((arg(&args, "nodeId"), arg(&args, "round")), ("2", "1"));
    expect_revert(registry.set_global_weight(1, &cid("g1", true), [1; 32], [0; 32], &[1, 1], RECORD), "NodeIdsNotAscending")?;
    expect_revert(registry.set_global_weight(1, &cid("g1", true), [1; 32], [0; 32], &[], RECORD), "NoInputs")?;
    // A subset of the learners is enough.
    expect_revert(registry.set_global_weight(1, &cid("g1", true), [1; 32], [0; 32], &[1], &[]), "NoRecord")?;
    registry.set_global_weight(1, &cid("g1", true), [1; 32], [0; 32], &[1], RECORD)?;
    assert_eq!(registry.current_round()?, 2);

    // A malformed CID never reaches the chain: the client refuses it.
    let err = as_learner1.set_local_weight(1, 2, "QmNotACidV1", [1; 32], 5).unwrap_err().to_string();
    assert!(err.contains("cid \"QmNotACidV1\""), "{err}");
    Ok(())
}

#[test]
fn ten_transactions_in_flight_get_consecutive_nonces_and_all_mine() -> Result<()> {
    // One block per second, so the ten transactions really wait in the pool together.
    let anvil = Anvil::start_with(AnvilOptions { block_time: Some(1), ..Default::default() })?;
    let owner = client(&anvil, 0)?;
    let (registry, _) = Registry::deploy(&owner, MAX_SAMPLES)?;
    let start = owner.rpc().transaction_count(anvil.address(0), "latest")?;
    let mut pending = Vec::new();
    for node_id in 0..10u64 {
        let data = fl_contracts::abi::encode_call(
            "addLearner",
            &[Token::Uint(node_id.into()), Token::Address(anvil.address(1 + node_id as usize % 9)), Token::Uint(0.into())],
        )?;
        pending.push(owner.send("addLearner", Some(registry.address()), data)?);
    }
    let nonces: Vec<u64> = pending.iter().map(|p| p.nonce.as_u64()).collect();
    let expected: Vec<u64> = (0..10).map(|i| start.as_u64() + i).collect();
    assert_eq!(nonces, expected);
    for tx in pending {
        let receipt = owner.wait("addLearner", tx)?;
        assert_eq!(receipt.status.map(|s| s.as_u64()), Some(1));
    }
    assert_eq!(registry.learner_ids()?, (0..10).collect::<Vec<u64>>());
    Ok(())
}

#[test]
fn wrong_chain_id_and_unreachable_node_give_clear_errors() -> Result<()> {
    let anvil = Anvil::start()?;
    let err = Client::new(Rpc::new(anvil.url())?, anvil.signer(0)?, Some(1)).unwrap_err().to_string();
    assert_eq!(err, format!("node at {} is on chain id {}, expected chain id 1", anvil.url(), anvil.chain_id()));

    // A transaction signed for another chain is refused by the node, and the error says so.
    let rpc = Rpc::new(anvil.url())?;
    let signer = anvil.signer(0)?;
    let tx = TypedTransaction::Eip1559(
        Eip1559TransactionRequest::new()
            .to(anvil.address(1))
            .value(1)
            .nonce(0)
            .gas(21_000)
            .max_fee_per_gas(10_000_000_000u64)
            .max_priority_fee_per_gas(1_000_000_000u64),
    );
    let raw = signer.sign_transaction(&tx, 1)?;
    let err = rpc.send_raw_transaction(&raw).unwrap_err();
    let Error::Rpc { method, message, .. } = &err else { bail!("expected an RPC error, got {err:?}") };
    assert_eq!(method, "eth_sendRawTransaction");
    assert!(message.to_lowercase().contains("chain"), "{message}");

    // Nothing listens on a port that was just free.
    let url = format!("http://127.0.0.1:{}", free_port()?);
    let err = Rpc::with_timeout(&url, Duration::from_secs(2))?.chain_id().unwrap_err();
    assert!(matches!(err, Error::Transport { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.starts_with(&format!("eth_chainId: cannot reach node at {url}")), "{text}");
    Ok(())
}

/// Prints the gas of every write on this rule set (`--nocapture` shows the table that
/// contracts/README.md quotes) and asserts the learner's steady-state update budget. On
/// Istanbul the figures are re-priced by Istanbul's rules ([`istanbul_gas`]), which anvil
/// does not follow.
fn gas_of_every_write_and_the_steady_state_learner_update(anvil: &Anvil, hardfork: &str) -> Result<()> {
    let owner = client(anvil, 0)?;
    let learner1 = client(anvil, 1)?;
    // Legacy and EIP-1559 transactions cost the same gas; both kinds are sent where both exist.
    let learner2 = client(anvil, 2)?.with_fee_mode(FeeMode::Legacy);
    let cost = |receipt: &TransactionReceipt| -> Result<u64> {
        if hardfork == "istanbul" {
            istanbul_gas(owner.rpc(), receipt)
        } else {
            Ok(gas(receipt))
        }
    };
    let (registry, deploy) = Registry::deploy(&owner, MAX_SAMPLES)?;
    let mut table = vec![("deploy", cost(&deploy)?)];
    table.push(("addLearner", cost(&registry.add_learner(1, anvil.address(1), None)?)?));
    registry.add_learner(2, anvil.address(2), None)?;
    registry.add_learner(3, anvil.address(3), None)?;
    table.push(("removeLearner", cost(&registry.remove_learner(3)?)?));
    table.push(("setGlobalWeight round 0 (seed)", cost(&registry.set_global_weight(0, &cid("seed", true), [1; 32], [0; 32], &[], &[])?)?));

    let mut steady = Vec::new();
    for round in 1..=3u64 {
        let mut inputs = Vec::new();
        for (node_id, client) in [(1u64, &learner1), (2u64, &learner2)] {
            let update = LocalUpdate {
                node_id,
                round,
                cid: cid(&format!("{node_id}/{round}"), true),
                digest: ethers_keccak(&format!("d{node_id}/{round}")),
                samples: 30_000,
            };
            let receipt =
                Registry::at(client, registry.address()).set_local_weight(node_id, round, &update.cid, update.digest, update.samples)?;
            if round == 1 && node_id == 1 {
                table.push(("setLocalWeight first (round 1)", cost(&receipt)?));
            } else if round >= 2 {
                steady.push(cost(&receipt)?);
            }
            inputs.push(update);
        }
        let receipt = registry.set_global_weight(
            round,
            &cid(&format!("g{round}"), true),
            [2; 32],
            commitment(&inputs, Some(RECORD))?,
            &[1, 2],
            RECORD,
        )?;
        if round == 2 {
            table.push(("setGlobalWeight, 2 inputs", cost(&receipt)?));
        }
    }
    let steady_max = *steady.iter().max().context("steady-state updates")?;
    table.push(("setLocalWeight steady state (round >= 2, max)", steady_max));
    for (what, gas) in &table {
        eprintln!("gas {hardfork:<9} {what:<48} {gas:>9}");
    }
    // Issue 3's goal: a learner's update from the second round on costs at most 50,000 gas,
    // on every rule set (issue 11).
    assert!(steady_max <= 50_000, "{hardfork}: steady-state setLocalWeight used {steady_max} gas (> 50,000): {steady:?}");
    Ok(())
}

/// EIP-2200's constants: Istanbul's net-metered SSTORE (SLOAD_GAS is EIP-1884's 800).
const SLOAD_GAS: i64 = 800;
const SSTORE_SET_GAS: i64 = 20_000;
const SSTORE_RESET_GAS: i64 = 5_000;
const SSTORE_CLEARS_SCHEDULE: i64 = 15_000;

/// The gas a mined transaction uses under Istanbul's rules. anvil 1.7.1 (revm) does not
/// follow them on `--hardfork istanbul`: it prices SSTORE by Berlin's EIP-2929 (a reset
/// 2,900 plus 2,100 on a cold slot, a cold no-op 2,200, where EIP-2200 charges 5,000 and
/// 800) and refunds London's 4,800 per cleared slot (EIP-3529) where EIP-2200 refunds
/// 15,000 (seen in anvil's step traces). So this replays anvil's step trace (anvil must run
/// with `--steps-tracing`): it first checks that anvil's own step costs and refund give
/// its receipt's figure (calldata per EIP-2028, 32,000 and 200 per byte of code for a
/// deployment, refund capped at half the gas before London), then prices each SSTORE and
/// its refund from EIP-2200's text, with the slot's original value read at the previous
/// block, and keeps every other step's cost.
fn istanbul_gas(rpc: &Rpc, receipt: &TransactionReceipt) -> Result<u64> {
    let hash = receipt.transaction_hash;
    let tx: Option<Transaction> = rpc.request("eth_getTransactionByHash", json!([hash]))?;
    let tx = tx.with_context(|| format!("transaction {hash:?} not found"))?;
    let block = receipt.block_number.context("receipt without a block number")?.as_u64();
    let (account, creation) = match (tx.to, receipt.contract_address) {
        (Some(to), _) => (to, false),
        (None, Some(created)) => (created, true),
        (None, None) => bail!("transaction {hash:?} has neither a recipient nor a created contract"),
    };
    let mut outside_steps: i64 = 21_000 + tx.input.iter().map(|&b| if b == 0 { 4 } else { 16 }).sum::<i64>();
    if creation {
        let code: Bytes = rpc.request("eth_getCode", json!([account, U64::from(block)]))?;
        outside_steps += 32_000 + 200 * code.len() as i64;
    }
    let trace: serde_json::Value = rpc.request("debug_traceTransaction", json!([hash, {"disableMemory": true, "disableStorage": true}]))?;
    let steps = trace
        .get("structLogs")
        .and_then(serde_json::Value::as_array)
        .filter(|steps| !steps.is_empty())
        .with_context(|| format!("no step trace of {hash:?}: start anvil with --steps-tracing"))?;
    let (mut anvil_steps, mut anvil_refund, mut istanbul_steps, mut istanbul_refund) = (0i64, 0i64, 0i64, 0i64);
    let mut current: HashMap<U256, U256> = HashMap::new();
    for step in steps {
        let field = |name: &str| step.get(name).with_context(|| format!("{hash:?}: step without {name}: {step}"));
        let op = field("op")?.as_str().context("op is not a string")?;
        let step_cost = field("gasCost")?.as_i64().context("gasCost is not a number")?;
        anvil_refund = field("refund")?.as_i64().context("refund is not a number")?;
        if field("depth")?.as_u64() != Some(1) {
            bail!("{hash:?}: a nested call; this re-pricing only knows one frame");
        }
        anvil_steps += step_cost;
        if op != "SSTORE" {
            istanbul_steps += step_cost;
            continue;
        }
        let stack = field("stack")?.as_array().context("stack is not an array")?;
        let word = |from_top: usize| -> Result<U256> {
            let text = stack.len().checked_sub(1 + from_top).and_then(|i| stack[i].as_str()).context("SSTORE without two stack words")?;
            U256::from_str_radix(text.trim_start_matches("0x"), 16).with_context(|| format!("stack word {text:?}"))
        };
        let (key, new) = (word(0)?, word(1)?);
        let original = if creation { U256::zero() } else { rpc.request("eth_getStorageAt", json!([account, key, U64::from(block - 1)]))? };
        let now = current.get(&key).copied().unwrap_or(original);
        // EIP-2200, "Specification", in its order.
        istanbul_steps += if now == new {
            SLOAD_GAS
        } else if original == now {
            if original.is_zero() {
                SSTORE_SET_GAS
            } else {
                SSTORE_RESET_GAS
            }
        } else {
            SLOAD_GAS
        };
        if now != new {
            if original == now {
                if !original.is_zero() && new.is_zero() {
                    istanbul_refund += SSTORE_CLEARS_SCHEDULE;
                }
            } else {
                if !original.is_zero() {
                    if now.is_zero() {
                        istanbul_refund -= SSTORE_CLEARS_SCHEDULE;
                    } else if new.is_zero() {
                        istanbul_refund += SSTORE_CLEARS_SCHEDULE;
                    }
                }
                if original == new {
                    istanbul_refund += if original.is_zero() { SSTORE_SET_GAS - SLOAD_GAS } else { SSTORE_RESET_GAS - SLOAD_GAS };
                }
            }
        }
        current.insert(key, new);
    }
    // Before London (EIP-3529) the refund is at most half the gas spent.
    let settle = |steps: i64, refund: i64| {
        let spent = outside_steps + steps;
        spent - refund.min(spent / 2)
    };
    let anvil_figure = settle(anvil_steps, anvil_refund);
    if anvil_figure != gas(receipt) as i64 {
        bail!(
            "{hash:?}: anvil's step costs add up to {anvil_figure} gas but its receipt says {}: the trace is not read as anvil meant it",
            gas(receipt)
        );
    }
    Ok(settle(istanbul_steps, istanbul_refund) as u64)
}

/// Runs `fl-aggregator ARGS` with `envs`; returns stdout, or fails with stderr.
fn operator(envs: &[(&str, &str)], args: &[&str]) -> Result<String> {
    let bin = fl_tests::util::workspace_bin("fl-aggregator")?;
    let mut command = std::process::Command::new(bin);
    command.args(args);
    for name in ["ETH_RPC_URL", "ETH_KEYSTORE", "ETH_PASSWORD", "ETH_PASSWORD_FILE", "ETH_PRIVATE_KEY", "FL_REGISTRY"] {
        command.env_remove(name);
    }
    command.envs(envs.iter().copied());
    let output = command.output().context("running fl-aggregator")?;
    if !output.status.success() {
        bail!("fl-aggregator {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8(output.stdout)?)
}

#[test]
fn operator_commands_deploy_add_list_and_status_with_a_keystore() -> Result<()> {
    let anvil = Anvil::start()?;
    let dir = fl_tests::util::TempDir::new("operator")?;
    let keystore = dir.path().join("owner.json");
    let password_file = dir.path().join("password");
    anvil.signer(0)?.write_keystore(&keystore, "correct horse")?;
    std::fs::write(&password_file, "correct horse\n")?;
    let (keystore, password_file) = (keystore.to_string_lossy().to_string(), password_file.to_string_lossy().to_string());
    let owner_flags = ["--rpc-url", anvil.url(), "--keystore", &keystore, "--password-file", &password_file];

    let err = operator(&[], &[&["deploy", "--max-samples", "0"][..], &owner_flags].concat()).unwrap_err().to_string();
    assert!(err.contains("--max-samples 0: must be between 1 and"), "{err}");
    let address = operator(&[], &[&["deploy", "--max-samples", "30000"][..], &owner_flags].concat())?.trim().to_string();
    assert!(address.starts_with("0x") && address.len() == 42, "{address:?}");
    let learner = format!("{:?}", anvil.address(1));
    operator(&[], &[&["learners", "add", "4", &learner][..], &owner_flags, &["--registry", &address]].concat())?;
    let other = format!("{:?}", anvil.address(2));
    operator(&[], &[&["learners", "add", "6", &other, "--max-samples", "500"][..], &owner_flags, &["--registry", &address]].concat())?;

    // Read-only commands need no key; the environment supplies URL and registry.
    let envs = [("ETH_RPC_URL", anvil.url()), ("FL_REGISTRY", address.as_str())];
    let list = operator(&envs, &["learners", "list"])?;
    assert_eq!(list, format!("learner 4 {learner} cap 30000 round none\nlearner 6 {other} cap 500 round none\n"));
    let status = operator(&envs, &["status"])?;
    assert!(status.contains("round 0\nglobal none\n"), "{status}");
    assert!(status.contains(&format!("owner {:?}", anvil.address(0))), "{status}");
    assert!(status.contains("version 4, synchronous rounds\n"), "{status}");
    assert!(status.contains("model the built-in fl-mnist-cnn-v1 (paper-mnist-cnn)\n"), "{status}");
    // An asynchronous federation, as the operator deploys it; its mode is on the registry.
    let err =
        operator(&[], &[&["deploy", "--max-samples", "30000", "--mode", "async"][..], &owner_flags].concat()).unwrap_err().to_string();
    assert!(err.contains("--mode async needs --buffer K"), "{err}");
    let async_registry =
        operator(&[], &[&["deploy", "--max-samples", "30000", "--mode", "async", "--buffer", "5"][..], &owner_flags].concat())?;
    let status = operator(&[("ETH_RPC_URL", anvil.url()), ("FL_REGISTRY", async_registry.trim())], &["status"])?;
    assert!(status.contains("asynchronous rounds (a global model per 5 updates, staleness at most 4)"), "{status}");

    // A board's new key, and the registry handed to another key in two steps.
    let new_board = format!("{:?}", anvil.address(3));
    operator(&[], &[&["learners", "replace", "4", &new_board][..], &owner_flags, &["--registry", &address]].concat())?;
    assert!(operator(&envs, &["learners", "list"])?.starts_with(&format!("learner 4 {new_board} cap 30000 round none\n")));
    let successor = format!("{:?}", anvil.address(5));
    operator(&[], &[&["owner", "transfer", &successor][..], &owner_flags, &["--registry", &address]].concat())?;
    assert!(operator(&envs, &["status"])?.contains(&format!("pending owner {successor}")));
    let as_successor = [envs[0], envs[1], ("ETH_PRIVATE_KEY", anvil.key(5))];
    operator(&as_successor, &["owner", "accept"])?;
    assert!(operator(&envs, &["status"])?.contains(&format!("owner {successor}\n")));

    // A wrong password and a missing key are clear errors.
    std::fs::write(&password_file, "wrong\n")?;
    let err = operator(&[], &[&["learners", "add", "5", &learner][..], &owner_flags, &["--registry", &address]].concat())
        .unwrap_err()
        .to_string();
    assert!(err.contains("wrong password"), "{err}");
    let err = operator(&envs, &["learners", "add", "5", &learner]).unwrap_err().to_string();
    assert!(err.contains("no signing key"), "{err}");
    Ok(())
}

#[test]
fn a_transaction_that_fails_after_mining_is_explained_and_receipt_waits_have_a_deadline() -> Result<()> {
    // Two submissions for the same node and round in flight: both pass gas estimation, the
    // second fails when mined, and the replay names the contract's error.
    let anvil = Anvil::start_with(AnvilOptions { block_time: Some(1), ..Default::default() })?;
    let owner = client(&anvil, 0)?;
    let (registry, _) = Registry::deploy(&owner, MAX_SAMPLES)?;
    registry.add_learner(1, anvil.address(1), None)?;
    registry.set_global_weight(0, &cid("seed", true), [1; 32], [0; 32], &[], &[])?;
    let learner = client(&anvil, 1)?;
    let first = learner.send(
        "setLocalWeight",
        Some(registry.address()),
        Registry::set_local_weight_calldata(1, 1, &cid("a", false), [1; 32], 5)?,
    )?;
    // The node would refuse to estimate the second (its pending state already holds the
    // first), so it goes out with a fixed gas limit.
    let data = Registry::set_local_weight_calldata(1, 1, &cid("b", false), [2; 32], 5)?;
    let second = learner.send_with_gas("setLocalWeight", Some(registry.address()), data, Some(200_000))?;
    learner.wait("setLocalWeight", first)?;
    let args = expect_revert(learner.wait("setLocalWeight", second), "AlreadySubmitted")?;
    assert_eq!((arg(&args, "nodeId"), arg(&args, "round")), ("1", "1"));

    // A node that never mines: the wait ends at its deadline with a Timeout error.
    let stalled = Anvil::start_with(AnvilOptions { no_mining: true, ..Default::default() })?;
    let client = client(&stalled, 0)?.with_receipt_timeout(Duration::from_millis(800));
    let pending = client.send(
        "deploy",
        None,
        fl_contracts::creation_code(&fl_contracts::abi::registry_bytecode(), MAX_SAMPLES, fl_contracts::Mode::Sync, None, 1)?,
    )?;
    let err = client.wait("deploy", pending).unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(err.to_string().starts_with("deploy: waiting for receipt of"), "{err}");
    Ok(())
}

#[test]
fn ownership_moves_in_two_steps_and_a_learner_gets_a_new_key_keeping_its_history() -> Result<()> {
    let anvil = Anvil::start()?;
    let owner = client(&anvil, 0)?;
    let (registry, _) = Registry::deploy(&owner, MAX_SAMPLES)?;
    registry.add_learner(1, anvil.address(1), Some(500))?;
    registry.set_global_weight(0, &cid("seed", true), [1; 32], [0; 32], &[], &[])?;
    let first_board = client(&anvil, 1)?;
    Registry::at(&first_board, registry.address()).set_local_weight(1, 1, &cid("one", false), [1; 32], 5)?;
    registry.set_global_weight(1, &cid("g1", true), [1; 32], [0; 32], &[1], RECORD)?;

    // A board's key is replaced: the old key can no longer write, the new one can, and the
    // node keeps its cap and its history.
    let (old_board, new_board) = (client(&anvil, 1)?, client(&anvil, 6)?);
    expect_revert(Registry::at(&new_board, registry.address()).replace_learner_account(1, anvil.address(6)), "NotOwner")?;
    expect_revert(registry.replace_learner_account(9, anvil.address(6)), "UnknownLearner")?;
    registry.replace_learner_account(1, anvil.address(6))?;
    let state = registry.local_update(1)?;
    assert_eq!((state.account, state.max_samples, state.latest.map(|u| u.round)), (anvil.address(6), 500, Some(1)));
    let args =
        expect_revert(Registry::at(&old_board, registry.address()).set_local_weight(1, 2, &cid("two", false), [2; 32], 5), "NotLearner")?;
    assert_eq!(arg(&args, "nodeId"), "1");
    Registry::at(&new_board, registry.address()).set_local_weight(1, 2, &cid("two", false), [2; 32], 5)?;

    // Ownership: named first, taken by the named key only; the old key is then powerless.
    let (successor, stranger) = (client(&anvil, 5)?, client(&anvil, 7)?);
    registry.transfer_ownership(anvil.address(5))?;
    assert_eq!((registry.owner()?, registry.pending_owner()?), (anvil.address(0), anvil.address(5)));
    let args = expect_revert(Registry::at(&stranger, registry.address()).accept_ownership(), "NotPendingOwner")?;
    assert_eq!(arg(&args, "caller"), format!("{:?}", anvil.address(7)));
    Registry::at(&successor, registry.address()).accept_ownership()?;
    assert_eq!((registry.owner()?, registry.pending_owner()?), (anvil.address(5), Address::zero()));
    expect_revert(registry.add_learner(2, anvil.address(2), None), "NotOwner")?;
    Registry::at(&successor, registry.address()).add_learner(2, anvil.address(2), None)?;
    // A transfer can be cancelled before it is accepted.
    let as_successor = Registry::at(&successor, registry.address());
    as_successor.transfer_ownership(anvil.address(8))?;
    as_successor.transfer_ownership(Address::zero())?;
    let cancelled = client(&anvil, 8)?;
    expect_revert(Registry::at(&cancelled, registry.address()).accept_ownership(), "NotPendingOwner")?;

    // The events tell it all.
    let events: Vec<Event> = registry.events(0, owner.rpc().block_number()?)?.into_iter().map(|l| l.event).collect();
    assert!(events.contains(&Event::LearnerAccountChanged { node_id: 1, previous: anvil.address(1), account: anvil.address(6) }));
    assert!(events.contains(&Event::OwnershipTransferStarted { owner: anvil.address(0), pending_owner: anvil.address(5) }));
    assert!(events.contains(&Event::OwnershipTransferred { previous: anvil.address(0), owner: anvil.address(5) }));
    Ok(())
}

#[test]
fn a_chain_without_base_fee_gets_legacy_transactions() -> Result<()> {
    // A London-or-later chain whose base fee is zero (some private networks run so) gets
    // legacy transactions too; chains from before London are covered by every_check_on_*.
    let anvil = Anvil::start_with(AnvilOptions { base_fee: Some(0), ..Default::default() })?;
    let owner = client(&anvil, 0)?;
    assert_eq!(owner.fee_mode(), FeeMode::Legacy);
    let (registry, receipt) = Registry::deploy(&owner, MAX_SAMPLES)?;
    assert_eq!(receipt.transaction_type.map(|t| t.as_u64()).unwrap_or(0), 0, "legacy transaction");
    registry.add_learner(1, anvil.address(1), None)?;
    assert_eq!(registry.learner_ids()?, vec![1]);
    Ok(())
}

/// The registry compiled for Cancun (solc 0.8.28's default, and what the artifacts were
/// before issue 11), from the same source with the pinned solc-js.
fn cancun_build() -> Result<Bytes> {
    let dir = fl_tests::util::workspace_root().join("contracts");
    let output = std::process::Command::new("node")
        .args(["build.mjs", "--evm-version", "cancun", "--print"])
        .current_dir(&dir)
        .output()
        .context("running node (Node.js 20 and contracts/node_modules are needed: run `make setup`)")?;
    if !output.status.success() {
        bail!("node build.mjs --evm-version cancun --print in {} failed: {}", dir.display(), String::from_utf8_lossy(&output.stderr));
    }
    let hex = String::from_utf8(output.stdout).context("build.mjs printed something other than hex")?;
    Ok(Bytes::from(fl_contracts::ethers_core::utils::hex::decode(hex.trim()).context("build.mjs printed something other than hex")?))
}

#[test]
fn a_build_for_a_newer_evm_is_refused_before_any_gas_is_spent_and_never_called_a_revert() -> Result<()> {
    let cancun = fl_contracts::creation_code(&cancun_build()?, MAX_SAMPLES, fl_contracts::Mode::Sync, None, 1)?;

    // London has neither PUSH0 (Shanghai) nor MCOPY (Cancun): deploy names both and the
    // rule set needed, and sends nothing.
    let london = Anvil::start_with(AnvilOptions { hardfork: Some("london"), ..Default::default() })?;
    let owner = client(&london, 0)?;
    let err = Registry::deploy_bytecode(&owner, cancun.clone()).unwrap_err();
    assert!(matches!(&err, Error::InvalidOpcode { call, opcodes, .. } if call == "deploy" && opcodes == &[0x5f, 0x5e]), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with(
            "deploy: this chain rejects the PUSH0 opcode (0x5f, Shanghai, EIP-3855) and the MCOPY opcode (0x5e, Cancun, EIP-5656)"
        ),
        "{text}"
    );
    assert!(text.contains("the bytecode needs the Cancun rules or later"), "{text}");
    assert_eq!(owner.rpc().transaction_count(london.address(0), "latest")?.as_u64(), 0, "nothing was sent");

    // Shanghai has PUSH0 but not MCOPY.
    let shanghai = Anvil::start_with(AnvilOptions { hardfork: Some("shanghai"), ..Default::default() })?;
    let owner = client(&shanghai, 0)?;
    let err = Registry::deploy_bytecode(&owner, cancun.clone()).unwrap_err();
    assert!(matches!(&err, Error::InvalidOpcode { opcodes, .. } if opcodes == &[0x5e]), "{err:?}");
    assert!(err.to_string().starts_with("deploy: this chain rejects the MCOPY opcode (0x5e, Cancun, EIP-5656)"), "{err}");
    assert_eq!(owner.rpc().transaction_count(shanghai.address(0), "latest")?.as_u64(), 0, "nothing was sent");

    // Deployed without the check, as before issue 11: the constructor runs, but reading a
    // learner executes MCOPY, and the error says so instead of "reverted with (no reason)".
    let receipt = owner.send_and_wait("deploy", None, cancun)?;
    let registry = Registry::at(&owner, receipt.contract_address.context("deploy receipt without a contract address")?);
    let err = registry.local_update(1).unwrap_err();
    assert!(matches!(&err, Error::InvalidOpcode { call, .. } if call == "localUpdate"), "{err:?}");
    let text = err.to_string();
    assert!(text.starts_with("localUpdate: the chain's EVM rejected an opcode of the contract (node: EVM error NotActivated)"), "{text}");
    assert!(!text.contains("revert"), "{text}");

    // A transaction that is mined and fails on such an opcode is explained the same way.
    // The registry's writes happen not to use MCOPY, so a four-opcode contract stands in:
    // creation code that returns the runtime `PUSH1 0 PUSH1 0 PUSH1 0 MCOPY STOP`.
    let runtime = [0x60, 0x00, 0x60, 0x00, 0x60, 0x00, 0x5e, 0x00];
    let mut creation = vec![0x60, runtime.len() as u8, 0x60, 0x0c, 0x60, 0x00, 0x39, 0x60, runtime.len() as u8, 0x60, 0x00, 0xf3];
    creation.extend(runtime);
    let receipt = owner.send_and_wait("deploy", None, Bytes::from(creation))?;
    let target = receipt.contract_address.context("deploy receipt without a contract address")?;
    // A fixed gas limit skips the estimate, which would refuse the transaction up front.
    let pending = owner.send_with_gas("copy", Some(target), Bytes::new(), Some(100_000))?;
    let err = owner.wait("copy", pending).unwrap_err();
    assert!(matches!(&err, Error::InvalidOpcode { call, .. } if call == "copy"), "{err:?}");
    Ok(())
}

/// What a global model costs to publish as the fleet grows: `setGlobalWeight` reads one
/// storage slot per input (its learner's latest round) and carries the node ids twice (the
/// argument and the event), plus the round record, whose `selected` list names them again.
/// Measured for 10, 100 and 1,000 inputs with the record the aggregator writes for FedAvg;
/// the cost must stay linear and 1,000 inputs far below a 30M-gas block (anvil's and
/// mainnet's limit), so the design needs no change up to fleets of that size.
#[test]
fn set_global_weight_gas_for_10_100_and_1000_inputs() -> Result<()> {
    use fl_aggregator::record::RoundRecord;
    use fl_core::rules::{Recipe, Rule};
    const FLEET: usize = 1000;
    let anvil = Anvil::start_with(AnvilOptions { accounts: Some(FLEET + 1), ..Default::default() })?;
    // anvil mines each transaction a few milliseconds after accepting it.
    let fast = |key: usize| client(&anvil, key).map(|c| c.with_poll_interval(Duration::from_millis(5)));
    let owner = fast(0)?;
    let (registry, _) = Registry::deploy(&owner, MAX_SAMPLES)?;
    for node_id in 1..=FLEET {
        registry.add_learner(node_id as u64, anvil.address(node_id), None)?;
    }
    registry.set_global_weight(0, &cid("global 0", false), [0; 32], [0; 32], &[], b"{}")?;
    let learners = (1..=FLEET).map(fast).collect::<Result<Vec<_>>>()?;
    let mut measured = Vec::new();
    for (round, inputs) in [(1u64, 10usize), (2, 100), (3, FLEET)] {
        let mut updates = Vec::new();
        for (i, learner) in learners.iter().enumerate().take(inputs) {
            let node_id = i as u64 + 1;
            let label = format!("learner {node_id} round {round}");
            let digest = ethers_keccak(&label);
            Registry::at(learner, registry.address()).set_local_weight(node_id, round, &cid(&label, false), digest, 100)?;
            updates.push(LocalUpdate { node_id, round, cid: cid(&label, false), digest, samples: 100 });
        }
        let node_ids: Vec<u64> = updates.iter().map(|u| u.node_id).collect();
        let mut record = RoundRecord::aggregated(&Recipe { rule: Rule::FedAvg, clip_norm: None }, 1_000_000);
        record.selected = node_ids.clone();
        let record = record.to_bytes();
        let commitment = commitment(&updates, Some(&record))?;
        let receipt =
            registry.set_global_weight(round, &cid(&format!("global {round}"), false), [7; 32], commitment, &node_ids, &record)?;
        measured.push((inputs, gas(&receipt), record.len()));
    }
    for (inputs, gas, record) in &measured {
        eprintln!("setGlobalWeight with {inputs:>5} inputs: {gas:>9} gas ({:>5} per input; record {record} bytes)", gas / *inputs as u64);
    }
    // Linear: the marginal cost per input from 100 to 1,000 is close to that from 10 to 100.
    let per_input = |a: (usize, u64, usize), b: (usize, u64, usize)| (b.1 - a.1) as f64 / (b.0 - a.0) as f64;
    let (low, high) = (per_input(measured[0], measured[1]), per_input(measured[1], measured[2]));
    eprintln!("marginal gas per input: {low:.0} (10 -> 100), {high:.0} (100 -> 1,000)");
    assert!(high < 1.25 * low, "the cost per input grows with the fleet: {low:.0} then {high:.0} gas");
    assert!(high < 5_000.0, "{high:.0} gas per input: more than a storage read, calldata and log data should cost");
    let thousand = measured[2].1;
    assert!(thousand < 30_000_000 / 4, "1,000 inputs cost {thousand} gas, a quarter of a 30M block or more");
    Ok(())
}
