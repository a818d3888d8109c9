//! Where the chain, the registry, the signing key and IPFS are, read the same way by the
//! learner and the aggregator: Foundry's flag names and environment variables
//! (`--rpc-url` / `ETH_RPC_URL`, `--keystore` / `ETH_KEYSTORE`, ...) plus `FL_REGISTRY` and
//! `FL_IPFS_API`, and the confirmations to wait for (`--confirmations` / `FL_CONFIRMATIONS`,
//! see [`crate::finality`]), one layer overriding the next (flags, then the environment, then a
//! config file), and one validation of what results.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::finality::check_confirmations;
use crate::{Address, Client, KeySource, Rpc, Signer};

/// Help for the chain flags handled here, for every command that takes them.
pub const CHAIN_HELP: &str = "\
  --rpc-url URL          JSON-RPC endpoint (default $ETH_RPC_URL, else http://127.0.0.1:8545)
  --chain-id N           refuse to run unless the node is on this chain
  --registry ADDRESS     registry contract (default $FL_REGISTRY)
  --keystore FILE        encrypted JSON keystore (default $ETH_KEYSTORE); password from
                         $ETH_PASSWORD or --password-file; else $ETH_PRIVATE_KEY (development)
  --password-file FILE   file holding the keystore password
  --confirmations N      wait for N blocks on top of each transaction, read N blocks below
                         the head, for chains that reorganise (default $FL_CONFIRMATIONS, else 0)
";

/// Help for the IPFS flag handled here.
pub const IPFS_HELP: &str = "\
  --ipfs-api URL         IPFS RPC API (default $FL_IPFS_API, else http://127.0.0.1:5001)
";

/// Where the chain, the registry, the key and IPFS are, checked.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub rpc_url: String,
    pub chain_id: Option<u64>,
    pub registry: Option<Address>,
    pub key: KeySource,
    pub ipfs_api: String,
    /// Blocks on top of a transaction's or an event's block before acting on it (see
    /// [`crate::finality`]); 0 on a development chain that never reorganises.
    pub confirmations: u64,
}

/// Endpoint settings from one source (flags, the environment or a config file), as given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EndpointSettings {
    pub rpc_url: Option<String>,
    pub chain_id: Option<u64>,
    pub registry: Option<String>,
    pub keystore: Option<PathBuf>,
    pub password_file: Option<PathBuf>,
    pub ipfs_api: Option<String>,
    pub confirmations: Option<u64>,
}

/// What to do when no source gives an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// Use the loopback node (`http://127.0.0.1:8545`, `http://127.0.0.1:5001`): the
    /// aggregator's and the operator's commands, run beside their nodes.
    Loopback,
    /// Fail, saying where to set it: a learner on a board must be told where its nodes are.
    Fail,
}

/// A number of confirmations given as text by `what` (a flag or a variable, written before
/// the value with `joiner`), parsed and checked against [`check_confirmations`].
fn parse_confirmations(text: &str, what: &str, joiner: &str) -> Result<u64> {
    let n = text.parse().with_context(|| format!("{what}{joiner}{text:?}: expected a whole number"))?;
    check_confirmations(n).context(what.to_string())
}

/// Keeps an optional string only if it is not empty.
fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

impl EndpointSettings {
    /// True for the long flags (without `--`) that [`EndpointSettings::set_flag`] takes,
    /// including the refused `private-key` and `password`.
    pub fn handles(flag: &str) -> bool {
        matches!(
            flag,
            "rpc-url" | "chain-id" | "registry" | "keystore" | "password-file" | "ipfs-api" | "confirmations" | "private-key" | "password"
        )
    }

