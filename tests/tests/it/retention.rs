//! Keeping a board's IPFS repository bounded: `pin_rm` and `repo_gc` really delete an
//! unpinned model's blocks on a js-ipfs node while a model kept in MFS (`mfs_keep`, how the
//! aggregator keeps what `verify` needs) survives; and a learner with `keep_rounds = 1`
//! unpins its older uploads in a real federation, which `fl-agent status` then describes,
//! while every round still verifies from the aggregator's node after all nodes collect.

use std::time::Duration;

use anyhow::{Context, Result};
use fl_ipfs::{ClientConfig, Error};
use fl_tests::devnet::{Devnet, Running};
use fl_tests::ipfs_node::{new_swarm_key, IpfsNode};
use fl_tests::util::{workspace_bin, workspace_root, TempDir};

/// Size of the paper's model as f32: 619,786 parameters x 4 bytes.
const MODEL_BYTES: usize = 619_786 * 4;

/// Blocks of a model-sized file: 10 raw leaves of 262,144 bytes and one root.
const MODEL_BLOCKS: u64 = 11;

/// Seeded pseudo-random bytes (xorshift64*), so a failure can be reproduced.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

#[test]
fn retention_unpinned_model_is_collected_and_a_model_kept_in_mfs_survives() -> Result<()> {
    let dir = TempDir::new("retention-key")?;
    // One node with no peers: whatever it cannot find in its own repository, it cannot get.
    let node = IpfsNode::start(&new_swarm_key(dir.path(), "swarm.key")?)?;
    let client = node.client();
    let dropped = random_bytes(MODEL_BYTES, 1);
    let kept = random_bytes(MODEL_BYTES, 2);
    let dropped_cid = client.add(&dropped)?;
    let kept_cid = client.add(&kept)?;
    let pins = client.pins()?;
    assert!(pins.contains(&dropped_cid) && pins.contains(&kept_cid), "add pins: {pins:?}");

    // The aggregator keeps one in MFS; keeping it again is fine.
    let path = "/fl-aggregator/round-1/learner-1";
    client.mfs_keep(&kept_cid, path)?;
    client.mfs_keep(&kept_cid, path)?;
    // The learner unpins both of its uploads; a second unpin, or one of a CID this node
    // never pinned, finds nothing to remove and is not an error.
    assert!(client.pin_rm(&dropped_cid)?, "a pin was removed");
    assert!(!client.pin_rm(&dropped_cid)?, "nothing left to remove");
    assert!(client.pin_rm(&kept_cid)?);
    assert!(!client.pin_rm(&fl_ipfs::cid_of(&random_bytes(1000, 3)))?);
    let pins = client.pins()?;
    assert!(!pins.contains(&dropped_cid) && !pins.contains(&kept_cid), "{pins:?}");

    let removed = client.repo_gc()?;
    assert!(removed >= MODEL_BLOCKS, "gc removed {removed} blocks, fewer than the unpinned model's {MODEL_BLOCKS}");
    // Gone: a node without peers waits for blocks it does not have until the time limit.
    let short =
        ClientConfig { timeout: Duration::from_secs(3), connect_timeout: Duration::from_secs(2), attempts: 1, ..ClientConfig::default() };
    let err = node.client_with(short).cat(&dropped_cid, MODEL_BYTES as u64).unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "the collected model is still served: {err}");
    // Kept: MFS protects it from the same sweep.
    assert!(client.cat(&kept_cid, MODEL_BYTES as u64)? == kept, "the model kept in MFS changed");

    // The path holds the kept model: another CID there is refused, the same one accepted.
    let err = client.mfs_keep(&dropped_cid, path).unwrap_err();
    assert!(matches!(err, Error::MfsConflict { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains(path) && text.contains(&kept_cid) && text.contains(&dropped_cid) && text.contains(&node.api_url), "{text}");
    client.mfs_keep(&kept_cid, path)?;
    // A folder in the way of a file is a conflict too, never replaced.
    let err = client.mfs_keep(&kept_cid, "/fl-aggregator/round-1").unwrap_err();
    assert!(matches!(err, Error::MfsConflict { .. }), "{err}");
    Ok(())
}

/// Rounds of the federation below: with `keep_rounds = 1`, the uploads of rounds 1 and 2
/// are unpinned after round 3's is recorded.
const ROUNDS: u64 = 3;

#[test]
fn retention_learner_unpins_its_old_uploads_and_status_says_what_it_did() -> Result<()> {
    let dir = TempDir::new("retention-federation")?;
    let devnet = Devnet::start(2, dir.path())?;
    let data = workspace_root().join("data/mnist");
    assert!(data.join("t10k-labels-idx1-ubyte").exists(), "MNIST missing in {}: run `make setup`", data.display());
    let (agent, aggregator) = (workspace_bin("fl-agent")?, workspace_bin("fl-aggregator")?);

    let args: Vec<String> = ["--rounds", &ROUNDS.to_string(), "--data", &data.display().to_string(), "--test-limit", "500"]
        .iter()
        .map(|a| a.to_string())
        .collect();
    let mut aggregator =
        Running::spawn("aggregator", devnet.aggregator_command(&aggregator, &args), &dir.path().join("aggregator.log"), false)?;
    // 1,000 images per learner; learner 1 keeps only its latest upload, learner 2 the
    // default three (so nothing of its three rounds is unpinned).
    let mut learners = Vec::new();
    let mut configs = Vec::new();
    for (node_id, keep) in [(1, "keep_rounds = 1\n"), (2, "")] {
        let extra = format!("train_limit = 2000\ntest_limit = 500\n{keep}");
        let config = devnet.write_agent_config(node_id, &data, 1, ROUNDS, &extra)?;
        let mut command = devnet.agent_command(&agent, node_id, &config);
        command.env_remove("FL_KEEP_ROUNDS");
        learners.push(Running::spawn(&format!("learner {node_id}"), command, &dir.path().join(format!("learner-{node_id}.log")), false)?);
        configs.push(config);
    }
    aggregator.wait_success(Duration::from_secs(900))?;
    for learner in &mut learners {
        learner.wait_success(Duration::from_secs(120))?;
    }

    // Each learner's uploads, by round, from the chain.
    let client = devnet.read_client()?;
    let registry = fl_contracts::Registry::at(&client, devnet.registry);
    let mut uploads = std::collections::BTreeMap::new();
    for logged in registry.events(0, client.rpc().block_number()?)? {
        if let fl_contracts::Event::LocalWeightSet(update) = logged.event {
            uploads.insert((update.node_id, update.round), update.cid);
        }
    }
    let cid = |node_id: u64, round: u64| {
        uploads.get(&(node_id, round)).cloned().with_context(|| format!("no update of learner {node_id} round {round}"))
    };
    let pins_1 = devnet.ipfs[1].client().pins()?;
    assert!(!pins_1.contains(&cid(1, 1)?) && !pins_1.contains(&cid(1, 2)?), "learner 1 still pins rounds 1-2: {pins_1:?}");
    assert!(pins_1.contains(&cid(1, 3)?), "learner 1 unpinned its latest upload: {pins_1:?}");
    let pins_2 = devnet.ipfs[2].client().pins()?;
    for round in 1..=ROUNDS {
        assert!(pins_2.contains(&cid(2, round)?), "learner 2 (keep_rounds 3) unpinned round {round}: {pins_2:?}");
    }
    let log_1 = learners[0].lines();
    assert!(log_1.iter().any(|l| l.contains("round 3: unpinned the round-2 upload")), "{log_1:?}");
    assert!(log_1.iter().any(|l| l.contains("the IPFS node collected")), "{log_1:?}");

    // `fl-agent status`, with endpoints where nothing listens: it reads the state folder only.
    let output = std::process::Command::new(&agent)
        .args(["status", "--config"])
        .arg(&configs[0])
        .args(["--rpc-url", "http://127.0.0.1:9", "--ipfs-api", "http://127.0.0.1:9"])
        .env_remove("FL_STATE_DIR")
        .env_remove("FL_KEEP_ROUNDS")
        .env_remove("FL_NODE_ID")
        .env_remove("FL_REGISTRY")
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "fl-agent status failed: {}", String::from_utf8_lossy(&output.stderr));
    eprintln!("fl-agent status:\n{stdout}");
    let round_3 = cid(1, 3)?;
    for expected in [
        format!("learner 1, registry {:?} (keep_rounds 1", devnet.registry),
        format!("chain {} (chain_id in the configuration)", devnet.anvil.chain_id()),
        "last trained:   round 3, ".to_string(),
        "last recorded:  round 3, ".to_string(),
        format!("cid {round_3}, tx 0x"),
        "pending tx:     none".to_string(),
        format!("pinned uploads: round 3 {round_3}\n"),
        "unpinned round 2, gc removed".to_string(),
        "last activity:  done: the global model of round 3 is published".to_string(),
    ] {
        assert!(stdout.contains(&expected), "missing {expected:?} in\n{stdout}");
    }

    // Every node collects its garbage: learner 1's node has dropped its rounds 1-2 uploads,
    // and the aggregator's node keeps only what it pinned or put in MFS. Without the
    // aggregator's copies in MFS, nobody could serve learner 1's round-1 model any more.
    let aggregator_log = aggregator.lines();
    assert!(!aggregator_log.iter().any(|l| l.contains("could not keep")), "{aggregator_log:?}");
    for node in &devnet.ipfs {
        node.client().repo_gc()?;
    }
    // Learner 1's round-1 upload, gone from its own node, is still on the aggregator's
    // (asked with a short time limit: a node waits for blocks nobody has until the limit).
    let short =
        ClientConfig { timeout: Duration::from_secs(3), connect_timeout: Duration::from_secs(2), attempts: 1, ..ClientConfig::default() };
    let round_1 = cid(1, 1)?;
    devnet.ipfs[0]
        .client_with(short)
        .cat(&round_1, MODEL_BYTES as u64 * 2)
        .context("the aggregator's node lost learner 1's round-1 upload to gc: it was not kept in MFS")?;
    let endpoints = fl_contracts::endpoints::Endpoints {
        rpc_url: devnet.anvil.url().to_string(),
        chain_id: Some(devnet.anvil.chain_id()),
        registry: Some(devnet.registry),
        key: Default::default(),
        ipfs_api: devnet.ipfs[0].api_url.clone(),
        confirmations: 0,
    };
    for round in 1..=ROUNDS {
        let verdict = fl_aggregator::verify::verify(&endpoints, round, None)?;
        assert!(verdict.ok(), "round {round} no longer verifies after the learners unpinned and every node collected: {verdict:?}");
        assert!(verdict.node_ids == [1, 2], "round {round}: {verdict:?}");
    }
    Ok(())
}
