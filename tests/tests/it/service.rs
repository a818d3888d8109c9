//! The aggregator as a service (`run --listen`): `/healthz`, `/metrics` and the dashboard,
//! scraped while a real federation runs. The exposition is checked by Prometheus's own
//! `promtool check metrics`, and the dashboard is loaded in a real headless Chromium,
//! which runs its script against the live `/api/status`; the test reads what the page
//! shows and saves a screenshot in target/test-output/service/.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use fl_tests::util::{free_port, tool, workspace_root, TempDir};

use crate::federation::{Federation, ROUNDS, RUN_LIMIT};

/// GET `url`: the status and the body, whatever the status.
fn get(url: &str) -> Result<(u16, String)> {
    let agent: ureq::Agent =
        ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(10))).http_status_as_error(false).build().into();
    let mut reply = agent.get(url).call().with_context(|| format!("GET {url}"))?;
    let status = reply.status().as_u16();
    let body = reply.body_mut().read_to_string().with_context(|| format!("reading the body of GET {url}"))?;
    Ok((status, body))
}

/// The value of the sample `name` (with its labels, as written) in an exposition.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `promtool check metrics` (Debian's prometheus package) on an exposition.
fn promtool_check(text: &str) -> Result<()> {
    let promtool = tool("promtool", "prometheus")?;
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", promtool.display()))?;
    child.stdin.take().context("promtool's stdin")?.write_all(text.as_bytes())?;
    let output = child.wait_with_output()?;
    ensure!(
        output.status.success(),
        "promtool check metrics refused the exposition: {}{}\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Headless Chromium with no network but loopback and nothing of its own to fetch.
fn chromium(profile: &Path) -> Result<Command> {
    let mut command = Command::new(tool("chromium", "chromium")?);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-default-apps",
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
            // Lets the page's timers and fetches run before the DOM is read.
            "--virtual-time-budget=8000",
            "--window-size=1280,1600",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .stdin(Stdio::null());
    Ok(command)
}

#[test]
fn service_serves_health_metrics_and_a_dashboard_while_rounds_run() -> Result<()> {
    let mut federation = Federation::start("service")?;
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let results = federation.devnet.dir.join("results.json");
    // Learners stop after round ROUNDS; the aggregator waits for round ROUNDS + 1 and so
    // keeps serving once the rounds the test checks are published.
    let last = ROUNDS + 1;
    let mut aggregator = federation.aggregator_with(
        "aggregator.log",
        &["--listen", &format!("127.0.0.1:{port}"), "--results", results.to_str().unwrap(), "--rounds", &last.to_string()],
    )?;
    aggregator.wait_for(&format!("serving the dashboard at {base}/"), Duration::from_secs(60))?;
    let mut learners = vec![federation.learner_with(1, "learner-1.log", "")?, federation.learner_with(2, "learner-2.log", "")?];

    // Scrape while the rounds run, checking each new state with promtool.
    let started = Instant::now();
    let mut states = BTreeSet::new();
    let final_text = loop {
        ensure!(aggregator.is_running(), "the aggregator stopped:\n{}", aggregator.lines().join("\n"));
        ensure!(started.elapsed() < RUN_LIMIT, "round {ROUNDS} not published and verified in {RUN_LIMIT:?}");
        let (status, text) = get(&format!("{base}/metrics"))?;
        ensure!(status == 200, "/metrics answered {status}: {text}");
        let round = sample(&text, "fl_aggregator_round").context("no fl_aggregator_round")?;
        let waiting = sample(&text, "fl_aggregator_round_open{reason=\"waiting_for_learners\"}").context("no round_open")?;
        let published = sample(&text, "fl_aggregator_last_published_round");
        if states.insert((round as u64, waiting as u64, published.map(|p| p as u64))) {
            promtool_check(&text)?;
        }
        let verified = sample(&text, "fl_aggregator_last_round_verified");
        if published == Some(ROUNDS as f64) && verified.is_some_and(|v| !v.is_nan()) {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for learner in &mut learners {
        learner.wait_success(RUN_LIMIT)?;
    }
    // Round 1 was seen open, waiting for the learners, and every round was then published.
    ensure!(states.iter().any(|(round, waiting, _)| *round == 1 && *waiting == 1), "never saw round 1 waiting for learners: {states:?}");
    for (line, value) in [
        ("fl_aggregator_last_round_verified", 1.0),
        ("fl_aggregator_learners_registered", 2.0),
        ("fl_aggregator_rounds_published_total", (ROUNDS + 1) as f64),
        ("fl_aggregator_verify_failures_total", 0.0),
        ("fl_aggregator_updates_left_out_total{reason=\"unavailable\"}", 0.0),
    ] {
        assert_eq!(sample(&final_text, line), Some(value), "{line} in\n{final_text}");
    }
    let accuracy = sample(&final_text, "fl_aggregator_global_accuracy").context("no global accuracy")?;
    ensure!(accuracy > 0.5, "global accuracy {accuracy} after {ROUNDS} rounds");
    ensure!(sample(&final_text, "fl_aggregator_gas_used_total").unwrap_or(0.0) > 50_000.0, "{final_text}");
    for phase in ["fetch", "aggregate", "evaluate", "publish", "verify"] {
        let seconds = sample(&final_text, &format!("fl_aggregator_last_round_phase_seconds{{phase=\"{phase}\"}}"));
        ensure!(seconds.is_some_and(|s| s > 0.0), "phase {phase}: {seconds:?} in\n{final_text}");
    }
    aggregator.wait_for(&format!("round {ROUNDS}: recomputed by verify: matched"), Duration::from_secs(10))?;

    let (status, body) = get(&format!("{base}/healthz"))?;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("ok: chain at block"), "{body}");
    let (status, _) = get(&format!("{base}/nowhere"))?;
    assert_eq!(status, 404);

    // The dashboard, in a real browser: what it shows is what the run published.
    let recorded: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&results)?)?;
    let profile = TempDir::new("chromium")?;
    let output = chromium(profile.path())?.args(["--dump-dom", &format!("{base}/")]).output().context("running chromium")?;
    let dom = String::from_utf8_lossy(&output.stdout).to_string();
    ensure!(dom.contains("data-loaded=\"yes\""), "the page never loaded /api/status:\n{}\n{dom}", String::from_utf8_lossy(&output.stderr));
    for round in 0..=ROUNDS {
        let accuracy = recorded["rounds"]
            .as_array()
            .and_then(|rounds| rounds.iter().find(|r| r["round"] == round))
            .and_then(|r| r["global"]["accuracy"].as_f64())
            .with_context(|| format!("round {round} in {}", results.display()))?;
        let row = dom.split(&format!("<tr data-round=\"{round}\">")).nth(1).with_context(|| format!("no row for round {round}:\n{dom}"))?;
        let row = &row[..row.find("</tr>").unwrap_or(row.len())];
        let shown = format!("<td class=\"accuracy\">{:.2}%</td>", 100.0 * accuracy);
        ensure!(row.contains(&shown), "round {round}: expected {shown} in {row}");
        ensure!(row.contains("matched"), "round {round}: not shown as recomputed and matched: {row}");
    }
    for round in 0..=ROUNDS + 1 {
        let point = dom.contains(&format!("<circle class=\"point\" data-round=\"{round}\""));
        ensure!(point == (round <= ROUNDS), "round {round}: the plot {} a point for it:\n{dom}", if point { "has" } else { "lacks" });
    }
    for node in 1..=2 {
        ensure!(dom.contains(&format!("<tr data-node=\"{node}\">")), "learner {node} not listed:\n{dom}");
    }
    let model = format!("model {}", fl_core::spec::ModelSpec::paper_cnn());
    ensure!(dom.contains(&model), "the page does not name the federation's model ({model}):\n{dom}");
    ensure!(!dom.contains("<body class=\"ensemble\""), "one model shown as an ensemble:\n{dom}");
    let out = test_output("service")?;
    let screenshot = out.join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let output = chromium(profile.path())?
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg(format!("{base}/"))
        .output()
        .context("running chromium for a screenshot")?;
    let png = std::fs::read(&screenshot)
        .with_context(|| format!("no screenshot at {}: {}", screenshot.display(), String::from_utf8_lossy(&output.stderr)))?;
    ensure!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{} is not a real screenshot", screenshot.display());
    eprintln!("dashboard screenshot: {}", screenshot.display());

    // The IPFS node goes away: /healthz says so, with the reason.
    federation.devnet.ipfs[0].stop();
    let (status, body) = get(&format!("{base}/healthz"))?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("ipfs: ") && !body.contains("chain: "), "{body}");
    aggregator.kill();
    Ok(())
}

/// A folder of the workspace where a test leaves what a person may want to look at.
fn test_output(name: &str) -> Result<PathBuf> {
    let dir = workspace_root().join("target/test-output").join(name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