    /// Sets `--flag VALUE` (one of [`EndpointSettings::handles`]). Keys and passwords are
    /// refused: a command line is visible to every user of the machine.
    pub fn set_flag(&mut self, flag: &str, value: OsString) -> Result<()> {
        let text = |value: OsString| value.into_string().map_err(|v| anyhow::anyhow!("--{flag} {v:?}: not valid UTF-8"));
        match flag {
            "rpc-url" => self.rpc_url = Some(text(value)?),
            "chain-id" => {
                let value = text(value)?;
                self.chain_id = Some(value.parse().with_context(|| format!("--chain-id {value:?}: expected a whole number"))?);
            }
            "registry" => self.registry = Some(text(value)?),
            "keystore" => self.keystore = Some(PathBuf::from(value)),
            "password-file" => self.password_file = Some(PathBuf::from(value)),
            "ipfs-api" => self.ipfs_api = Some(text(value)?),
            "confirmations" => self.confirmations = Some(parse_confirmations(&text(value)?, "--confirmations", " ")?),
            _ => bail!(
                "--{flag}: keys and passwords are never taken from the command line; use ETH_PRIVATE_KEY, ETH_PASSWORD or --password-file"
            ),
        }
        Ok(())
    }

    /// The settings the environment gives: `ETH_RPC_URL`, `FL_REGISTRY`, `FL_IPFS_API`,
    /// `FL_CONFIRMATIONS` (empty counts as unset). The key's variables (`ETH_KEYSTORE`,
    /// `ETH_PASSWORD`, `ETH_PRIVATE_KEY`) are read when the key is loaded ([`Signer::from_source`]).
    pub fn from_env() -> Result<EndpointSettings> {
        let env = |name: &str| non_empty(std::env::var(name).ok());
        let confirmations = match env("FL_CONFIRMATIONS") {
            Some(text) => Some(parse_confirmations(&text, "environment variable FL_CONFIRMATIONS", "=")?),
            None => None,
        };
        Ok(EndpointSettings {
            rpc_url: env("ETH_RPC_URL"),
            registry: env("FL_REGISTRY"),
            ipfs_api: env("FL_IPFS_API"),
            confirmations,
            ..EndpointSettings::default()
        })
    }

    /// These settings, with the gaps filled from `lower` (a source of lower precedence).
    pub fn or(self, lower: EndpointSettings) -> EndpointSettings {
        EndpointSettings {
            rpc_url: non_empty(self.rpc_url).or(non_empty(lower.rpc_url)),
            chain_id: self.chain_id.or(lower.chain_id),
            registry: non_empty(self.registry).or(non_empty(lower.registry)),
            keystore: self.keystore.or(lower.keystore),
            password_file: self.password_file.or(lower.password_file),
            ipfs_api: non_empty(self.ipfs_api).or(non_empty(lower.ipfs_api)),
            confirmations: self.confirmations.or(lower.confirmations),
        }
    }

    /// Checks the settings. `source` names where a file's values came from in errors
    /// (e.g. ` (in agent.toml)`, or empty); `missing` says what an unset endpoint means.
    pub fn finish(self, missing: Missing, source: &str) -> Result<Endpoints> {
        let endpoint = |value: Option<String>, default: &str, what: &str, key: &str, env: &str, flag: &str| match (value, missing) {
            (Some(value), _) => Ok(value),
            (None, Missing::Loopback) => Ok(default.to_string()),
            (None, Missing::Fail) => Err(anyhow::anyhow!("no {what}: set {key}{source}, {env} or --{flag}")),
        };
        let registry = match self.registry {
            Some(text) => Some(parse_address(&text, &format!("registry address{source}"))?),
            None => None,
        };
        Ok(Endpoints {
            rpc_url: endpoint(self.rpc_url, "http://127.0.0.1:8545", "JSON-RPC URL", "rpc_url", "ETH_RPC_URL", "rpc-url")?,
            chain_id: self.chain_id,
            registry,
            key: KeySource { keystore: self.keystore, password_file: self.password_file },
            ipfs_api: endpoint(self.ipfs_api, "http://127.0.0.1:5001", "IPFS API URL", "ipfs_api", "FL_IPFS_API", "ipfs-api")?,
            confirmations: match self.confirmations {
                Some(n) => check_confirmations(n).with_context(|| format!("confirmations{source}"))?,
                None => 0,
            },
        })
    }
}

impl Endpoints {
    /// The registry address, or an error saying how to give it.
    pub fn registry(&self) -> Result<Address> {
        self.registry.context("no registry address: pass --registry ADDRESS or set FL_REGISTRY")
    }

