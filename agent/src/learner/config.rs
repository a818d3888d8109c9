//! The learner's configuration: `agent.toml`, then the environment, then `fl-agent run`'s
//! flags, each overriding the one before, validated once into a [`LearnerConfig`]. The
//! chain and IPFS endpoints are read by `fl_contracts::endpoints`, as in the aggregator.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use fl_contracts::endpoints::{EndpointSettings, Endpoints, Missing};
use fl_contracts::Address;
use fl_core::data::Split;
use fl_core::encoding::Encoding;
use fl_core::flags::{number, positive, DataFlags};
use lexopt::prelude::*;
use serde::Deserialize;

const USAGE: &str = "\
usage: fl-agent run --config FILE [flags]

runs the learner: trains on local data each round and publishes through IPFS and the chain

";

/// The flags `run` and `status` share (`status` reads the same configuration).
pub(super) const FLAGS: &str = "  --config FILE        agent.toml (see cross/pkg/agent.toml for every key)
  --node-id N          this learner's node id (overrides node_id, FL_NODE_ID)
  --rpc-url URL        Ethereum JSON-RPC endpoint (overrides rpc_url, ETH_RPC_URL)
  --registry ADDRESS   registry contract (overrides registry, FL_REGISTRY)
  --keystore FILE      encrypted keystore (overrides keystore, ETH_KEYSTORE)
  --password-file FILE keystore password file (ETH_PASSWORD wins over it)
  --chain-id N         refuse to run unless the node is on this chain (overrides chain_id)
  --ipfs-api URL       IPFS RPC API (overrides ipfs_api, FL_IPFS_API)
  --data PATH          the learner's data (overrides data_dir, FL_DATA_DIR): the MNIST or
                       IDX folder, the CSV file or the root of the class folders of images
  --data-format F      mnist (default), idx, csv or images (overrides data_format)
  --test-data PATH     the test set in the same format (overrides test_data)
  --test-fraction X    or hold out this share of the data for testing (overrides
                       test_fraction)
  --label-column C     csv: the label column, by name or 1-based number (overrides
                       label_column; default: the one named `label`, else the last)
  --state-dir DIR      where progress is kept (overrides state_dir, FL_STATE_DIR)
  --local-epochs N     epochs per round (overrides local_epochs)
  --batch-size N       examples per step (overrides batch_size)
  --rounds N           stop once the global model of round N is published (default: never)
  --confirmations N    blocks on top of a block before acting on it, for chains that
                       reorganise (overrides confirmations, FL_CONFIRMATIONS; default 0)
  --keep-rounds N      keep this many of the learner's latest uploads pinned on its IPFS
                       node, unpin older ones and let the node collect them (overrides
                       keep_rounds, FL_KEEP_ROUNDS; default 3; 0 keeps every upload)
  --update-encoding E  how updates are sent: int8 (default; 0.62 MB), f16 (1.24 MB), or
                       f32 (2.48 MB, the full weights) (overrides update_encoding,
                       FL_UPDATE_ENCODING)

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
    data_format: Option<String>,
    test_data: Option<PathBuf>,
    test_fraction: Option<f64>,
    label_column: Option<String>,
    state_dir: Option<PathBuf>,
    local_epochs: Option<usize>,
    batch_size: Option<usize>,
    rounds: Option<u64>,
    seed: Option<u64>,
    train_limit: Option<usize>,
    test_limit: Option<usize>,
    poll_seconds: Option<f64>,
    confirmations: Option<u64>,
    keep_rounds: Option<u64>,
    update_encoding: Option<String>,
    slowdown: Option<f64>,
    shard: Option<ShardConfig>,
}

/// The learner's validated configuration.
#[derive(Debug, Clone)]
pub struct LearnerConfig {
    /// Node id registered on the contract for this learner's address.
    pub node_id: u64,
    /// The JSON-RPC endpoint, the chain id it must report (if set), where the signing key
    /// comes from (the environment is read when it is loaded), the IPFS RPC API and the
    /// confirmations to wait for before acting on a block (see `fl_contracts::finality`).
    pub endpoints: Endpoints,
    /// Registry contract address.
    pub registry: Address,
    /// Where the learner's data is and how to read it (`data_dir`, `data_format`,
    /// `test_data`, `test_fraction`, `label_column`; the path is checked when the data is
    /// loaded, once the federation's model spec says what an example is).
    pub data: DataFlags,
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
    /// How many of its latest uploads the learner keeps pinned: once its update of round
    /// R is recorded, it unpins its uploads of rounds up to R - keep_rounds and asks its
    /// IPFS node to collect them. 0 keeps every upload.
    pub keep_rounds: u64,
    /// How the learner writes its updates (see `fl_core::encoding`): int8 or f16 send the
    /// difference from the global model it started from, f32 the full weights.
    pub update_encoding: Encoding,
    /// Experiments only: emulate a board this many times slower by waiting, after each
    /// round's training, (slowdown - 1) times as long as it took (1: no wait).
    pub slowdown: f64,
    /// Demonstration sharding of a data set every board holds.
    pub shard: Option<ShardConfig>,
}

