//! anvil: a real local chain for tests, from the pinned npm package
//! `@foundry-rs/anvil-linux-amd64` that `make setup` installs. Started on a free loopback
//! port, killed when the handle is dropped.
//!
//! anvil keeps the states of its last 490 blocks or so in memory and writes older ones to
//! disk, by default under `~/.foundry/anvil/tmp/`, and does not remove them when it is
//! stopped (SIGTERM or SIGKILL): 3,072 mined blocks left 704 MB there (anvil 1.7.1,
//! measured 2026-12-04), and a day of test runs (17 GB) filled the disk. Every anvil here gets
//! `--cache-path` inside its own temporary folder, removed after anvil has exited.

use crate::util::{free_port, wait_for_line, workspace_root, ChildGuard, TempDir};
use anyhow::{bail, Context, Result};
use fl_contracts::{Address, Signer};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// anvil's default chain id (Foundry's documented default, 31337).
pub const DEFAULT_CHAIN_ID: u64 = 31337;

/// Where `make setup` puts the anvil binary.
pub fn anvil_path() -> PathBuf {
    workspace_root().join("tests/devnet/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")
}

/// Options for [`Anvil::start_with`].
#[derive(Debug, Clone, Default)]
pub struct AnvilOptions {
    /// Mine a block every N seconds instead of one per transaction.
    pub block_time: Option<u64>,
    /// Chain id (default 31337).
    pub chain_id: Option<u64>,
    /// Never mine (transactions stay in the pool), to test receipt deadlines.
    pub no_mining: bool,
    /// A fixed base fee per gas (0 makes the chain look like one without EIP-1559 fees).
    pub base_fee: Option<u64>,
    /// The EVM rule set (`--hardfork NAME`, one of [`HARDFORKS`]); anvil's latest when `None`.
    pub hardfork: Option<&'static str>,
    /// Record every EVM step (`--steps-tracing`), for `debug_traceTransaction`'s step list.
    pub steps_tracing: bool,
    /// Funded development accounts (`--accounts N`; default 10). anvil derives 1,001 keys
    /// in about 2 s here, so a fleet of hundreds of learners gets one key each.
    pub accounts: Option<usize>,
}

/// The rule sets the registry supports, oldest first, as anvil 1.7.1's `--hardfork`
/// spells them (checked: each starts; Istanbul and Berlin blocks have no base fee).
/// anvil also accepts the glacier forks, which changed no EVM rules.
pub const HARDFORKS: [&str; 7] = ["istanbul", "berlin", "london", "paris", "shanghai", "cancun", "prague"];

/// A running anvil on 127.0.0.1.
pub struct Anvil {
    url: String,
    chain_id: u64,
    /// anvil's public development keys (hex), as it printed them.
    keys: Vec<String>,
    addresses: Vec<Address>,
    /// Declared before `_cache`: fields drop in order, so anvil has exited before its
    /// state cache is removed.
    _guard: ChildGuard,
    _cache: TempDir,
}

impl Anvil {
    /// Starts anvil with default options (a block per transaction, chain id 31337).
    pub fn start() -> Result<Anvil> {
        Anvil::start_with(AnvilOptions::default())
    }

