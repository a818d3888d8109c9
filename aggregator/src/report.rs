//! What a federated run produced, round by round (`fl-aggregator run` and `simulate`
//! alike): the table printed as rounds complete,
//! `results.json` (accuracies, CIDs, transactions, gas, timings) and an SVG plot of
//! accuracy per round.
//!
//! An accuracy is the aggregator's own evaluation on its test set when it has one (`run
//! --data`); without, the table and plot show what the boards reported for their updates on
//! their own test sets (`reported`; the global model's is their examples-weighted mean),
//! marked `r` in the table: recorded, never checked.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use fl_core::encoding::Report;
use fl_core::files::write_atomic;
use serde::{Deserialize, Serialize};

/// One published model: a learner's local update or a global model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Published {
    /// Test accuracy in [0, 1], if it was evaluated.
    pub accuracy: Option<f64>,
    /// Test loss, if it was evaluated.
    pub loss: Option<f64>,
    pub cid: String,
    /// SHA-256 of the model file, hex.
    pub digest: String,
    /// Training samples behind it.
    pub samples: u64,
    /// The registering transaction and its gas, when known.
    pub tx: Option<String>,
    pub gas: Option<u64>,
    /// What the board reported for its update (a learner's model), or the examples-weighted
    /// mean of the inputs' reports (a global model); absent when no file carried a report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported: Option<Reported>,
}

/// Figures reported by boards on their own test sets (`fl_core::encoding::Report`):
/// recorded, never checked or used by the aggregator.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Reported {
    /// Test accuracy in [0, 1].
    pub accuracy: f64,
    /// Test loss (mean cross-entropy).
    pub loss: f64,
    /// Test examples behind the figures.
    pub examples: u64,
}

impl Reported {
    /// One file's report.
    pub fn of(report: &Report) -> Reported {
        Reported { accuracy: f64::from(report.accuracy), loss: f64::from(report.loss), examples: report.examples }
    }

    /// The examples-weighted mean of `reports` (`examples` their sum); `None` for none.
    pub fn mean(reports: &[Reported]) -> Option<Reported> {
        let examples: u64 = reports.iter().map(|r| r.examples).sum();
        if examples == 0 {
            return None;
        }
        let weighted = |figure: fn(&Reported) -> f64| reports.iter().map(|r| figure(r) * r.examples as f64).sum::<f64>() / examples as f64;
        Some(Reported { accuracy: weighted(|r| r.accuracy), loss: weighted(|r| r.loss), examples })
    }
}

impl Published {
    /// The accuracy shown for this model and whether it is the boards' report: the
    /// aggregator's evaluation when there is one, else the reported figure.
    pub fn shown_accuracy(&self) -> Option<(f64, bool)> {
        self.accuracy.map(|a| (a, false)).or(self.reported.map(|r| (r.accuracy, true)))
    }
}

/// A learner's update in one round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LearnerResult {
    pub node_id: u64,
    #[serde(flatten)]
    pub model: Published,
    /// False when the update was left out of the average (and why).
    pub used: bool,
    pub note: Option<String>,
}

/// Seconds spent in each phase of a round, as the aggregator saw them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// From the previous global model's publication to the last awaited update.
    pub wait_s: f64,
    /// Fetching and verifying the local models from IPFS.
    pub fetch_s: f64,
    /// Evaluating local models (for the table) and the global model.
    pub evaluate_s: f64,
    /// Averaging.
    pub average_s: f64,
    /// Uploading the global model and waiting for its transaction.
    pub publish_s: f64,
    /// Recomputing the published round with `verify` (`run` without `--no-verify`).
    #[serde(default)]
    pub verify_s: f64,
}

/// One round: round 0 is the seeded initial model and has no learners.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundResult {
    pub round: u64,
    pub learners: Vec<LearnerResult>,
    pub global: Published,
    /// Model groups: each group's model alone on the test set (`global` is their ensemble).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_accuracy: Vec<f64>,
    pub timings: Timings,
    /// Unix time at which the global model was published.
    pub published_at: f64,
}

