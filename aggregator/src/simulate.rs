//! `fl-aggregator simulate`: the paper's experiment in one process, without chain or
//! IPFS. Every learner starts each round from the same global model (round 1: the seeded
//! initial model), trains its shard for the local epochs, and the FedAvg of their models
//! becomes the next global model. Prints, per round, each learner's test accuracy and the
//! global model's (the paper's Table 2 plus a global column).

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, Result};
use fl_agent::cli::{number, positive};
use fl_agent::data::{partition, Mnist, Split};
use fl_agent::rng::derive_seed;
use fl_agent::train::{evaluate, train, TrainConfig};
use fl_agent::weights::ModelFile;
use lexopt::prelude::*;

use crate::fedavg::FedAvg;

const USAGE: &str = "\
usage: fl-aggregator simulate --data DIR --learners N --rounds R --local-epochs L
                              [--split iid|dirichlet:ALPHA] [--seed N] [--batch-size N]
                              [--train-limit N] [--test-limit N]

runs federated training in one process and prints a table of test accuracies

  --data DIR          folder with the four MNIST IDX files
  --learners N        number of learners the training set is split across
  --rounds R          federated rounds
  --local-epochs L    epochs each learner trains per round
  --split S           iid (equal shuffled shards, default) or dirichlet:ALPHA (label-skewed)
  --seed N            seeds the initial model, the split and training (default 1)
  --batch-size N      examples per step (default 32)
  --train-limit N     split only the first N training images
  --test-limit N      evaluate on only the first N test images
";

/// Validated flags of `simulate`.
#[derive(Debug, Clone)]
pub struct SimulateConfig {
    /// MNIST folder.
    pub data: PathBuf,
    /// Number of learners.
    pub learners: usize,
    /// Federated rounds.
    pub rounds: usize,
    /// Local epochs per round.
    pub local_epochs: usize,
    /// How the training set is split.
    pub split: Split,
    /// Base seed.
    pub seed: u64,
    /// Training batch size.
    pub batch_size: usize,
    /// Use only the first N training images.
    pub train_limit: Option<usize>,
    /// Evaluate on only the first N test images.
    pub test_limit: Option<usize>,
}

impl SimulateConfig {
    /// Parses the flags; `Ok(None)` means `--help` was printed.
    pub fn parse(args: Vec<OsString>) -> Result<Option<SimulateConfig>> {
        let mut parser = lexopt::Parser::from_args(args);
        let (mut data, mut learners, mut rounds, mut local_epochs) = (None, None, None, None);
        let mut split = Split::Iid;
        let mut seed = 1;
        let mut batch_size = 32;
        let (mut train_limit, mut test_limit) = (None, None);
        while let Some(arg) = parser.next()? {
            match arg {
                Long("data") => data = Some(PathBuf::from(parser.value()?)),
                Long("learners") => learners = Some(positive(number(&mut parser, "--learners")?, "--learners")?),
                Long("rounds") => rounds = Some(positive(number(&mut parser, "--rounds")?, "--rounds")?),
                Long("local-epochs") => local_epochs = Some(positive(number(&mut parser, "--local-epochs")?, "--local-epochs")?),
                Long("split") => split = number(&mut parser, "--split")?,
                Long("seed") => seed = number(&mut parser, "--seed")?,
                Long("batch-size") => batch_size = positive(number(&mut parser, "--batch-size")?, "--batch-size")?,
                Long("train-limit") => train_limit = Some(positive(number(&mut parser, "--train-limit")?, "--train-limit")?),
                Long("test-limit") => test_limit = Some(positive(number(&mut parser, "--test-limit")?, "--test-limit")?),
                Short('h') | Long("help") => {
                    print!("{USAGE}");
                    return Ok(None);
                }
                _ => return Err(arg.unexpected().into()),
            }
        }
        Ok(Some(SimulateConfig {
            data: data.context("--data DIR is required (the MNIST folder, e.g. data/mnist)")?,
            learners: learners.context("--learners N is required")?,
            rounds: rounds.context("--rounds R is required")?,
            local_epochs: local_epochs.context("--local-epochs L is required")?,
            split,
            seed,
            batch_size,
            train_limit,
            test_limit,
        }))
    }
}

