//! The flags every networked aggregator command shares: the JSON-RPC node, the registry,
//! the signing key, the IPFS API and the confirmations to wait for, with Foundry's flag
//! names and environment fallbacks (`ETH_RPC_URL`, `FL_REGISTRY`, `ETH_KEYSTORE`,
//! `FL_IPFS_API`, `FL_CONFIRMATIONS`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use fl_contracts::{Address, Client, KeySource, Rpc, Signer};

/// Help text for the flags handled here.
pub const HELP: &str = "\
  --rpc-url URL          JSON-RPC endpoint (default $ETH_RPC_URL, else http://127.0.0.1:8545)
  --chain-id N           refuse to run unless the node is on this chain
  --registry ADDRESS     registry contract (default $FL_REGISTRY)
  --keystore FILE        encrypted JSON keystore (default $ETH_KEYSTORE); password from
                         $ETH_PASSWORD or --password-file; else $ETH_PRIVATE_KEY (development)
  --password-file FILE   file holding the keystore password
  --ipfs-api URL         IPFS RPC API (default $FL_IPFS_API, else http://127.0.0.1:5001)
  --confirmations N      blocks on top of a transaction's or an event's block before acting
                         on it, for chains that reorganise (default $FL_CONFIRMATIONS, else 0)
";

/// Where the chain, the registry, the key and IPFS are.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub rpc_url: String,
    pub chain_id: Option<u64>,
    pub registry: Option<Address>,
    pub key: KeySource,
    pub ipfs_api: String,
    /// See `fl_contracts::finality`; 0 on a development chain.
    pub confirmations: u64,
}

/// The flags as given, before the environment fills the gaps.
#[derive(Debug, Default)]
pub struct EndpointFlags {
    rpc_url: Option<String>,
    chain_id: Option<u64>,
    registry: Option<String>,
    key: KeySource,
    ipfs_api: Option<String>,
    confirmations: Option<u64>,
}

impl EndpointFlags {
    /// True for the long flags handled here.
    pub fn handles(flag: &str) -> bool {
        matches!(
            flag,
            "rpc-url" | "chain-id" | "registry" | "keystore" | "password-file" | "ipfs-api" | "confirmations" | "private-key" | "password"
        )
    }

    /// Reads the value of `--flag` (one of [`EndpointFlags::handles`]).
    pub fn take(&mut self, flag: &str, parser: &mut lexopt::Parser) -> Result<()> {
        use lexopt::ValueExt;
        match flag {
            "rpc-url" => self.rpc_url = Some(parser.value()?.string()?),
            "chain-id" => {
                let text = parser.value()?.string()?;
                self.chain_id = Some(text.parse().with_context(|| format!("--chain-id {text:?}: expected a whole number"))?);
            }
            "registry" => self.registry = Some(parser.value()?.string()?),
            "keystore" => self.key.keystore = Some(PathBuf::from(parser.value()?)),
            "password-file" => self.key.password_file = Some(PathBuf::from(parser.value()?)),
            "ipfs-api" => self.ipfs_api = Some(parser.value()?.string()?),
            "confirmations" => {
                let text = parser.value()?.string()?;
                let n = text.parse().with_context(|| format!("--confirmations {text:?}: expected a whole number"))?;
                self.confirmations = Some(fl_contracts::check_confirmations(n).context("--confirmations")?);
            }
            _ => bail!(
                "--{flag}: keys and passwords are never taken from the command line; use ETH_PRIVATE_KEY, ETH_PASSWORD or --password-file"
            ),
        }
        Ok(())
    }

    /// Fills what was not given from the environment and defaults, and checks it.
    pub fn finish(self) -> Result<Endpoints> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let registry = match self.registry.or_else(|| env("FL_REGISTRY")) {
            Some(text) => Some(parse_address(&text, "registry")?),
            None => None,
        };
        let confirmations = match (self.confirmations, env("FL_CONFIRMATIONS")) {
            (Some(n), _) => n,
            (None, Some(text)) => {
                let n = text.parse().with_context(|| format!("environment variable FL_CONFIRMATIONS={text:?}: expected a whole number"))?;
                fl_contracts::check_confirmations(n).context("environment variable FL_CONFIRMATIONS")?
            }
            (None, None) => 0,
        };
        Ok(Endpoints {
            rpc_url: self.rpc_url.or_else(|| env("ETH_RPC_URL")).unwrap_or_else(|| "http://127.0.0.1:8545".into()),
            chain_id: self.chain_id,
            registry,
            key: self.key,
            ipfs_api: self.ipfs_api.or_else(|| env("FL_IPFS_API")).unwrap_or_else(|| "http://127.0.0.1:5001".into()),
            confirmations,
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
}

/// Parses `0x` + 40 hex digits, naming `what` in the error.
pub fn parse_address(text: &str, what: &str) -> Result<Address> {
    let digits = text.strip_prefix("0x").with_context(|| format!("{what} {text:?}: expected 0x and 40 hex digits"))?;
    if digits.len() != 40 {
        bail!("{what} {text:?}: expected 0x and 40 hex digits");
    }
    text.parse().map_err(|e| anyhow::anyhow!("{what} {text:?}: {e}"))
}
