//! `fl-aggregator average --out FILE MODEL...`: FedAvg of model files, weighted by the
//! sample count each file records.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use fl_core::fedavg::FedAvg;
use fl_core::weights::{hex, ModelFile};
use lexopt::prelude::*;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_files_weighted_by_their_sample_counts() {
        let dir = std::env::temp_dir().join(format!("fl-aggregator-average-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut a = ModelFile::initial(1).unwrap();
        a.n_samples = 1;
        let mut b = ModelFile::initial(2).unwrap();
        b.n_samples = 3;
        let (pa, pb, out) = (dir.join("a.bin"), dir.join("b.bin"), dir.join("avg.bin"));
        a.save(&pa).unwrap();
        b.save(&pb).unwrap();
        run(&AverageConfig { out: out.clone(), models: vec![pa.clone(), pb] }).unwrap();
        let avg = ModelFile::load(&out).unwrap();
        assert_eq!(avg.n_samples, 4);
        // Spot-check one weight against the definition: (1 * a + 3 * b) / 4.
        let (wa, wb, wavg) = (a.tensors[6].to_f32()[77], b.tensors[6].to_f32()[77], avg.tensors[6].to_f32()[77]);
        assert_eq!(wavg, ((wa as f64 + 3.0 * wb as f64) / 4.0) as f32);
        // A file that is not a model is named in the error.
        let junk = dir.join("junk.bin");
        std::fs::write(&junk, b"not a model").unwrap();
        let err = format!("{:#}", run(&AverageConfig { out, models: vec![pa, junk] }).unwrap_err());
        assert!(err.contains("junk.bin"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
