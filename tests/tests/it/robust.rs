//! Hostile learners and a dishonest aggregator. In process (through `simulate`): the three
//! attacks of issue 13 against FedAvg and the robust rules, on real MNIST training. On real
//! nodes: a hostile learner writing its update to the chain like any learner while the
//! aggregator runs Multi-Krum; a Krum round that stays open until enough updates are in;
//! every rule's rounds verified by `verify` on x86-64 and on the aarch64 build under qemu;
//! and `verify` catching each kind of lie a dishonest aggregator could publish, and still
//! checking the rounds of a version-1 registry.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use fl_aggregator::record::{EncodedGlobal, RoundRecord};
use fl_aggregator::simulate::{self, SimulateConfig, TrainingCache};
use fl_contracts::ethers_core::abi::Token;
use fl_contracts::{commitment, Address, Client, LocalUpdate, Registry, Rpc};
use fl_core::attacks::Attack;
use fl_core::data::{Mnist, Split};
use fl_core::encoding::{Bases, Encoding};
use fl_core::rng::Rng;
use fl_core::rules::{Aggregation, Recipe, Rule};
use fl_core::train::evaluate;
use fl_core::weights::{sha256, ModelFile, NamedTensor};
use fl_tests::devnet::{Devnet, MAX_SAMPLES};
use fl_tests::util::{workspace_bin, workspace_root, TempDir};

use crate::cross::AARCH64;
use crate::federation::{independent_fedavg, Federation, RUN_LIMIT};

// ---- in process: the attacks -----------------------------------------------------------

/// 4 honest learners and learner 5, one round of one epoch on their shards.
const LEARNERS: usize = 5;
const HOSTILE: u64 = 5;
const IMAGES_PER_LEARNER: usize = 2_000;
const TEST_IMAGES: usize = 2_000;

/// The training every simulation here shares: the honest learners' round-1 models are the
/// same whatever the rule and the attack, so each is trained once per test binary.
fn cache() -> &'static Mutex<TrainingCache> {
    static CACHE: OnceLock<Mutex<TrainingCache>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(TrainingCache::default()))
}

/// The final global model and its accuracy under `rule`, learner 5 doing `hostile`. The
/// sample cap is the devnet's (MNIST's training set), which a hostile learner claims.
fn simulation(rule: Rule, hostile: Option<Attack>) -> Result<(f64, ModelFile)> {
    let config = SimulateConfig {
        model: fl_core::ensemble::FederationModel::Single(fl_core::spec::ModelSpec::paper_cnn()),
        groups: vec![0; LEARNERS],
        data: fl_core::flags::DataFlags { path: Some(workspace_root().join("data/mnist")), ..Default::default() },
        learners: LEARNERS,
        rounds: 1,
        local_epochs: 1,
        split: Split::Iid,
        seed: 1,
        batch_size: 32,
        train_limit: Some(IMAGES_PER_LEARNER * LEARNERS),
        test_limit: Some(TEST_IMAGES),
        recipe: Recipe { rule, clip_norm: None },
        max_samples: Some(MAX_SAMPLES),
        hostile: hostile.map(|a| vec![(HOSTILE, a)]).unwrap_or_default(),
        local_eval: false,
        also: Vec::new(),
        // The attacks' measured accuracies are of full f32 updates.
        update_encoding: Encoding::F32,
        global_encoding: Encoding::F32,
    };
    let mut cache = cache().lock().map_err(|_| anyhow::anyhow!("another attack test panicked while training"))?;
    let run = simulate::run_cached(&config, &mut cache)?;
    let accuracy = run.rows.last().and_then(|r| r.global.accuracy).context("no global accuracy")?;
    Ok((accuracy, run.global))
}

/// The clean FedAvg run every attack is compared with.
fn clean_fedavg() -> Result<f64> {
    Ok(simulation(Rule::FedAvg, None)?.0)
}

fn robust_rules() -> Vec<Rule> {
    vec![Rule::Median, Rule::TrimmedMean { beta: 0.2 }, Rule::MultiKrum { f: 1 }]
}

