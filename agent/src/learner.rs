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

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fl_contracts::{Address, Client, KeySource, Registry, Rpc, Signer, H256};
use lexopt::prelude::*;
use serde::{Deserialize, Serialize};

use crate::cli::{number, positive};
use crate::data::{partition, Dataset, Mnist, Split};
use crate::rng::derive_seed;
use crate::train::{self, TrainConfig};
use crate::weights::{hex, ModelFile};

/// The largest model file a learner downloads: the paper's model is 2.5 MB; anything far
/// larger is not a model of this architecture, and reading it would only waste memory.
pub const MAX_MODEL_BYTES: u64 = 64 << 20;

const USAGE: &str = "\
usage: fl-agent run --config FILE [flags]

runs the learner: trains on local data each round and publishes through IPFS and the chain

  --config FILE        agent.toml (see cross/pkg/agent.toml for every key)
  --node-id N          this learner's node id (overrides node_id, FL_NODE_ID)
  --rpc-url URL        Ethereum JSON-RPC endpoint (overrides rpc_url, ETH_RPC_URL)
  --registry ADDRESS   registry contract (overrides registry, FL_REGISTRY)
  --keystore FILE      encrypted keystore (overrides keystore, ETH_KEYSTORE)
  --password-file FILE keystore password file (ETH_PASSWORD wins over it)
  --ipfs-api URL       IPFS RPC API (overrides ipfs_api, FL_IPFS_API)
  --data DIR           the learner's data folder (overrides data_dir, FL_DATA_DIR)
  --state-dir DIR      where progress is kept (overrides state_dir, FL_STATE_DIR)
  --local-epochs N     epochs per round (overrides local_epochs)
  --batch-size N       examples per step (overrides batch_size)
  --rounds N           stop once the global model of round N is published (default: never)
  --confirmations N    blocks on top of a block before acting on it (overrides
                       confirmations, FL_CONFIRMATIONS; default 0)

The signing key comes from the keystore (password from ETH_PASSWORD or the password file)
or, for development only, from ETH_PRIVATE_KEY; never from a flag.
";

/// How a demonstration board takes its share of a data set all boards hold.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    /// This board's share, 0-based.
    pub index: usize,
    /// Number of shares.
    pub count: usize,
    /// `iid` or `dirichlet:ALPHA`.
    #[serde(default = "default_split")]
    pub split: String,
    /// The same seed on every board, so that shares do not overlap.
    #[serde(default)]
    pub seed: u64,
}

fn default_split() -> String {
    "iid".into()
}

/// `agent.toml` as written; every key may also come from the environment or a flag.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_id: Option<u64>,
    rpc_url: Option<String>,
    chain_id: Option<u64>,
    registry: Option<String>,
    keystore: Option<PathBuf>,
    password_file: Option<PathBuf>,
    ipfs_api: Option<String>,
    data_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    local_epochs: Option<usize>,
    batch_size: Option<usize>,
    rounds: Option<u64>,
    seed: Option<u64>,
    train_limit: Option<usize>,
    test_limit: Option<usize>,
    poll_seconds: Option<f64>,
    confirmations: Option<u64>,
    shard: Option<ShardConfig>,
}

/// The learner's validated configuration.
#[derive(Debug, Clone)]
pub struct LearnerConfig {
    /// Node id registered on the contract for this learner's address.
    pub node_id: u64,
    /// JSON-RPC endpoint.
    pub rpc_url: String,
    /// Chain id the node must report, if set.
    pub chain_id: Option<u64>,
    /// Registry contract address.
    pub registry: Address,
    /// Where the signing key comes from (keystore flags; the environment is read later).
    pub key: KeySource,
    /// IPFS RPC API base URL.
    pub ipfs_api: String,
    /// Folder with the learner's data (MNIST IDX files).
    pub data_dir: PathBuf,
    /// Folder for saved models and the pending transaction.
    pub state_dir: PathBuf,
    /// Local epochs per round.
    pub local_epochs: usize,
    /// Training batch size.
    pub batch_size: usize,
    /// Stop once global round `rounds` is published; `None` runs until killed.
    pub rounds: Option<u64>,
    /// Seeds training; each round and node gets its own stream.
    pub seed: u64,
    /// Use only the first N training images (before sharding), for quick runs.
    pub train_limit: Option<usize>,
    /// Evaluate on only the first N test images.
    pub test_limit: Option<usize>,
    /// Longest pause between two polls of the chain.
    pub max_poll: Duration,
    /// Blocks on top of a transaction's or an event's block before the learner acts on it
    /// (0 on a development chain that never reorganises).
    pub confirmations: u64,
    /// Demonstration sharding of a data set every board holds.
    pub shard: Option<ShardConfig>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn parse_env<T: std::str::FromStr>(name: &str) -> Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    match env(name) {
        None => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|e| anyhow::anyhow!("environment variable {name}={text:?} is not valid: {e}")),
    }
}

