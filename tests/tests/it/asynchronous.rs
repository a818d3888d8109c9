//! Asynchronous rounds (FedBuff) as processes on real nodes: a registry deployed with a
//! buffer and a staleness bound, four learners of which one is throttled and one killed
//! after its first update. The federation must finish without waiting for either, every
//! global model must verify and match an independent computation of the staleness-weighted
//! step, a slow learner's stale update must be weighed in (or left out as too stale,
//! saying so), and every update on chain must be accounted for exactly once. Then the test
//! itself publishes asynchronous rounds as a dishonest aggregator would, and `verify` must
//! name each lie.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use fl_contracts::{Client, GlobalUpdate, LocalUpdate, Mode, Registry, Rpc};
use fl_core::encoding::Bases;
use fl_core::record::{AsyncRound, RoundRecord};
use fl_core::rules::{Aggregation, Recipe, Rule};
use fl_core::staleness;
use fl_core::weights::ModelFile;

use super::federation::{Federation, RUN_LIMIT};
use super::robust::{crafted_update, Driver};

const LEARNERS: usize = 4;
const BUFFER: u64 = 2;
const MAX_STALENESS: u64 = 2;
const ROUNDS: u64 = 5;
/// Learner 3 waits 7 times its training time after training: 8x slower than the others.
const SLOW: usize = 3;
/// Learner 4 is killed once its first update is on chain.
const KILLED: usize = 4;

#[test]
fn asynchronous_rounds_finish_without_a_slow_and_a_killed_learner_and_verify() -> Result<()> {
    let mode = Mode::Async { buffer: BUFFER, max_staleness: MAX_STALENESS };
    let federation = Federation::start_in("async", LEARNERS, 2, 500, mode, ROUNDS)?;
    let mut aggregator = federation.aggregator_with("aggregator.log", &["--fetch-workers", "2"])?;
    let mut learners = Vec::new();
    for node_id in 1..=LEARNERS {
        let extra = if node_id == SLOW { "slowdown = 8\n" } else { "" };
        learners.push(federation.learner_with(node_id, &format!("learner-{node_id}.log"), extra)?);
    }
    learners[KILLED - 1].wait_for("round 1: test accuracy", RUN_LIMIT)?;
    learners[KILLED - 1].kill();
    aggregator.wait_success(RUN_LIMIT)?;
    for (i, learner) in learners.iter_mut().enumerate() {
        if i + 1 != KILLED {
            learner.wait_success(Duration::from_secs(300)).with_context(|| format!("learner {}", i + 1))?;
        }
    }
    let logs = aggregator.lines();
    assert!(logs.iter().any(|l| l.contains("asynchronous rounds (a global model per 2 updates, staleness at most 2)")), "{logs:?}");
    for learner in &learners {
        assert!(learner.lines().iter().any(|l| l.contains("the federation runs asynchronous rounds")), "{:?}", learner.lines());
    }
    let slow_lines = learners[SLOW - 1].lines();
    assert!(slow_lines.iter().any(|l| l.contains("emulating a board 8x slower")), "{slow_lines:?}");

    // Every update on chain is an input or left out of exactly one global model, unless it
    // was mined after the last one closed; inputs are never staler than the bound.
    let client = Client::read_only(Rpc::new(federation.devnet.anvil.url())?, None)?;
    let registry = Registry::at(&client, federation.devnet.registry);
    let head = client.rpc().block_number()?;
    let mut accounted: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
    let mut mined: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    let mut last_closed = 0;
    let mut stale_inputs = Vec::new();
    for logged in registry.events(0, head)? {
        match logged.event {
            fl_contracts::Event::LocalWeightSet(u) => {
                mined.insert((u.node_id, u.round), logged.block_number);
            }
            fl_contracts::Event::GlobalWeightSet(g) if g.round > 0 => {
                let record = RoundRecord::from_bytes(&g.record)?;
                let a = record.asynchronous.as_ref().context("an asynchronous registry's round without an asynchronous record")?;
                assert!(g.node_ids.len() as u64 >= BUFFER, "round {}: {:?}", g.round, g.node_ids);
                for (id, r) in g.node_ids.iter().zip(&a.rounds) {
                    assert!(g.round - r <= MAX_STALENESS, "round {}: input {id} of round {r}", g.round);
                    if *r < g.round {
                        stale_inputs.push((g.round, *id, *r));
                    }
                    accounted.entry((*id, *r)).or_default().push(format!("input of {}", g.round));
                }
                for left in &record.left_out {
                    let r = left.round.context("an asynchronous record's left-out update without its round")?;
                    accounted.entry((left.node_id, r)).or_default().push(format!("left out of {}: {}", g.round, left.reason));
                }
                last_closed = record.closed_at_block.context("no closed_at_block")?;
            }
            _ => {}
        }
    }
    let mut globals: BTreeMap<u64, GlobalUpdate> = BTreeMap::new();
    let mut locals: BTreeMap<(u64, u64), LocalUpdate> = BTreeMap::new();
    for logged in registry.events(0, head)? {
        match logged.event {
            fl_contracts::Event::GlobalWeightSet(g) => {
                globals.insert(g.round, g);
            }
            fl_contracts::Event::LocalWeightSet(u) => {
                locals.insert((u.node_id, u.round), u);
            }
            _ => {}
        }
    }
    for round in 1..=ROUNDS {
        check_staleness_weighted_step(&federation, &globals, &locals, round)?;
    }
    for (key, block) in &mined {
        let uses = accounted.get(key).cloned().unwrap_or_default();
        if *block <= last_closed {
            assert_eq!(uses.len(), 1, "learner {} round {} (block {block}): {uses:?}", key.0, key.1);
        } else {
            assert!(uses.is_empty(), "learner {} round {} mined after the last round closed: {uses:?}", key.0, key.1);
        }
    }
    assert!(accounted.keys().all(|k| mined.contains_key(k)), "{accounted:?} names updates not on chain");
    // The slow learner's updates arrive late: weighed in with staleness, or left out as too
    // stale, and its log says so.
    let slow_stale = stale_inputs.iter().any(|(_, id, _)| *id == SLOW as u64);
    let slow_dropped = slow_lines.iter().any(|l| l.contains("rounds stale (at most 2); dropping it"));
    let slow_left_out = accounted.iter().any(|((id, _), uses)| *id == SLOW as u64 && uses.iter().any(|u| u.contains("too stale")));
    assert!(slow_stale || slow_dropped || slow_left_out, "the slow learner was never late: {stale_inputs:?} {accounted:?}");
    assert!(logs.iter().any(|l| l.contains("input rounds [")), "{logs:?}");

    for round in 0..=ROUNDS {
        let (ok, stdout) = verify(&federation, round)?;
        assert!(ok && stdout.iter().any(|l| l == &format!("round {round}: verified")), "{stdout:?}");
    }
    lies(&federation, last_closed)
}