/// Attack `attack` under FedAvg and the robust rules: FedAvg loses at least 20 points, the
/// robust rules stay within 2 points of the clean FedAvg run.
fn attack_is_real_and_the_robust_rules_hold(attack: Attack) -> Result<()> {
    let clean = clean_fedavg()?;
    let (attacked, _) = simulation(Rule::FedAvg, Some(attack))?;
    let mut table = format!("attack {attack:?}: clean fedavg {:.2}%, attacked: fedavg {:.2}%", 100.0 * clean, 100.0 * attacked);
    let mut held = Vec::new();
    for rule in robust_rules() {
        let (accuracy, _) = simulation(rule, Some(attack))?;
        table += &format!(", {rule} {:.2}%", 100.0 * accuracy);
        held.push((rule, accuracy));
    }
    eprintln!("{table}");
    ensure!(attacked <= clean - 0.20, "the attack is not real: fedavg {attacked} vs clean {clean}\n{table}");
    for (rule, accuracy) in held {
        ensure!((accuracy - clean).abs() <= 0.02, "{rule} did not hold: {accuracy} vs clean {clean}\n{table}");
    }
    Ok(())
}

#[test]
fn robust_weights_scaled_by_minus_four_break_fedavg_not_the_robust_rules() -> Result<()> {
    attack_is_real_and_the_robust_rules_hold(Attack::Scale(-4.0))
}

#[test]
fn robust_gaussian_noise_breaks_fedavg_not_the_robust_rules() -> Result<()> {
    attack_is_real_and_the_robust_rules_hold(Attack::Noise)
}

/// Recall of `class`: the share of its test images the model labels right.
fn recall(model: &ModelFile, class: u8) -> Result<f64> {
    let test = Mnist::load_test(&workspace_root().join("data/mnist"))?.take(TEST_IMAGES);
    let indices: Vec<usize> = test.labels().iter().enumerate().filter(|(_, &l)| l == class).map(|(i, _)| i).collect();
    Ok(evaluate(&fl_core::spec::ModelSpec::paper_cnn(), model, &test.select(&indices))?.accuracy)
}

#[test]
fn robust_flipped_labels_recall_of_the_flipped_classes_under_each_rule() -> Result<()> {
    let attack = Attack::FlipLabels(7, 1);
    let clean = clean_fedavg()?;
    let (_, clean_model) = simulation(Rule::FedAvg, None)?;
    let mut table = vec![format!("{:<18} {:>9} {:>10} {:>10}", "rule", "accuracy", "recall 7", "recall 1")];
    table.push(format!(
        "{:<18} {:>8.2}% {:>9.2}% {:>9.2}%",
        "clean fedavg",
        100.0 * clean,
        100.0 * recall(&clean_model, 7)?,
        100.0 * recall(&clean_model, 1)?
    ));
    let mut rows = Vec::new();
    for rule in [vec![Rule::FedAvg], robust_rules()].concat() {
        let (accuracy, global) = simulation(rule, Some(attack))?;
        let (r7, r1) = (recall(&global, 7)?, recall(&global, 1)?);
        table.push(format!("{:<18} {:>8.2}% {:>9.2}% {:>9.2}%", rule.to_string(), 100.0 * accuracy, 100.0 * r7, 100.0 * r1));
        rows.push((rule, accuracy, r7, r1));
    }
    let table = table.join("\n");
    eprintln!("flipped labels 7 <-> 1 by learner {HOSTILE}, claiming the cap:\n{table}");
    // Under FedAvg the liar's claimed weight makes the flip stick; the robust rules keep
    // both classes recognised, within 10 points of the clean run's recall.
    let (clean_r7, clean_r1) = (recall(&clean_model, 7)?, recall(&clean_model, 1)?);
    let (_, _, fedavg_r7, fedavg_r1) = rows[0];
    ensure!(fedavg_r7.min(fedavg_r1) < 0.5, "the flip did not take under fedavg:\n{table}");
    for &(rule, _, r7, r1) in &rows[1..] {
        ensure!(r7 >= clean_r7 - 0.10 && r1 >= clean_r1 - 0.10, "{rule}: recall of 7 {r7}, of 1 {r1}\n{table}");
    }
    Ok(())
}

