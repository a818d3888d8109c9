//! `fl-aggregator run`'s settings: `--config FILE` (TOML, one key per flag), then the
//! environment, then the flags, each overriding the one before, validated once into a
//! [`RunConfig`]. The chain and IPFS endpoints are read by `fl_contracts::endpoints`, as
//! for the learner and every other command. `--print-config` prints what a run would use,
//! in the file's keys, and exits: what an operator checks before restarting the service.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fl_contracts::endpoints::{EndpointSettings, Endpoints, Missing, CHAIN_HELP, IPFS_HELP};
use fl_core::encoding::Encoding;
use fl_core::flags::{number, positive};
use fl_core::rules::{parse_clip_norm, Recipe, Rule};
use lexopt::prelude::*;
use serde::Deserialize;

pub(crate) const USAGE: &str = "\
usage: fl-aggregator run --rounds R [--data DIR] [flags]
       fl-aggregator run --config FILE [flags]

aggregates federated rounds published through the registry and IPFS; whether rounds wait
for their learners or are asynchronous (a global model per K updates, stale ones damped)
is the registry's mode, set by `fl-aggregator deploy --mode`

  --config FILE          read settings from this TOML file, one key per flag (the flag's name
                         with _ for -; --data is data_dir; --no-X is X = false); see
                         /etc/fl-aggregator/aggregator.toml. Flags override the environment
                         (ETH_RPC_URL, FL_REGISTRY, FL_IPFS_API, FL_CONFIRMATIONS, FL_DATA_DIR),
                         which overrides the file
  --print-config         print the settings a run would use, as TOML, and exit
  --rounds R             stop after publishing the global model of round R
  --data PATH            the data whose test set evaluates every model: the MNIST folder (its
                         t10k files), or as --data-format says. Optional: without it nothing
                         is evaluated here, and the table, results, dashboard and metrics show
                         the accuracy each board reported for its update on its own test set
                         (the global model: their examples-weighted mean), marked as reported
  --data-format F        mnist (default), idx (the folder's t10k files), csv (the whole file)
                         or images (every image under the class folders)
  --label-column C       csv: the label column, by name or 1-based number
  --test-limit N         evaluate on only the first N test examples
  --seed N               seeds the initial model of round 0 (default 1)
  --rule RULE            how updates are combined: fedavg (default), median, trimmed-mean:B,
                         krum:F or multi-krum:F (see the README's \"Aggregation rules\")
  --clip-norm C          first clip each update's L2 distance from the previous global model to C
  --min-learners K       a round may close with K updates once --round-timeout passed
  --round-timeout SECS   how long to wait for every learner before closing with K
                         (synchronous rounds only)
  --fetch-workers N      threads fetching and checking updates at once (default 4); results
                         are folded in node-id order, at most 2N held at a time
  --global-encoding E    also publish each global model encoded as f16 (1.24 MB) or int8
                         (0.62 MB) for learners to download instead of the f32 model
                         (2.48 MB); named in the round record (default f32: none)
  --no-local-eval        do not evaluate each learner's model (saves time on big fleets)
  --no-verify            do not recompute each round with verify's code after publishing it
  --from-block N         first block to read events from (default: the registry's deployment)
  --poll-seconds S       longest pause between two polls of the chain (default 2)
  --results FILE         write results (accuracies, CIDs, transactions, gas, timings) as JSON
  --plot FILE            write an SVG plot of accuracy per round
  --listen ADDR:PORT     serve /healthz, /metrics (Prometheus) and a dashboard at / there
";

/// Validated settings of `fl-aggregator run`.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub endpoints: Endpoints,
    pub rounds: u64,
    /// The aggregator's evaluation data; `None`: nothing is evaluated here, the boards'
    /// reported figures are shown instead.
    pub data: Option<PathBuf>,
    /// How `data` is read (`mnist`, `idx`, `csv`, `images`).
    pub data_format: String,
    /// CSV: the label column.
    pub label_column: Option<String>,
    pub test_limit: Option<usize>,
    pub seed: u64,
    pub recipe: Recipe,
    pub min_learners: Option<usize>,
    pub round_timeout: Option<Duration>,
    /// Threads fetching and checking updates at once (`crate::fetch`).
    pub fetch_workers: usize,
    /// Also publish each global model in this encoding (`F32`: no encoded copy).
    pub global_encoding: Encoding,
    pub local_eval: bool,
    /// Recompute each published round with `verify` and report whether it matched.
    pub verify: bool,
    pub from_block: Option<u64>,
    pub max_poll: Duration,
    pub results: Option<PathBuf>,
    pub plot: Option<PathBuf>,
    /// Where `/healthz`, `/metrics` and the dashboard are served, if anywhere.
    pub listen: Option<SocketAddr>,
}

/// The config file as written: every key is optional here; what is required is checked
/// once the file, the environment and the flags are merged.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    rpc_url: Option<String>,
    chain_id: Option<u64>,
    registry: Option<String>,
    keystore: Option<PathBuf>,
    password_file: Option<PathBuf>,
    ipfs_api: Option<String>,
    confirmations: Option<u64>,
    rounds: Option<u64>,
    data_dir: Option<PathBuf>,
    data_format: Option<String>,
    label_column: Option<String>,
    test_limit: Option<usize>,
    seed: Option<u64>,
    rule: Option<String>,
    clip_norm: Option<f64>,
    min_learners: Option<usize>,
    round_timeout: Option<u64>,
    fetch_workers: Option<usize>,
    global_encoding: Option<String>,
    local_eval: Option<bool>,
    verify: Option<bool>,
    from_block: Option<u64>,
    poll_seconds: Option<f64>,
    results: Option<PathBuf>,
    plot: Option<PathBuf>,
    listen: Option<String>,
}

/// One source's settings (the file, the environment or the flags), values checked.
#[derive(Debug, Clone, Default)]
struct Settings {
    endpoints: EndpointSettings,
    rounds: Option<u64>,
    data: Option<PathBuf>,
    data_format: Option<String>,
    label_column: Option<String>,
    test_limit: Option<usize>,
    seed: Option<u64>,
    rule: Option<Rule>,
    clip_norm: Option<f64>,
    min_learners: Option<usize>,
    round_timeout: Option<u64>,
    fetch_workers: Option<usize>,
    global_encoding: Option<Encoding>,
    local_eval: Option<bool>,
    verify: Option<bool>,
    from_block: Option<u64>,
    poll_seconds: Option<f64>,
    results: Option<PathBuf>,
    plot: Option<PathBuf>,
    listen: Option<SocketAddr>,
}

impl Settings {
    /// These settings, with the gaps filled from `lower` (a source of lower precedence).
    fn or(self, lower: Settings) -> Settings {
        Settings {
            endpoints: self.endpoints.or(lower.endpoints),
            rounds: self.rounds.or(lower.rounds),
            data: self.data.or(lower.data),
            data_format: self.data_format.or(lower.data_format),
            label_column: self.label_column.or(lower.label_column),
            test_limit: self.test_limit.or(lower.test_limit),
            seed: self.seed.or(lower.seed),
            rule: self.rule.or(lower.rule),
            clip_norm: self.clip_norm.or(lower.clip_norm),
            min_learners: self.min_learners.or(lower.min_learners),
            round_timeout: self.round_timeout.or(lower.round_timeout),
            fetch_workers: self.fetch_workers.or(lower.fetch_workers),
            global_encoding: self.global_encoding.or(lower.global_encoding),
            local_eval: self.local_eval.or(lower.local_eval),
            verify: self.verify.or(lower.verify),
            from_block: self.from_block.or(lower.from_block),
            poll_seconds: self.poll_seconds.or(lower.poll_seconds),
            results: self.results.or(lower.results),
            plot: self.plot.or(lower.plot),
            listen: self.listen.or(lower.listen),
        }
    }

    /// The environment's settings beyond the endpoints': only the data folder.
    fn from_env() -> Result<Settings> {
        Ok(Settings {
            endpoints: EndpointSettings::from_env()?,
            data: std::env::var_os("FL_DATA_DIR").filter(|v| !v.is_empty()).map(PathBuf::from),
            ..Settings::default()
        })
    }

    /// Reads and checks the config file at `path`; errors name the file and the key.
    fn from_file(path: &Path) -> Result<Settings> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
        let file: FileConfig = toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))?;
        let at = |key: &str| format!("{key} (in {})", path.display());
        Ok(Settings {
            endpoints: EndpointSettings {
                rpc_url: file.rpc_url,
                chain_id: file.chain_id,
                registry: file.registry,
                keystore: file.keystore,
                password_file: file.password_file,
                ipfs_api: file.ipfs_api,
                confirmations: file.confirmations,
            },
            rounds: file.rounds,
            data: file.data_dir,
            data_format: file.data_format,
            label_column: file.label_column,
            test_limit: file.test_limit.map(|n| positive(n, &at("test_limit"))).transpose()?,
            seed: file.seed,
            rule: file.rule.map(|text| text.parse::<Rule>().with_context(|| at("rule"))).transpose()?,
            clip_norm: file.clip_norm.map(|c| parse_clip_norm(&c.to_string()).with_context(|| at("clip_norm"))).transpose()?,
            min_learners: file.min_learners.map(|n| positive(n, &at("min_learners"))).transpose()?,
            round_timeout: file.round_timeout,
            fetch_workers: file.fetch_workers.map(|n| positive(n, &at("fetch_workers"))).transpose()?,
            global_encoding: file
                .global_encoding
                .map(|text| text.parse::<Encoding>().with_context(|| at("global_encoding")))
                .transpose()?,
            local_eval: file.local_eval,
            verify: file.verify,
            from_block: file.from_block,
            poll_seconds: file.poll_seconds,
            results: file.results,
            plot: file.plot,
            listen: file.listen.map(|text| parse_listen(&text).with_context(|| at("listen"))).transpose()?,
        })
    }
}

