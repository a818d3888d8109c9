//! The header node as a service: what `fl-aggregator run` is doing, kept in a [`Monitor`]
//! the run loop updates, and served with `--listen ADDR:PORT` by one blocking HTTP thread
//! (tiny_http, no async runtime):
//!
//! - `/healthz`: 200 `ok` when the chain node and the IPFS node both answer now (each asked
//!   with a 3-second limit), else 503 and which one did not, and why;
//! - `/metrics`: the Prometheus text exposition format (version 0.0.4) of the monitor;
//! - `/`: a dashboard page (HTML, CSS and script inline: nothing from elsewhere) that reads
//!   `/api/status` every two seconds and draws the round table, each learner's last update
//!   and lateness, the accuracy plot and whether each round's recomputation matched;
//! - `/api/status`: the monitor as JSON.
//!
//! Memory: the monitor keeps one small row per registered learner and per round (the last
//! [`ROUNDS_KEPT`] rounds); no model is ever held here.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{anyhow, Result};
use fl_contracts::{Mode, Rpc};
use serde::Serialize;

use crate::report::RoundResult;

/// Rounds the dashboard and the monitor remember (results.json keeps them all).
pub const ROUNDS_KEPT: usize = 1000;

/// Why an update was left out of a round, as a metric label: a small fixed set, so that
/// the exposition's series stay bounded whatever the learners send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeftOut {
    /// IPFS did not serve the model (unreachable node, no provider, timeout, too large).
    Unavailable,
    /// The bytes served do not have the digest recorded on chain.
    DigestMismatch,
    /// Not a model file this aggregator reads.
    InvalidFile,
    /// The file's round or sample count is not the chain's.
    WrongRoundOrSamples,
    /// A model of another architecture or layout than the others.
    Incompatible,
    /// The learner was removed before the round closed.
    Unregistered,
    /// Asynchronous rounds: trained on a global model more than the staleness bound old.
    TooStale,
    /// Asynchronous rounds: the same learner's newer update is in the same global model.
    Superseded,
}

impl LeftOut {
    pub const ALL: [LeftOut; 8] = [
        LeftOut::Unavailable,
        LeftOut::DigestMismatch,
        LeftOut::InvalidFile,
        LeftOut::WrongRoundOrSamples,
        LeftOut::Incompatible,
        LeftOut::Unregistered,
        LeftOut::TooStale,
        LeftOut::Superseded,
    ];

    pub fn label(self) -> &'static str {
        match self {
            LeftOut::Unavailable => "unavailable",
            LeftOut::DigestMismatch => "digest_mismatch",
            LeftOut::InvalidFile => "invalid_file",
            LeftOut::WrongRoundOrSamples => "wrong_round_or_samples",
            LeftOut::Incompatible => "incompatible",
            LeftOut::Unregistered => "unregistered",
            LeftOut::TooStale => "too_stale",
            LeftOut::Superseded => "superseded",
        }
    }
}

/// Why the open round has not closed yet, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Waiting {
    /// Updates of registered learners are still to come.
    ForLearners,
    /// Every update is in, but the rule needs more usable ones (Krum: 2F + 3).
    RuleNeedsMoreUpdates,
    /// Fewer usable updates than `--min-learners` after leaving some out.
    MinLearners,
}

impl Waiting {
    pub const ALL: [Waiting; 3] = [Waiting::ForLearners, Waiting::RuleNeedsMoreUpdates, Waiting::MinLearners];

    pub fn label(self) -> &'static str {
        match self {
            Waiting::ForLearners => "waiting_for_learners",
            Waiting::RuleNeedsMoreUpdates => "rule_needs_more_updates",
            Waiting::MinLearners => "min_learners",
        }
    }
}

/// A registered learner as the dashboard shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LearnerRow {
    pub node_id: u64,
    /// The latest round this learner sent an update for, if any was seen.
    pub last_round: Option<u64>,
    pub last_cid: Option<String>,
    /// Rounds behind: the open round minus the round it last sent for (0 when it has sent
    /// for the open round, `None` when it never sent).
    pub lateness: Option<u64>,
}

/// Seconds of each phase of a round, as exposed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Phases {
    pub fetch: f64,
    pub verify: f64,
    pub aggregate: f64,
    pub evaluate: f64,
    pub publish: f64,
}

