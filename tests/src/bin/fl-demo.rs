//! `fl-demo`: the paper's experiment on a local federation (what `make demo` runs). Starts
//! a chain and a private IPFS network, deploys the registry, registers the learners, runs
//! the aggregator and the learners as separate processes, shows the rounds as they happen,
//! then prints the paper's Table 2 with the global model beside it and writes
//! `results.json` and `accuracy.svg`. Stops everything it started.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fl_aggregator::report::Results;
use fl_contracts::Mode;
use fl_core::encoding::Encoding;
use fl_core::ensemble::FederationModel;
use fl_core::flags::number;
use fl_core::spec::ModelSpec;
use fl_tests::devnet::{Devnet, Running};
use lexopt::prelude::*;

const USAGE: &str = "\
usage: fl-demo [--learners N] [--ipfs-nodes K] [--rounds R] [--local-epochs L]
               [--train-limit N] [--test-limit N] [--fetch-workers N] [--no-local-eval]
               [--update-encoding f32|f16|int8] [--global-encoding f32|f16|int8]
               [--mode sync|async] [--buffer K] [--max-staleness S]
               [--slow N] [--slowdown F] [--model FILE]... [--data DIR] [--out DIR] [--bin-dir DIR]

runs the federation on this machine: anvil, IPFS nodes in a private network, the
aggregator and N learners as separate processes

  --learners N       learners, each with its own key (default 2, at most 1000)
  --ipfs-nodes K     IPFS nodes the learners share, besides the aggregator's (default:
                     one per learner up to 8, then 8; each js-ipfs node takes about
                     150 MB); learner i uses node 1 + (i - 1) mod K
  --rounds R         federated rounds (default 3; the paper: 5)
  --local-epochs L   local epochs per round (default 1; the paper: 5)
  --train-limit N    split only the first N training images (default: all 60,000)
  --test-limit N     evaluate on the first N test images (default: all 10,000)
  --fetch-workers N  the aggregator's fetch threads (its default: 4)
  --no-local-eval    the aggregator does not evaluate each learner's model
  --update-encoding E how the learners send their updates (their default: int8)
  --global-encoding E the aggregator also publishes each global model in E for the
                     learners to download (default f32: no encoded copy)
  --mode M           sync (default: each round waits for every learner) or async (a
                     global model whenever --buffer K updates are in, each update at most
                     --max-staleness S rounds old, default 4), set on the registry
  --slow N           throttle the last N learners: each waits, after training, --slowdown
                     F - 1 times its training time (default F = 4: boards 4x slower)
  --model FILE       the model spec the federation trains (default: the paper's CNN);
                     given N times, model groups whose global model is their ensemble,
                     learner i training group 1 + (i - 1) mod N (MNIST-shaped specs: 28x28x1
                     images, 10 classes)
  --data DIR         MNIST folder (default data/mnist)
  --out DIR          results, logs and configs (default demo-out; what an earlier run
                     wrote there is replaced, anything else is left alone)
  --bin-dir DIR      where fl-agent and fl-aggregator are (default: next to fl-demo)
";

/// Removes what an earlier run wrote in `out` (logs, learners' state and configs, results,
/// plot, swarm key) and nothing else: `--out` may name a folder that holds other things
/// (`make bench-compression` keeps its results in `demo-out/compression`).
fn clear_previous_run(out: &std::path::Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(out) else { return Ok(()) };
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", out.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = matches!(name.as_str(), "logs" | "state" | "results.json" | "accuracy.svg" | "swarm.key")
            || (name.starts_with("learner-") && name.ends_with(".toml"));
        if !ours {
            continue;
        }
        let path = entry.path();
        let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        removed.with_context(|| format!("clearing {} from an earlier run", path.display()))?;
    }
    Ok(())
}

/// The paper's published figures (2 learners, 5 rounds of 5 local epochs).
const PAPER_GLOBAL: f64 = 99.46;
const PAPER_SINGLE_NODE: f64 = 99.48;

/// The most learners fl-demo starts (anvil derives a funded key for each in about 2 ms).
const MAX_LEARNERS: usize = 1000;

/// The learners' IPFS nodes when `--ipfs-nodes` is not given, at most.
const DEFAULT_IPFS_NODES: usize = 8;

/// Up to this many learners, their output is shown beside the aggregator's; beyond, it
/// only goes to their log files.
const ECHOED_LEARNERS: usize = 9;

struct DemoConfig {
    learners: usize,
    ipfs_nodes: Option<usize>,
    rounds: u64,
    local_epochs: usize,
    train_limit: Option<usize>,
    test_limit: Option<usize>,
    fetch_workers: Option<usize>,
    local_eval: bool,
    update_encoding: Option<Encoding>,
    global_encoding: Option<Encoding>,
    mode: Mode,
    slow: usize,
    slowdown: f64,
    data: PathBuf,
    out: PathBuf,
    bin_dir: PathBuf,
    model: FederationModel,
}

