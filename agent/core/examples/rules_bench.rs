//! Time, peak memory and disk of the aggregation rules (`fl_core::rules`) on the paper's
//! CNN (619,786 parameters): `make bench-rules` (agent/core/bench/rules.sh).
//!
//! For N in 10, 50 and 100 updates and each rule (fedavg, fedavg with a clip norm,
//! median, trimmed-mean:0.2, krum:F and multi-krum:F with F = (N − 3) / 4, which satisfies
//! N ≥ 2F + 3), the parent runs this program again as a child process, so that each
//! peak-RSS figure belongs to one configuration alone. The child builds the starting
//! model, resets its peak RSS (VmHWM, via /proc/self/clear_refs), then generates the N
//! updates one at a time inside the add loop (one exists at a time, as in the aggregator,
//! so the peak is the rule's memory plus one input, not N inputs), times `add` and
//! `finish` (not the generation) and reports its peak RSS, its RSS before aggregating
//! (the baseline: code, the starting model) and the size of the spill file before
//! `finish`. The parent prints a table with each rule's time relative to fedavg's at the
//! same N, measured in the same run. No timed assertions: the figures are for reading.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use fl_core::flags;
use fl_core::rng::{derive_seed, Rng};
use fl_core::rules::{parse_clip_norm, Aggregation, Recipe, Rule};
use fl_core::weights::{ModelFile, NamedTensor};

/// The clip norm of the "fedavg + clip" configuration: honest updates are 4.5, 9.1 or 13.6
/// from the start (noise 0.01, 0.02 or 0.03 per value: 454 × noise), outliers 227, so it
/// clips a third of the honest updates and every outlier.
const CLIP_NORM: &str = "10";

/// Command-line settings: the parent's, plus the one configuration a child runs.
struct Args {
    sizes: Vec<usize>,
    spill_dir: PathBuf,
    child: Option<Recipe>,
    n: usize,
}

fn parse_args() -> Result<Args> {
    use lexopt::prelude::*;
    let mut args = Args { sizes: vec![10, 50, 100], spill_dir: std::env::temp_dir(), child: None, n: 0 };
    let mut clip_norm = None;
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("sizes") => {
                args.sizes = parser
                    .value()?
                    .string()?
                    .split(',')
                    .map(|s| s.trim().parse::<usize>().with_context(|| format!("--sizes: {s:?} is not a number")))
                    .collect::<Result<_>>()?
            }
            Long("spill-dir") => args.spill_dir = parser.value()?.into(),
            // The child's flags, set by the parent.
            Long("child") => args.child = Some(Recipe { rule: parser.value()?.string()?.parse()?, clip_norm: None }),
            Long("n") => args.n = flags::number(&mut parser, "--n")?,
            Long("clip-norm") => clip_norm = Some(parse_clip_norm(&parser.value()?.string()?)?),
            Long("help") => {
                println!("usage: rules_bench [--sizes 10,50,100] [--spill-dir DIR (default: the temporary directory)]");
                std::process::exit(0);
            }
            _ => return Err(arg.unexpected().into()),
        }
    }
    if let Some(recipe) = args.child.as_mut() {
        recipe.clip_norm = clip_norm;
    }
    Ok(args)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    match &args.child {
        Some(recipe) => run_child(recipe, args.n, &args.spill_dir),
        None => run_parent(&args.sizes, &args.spill_dir),
    }
}

/// Update `k` of a round: the start plus uniform noise of 0.01, 0.02 or 0.03 per value
/// (every tenth update 0.5: an outlier), from a seed of its own.
fn update(start: &ModelFile, k: u64) -> ModelFile {
    let scale = if k.is_multiple_of(10) { 0.5 } else { 0.01 * (1 + k % 3) as f32 };
    let mut rng = Rng::new(derive_seed(2024, k));
    let tensors = start
        .tensors
        .iter()
        .map(|t| {
            let values: Vec<f32> = t.to_f32().iter().map(|&v| v + (rng.next_f32() * 2.0 - 1.0) * scale).collect();
            NamedTensor::from_f32(&t.name, &t.dims(), &values)
        })
        .collect();
    ModelFile {
        format_version: start.format_version,
        architecture: start.architecture.clone(),
        spec: start.spec,
        round: 1,
        n_samples: 1000 + 37 * k,
        tensors,
    }
}

/// A `VmRSS:` or `VmHWM:` figure of this process, in bytes.
fn status_bytes(key: &str) -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let line = status.lines().find(|l| l.starts_with(key)).with_context(|| format!("no {key} in /proc/self/status"))?;
    let kb: u64 =
        line.split_whitespace().nth(1).context("malformed /proc/self/status line")?.parse().context("malformed /proc/self/status value")?;
    Ok(kb * 1024)
}

/// Total size of the files in `dir`.
fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        total += entry?.metadata()?.len();
    }
    Ok(total)
}