/// A published round as the dashboard shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RoundRow {
    pub round: u64,
    pub published_at: f64,
    /// The aggregator's evaluation, or without a test set (`run` without `--data`) the
    /// examples-weighted mean of what the inputs' boards reported: `accuracy_source` says.
    pub accuracy: Option<f64>,
    pub loss: Option<f64>,
    /// `"server"` or `"reported"` (by the boards), when there is an accuracy.
    pub accuracy_source: Option<&'static str>,
    /// The inputs' reported mean, whether or not the aggregator evaluated the model too.
    pub reported_accuracy: Option<f64>,
    /// Model groups: each group's model alone on the test set, in group order (empty for
    /// one model, or without a test set).
    pub group_accuracy: Vec<f64>,
    pub cid: String,
    pub inputs: Vec<u64>,
    pub left_out: Vec<u64>,
    pub gas: Option<u64>,
    pub phases: Phases,
    /// `Some(true)` when `verify`'s recomputation matched, `Some(false)` when it did not,
    /// `None` while not (yet) checked.
    pub verified: Option<bool>,
    /// What the recomputation found wrong, or why it could not run.
    pub verify_problems: Vec<String>,
}

/// What the run is doing: everything `/metrics`, `/api/status` and the dashboard show.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub chain_id: u64,
    pub registry: String,
    pub rule: String,
    /// The federation's model as the chain declares it: the built-in CNN, a spec's name and
    /// digest, or an ensemble's groups.
    pub model: String,
    /// The registry's mode in words ("synchronous rounds", or "asynchronous rounds (...)").
    pub mode: String,
    /// Asynchronous rounds: the registry's buffer K and staleness bound S (0 and 0 when
    /// synchronous).
    pub buffer: u64,
    pub max_staleness: u64,
    /// The round the run stops after.
    pub rounds: u64,
    /// The round being collected (the chain's current round).
    pub round: u64,
    /// What the loop is doing now: `starting`, `waiting`, `fetching`, `aggregating`,
    /// `evaluating`, `publishing`, `verifying`, `done`.
    pub phase: &'static str,
    pub waiting: Option<Waiting>,
    /// The open round's state in words, as the log says it.
    pub waiting_reason: String,
    pub learners_registered: usize,
    /// Updates of registered learners for the open round seen on chain.
    pub updates_in: usize,
    pub learners: BTreeMap<u64, LearnerRow>,
    pub published: VecDeque<RoundRow>,
    pub rounds_published_total: u64,
    pub gas_used_total: u64,
    pub left_out_total: BTreeMap<LeftOut, u64>,
    pub verify_failures_total: u64,
    pub started_at: f64,
}

/// The run loop's shared status. Cheap to clone; every clone sees the same status.
#[derive(Clone, Default)]
pub struct Monitor(Arc<Mutex<Status>>);

impl Monitor {
    pub fn new(chain_id: u64, registry: String, rule: String, model: String, mode: Mode, rounds: u64) -> Monitor {
        let (buffer, max_staleness) = mode.parameters();
        Monitor(Arc::new(Mutex::new(Status {
            version: env!("CARGO_PKG_VERSION"),
            chain_id,
            registry,
            rule,
            model,
            mode: mode.to_string(),
            buffer,
            max_staleness,
            rounds,
            phase: "starting",
            started_at: crate::report::unix_now(),
            ..Status::default()
        })))
    }

    /// The status, even if a thread panicked while holding it (it only holds plain data).
    fn lock(&self) -> MutexGuard<'_, Status> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A copy of the status.
    pub fn snapshot(&self) -> Status {
        self.lock().clone()
    }

    pub fn phase(&self, phase: &'static str) {
        self.lock().phase = phase;
    }

    /// The open round, its registered learners and the updates seen for it (node id, CID).
    pub fn collecting(&self, round: u64, registered: &[u64], arrived: &[(u64, String)], waiting: Option<(Waiting, String)>) {
        let mut s = self.lock();
        s.round = round;
        s.phase = "waiting";
        s.learners_registered = registered.len();
        s.updates_in = arrived.len();
        s.learners.retain(|id, _| registered.contains(id));
        for id in registered {
            s.learners.entry(*id).or_insert_with(|| LearnerRow { node_id: *id, ..LearnerRow::default() });
        }
        for (id, cid) in arrived {
            if let Some(row) = s.learners.get_mut(id) {
                row.last_round = Some(round);
                row.last_cid = Some(cid.clone());
            }
        }
        for row in s.learners.values_mut() {
            row.lateness = row.last_round.map(|last| round.saturating_sub(last));
        }
        (s.waiting, s.waiting_reason) = match waiting {
            Some((why, text)) => (Some(why), text),
            None => (None, String::new()),
        };
    }

