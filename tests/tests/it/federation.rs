//! The whole federation: `fl-aggregator run` and two `fl-agent run` processes on a real
//! anvil chain and a private network of real IPFS nodes, on small MNIST shards. Checks
//! what a sceptical observer of the chain would: every global model is, byte for byte,
//! the FedAvg of the local models the chain records, it learns, `verify` agrees, and
//! killed processes resume without publishing anything twice.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use fl_contracts::{commitment, Event, GlobalUpdate, LocalUpdate, Mode, Registry};
use fl_core::data::Mnist;
use fl_core::encoding::Bases;
use fl_core::record::RoundRecord;
use fl_core::spec::ModelSpec;
use fl_core::train::evaluate;
use fl_core::weights::{sha256, ModelFile, NamedTensor};
use fl_tests::devnet::{Devnet, Running};
use fl_tests::util::{workspace_bin, workspace_root, TempDir};

/// 1,000 training images per learner: enough to learn visibly in one epoch, small
/// enough for two cores shared with the rest of the suite.
const TRAIN_LIMIT: usize = 2_000;
const TEST_LIMIT: usize = 500;
pub(super) const ROUNDS: u64 = 2;
pub(super) const RUN_LIMIT: Duration = Duration::from_secs(900);

fn mnist() -> PathBuf {
    let dir = workspace_root().join("data/mnist");
    assert!(dir.join("t10k-labels-idx1-ubyte").exists(), "MNIST missing in {}: run `make setup`", dir.display());
    dir
}

/// A started federation: the infrastructure plus the paths its processes need.
pub(super) struct Federation {
    pub(super) devnet: Devnet,
    agent: PathBuf,
    aggregator: PathBuf,
    data: PathBuf,
    /// Training images per learner.
    train_per_learner: usize,
    /// The last global round the aggregator publishes and the learners wait for.
    pub(super) rounds: u64,
    _dir: TempDir,
}

impl Federation {
    pub(super) fn start(label: &str) -> Result<Federation> {
        Federation::start_with_learners(label, 2)
    }

    /// A federation of `n` registered learners (each with its IPFS node).
    pub(super) fn start_with_learners(label: &str, n: usize) -> Result<Federation> {
        Federation::start_fleet(label, n, n, TRAIN_LIMIT / 2)
    }

    /// `n` learners sharing `ipfs_nodes` IPFS nodes, each training on `train_per_learner` images.
    fn start_fleet(label: &str, n: usize, ipfs_nodes: usize, train_per_learner: usize) -> Result<Federation> {
        Federation::start_in(label, n, ipfs_nodes, train_per_learner, Mode::Sync, ROUNDS)
    }

    /// [`Federation::start_fleet`] with a registry in `mode`, running `rounds` rounds.
    pub(super) fn start_in(
        label: &str,
        n: usize,
        ipfs_nodes: usize,
        train_per_learner: usize,
        mode: Mode,
        rounds: u64,
    ) -> Result<Federation> {
        let dir = TempDir::new(label)?;
        let devnet = Devnet::start_fleet_in(n, ipfs_nodes, dir.path(), Default::default(), mode)?;
        Federation::around(devnet, dir, mnist(), train_per_learner, rounds)
    }

    /// A federation of `n` learners that trains `model` (learner `i` in group `(i - 1) %
    /// groups`), each board reading its shard of
    /// `train_per_learner` examples from `data` (its format given in each learner's extra
    /// keys; the aggregator's data given with its flags).
    pub(super) fn start_declared(
        label: &str,
        n: usize,
        model: &fl_core::ensemble::FederationModel,
        data: PathBuf,
        train_per_learner: usize,
    ) -> Result<Federation> {
        let dir = TempDir::new(label)?;
        let devnet = Devnet::start_federation(n, n, dir.path(), Default::default(), Mode::Sync, Some(model))?;
        Federation::around(devnet, dir, data, train_per_learner, ROUNDS)
    }