fn parse_listen(text: &str) -> Result<SocketAddr> {
    text.parse().with_context(|| format!("{text:?} is not an IP address and port (e.g. 127.0.0.1:9464)"))
}

/// What `RunConfig::parse` was asked to do.
pub enum Parsed {
    /// Run with this config.
    Run(Box<RunConfig>),
    /// `--help` or `--print-config` printed what was asked; nothing to run.
    Printed,
}

impl RunConfig {
    /// Builds the config from `--config FILE`, then the environment, then flags (each
    /// overriding the one before).
    pub fn parse(args: Vec<OsString>) -> Result<Parsed> {
        let mut parser = lexopt::Parser::from_args(args);
        let mut flags = Settings::default();
        let (mut config_path, mut print) = (None, false);
        while let Some(arg) = parser.next()? {
            match arg {
                Long(flag) if EndpointSettings::handles(flag) => {
                    let flag = flag.to_string();
                    flags.endpoints.set_flag(&flag, parser.value()?)?;
                }
                Long("config") => config_path = Some(PathBuf::from(parser.value()?)),
                Long("print-config") => print = true,
                Long("rounds") => flags.rounds = Some(number(&mut parser, "--rounds")?),
                Long("data") => flags.data = Some(PathBuf::from(parser.value()?)),
                Long("data-format") => flags.data_format = Some(number(&mut parser, "--data-format")?),
                Long("label-column") => flags.label_column = Some(number(&mut parser, "--label-column")?),
                Long("test-limit") => flags.test_limit = Some(positive(number(&mut parser, "--test-limit")?, "--test-limit")?),
                Long("seed") => flags.seed = Some(number(&mut parser, "--seed")?),
                Long("rule") => flags.rule = Some(number(&mut parser, "--rule")?),
                Long("clip-norm") => flags.clip_norm = Some(parse_clip_norm(&parser.value()?.string()?).context("--clip-norm")?),
                Long("min-learners") => flags.min_learners = Some(positive(number(&mut parser, "--min-learners")?, "--min-learners")?),
                Long("round-timeout") => flags.round_timeout = Some(number(&mut parser, "--round-timeout")?),
                Long("fetch-workers") => flags.fetch_workers = Some(positive(number(&mut parser, "--fetch-workers")?, "--fetch-workers")?),
                Long("global-encoding") => flags.global_encoding = Some(number(&mut parser, "--global-encoding")?),
                Long("no-local-eval") => flags.local_eval = Some(false),
                Long("no-verify") => flags.verify = Some(false),
                Long("from-block") => flags.from_block = Some(number(&mut parser, "--from-block")?),
                Long("poll-seconds") => flags.poll_seconds = Some(number(&mut parser, "--poll-seconds")?),
                Long("results") => flags.results = Some(PathBuf::from(parser.value()?)),
                Long("plot") => flags.plot = Some(PathBuf::from(parser.value()?)),
                Long("listen") => flags.listen = Some(parse_listen(&parser.value()?.string()?).context("--listen")?),
                Short('h') | Long("help") => {
                    print!("{USAGE}{CHAIN_HELP}{IPFS_HELP}");
                    return Ok(Parsed::Printed);
                }
                _ => return Err(arg.unexpected().into()),
            }
        }
        let file = match &config_path {
            Some(path) => Settings::from_file(path)?,
            None => Settings::default(),
        };
        let config = RunConfig::from_settings(flags.or(Settings::from_env()?).or(file), config_path.as_deref())?;
        if print {
            print!("{}", config.to_toml());
            return Ok(Parsed::Printed);
        }
        Ok(Parsed::Run(Box::new(config)))
    }

