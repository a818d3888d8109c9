//! Operator commands on the registry: `deploy` (with the federation's model spec), `learners add|remove|list`, `status`.
//! Flags follow Foundry's: `--rpc-url` (else `ETH_RPC_URL`), `--keystore` (else
//! `ETH_KEYSTORE`) with `ETH_PASSWORD` or `--password-file`, or `ETH_PRIVATE_KEY` for
//! development; the registry is `--registry ADDRESS` (else `FL_REGISTRY`).

use std::ffi::OsString;

use anyhow::{bail, ensure, Context, Result};
use fl_contracts::endpoints::{parse_address, EndpointSettings, Endpoints, Missing, CHAIN_HELP};
use fl_contracts::{Address, Mode, Registry};
use fl_core::ensemble::FederationModel;
use fl_core::flags::number;
use fl_core::spec::ModelSpec;
use fl_core::weights::{hex, sha256};
use fl_ipfs::cid::one_chunk_cid;
use lexopt::prelude::*;

const USAGE: &str = "\
usage: fl-aggregator deploy --max-samples N [FLAGS]        deploy a registry, print its address (first
                                                           checks with eth_call that the chain's EVM runs it)
       fl-aggregator learners add NODE_ID ADDRESS [FLAGS]  bind a node id to a learner's address
       fl-aggregator learners remove NODE_ID [FLAGS]       unbind a node id
       fl-aggregator learners replace NODE_ID ADDRESS      give a node id a new address (its history stays)
       fl-aggregator owner transfer ADDRESS [FLAGS]        name the registry's next owner (0x0...0 cancels)
       fl-aggregator owner accept [FLAGS]                  with the named key: take the registry over
       fl-aggregator learners list [FLAGS]                 node id, address, cap, latest round and CID
       fl-aggregator status [FLAGS]                        round, global model, each learner's update

  --max-samples N        deploy: the federation-wide cap on the samples one update may claim
                         (its FedAvg weight); required. learners add: this learner's own cap
                         (default: the federation-wide one)
  --mode sync|async      deploy: how rounds close, fixed for the federation (default sync: each
                         round waits for its learners, or --min-learners / --round-timeout)
  --buffer K             deploy --mode async: publish a global model once K updates are in
  --max-staleness S      deploy --mode async: accept an update trained on a global model at
                         most S rounds older than the latest (default 4)
  --model FILE           deploy: the model spec the federation trains (model.toml; default:
                         the built-in paper CNN); added to IPFS (--ipfs-api), its digest
                         fixed in the registry. Given N times (2 to 16): model groups, whose
                         global model is their ensemble (synchronous rounds only)
  --group N              learners add: the learner trains model group N (1-based; default 1)

flags:
";

/// Said after the flags.
const KEYS_NOTE: &str = "
Keys are never taken from the command line.
";

/// What to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Deploy { max_samples: u64, mode: Mode, model: FederationModel },
    AddLearner { node_id: u64, account: Address, max_samples: Option<u64>, group: Option<u64> },
    RemoveLearner { node_id: u64 },
    ReplaceLearner { node_id: u64, account: Address },
    TransferOwnership { to: Address },
    AcceptOwnership,
    ListLearners,
    Status,
}

/// Validated flags of an operator command.
#[derive(Debug, Clone)]
pub struct OperatorConfig {
    pub action: Action,
    /// The chain, the registry, the key and IPFS (`deploy --model` only).
    pub endpoints: Endpoints,
}

/// Parses the flags of an operator command and runs it.
pub fn main(command: &str, args: Vec<OsString>) -> Result<()> {
    match parse(command, args)? {
        Some(config) => run(&config),
        None => Ok(()),
    }
}