/// `verify --round ROUND`: (success, stdout).
fn verify(federation: &Federation, round: u64) -> Result<(bool, Vec<String>)> {
    let mut run = federation.verify_command(round)?;
    let ok = run.wait_success(Duration::from_secs(120)).is_ok();
    Ok((ok, run.stdout_lines()))
}

/// The published global model of `round` against the staleness-weighted FedAvg step
/// computed here in f64, straight from the formula: `G + Σ n_i s_i (w_i - b_i) / Σ n_i`,
/// `s_i = 1 / sqrt(1 + round - u_i)`, each `w_i` decoded onto the base `b_i` it names.
fn check_staleness_weighted_step(
    federation: &Federation,
    globals: &BTreeMap<u64, GlobalUpdate>,
    locals: &BTreeMap<(u64, u64), LocalUpdate>,
    round: u64,
) -> Result<()> {
    let model_of = |g: &GlobalUpdate| -> Result<ModelFile> { ModelFile::from_bytes(&federation.fetch(&g.cid, &g.digest)?) };
    let published = model_of(&globals[&round])?;
    let current = model_of(&globals[&(round - 1)])?;
    let rounds = RoundRecord::from_bytes(&globals[&round].record)?.asynchronous.context("asynchronous record")?.rounds;
    let mut sums: Vec<Vec<f64>> = current.tensors.iter().map(|t| vec![0.0; t.to_f32().len()]).collect();
    let mut total = 0.0;
    for (id, u) in globals[&round].node_ids.iter().zip(&rounds) {
        let update = &locals[&(*id, *u)];
        let bases = Bases::of(&model_of(&globals[&(u - 1)])?)?;
        let decoded = bases.decode(&federation.fetch(&update.cid, &update.digest)?)?;
        let base = bases.model(decoded.base).context("base")?;
        let s = 1.0 / (1.0 + (round - u) as f64).sqrt();
        let n = update.samples as f64;
        total += n;
        for ((sum, w), b) in sums.iter_mut().zip(&decoded.model.tensors).zip(&base.tensors) {
            for ((acc, w), b) in sum.iter_mut().zip(w.to_f32()).zip(b.to_f32()) {
                *acc += n * s * (w as f64 - b as f64);
            }
        }
    }
    let mut worst: f64 = 0.0;
    for ((sum, g), p) in sums.iter().zip(&current.tensors).zip(&published.tensors) {
        for ((acc, g), p) in sum.iter().zip(g.to_f32()).zip(p.to_f32()) {
            worst = worst.max((g as f64 + acc / total - p as f64).abs());
        }
    }
    ensure!(worst < 1e-5, "round {round}: the published model is {worst} away from the staleness-weighted step");
    Ok(())
}

