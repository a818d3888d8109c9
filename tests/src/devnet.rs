//! A whole federation on one machine, as the paper's three machines: a local chain
//! (anvil), IPFS nodes in one private network (the aggregator's, and one per learner or,
//! for fleets, K shared by the learners; all peered over loopback), the registry deployed
//! by the aggregator's key and one learner registered per node id with its own key. Used by the federation tests and
//! by the demo; the aggregator and the learners themselves run as separate processes.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fl_aggregator::operator::publish_model;
use fl_contracts::{Address, Client, Mode, Registry, Rpc};
use fl_core::ensemble::FederationModel;

use crate::anvil::{Anvil, AnvilOptions};
use crate::ipfs_node::{new_swarm_key, IpfsNode};
use crate::util::ChildGuard;

/// A running federation's infrastructure.
pub struct Devnet {
    /// Learner node ids are `1..=n_learners`; learner `i` signs with anvil key `i`, the
    /// aggregator with key 0.
    pub n_learners: usize,
    pub anvil: Anvil,
    /// `ipfs[0]` is the aggregator's node, `ipfs[1..]` the learners' (learner `i` uses
    /// [`Devnet::learner_ipfs`]: `ipfs[i]` when each learner has its own node).
    pub ipfs: Vec<IpfsNode>,
    pub registry: Address,
    /// Where configs, states and logs go.
    pub dir: PathBuf,
}

/// The federation-wide sample cap of the devnet's registry: MNIST's training set, so no
/// learner can honestly claim more.
pub const MAX_SAMPLES: u64 = 60_000;

impl Devnet {
    /// Starts anvil and `n_learners + 1` IPFS nodes, deploys the registry and registers
    /// the learners. Files go under `dir` (created).
    pub fn start(n_learners: usize, dir: &Path) -> Result<Devnet> {
        Devnet::start_with(n_learners, dir, AnvilOptions::default())
    }

    /// [`Devnet::start`] on an anvil started with `anvil_options` (e.g. an older hardfork).
    pub fn start_with(n_learners: usize, dir: &Path, anvil_options: AnvilOptions) -> Result<Devnet> {
        Devnet::start_fleet(n_learners, n_learners, dir, anvil_options)
    }

    /// A fleet: `n_learners` learners sharing `learner_nodes` IPFS nodes (learner `i` uses
    /// node `1 + (i - 1) % learner_nodes`), with one funded key each (anvil gets at least
    /// `n_learners + 1` accounts).
    pub fn start_fleet(n_learners: usize, learner_nodes: usize, dir: &Path, anvil_options: AnvilOptions) -> Result<Devnet> {
        Devnet::start_fleet_in(n_learners, learner_nodes, dir, anvil_options, Mode::Sync)
    }

    /// [`Devnet::start_fleet`] with a registry whose rounds close as `mode` says.
    pub fn start_fleet_in(n_learners: usize, learner_nodes: usize, dir: &Path, anvil_options: AnvilOptions, mode: Mode) -> Result<Devnet> {
        Devnet::start_federation(n_learners, learner_nodes, dir, anvil_options, mode, None)
    }