fn parse(args: Vec<OsString>) -> Result<Option<DemoConfig>> {
    let mut parser = lexopt::Parser::from_args(args);
    let exe = std::env::current_exe().context("locating fl-demo")?;
    let mut specs = Vec::new();
    let mut config = DemoConfig {
        learners: 2,
        ipfs_nodes: None,
        rounds: 3,
        local_epochs: 1,
        train_limit: None,
        test_limit: None,
        fetch_workers: None,
        local_eval: true,
        update_encoding: None,
        global_encoding: None,
        mode: Mode::Sync,
        slow: 0,
        slowdown: 4.0,
        data: PathBuf::from("data/mnist"),
        out: PathBuf::from("demo-out"),
        bin_dir: exe.parent().context("fl-demo has no folder")?.to_path_buf(),
        model: FederationModel::Single(ModelSpec::paper_cnn()),
    };
    let (mut mode, mut buffer, mut max_staleness) = (None, None, None);
    while let Some(arg) = parser.next()? {
        match arg {
            Long("mode") => mode = Some(parser.value()?.string()?),
            Long("buffer") => buffer = Some(number::<u64>(&mut parser, "--buffer")?),
            Long("max-staleness") => max_staleness = Some(number::<u64>(&mut parser, "--max-staleness")?),
            Long("slow") => config.slow = number(&mut parser, "--slow")?,
            Long("slowdown") => config.slowdown = number(&mut parser, "--slowdown")?,
            Long("learners") => config.learners = number(&mut parser, "--learners")?,
            Long("ipfs-nodes") => config.ipfs_nodes = Some(number(&mut parser, "--ipfs-nodes")?),
            Long("rounds") => config.rounds = number(&mut parser, "--rounds")?,
            Long("local-epochs") => config.local_epochs = number(&mut parser, "--local-epochs")?,
            Long("train-limit") => config.train_limit = Some(number(&mut parser, "--train-limit")?),
            Long("test-limit") => config.test_limit = Some(number(&mut parser, "--test-limit")?),
            Long("fetch-workers") => config.fetch_workers = Some(number(&mut parser, "--fetch-workers")?),
            Long("no-local-eval") => config.local_eval = false,
            Long("update-encoding") => config.update_encoding = Some(number(&mut parser, "--update-encoding")?),
            Long("global-encoding") => config.global_encoding = Some(number(&mut parser, "--global-encoding")?),
            Long("data") => config.data = PathBuf::from(parser.value()?),
            Long("model") => specs.push(PathBuf::from(parser.value()?)),
            Long("out") => config.out = PathBuf::from(parser.value()?),
            Long("bin-dir") => config.bin_dir = PathBuf::from(parser.value()?),
            Short('h') | Long("help") => {
                print!("{USAGE}");
                return Ok(None);
            }
            _ => return Err(arg.unexpected().into()),
        }
    }
    if !(1..=MAX_LEARNERS).contains(&config.learners) {
        bail!("--learners must be between 1 and {MAX_LEARNERS}, got {}", config.learners);
    }
    if let Some(k) = config.ipfs_nodes.filter(|k| !(1..=config.learners).contains(k)) {
        bail!("--ipfs-nodes must be between 1 and the number of learners ({}), got {k}", config.learners);
    }
    config.mode = match (mode.as_deref(), buffer) {
        (None | Some("sync"), None) if max_staleness.is_none() => Mode::Sync,
        (Some("async"), Some(buffer)) if buffer >= 1 => Mode::Async { buffer, max_staleness: max_staleness.unwrap_or(4) },
        (Some("async"), _) => bail!("--mode async needs --buffer K (at least 1)"),
        (None | Some("sync"), _) => bail!("--buffer and --max-staleness need --mode async"),
        (Some(other), _) => bail!("--mode {other:?}: expected sync or async"),
    };
    if config.slow > config.learners || !(1.0..=1000.0).contains(&config.slowdown) {
        bail!("--slow must be at most --learners and --slowdown between 1 and 1000");
    }
    if config.rounds == 0 || config.local_epochs == 0 {
        bail!("--rounds and --local-epochs must be at least 1");
    }
    config.model = FederationModel::load(&specs, "--model")?;
    Ok(Some(config))
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let result = parse(args).and_then(|config| match config {
        Some(config) => run(&config),
        None => Ok(()),
    });
    fl_core::flags::exit_code("fl-demo", result)
}

