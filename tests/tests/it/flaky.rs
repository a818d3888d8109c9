//! Flaky links: a loopback proxy (`fl_tests::proxy`) between the processes and their chain
//! and IPFS endpoints vanishes, slows down and cuts connections in the middle of real
//! rounds. The federation must finish with every global model exactly the FedAvg of what
//! the chain records (so no update lost, none published twice), and the processes' logs
//! must say what they went through.

use std::time::Duration;

use anyhow::Result;
use fl_tests::proxy::Proxy;

use super::federation::{check_rounds, Federation, ROUNDS, RUN_LIMIT};

/// Every learner recorded exactly one update per round.
fn one_update_per_learner_and_round(federation: &Federation) -> Result<()> {
    let (_, locals) = federation.events()?;
    for round in 1..=ROUNDS {
        for node_id in 1..=federation.devnet.n_learners as u64 {
            let n = locals.iter().filter(|u| u.round == round && u.node_id == node_id).count();
            assert_eq!(n, 1, "learner {node_id} recorded {n} updates in round {round}");
        }
    }
    Ok(())
}

fn assert_logged(what: &str, lines: &[String], needles: &[&str]) {
    assert!(
        lines.iter().any(|line| needles.iter().all(|needle| line.contains(needle))),
        "{what}: no line with all of {needles:?} in:\n{}",
        lines.join("\n")
    );
}

/// The chain endpoint (of everyone) and learner 1's IPFS node vanish for 30 s while the
/// learners train round 1: learner 1 cannot upload, learner 2 cannot record, the
/// aggregator cannot poll. All of them retry and the round completes once the links return.
#[test]
fn flaky_chain_and_a_learners_ipfs_node_vanish_for_30_s_mid_round() -> Result<()> {
    let federation = Federation::start("flaky-vanish")?;
    let devnet = &federation.devnet;
    let chain = Proxy::start(devnet.anvil.url())?;
    let ipfs_1 = Proxy::start(&devnet.learner_ipfs(1).api_url)?;
    let mut aggregator = federation.aggregator_with("aggregator.log", &["--rpc-url", &chain.url()])?;
    // Each learner waits 9 times its training time after training (slowdown), so the links
    // go down after both trained and before either uploads or records, whatever the load.
    let slow = "slowdown = 10\n";
    let mut learner_1 = federation.learner_through(1, "learner-1.log", &chain.url(), &ipfs_1.url(), slow)?;
    let mut learner_2 = federation.learner_through(2, "learner-2.log", &chain.url(), &devnet.learner_ipfs(2).api_url, slow)?;

    for learner in [&mut learner_1, &mut learner_2] {
        learner.wait_for("round 1: emulating a board 10x slower", RUN_LIMIT)?;
    }
    chain.go_down();
    ipfs_1.go_down();
    std::thread::sleep(Duration::from_secs(30));
    chain.come_up();
    ipfs_1.come_up();

    aggregator.wait_success(RUN_LIMIT)?;
    learner_1.wait_success(Duration::from_secs(180))?;
    learner_2.wait_success(Duration::from_secs(180))?;
    check_rounds(&federation)?;
    one_update_per_learner_and_round(&federation)?;

    // Learner 1 finished training during the outage and could not upload: its IPFS client
    // retried, then its loop did.
    let ipfs_url = ipfs_1.url();
    assert_logged("learner 1", &learner_1.lines(), &[&format!("ipfs api {ipfs_url}: add ("), "attempt 1 of 4 failed", "retrying in"]);
    assert_logged("learner 1", &learner_1.lines(), &[&format!("ipfs api {ipfs_url}: add ("), "cannot reach the node", "; retrying in"]);
    // Learner 2 had uploaded to its own node and could not record the update on chain.
    let chain_url = chain.url();
    assert_logged("learner 2", &learner_2.lines(), &[&format!("cannot reach node at {chain_url}"), "; retrying in"]);
    assert_logged("aggregator", &aggregator.lines(), &[&format!("cannot reach node at {chain_url}"), "; retrying in"]);
    let events = chain.events();
    assert!(events.iter().any(|e| e.starts_with("down:")) && events.iter().any(|e| e.starts_with("up:")), "{events:?}");
    Ok(())
}

/// Replies from the chain and learner 1's IPFS node take 2 s more during round 1, and one
/// connection of learner 2 is cut halfway through uploading its model, another halfway
/// through downloading the global model, and one of the aggregator halfway through
/// fetching a model. Each cut is retried and logged; nothing is left out.
#[test]
fn flaky_slow_replies_and_connections_cut_mid_upload_and_mid_download() -> Result<()> {
    let federation = Federation::start("flaky-cuts")?;
    let devnet = &federation.devnet;
    let chain = Proxy::start(devnet.anvil.url())?;
    let ipfs_0 = Proxy::start(&devnet.ipfs[0].api_url)?;
    let ipfs_1 = Proxy::start(&devnet.learner_ipfs(1).api_url)?;
    let ipfs_2 = Proxy::start(&devnet.learner_ipfs(2).api_url)?;
    // An update (int8) is 0.62 MB and a global model 2.48 MB: these cut model transfers,
    // never the small calls. The aggregator's first download is the previous global model,
    // which it decodes the round's updates onto.
    const HALF_A_MODEL: u64 = 256 << 10;
    ipfs_2.cut_next_upload_after(HALF_A_MODEL);
    ipfs_2.cut_next_download_after(HALF_A_MODEL);
    ipfs_0.cut_next_download_after(HALF_A_MODEL);
    chain.delay_replies(Duration::from_secs(2));
    ipfs_1.delay_replies(Duration::from_secs(2));

    let mut aggregator = federation.aggregator_with("aggregator.log", &["--rpc-url", &chain.url(), "--ipfs-api", &ipfs_0.url()])?;
    let mut learner_1 = federation.learner_through(1, "learner-1.log", &chain.url(), &ipfs_1.url(), "")?;
    let mut learner_2 = federation.learner_through(2, "learner-2.log", &chain.url(), &ipfs_2.url(), "")?;
    aggregator.wait_for("round 1: published", RUN_LIMIT)?;
    chain.delay_replies(Duration::ZERO);
    ipfs_1.delay_replies(Duration::ZERO);

    aggregator.wait_success(RUN_LIMIT)?;
    learner_1.wait_success(Duration::from_secs(180))?;
    learner_2.wait_success(Duration::from_secs(180))?;
    check_rounds(&federation)?;
    one_update_per_learner_and_round(&federation)?;

    for (name, proxy, way) in [("learner 2", &ipfs_2, "upload"), ("learner 2", &ipfs_2, "download"), ("aggregator", &ipfs_0, "download")] {
        let events = proxy.events();
        assert!(events.iter().any(|e| e.contains(&format!("bytes of its {way}"))), "{name}'s {way} was never cut: {events:?}");
    }
    assert_logged("learner 2", &learner_2.lines(), &[&format!("ipfs api {}: add (", ipfs_2.url()), "attempt 1 of 4 failed"]);
    assert_logged("learner 2", &learner_2.lines(), &[&format!("ipfs api {}: cat", ipfs_2.url()), "attempt 1 of 4 failed"]);
    assert_logged("aggregator", &aggregator.lines(), &[&format!("ipfs api {}: cat", ipfs_0.url()), "attempt 1 of 4 failed"]);
    Ok(())
}
