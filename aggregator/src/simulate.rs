//! `fl-aggregator simulate`: the paper's experiment in one process, without chain or
//! IPFS. Every learner starts each round from the same global model (round 1: the seeded
//! initial model), trains its shard for the local epochs, and the FedAvg of their models
//! becomes the next global model. Prints, per round, each learner's test accuracy and the
//! global model's (the paper's Table 2 plus a global column), in the same table and
//! [`RoundResult`] rows as `fl-aggregator run`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use fl_core::data::{Mnist, Split};
use fl_core::fedavg::FedAvg;
use fl_core::flags::{number, positive};
use fl_core::rounds;
use fl_core::train::{evaluate, train, Evaluation};
use fl_core::weights::{hex, sha256, ModelFile};
use lexopt::prelude::*;

use crate::report::{header, row, unix_now, LearnerResult, Published, RoundResult, Timings};

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

/// Runs the simulation, printing the table on stdout as rows complete (the same table
/// as `fl-aggregator run`), and returns the rows. Each model's CID is the one IPFS would
/// give it and its digest the one the chain would record, though nothing is uploaded.
pub fn run(config: &SimulateConfig) -> Result<Vec<RoundResult>> {
    let mnist = Mnist::load(&config.data)?;
    let train_set = mnist.train.take(config.train_limit.unwrap_or(usize::MAX));
    let test_set = mnist.test.take(config.test_limit.unwrap_or(usize::MAX));
    let shards = rounds::shards(train_set.labels(), config.learners, config.split, config.seed)?;
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
    // Learner i (from 0) plays node id i + 1, as on the devnet.
    let node_ids: Vec<u64> = (1..=config.learners as u64).collect();
    println!("{}", header(&node_ids));
    let mut global = ModelFile::initial(config.seed)?;
    let mut results = Vec::with_capacity(config.rounds);
    for round in 1..=config.rounds as u64 {
        let mut fedavg = FedAvg::new();
        let mut timings = Timings::default();
        let mut learners = Vec::with_capacity(config.learners);
        for (shard, &node_id) in shards.iter().zip(&node_ids) {
            let progress = format!("round {round} learner {node_id}");
            let train_config = rounds::local_train_config(config.seed, round, node_id, config.local_epochs, config.batch_size, progress);
            let mut local = train(&global, shard, None, &train_config, &mut |_| {})?.model;
            local.round = round;
            let started = Instant::now();
            let evaluation = evaluate(&local, &test_set)?;
            timings.evaluate_s += started.elapsed().as_secs_f64();
            let started = Instant::now();
            fedavg.add(&local, &format!("learner {node_id}"))?;
            timings.average_s += started.elapsed().as_secs_f64();
            learners.push(LearnerResult { node_id, model: unpublished(&local, evaluation), used: true, note: None });
        }
        let started = Instant::now();
        global = fedavg.finish()?;
        global.round = round;
        timings.average_s += started.elapsed().as_secs_f64();
        let started = Instant::now();
        let evaluation = evaluate(&global, &test_set)?;
        timings.evaluate_s += started.elapsed().as_secs_f64();
        let record = RoundResult { round, learners, global: unpublished(&global, evaluation), timings, published_at: unix_now() };
        println!("{}", row(&record, &node_ids));
        results.push(record);
    }
    Ok(results)
}

/// A model's row entry as if it were published: its would-be CID and digest, no transaction.
fn unpublished(model: &ModelFile, evaluation: Evaluation) -> Published {
    let bytes = model.to_bytes();
    Published {
        accuracy: Some(evaluation.accuracy),
        loss: Some(evaluation.loss),
        cid: fl_ipfs::cid_of(&bytes),
        digest: hex(&sha256(&bytes)),
        samples: model.n_samples,
        tx: None,
        gas: None,
    }
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
        let accuracy = |r: &RoundResult| r.global.accuracy.unwrap();
        assert!(rows.iter().all(|r| (0.0..=1.0).contains(&accuracy(r))));
        // 960 images lift the global model well above chance (10%) by round 2 (76.5% measured).
        assert!(accuracy(&rows[1]) > 0.5, "global accuracy {} after two rounds", accuracy(&rows[1]));
        // Deterministic: the same models, byte for byte (only the timings differ).
        let models = |rows: &[RoundResult]| -> Vec<Published> {
            rows.iter().flat_map(|r| r.learners.iter().map(|l| l.model.clone()).chain([r.global.clone()])).collect()
        };
        assert_eq!(models(&run(&config).unwrap()), models(&rows));
    }
}