    fn around(devnet: Devnet, dir: TempDir, data: PathBuf, train_per_learner: usize, rounds: u64) -> Result<Federation> {
        Ok(Federation {
            devnet,
            agent: workspace_bin("fl-agent")?,
            aggregator: workspace_bin("fl-aggregator")?,
            data,
            train_per_learner,
            rounds,
            _dir: dir,
        })
    }

    /// The folder the federation's files and logs go to.
    pub(super) fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    fn aggregator(&self, log: &str) -> Result<Running> {
        self.aggregator_with(log, &[])
    }

    pub(super) fn aggregator_with(&self, log: &str, extra: &[&str]) -> Result<Running> {
        let mut args: Vec<String> = vec![
            "--rounds".into(),
            self.rounds.to_string(),
            "--data".into(),
            self.data.display().to_string(),
            "--test-limit".into(),
            TEST_LIMIT.to_string(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        Running::spawn("aggregator", self.devnet.aggregator_command(&self.aggregator, &args), &self.devnet.dir.join(log), false)
    }

    /// The aggregator without `--data`: it evaluates nothing and shows what the boards report.
    pub(super) fn aggregator_without_data(&self, log: &str, extra: &[&str]) -> Result<Running> {
        let mut args: Vec<String> = vec!["--rounds".into(), self.rounds.to_string()];
        args.extend(extra.iter().map(|a| a.to_string()));
        Running::spawn("aggregator", self.devnet.aggregator_command(&self.aggregator, &args), &self.devnet.dir.join(log), false)
    }

    pub(super) fn learner(&self, node_id: usize, log: &str) -> Result<Running> {
        self.learner_with(node_id, log, "")
    }

    /// A learner whose `agent.toml` also holds `extra` (top-level keys).
    pub(super) fn learner_with(&self, node_id: usize, log: &str, extra: &str) -> Result<Running> {
        let command = self.learner_command(node_id, extra)?;
        Running::spawn(&format!("learner {node_id}"), command, &self.devnet.dir.join(log), false)
    }

    /// A learner reaching its chain and IPFS node through `rpc_url` and `ipfs_api` (flags
    /// over its `agent.toml`, which also holds `extra`), e.g. proxies that break the links.
    pub(super) fn learner_through(&self, node_id: usize, log: &str, rpc_url: &str, ipfs_api: &str, extra: &str) -> Result<Running> {
        let mut command = self.learner_command(node_id, extra)?;
        command.args(["--rpc-url", rpc_url, "--ipfs-api", ipfs_api]);
        Running::spawn(&format!("learner {node_id}"), command, &self.devnet.dir.join(log), false)
    }

    pub(super) fn learner_command(&self, node_id: usize, extra: &str) -> Result<std::process::Command> {
        let train_limit = self.train_per_learner * self.devnet.n_learners;
        let extra = format!("train_limit = {train_limit}\ntest_limit = {TEST_LIMIT}\n{extra}");
        let config = self.devnet.write_agent_config(node_id, &self.data, 1, self.rounds, &extra)?;
        Ok(self.devnet.agent_command(&self.agent, node_id, &config))
    }

    /// Every registry event since deployment.
    pub(super) fn events(&self) -> Result<(Vec<GlobalUpdate>, Vec<LocalUpdate>)> {
        let client = self.devnet.read_client()?;
        let registry = Registry::at(&client, self.devnet.registry);
        let latest = client.rpc().block_number()?;
        let (mut globals, mut locals) = (Vec::new(), Vec::new());
        for logged in registry.events(0, latest)? {
            match logged.event {
                Event::GlobalWeightSet(g) => globals.push(g),
                Event::LocalWeightSet(u) => locals.push(u),
                _ => {}
            }
        }
        Ok((globals, locals))
    }

    pub(super) fn fetch(&self, cid: &str, digest: &[u8; 32]) -> Result<Vec<u8>> {
        Ok(self.devnet.ipfs[0].client().fetch_verified(cid, digest, 64 << 20)?)
    }

    pub(super) fn verify_command(&self, round: u64) -> Result<Running> {
        self.verify_command_with(round, &[])
    }

    /// `fl-aggregator verify --round ROUND` with `extra` flags added.
    pub(super) fn verify_command_with(&self, round: u64, extra: &[&str]) -> Result<Running> {
        self.verify_command_via(std::process::Command::new(&self.aggregator), self.devnet.registry, round, extra)
    }

    /// The same through `launcher` (e.g. qemu with the aarch64 build), for `registry`, with
    /// its own log.
    pub(super) fn verify_command_via(
        &self,
        mut command: std::process::Command,
        registry: fl_contracts::Address,
        round: u64,
        extra: &[&str],
    ) -> Result<Running> {
        let log = format!("verify-{round}-{}.log", self.devnet.dir.read_dir().map(|d| d.count()).unwrap_or(0));
        command
            .arg("verify")
            .args(["--round", &round.to_string()])
            .args(["--rpc-url", self.devnet.anvil.url()])
            .args(["--registry", &format!("{registry:?}")])
            .args(["--ipfs-api", &self.devnet.ipfs[0].api_url])
            .args(extra);
        Running::spawn("verify", command, &self.devnet.dir.join(log), false)
    }
}

/// FedAvg written here from its definition (McMahan et al. 2017: the sample-weighted
/// mean), independently of `fl_core::fedavg`: per parameter, the sum over learners
/// in ascending node id order of `n_k * w_k` in f64, divided by the total, rounded to f32.
pub(super) fn independent_fedavg(models: &[ModelFile], round: u64) -> ModelFile {
    let total: u64 = models.iter().map(|m| m.n_samples).sum();
    let first = &models[0];
    let tensors = first
        .tensors
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut sum = vec![0.0f64; t.to_f32().len()];
            for model in models {
                for (s, v) in sum.iter_mut().zip(model.tensors[i].to_f32()) {
                    *s += model.n_samples as f64 * v as f64;
                }
            }
            let mean: Vec<f32> = sum.iter().map(|s| (s / total as f64) as f32).collect();
            NamedTensor::from_f32(&t.name, &t.dims(), &mean)
        })
        .collect();
    ModelFile {
        format_version: first.format_version,
        architecture: first.architecture.clone(),
        spec: first.spec,
        round,
        n_samples: total,
        tensors,
    }
}