impl LearnerConfig {
    /// Builds the config from `--config FILE`, then the environment, then flags (each
    /// overriding the one before). `Ok(None)` means `--help` was printed.
    pub fn parse(args: Vec<OsString>) -> Result<Option<LearnerConfig>> {
        let mut parser = lexopt::Parser::from_args(args);
        let mut flags = FileConfig::default();
        let mut config_path: Option<PathBuf> = None;
        while let Some(arg) = parser.next()? {
            match arg {
                Long("config") => config_path = Some(PathBuf::from(parser.value()?)),
                Long("node-id") => flags.node_id = Some(number(&mut parser, "--node-id")?),
                Long("rpc-url") => flags.rpc_url = Some(parser.value()?.string()?),
                Long("registry") => flags.registry = Some(parser.value()?.string()?),
                Long("keystore") => flags.keystore = Some(PathBuf::from(parser.value()?)),
                Long("password-file") => flags.password_file = Some(PathBuf::from(parser.value()?)),
                Long("ipfs-api") => flags.ipfs_api = Some(parser.value()?.string()?),
                Long("data") => flags.data_dir = Some(PathBuf::from(parser.value()?)),
                Long("state-dir") => flags.state_dir = Some(PathBuf::from(parser.value()?)),
                Long("local-epochs") => flags.local_epochs = Some(positive(number(&mut parser, "--local-epochs")?, "--local-epochs")?),
                Long("batch-size") => flags.batch_size = Some(positive(number(&mut parser, "--batch-size")?, "--batch-size")?),
                Long("rounds") => flags.rounds = Some(number(&mut parser, "--rounds")?),
                Long("confirmations") => flags.confirmations = Some(number(&mut parser, "--confirmations")?),
                Short('h') | Long("help") => {
                    print!("{USAGE}");
                    return Ok(None);
                }
                _ => return Err(arg.unexpected().into()),
            }
        }
        let file = match &config_path {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
                toml::from_str::<FileConfig>(&text).with_context(|| format!("parsing config {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let from_env = FileConfig {
            node_id: parse_env("FL_NODE_ID")?,
            rpc_url: env("ETH_RPC_URL"),
            registry: env("FL_REGISTRY"),
            ipfs_api: env("FL_IPFS_API"),
            data_dir: env("FL_DATA_DIR").map(PathBuf::from),
            state_dir: env("FL_STATE_DIR").map(PathBuf::from),
            confirmations: parse_env("FL_CONFIRMATIONS")?,
            ..FileConfig::default()
        };
        let where_ = config_path.as_ref().map(|p| format!(" (in {})", p.display())).unwrap_or_default();
        let pick = |a: Option<String>, b: Option<String>, c: Option<String>| a.or(b).or(c);
        let node_id = flags.node_id.or(from_env.node_id).or(file.node_id).with_context(|| {
            format!("no node id: set node_id{where_}, FL_NODE_ID or --node-id")
        })?;
        let registry_text = pick(flags.registry, from_env.registry, file.registry)
            .with_context(|| format!("no registry address: set registry{where_}, FL_REGISTRY or --registry"))?;
        let registry: Address = registry_text
            .parse()
            .map_err(|e| anyhow::anyhow!("registry address {registry_text:?}{where_} is not a 0x-prefixed 20-byte address: {e}"))?;
        let rpc_url = pick(flags.rpc_url, from_env.rpc_url, file.rpc_url)
            .with_context(|| format!("no JSON-RPC URL: set rpc_url{where_}, ETH_RPC_URL or --rpc-url"))?;
        let ipfs_api = pick(flags.ipfs_api, from_env.ipfs_api, file.ipfs_api)
            .with_context(|| format!("no IPFS API URL: set ipfs_api{where_}, FL_IPFS_API or --ipfs-api"))?;
        let data_dir = flags.data_dir.or(from_env.data_dir).or(file.data_dir)
            .with_context(|| format!("no data folder: set data_dir{where_}, FL_DATA_DIR or --data"))?;
        let state_dir = flags.state_dir.or(from_env.state_dir).or(file.state_dir)
            .with_context(|| format!("no state folder: set state_dir{where_}, FL_STATE_DIR or --state-dir"))?;
        let local_epochs = positive(flags.local_epochs.or(file.local_epochs).unwrap_or(1), "local_epochs")?;
        let batch_size = positive(flags.batch_size.or(file.batch_size).unwrap_or(32), "batch_size")?;
        let poll = file.poll_seconds.unwrap_or(5.0);
        if !(poll > 0.0 && poll <= 3600.0) {
            bail!("poll_seconds{where_} must be between 0 and 3600, got {poll}");
        }
        let confirmations = match (flags.confirmations, from_env.confirmations, file.confirmations) {
            (Some(n), _, _) => fl_contracts::check_confirmations(n).context("--confirmations")?,
            (None, Some(n), _) => fl_contracts::check_confirmations(n).context("environment variable FL_CONFIRMATIONS")?,
            (None, None, Some(n)) => fl_contracts::check_confirmations(n).with_context(|| format!("confirmations{where_}"))?,
            (None, None, None) => 0,
        };
        if let Some(shard) = &file.shard {
            if shard.count == 0 || shard.index >= shard.count {
                bail!("[shard]{where_}: index {} must be less than count {}", shard.index, shard.count);
            }
            shard.split.parse::<Split>().with_context(|| format!("[shard] split{where_}"))?;
        }
        Ok(Some(LearnerConfig {
            node_id,
            rpc_url,
            chain_id: file.chain_id,
            registry,
            key: KeySource { keystore: flags.keystore.or(file.keystore), password_file: flags.password_file.or(file.password_file) },
            ipfs_api,
            data_dir,
            state_dir,
            local_epochs,
            batch_size,
            rounds: flags.rounds.or(file.rounds),
            seed: file.seed.unwrap_or(1),
            train_limit: file.train_limit,
            test_limit: file.test_limit,
            max_poll: Duration::from_secs_f64(poll),
            confirmations,
            shard: file.shard,
        }))
    }
}

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
            let mut shards = partition(train_set.labels(), shard.count, split, derive_seed(shard.seed, 0))?;
            train_set.into_subset(shards.swap_remove(shard.index))?
        }
    };
    if train_set.is_empty() {
        bail!("learner {}: no training data in {}", config.node_id, config.data_dir.display());
    }
    Ok((train_set, test_set))
}