    /// An update left out of the open round, for this reason.
    pub fn left_out(&self, why: LeftOut) {
        *self.lock().left_out_total.entry(why).or_default() += 1;
    }

    /// A round this run published, with what its record says was left out.
    pub fn published(&self, result: &RoundResult, left_out: Vec<u64>) {
        let mut s = self.lock();
        for learner in &result.learners {
            let row = s.learners.entry(learner.node_id).or_insert_with(|| LearnerRow { node_id: learner.node_id, ..LearnerRow::default() });
            if row.last_round.is_none_or(|last| last <= result.round) {
                row.last_round = Some(result.round);
                row.last_cid = Some(learner.model.cid.clone());
            }
        }
        s.rounds_published_total += 1;
        s.gas_used_total += result.global.gas.unwrap_or(0);
        let t = &result.timings;
        s.published.push_back(RoundRow {
            round: result.round,
            published_at: result.published_at,
            accuracy: result.global.shown_accuracy().map(|(a, _)| a),
            loss: match result.global.accuracy {
                Some(_) => result.global.loss,
                None => result.global.reported.map(|r| r.loss),
            },
            accuracy_source: result.global.shown_accuracy().map(|(_, reported)| if reported { "reported" } else { "server" }),
            reported_accuracy: result.global.reported.map(|r| r.accuracy),
            group_accuracy: result.group_accuracy.clone(),
            cid: result.global.cid.clone(),
            inputs: result.learners.iter().filter(|l| l.used).map(|l| l.node_id).collect(),
            left_out,
            gas: result.global.gas,
            phases: Phases { fetch: t.fetch_s, verify: t.verify_s, aggregate: t.average_s, evaluate: t.evaluate_s, publish: t.publish_s },
            verified: None,
            verify_problems: Vec::new(),
        });
        while s.published.len() > ROUNDS_KEPT {
            s.published.pop_front();
        }
        s.waiting = None;
        s.waiting_reason.clear();
    }

    /// Rounds read back from an earlier run's results file, so that a restarted service
    /// still shows them (their recomputation is not repeated).
    pub fn resumed(&self, earlier: &[RoundResult]) {
        for result in earlier.iter().rev().take(ROUNDS_KEPT).rev() {
            self.published(result, Vec::new());
        }
        let mut s = self.lock();
        (s.rounds_published_total, s.gas_used_total) = (0, 0);
    }

    /// The outcome of recomputing `round` after publishing it: the problems found, or why
    /// it could not be recomputed.
    pub fn verified(&self, round: u64, outcome: std::result::Result<Vec<String>, String>, seconds: f64) {
        let mut s = self.lock();
        let (ok, problems) = match outcome {
            Ok(problems) => (problems.is_empty(), problems),
            Err(why) => (false, vec![why]),
        };
        if !ok {
            s.verify_failures_total += 1;
        }
        if let Some(row) = s.published.iter_mut().rev().find(|r| r.round == round) {
            row.verified = Some(ok);
            row.verify_problems = problems;
            row.phases.verify = seconds;
        }
    }
}