/// Checks every published round against the chain and IPFS; returns the global models.
pub(super) fn check_rounds(federation: &Federation) -> Result<BTreeMap<u64, ModelFile>> {
    let (globals, locals) = federation.events()?;
    let mut published = BTreeMap::new();
    for round in 0..=ROUNDS {
        let of_round: Vec<&GlobalUpdate> = globals.iter().filter(|g| g.round == round).collect();
        assert_eq!(of_round.len(), 1, "round {round} must be published exactly once: {globals:?}");
        let global = of_round[0];
        let bytes = federation.fetch(&global.cid, &global.digest)?;
        assert_eq!(sha256(&bytes), global.digest);
        let model = ModelFile::from_bytes(&bytes)?;
        if round > 0 {
            let n = federation.devnet.n_learners;
            assert_eq!(global.node_ids, (1..=n as u64).collect::<Vec<_>>(), "round {round} averages every learner");
            let mut inputs: Vec<LocalUpdate> = locals.iter().filter(|u| u.round == round).cloned().collect();
            inputs.sort_by_key(|u| u.node_id);
            assert_eq!(inputs.len(), n, "one update per learner in round {round}: {inputs:?}");
            assert_eq!(commitment(&inputs, Some(&global.record))?, global.inputs_commitment, "round {round}: commitment");
            // Compressed updates are differences from the previous global model (or from its
            // encoded copy): decoded onto it, as anyone reading the chain can.
            let bases = Bases::of(&published[&(round - 1)])?;
            let local_models =
                inputs.iter().map(|u| Ok(bases.decode(&federation.fetch(&u.cid, &u.digest)?)?.model)).collect::<Result<Vec<_>>>()?;
            let expected = independent_fedavg(&local_models, round).to_bytes();
            assert!(expected == bytes, "round {round}: the global model is not the FedAvg of the recorded local models");
        }
        published.insert(round, model);
    }
    Ok(published)
}