/// What the state folder remembers between restarts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct PendingState {
    /// The round of the registering transaction below.
    round: u64,
    /// Hash of a `setLocalWeight` transaction sent but not yet seen mined.
    tx: Option<H256>,
}

/// The learner's state folder: `round-R.bin` local models and `pending.json`.
struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    fn open(dir: &Path) -> Result<StateDir> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating state folder {}", dir.display()))?;
        Ok(StateDir { dir: dir.to_path_buf() })
    }

    fn model_path(&self, round: u64) -> PathBuf {
        self.dir.join(format!("round-{round}.bin"))
    }

    /// The finished local model of `round`, if one was saved and is intact.
    fn local_model(&self, round: u64) -> Option<ModelFile> {
        let path = self.model_path(round);
        if !path.exists() {
            return None;
        }
        match ModelFile::load(&path) {
            Ok(model) if model.round == round => Some(model),
            Ok(model) => {
                log(&format!("ignoring {}: it is a round-{} model", path.display(), model.round));
                None
            }
            Err(err) => {
                log(&format!("ignoring unreadable {}: {err:#}", path.display()));
                None
            }
        }
    }

    fn save_model(&self, model: &ModelFile) -> Result<()> {
        write_atomic(&self.model_path(model.round), &model.to_bytes())
    }

    fn pending(&self) -> PendingState {
        let path = self.dir.join("pending.json");
        std::fs::read(&path).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default()
    }

    fn set_pending(&self, state: &PendingState) -> Result<()> {
        write_atomic(&self.dir.join("pending.json"), &serde_json::to_vec(state)?)
    }

    /// Drops local models of rounds before `round`: only the current one is ever needed.
    fn prune(&self, round: u64) {
        for old in round.saturating_sub(3)..round {
            let _ = std::fs::remove_file(self.model_path(old));
        }
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a crash leaves
/// either the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

fn log(message: &str) {
    eprintln!("fl-agent: {message}");
}

/// Polls with a pause that doubles from 0.5 s up to `max`, so a fresh round is noticed
/// quickly while an idle learner costs the node little.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Backoff {
        Backoff { next: Duration::from_millis(500).min(max), max }
    }
    fn wait(&mut self) {
        std::thread::sleep(self.next);
        self.next = (self.next * 2).min(self.max);
    }
}

