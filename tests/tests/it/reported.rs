//! Boards report their own test accuracy with each update (format 2's `report`), and an
//! aggregator run without `--data` evaluates nothing: every round record carries both
//! learners' figures exactly as their files say, the results and the table show the global
//! model's as the examples-weighted mean of its inputs' (marked as reported), the models are
//! still the FedAvg of the recorded updates, and `verify` agrees.

use std::time::Duration;

use anyhow::{Context, Result};
use fl_aggregator::report::{Results, REPORTED_NOTE};
use fl_core::encoding::Bases;
use fl_core::record::RoundRecord;

use crate::federation::{check_rounds, Federation, ROUNDS, RUN_LIMIT};

#[test]
fn reported_accuracy_is_recorded_and_shown_without_an_aggregator_test_set() -> Result<()> {
    let federation = Federation::start("reported")?;
    let results_path = federation.dir().join("results.json");
    let mut aggregator =
        federation.aggregator_without_data("aggregator.log", &["--results", results_path.to_str().context("temp path")?])?;
    let mut learners = vec![federation.learner(1, "learner-1.log")?, federation.learner(2, "learner-2.log")?];
    aggregator.wait_success(RUN_LIMIT)?;
    for learner in &mut learners {
        learner.wait_success(Duration::from_secs(120))?;
    }
    // The reports change nothing about aggregation: each model is the FedAvg of the inputs.
    let published = check_rounds(&federation)?;
    let results: Results = serde_json::from_slice(&std::fs::read(&results_path)?)?;
    let rows = aggregator.stdout_lines();
    assert!(rows.iter().any(|l| l == REPORTED_NOTE), "no note on reported figures in {rows:?}");
    let (globals, locals) = federation.events()?;
    for round in 1..=ROUNDS {
        let global = globals.iter().find(|g| g.round == round).context("no global model")?;
        let record = RoundRecord::from_bytes(&global.record)?;
        assert_eq!(record.version, 4);
        // What each learner's uploaded file says, read independently of the aggregator.
        let bases = Bases::of(&published[&(round - 1)])?;
        let mut from_files = Vec::new();
        for node_id in [1, 2] {
            let update = locals.iter().find(|u| u.round == round && u.node_id == node_id).context("no update")?;
            let report = bases.decode(&federation.fetch(&update.cid, &update.digest)?)?.report.context("the update has no report")?;
            // Each learner evaluates on its test_limit (500) examples.
            assert_eq!(report.examples, 500, "learner {node_id} round {round}");
            assert_eq!(record.reported.get(&node_id), Some(&report), "learner {node_id} round {round}: {record:?}");
            from_files.push(report);
        }
        // Nothing evaluated by the server; the global figure is the reports' weighted mean.
        let result = results.rounds.iter().find(|r| r.round == round).context("no results for the round")?;
        assert_eq!((result.global.accuracy, result.global.loss), (None, None), "round {round}");
        let reported = result.global.reported.context("no reported global accuracy")?;
        let examples: u64 = from_files.iter().map(|r| r.examples).sum();
        let mean = from_files.iter().map(|r| f64::from(r.accuracy) * r.examples as f64).sum::<f64>() / examples as f64;
        assert!((reported.accuracy - mean).abs() < 1e-9 && reported.examples == examples, "round {round}: {reported:?}, expected {mean}");
        for learner in &result.learners {
            let own = learner.model.reported.context("no reported learner accuracy")?;
            assert_eq!(own.accuracy, f64::from(from_files[learner.node_id as usize - 1].accuracy));
        }
        let row = rows.iter().find(|l| l.split_whitespace().next() == Some(&round.to_string())).context("no row")?;
        let cell = row.split_whitespace().last().context("empty row")?;
        let shown: f64 = cell.strip_suffix("%r").with_context(|| format!("round {round}: {row}"))?.parse()?;
        assert!((shown - 100.0 * mean).abs() < 0.006, "round {round}: {row}, expected {mean}");

        let mut verify = federation.verify_command(round)?;
        verify.wait_success(Duration::from_secs(120))?;
        assert!(verify.stdout_lines().iter().any(|l| l == &format!("round {round}: verified")), "{:?}", verify.lines());
    }
    Ok(())
}