#[test]
fn federation_two_rounds_publish_the_fedavg_of_the_recorded_updates() -> Result<()> {
    let federation = Federation::start("federation")?;
    // Compressed both ways: int8 global copies for the learners to download; learner 1
    // sends int8 updates (the default), learner 2 the full f32 weights.
    let mut aggregator = federation.aggregator_with("aggregator.log", &["--global-encoding", "int8"])?;
    let mut learners =
        vec![federation.learner(1, "learner-1.log")?, federation.learner_with(2, "learner-2.log", "update_encoding = \"f32\"\n")?];
    aggregator.wait_success(RUN_LIMIT)?;
    for learner in &mut learners {
        learner.wait_success(Duration::from_secs(120))?;
    }
    let published = check_rounds(&federation)?;

    // It learns: the last global model beats the seeded initial one by a wide margin.
    let test_set = Mnist::load_test(&federation.data)?.take(TEST_LIMIT);
    let initial = evaluate(&ModelSpec::paper_cnn(), &published[&0], &test_set)?.accuracy;
    let last = evaluate(&ModelSpec::paper_cnn(), &published[&ROUNDS], &test_set)?.accuracy;
    assert!(last > initial + 0.3, "global accuracy went from {initial} to {last}");

    // The records name each input's encoding and the int8 copy of every global model; the
    // learners downloaded the copies; an int8 update is a quarter of an f32 one.
    let (globals, locals) = federation.events()?;
    for global in &globals {
        let record = RoundRecord::from_bytes(&global.record)?;
        let copy = record.global_encoded.as_ref().with_context(|| format!("round {}: no encoded copy in {record:?}", global.round))?;
        assert_eq!(copy.encoding, "int8");
        let bytes = federation.fetch(&copy.cid, &fl_core::weights::digest_from_hex(&copy.sha256)?)?;
        assert!(bytes.len() <= 650_000, "round {}: the int8 copy is {} bytes", global.round, bytes.len());
        if global.round > 0 {
            let expected: BTreeMap<String, Vec<u64>> = [("f32".to_string(), vec![2]), ("int8".to_string(), vec![1])].into();
            assert_eq!(record.encodings, expected, "round {}", global.round);
        }
    }
    for update in &locals {
        let size = federation.fetch(&update.cid, &update.digest)?.len();
        let fits = if update.node_id == 1 { size <= 650_000 } else { size > 2_400_000 };
        assert!(fits, "learner {}'s round-{} update is {size} bytes", update.node_id, update.round);
    }
    for learner in &learners {
        let log = learner.lines();
        for round in 1..=ROUNDS {
            let fetched = format!("round {round}: fetched the int8 copy");
            assert!(log.iter().any(|l| l.contains(&fetched)), "{}: no {fetched:?} in {log:?}", learner.name);
        }
    }

    // The aggregator printed one table row per round, and each learner one line per round.
    let rows = aggregator.stdout_lines();
    assert!(rows.iter().any(|l| l.trim_start().starts_with("2 ")), "no row for round 2 in {rows:?}");
    for learner in &learners {
        let lines = learner.stdout_lines();
        assert_eq!(lines.iter().filter(|l| l.contains("test accuracy")).count(), ROUNDS as usize, "{lines:?}");
    }

    // Anyone can recompute each round from the chain and IPFS.
    for round in 1..=ROUNDS {
        let mut verify = federation.verify_command(round)?;
        verify.wait_success(Duration::from_secs(120))?;
        assert!(verify.stdout_lines().iter().any(|l| l == &format!("round {round}: verified")), "{:?}", verify.lines());
    }
    Ok(())
}