/// The default of `keep_rounds`: the current round's upload and the two before it, 7.5 MB
/// of models, stay on the board (see agent/README.md for why).
pub const DEFAULT_KEEP_ROUNDS: u64 = 3;

/// Reads a number from the environment variable `name`, if it is set and not empty.
fn parse_env<T: std::str::FromStr>(name: &str) -> Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name).ok().filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|e| anyhow::anyhow!("environment variable {name}={text:?} is not valid: {e}")),
    }
}

/// Reads a path from the environment variable `name`, if it is set and not empty.
fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

impl LearnerConfig {
    /// Builds the config from `--config FILE`, then the environment, then flags (each
    /// overriding the one before). `Ok(None)` means `--help` was printed.
    pub fn parse(args: Vec<OsString>) -> Result<Option<LearnerConfig>> {
        LearnerConfig::parse_with_help(args, &format!("{USAGE}{FLAGS}"))
    }

    /// [`LearnerConfig::parse`] for a command whose `--help` prints `help`.
    pub fn parse_with_help(args: Vec<OsString>, help: &str) -> Result<Option<LearnerConfig>> {
        let mut parser = lexopt::Parser::from_args(args);
        let mut flags = FileConfig::default();
        let mut flag_data = DataFlags::default();
        let mut flag_endpoints = EndpointSettings::default();
        let mut config_path: Option<PathBuf> = None;
        while let Some(arg) = parser.next()? {
            match arg {
                Long("config") => config_path = Some(PathBuf::from(parser.value()?)),
                Long("node-id") => flags.node_id = Some(number(&mut parser, "--node-id")?),
                Long(flag) if EndpointSettings::handles(flag) => {
                    let flag = flag.to_string();
                    flag_endpoints.set_flag(&flag, parser.value()?)?;
                }
                Long(flag) if DataFlags::handles(flag) => {
                    let flag = flag.to_string();
                    flag_data.set(&flag, &mut parser)?;
                }
                Long("state-dir") => flags.state_dir = Some(PathBuf::from(parser.value()?)),
                Long("local-epochs") => flags.local_epochs = Some(positive(number(&mut parser, "--local-epochs")?, "--local-epochs")?),
                Long("batch-size") => flags.batch_size = Some(positive(number(&mut parser, "--batch-size")?, "--batch-size")?),
                Long("rounds") => flags.rounds = Some(number(&mut parser, "--rounds")?),
                Long("keep-rounds") => flags.keep_rounds = Some(number(&mut parser, "--keep-rounds")?),
                Long("update-encoding") => flags.update_encoding = Some(parser.value()?.string()?),
                Short('h') | Long("help") => {
                    print!("{help}");
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
        let where_ = config_path.as_ref().map(|p| format!(" (in {})", p.display())).unwrap_or_default();
        let node_id = flags
            .node_id
            .or(parse_env("FL_NODE_ID")?)
            .or(file.node_id)
            .with_context(|| format!("no node id: set node_id{where_}, FL_NODE_ID or --node-id"))?;
        let file_endpoints = EndpointSettings {
            rpc_url: file.rpc_url,
            chain_id: file.chain_id,
            registry: file.registry,
            keystore: file.keystore,
            password_file: file.password_file,
            ipfs_api: file.ipfs_api,
            confirmations: file.confirmations,
        };
        let endpoints = flag_endpoints.or(EndpointSettings::from_env()?).or(file_endpoints).finish(Missing::Fail, &where_)?;
        let registry =
            endpoints.registry.with_context(|| format!("no registry address: set registry{where_}, FL_REGISTRY or --registry"))?;
        let env_data = DataFlags { path: env_path("FL_DATA_DIR"), ..DataFlags::default() };
        let file_data = DataFlags {
            path: file.data_dir,
            format: file.data_format,
            test: file.test_data,
            test_fraction: file.test_fraction,
            label_column: file.label_column,
        };
        let data = flag_data.or(env_data).or(file_data);
        ensure!(data.path.is_some(), "no data: set data_dir{where_}, FL_DATA_DIR or --data");
        // A mistyped format is reported now, not once the chain is reached.
        let format = data.format.as_deref().unwrap_or("mnist");
        format.parse::<fl_core::data::DataFormat>().with_context(|| format!("data_format{where_}"))?;
        let state_dir = flags
            .state_dir
            .or(env_path("FL_STATE_DIR"))
            .or(file.state_dir)
            .with_context(|| format!("no state folder: set state_dir{where_}, FL_STATE_DIR or --state-dir"))?;
        let local_epochs = positive(flags.local_epochs.or(file.local_epochs).unwrap_or(1), "local_epochs")?;
        let batch_size = positive(flags.batch_size.or(file.batch_size).unwrap_or(32), "batch_size")?;
        let poll = file.poll_seconds.unwrap_or(5.0);
        if !(poll > 0.0 && poll <= 3600.0) {
            bail!("poll_seconds{where_} must be between 0 and 3600, got {poll}");
        }
        if let Some(shard) = &file.shard {
            if shard.count == 0 || shard.index >= shard.count {
                bail!("[shard]{where_}: index {} must be less than count {}", shard.index, shard.count);
            }
            shard.split.parse::<Split>().with_context(|| format!("[shard] split{where_}"))?;
        }
        let slowdown = file.slowdown.unwrap_or(1.0);
        if !(1.0..=1000.0).contains(&slowdown) {
            bail!("slowdown{where_} must be between 1 (a board's own speed) and 1000, got {slowdown}");
        }
        let update_encoding = match (flags.update_encoding, std::env::var("FL_UPDATE_ENCODING").ok().filter(|v| !v.is_empty())) {
            (Some(text), _) => text.parse().context("--update-encoding")?,
            (None, Some(text)) => text.parse().context("environment variable FL_UPDATE_ENCODING")?,
            (None, None) => match &file.update_encoding {
                Some(text) => text.parse().with_context(|| format!("update_encoding{where_}"))?,
                None => Encoding::default(),
            },
        };
        Ok(Some(LearnerConfig {
            node_id,
            endpoints,
            registry,
            data,
            state_dir,
            local_epochs,
            batch_size,
            rounds: flags.rounds.or(file.rounds),
            keep_rounds: flags.keep_rounds.or(parse_env("FL_KEEP_ROUNDS")?).or(file.keep_rounds).unwrap_or(DEFAULT_KEEP_ROUNDS),
            seed: file.seed.unwrap_or(1),
            train_limit: file.train_limit,
            test_limit: file.test_limit,
            max_poll: Duration::from_secs_f64(poll),
            update_encoding,
            slowdown,
            shard: file.shard,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learner::temp_dir;

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
        let config =
            LearnerConfig::parse(args(&["--config", path.to_str().unwrap(), "--local-epochs", "2", "--node-id", "4"])).unwrap().unwrap();
        assert_eq!(config.node_id, 4);
        assert_eq!(config.local_epochs, 2);
        assert_eq!(config.batch_size, 32);
        assert_eq!(config.data.path, Some(PathBuf::from("/data")));
        assert_eq!(config.update_encoding, Encoding::Int8, "the default");
        let f16 = LearnerConfig::parse(args(&["--config", path.to_str().unwrap(), "--update-encoding", "f16"])).unwrap().unwrap();
        assert_eq!(f16.update_encoding, Encoding::F16);
        std::fs::write(&path, format!("update_encoding = \"f32\"\n{CONFIG}")).unwrap();
        assert_eq!(LearnerConfig::parse(args(&["--config", path.to_str().unwrap()])).unwrap().unwrap().update_encoding, Encoding::F32);
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
            (&format!("update_encoding = \"int4\"\n{CONFIG}"), "update_encoding (in"),
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
        assert_eq!(LearnerConfig::parse(args(&["--config", path_arg])).unwrap().unwrap().endpoints.confirmations, 0, "default");
        std::fs::write(&path, format!("confirmations = 3\n{CONFIG}")).unwrap();
        assert_eq!(LearnerConfig::parse(args(&["--config", path_arg])).unwrap().unwrap().endpoints.confirmations, 3);
        let flag = LearnerConfig::parse(args(&["--config", path_arg, "--confirmations", "12"])).unwrap().unwrap();
        assert_eq!(flag.endpoints.confirmations, 12, "the flag overrides the file");

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
        assert!(message.contains("--confirmations \"x\": expected a whole number"), "{message}");
        let message = format!("{:#}", LearnerConfig::parse(args(&["--config", path_arg, "--confirmations", "100"])).unwrap_err());
        assert!(message.starts_with("--confirmations: 100 confirmations is more than 64"), "{message}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn keep_rounds_defaults_to_three_and_zero_keeps_everything() {
        let dir = temp_dir("keep-rounds");
        let path = dir.join("agent.toml");
        let path_arg = path.to_str().unwrap();
        std::fs::write(&path, CONFIG).unwrap();
        assert_eq!(LearnerConfig::parse(args(&["--config", path_arg])).unwrap().unwrap().keep_rounds, DEFAULT_KEEP_ROUNDS);
        std::fs::write(&path, format!("keep_rounds = 0\n{CONFIG}")).unwrap();
        assert_eq!(LearnerConfig::parse(args(&["--config", path_arg])).unwrap().unwrap().keep_rounds, 0);
        let flag = LearnerConfig::parse(args(&["--config", path_arg, "--keep-rounds", "5"])).unwrap().unwrap();
        assert_eq!(flag.keep_rounds, 5, "the flag overrides the file");
        std::fs::write(&path, format!("keep_rounds = -2\n{CONFIG}")).unwrap();
        let message = format!("{:#}", LearnerConfig::parse(args(&["--config", path_arg])).unwrap_err());
        assert!(message.contains(path_arg) && message.contains("keep_rounds"), "{message}");
        std::fs::write(&path, CONFIG).unwrap();
        let message = format!("{:#}", LearnerConfig::parse(args(&["--config", path_arg, "--keep-rounds", "all"])).unwrap_err());
        assert!(message.contains("--keep-rounds: \"all\" is not valid"), "{message}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