/// Escapes a label value of the Prometheus text format.
fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The status in the Prometheus text exposition format 0.0.4.
pub fn metrics(s: &Status) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP fl_aggregator_{name} {help}");
        let _ = writeln!(out, "# TYPE fl_aggregator_{name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "fl_aggregator_{name}{labels} {value}");
        }
    };
    let one = |value: f64| vec![(String::new(), value)];
    family(
        "info",
        "gauge",
        "The aggregator's version, chain, registry, aggregation rule, the federation's model and the registry's round mode (value 1; buffer and max_staleness 0 when synchronous).",
        &[(
            format!(
                "{{version=\"{}\",chain_id=\"{}\",registry=\"{}\",rule=\"{}\",model=\"{}\",mode=\"{}\",buffer=\"{}\",max_staleness=\"{}\"}}",
                label_value(s.version),
                s.chain_id,
                label_value(&s.registry),
                label_value(&s.rule),
                label_value(&s.model),
                if s.buffer == 0 { "sync" } else { "async" },
                s.buffer,
                s.max_staleness
            ),
            1.0,
        )],
    );
    family("round", "gauge", "The round being collected (the registry's current round).", &one(s.round as f64));
    family("target_round", "gauge", "The round after which this run stops.", &one(s.rounds as f64));
    family("learners_registered", "gauge", "Learners registered on the registry.", &one(s.learners_registered as f64));
    family("updates_in", "gauge", "Updates of registered learners seen on chain for the current round.", &one(s.updates_in as f64));
    let waiting: Vec<(String, f64)> =
        Waiting::ALL.iter().map(|w| (format!("{{reason=\"{}\"}}", w.label()), f64::from(u8::from(s.waiting == Some(*w))))).collect();
    family("round_open", "gauge", "1 for the reason the current round is still open, 0 for the others.", &waiting);
    let last = s.published.back();
    let phases: Vec<(String, f64)> = match last {
        Some(row) => [
            ("fetch", row.phases.fetch),
            ("verify", row.phases.verify),
            ("aggregate", row.phases.aggregate),
            ("evaluate", row.phases.evaluate),
            ("publish", row.phases.publish),
        ]
        .iter()
        .map(|(phase, seconds)| (format!("{{phase=\"{phase}\"}}"), *seconds))
        .collect(),
        None => Vec::new(),
    };
    family(
        "last_round_phase_seconds",
        "gauge",
        "Seconds the last published round spent fetching (with digest checks), aggregating, evaluating, publishing, and recomputing it with verify.",
        &phases,
    );
    if let Some(accuracy) = last.filter(|row| row.accuracy_source == Some("server")).and_then(|row| row.accuracy) {
        family("global_accuracy", "gauge", "Test accuracy of the last published global model, in [0, 1].", &one(accuracy));
    }
    let groups: Vec<(String, f64)> = last
        .map(|row| row.group_accuracy.iter().enumerate().map(|(g, a)| (format!("{{group=\"{}\"}}", g + 1), *a)).collect())
        .unwrap_or_default();
    if !groups.is_empty() {
        family(
            "group_accuracy",
            "gauge",
            "Model groups: test accuracy of each group's model alone in the last published global model (an ensemble), in [0, 1].",
            &groups,
        );
    }
    if let Some(accuracy) = last.and_then(|row| row.reported_accuracy) {
        family(
            "global_reported_accuracy",
            "gauge",
            "Examples-weighted mean of the test accuracies the last global model's inputs reported on their own test sets (recorded, not checked), in [0, 1].",
            &one(accuracy),
        );
    }
    if let Some(row) = last {
        family("last_published_round", "gauge", "The last round this service published or read back.", &one(row.round as f64));
        let verified = row.verified.map(|ok| f64::from(u8::from(ok))).unwrap_or(f64::NAN);
        family(
            "last_round_verified",
            "gauge",
            "1 if the last round's recomputation matched, 0 if not, NaN while unchecked.",
            &one(verified),
        );
    }
    family("rounds_published_total", "counter", "Global models this process published.", &one(s.rounds_published_total as f64));
    family("gas_used_total", "counter", "Gas this process spent publishing global models.", &one(s.gas_used_total as f64));
    let left_out: Vec<(String, f64)> = LeftOut::ALL
        .iter()
        .map(|why| (format!("{{reason=\"{}\"}}", why.label()), s.left_out_total.get(why).copied().unwrap_or(0) as f64))
        .collect();
    family("updates_left_out_total", "counter", "Updates this process left out of a round, by reason.", &left_out);
    family("verify_failures_total", "counter", "Published rounds whose recomputation did not match.", &one(s.verify_failures_total as f64));
    family("start_time_seconds", "gauge", "Unix time at which this process started.", &one(s.started_at));
    out
}

/// Asks the chain node and the IPFS node whether they answer.
pub struct Probe {
    rpc: Rpc,
    ipfs: fl_ipfs::Client,
}

/// How long `/healthz` waits for each node.
const PROBE_LIMIT: Duration = Duration::from_secs(3);