/// The flags of an operator command, checked; `None` when `--help` was printed.
pub fn parse(command: &str, args: Vec<OsString>) -> Result<Option<OperatorConfig>> {
    let mut parser = lexopt::Parser::from_args(args);
    let mut positional: Vec<String> = Vec::new();
    let mut endpoints = EndpointSettings::default();
    let mut max_samples = None;
    let mut mode = ModeFlags::default();
    let mut models: Vec<std::path::PathBuf> = Vec::new();
    let mut group: Option<u64> = None;
    while let Some(arg) = parser.next()? {
        match arg {
            Long(flag) if EndpointSettings::handles(flag) => {
                let flag = flag.to_string();
                endpoints.set_flag(&flag, parser.value()?)?;
            }
            Long("max-samples") => max_samples = Some(parse_cap(&parser.value()?.string()?)?),
            Long("mode") => mode.mode = Some(parser.value()?.string()?),
            Long("buffer") => mode.buffer = Some(number(&mut parser, "--buffer")?),
            Long("max-staleness") => mode.max_staleness = Some(number(&mut parser, "--max-staleness")?),
            Long("model") => models.push(parser.value()?.into()),
            Long("group") => group = Some(number(&mut parser, "--group")?),
            Short('h') | Long("help") => {
                print!("{USAGE}{CHAIN_HELP}{KEYS_NOTE}");
                return Ok(None);
            }
            Value(value) => positional.push(value.string()?),
            _ => return Err(arg.unexpected().into()),
        }
    }
    let mut action = parse_action(command, &positional, max_samples)?;
    match &mut action {
        Action::Deploy { mode: chosen, model, .. } => {
            *chosen = mode.finish()?;
            *model = FederationModel::load(&models, "--model")?;
        }
        _ if mode != ModeFlags::default() || !models.is_empty() => {
            bail!("--mode, --buffer, --max-staleness and --model go with `deploy` only")
        }
        Action::AddLearner { group: chosen, .. } => *chosen = group,
        _ => {}
    }
    if group.is_some() && !matches!(action, Action::AddLearner { .. }) {
        bail!("--group goes with `learners add` only");
    }
    let endpoints = endpoints.or(EndpointSettings::from_env()?).finish(Missing::Loopback, "")?;
    if !matches!(action, Action::Deploy { .. }) && endpoints.registry.is_none() {
        bail!("{command}: no registry address: pass --registry ADDRESS or set FL_REGISTRY");
    }
    Ok(Some(OperatorConfig { action, endpoints }))
}

fn parse_action(command: &str, positional: &[String], max_samples: Option<u64>) -> Result<Action> {
    let words: Vec<&str> = positional.iter().map(String::as_str).collect();
    let takes_cap = matches!((command, words.first()), ("deploy", _) | ("learners", Some(&"add")));
    if max_samples.is_some() && !takes_cap {
        bail!("--max-samples goes with `deploy` and `learners add` only");
    }
    Ok(match (command, words.as_slice()) {
        ("deploy", []) => Action::Deploy {
            max_samples: max_samples.context(
                "deploy: --max-samples N is required: the federation-wide cap on the samples one update may claim (its weight in FedAvg)",
            )?,
            mode: Mode::Sync,
            model: FederationModel::Single(ModelSpec::paper_cnn()),
        },
        ("status", []) => Action::Status,
        ("learners", ["list"]) => Action::ListLearners,
        ("learners", ["add", node_id, account]) => {
            Action::AddLearner { node_id: parse_node_id(node_id)?, account: parse_address(account, "ADDRESS")?, max_samples, group: None }
        }
        ("learners", ["remove", node_id]) => Action::RemoveLearner { node_id: parse_node_id(node_id)? },
        ("learners", ["replace", node_id, account]) => {
            Action::ReplaceLearner { node_id: parse_node_id(node_id)?, account: parse_address(account, "ADDRESS")? }
        }
        ("owner", ["transfer", to]) => Action::TransferOwnership { to: parse_address(to, "ADDRESS")? },
        ("owner", ["accept"]) => Action::AcceptOwnership,
        _ => bail!("unexpected arguments for `{command}`: {positional:?}\n\n{USAGE}{CHAIN_HELP}{KEYS_NOTE}"),
    })
}

fn parse_node_id(text: &str) -> Result<u64> {
    text.parse().with_context(|| format!("NODE_ID {text:?}: expected a whole number"))
}

/// `deploy`'s mode flags, as given.
#[derive(Debug, Default, PartialEq, Eq)]
struct ModeFlags {
    mode: Option<String>,
    buffer: Option<u64>,
    max_staleness: Option<u64>,
}

/// The staleness bound of `--mode async` without `--max-staleness`.
pub const DEFAULT_MAX_STALENESS: u64 = 4;