    /// A client that signs with the configured key.
    pub fn signing_client(&self) -> Result<Client> {
        let signer = Signer::from_source(&self.key)?;
        Ok(Client::new(Rpc::new(&self.rpc_url)?, signer, self.chain_id)?.with_confirmations(self.confirmations))
    }

    /// A client for views and logs only.
    pub fn read_only_client(&self) -> Result<Client> {
        Ok(Client::read_only(Rpc::new(&self.rpc_url)?, self.chain_id)?.with_confirmations(self.confirmations))
    }

    /// The IPFS client.
    pub fn ipfs(&self) -> fl_ipfs::Client {
        fl_ipfs::Client::new(&self.ipfs_api)
    }

    /// The IPFS client of a long-running process: each retried failure goes to `log`, so
    /// its log shows a flaky link even when the retry succeeds.
    pub fn ipfs_logging_retries(&self, log: fn(&str)) -> fl_ipfs::Client {
        fl_ipfs::Client::with_config(&self.ipfs_api, fl_ipfs::ClientConfig { on_retry: Some(log), ..Default::default() })
    }
}

/// Parses `0x` + 40 hex digits, naming `what` in the error.
pub fn parse_address(text: &str, what: &str) -> Result<Address> {
    let bad = || anyhow::anyhow!("{what} {text:?} is not a 0x-prefixed 20-byte address (0x and 40 hex digits)");
    let digits = text.strip_prefix("0x").ok_or_else(bad)?;
    if digits.len() != 40 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    text.parse().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(pairs: &[(&str, &str)]) -> Result<EndpointSettings> {
        let mut settings = EndpointSettings::default();
        for (flag, value) in pairs {
            settings.set_flag(flag, OsString::from(value))?;
        }
        Ok(settings)
    }

    #[test]
    fn earlier_sources_win_and_empty_values_count_as_unset() {
        let high = flags(&[("rpc-url", "http://a:1"), ("registry", "")]).unwrap();
        let low = EndpointSettings {
            rpc_url: Some("http://b:2".into()),
            registry: Some("0x5fbdb2315678afecb367f032d93f642f64180aa3".into()),
            chain_id: Some(5),
            ..Default::default()
        };
        let endpoints = high.or(low).finish(Missing::Fail, "").unwrap_err();
        // The IPFS API is missing everywhere: a learner is told where to set it.
        assert_eq!(endpoints.to_string(), "no IPFS API URL: set ipfs_api, FL_IPFS_API or --ipfs-api");
        let high = flags(&[("rpc-url", "http://a:1"), ("registry", "")]).unwrap();
        let low = EndpointSettings {
            registry: Some("0x5fbdb2315678afecb367f032d93f642f64180aa3".into()),
            chain_id: Some(5),
            ..Default::default()
        };
        let endpoints = high.or(low).finish(Missing::Loopback, "").unwrap();
        assert_eq!(
            (endpoints.rpc_url.as_str(), endpoints.ipfs_api.as_str(), endpoints.chain_id),
            ("http://a:1", "http://127.0.0.1:5001", Some(5))
        );
        assert_eq!(format!("{:?}", endpoints.registry().unwrap()), "0x5fbdb2315678afecb367f032d93f642f64180aa3");
    }

    #[test]
    fn bad_values_and_keys_on_the_command_line_are_refused() {
        for text in ["0x1234", "5fbdb2315678afecb367f032d93f642f64180aa3", "0x5fbdb2315678afecb367f032d93f642f64180aZ3"] {
            let err = parse_address(text, "ADDRESS").unwrap_err().to_string();
            assert_eq!(err, format!("ADDRESS {text:?} is not a 0x-prefixed 20-byte address (0x and 40 hex digits)"));
        }
        let err = flags(&[("registry", "0x12")]).unwrap().finish(Missing::Loopback, " (in agent.toml)").unwrap_err().to_string();
        assert!(err.starts_with("registry address (in agent.toml) \"0x12\""), "{err}");
        assert!(flags(&[("chain-id", "one")]).unwrap_err().to_string().contains("--chain-id \"one\""));
        let err = flags(&[("private-key", "00")]).unwrap_err().to_string();
        assert!(err.contains("never taken from the command line"), "{err}");
    }
}
