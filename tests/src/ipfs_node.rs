//! A real IPFS node for tests: the project's js-ipfs launcher (`tests/ipfs-node/launch.mjs`) with
//! a fresh repository in a temporary folder, loopback ports chosen by the OS, a private
//! network key, stopped with SIGTERM when dropped.

use crate::util::{wait_for_line, workspace_root, ChildGuard, TempDir};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Start-up limit: a node starts in about 2.3 s here; tests start several at once on two
/// shared cores, so allow far more before calling it a failure.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// One running js-ipfs node.
pub struct IpfsNode {
    // Dropped first (fields drop in order): the node stops before its repository goes.
    guard: ChildGuard,
    repo: TempDir,
    /// RPC API base URL, `http://127.0.0.1:<port>`.
    pub api_url: String,
    /// The node's peer id.
    pub peer_id: String,
    /// Swarm address with peer id, `/ip4/127.0.0.1/tcp/<port>/p2p/<id>`.
    pub swarm_addr: String,
}

/// Writes a new random swarm key (Kubo format) into `dir` under `name`; returns its path.
pub fn new_swarm_key(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    fl_ipfs::SwarmKey::generate()?.write_new(&path)?;
    Ok(path)
}

impl IpfsNode {
    /// Starts a node in the private network of `swarm_key` and waits until its API serves.
    pub fn start(swarm_key: &Path) -> Result<IpfsNode> {
        let root = workspace_root();
        let launcher = root.join("tests/ipfs-node/launch.mjs");
        if !root.join("tests/ipfs-node/node_modules/ipfs-daemon").is_dir() {
            bail!("js-ipfs is not installed in {}: run `make setup`", root.join("tests/ipfs-node").display());
        }
        let repo = TempDir::new("ipfs")?;
        let log_path = repo.path().join("launcher.log");
        let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let mut child = Command::new("node")
            .arg(&launcher)
            .arg("--swarm-key")
            .arg(swarm_key)
            .arg("--repo")
            .arg(repo.path().join("repo"))
            // Port 0: the OS picks free ports at bind time, so parallel tests never race
            // for the same port; the launcher prints the ports it got.
            .args(["--api-port", "0", "--swarm-port", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("starting `node tests/ipfs-node/launch.mjs`: is Node.js 18 or newer installed? (`make setup` checks)")?;
        let stdout = child.stdout.take().context("launcher stdout")?;
        let mut guard = ChildGuard::new("ipfs", child);
        let lines = match wait_for_line(stdout, "Daemon is ready", START_TIMEOUT, "run `make setup` to install js-ipfs in tests/ipfs-node")
        {
            Ok(lines) => lines,
            Err(error) => {
                guard.terminate(Duration::from_secs(5));
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(error.context(format!("starting an IPFS node; launcher log:\n{log}")));
            }
        };
        let field = |key: &str| -> Result<String> {
            let prefix = format!("node 0 {key} ");
            lines
                .iter()
                .find_map(|l| l.strip_prefix(&prefix))
                .map(str::to_string)
                .with_context(|| format!("launcher printed no {prefix:?} line: {lines:?}"))
        };
        Ok(IpfsNode { api_url: field("api")?, peer_id: field("peer")?, swarm_addr: field("swarm")?, guard, repo })
    }

    /// A client for this node with the default time limits.
    pub fn client(&self) -> fl_ipfs::Client {
        fl_ipfs::Client::new(&self.api_url)
    }

    /// A client for this node with the given time limits.
    pub fn client_with(&self, config: fl_ipfs::ClientConfig) -> fl_ipfs::Client {
        fl_ipfs::Client::with_config(&self.api_url, config)
    }

    /// The node's repository folder.
    pub fn repo(&self) -> &Path {
        self.repo.path()
    }

    /// Stops the node now (SIGTERM, then SIGKILL after 5 s), keeping the repository.
    pub fn stop(&mut self) {
        self.guard.terminate(Duration::from_secs(5));
    }
}
