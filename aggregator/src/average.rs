//! `fl-aggregator average --out FILE MODEL...`: the aggregation rule (FedAvg, weighted by
//! the sample count each file records, unless `--rule` says otherwise) applied to model
//! files, offline. The files play node ids 1, 2, ... in the order given.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use fl_core::encoding::Bases;
use fl_core::flags::number;
use fl_core::rules::{parse_clip_norm, Aggregation, Recipe, Rule};
use fl_core::weights::{hex, ModelFile};
use lexopt::prelude::*;

const USAGE: &str = "\
usage: fl-aggregator average [--rule RULE] [--clip-norm C --previous FILE] --out FILE MODEL...

writes the aggregate of the model files (node ids 1, 2, ... in order) and prints its SHA-256

  --rule RULE       fedavg (default: the mean weighted by each file's sample count), median,
                    trimmed-mean:B, krum:F or multi-krum:F
  --clip-norm C     first clip each model's L2 distance from --previous to C
  --previous FILE   the global model the inputs started from (needed with --clip-norm, and
                    for f16 and int8 updates: they hold their difference from it)
";

/// Validated flags of `average`.
#[derive(Debug, Clone)]
pub struct AverageConfig {
    /// Output model file.
    pub out: PathBuf,
    /// Input model files, node ids 1, 2, ... in this order.
    pub models: Vec<PathBuf>,
    pub recipe: Recipe,
    /// The previous global model, for clipping.
    pub previous: Option<PathBuf>,
}

/// Parses the flags of `fl-aggregator average` and runs it.
pub fn main(args: Vec<OsString>) -> Result<()> {
    let mut parser = lexopt::Parser::from_args(args);
    let (mut out, mut previous) = (None, None);
    let (mut rule, mut clip_norm) = (Rule::FedAvg, None);
    let mut models = Vec::new();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("out") => out = Some(PathBuf::from(parser.value()?)),
            Long("rule") => rule = number(&mut parser, "--rule")?,
            Long("clip-norm") => clip_norm = Some(parse_clip_norm(&parser.value()?.string()?).context("--clip-norm")?),
            Long("previous") => previous = Some(PathBuf::from(parser.value()?)),
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
    if clip_norm.is_some() && previous.is_none() {
        bail!("--clip-norm needs --previous: clipping measures each model's distance from the previous global model");
    }
    run(&AverageConfig { out, models, recipe: Recipe { rule, clip_norm }, previous })
}

/// Feeds the files to the rule one at a time (FedAvg keeps only a running sum; the other
/// rules spill to a temporary file) and writes the result; prints its SHA-256 on stdout.
pub fn run(config: &AverageConfig) -> Result<()> {
    let previous = config.previous.as_deref().map(ModelFile::load).transpose()?;
    let bases = previous.as_ref().map(Bases::of).transpose()?;
    let mut aggregation = Aggregation::new(&config.recipe, previous.as_ref().filter(|_| config.recipe.clip_norm.is_some()))?;
    if aggregation.is_empty() && config.models.len() < config.recipe.rule.min_inputs() {
        bail!("{} needs at least {} models, got {}", config.recipe.rule, config.recipe.rule.min_inputs(), config.models.len());
    }
    for (node_id, path) in (1u64..).zip(&config.models) {
        let model = match &bases {
            Some(bases) => {
                let bytes = std::fs::read(path).with_context(|| format!("reading model from {}", path.display()))?;
                bases.decode(&bytes).with_context(|| format!("loading model from {}", path.display()))?.model
            }
            None => ModelFile::load(path).with_context(|| "an f16 or int8 update also needs --previous, the model it started from")?,
        };
        aggregation.add(node_id, &model, &path.display().to_string())?;
        eprintln!("added {} as node {node_id} (round {}, {} samples)", path.display(), model.round, model.n_samples);
    }
    let outcome = aggregation.finish()?;
    outcome.model.save(&config.out)?;
    eprintln!(
        "wrote {} by {} ({} samples in total; selected {:?}, clipped {:?})",
        config.out.display(),
        config.recipe.rule,
        outcome.model.n_samples,
        outcome.selected,
        outcome.clipped
    );
    println!("{}", hex(&outcome.model.sha256()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_files_weighted_by_their_sample_counts() {
        let dir = std::env::temp_dir().join(format!("fl-aggregator-average-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut a = ModelFile::initial(1);
        a.n_samples = 1;
        let mut b = ModelFile::initial(2);
        b.n_samples = 3;
        let (pa, pb, out) = (dir.join("a.bin"), dir.join("b.bin"), dir.join("avg.bin"));
        a.save(&pa).unwrap();
        b.save(&pb).unwrap();
        let fedavg = Recipe { rule: Rule::FedAvg, clip_norm: None };
        run(&AverageConfig { out: out.clone(), models: vec![pa.clone(), pb.clone()], recipe: fedavg, previous: None }).unwrap();
        let avg = ModelFile::load(&out).unwrap();
        assert_eq!(avg.n_samples, 4);
        // Spot-check one weight against the definition: (1 * a + 3 * b) / 4.
        let (wa, wb, wavg) = (a.tensors[6].to_f32()[77], b.tensors[6].to_f32()[77], avg.tensors[6].to_f32()[77]);
        assert_eq!(wavg, ((wa as f64 + 3.0 * wb as f64) / 4.0) as f32);
        // A file that is not a model is named in the error.
        let junk = dir.join("junk.bin");
        std::fs::write(&junk, b"not a model").unwrap();
        let err = format!(
            "{:#}",
            run(&AverageConfig { out: out.clone(), models: vec![pa.clone(), junk], recipe: fedavg, previous: None }).unwrap_err()
        );
        assert!(err.contains("junk.bin"), "{err}");
        // Median of two is their unweighted mean; Krum needs 2F + 3 models.
        let median = Recipe { rule: Rule::Median, clip_norm: None };
        run(&AverageConfig { out: out.clone(), models: vec![pa.clone(), pb.clone()], recipe: median, previous: None }).unwrap();
        let med = ModelFile::load(&out).unwrap();
        assert_eq!(med.tensors[6].to_f32()[77], ((wa as f64 + wb as f64) / 2.0) as f32);
        let krum = Recipe { rule: Rule::Krum { f: 1 }, clip_norm: None };
        let err = format!("{:#}", run(&AverageConfig { out, models: vec![pa, pb], recipe: krum, previous: None }).unwrap_err());
        assert!(err.contains("krum:1 needs at least 5"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