/// A fleet: 20 learners (250 images each) sharing 4 IPFS nodes, the aggregator fetching
/// with 4 workers. Every round averages all 20, byte for byte the FedAvg of what the chain
/// records (whatever order the fetches finished in), and `verify` agrees.
#[test]
fn federation_of_twenty_learners_sharing_four_ipfs_nodes() -> Result<()> {
    const FLEET: usize = 20;
    let federation = Federation::start_fleet("federation-fleet", FLEET, 4, 250)?;
    assert_eq!(federation.devnet.ipfs.len(), 5, "the aggregator's node and 4 shared ones");
    let mut aggregator = federation.aggregator_with("aggregator.log", &["--fetch-workers", "4"])?;
    let mut learners =
        (1..=FLEET).map(|node_id| federation.learner(node_id, &format!("learner-{node_id}.log"))).collect::<Result<Vec<_>>>()?;
    aggregator.wait_success(RUN_LIMIT)?;
    for learner in &mut learners {
        learner.wait_success(Duration::from_secs(120))?;
    }
    let published = check_rounds(&federation)?;
    let test_set = Mnist::load_test(&federation.data)?.take(TEST_LIMIT);
    let (initial, last) = (
        evaluate(&ModelSpec::paper_cnn(), &published[&0], &test_set)?.accuracy,
        evaluate(&ModelSpec::paper_cnn(), &published[&ROUNDS], &test_set)?.accuracy,
    );
    assert!(last > initial + 0.3, "global accuracy went from {initial} to {last}");
    // A fleet this wide gets the summary table: every learner evaluated each round.
    let rows = aggregator.stdout_lines();
    assert!(rows.iter().any(|l| l.contains("updates") && l.contains("median")), "no summary header in {rows:?}");
    for round in 1..=ROUNDS {
        let row = rows.iter().find(|l| l.split_whitespace().next() == Some(&round.to_string())).context("no row")?;
        assert_eq!(row.split_whitespace().nth(1), Some("20"), "round {round}: {row}");
        let mut verify = federation.verify_command(round)?;
        verify.wait_success(Duration::from_secs(120))?;
        assert!(verify.stdout_lines().iter().any(|l| l == &format!("round {round}: verified")), "{:?}", verify.lines());
    }
    Ok(())
}

#[test]
fn federation_killed_learner_and_aggregator_resume_without_publishing_twice() -> Result<()> {
    let federation = Federation::start("federation-kill")?;
    let mut aggregator = federation.aggregator("aggregator-1.log")?;
    let mut learner_1 = federation.learner(1, "learner-1a.log")?;
    let mut learner_2 = federation.learner(2, "learner-2.log")?;

    // Learner 1 dies as soon as it starts training round 1 and comes back.
    learner_1.wait_for("round 1: fetched global model", RUN_LIMIT)?;
    learner_1.kill();
    let mut learner_1 = federation.learner(1, "learner-1b.log")?;

    // The aggregator dies right after fetching the first update of round 1, before it can
    // publish the round, and comes back.
    aggregator.wait_for("round 1: fetched and verified learner 1", RUN_LIMIT)?;
    aggregator.kill();
    let mut aggregator = federation.aggregator("aggregator-2.log")?;

    aggregator.wait_success(RUN_LIMIT)?;
    learner_1.wait_success(Duration::from_secs(120))?;
    learner_2.wait_success(Duration::from_secs(120))?;

    // Nothing published twice, every global model still the FedAvg of its inputs.
    check_rounds(&federation)?;
    let (_, locals) = federation.events()?;
    for round in 1..=ROUNDS {
        for node_id in [1, 2] {
            let n = locals.iter().filter(|u| u.round == round && u.node_id == node_id).count();
            assert_eq!(n, 1, "learner {node_id} registered {n} updates in round {round}");
        }
    }
    // The restarted aggregator carried on from the chain rather than from the beginning.
    let lines = aggregator.lines();
    assert!(!lines.iter().any(|l| l.contains("round 0: published")), "the restarted aggregator published round 0 again: {lines:?}");
    let restarted_learner = learner_1.lines();
    assert!(restarted_learner.iter().any(|l| l.contains("learner 1 round 1: test accuracy")), "{restarted_learner:?}");
    Ok(())
}