/// One configuration: aggregates N generated updates and prints `key=value` figures.
fn run_child(recipe: &Recipe, n: usize, spill_root: &Path) -> Result<()> {
    let start = ModelFile::initial(1);
    let spill_dir = spill_root.join(format!("fl-rules-bench-{}", std::process::id()));
    std::fs::create_dir_all(&spill_dir).with_context(|| format!("creating {}", spill_dir.display()))?;
    let baseline = status_bytes("VmRSS:")?;
    // Writing 5 to clear_refs resets VmHWM (Linux >= 4.0): the peak read below is that of
    // the aggregation, on top of the baseline.
    std::fs::write("/proc/self/clear_refs", "5").context("resetting the peak RSS via /proc/self/clear_refs")?;
    let mut busy = Duration::ZERO;
    let mut aggregation = Aggregation::new(recipe, Some(&start))?.with_spill_dir(&spill_dir);
    for k in 1..=n as u64 {
        let model = update(&start, k);
        let t0 = Instant::now();
        aggregation.add(k, &model, &format!("update {k}"))?;
        busy += t0.elapsed();
    }
    let spill_bytes = dir_bytes(&spill_dir)?;
    let t0 = Instant::now();
    let outcome = aggregation.finish()?;
    busy += t0.elapsed();
    let peak = status_bytes("VmHWM:")?;
    std::fs::remove_dir(&spill_dir).with_context(|| format!("removing {} (the spill file should be gone)", spill_dir.display()))?;
    println!(
        "seconds={} baseline_bytes={baseline} peak_bytes={peak} spill_bytes={spill_bytes} selected={} clipped={}",
        busy.as_secs_f64(),
        outcome.selected.len(),
        outcome.clipped.len()
    );
    Ok(())
}

/// Every configuration, each in a child process, then the table.
fn run_parent(sizes: &[usize], spill_dir: &Path) -> Result<()> {
    let exe: PathBuf = std::env::current_exe().context("finding this program to run it again")?;
    let model_bytes = ModelFile::initial(1).tensors.iter().map(|t| t.data.len()).sum::<usize>() as f64;
    let mib = |bytes: f64| bytes / (1 << 20) as f64;
    println!("model: {} values, {:.2} MiB of f32; spill files in {}", model_bytes / 4.0, mib(model_bytes), spill_dir.display());
    let columns = [
        "rule",
        "N",
        "seconds",
        "x fedavg",
        "baseline RSS MiB",
        "peak RSS MiB",
        "peak / model",
        "above baseline / model",
        "spill MiB",
        "selected",
        "clipped",
    ];
    println!("\n| {} |\n|---|{}", columns.join(" | "), "---:|".repeat(columns.len() - 1));
    for &n in sizes {
        let f = n.saturating_sub(3) / 4;
        let (krum, multi_krum) = (format!("krum:{f}"), format!("multi-krum:{f}"));
        let configs = [
            ("fedavg", None),
            ("fedavg", Some(CLIP_NORM)),
            ("median", None),
            ("trimmed-mean:0.2", None),
            (&krum, None),
            (&multi_krum, None),
        ];
        let mut fedavg_seconds = None;
        for (rule, clip) in configs {
            ensure!(n >= rule.parse::<Rule>()?.min_inputs(), "{rule} needs more than {n} updates: use larger --sizes");
            let name = match clip {
                Some(c) => format!("{rule} + clip-norm {c}"),
                None => rule.to_string(),
            };
            eprintln!("rules_bench: {name}, N = {n}");
            let mut command = Command::new(&exe);
            command.arg("--spill-dir").arg(spill_dir).args(["--child", rule, "--n", &n.to_string()]);
            if let Some(clip) = clip {
                command.args(["--clip-norm", clip]);
            }
            let output = command.output().with_context(|| format!("running {}", exe.display()))?;
            let stdout = String::from_utf8_lossy(&output.stdout);
            ensure!(output.status.success(), "{name} N = {n} failed: {}{}", stdout, String::from_utf8_lossy(&output.stderr));
            let figures: HashMap<&str, f64> =
                stdout.split_whitespace().filter_map(|kv| kv.split_once('=')).filter_map(|(k, v)| Some((k, v.parse().ok()?))).collect();
            let get = |key: &str| figures.get(key).copied().with_context(|| format!("{name} N = {n}: no {key} in {stdout:?}"));
            let (seconds, baseline, peak) = (get("seconds")?, get("baseline_bytes")?, get("peak_bytes")?);
            if rule == "fedavg" && clip.is_none() {
                fedavg_seconds = Some(seconds);
            }
            let ratio = fedavg_seconds.map_or("-".to_string(), |reference| format!("{:.1}", seconds / reference));
            println!(
                "| {name} | {n} | {seconds:.3} | {ratio} | {:.0} | {:.0} | {:.1} | {:.1} | {:.0} | {} | {} |",
                mib(baseline),
                mib(peak),
                peak / model_bytes,
                (peak - baseline) / model_bytes,
                mib(get("spill_bytes")?),
                get("selected")?,
                get("clipped")?
            );
        }
    }
    println!(
        "\nF = (N - 3) / 4 for krum and multi-krum (N >= 2F + 3); multi-krum averages the N - F best; every tenth update is an outlier."
    );
    Ok(())
}