    /// Starts anvil and waits until it listens.
    pub fn start_with(options: AnvilOptions) -> Result<Anvil> {
        let path = anvil_path();
        if !path.exists() {
            bail!("anvil not found at {}: run `make setup`", path.display());
        }
        let port = free_port()?;
        let chain_id = options.chain_id.unwrap_or(DEFAULT_CHAIN_ID);
        let accounts = options.accounts.unwrap_or(10);
        if accounts < 4 {
            bail!("anvil needs at least 4 development accounts for the tests, not {accounts}");
        }
        let cache = TempDir::new("anvil-cache")?;
        let mut command = Command::new(&path);
        command
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--chain-id", &chain_id.to_string()])
            .arg("--cache-path")
            .arg(cache.path())
            .args(["--accounts", &accounts.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(seconds) = options.block_time {
            command.args(["--block-time", &seconds.to_string()]);
        }
        if options.no_mining {
            command.arg("--no-mining");
        }
        if let Some(hardfork) = options.hardfork {
            command.args(["--hardfork", hardfork]);
        }
        if options.steps_tracing {
            command.arg("--steps-tracing");
        }
        if let Some(fee) = options.base_fee {
            command.args(["--block-base-fee-per-gas", &fee.to_string(), "--disable-min-priority-fee"]);
        }
        let mut child = command.spawn().with_context(|| format!("starting {} (run `make setup`)", path.display()))?;
        let stdout = child.stdout.take().context("anvil stdout was not captured")?;
        let guard = ChildGuard::new("anvil", child);
        let hint = match options.hardfork {
            Some(name) => format!("anvil did not start with --hardfork {name}; run `make setup` (anvil 1.7.1 knows {HARDFORKS:?})"),
            None => "anvil did not start; run `make setup`".to_string(),
        };
        let lines = wait_for_line(stdout, "Listening on", Duration::from_secs(30), &hint)?;
        let keys = section(&lines, "Private Keys");
        if keys.len() != accounts {
            bail!("anvil printed {} private keys, expected {accounts}:\n{}", keys.len(), lines.join("\n"));
        }
        let addresses = keys
            .iter()
            .map(|k| Signer::from_hex(k).map(|s| s.address()))
            .collect::<std::result::Result<Vec<_>, _>>()
            .context("anvil printed an invalid private key")?;
        Ok(Anvil { url: format!("http://127.0.0.1:{port}"), chain_id, keys, addresses, _guard: guard, _cache: cache })
    }

    /// The JSON-RPC URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The chain id anvil was started with.
    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    /// How many development accounts anvil funded (keys `0..accounts()`).
    pub fn accounts(&self) -> usize {
        self.keys.len()
    }

    /// Public development key `i` (hex, `0x`-prefixed) as anvil printed it.
    pub fn key(&self, i: usize) -> &str {
        &self.keys[i]
    }

    /// A signer for development key `i`.
    pub fn signer(&self, i: usize) -> Result<Signer> {
        Ok(Signer::from_hex(&self.keys[i])?)
    }

    /// The address of development key `i`.
    pub fn address(&self, i: usize) -> Address {
        self.addresses[i]
    }
}

/// The `(i) 0x…` entries printed under `title` (anvil's "Private Keys" block).
fn section(lines: &[String], title: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in lines {
        let line = line.trim();
        if line == title {
            inside = true;
            continue;
        }
        if !inside || line.starts_with('=') {
            continue;
        }
        let Some(rest) = line.strip_prefix('(') else {
            if !out.is_empty() {
                break;
            }
            continue;
        };
        if let Some((_, value)) = rest.split_once(") ") {
            out.push(value.split_whitespace().next().unwrap_or_default().to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use fl_contracts::Rpc;
    use std::time::Instant;

    fn files_under(dir: &std::path::Path) -> usize {
        let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
        entries.flatten().map(|e| if e.path().is_dir() { files_under(&e.path()) } else { 1 }).sum()
    }

    /// The disk-filling leak this module's header describes: anvil must write the states
    /// it moves out of memory into the folder we gave it, and that folder must go with it.
    #[test]
    fn anvils_state_cache_stays_in_its_own_folder_and_goes_with_it() -> Result<()> {
        let anvil = Anvil::start_with(AnvilOptions { accounts: Some(4), ..Default::default() })?;
        let cache = anvil._cache.path().to_path_buf();
        Rpc::new(anvil.url())?.request::<serde_json::Value>("anvil_mine", serde_json::json!(["0x300"]))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while files_under(&cache) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let persisted = files_under(&cache);
        assert!(persisted > 0, "anvil persisted no state into {} after mining 768 blocks (it keeps about 490 in memory)", cache.display());
        drop(anvil);
        if std::env::var_os("FL_KEEP_TEMP").is_none() {
            assert!(!cache.exists(), "{} outlived anvil ({persisted} state files)", cache.display());
        }
        Ok(())
    }
}