/// Publishes rounds as a dishonest aggregator would, on the same registry: learners 1 and
/// 2 send fresh crafted updates, learner 4 (killed earlier) one a round stale; each round
/// is honest but for one lie, which `verify` must name.
fn lies(federation: &Federation, mut opened_after: u64) -> Result<()> {
    let devnet = &federation.devnet;
    let owner = Client::new(Rpc::new(devnet.anvil.url())?, devnet.anvil.signer(0)?, Some(devnet.anvil.chain_id()))?;
    let driver = Driver { devnet, owner };
    let registry = Registry::at(&driver.owner, devnet.registry);
    let mut models: BTreeMap<u64, ModelFile> = BTreeMap::new();
    let head = driver.owner.rpc().block_number()?;
    for g in registry.global_updates(0, head)? {
        models.insert(g.round, ModelFile::from_bytes(&federation.fetch(&g.cid, &g.digest)?)?);
    }
    type Tamper<'t> = &'t mut dyn FnMut(&mut Vec<LocalUpdate>, &mut AsyncRound, &mut RoundRecord, &mut u64);
    let mut lie = |what: &str, expected: Option<&str>, recipe: Recipe, tamper: Tamper| -> Result<()> {
        let round = registry.current_round()?;
        let mut sent = Vec::new();
        for (id, r) in [(1, round), (2, round), (4, round - 1)] {
            let model = crafted_update(id as u64, r, 1.0);
            sent.push((driver.send(devnet.registry, id, &model)?, model));
        }
        let closed = driver.owner.rpc().block_number()?;
        // Updates of the run that came after its last round closed: left out, with a reason.
        let mut record = RoundRecord::aggregated(&recipe, closed);
        for logged in registry.events(opened_after + 1, closed)? {
            if let fl_contracts::Event::LocalWeightSet(u) = logged.event {
                if !sent.iter().any(|(s, _)| s.node_id == u.node_id && s.round == u.round) {
                    record.leave_out_of_round(u.node_id, Some(u.round), "not used by this test");
                }
            }
        }
        let mut a = AsyncRound {
            buffer: BUFFER,
            max_staleness: MAX_STALENESS,
            weighting: staleness::WEIGHTING.into(),
            opened_after_block: opened_after,
            rounds: sent.iter().map(|(u, _)| u.round).collect(),
        };
        let mut inputs: Vec<LocalUpdate> = sent.iter().map(|(u, _)| u.clone()).collect();
        // The honest model; the "undamped" lie weighs the stale update as a fresh one.
        let mut undamped = 0;
        tamper(&mut inputs, &mut a, &mut record, &mut undamped);
        let mut aggregation = Aggregation::new(&recipe, recipe.clip_norm.map(|_| &models[&(round - 1)]))?;
        for (update, model) in &sent {
            let staleness = if update.node_id == undamped { 0 } else { round - update.round };
            aggregation.add(
                update.node_id,
                &staleness::rebase(model, &models[&(update.round - 1)], &models[&(round - 1)], staleness)?,
                what,
            )?;
        }
        let outcome = aggregation.finish()?;
        let mut global = outcome.model;
        global.round = round;
        (record.selected, record.clipped) = (outcome.selected, outcome.clipped);
        record.asynchronous = Some(a);
        driver.publish(&global, &inputs, &record, None)?;
        models.insert(round, global);
        opened_after = closed;
        let (ok, stdout) = verify(federation, round)?;
        match expected {
            None => ensure!(ok && stdout.iter().any(|l| l == &format!("round {round}: verified")), "{what}: {stdout:?}"),
            Some(expected) => {
                ensure!(!ok, "{what}: verify passed: {stdout:?}");
                ensure!(stdout.iter().any(|l| l.contains("MISMATCH") && l.contains(expected)), "{what}: expected {expected:?}: {stdout:?}");
            }
        }
        Ok(())
    };
    let fedavg = Recipe { rule: Rule::FedAvg, clip_norm: None };
    lie("honest", None, fedavg, &mut |_, _, _, _| {})?;
    // Robust rules and clipping combine with staleness: they see the damped, rebased steps.
    lie("honest median, clipped", None, Recipe { rule: Rule::Median, clip_norm: Some(0.5) }, &mut |_, _, _, _| {})?;
    // Learner 4's update called fresh: there is no such update of the round.
    lie("misstated round", Some("learner 4 as an input, but no round-"), fedavg, &mut |_, a, _, _| a.rounds[2] += 1)?;
    // Learner 4's stale update neither used nor left out.
    lie("omitted", Some("is neither an input nor left out with a reason"), fedavg, &mut |inputs, a, _, _| {
        inputs.pop();
        a.rounds.pop();
    })?;
    // The stale update weighed as a fresh one.
    lie("undamped", Some("is not what fedavg gives"), fedavg, &mut |_, _, _, undamped| *undamped = 4)?;
    // A block range that does not start where the previous round's ended.
    lie("range", Some("but the previous global model closed at block"), fedavg, &mut |_, a, _, _| a.opened_after_block -= 1)?;
    // A buffer that is not the registry's.
    lie("buffer", Some("the registry runs asynchronous rounds (a global model per 2 updates"), fedavg, &mut |_, a, _, _| a.buffer = 3)?;
    // The registry itself refuses a round with fewer inputs than its buffer.
    let round = registry.current_round()?;
    let model = crafted_update(1, round, 1.0);
    let only = driver.send(devnet.registry, 1, &model)?;
    let record = RoundRecord::aggregated(&Recipe { rule: Rule::FedAvg, clip_norm: None }, 0).to_bytes();
    let err = registry.set_global_weight(round, &only.cid, only.digest, [0; 32], &[1], &record).unwrap_err().to_string();
    ensure!(err.contains("TooFewInputs"), "{err}");
    Ok(())
}