/// The whole run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub registry: String,
    pub chain_id: u64,
    pub rounds: Vec<RoundResult>,
    /// Whole run's wall time, filled in by whoever ran the federation (the demo).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_s: Option<f64>,
    /// The run's settings, as the demo was given them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<serde_json::Value>,
}

impl Results {
    /// The results saved at `path` by an earlier (interrupted) run, or empty ones.
    pub fn load_or_default(path: Option<&Path>) -> Result<Results> {
        let Some(path) = path.filter(|p| p.exists()) else { return Ok(Results::default()) };
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing earlier results in {}", path.display()))
    }

    /// Records a round, replacing an earlier record of the same round.
    pub fn record(&mut self, round: RoundResult) {
        self.rounds.retain(|r| r.round != round.round);
        self.rounds.push(round);
        self.rounds.sort_by_key(|r| r.round);
    }

    /// Writes the JSON atomically (through a temporary file).
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &serde_json::to_vec_pretty(self)?)
    }

    fn node_ids(&self) -> Vec<u64> {
        let ids: BTreeSet<u64> = self.rounds.iter().flat_map(|r| r.learners.iter().map(|l| l.node_id)).collect();
        ids.into_iter().collect()
    }

    /// The paper's Table 2 with the global model beside it: one row per round, one
    /// column of test accuracy per learner.
    pub fn table(&self) -> String {
        let ids = self.node_ids();
        let mut out = header(&ids);
        out.push('\n');
        for round in &self.rounds {
            out.push_str(&row(round, &ids));
            out.push('\n');
        }
        let models = self.rounds.iter().flat_map(|r| r.learners.iter().map(|l| &l.model).chain([&r.global]));
        if models.filter_map(Published::shown_accuracy).any(|(_, reported)| reported) {
            out.push_str(REPORTED_NOTE);
            out.push('\n');
        }
        out
    }

    /// An SVG line chart of test accuracy per round: the global model and every learner.
    pub fn svg(&self) -> String {
        // The untrained round 0 (about 10%) would squash the trained rounds against the
        // top of the chart; it stays in the table and the JSON.
        let plotted: Vec<&RoundResult> = if self.rounds.iter().any(|r| r.round > 0) {
            self.rounds.iter().filter(|r| r.round > 0).collect()
        } else {
            self.rounds.iter().collect()
        };
        let (width, height) = (720.0, 440.0);
        let (left, right, top, bottom) = (70.0, 160.0, 40.0, 50.0);
        let rounds: Vec<u64> = plotted.iter().map(|r| r.round).collect();
        let min_round = rounds.iter().copied().min().unwrap_or(0) as f64;
        let max_round = (rounds.iter().copied().max().unwrap_or(1) as f64).max(min_round + 1.0);
        let shown: Vec<(f64, bool)> = plotted
            .iter()
            .flat_map(|r| r.learners.iter().filter_map(|l| l.model.shown_accuracy()).chain(r.global.shown_accuracy()))
            .collect();
        let accuracies: Vec<f64> = shown.iter().map(|(a, _)| *a).collect();
        let title = if shown.iter().any(|(_, reported)| *reported) { " (reported by the boards)" } else { "" };
        // The y axis starts just below the lowest accuracy, on a tick of a step that gives
        // at most ten ticks, so rounds between 98% and 99.5% are not squashed at the top.
        let low = accuracies.iter().copied().fold(1.0f64, f64::min).clamp(0.0, 0.995);
        let tick = [0.005, 0.01, 0.02, 0.05, 0.1].into_iter().find(|step| (1.0 - low) / step <= 9.0).unwrap_or(0.1);
        let y_min = ((low / tick).floor() * tick).clamp(0.0, 1.0 - tick);
        let x = |round: f64| left + (width - left - right) * (round - min_round) / (max_round - min_round);
        let y = |acc: f64| top + (height - top - bottom) * (1.0 - (acc - y_min) / (1.0 - y_min));
        let mut svg = String::new();
        let _ = writeln!(
            svg,
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"##
        );
        let _ = writeln!(svg, r##"<rect width="100%" height="100%" fill="white"/>"##);
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="22" text-anchor="middle" font-size="15">Test accuracy per round{title}</text>"##,
            (left + width - right) / 2.0
        );
        // Axes, grid and ticks.
        let steps = ((1.0 - y_min) / tick).round() as usize;
        let decimals = if tick < 0.01 { 1 } else { 0 };
        for i in 0..=steps {
            let acc = y_min + i as f64 * (1.0 - y_min) / steps.max(1) as f64;
            let _ = writeln!(
                svg,
                r##"<line x1="{left}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{:.decimals$}%</text>"##,
                width - right,
                left - 6.0,
                y(acc) + 4.0,
                acc * 100.0,
                yy = y(acc)
            );
        }
        for &round in &rounds {
            let _ =
                writeln!(svg, r##"<text x="{:.1}" y="{}" text-anchor="middle">{round}</text>"##, x(round as f64), height - bottom + 18.0);
        }
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{}" text-anchor="middle">round</text><line x1="{left}" x2="{left}" y1="{top}" y2="{}" stroke="black"/><line x1="{left}" x2="{}" y1="{}" y2="{}" stroke="black"/>"##,
            (left + width - right) / 2.0,
            height - 12.0,
            height - bottom,
            width - right,
            height - bottom,
            height - bottom
        );
        let palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
        let mut series: Vec<Series> = Vec::new();
        let ids = self.node_ids();
        if ids.len() > MAX_LEARNER_COLUMNS {
            // A hundred lines and legend entries would hide the global model: a wide fleet
            // is drawn as its lowest, median and highest learner.
            let spread: Vec<(f64, [f64; 3])> = self.rounds.iter().filter_map(|r| spread(r).map(|s| (r.round as f64, s))).collect();
            for (k, (name, color)) in
                [("lowest learner", "#9e9e9e"), ("median learner", "#1f77b4"), ("highest learner", "#616161")].iter().enumerate()
            {
                let points = spread.iter().map(|(round, s)| (*round, s[k])).collect();
                series.push(Series { name: name.to_string(), color: color.to_string(), stroke: 1.5, points });
            }
        }
        for (i, id) in ids.iter().enumerate().filter(|_| ids.len() <= MAX_LEARNER_COLUMNS) {
            let points = self
                .rounds
                .iter()
                .filter_map(|r| {
                    r.learners.iter().find(|l| l.node_id == *id).and_then(|l| l.model.shown_accuracy()).map(|(a, _)| (r.round as f64, a))
                })
                .collect();
            series.push(Series { name: format!("learner {id}"), color: palette[i % palette.len()].to_string(), stroke: 1.5, points });
        }
        let global_points = plotted.iter().filter_map(|r| r.global.shown_accuracy().map(|(a, _)| (r.round as f64, a))).collect();
        series.push(Series { name: "global".into(), color: "#d62728".into(), stroke: 3.0, points: global_points });
        for (i, Series { name, color, stroke, points }) in series.iter().enumerate() {
            let path: Vec<String> = points.iter().map(|(r, a)| format!("{:.1},{:.1}", x(*r), y(*a))).collect();
            if !path.is_empty() {
                let _ = writeln!(svg, r##"<polyline fill="none" stroke="{color}" stroke-width="{stroke}" points="{}"/>"##, path.join(" "));
                for (r, a) in points {
                    let _ = writeln!(svg, r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"##, x(*r), y(*a));
                }
            }
            let ly = top + 10.0 + 20.0 * i as f64;
            let _ = writeln!(
                svg,
                r##"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="{stroke}"/><text x="{}" y="{}">{name}</text>"##,
                width - right + 15.0,
                width - right + 40.0,
                width - right + 46.0,
                ly + 4.0
            );
        }
        svg.push_str("</svg>\n");
        svg
    }
}

/// The lowest, median (the upper one of an even count) and highest accuracy of a round's
/// evaluated (or reporting) learners, or `None` if there is none.
fn spread(round: &RoundResult) -> Option<[f64; 3]> {
    let mut accuracies: Vec<f64> = round.learners.iter().filter_map(|l| l.model.shown_accuracy().map(|(a, _)| a)).collect();
    accuracies.sort_by(f64::total_cmp);
    Some([*accuracies.first()?, accuracies[accuracies.len() / 2], *accuracies.last()?])
}

/// One line of the accuracy plot: legend name, colour, stroke width and (round, accuracy) points.
struct Series {
    name: String,
    color: String,
    stroke: f64,
    points: Vec<(f64, f64)>,
}

/// Seconds since the Unix epoch, for [`RoundResult::published_at`].
pub fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// What the table's `r` marks, printed below a table that has one.
pub const REPORTED_NOTE: &str = "r: reported by the board(s) on their own test sets (the global model: the examples-weighted mean of its inputs' reports), not evaluated by the aggregator";

/// Fleets wider than this get a summary table (lowest, median and highest learner
/// accuracy) instead of a column per learner.
pub const MAX_LEARNER_COLUMNS: usize = 10;

/// The table header: a column per learner, or the summary columns for a wider fleet.
pub fn header(ids: &[u64]) -> String {
    let mut out = format!("{:>5}", "round");
    if ids.len() > MAX_LEARNER_COLUMNS {
        let _ = write!(out, "  {:>7}  {:>8}  {:>8}  {:>8}", "updates", "lowest", "median", "highest");
    } else {
        for id in ids {
            let _ = write!(out, "  {:>10}", format!("learner {id}"));
        }
    }
    let _ = write!(out, "  {:>8}", "global");
    out
}

/// One table row; learners missing from the round show as `-` (in the summary, the
/// updates column counts those evaluated); a figure the boards reported is marked `r`.
pub fn row(round: &RoundResult, ids: &[u64]) -> String {
    let percent = |a: Option<f64>| a.map(|a| format!("{:.2}%", 100.0 * a)).unwrap_or_else(|| "-".into());
    let shown = |model: &Published| match model.shown_accuracy() {
        Some((a, true)) => format!("{:.2}%r", 100.0 * a),
        other => percent(other.map(|(a, _)| a)),
    };
    let mut out = format!("{:>5}", round.round);
    if ids.len() > MAX_LEARNER_COLUMNS {
        let evaluated = round.learners.iter().filter(|l| l.model.shown_accuracy().is_some()).count();
        let [lowest, median, highest] = spread(round).map(|s| s.map(Some)).unwrap_or_default();
        let _ = write!(out, "  {evaluated:>7}  {:>8}  {:>8}  {:>8}", percent(lowest), percent(median), percent(highest));
    } else {
        for id in ids {
            let cell = round.learners.iter().find(|l| l.node_id == *id).map(|l| shown(&l.model)).unwrap_or_else(|| "-".into());
            let _ = write!(out, "  {cell:>10}");
        }
    }
    let _ = write!(out, "  {:>8}", shown(&round.global));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(accuracy: f64) -> Published {
        Published {
            accuracy: Some(accuracy),
            loss: None,
            cid: "bafk".into(),
            digest: "00".into(),
            samples: 1,
            tx: None,
            gas: None,
            reported: None,
        }
    }

    fn round(round: u64, learners: &[(u64, f64)], global: f64) -> RoundResult {
        RoundResult {
            group_accuracy: Vec::new(),
            round,
            learners: learners.iter().map(|&(id, a)| LearnerResult { node_id: id, model: published(a), used: true, note: None }).collect(),
            global: published(global),
            timings: Timings::default(),
            published_at: 0.0,
        }
    }

    #[test]
    fn table_has_a_column_per_learner_and_dashes_for_gaps() {
        let mut results = Results::default();
        results.record(round(1, &[(1, 0.9), (2, 0.8)], 0.95));
        results.record(round(0, &[], 0.1));
        results.record(round(2, &[(2, 0.85)], 0.97));
        let table = results.table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[0].contains("learner 1") && lines[0].contains("learner 2") && lines[0].contains("global"));
        assert!(lines[1].trim_start().starts_with('0') && lines[1].contains("10.00%"), "{table}");
        assert!(lines[2].contains("90.00%") && lines[2].contains("80.00%") && lines[2].contains("95.00%"), "{table}");
        assert!(lines[3].contains(" - ") || lines[3].contains("         -"), "{table}");
    }

    #[test]
    fn a_wide_fleet_gets_summary_columns_and_summary_lines() {
        let mut results = Results::default();
        let learners: Vec<(u64, f64)> = (1..=20).map(|id| (id, 0.5 + id as f64 / 100.0)).collect();
        results.record(round(1, &learners, 0.9));
        results.record(round(2, &learners[..3], 0.95));
        let table = results.table();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].contains("updates") && lines[0].contains("median") && !lines[0].contains("learner 1"), "{table}");
        // 20 learners at 51%..70%: lowest 51, median the 11th (61), highest 70.
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(cells, ["1", "20", "51.00%", "61.00%", "70.00%", "90.00%"], "{table}");
        let cells: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(cells, ["2", "3", "51.00%", "52.00%", "53.00%", "95.00%"], "{table}");
        let svg = results.svg();
        assert_eq!(svg.matches("<polyline").count(), 4, "three summary lines and the global model");
        assert!(svg.contains("median learner") && !svg.contains("learner 7<"), "{svg}");
    }

    #[test]
    fn without_server_figures_the_reported_ones_are_shown_and_marked() {
        let reported = |accuracy: f64, examples: u64| Reported { accuracy, loss: 1.0 - accuracy, examples };
        // Examples-weighted: (0.9 x 100 + 0.6 x 300) / 400.
        let mean = Reported::mean(&[reported(0.9, 100), reported(0.6, 300)]).unwrap();
        assert_eq!((mean.examples, (mean.accuracy * 1e6).round(), (mean.loss * 1e6).round()), (400, 675_000.0, 325_000.0));
        assert_eq!(Reported::mean(&[]), None);
        let mut r = round(1, &[(1, 0.9), (2, 0.6)], 0.0);
        for (learner, (a, n)) in r.learners.iter_mut().zip([(0.9, 100), (0.6, 300)]) {
            learner.model = Published { accuracy: None, reported: Some(reported(a, n)), ..learner.model.clone() };
        }
        r.global = Published { accuracy: None, reported: Some(mean), ..r.global.clone() };
        let mut results = Results::default();
        results.record(r);
        let table = results.table();
        let cells: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(cells, ["1", "90.00%r", "60.00%r", "67.50%r"], "{table}");
        assert!(table.ends_with(&format!("{REPORTED_NOTE}\n")), "{table}");
        assert!(results.svg().contains("Test accuracy per round (reported by the boards)"));
        let json = serde_json::to_string(&results).unwrap();
        assert!(json.contains(r#""accuracy":null,"#) && json.contains(r#""reported":{"accuracy":0.675"#), "{json}");
        // A server figure wins, unmarked, and the JSON of a run without reports is as before.
        results.rounds[0].global.accuracy = Some(0.5);
        assert!(results.table().lines().nth(1).unwrap().ends_with(" 50.00%"));
        assert!(!serde_json::to_string(&round(1, &[(1, 0.5)], 0.5)).unwrap().contains("reported"));
    }

    #[test]
    fn a_round_recorded_twice_keeps_the_later_one() {
        let mut results = Results::default();
        results.record(round(1, &[(1, 0.5)], 0.5));
        results.record(round(1, &[(1, 0.6)], 0.7));
        assert_eq!(results.rounds.len(), 1);
        assert_eq!(results.rounds[0].global.accuracy, Some(0.7));
    }

    #[test]
    fn svg_is_well_formed_and_plots_every_series() {
        let mut results = Results::default();
        results.record(round(0, &[], 0.1));
        results.record(round(1, &[(1, 0.9), (2, 0.8)], 0.95));
        let svg = results.svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 3, "two learners and the global model");
        assert!(!svg.contains(">0</text>"), "round 0 is left out of the plot once later rounds exist");
        // Accuracies of 80-95% get an axis from 80% in 5% steps, not from 0%.
        assert!(svg.contains(">80%</text>") && svg.contains(">100%</text>") && !svg.contains(">0%</text>"), "{svg}");
        assert!(svg.contains("learner 2") && svg.contains("global"));
    }
}