    /// Checks the merged settings; `file` names the config file in errors.
    fn from_settings(s: Settings, file: Option<&Path>) -> Result<RunConfig> {
        let in_file = file.map(|p| format!(" (in {})", p.display())).unwrap_or_default();
        let poll = s.poll_seconds.unwrap_or(2.0);
        if !(poll > 0.0 && poll <= 3600.0) {
            bail!("--poll-seconds (poll_seconds{in_file}) must be between 0 and 3600, got {poll}");
        }
        if s.min_learners.is_some() != s.round_timeout.is_some() {
            bail!("--min-learners and --round-timeout go together (min_learners and round_timeout{in_file}): a round closes early only after the timeout, with at least K updates");
        }
        let endpoints = s.endpoints.finish(Missing::Loopback, &in_file)?;
        endpoints.registry()?;
        Ok(RunConfig {
            endpoints,
            rounds: s.rounds.with_context(|| format!("--rounds R (rounds{in_file}) is required"))?,
            data: s.data,
            data_format: {
                let format = s.data_format.unwrap_or_else(|| "mnist".into());
                format.parse::<fl_core::data::DataFormat>().with_context(|| format!("--data-format (data_format{in_file})"))?;
                format
            },
            label_column: s.label_column,
            test_limit: s.test_limit,
            seed: s.seed.unwrap_or(1),
            recipe: Recipe { rule: s.rule.unwrap_or(Rule::FedAvg), clip_norm: s.clip_norm },
            min_learners: s.min_learners,
            round_timeout: s.round_timeout.map(Duration::from_secs),
            fetch_workers: s.fetch_workers.unwrap_or(4),
            global_encoding: s.global_encoding.unwrap_or(Encoding::F32),
            local_eval: s.local_eval.unwrap_or(true),
            verify: s.verify.unwrap_or(true),
            from_block: s.from_block,
            max_poll: Duration::from_secs_f64(poll),
            results: s.results,
            plot: s.plot,
            listen: s.listen,
        })
    }