impl Probe {
    pub fn new(rpc_url: &str, ipfs_api: &str) -> Result<Probe> {
        let config =
            fl_ipfs::ClientConfig { timeout: PROBE_LIMIT, connect_timeout: PROBE_LIMIT, attempts: 1, ..fl_ipfs::ClientConfig::default() };
        Ok(Probe { rpc: Rpc::with_timeout(rpc_url, PROBE_LIMIT)?, ipfs: fl_ipfs::Client::with_config(ipfs_api, config) })
    }

    /// `Ok` when both answer, else what failed.
    pub fn check(&self) -> std::result::Result<String, String> {
        let chain = self.rpc.block_number().map_err(|e| format!("chain: {e:#}"));
        let ipfs = self.ipfs.version().map_err(|e| format!("ipfs: {e}"));
        match (chain, ipfs) {
            (Ok(block), Ok(version)) => Ok(format!("ok: chain at block {block}, ipfs {version}\n")),
            (chain, ipfs) => Err([chain.err(), ipfs.err()].into_iter().flatten().collect::<Vec<_>>().join("\n") + "\n"),
        }
    }
}

/// Serves the monitor on `addr` from a thread of its own, until the process ends.
pub fn serve(addr: SocketAddr, monitor: Monitor, probe: Probe) -> Result<SocketAddr> {
    let server = tiny_http::Server::http(addr).map_err(|e| anyhow!("--listen {addr}: cannot serve there: {e}"))?;
    let bound = server.server_addr().to_ip().ok_or_else(|| anyhow!("--listen {addr}: not an IP address"))?;
    std::thread::Builder::new().name("fl-aggregator-http".into()).spawn(move || {
        for request in server.incoming_requests() {
            let (status, content_type, body) = respond(request.method(), request.url(), &monitor, &probe);
            let header = tiny_http::Header::from_bytes("Content-Type", content_type).expect("a valid header");
            let response = tiny_http::Response::from_data(body).with_status_code(status).with_header(header);
            // A client that went away is its own business.
            let _ = request.respond(response);
        }
    })?;
    Ok(bound)
}

/// The answer to one request: status, content type and body.
fn respond(method: &tiny_http::Method, url: &str, monitor: &Monitor, probe: &Probe) -> (u16, &'static str, Vec<u8>) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if !matches!(method, tiny_http::Method::Get | tiny_http::Method::Head) {
        return (405, TEXT, b"only GET and HEAD\n".to_vec());
    }
    match url.split('?').next().unwrap_or("") {
        "/healthz" => match probe.check() {
            Ok(text) => (200, TEXT, text.into_bytes()),
            Err(text) => (503, TEXT, text.into_bytes()),
        },
        "/metrics" => (200, "text/plain; version=0.0.4; charset=utf-8", metrics(&monitor.snapshot()).into_bytes()),
        "/api/status" => match serde_json::to_vec(&monitor.snapshot()) {
            Ok(json) => (200, "application/json", json),
            Err(e) => (500, TEXT, format!("status as JSON: {e}\n").into_bytes()),
        },
        "/" | "/index.html" => (200, "text/html; charset=utf-8", DASHBOARD.as_bytes().to_vec()),
        _ => (404, TEXT, b"not found: try /, /healthz, /metrics or /api/status\n".to_vec()),
    }
}