/// Parses the flags of `fl-aggregator simulate` and runs it.
pub fn main(args: Vec<OsString>) -> Result<()> {
    let Some(config) = SimulateConfig::parse(args)? else { return Ok(()) };
    run(&config)?;
    Ok(())
}

/// Test accuracies of one round.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundResult {
    /// 1-based round.
    pub round: usize,
    /// Each learner's local model's test accuracy, in learner order.
    pub learners: Vec<f64>,
    /// The FedAvg global model's test accuracy.
    pub global: f64,
}

/// Runs the simulation, printing the table on stdout as rows complete, and returns the
/// rows.
pub fn run(config: &SimulateConfig) -> Result<Vec<RoundResult>> {
    let mnist = Mnist::load(&config.data)?;
    let train_set = mnist.train.take(config.train_limit.unwrap_or(usize::MAX));
    let test_set = mnist.test.take(config.test_limit.unwrap_or(usize::MAX));
    // Separate streams for the split and each round's training, all from one seed.
    let shards = partition(train_set.labels(), config.learners, config.split, derive_seed(config.seed, 0))?;
    let shards: Vec<_> = shards.iter().map(|indices| train_set.select(indices)).collect();
    eprintln!(
        "simulating {} learners ({:?} split, shard sizes {:?}), {} rounds of {} local epoch(s), testing on {} images",
        config.learners,
        config.split,
        shards.iter().map(|s| s.len()).collect::<Vec<_>>(),
        config.rounds,
        config.local_epochs,
        test_set.len()
    );
    let mut header = format!("{:>5}", "round");
    for learner in 1..=config.learners {
        header.push_str(&format!("  {:>9}", format!("learner {learner}")));
    }
    println!("{header}  {:>8}", "global");
    let mut global = ModelFile::initial(config.seed)?;
    let mut results = Vec::with_capacity(config.rounds);
    for round in 1..=config.rounds {
        let mut fedavg = FedAvg::new();
        let mut accuracies = Vec::with_capacity(config.learners);
        for (learner_idx, shard) in shards.iter().enumerate() {
            let train_config = TrainConfig {
                epochs: config.local_epochs,
                batch_size: config.batch_size,
                learning_rate: 0.001,
                seed: derive_seed(derive_seed(config.seed, round as u64), learner_idx as u64 + 1),
                progress: Some(format!("round {round} learner {}", learner_idx + 1)),
            };
            let mut local = train(&global, shard, None, &train_config, &mut |_| {})?.model;
            local.round = round as u64;
            accuracies.push(evaluate(&local, &test_set)?.accuracy);
            fedavg.add(&local, &format!("learner {}", learner_idx + 1))?;
        }
        global = fedavg.finish()?;
        global.round = round as u64;
        let global_accuracy = evaluate(&global, &test_set)?.accuracy;
        let mut row = format!("{round:>5}");
        for accuracy in &accuracies {
            row.push_str(&format!("  {:>8.2}%", 100.0 * accuracy));
        }
        println!("{row}  {:>7.2}%", 100.0 * global_accuracy);
        results.push(RoundResult { round, learners: accuracies, global: global_accuracy });
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_simulation_gives_one_row_per_round_and_is_deterministic() {
        let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/mnist");
        assert!(
            data.join("t10k-labels-idx1-ubyte").is_file() || data.join("t10k-labels-idx1-ubyte.gz").is_file(),
            "this test needs MNIST in {}: run `make setup` first",
            data.display()
        );
        let config = SimulateConfig {
            data,
            learners: 2,
            rounds: 2,
            local_epochs: 1,
            split: Split::Dirichlet(1.0),
            seed: 3,
            batch_size: 32,
            train_limit: Some(960),
            test_limit: Some(200),
        };
        let rows = run(&config).unwrap();
        assert_eq!(rows.iter().map(|r| (r.round, r.learners.len())).collect::<Vec<_>>(), vec![(1, 2), (2, 2)]);
        assert!(rows.iter().all(|r| (0.0..=1.0).contains(&r.global)));
        // 960 images lift the global model well above chance (10%) by round 2 (76.5% measured).
        assert!(rows[1].global > 0.5, "global accuracy {} after two rounds", rows[1].global);
        assert_eq!(run(&config).unwrap(), rows);
    }
}
