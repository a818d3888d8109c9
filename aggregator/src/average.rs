//! `fl-aggregator average --out FILE MODEL...`: FedAvg of model files, weighted by the
//! sample count each file records.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use fl_agent::weights::{hex, ModelFile};
use lexopt::prelude::*;

use crate::fedavg::FedAvg;

const USAGE: &str = "\
usage: fl-aggregator average --out FILE MODEL...

writes the FedAvg (mean weighted by each file's sample count) of the model files
";

/// Validated flags of `average`.
#[derive(Debug, Clone)]
pub struct AverageConfig {
    /// Output model file.
    pub out: PathBuf,
    /// Input model files, averaged in this order.
    pub models: Vec<PathBuf>,
}

/// Parses the flags of `fl-aggregator average` and runs it.
pub fn main(args: Vec<OsString>) -> Result<()> {
    let mut parser = lexopt::Parser::from_args(args);
    let mut out = None;
    let mut models = Vec::new();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("out") => out = Some(PathBuf::from(parser.value()?)),
            Value(path) => models.push(PathBuf::from(path)),
            Short('h') | Long("help") => {
                print!("{USAGE}");
                return Ok(());
            }
            _ => return Err(arg.unexpected().into()),
        }
    }
    let out = out.context("--out FILE is required")?;
    if models.is_empty() {
        bail!("no model files given: usage: fl-aggregator average --out FILE MODEL...");
    }
    run(&AverageConfig { out, models })
}

/// Averages the files one at a time (only one input is in memory at once) and writes
/// the result; prints the output's SHA-256 on stdout.
pub fn run(config: &AverageConfig) -> Result<()> {
    let mut fedavg = FedAvg::new();
    for path in &config.models {
        let model = ModelFile::load(path)?;
        fedavg.add(&model, &path.display().to_string())?;
        eprintln!("added {} (round {}, {} samples)", path.display(), model.round, model.n_samples);
    }
    let average = fedavg.finish()?;
    average.save(&config.out)?;
    eprintln!("wrote {} ({} samples in total)", config.out.display(), average.n_samples);
    println!("{}", hex(&average.sha256()));
    Ok(())
}