    /// [`Devnet::start_fleet_in`] for a federation that trains `model` (`None`: the built-in
    /// paper CNN): its spec (or its groups' specs and list) is added to the aggregator's IPFS
    /// node and its digest fixed in the registry, as `fl-aggregator deploy --model` does.
    /// With model groups, learner `i` trains group `(i - 1) % groups`.
    pub fn start_federation(
        n_learners: usize,
        learner_nodes: usize,
        dir: &Path,
        mut anvil_options: AnvilOptions,
        mode: Mode,
        model: Option<&FederationModel>,
    ) -> Result<Devnet> {
        if n_learners == 0 {
            bail!("a federation needs at least one learner");
        }
        if !(1..=n_learners).contains(&learner_nodes) {
            bail!("{n_learners} learners need between 1 and {n_learners} IPFS nodes, not {learner_nodes}");
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let accounts = anvil_options.accounts.unwrap_or(10).max(n_learners + 1);
        anvil_options.accounts = Some(accounts);
        let anvil = Anvil::start_with(anvil_options)?;
        // One swarm key per deployment: these nodes talk to each other and to nobody else.
        let key_path = dir.join("swarm.key");
        if key_path.exists() {
            std::fs::remove_file(&key_path).with_context(|| format!("removing old {}", key_path.display()))?;
        }
        let swarm_key = new_swarm_key(dir, "swarm.key")?;
        // Nodes start in parallel: each takes a few seconds, mostly waiting.
        let handles: Vec<_> = (0..=learner_nodes)
            .map(|_| {
                let key = swarm_key.clone();
                std::thread::spawn(move || IpfsNode::start(&key))
            })
            .collect();
        let mut ipfs = Vec::with_capacity(handles.len());
        for handle in handles {
            ipfs.push(handle.join().map_err(|_| anyhow::anyhow!("an IPFS start-up thread panicked"))??);
        }
        // A full mesh: every learner's node also reaches the others directly.
        for i in 0..ipfs.len() {
            for j in 0..i {
                ipfs[i].client().swarm_connect(&ipfs[j].swarm_addr).with_context(|| format!("peering IPFS node {i} with node {j}"))?;
            }
        }
        // anvil mines each transaction milliseconds after taking it: a fleet registers fast.
        let client =
            Client::new(Rpc::new(anvil.url())?, anvil.signer(0)?, Some(anvil.chain_id()))?.with_poll_interval(Duration::from_millis(10));
        let (digest, groups) = match model {
            Some(model) => (publish_model(model, &ipfs[0].client())?, model.groups() as u64),
            None => (None, 1),
        };
        let (registry, _) = Registry::deploy_federation(&client, MAX_SAMPLES, mode, digest, groups)?;
        for node_id in 1..=n_learners {
            registry.add_learner(node_id as u64, anvil.address(node_id), None)?;
            let group = (node_id as u64 - 1) % groups;
            if group > 0 {
                registry.set_learner_group(node_id as u64, group)?;
            }
        }
        let address = registry.address();
        Ok(Devnet { n_learners, anvil, ipfs, registry: address, dir: dir.to_path_buf() })
    }

    /// The IPFS node learner `node_id` uploads to and fetches from.
    pub fn learner_ipfs(&self, node_id: usize) -> &IpfsNode {
        let learner_nodes = self.ipfs.len() - 1;
        &self.ipfs[1 + (node_id - 1) % learner_nodes]
    }

    /// A read-only view of the registry.
    pub fn read_client(&self) -> Result<Client> {
        Ok(Client::read_only(Rpc::new(self.anvil.url())?, Some(self.anvil.chain_id()))?)
    }

    /// Writes learner `node_id`'s `agent.toml` and returns its path. `extra` is appended
    /// verbatim (e.g. `train_limit = 2000`).
    pub fn write_agent_config(&self, node_id: usize, data_dir: &Path, local_epochs: usize, rounds: u64, extra: &str) -> Result<PathBuf> {
        let path = self.dir.join(format!("learner-{node_id}.toml"));
        let state = self.dir.join(format!("state/learner-{node_id}"));
        let text = format!(
            "# learner {node_id} of the local federation (written by fl-tests' devnet)\n\
             node_id = {node_id}\n\
             rpc_url = \"{rpc}\"\n\
             chain_id = {chain}\n\
             registry = \"{registry:?}\"\n\
             ipfs_api = \"{ipfs}\"\n\
             data_dir = \"{data}\"\n\
             state_dir = \"{state}\"\n\
             local_epochs = {local_epochs}\n\
             batch_size = 32\n\
             rounds = {rounds}\n\
             poll_seconds = 1\n\
             {extra}\n\
             [shard]\n\
             index = {index}\n\
             count = {count}\n\
             split = \"iid\"\n\
             seed = 1\n",
            rpc = self.anvil.url(),
            chain = self.anvil.chain_id(),
            registry = self.registry,
            ipfs = self.learner_ipfs(node_id).api_url,
            data = data_dir.display(),
            state = state.display(),
            index = node_id - 1,
            count = self.n_learners,
        );
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// `fl-agent run` for learner `node_id`, with its development key in the environment.
    pub fn agent_command(&self, agent_bin: &Path, node_id: usize, config: &Path) -> Command {
        self.agent_command_via(Command::new(agent_bin), node_id, config)
    }

    /// The same through a launcher already holding its own arguments, e.g.
    /// `qemu-aarch64-static -L SYSROOT path/to/fl-agent` for a Raspberry Pi build.
    pub fn agent_command_via(&self, mut launcher: Command, node_id: usize, config: &Path) -> Command {
        launcher.arg("run").arg("--config").arg(config).env("ETH_PRIVATE_KEY", self.anvil.key(node_id));
        clean_env(&mut launcher);
        launcher
    }

    /// `fl-aggregator run` with the aggregator's development key; `args` are added.
    pub fn aggregator_command(&self, aggregator_bin: &Path, args: &[String]) -> Command {
        let mut command = Command::new(aggregator_bin);
        command
            .arg("run")
            .args(["--rpc-url", self.anvil.url()])
            .args(["--chain-id", &self.anvil.chain_id().to_string()])
            .args(["--registry", &format!("{:?}", self.registry)])
            .args(["--ipfs-api", &self.ipfs[0].api_url])
            .args(["--poll-seconds", "1"])
            .args(args)
            .env("ETH_PRIVATE_KEY", self.anvil.key(0));
        clean_env(&mut command);
        command
    }
}

/// Keys and endpoints from the caller's environment must not leak into the processes.
fn clean_env(command: &mut Command) {
    for name in [
        "ETH_KEYSTORE",
        "ETH_PASSWORD",
        "ETH_PASSWORD_FILE",
        "ETH_RPC_URL",
        "FL_REGISTRY",
        "FL_IPFS_API",
        "FL_NODE_ID",
        "FL_DATA_DIR",
        "FL_STATE_DIR",
        "FL_CONFIRMATIONS",
        "FL_UPDATE_ENCODING",
        "FL_KEEP_ROUNDS",
    ] {
        command.env_remove(name);
    }
}

/// A process of the federation whose stdout and stderr are copied, line by line, into a
/// log file and (optionally) onto our stderr with a prefix; lines are also kept for tests.
pub struct Running {
    pub name: String,
    guard: ChildGuard,
    lines: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<String>>>,
}

impl Running {
    /// Spawns `command`, logging to `log_path`; `echo` copies the lines onto stderr.
    pub fn spawn(name: &str, mut command: Command, log_path: &Path, echo: bool) -> Result<Running> {
        let log = Arc::new(Mutex::new(std::fs::File::create(log_path).with_context(|| format!("creating {}", log_path.display()))?));
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name} ({command:?})"))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout_lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().context("stdout was not captured")?;
        let err = child.stderr.take().context("stderr was not captured")?;
        copy_lines(name, out, log.clone(), lines.clone(), Some(stdout_lines.clone()), echo);
        copy_lines(name, err, log, lines.clone(), None, echo);
        Ok(Running { name: name.to_string(), guard: ChildGuard::new(name, child), lines, stdout: stdout_lines })
    }

    /// Every line printed so far (stdout and stderr interleaved as they came).
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The lines printed on stdout so far (results, not logs).
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits until a printed line contains `needle`; fails after `timeout` or if the
    /// process exits first.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.lines().iter().any(|l| l.contains(needle)) {
                return Ok(());
            }
            if let Some(status) = self.guard.child.try_wait()? {
                bail!("{} exited ({status}) before printing {needle:?}; its output:\n{}", self.name, self.tail(40));
            }
            if Instant::now() > deadline {
                bail!("{} did not print {needle:?} within {timeout:?}; its output:\n{}", self.name, self.tail(40));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the process to exit successfully within `timeout`.
    pub fn wait_success(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.guard.child.try_wait()? {
                // Let the copier threads drain the pipes.
                std::thread::sleep(Duration::from_millis(200));
                if !status.success() {
                    bail!("{} failed ({status}); its output:\n{}", self.name, self.tail(60));
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} did not finish within {timeout:?}; its output:\n{}", self.name, self.tail(60));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kills the process at once (SIGKILL), as a power cut would.
    pub fn kill(&mut self) {
        let _ = self.guard.child.kill();
        let _ = self.guard.child.wait();
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.guard.child.try_wait(), Ok(None))
    }

    fn tail(&self, n: usize) -> String {
        let lines = self.lines();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

fn copy_lines(
    name: &str,
    pipe: impl Read + Send + 'static,
    log: Arc<Mutex<std::fs::File>>,
    lines: Arc<Mutex<Vec<String>>>,
    also: Option<Arc<Mutex<Vec<String>>>>,
    echo: bool,
) {
    let name = name.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut file) = log.lock() {
                let _ = writeln!(file, "{line}");
            }
            if echo {
                eprintln!("[{name}] {line}");
            }
            if let Some(also) = &also {
                if let Ok(mut v) = also.lock() {
                    v.push(line.clone());
                }
            }
            if let Ok(mut v) = lines.lock() {
                v.push(line);
            }
        }
    });
}