    /// The settings in the config file's keys, every key present (unset optional ones as
    /// comments), so that the output is itself a config file that gives the same run.
    pub fn to_toml(&self) -> String {
        let e = &self.endpoints;
        let string = |v: &str| format!("{v:?}");
        let path = |p: &Path| format!("{:?}", p.display().to_string());
        let mut lines: Vec<(&str, Option<String>)> = vec![
            ("rpc_url", Some(string(&e.rpc_url))),
            ("chain_id", e.chain_id.map(|n| n.to_string())),
            ("registry", e.registry.map(|a| string(&format!("{a:?}")))),
            ("keystore", e.key.keystore.as_deref().map(path)),
            ("password_file", e.key.password_file.as_deref().map(path)),
            ("ipfs_api", Some(string(&e.ipfs_api))),
            ("confirmations", Some(e.confirmations.to_string())),
            ("rounds", Some(self.rounds.to_string())),
            ("data_dir", self.data.as_deref().map(path)),
            ("data_format", Some(string(&self.data_format))),
            ("label_column", self.label_column.as_deref().map(string)),
            ("test_limit", self.test_limit.map(|n| n.to_string())),
            ("seed", Some(self.seed.to_string())),
            ("rule", Some(string(&self.recipe.rule.to_string()))),
            ("clip_norm", self.recipe.clip_norm.map(|c| format!("{c:?}"))),
            ("min_learners", self.min_learners.map(|n| n.to_string())),
            ("round_timeout", self.round_timeout.map(|d| d.as_secs().to_string())),
            ("fetch_workers", Some(self.fetch_workers.to_string())),
            ("global_encoding", Some(string(self.global_encoding.name()))),
            ("local_eval", Some(self.local_eval.to_string())),
            ("verify", Some(self.verify.to_string())),
            ("from_block", self.from_block.map(|n| n.to_string())),
            ("poll_seconds", Some(format!("{:?}", self.max_poll.as_secs_f64()))),
            ("results", self.results.as_deref().map(path)),
            ("plot", self.plot.as_deref().map(path)),
            ("listen", self.listen.map(|a| string(&a.to_string()))),
        ];
        lines
            .drain(..)
            .map(|(key, value)| match value {
                Some(value) => format!("{key} = {value}\n"),
                None => format!("# {key} (not set)\n"),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGISTRY: &str = "0x5fbdb2315678afecb367f032d93f642f64180aa3";

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fl-aggregator-config-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn parse(args: &[&str]) -> Result<RunConfig> {
        match RunConfig::parse(args.iter().map(OsString::from).collect())? {
            Parsed::Run(config) => Ok(*config),
            Parsed::Printed => panic!("nothing was to be printed"),
        }
    }

    /// Every flag `run --help` lists, but those that are not settings.
    fn flags_of_usage() -> Vec<String> {
        format!("{USAGE}{CHAIN_HELP}{IPFS_HELP}")
            .lines()
            .filter_map(|line| line.trim_start().strip_prefix("--"))
            .map(|rest| rest.split_whitespace().next().unwrap().to_string())
            .filter(|flag| !["config", "print-config"].contains(&flag.as_str()))
            .collect()
    }

    /// A flag, a valid value for it, and the same setting as a line of the config file.
    fn example(flag: &str) -> (Vec<String>, String) {
        let value = match flag {
            "rpc-url" => "http://127.0.0.1:18545",
            "chain-id" => "31337",
            "registry" => "0x0000000000000000000000000000000000000abc",
            "keystore" => "/etc/fl-aggregator/keys/other.json",
            "password-file" => "/etc/fl-aggregator/keys/other-password",
            "ipfs-api" => "http://127.0.0.1:15001",
            "confirmations" => "3",
            "rounds" => "7",
            "data" => "/srv/mnist",
            "data-format" => "idx",
            "label-column" => "reading",
            "test-limit" => "500",
            "seed" => "9",
            "rule" => "trimmed-mean:0.2",
            "clip-norm" => "2.5",
            "min-learners" | "round-timeout" => "4",
            "fetch-workers" => "16",
            "global-encoding" => "int8",
            "from-block" => "12",
            "poll-seconds" => "0.5",
            "results" => "/srv/results.json",
            "plot" => "/srv/plot.svg",
            "listen" => "127.0.0.1:9464",
            "no-local-eval" | "no-verify" => {
                let key = flag.trim_start_matches("no-").replace('-', "_");
                return (vec![format!("--{flag}")], format!("{key} = false\n"));
            }
            other => panic!("flag --{other} has no example here: add one, and its config key"),
        };
        let key = if flag == "data" { "data_dir".to_string() } else { flag.replace('-', "_") };
        let number = value.parse::<f64>().is_ok() && !["rule"].contains(&flag);
        let toml_value = if number { value.to_string() } else { format!("{value:?}") };
        let mut flags = vec![format!("--{flag}"), value.to_string()];
        let mut line = format!("{key} = {toml_value}\n");
        // These two go together: give both, each way.
        if flag == "min-learners" || flag == "round-timeout" {
            let other = if flag == "min-learners" { "round-timeout" } else { "min-learners" };
            flags.extend([format!("--{other}"), "4".into()]);
            line += &format!("{} = 4\n", other.replace('-', "_"));
        }
        (flags, line)
    }

    #[test]
    fn every_flag_of_run_has_a_config_key_that_gives_the_same_run() {
        let dir = temp_dir("every-flag");
        let path = dir.join("aggregator.toml");
        let base = format!("registry = {REGISTRY:?}\nrounds = 1\ndata_dir = \"/data\"\n");
        let flags = flags_of_usage();
        assert!(flags.len() >= 20, "{flags:?}");
        for flag in flags {
            let (args, line) = example(&flag);
            // The base without the key at hand, which the line sets instead.
            let key = line.split(" = ").next().unwrap();
            let rest: String = base.lines().filter(|l| !l.starts_with(&format!("{key} = "))).map(|l| format!("{l}\n")).collect();
            std::fs::write(&path, format!("{rest}{line}")).unwrap();
            let from_file = parse(&["--config", path.to_str().unwrap()]).unwrap();
            std::fs::write(&path, &base).unwrap();
            let mut with_flag: Vec<&str> = vec!["--config", path.to_str().unwrap()];
            with_flag.extend(args.iter().map(String::as_str));
            let from_flag = parse(&with_flag).unwrap();
            assert_eq!(from_file.to_toml(), from_flag.to_toml(), "--{flag} and `{}`", line.trim());
            let default = parse(&["--config", path.to_str().unwrap()]).unwrap();
            assert_ne!(default.to_toml(), from_flag.to_toml(), "--{flag} changed nothing");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_packaged_template_names_every_key_and_is_what_the_reader_accepts() {
        let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cross/pkg/fl-aggregator/aggregator.toml");
        let text = std::fs::read_to_string(&template).unwrap();
        for flag in flags_of_usage() {
            let (_, line) = example(&flag);
            for key in line.lines().map(|l| l.split(" = ").next().unwrap()) {
                let written = text.lines().any(|l| {
                    let l = l.trim_start_matches("# ");
                    l.starts_with(&format!("{key} = "))
                });
                assert!(written, "the template has no `{key} = ...` line (set or commented out)");
            }
        }
        // The registry is the one required key it cannot know.
        let config = parse(&["--config", template.to_str().unwrap(), "--registry", REGISTRY]).unwrap();
        assert_eq!(config.data, Some(PathBuf::from("/var/lib/fl-aggregator/data")));
        assert_eq!(config.recipe.rule, Rule::FedAvg);
        assert!(config.verify && config.local_eval && config.listen.is_none());
        // Uncommenting every optional line gives a file the reader accepts as well.
        let dir = temp_dir("template");
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if rest.split(" = ").next().is_some_and(|k| !k.contains(' ') && rest.contains(" = ")) => rest,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let path = dir.join("aggregator.toml");
        std::fs::write(&path, uncommented).unwrap();
        let config = parse(&["--config", path.to_str().unwrap()]).unwrap();
        assert_eq!(config.endpoints.chain_id, Some(31337));
        assert!(config.listen.is_some() && config.min_learners.is_some() && config.recipe.clip_norm.is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn flags_override_the_file_and_printing_the_config_gives_a_file_that_reads_back_the_same() {
        let dir = temp_dir("override");
        let path = dir.join("aggregator.toml");
        std::fs::write(
            &path,
            format!("registry = {REGISTRY:?}\nrounds = 5\ndata_dir = \"/data\"\nrule = \"median\"\nlisten = \"127.0.0.1:9464\"\n"),
        )
        .unwrap();
        let config = parse(&["--config", path.to_str().unwrap(), "--rounds", "8", "--rule", "krum:1"]).unwrap();
        assert_eq!((config.rounds, config.recipe.rule.to_string().as_str()), (8, "krum:1"));
        assert_eq!(config.listen, Some("127.0.0.1:9464".parse().unwrap()));
        let printed = config.to_toml();
        std::fs::write(&path, printed.as_bytes()).unwrap();
        assert_eq!(parse(&["--config", path.to_str().unwrap()]).unwrap().to_toml(), printed);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_evaluation_data_is_optional() {
        let config = parse(&["--registry", REGISTRY, "--rounds", "2"]).unwrap();
        assert_eq!(config.data, None);
        assert!(config.to_toml().contains("# data_dir (not set)\n"), "{}", config.to_toml());
        let config = parse(&["--registry", REGISTRY, "--rounds", "2", "--data", "/srv/mnist"]).unwrap();
        assert_eq!(config.data, Some(PathBuf::from("/srv/mnist")));
    }

    #[test]
    fn config_errors_name_the_file_and_the_key() {
        let dir = temp_dir("errors");
        let path = dir.join("aggregator.toml");
        let path_arg = path.to_str().unwrap();
        let base = format!("registry = {REGISTRY:?}\nrounds = 1\ndata_dir = \"/data\"\n");
        for (line, expected) in [
            ("roundz = 3\n", "unknown field `roundz`"),
            ("seed = \"one\"\n", "invalid type"),
            ("rule = \"krum\"\n", "rule (in"),
            ("clip_norm = -1.0\n", "clip_norm (in"),
            ("listen = \"localhost\"\n", "listen (in"),
            ("test_limit = 0\n", "test_limit (in"),
            ("min_learners = 2\n", "(min_learners and round_timeout (in"),
            ("poll_seconds = 0.0\n", "poll_seconds (in"),
            ("confirmations = 65\n", "65 confirmations is more than 64"),
        ] {
            std::fs::write(&path, format!("{base}{line}")).unwrap();
            let message = format!("{:#}", parse(&["--config", path_arg]).unwrap_err());
            assert!(message.contains(expected) && message.contains(path_arg), "{line}: {message}");
        }
        std::fs::write(&path, "registry = \"0x12\"\n").unwrap();
        let message = format!("{:#}", parse(&["--config", path_arg]).unwrap_err());
        assert!(message.contains("not a 0x-prefixed 20-byte address") && message.contains(path_arg), "{message}");
        let message = format!("{:#}", parse(&["--config", dir.join("missing.toml").to_str().unwrap()]).unwrap_err());
        assert!(message.contains("missing.toml"), "{message}");
        let message = format!("{:#}", parse(&["--registry", REGISTRY, "--data", "/d", "--listen", "nowhere"]).unwrap_err());
        assert!(message.starts_with("--listen"), "{message}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