fn run(config: &DemoConfig) -> Result<()> {
    let started = Instant::now();
    let agent_bin = config.bin_dir.join("fl-agent");
    let aggregator_bin = config.bin_dir.join("fl-aggregator");
    for bin in [&agent_bin, &aggregator_bin] {
        if !bin.exists() {
            bail!("{} not found: build with `cargo build --release --workspace --bins` (`make demo` does)", bin.display());
        }
    }
    let data = std::fs::canonicalize(&config.data).with_context(|| format!("MNIST folder {}: run `make setup`", config.data.display()))?;
    clear_previous_run(&config.out)?;
    std::fs::create_dir_all(config.out.join("logs"))?;
    let out = std::fs::canonicalize(&config.out)?;

    let ipfs_nodes = config.ipfs_nodes.unwrap_or(config.learners.min(DEFAULT_IPFS_NODES));
    eprintln!(
        "fl-demo: starting anvil and {} IPFS nodes in a private network (loopback only): the aggregator's and {ipfs_nodes} for {} learners",
        ipfs_nodes + 1,
        config.learners
    );
    let devnet = Devnet::start_federation(config.learners, ipfs_nodes, &out, Default::default(), config.mode, Some(&config.model))?;
    eprintln!("fl-demo: the federation trains {}", config.model);
    eprintln!(
        "fl-demo: chain {} at {}, registry {:?} ({}), {} learners registered",
        devnet.anvil.chain_id(),
        devnet.anvil.url(),
        devnet.registry,
        config.mode,
        config.learners
    );
    let mut extra = String::new();
    if let Some(n) = config.train_limit {
        extra.push_str(&format!("train_limit = {n}\n"));
    }
    if let Some(n) = config.test_limit {
        extra.push_str(&format!("test_limit = {n}\n"));
    }
    let mut aggregator_args = vec![
        "--rounds".to_string(),
        config.rounds.to_string(),
        "--data".into(),
        data.display().to_string(),
        "--results".into(),
        out.join("results.json").display().to_string(),
        "--plot".into(),
        out.join("accuracy.svg").display().to_string(),
    ];
    if let Some(n) = config.test_limit {
        aggregator_args.extend(["--test-limit".to_string(), n.to_string()]);
    }
    if let Some(n) = config.fetch_workers {
        aggregator_args.extend(["--fetch-workers".to_string(), n.to_string()]);
    }
    if let Some(encoding) = config.global_encoding {
        aggregator_args.extend(["--global-encoding".to_string(), encoding.to_string()]);
    }
    if let Some(encoding) = config.update_encoding {
        extra.push_str(&format!("update_encoding = \"{encoding}\"\n"));
    }
    if !config.local_eval {
        aggregator_args.push("--no-local-eval".to_string());
    }
    let mut aggregator =
        Running::spawn("aggregator", devnet.aggregator_command(&aggregator_bin, &aggregator_args), &out.join("logs/aggregator.log"), true)?;
    let mut learners = Vec::new();
    for node_id in 1..=config.learners {
        let slow = node_id > config.learners - config.slow;
        let extra = if slow { format!("{extra}slowdown = {}\n", config.slowdown) } else { extra.clone() };
        let config_path = devnet.write_agent_config(node_id, &data, config.local_epochs, config.rounds, &extra)?;
        learners.push(Running::spawn(
            &format!("learner {node_id}"),
            devnet.agent_command(&agent_bin, node_id, &config_path),
            &out.join(format!("logs/learner-{node_id}.log")),
            config.learners <= ECHOED_LEARNERS,
        )?);
    }
    if config.learners > ECHOED_LEARNERS {
        eprintln!("fl-demo: {} learners started; their output goes to {}", config.learners, out.join("logs").display());
    }
    // Generous: the paper's full setting takes hours on two cores.
    let limit = Duration::from_secs(24 * 3600);
    aggregator.wait_success(limit)?;
    for learner in &mut learners {
        if matches!(config.mode, Mode::Async { .. }) && learner.is_running() {
            // An asynchronous federation does not wait for its slow boards: one may still be
            // training for a global model that will not come.
            std::thread::sleep(Duration::from_secs(5));
            if learner.is_running() {
                eprintln!("fl-demo: {} is still training after the last global model; stopping it", learner.name);
                learner.kill();
                continue;
            }
        }
        learner.wait_success(Duration::from_secs(120))?;
    }
    let wall = started.elapsed();

    let results_path = out.join("results.json");
    let mut results = Results::load_or_default(Some(&results_path))?;
    results.wall_s = Some(wall.as_secs_f64());
    results.settings = Some(serde_json::json!({
        "learners": config.learners,
        "ipfs_nodes": ipfs_nodes,
        "fetch_workers": config.fetch_workers,
        "local_eval": config.local_eval,
        "update_encoding": config.update_encoding.map(|e| e.to_string()),
        "global_encoding": config.global_encoding.map(|e| e.to_string()),
        "mode": config.mode.to_string(),
        "slow_learners": config.slow,
        "slowdown": config.slowdown,
        "rounds": config.rounds,
        "local_epochs": config.local_epochs,
        "train_limit": config.train_limit,
        "test_limit": config.test_limit,
        "split": "iid",
        "batch_size": 32,
    }));
    results.save(&results_path)?;
    println!("\nTest accuracy per round (the paper's Table 2, with the global model beside it):\n");
    print!("{}", results.table());
    if let Some(last) = results.rounds.last().and_then(|r| r.global.accuracy) {
        println!(
            "\nglobal model after {} rounds of {} local epoch(s): {:.2}%  (paper, 5 rounds of 5: {PAPER_GLOBAL}%; single node, 25 epochs: {PAPER_SINGLE_NODE}%)",
            config.rounds,
            config.local_epochs,
            100.0 * last
        );
    }
    println!(
        "wall time {:.0} s; results in {}, plot in {}",
        wall.as_secs_f64(),
        results_path.display(),
        out.join("accuracy.svg").display()
    );
    Ok(())
}