#[test]
fn federation_round_closes_without_a_silent_learner_after_the_timeout() -> Result<()> {
    // The paper's future work: a global update that does not wait for every learner.
    // Learner 2 is registered but never runs; with --min-learners 1 --round-timeout 5 the
    // aggregator closes each round with learner 1 alone, and says so on chain.
    let federation = Federation::start("federation-async")?;
    let mut aggregator = federation.aggregator_with("aggregator.log", &["--min-learners", "1", "--round-timeout", "5"])?;
    let mut learner = federation.learner(1, "learner-1.log")?;
    aggregator.wait_success(RUN_LIMIT)?;
    learner.wait_success(Duration::from_secs(120))?;
    let (globals, locals) = federation.events()?;
    for round in 1..=ROUNDS {
        let global = globals.iter().find(|g| g.round == round).context("round not published")?;
        assert_eq!(global.node_ids, vec![1], "round {round} must average learner 1 alone");
        let inputs: Vec<LocalUpdate> = locals.iter().filter(|u| u.round == round).cloned().collect();
        assert_eq!(commitment(&inputs, Some(&global.record))?, global.inputs_commitment);
        // The average of one model is that model.
        let local = federation.fetch(&inputs[0].cid, &inputs[0].digest)?;
        let published = ModelFile::from_bytes(&federation.fetch(&global.cid, &global.digest)?)?;
        let previous = globals.iter().find(|g| g.round == round - 1).context("previous round not published")?;
        let bases = Bases::of(&ModelFile::from_bytes(&federation.fetch(&previous.cid, &previous.digest)?)?)?;
        assert_eq!(published.tensors, bases.decode(&local)?.model.tensors, "round {round}");
    }
    assert!(aggregator.lines().iter().any(|l| l.contains("closing after 5s with 1 of 2 learners")), "{:?}", aggregator.lines());
    Ok(())
}

#[test]
fn federation_bad_flags_and_config_are_clear_errors() -> Result<()> {
    let dir = TempDir::new("federation-config")?;
    let agent = workspace_bin("fl-agent")?;
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "node_id = 1\nregistry = \"0x1234\"\nrpc_url = \"http://127.0.0.1:1\"\n").context("writing config")?;
    let output = std::process::Command::new(&agent).args(["run", "--config"]).arg(&config).env_remove("FL_REGISTRY").output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    // The one endpoint reader names the file the bad value came from.
    assert!(stderr.contains(&format!("registry address (in {}) \"0x1234\"", config.display())), "{stderr}");

    std::fs::write(&config, "node_id = 1\nunknown_key = 3\n")?;
    let output = std::process::Command::new(&agent).args(["run", "--config"]).arg(&config).output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains(&config.display().to_string()) && stderr.contains("unknown_key"), "{stderr}");

    let aggregator = workspace_bin("fl-aggregator")?;
    let output = std::process::Command::new(&aggregator).args(["run", "--rounds", "2", "--data", "x", "--min-learners", "1"]).output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("--min-learners and --round-timeout go together"), "{stderr}");
    // A bad rule, trim or clip is refused before anything reaches the chain (no node runs).
    for (flags, says) in [
        (&["--rule", "mean"][..], "unknown aggregation rule \"mean\""),
        (&["--rule", "trimmed-mean:0.5"][..], "B must be at least 0 and below 0.5"),
        (&["--rule", "krum:x"][..], "--rule"),
        (&["--clip-norm", "0"][..], "--clip-norm"),
    ] {
        let output = std::process::Command::new(&aggregator).args(["run", "--rounds", "2", "--data", "x"]).args(flags).output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(says), "{flags:?}: {stderr}");
        assert!(!stderr.contains("cannot reach"), "{flags:?} got as far as the chain: {stderr}");
    }
    Ok(())
}