impl ModeFlags {
    fn finish(self) -> Result<Mode> {
        match self.mode.as_deref().unwrap_or("sync") {
            "sync" if self.buffer.is_some() || self.max_staleness.is_some() => {
                bail!("--buffer and --max-staleness need --mode async (synchronous rounds wait for their learners)")
            }
            "sync" => Ok(Mode::Sync),
            "async" => {
                let buffer = self.buffer.context("--mode async needs --buffer K: how many updates make a global model")?;
                let max_staleness = self.max_staleness.unwrap_or(DEFAULT_MAX_STALENESS);
                if buffer == 0 || buffer > u64::from(u32::MAX) {
                    bail!("--buffer {buffer}: must be between 1 and {}", u32::MAX);
                }
                if max_staleness > u64::from(u32::MAX) {
                    bail!("--max-staleness {max_staleness}: must be below 2^32");
                }
                Ok(Mode::Async { buffer, max_staleness })
            }
            other => bail!("--mode {other:?}: expected sync or async"),
        }
    }
}

/// The registry stores caps in 56 bits.
const MAX_CAP: u64 = (1 << 56) - 1;

fn parse_cap(text: &str) -> Result<u64> {
    let cap: u64 = text.parse().with_context(|| format!("--max-samples {text:?}: expected a whole number"))?;
    if cap == 0 || cap > MAX_CAP {
        bail!("--max-samples {cap}: must be between 1 and {MAX_CAP} (a cap of 0 would refuse every update)");
    }
    Ok(cap)
}

/// Runs one operator command; results on stdout, progress on stderr.
pub fn run(config: &OperatorConfig) -> Result<()> {
    let needs_key = !matches!(config.action, Action::ListLearners | Action::Status);
    let client = if needs_key { config.endpoints.signing_client()? } else { config.endpoints.read_only_client()? };
    if let Action::Deploy { max_samples, mode, model } = &config.action {
        let digest = publish_model(model, &fl_ipfs::Client::new(&config.endpoints.ipfs_api))?;
        let (registry, receipt) = Registry::deploy_federation(&client, *max_samples, *mode, digest, model.groups() as u64)?;
        eprintln!(
            "deployed registry from {:?} on chain {} (tx {:?}, gas {}), sample cap {max_samples}, {mode}, model {model}",
            client.address(),
            client.chain_id(),
            receipt.transaction_hash,
            receipt.gas_used.unwrap_or_default()
        );
        println!("{:?}", registry.address());
        return Ok(());
    }
    // Checked in main(); kept as an error for library callers.
    let address = config.endpoints.registry()?;
    let registry = Registry::at(&client, address);
    match &config.action {
        Action::Deploy { .. } => unreachable!("handled above"),
        Action::AddLearner { node_id, account, max_samples, group } => {
            let groups = registry.model_groups()?;
            if let Some(group) = group {
                ensure!(*group >= 1 && *group <= groups, "--group {group}: the federation has model groups 1 to {groups}");
            }
            let receipt = registry.add_learner(*node_id, *account, *max_samples)?;
            let cap = registry.local_update(*node_id)?.max_samples;
            eprintln!("node {node_id} bound to {account:?}, sample cap {cap} (tx {:?})", receipt.transaction_hash);
            if let Some(group) = group {
                let receipt = registry.set_learner_group(*node_id, group - 1)?;
                eprintln!("node {node_id} trains model group {group} (tx {:?})", receipt.transaction_hash);
            } else if groups > 1 {
                eprintln!("node {node_id} trains model group 1 (give --group N for another)");
            }
        }
        Action::RemoveLearner { node_id } => {
            let receipt = registry.remove_learner(*node_id)?;
            eprintln!("node {node_id} removed (tx {:?})", receipt.transaction_hash);
        }
        Action::ReplaceLearner { node_id, account } => {
            let receipt = registry.replace_learner_account(*node_id, *account)?;
            eprintln!("node {node_id} now bound to {account:?}; its updates and cap stay (tx {:?})", receipt.transaction_hash);
        }
        Action::TransferOwnership { to } => {
            let receipt = registry.transfer_ownership(*to)?;
            if to.is_zero() {
                eprintln!("pending ownership transfer cancelled (tx {:?})", receipt.transaction_hash);
            } else {
                eprintln!(
                    "{to:?} may now take the registry over with `fl-aggregator owner accept` and its key (tx {:?})",
                    receipt.transaction_hash
                );
            }
        }
        Action::AcceptOwnership => {
            let receipt = registry.accept_ownership()?;
            eprintln!("{:?} now owns the registry (tx {:?})", client.address(), receipt.transaction_hash);
        }
        Action::ListLearners => {
            for learner in registry.learners()? {
                print_learner(&learner);
            }
        }
        Action::Status => {
            println!("registry {:?} version {}, {}", registry.address(), registry.version()?, registry.mode()?);
            match (registry.model_spec()?, registry.model_groups()?) {
                (None, _) => println!("model {}", ModelSpec::paper_cnn()),
                (Some(digest), 1) => println!("model spec {} (on IPFS as {})", hex(&digest), one_chunk_cid(&digest)),
                (Some(digest), groups) => println!("model groups {groups} {} (on IPFS as {})", hex(&digest), one_chunk_cid(&digest)),
            }
            println!("owner {:?}", registry.owner()?);
            let pending = registry.pending_owner()?;
            if !pending.is_zero() {
                println!("pending owner {pending:?}");
            }
            println!("round {}", registry.current_round()?);
            match registry.global_update()? {
                Some(global) => println!(
                    "global round {} cid {} digest {} inputs {}",
                    global.round,
                    global.cid,
                    hex(&global.digest),
                    hex(&global.inputs_commitment)
                ),
                None => println!("global none"),
            }
            let groups = registry.model_groups()?;
            for learner in registry.learners()? {
                print_learner(&learner);
                if groups > 1 {
                    println!("learner {} group {}", learner.node_id, registry.learner_group(learner.node_id)? + 1);
                }
            }
        }
    }
    Ok(())
}

