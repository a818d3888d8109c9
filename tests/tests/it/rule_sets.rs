//! One whole federation round on each EVM rule set the registry supports (anvil's
//! `--hardfork`, Istanbul to Prague): `fl-aggregator run` and one `fl-agent run` as
//! processes with real js-ipfs nodes, as in `federation`, on a tiny shard. The chain tests
//! (`chain::every_check_on_*`) cover every function; this shows the binaries themselves
//! deploy, read, write and follow events on each rule set, with legacy transactions where
//! there is no base fee.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use fl_contracts::ethers_core::types::Transaction;
use fl_contracts::{commitment, Event, GlobalUpdate, LocalUpdate, Logged, Registry};
use fl_core::encoding::Bases;
use fl_core::weights::{sha256, ModelFile};
use fl_tests::anvil::AnvilOptions;
use fl_tests::devnet::{Devnet, Running};
use fl_tests::util::{workspace_bin, workspace_root, TempDir};

/// 200 images, one epoch, one round: enough to exercise every step, cheap enough to run
/// seven times (the learning itself is checked by `federation`).
const TRAIN_LIMIT: usize = 200;
const TEST_LIMIT: usize = 100;
const RUN_LIMIT: Duration = Duration::from_secs(300);

fn one_round_on(hardfork: &'static str) -> Result<()> {
    let data = workspace_root().join("data/mnist");
    if !data.join("t10k-labels-idx1-ubyte").exists() {
        bail!("MNIST missing in {}: run `make setup`", data.display());
    }
    let dir = TempDir::new(&format!("rule-set-{hardfork}"))?;
    let devnet = Devnet::start_with(1, dir.path(), AnvilOptions { hardfork: Some(hardfork), ..Default::default() })?;
    let args: Vec<String> =
        ["--rounds", "1", "--data", &data.display().to_string(), "--test-limit", &TEST_LIMIT.to_string()].map(String::from).to_vec();
    let mut aggregator = Running::spawn(
        "aggregator",
        devnet.aggregator_command(&workspace_bin("fl-aggregator")?, &args),
        &devnet.dir.join("aggregator.log"),
        false,
    )?;
    let extra = format!("train_limit = {TRAIN_LIMIT}\ntest_limit = {TEST_LIMIT}\n");
    let config = devnet.write_agent_config(1, &data, 1, 1, &extra)?;
    let mut learner = Running::spawn(
        "learner 1",
        devnet.agent_command(&workspace_bin("fl-agent")?, 1, &config),
        &devnet.dir.join("learner-1.log"),
        false,
    )?;
    aggregator.wait_success(RUN_LIMIT).with_context(|| format!("{hardfork}: aggregator"))?;
    learner.wait_success(Duration::from_secs(120)).with_context(|| format!("{hardfork}: learner"))?;

    // The chain holds round 0 (the seed) and round 1, the latter built from the learner's
    // update and committing to it.
    let client = devnet.read_client()?;
    let registry = Registry::at(&client, devnet.registry);
    let logged = registry.events(0, client.rpc().block_number()?)?;
    let globals: Vec<&GlobalUpdate> =
        logged.iter().filter_map(|l| if let Event::GlobalWeightSet(g) = &l.event { Some(g) } else { None }).collect();
    let locals: Vec<(&Logged, &LocalUpdate)> =
        logged.iter().filter_map(|l| if let Event::LocalWeightSet(u) = &l.event { Some((l, u)) } else { None }).collect();
    assert_eq!(globals.iter().map(|g| g.round).collect::<Vec<_>>(), [0, 1], "{hardfork}: {globals:?}");
    let [(local_log, local)] = locals.as_slice() else { bail!("{hardfork}: expected one local update, got {locals:?}") };
    assert_eq!((local.node_id, local.round), (1, 1));
    assert_eq!(globals[1].node_ids, [1]);
    assert_eq!(globals[1].inputs_commitment, commitment(std::slice::from_ref(*local), Some(&globals[1].record))?);

    // The average of one model is that model; both files match the digests on chain.
    let ipfs = devnet.ipfs[0].client();
    let local_bytes = ipfs.fetch_verified(&local.cid, &local.digest, 64 << 20)?;
    let global_bytes = ipfs.fetch_verified(&globals[1].cid, &globals[1].digest, 64 << 20)?;
    assert_eq!(sha256(&global_bytes), globals[1].digest);
    let initial_bytes = ipfs.fetch_verified(&globals[0].cid, &globals[0].digest, 64 << 20)?;
    let local_model = Bases::of(&ModelFile::from_bytes(&initial_bytes)?)?.decode(&local_bytes)?.model;
    assert_eq!(ModelFile::from_bytes(&global_bytes)?.tensors, local_model.tensors, "{hardfork}");

    // The learner's binary sent a legacy transaction where blocks have no base fee
    // (before London) and an EIP-1559 one elsewhere.
    let sent: Option<Transaction> = client.rpc().request("eth_getTransactionByHash", serde_json::json!([local_log.transaction_hash]))?;
    let sent = sent.with_context(|| format!("{hardfork}: transaction {:?} not found", local_log.transaction_hash))?;
    let expected_type = if matches!(hardfork, "istanbul" | "berlin") { 0 } else { 2 };
    assert_eq!(sent.transaction_type.map(|t| t.as_u64()).unwrap_or(0), expected_type, "{hardfork}: setLocalWeight transaction type");

    // Anyone can re-derive the round from the chain and IPFS.
    let mut verify = std::process::Command::new(workspace_bin("fl-aggregator")?);
    verify
        .arg("verify")
        .args(["--round", "1", "--rpc-url", devnet.anvil.url(), "--registry", &format!("{:?}", devnet.registry)])
        .args(["--ipfs-api", &devnet.ipfs[0].api_url]);
    let mut verify = Running::spawn("verify", verify, &devnet.dir.join("verify.log"), false)?;
    verify.wait_success(Duration::from_secs(120))?;
    assert!(verify.stdout_lines().iter().any(|l| l == "round 1: verified"), "{hardfork}: {:?}", verify.lines());
    Ok(())
}

#[test]
fn one_federation_round_on_istanbul() -> Result<()> {
    one_round_on("istanbul")
}

#[test]
fn one_federation_round_on_berlin() -> Result<()> {
    one_round_on("berlin")
}

#[test]
fn one_federation_round_on_london() -> Result<()> {
    one_round_on("london")
}

#[test]
fn one_federation_round_on_paris() -> Result<()> {
    one_round_on("paris")
}

#[test]
fn one_federation_round_on_shanghai() -> Result<()> {
    one_round_on("shanghai")
}

#[test]
fn one_federation_round_on_cancun() -> Result<()> {
    one_round_on("cancun")
}

#[test]
fn one_federation_round_on_prague() -> Result<()> {
    one_round_on("prague")
}