/// The aggregator's side of "the events are the record": learner 3 sends a stale update and
/// then a fresh one before the buffer fills. Storage only holds the fresh one; the
/// aggregator takes it and leaves the stale one out as superseded, saying so in the record,
/// and the round verifies.
#[test]
fn asynchronous_a_learners_older_update_is_left_out_as_superseded_not_lost() -> Result<()> {
    let mode = Mode::Async { buffer: 2, max_staleness: 2 };
    let federation = Federation::start_in("async-superseded", 3, 1, 100, mode, 2)?;
    let mut aggregator = federation.aggregator_with("aggregator.log", &["--no-local-eval"])?;
    let devnet = &federation.devnet;
    let owner = Client::new(Rpc::new(devnet.anvil.url())?, devnet.anvil.signer(0)?, Some(devnet.anvil.chain_id()))?;
    let driver = Driver { devnet, owner };
    let registry = Registry::at(&driver.owner, devnet.registry);
    super::robust::wait_for_round(&registry, 1, Duration::from_secs(120))?;
    for id in [1, 2] {
        driver.send(devnet.registry, id, &crafted_update(id as u64, 1, 1.0))?;
    }
    super::robust::wait_for_round(&registry, 2, Duration::from_secs(120))?;
    // Round 2 open: learner 3's update trained on global 0 (round 1), then one on global 1.
    driver.send(devnet.registry, 3, &crafted_update(3, 1, 1.0))?;
    driver.send(devnet.registry, 3, &crafted_update(3, 2, 1.0))?;
    // One learner's two updates are one usable update: the buffer is not full yet.
    aggregator.wait_for("round 2: 1 of 2 usable updates in", Duration::from_secs(60))?;
    ensure!(registry.current_round()? == 2, "published with one learner's two updates");
    driver.send(devnet.registry, 1, &crafted_update(1, 2, 1.0))?;
    aggregator.wait_success(Duration::from_secs(120))?;
    let head = driver.owner.rpc().block_number()?;
    let global = registry.global_event_of_round(2, 0, head)?.context("round 2 published")?;
    let record = RoundRecord::from_bytes(&global.record)?;
    ensure!(global.node_ids == [1, 3], "inputs {:?}", global.node_ids);
    ensure!(record.asynchronous.as_ref().map(|a| a.rounds.clone()) == Some(vec![2, 2]), "{record:?}");
    aggregator
        .wait_for("round 2: leaving out learner 3 round 1: superseded by the same learner's round-2 update", Duration::from_secs(5))?;
    ensure!(
        record.left_out.len() == 1
            && record.left_out[0].node_id == 3
            && record.left_out[0].round == Some(1)
            && record.left_out[0].reason == "superseded by the same learner's round-2 update",
        "{:?}",
        record.left_out
    );
    for round in 1..=2 {
        let (ok, stdout) = verify(&federation, round)?;
        ensure!(ok && stdout.iter().any(|l| l == &format!("round {round}: verified")), "{stdout:?}");
    }
    Ok(())
}