/// Adds the canonical bytes of the federation's model (its spec, or every group's spec and
/// the groups' list) to IPFS (each one raw block: its CID follows from its digest), keeps
/// them in the node's MFS so that garbage collection never drops them, and returns the
/// digest the registry records (`None` for the built-in model).
pub fn publish_model(model: &FederationModel, ipfs: &fl_ipfs::Client) -> Result<Option<[u8; 32]>> {
    let ipfs_api = ipfs.api_url();
    for (what, text) in model.canonical_texts() {
        let digest = sha256(text.as_bytes());
        let cid = ipfs.add(text.as_bytes()).with_context(|| format!("adding {what} to IPFS at {ipfs_api}"))?;
        ensure!(
            cid == one_chunk_cid(&digest),
            "IPFS at {ipfs_api} stored {what} as {cid}, not as the raw block {}",
            one_chunk_cid(&digest)
        );
        ipfs.mfs_keep(&cid, &format!("/fl-aggregator/specs/{}", hex(&digest)))
            .with_context(|| format!("keeping {what} ({cid}) in the MFS of {ipfs_api}"))?;
        eprintln!("{what} added to IPFS as {cid}");
    }
    Ok(model.digest())
}

fn print_learner(learner: &fl_contracts::LearnerState) {
    match &learner.latest {
        Some(u) => println!(
            "learner {} {:?} cap {} round {} cid {} digest {}",
            learner.node_id,
            learner.account,
            learner.max_samples,
            u.round,
            u.cid,
            hex(&u.digest)
        ),
        None => println!("learner {} {:?} cap {} round none", learner.node_id, learner.account, learner.max_samples),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_groups_and_a_learners_group_parse() {
        let dir = std::env::temp_dir().join(format!("fl-operator-groups-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a.toml"), dir.join("b.toml"));
        std::fs::write(&a, "name = \"a\"\nfeatures = 4\nclasses = 3\n").unwrap();
        std::fs::write(&b, "name = \"b\"\nfeatures = 4\nclasses = 3\n[[layer]]\ndense = 5\n").unwrap();
        let args = |list: &[&str]| list.iter().map(OsString::from).collect::<Vec<_>>();
        let (a_arg, b_arg) = (a.to_str().unwrap(), b.to_str().unwrap());
        let parsed = parse("deploy", args(&["--max-samples", "9", "--model", a_arg, "--model", b_arg])).unwrap().unwrap();
        let Action::Deploy { model: FederationModel::Groups(ensemble), .. } = parsed.action else { panic!("{:?}", parsed.action) };
        assert_eq!(ensemble.groups.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let none = parse("deploy", args(&["--max-samples", "9"])).unwrap().unwrap();
        assert!(matches!(none.action, Action::Deploy { model: FederationModel::Single(spec), .. } if spec.is_builtin()));
        let one = parse("deploy", args(&["--max-samples", "9", "--model", a_arg])).unwrap().unwrap();
        assert!(matches!(one.action, Action::Deploy { model: FederationModel::Single(spec), .. } if spec.name == "a"));
        let err = parse("deploy", args(&["--max-samples", "9", "--model", a_arg, "--model", a_arg])).unwrap_err();
        assert!(format!("{err:#}").contains("model groups 1 and 2 are the same spec"), "{err:#}");
        let account = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
        let registry = ["--registry", "0x0000000000000000000000000000000000000abc"];
        let add = parse("learners", args(&[&["add", "3", account, "--group", "2"][..], &registry[..]].concat())).unwrap().unwrap();
        assert!(matches!(add.action, Action::AddLearner { node_id: 3, group: Some(2), .. }));
        let err = parse("status", args(&[&["--group", "2"][..], &registry[..]].concat())).unwrap_err();
        assert!(err.to_string().contains("--group goes with `learners add` only"), "{err}");
        let err = parse("status", args(&[&["--model", a_arg][..], &registry[..]].concat())).unwrap_err();
        assert!(err.to_string().contains("--model go with `deploy` only"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn actions_parse() {
        let add = parse_action("learners", &["add".into(), "3".into(), "0x70997970C51812dc3A010C7d01b50e0d17dc79C8".into()], None).unwrap();
        assert!(matches!(add, Action::AddLearner { node_id: 3, max_samples: None, .. }));
        assert!(parse_action("learners", &["add".into(), "x".into(), "0x00".into()], None).is_err());
        assert!(parse_action("deploy", &["extra".into()], Some(5)).is_err());
        assert_eq!(
            parse_action("deploy", &[], Some(5)).unwrap(),
            Action::Deploy { max_samples: 5, mode: Mode::Sync, model: FederationModel::Single(ModelSpec::paper_cnn()) }
        );
        let flags = |mode: Option<&str>, buffer, max_staleness| ModeFlags { mode: mode.map(String::from), buffer, max_staleness };
        assert_eq!(flags(None, None, None).finish().unwrap(), Mode::Sync);
        assert_eq!(flags(Some("async"), Some(5), None).finish().unwrap(), Mode::Async { buffer: 5, max_staleness: 4 });
        assert_eq!(flags(Some("async"), Some(2), Some(0)).finish().unwrap(), Mode::Async { buffer: 2, max_staleness: 0 });
        for (bad, says) in [
            (flags(Some("async"), None, None), "--mode async needs --buffer K"),
            (flags(Some("async"), Some(0), None), "--buffer 0: must be between 1 and"),
            (flags(None, Some(3), None), "--buffer and --max-staleness need --mode async"),
            (flags(Some("fast"), None, None), "--mode \"fast\": expected sync or async"),
        ] {
            let err = bad.finish().unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
        }
        let err = parse_action("deploy", &[], None).unwrap_err().to_string();
        assert!(err.contains("--max-samples N is required"), "{err}");
        let err = parse_action("status", &[], Some(5)).unwrap_err().to_string();
        assert!(err.contains("--max-samples goes with `deploy` and `learners add` only"), "{err}");
        let err = parse_action("learners", &["add".into(), "3".into(), "0x1234".into()], None).unwrap_err().to_string();
        assert!(err.contains("ADDRESS \"0x1234\" is not a 0x-prefixed 20-byte address"), "{err}");
        let addr = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8".to_string();
        assert!(matches!(
            parse_action("learners", &["replace".into(), "3".into(), addr.clone()], None).unwrap(),
            Action::ReplaceLearner { node_id: 3, .. }
        ));
        assert!(matches!(parse_action("owner", &["transfer".into(), addr], None).unwrap(), Action::TransferOwnership { .. }));
        assert_eq!(parse_action("owner", &["accept".into()], None).unwrap(), Action::AcceptOwnership);
        assert!(parse_action("owner", &["take".into()], None).is_err());
        assert_eq!(parse_cap("30000").unwrap(), 30_000);
        for bad in ["0", "-1", "x", "72057594037927936"] {
            let err = format!("{:#}", parse_cap(bad).unwrap_err());
            assert!(err.starts_with(&format!("--max-samples {bad}")) || err.starts_with(&format!("--max-samples \"{bad}\"")), "{err}");
        }
    }

    #[test]
    fn keys_on_the_command_line_are_refused() {
        let err = main("deploy", vec!["--private-key".into(), "00".into()]).unwrap_err().to_string();
        assert!(err.contains("never taken from the command line"), "{err}");
    }
}