/// Runs the learner until global round `config.rounds` is published (or forever).
pub fn run(config: &LearnerConfig) -> Result<()> {
    let (train_set, test_set) = load_data(config)?;
    let state = StateDir::open(&config.state_dir)?;
    let signer = Signer::from_source(&config.key)?;
    let rpc = Rpc::new(&config.rpc_url)?;
    let client = Client::new(rpc, signer, config.chain_id)?.with_confirmations(config.confirmations);
    let registry = Registry::at(&client, config.registry);
    let ipfs = fl_ipfs::Client::new(&config.ipfs_api);
    log(&format!(
        "learner {} ({:?}) on chain {} registry {:?} ({} confirmations), IPFS {}, {} training / {} test images",
        config.node_id,
        client.address(),
        client.chain_id(),
        config.registry,
        config.confirmations,
        config.ipfs_api,
        train_set.len(),
        test_set.len()
    ));
    wait_until_registered(&registry, config)?;

    // Events are followed from the (confirmed) block where we start; anything older is
    // already reflected in the contract's current round, read at that block or later.
    let mut cursor = client.confirmed_head()?;
    // A board on flaky Wi-Fi loses its node now and then: such failures are retried
    // (everything needed to resume is on chain or in the state folder); any other error
    // ends the run with its cause.
    let mut retry = Backoff::new(Duration::from_secs(60));
    loop {
        match step(config, &registry, &ipfs, &state, &mut cursor, &train_set, &test_set) {
            Ok(Flow::Done) => return Ok(()),
            Ok(Flow::Continue) => retry = Backoff::new(Duration::from_secs(60)),
            Err(err) if is_transient(&err) => {
                log(&format!("{err:#}; retrying in {:?}", retry.next));
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

/// True if `err` comes from a node (chain or IPFS) that did not answer, or not in time, or
/// from a transaction the chain dropped: a later attempt may succeed. Reverts, refused or
/// malformed replies and local errors are not transient.
pub fn is_transient(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<fl_contracts::Error>(),
            Some(fl_contracts::Error::Transport { .. } | fl_contracts::Error::Timeout { .. } | fl_contracts::Error::Dropped { .. })
        ) || matches!(
            cause.downcast_ref::<fl_ipfs::Error>(),
            Some(fl_ipfs::Error::Unreachable { .. } | fl_ipfs::Error::Timeout { .. })
        )
    })
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
    submit_round(config, registry, ipfs, state, round, train_set, test_set)?;
    state.prune(round);
    Ok(Flow::Continue)
}

/// Trains (or reuses the saved model of) `round`, uploads it and registers it.
fn submit_round(
    config: &LearnerConfig,
    registry: &Registry,
    ipfs: &fl_ipfs::Client,
    state: &StateDir,
    round: u64,
    train_set: &Dataset,
    test_set: &Dataset,
) -> Result<()> {
    let model = match state.local_model(round) {
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
            let train_config = TrainConfig {
                epochs: config.local_epochs,
                batch_size: config.batch_size,
                learning_rate: 0.001,
                seed: derive_seed(derive_seed(config.seed, round), config.node_id),
                progress: Some(format!("learner {} round {round}", config.node_id)),
            };
            let started = Instant::now();
            let mut model = train::train(&start, train_set, None, &train_config, &mut |_| {})?.model;
            model.round = round;
            log(&format!("round {round}: trained {} epoch(s) in {:.1}s", config.local_epochs, started.elapsed().as_secs_f64()));
            state.save_model(&model)?;
            model
        }
    };
    let evaluation = train::evaluate(&model, test_set)?;
    let bytes = model.to_bytes();
    let digest = crate::weights::sha256(&bytes);
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
    let mut backoff = Backoff::new(config.max_poll);
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
    let mut backoff = Backoff::new(max_poll);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fl-learner-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    const CONFIG: &str = r#"
node_id = 3
rpc_url = "http://127.0.0.1:8545"
registry = "0x5fbdb2315678afecb367f032d93f642f64180aa3"
ipfs_api = "http://127.0.0.1:5001"
data_dir = "/data"
state_dir = "/state"
local_epochs = 5
[shard]
index = 1
count = 2
split = "dirichlet:0.5"
seed = 9
"#;

    #[test]
    fn config_file_is_read_and_flags_override_it() {
        let dir = temp_dir("config");
        let path = dir.join("agent.toml");
        std::fs::write(&path, CONFIG).unwrap();
        let config = LearnerConfig::parse(args(&["--config", path.to_str().unwrap(), "--local-epochs", "2", "--node-id", "4"]))
            .unwrap()
            .unwrap();
        assert_eq!(config.node_id, 4);
        assert_eq!(config.local_epochs, 2);
        assert_eq!(config.batch_size, 32);
        assert_eq!(config.data_dir, PathBuf::from("/data"));
        assert_eq!(config.shard, Some(ShardConfig { index: 1, count: 2, split: "dirichlet:0.5".into(), seed: 9 }));
        assert_eq!(format!("{:?}", config.registry), "0x5fbdb2315678afecb367f032d93f642f64180aa3");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn config_errors_name_the_file_and_the_key() {
        let dir = temp_dir("config-errors");
        let path = dir.join("agent.toml");
        let path_arg = path.to_str().unwrap();
        for (text, expected) in [
            ("node_id = 1\nnode_idd = 2\n", "unknown field `node_idd`"),
            ("node_id = \"one\"\n", "invalid type"),
            (&CONFIG.replace("index = 1", "index = 2"), "index 2 must be less than count 2"),
            (&CONFIG.replace("dirichlet:0.5", "zipf"), "expected `iid` or `dirichlet:ALPHA`"),
            (&CONFIG.replace("0x5fbdb2315678afecb367f032d93f642f64180aa3", "0x12"), "not a 0x-prefixed 20-byte address"),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = LearnerConfig::parse(args(&["--config", path_arg])).unwrap_err();
            let message = format!("{err:#}");
            assert!(message.contains(expected) && message.contains(path_arg), "{message}");
        }
        let err = LearnerConfig::parse(args(&["--config", dir.join("missing.toml").to_str().unwrap()])).unwrap_err();
        assert!(format!("{err:#}").contains("missing.toml"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn confirmations_come_from_the_file_or_the_flag_and_bad_values_are_refused() {
        let dir = temp_dir("confirmations");
        let path = dir.join("agent.toml");
        let path_arg = path.to_str().unwrap();
        std::fs::write(&path, CONFIG).unwrap();
        assert_eq!(LearnerConfig::parse(args(&["--config", path_arg])).unwrap().unwrap().confirmations, 0, "default");
        std::fs::write(&path, format!("confirmations = 3\n{CONFIG}")).unwrap();
        assert_eq!(LearnerConfig::parse(args(&["--config", path_arg])).unwrap().unwrap().confirmations, 3);
        let flag = LearnerConfig::parse(args(&["--config", path_arg, "--confirmations", "12"])).unwrap().unwrap();
        assert_eq!(flag.confirmations, 12, "the flag overrides the file");

        for (text, expected) in [
            ("confirmations = 65\n", "65 confirmations is more than 64"),
            ("confirmations = -1\n", "invalid value"),
            ("confirmations = \"two\"\n", "invalid type"),
        ] {
            std::fs::write(&path, format!("{text}{CONFIG}")).unwrap();
            let message = format!("{:#}", LearnerConfig::parse(args(&["--config", path_arg])).unwrap_err());
            assert!(message.contains(expected) && message.contains(path_arg), "{message}");
        }
        std::fs::write(&path, CONFIG).unwrap();
        let message = format!("{:#}", LearnerConfig::parse(args(&["--config", path_arg, "--confirmations", "x"])).unwrap_err());
        assert!(message.contains("--confirmations: \"x\" is not valid"), "{message}");
        let message = format!("{:#}", LearnerConfig::parse(args(&["--config", path_arg, "--confirmations", "100"])).unwrap_err());
        assert!(message.starts_with("--confirmations: 100 confirmations is more than 64"), "{message}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_unanswered_requests_are_retried() {
        let transport = fl_contracts::Error::Transport { url: "http://127.0.0.1:1".into(), method: "eth_blockNumber".into(), detail: "refused".into() };
        assert!(is_transient(&anyhow::Error::from(transport).context("waiting for round 2")));
        let timeout = fl_ipfs::Error::Timeout { api: "http://127.0.0.1:5001".into(), op: "cat".into(), after: Duration::from_secs(1) };
        assert!(is_transient(&anyhow::Error::from(timeout).context("fetching the global model")));
        let revert = fl_contracts::Error::Revert { call: "setLocalWeight".into(), name: "WrongRound".into(), args: vec![], data: vec![] };
        assert!(!is_transient(&anyhow::Error::from(revert)));
        let tampered = fl_ipfs::Error::DigestMismatch { api: "a".into(), cid: "b".into(), expected: "c".into(), actual: "d".into() };
        assert!(!is_transient(&anyhow::Error::from(tampered)));
        assert!(!is_transient(&anyhow::anyhow!("training diverged")));
        let dropped = fl_contracts::Error::Dropped { what: "setGlobalWeight".into(), hash: H256::repeat_byte(1) };
        assert!(is_transient(&anyhow::Error::from(dropped).context("publishing the global model of round 1")));
    }

    #[test]
    fn state_dir_keeps_the_finished_model_and_ignores_damaged_ones() {
        let dir = temp_dir("state");
        let state = StateDir::open(&dir).unwrap();
        assert!(state.local_model(2).is_none());
        let mut model = ModelFile::initial(5).unwrap();
        model.round = 2;
        model.n_samples = 10;
        state.save_model(&model).unwrap();
        assert_eq!(state.local_model(2), Some(model.clone()));
        // A truncated file (a crash while copying it by hand, a full disk) is not reused.
        let bytes = std::fs::read(state.model_path(2)).unwrap();
        std::fs::write(state.model_path(2), &bytes[..bytes.len() / 2]).unwrap();
        assert!(state.local_model(2).is_none());
        // A model saved under the wrong round is not reused either.
        std::fs::write(state.model_path(3), &bytes).unwrap();
        assert!(state.local_model(3).is_none());

        assert_eq!(state.pending(), PendingState::default());
        let pending = PendingState { round: 2, tx: Some(H256::repeat_byte(7)) };
        state.set_pending(&pending).unwrap();
        assert_eq!(state.pending(), pending);
        state.prune(4);
        assert!(!state.model_path(2).exists() && !state.model_path(3).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