// ---- on real nodes ---------------------------------------------------------------------

/// A hostile learner's update, sent from its own key like any learner's: the global model
/// it starts from scaled by -4, claiming the cap.
fn send_hostile_update(federation: &Federation, node_id: usize, round: u64) -> Result<()> {
    let devnet = &federation.devnet;
    let client = Client::new(Rpc::new(devnet.anvil.url())?, devnet.anvil.signer(node_id)?, Some(devnet.anvil.chain_id()))?;
    let registry = Registry::at(&client, devnet.registry);
    let global = registry.global_update()?.context("no global model")?;
    let start = ModelFile::from_bytes(&federation.fetch(&global.cid, &global.digest)?)?;
    let mut hostile = Attack::Scale(-4.0).corrupt(&start, 1);
    (hostile.round, hostile.n_samples) = (round, MAX_SAMPLES);
    let bytes = hostile.to_bytes();
    let cid = devnet.ipfs[node_id].client().add(&bytes)?;
    registry.set_local_weight(node_id as u64, round, &cid, sha256(&bytes), MAX_SAMPLES)?;
    Ok(())
}

pub(super) fn wait_for_round(registry: &Registry, round: u64, timeout: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    while registry.current_round()? < round {
        ensure!(std::time::Instant::now() < deadline, "round {round} did not open within {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

#[test]
fn robust_hostile_learner_on_chain_is_left_out_by_multi_krum_and_the_round_verifies() -> Result<()> {
    let federation = Federation::start_with_learners("robust-hostile", LEARNERS)?;
    let mut aggregator = federation.aggregator_with("aggregator.log", &["--rule", "multi-krum:1", "--rounds", "1", "--no-local-eval"])?;
    // The honest learners would go on to round 2: they are stopped (dropped) at the end.
    let _honest = (1..LEARNERS).map(|id| federation.learner_with(id, &format!("learner-{id}.log"), "")).collect::<Result<Vec<_>>>()?;
    let client = federation.devnet.read_client()?;
    let registry = Registry::at(&client, federation.devnet.registry);
    wait_for_round(&registry, 1, Duration::from_secs(120))?;
    send_hostile_update(&federation, LEARNERS, 1)?;
    aggregator.wait_success(RUN_LIMIT)?;
    let (globals, locals) = federation.events()?;
    let global = globals.iter().find(|g| g.round == 1).context("round 1 not published")?;
    assert_eq!(global.node_ids, vec![1, 2, 3, 4, 5], "every update is an input of the rule");
    let record = RoundRecord::from_bytes(&global.record)?;
    assert_eq!(record.rule.as_deref(), Some("multi-krum:1"));
    assert_eq!(record.selected, vec![1, 2, 3, 4], "Multi-Krum leaves the hostile update out");
    // m = N - F = 4: the global model is exactly the FedAvg of the four honest updates.
    let initial = globals.iter().find(|g| g.round == 0).context("round 0 not published")?;
    let bases = Bases::of(&ModelFile::from_bytes(&federation.fetch(&initial.cid, &initial.digest)?)?)?;
    let mut honest_models = Vec::new();
    for id in 1..=4 {
        let update = locals.iter().find(|u| u.round == 1 && u.node_id == id).context("honest update")?;
        honest_models.push(bases.decode(&federation.fetch(&update.cid, &update.digest)?)?.model);
    }
    let published = federation.fetch(&global.cid, &global.digest)?;
    assert!(independent_fedavg(&honest_models, 1).to_bytes() == published, "the global model is not the FedAvg of the honest updates");
    let mut verify = federation.verify_command(1)?;
    verify.wait_success(Duration::from_secs(120))?;
    assert!(verify.stdout_lines().iter().any(|l| l == "round 1: verified"), "{:?}", verify.lines());
    Ok(())
}

/// A learner's update made by the test (no training): the seed model plus seeded noise.
pub(super) fn crafted_update(node_id: u64, round: u64, spread: f32) -> ModelFile {
    let mut model = ModelFile::initial(1);
    let mut rng = Rng::new(1_000 * round + node_id);
    model.tensors = model
        .tensors
        .iter()
        .map(|t| {
            let values: Vec<f32> = t.to_f32().iter().map(|v| v + spread * (rng.normal() as f32) * 0.01).collect();
            NamedTensor::from_f32(&t.name, &t.dims(), &values)
        })
        .collect();
    (model.round, model.n_samples) = (round, 100 * node_id);
    model
}

/// The devnet as the test drives it: it plays every learner and the aggregator.
pub(super) struct Driver<'a> {
    pub(super) devnet: &'a Devnet,
    pub(super) owner: Client,
}

impl Driver<'_> {
    pub(super) fn learner(&self, node_id: usize) -> Result<Client> {
        Ok(Client::new(Rpc::new(self.devnet.anvil.url())?, self.devnet.anvil.signer(node_id)?, Some(self.devnet.anvil.chain_id()))?)
    }

    /// Uploads `model` and records it as `node_id`'s update on `registry`.
    pub(super) fn send(&self, registry: Address, node_id: usize, model: &ModelFile) -> Result<LocalUpdate> {
        let bytes = model.to_bytes();
        let cid = self.devnet.ipfs[0].client().add(&bytes)?;
        let learner = self.learner(node_id)?;
        Registry::at(&learner, registry).set_local_weight(node_id as u64, model.round, &cid, sha256(&bytes), model.n_samples)?;
        Ok(LocalUpdate { node_id: node_id as u64, round: model.round, cid, digest: sha256(&bytes), samples: model.n_samples })
    }

    /// Uploads `model` encoded as its difference from `base` and records it.
    fn send_encoded(&self, node_id: usize, model: &ModelFile, base: &ModelFile, encoding: Encoding) -> Result<LocalUpdate> {
        let bytes = fl_core::encoding::encode(model, Some(base), encoding)?;
        let cid = self.devnet.ipfs[0].client().add(&bytes)?;
        let learner = self.learner(node_id)?;
        Registry::at(&learner, self.devnet.registry).set_local_weight(
            node_id as u64,
            model.round,
            &cid,
            sha256(&bytes),
            model.n_samples,
        )?;
        Ok(LocalUpdate { node_id: node_id as u64, round: model.round, cid, digest: sha256(&bytes), samples: model.n_samples })
    }

    /// Publishes `model` as the global model of its round, with `inputs` and `record`.
    pub(super) fn publish(
        &self,
        model: &ModelFile,
        inputs: &[LocalUpdate],
        record: &RoundRecord,
        commitment_override: Option<[u8; 32]>,
    ) -> Result<()> {
        let bytes = model.to_bytes();
        let cid = self.devnet.ipfs[0].client().add(&bytes)?;
        let record = record.to_bytes();
        let committed = match commitment_override {
            Some(c) => c,
            None => commitment(inputs, Some(&record))?,
        };
        let ids: Vec<u64> = inputs.iter().map(|u| u.node_id).collect();
        Registry::at(&self.owner, self.devnet.registry).set_global_weight(model.round, &cid, sha256(&bytes), committed, &ids, &record)?;
        Ok(())
    }
}

/// What a lie changes before publishing: the model, the inputs, the record, the commitment.
type Tamper = dyn FnMut(&mut ModelFile, &mut Vec<LocalUpdate>, &mut RoundRecord, &mut Option<[u8; 32]>);

/// Runs `verify --round ROUND` natively and, if given, under qemu with the aarch64 build;
/// returns each one's (success, stdout).
fn verify_round(federation: &Federation, round: u64, on_aarch64: bool) -> Result<Vec<(bool, Vec<String>)>> {
    let mut runs = vec![federation.verify_command(round)?];
    if on_aarch64 {
        runs.push(federation.verify_command_via(AARCH64.command_named("fl-aggregator")?, federation.devnet.registry, round, &[])?);
    }
    let mut out = Vec::new();
    for mut run in runs {
        let ok = run.wait_success(Duration::from_secs(300)).is_ok();
        out.push((ok, run.stdout_lines()));
    }
    Ok(out)
}

#[test]
fn robust_every_rule_verifies_on_x86_64_and_aarch64_and_verify_catches_a_dishonest_aggregator() -> Result<()> {
    let federation = Federation::start_with_learners("robust-verify", LEARNERS)?;
    let devnet = &federation.devnet;
    let driver =
        Driver { devnet, owner: Client::new(Rpc::new(devnet.anvil.url())?, devnet.anvil.signer(0)?, Some(devnet.anvil.chain_id()))? };
    let initial = ModelFile::initial(1);
    driver.publish(&initial, &[], &RoundRecord::initial(1), Some([0; 32]))?;
    let mut previous = initial;
    // Honest rounds, one per rule (learner 5 an outlier), each checked on both CPUs.
    let recipes = [
        Recipe { rule: Rule::FedAvg, clip_norm: None },
        Recipe { rule: Rule::Median, clip_norm: None },
        Recipe { rule: Rule::TrimmedMean { beta: 0.2 }, clip_norm: None },
        Recipe { rule: Rule::Krum { f: 1 }, clip_norm: None },
        // Honest updates are about 8 from the previous model, the outlier about 300.
        Recipe { rule: Rule::MultiKrum { f: 1 }, clip_norm: Some(20.0) },
    ];
    let mut round = 0;
    let send_round = |round: u64| -> Result<(Vec<LocalUpdate>, Vec<ModelFile>)> {
        let mut inputs = Vec::new();
        let mut models = Vec::new();
        for id in 1..=LEARNERS {
            let model = crafted_update(id as u64, round, if id == LEARNERS { 40.0 } else { 1.0 });
            inputs.push(driver.send(devnet.registry, id, &model)?);
            models.push(model);
        }
        Ok((inputs, models))
    };
    let aggregate = |recipe: &Recipe, previous: &ModelFile, models: &[ModelFile]| -> Result<(ModelFile, RoundRecord)> {
        let mut aggregation = Aggregation::new(recipe, Some(previous))?;
        for (id, model) in (1u64..).zip(models) {
            aggregation.add(id, model, &format!("learner {id}"))?;
        }
        let outcome = aggregation.finish()?;
        let mut record = RoundRecord::aggregated(recipe, u64::MAX);
        (record.selected, record.clipped) = (outcome.selected, outcome.clipped);
        let mut model = outcome.model;
        model.round = models[0].round;
        Ok((model, record))
    };
    for recipe in &recipes {
        round += 1;
        let (inputs, models) = send_round(round)?;
        let (global, record) = aggregate(recipe, &previous, &models)?;
        driver.publish(&global, &inputs, &record, None)?;
        for (ok, stdout) in verify_round(&federation, round, true)? {
            assert!(ok && stdout.iter().any(|l| l == &format!("round {round}: verified")), "{recipe:?}: {stdout:?}");
        }
        previous = global;
    }
    let (ok, stdout) = verify_round(&federation, 0, false)?.remove(0);
    assert!(ok && stdout.iter().any(|l| l == "round 0: verified"), "round 0: {stdout:?}");

    // Compressed updates: int8 and f16 differences from the previous global model, one of
    // them from its int8 copy; decoded the same way on both CPUs, and the record's int8
    // copy of the new global model is derived again and checked.
    round += 1;
    let (mut inputs, mut models) = (Vec::new(), Vec::new());
    let int8_start = fl_core::encoding::start_model(&previous, Encoding::Int8)?;
    let mut record_encodings = Vec::new();
    for id in 1..=LEARNERS {
        let (base, encoding) = match id % 3 {
            0 => (&int8_start, Encoding::F16),
            1 => (&previous, Encoding::Int8),
            _ => (&previous, Encoding::F16),
        };
        let model = crafted_update(id as u64, round, 1.0);
        let update = driver.send_encoded(id, &model, base, encoding)?;
        let bytes = federation.fetch(&update.cid, &update.digest)?;
        models.push(fl_core::encoding::decode(&bytes, Some(base))?.model);
        inputs.push(update);
        record_encodings.push((id as u64, encoding));
    }
    let recipe = Recipe { rule: Rule::TrimmedMean { beta: 0.2 }, clip_norm: None };
    let (global, mut record) = aggregate(&recipe, &previous, &models)?;
    for (id, encoding) in &record_encodings {
        record.note_encoding(*id, *encoding);
    }
    let copy = fl_core::encoding::encode(&global, None, Encoding::Int8)?;
    record.global_encoded = Some(EncodedGlobal {
        encoding: "int8".into(),
        cid: devnet.ipfs[0].client().add(&copy)?,
        sha256: fl_core::weights::hex(&sha256(&copy)),
    });
    driver.publish(&global, &inputs, &record, None)?;
    for (ok, stdout) in verify_round(&federation, round, true)? {
        assert!(ok && stdout.iter().any(|l| l == &format!("round {round}: verified")), "compressed round: {stdout:?}");
    }
    previous = global;

    // Now the lies. Each makes verify name what does not match and fail.
    let mut lie = |what: &str, expected: &str, tamper: &mut Tamper| -> Result<()> {
        round += 1;
        let (mut inputs, models) = send_round(round)?;
        let recipe = Recipe { rule: Rule::Median, clip_norm: None };
        let (mut global, mut record) = aggregate(&recipe, &previous, &models)?;
        let mut committed = None;
        tamper(&mut global, &mut inputs, &mut record, &mut committed);
        driver.publish(&global, &inputs, &record, committed)?;
        let (ok, stdout) = verify_round(&federation, round, false)?.remove(0);
        ensure!(!ok, "{what}: verify passed: {stdout:?}");
        ensure!(
            stdout.iter().any(|l| l.contains("MISMATCH") && l.contains(expected)),
            "{what}: expected a line with {expected:?}: {stdout:?}"
        );
        previous = global;
        Ok(())
    };
    // A model that is not what the recorded rule gives: FedAvg bytes under a median record.
    lie("another rule's model", "is not what median gives", &mut |global, _, _, _| {
        global.tensors[7] =
            NamedTensor::from_f32(&global.tensors[7].name, &global.tensors[7].dims(), &vec![0.5; global.tensors[7].to_f32().len()]);
    })?;
    // A commitment that is not the hash of the inputs and the record.
    lie("wrong commitment", "the commitment", &mut |_, _, _, committed| *committed = Some([7; 32]))?;
    // A node-id list without learner 5, whose update is then neither used nor accounted for.
    lie("inputs differ", "learner 5's round-", &mut |_, inputs, _, _| {
        inputs.pop();
    })?;
    // A record that claims the wrong selection.
    lie("wrong selection", "the record says the rule selected", &mut |_, _, record, _| record.selected = vec![1])?;
    // A record that names the wrong encoding for an input.
    lie("wrong encoding", "the record says learner 2's update is int8, its file is f32", &mut |_, _, record, _| {
        record.note_encoding(2, Encoding::Int8)
    })?;
    // A record whose encoded copy of the global model is not derived from it.
    lie("wrong encoded copy", "int8 copy of the global model is", &mut |_, _, record, _| {
        record.global_encoded = Some(EncodedGlobal { encoding: "int8".into(), cid: "bafkreiabc".into(), sha256: "00".repeat(32) })
    })?;

    // A version-1 registry (no record): its rounds verify as FedAvg with the old commitment.
    let (v1, _) = Registry::deploy_bytecode(&driver.owner, fl_contracts::abi::v1::registry_bytecode())?;
    let v1_address = v1.address();
    let send_v1 = |name: &str, args: &[Token]| -> Result<()> {
        driver.owner.send_and_wait(name, Some(v1_address), fl_contracts::abi::v1::encode_call(name, args)?)?;
        Ok(())
    };
    for id in 1..=2 {
        send_v1("addLearner", &[Token::Uint(id.into()), Token::Address(devnet.anvil.address(id))])?;
    }
    let seed = ModelFile::initial(1);
    let seed_cid = devnet.ipfs[0].client().add(&seed.to_bytes())?;
    let v1_global = |round: u64, model: &ModelFile, committed: [u8; 32], ids: &[u64]| -> Result<()> {
        let cid = if round == 0 { seed_cid.clone() } else { devnet.ipfs[0].client().add(&model.to_bytes())? };
        send_v1(
            "setGlobalWeight",
            &[
                Token::Uint(round.into()),
                Token::Bytes(fl_contracts::cid::cid_to_bytes(&cid)?.to_vec()),
                Token::FixedBytes(sha256(&model.to_bytes()).to_vec()),
                Token::FixedBytes(committed.to_vec()),
                Token::Array(ids.iter().map(|&id| Token::Uint(id.into())).collect()),
            ],
        )
    };
    v1_global(0, &seed, [0; 32], &[])?;
    let models: Vec<ModelFile> = (1..=2).map(|id| crafted_update(id, 1, 1.0)).collect();
    let inputs = (1..=2).zip(&models).map(|(id, m)| driver.send(v1_address, id, m)).collect::<Result<Vec<_>>>()?;
    let mut average = independent_fedavg(&models, 1);
    v1_global(1, &average, commitment(&inputs, None)?, &[1, 2])?;
    let v1_verify = |round: u64| -> Result<(bool, Vec<String>)> {
        let aggregator = std::process::Command::new(workspace_bin("fl-aggregator")?);
        let mut run = federation.verify_command_via(aggregator, v1_address, round, &[])?;
        let ok = run.wait_success(Duration::from_secs(120)).is_ok();
        Ok((ok, run.stdout_lines()))
    };
    let (ok, stdout) = v1_verify(1)?;
    assert!(ok && stdout.iter().any(|l| l == "round 1: verified") && stdout.iter().any(|l| l.contains("fedavg")), "{stdout:?}");
    // And a lie on it is caught the same way.
    let models: Vec<ModelFile> = (1..=2).map(|id| crafted_update(id, 2, 1.0)).collect();
    let inputs = (1..=2).zip(&models).map(|(id, m)| driver.send(v1_address, id, m)).collect::<Result<Vec<_>>>()?;
    average = models[0].clone();
    average.round = 2;
    v1_global(2, &average, commitment(&inputs, None)?, &[1, 2])?;
    let (ok, stdout) = v1_verify(2)?;
    assert!(!ok && stdout.iter().any(|l| l.contains("is not what fedavg gives")), "{stdout:?}");
    // The learner and the aggregator refuse to write to it, before doing anything.
    let err = Registry::at(&driver.owner, v1_address).require_current_version().unwrap_err().to_string();
    assert!(err.contains("is version 1, this program writes to version 4"), "{err}");
    assert_eq!(Registry::at(&driver.owner, devnet.registry).version()?, 4);

    // A version-2 registry (the release before asynchronous rounds): same events, so its
    // rounds verify as version 3's synchronous ones, and it reads as synchronous.
    let mut creation = fl_contracts::abi::v2::registry_bytecode().to_vec();
    creation.extend(fl_contracts::ethers_core::abi::encode(&[Token::Uint(MAX_SAMPLES.into())]));
    let (v2, _) = Registry::deploy_bytecode(&driver.owner, creation.into())?;
    assert_eq!((v2.version()?, v2.mode()?, v2.model_spec()?), (2, fl_contracts::Mode::Sync, None));
    for id in 1..=2 {
        v2.add_learner(id, devnet.anvil.address(id as usize), None)?;
    }
    let seed_bytes = seed.to_bytes();
    v2.set_global_weight(0, &seed_cid, sha256(&seed_bytes), [0; 32], &[], &RoundRecord::initial(1).to_bytes())?;
    let models: Vec<ModelFile> = (1..=2).map(|id| crafted_update(id, 1, 1.0)).collect();
    let inputs = (1..=2).zip(&models).map(|(id, m)| driver.send(v2.address(), id, m)).collect::<Result<Vec<_>>>()?;
    let fedavg = Recipe { rule: Rule::FedAvg, clip_norm: None };
    let mut record = RoundRecord::aggregated(&fedavg, driver.owner.rpc().block_number()?);
    record.selected = vec![1, 2];
    let record = record.to_bytes();
    let average = independent_fedavg(&models, 1);
    let cid = devnet.ipfs[0].client().add(&average.to_bytes())?;
    v2.set_global_weight(1, &cid, sha256(&average.to_bytes()), commitment(&inputs, Some(&record))?, &[1, 2], &record)?;
    for round in 0..=1 {
        let aggregator = std::process::Command::new(workspace_bin("fl-aggregator")?);
        let mut run = federation.verify_command_via(aggregator, v2.address(), round, &[])?;
        let ok = run.wait_success(Duration::from_secs(120)).is_ok();
        let stdout = run.stdout_lines();
        assert!(ok && stdout.iter().any(|l| l == &format!("round {round}: verified")), "version 2, round {round}: {stdout:?}");
    }
    let err = v2.require_current_version().unwrap_err().to_string();
    assert!(err.contains("is version 2, this program writes to version 4"), "{err}");
    Ok(())
}

#[test]
fn robust_a_krum_round_stays_open_until_it_has_2f_plus_3_updates() -> Result<()> {
    // Two learners registered, Krum tolerating one: the round cannot close with 2.
    let dir = TempDir::new("robust-krum-open")?;
    let devnet = Devnet::start(2, dir.path())?;
    let owner = Client::new(Rpc::new(devnet.anvil.url())?, devnet.anvil.signer(0)?, Some(devnet.anvil.chain_id()))?;
    let driver = Driver { devnet: &devnet, owner };
    let args: Vec<String> = ["--rounds", "1", "--data", &workspace_root().join("data/mnist").display().to_string(), "--test-limit", "100"]
        .into_iter()
        .map(String::from)
        .chain(["--rule".into(), "krum:1".into(), "--no-local-eval".into()])
        .collect();
    let mut aggregator = fl_tests::devnet::Running::spawn(
        "aggregator",
        devnet.aggregator_command(&workspace_bin("fl-aggregator")?, &args),
        &dir.path().join("aggregator.log"),
        false,
    )?;
    let registry = Registry::at(&driver.owner, devnet.registry);
    wait_for_round(&registry, 1, Duration::from_secs(120))?;
    for id in 1..=2 {
        driver.send(devnet.registry, id, &crafted_update(id as u64, 1, 1.0))?;
    }
    aggregator.wait_for("rule krum:1 needs at least 5 usable updates, so the round stays open", Duration::from_secs(120))?;
    ensure!(registry.current_round()? == 1, "round 1 was published with 2 updates");
    // Three more learners join and send: now it closes, and the choice verifies.
    for id in 3..=5 {
        registry.add_learner(id, devnet.anvil.address(id as usize), None)?;
    }
    for id in 3..=5 {
        let learner = driver.learner(id)?;
        let model = crafted_update(id as u64, 1, if id == 5 { 40.0 } else { 1.0 });
        let bytes = model.to_bytes();
        let cid = devnet.ipfs[0].client().add(&bytes)?;
        Registry::at(&learner, devnet.registry).set_local_weight(id as u64, 1, &cid, sha256(&bytes), model.n_samples)?;
    }
    aggregator.wait_success(Duration::from_secs(300))?;
    let global = registry.global_updates(0, driver.owner.rpc().block_number()?)?.into_iter().find(|g| g.round == 1).context("round 1")?;
    let record = RoundRecord::from_bytes(&global.record)?;
    ensure!(record.selected.len() == 1 && record.selected[0] != 5, "krum chose {:?}", record.selected);
    if global.node_ids != vec![1, 2, 3, 4, 5] {
        bail!("inputs {:?}", global.node_ids);
    }
    Ok(())
}