/// The dashboard: one page, nothing loaded from elsewhere.
const DASHBOARD: &str = include_str!("dashboard.html");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{LearnerResult, Published, Timings};

    fn published(round: u64, accuracy: f64, gas: u64) -> RoundResult {
        let model = |cid: &str| Published {
            accuracy: Some(accuracy),
            loss: Some(0.1),
            cid: cid.into(),
            digest: "00".into(),
            samples: 10,
            tx: None,
            gas: Some(gas),
            reported: None,
        };
        RoundResult {
            group_accuracy: Vec::new(),
            round,
            learners: vec![
                LearnerResult { node_id: 1, model: model("bafy-1"), used: true, note: None },
                LearnerResult { node_id: 2, model: model("bafy-2"), used: false, note: Some("digest".into()) },
            ],
            global: model("bafy-global"),
            timings: Timings { fetch_s: 1.5, average_s: 0.25, ..Timings::default() },
            published_at: 1.0,
        }
    }

    #[test]
    fn metrics_say_what_the_run_did_and_why_a_round_is_open() {
        let model = "an ensemble of 2 model groups (1: \"cnn\", 2: \"dense\"; groups 0a)".to_string();
        let monitor = Monitor::new(31337, "0xabc".into(), "krum:1".into(), model, Mode::Async { buffer: 5, max_staleness: 4 }, 5);
        let mut first = published(1, 0.9, 60_000);
        first.group_accuracy = vec![0.875, 0.5];
        monitor.published(&first, vec![2]);
        monitor.left_out(LeftOut::DigestMismatch);
        monitor.verified(1, Ok(vec![]), 0.75);
        monitor.collecting(2, &[1, 2, 3], &[(1, "bafy-1b".into())], Some((Waiting::RuleNeedsMoreUpdates, "needs 5".into())));
        let text = metrics(&monitor.snapshot());
        for line in [
            "fl_aggregator_round 2",
            "fl_aggregator_learners_registered 3",
            "fl_aggregator_updates_in 1",
            "fl_aggregator_round_open{reason=\"rule_needs_more_updates\"} 1",
            "fl_aggregator_round_open{reason=\"waiting_for_learners\"} 0",
            "fl_aggregator_last_round_phase_seconds{phase=\"fetch\"} 1.5",
            "fl_aggregator_last_round_phase_seconds{phase=\"verify\"} 0.75",
            "fl_aggregator_last_round_phase_seconds{phase=\"aggregate\"} 0.25",
            "fl_aggregator_global_accuracy 0.9",
            "fl_aggregator_group_accuracy{group=\"1\"} 0.875",
            "fl_aggregator_group_accuracy{group=\"2\"} 0.5",
            "fl_aggregator_last_round_verified 1",
            "fl_aggregator_gas_used_total 60000",
            "fl_aggregator_updates_left_out_total{reason=\"digest_mismatch\"} 1",
            "fl_aggregator_updates_left_out_total{reason=\"unavailable\"} 0",
            "fl_aggregator_info{version=",
            "fl_aggregator_updates_left_out_total{reason=\"too_stale\"} 0",
        ] {
            assert!(text.lines().any(|l| l.starts_with(line)), "no {line:?} in\n{text}");
        }
        let status = monitor.snapshot();
        assert_eq!(status.learners[&1].lateness, Some(0));
        assert_eq!(status.learners[&2].lateness, Some(1), "learner 2 last sent in round 1");
        assert_eq!(status.learners[&3].lateness, None, "learner 3 never sent");
        assert_eq!(status.published[0].inputs, vec![1]);
        // Without a test set: only the boards' figures, under their own name.
        let mut reported = published(2, 0.0, 1);
        reported.global.accuracy = None;
        reported.global.reported = Some(crate::report::Reported { accuracy: 0.8, loss: 0.5, examples: 100 });
        monitor.published(&reported, vec![]);
        let text_reported = metrics(&monitor.snapshot());
        assert!(text_reported.contains("\nfl_aggregator_global_reported_accuracy 0.8\n"), "{text_reported}");
        assert!(!text_reported.contains("\nfl_aggregator_global_accuracy "), "{text_reported}");
        assert!(!text_reported.contains("\nfl_aggregator_group_accuracy"), "{text_reported}");
        assert!(!text.contains("reported_accuracy"), "{text}");
        let row = monitor.snapshot().published.back().cloned().unwrap();
        assert_eq!((row.accuracy, row.loss, row.accuracy_source), (Some(0.8), Some(0.5), Some("reported")));
        monitor.verified(1, Err("fetching the inputs: timed out".into()), 3.0);
        assert!(metrics(&monitor.snapshot()).contains("fl_aggregator_verify_failures_total 1\n"));
        assert!(text.contains(",rule=\"krum:1\",model=\"an ensemble of 2 model groups (1: \\\"cnn\\\", 2: \\\"dense\\\"; groups 0a)\",mode=\"async\",buffer=\"5\",max_staleness=\"4\"} 1\n"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn the_dashboard_loads_nothing_from_elsewhere() {
        for needle in ["http://", "https://", "//cdn", "<link", "src=\""] {
            assert!(!DASHBOARD.contains(needle), "the dashboard contains {needle:?}");
        }
    }
}
