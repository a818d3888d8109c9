//! How a federated round's training follows from one seed, the same in the learner
//! (`fl-agent run`) and in the in-process experiment (`fl-aggregator simulate`): which
//! shard of the training set each learner holds, and how learner `node_id` trains in
//! round `round` (its own seed stream). Changing anything here
//! changes every federated model's bytes.

use anyhow::Result;

use crate::data::{partition, Split};
use crate::rng::derive_seed;
use crate::train::TrainConfig;

/// The training set's split into `count` shards (indices in ascending order) for the base
/// `seed`; every board and the simulation cut the same shards from the same labels.
pub fn shards(labels: &[u8], count: usize, split: Split, seed: u64) -> Result<Vec<Vec<usize>>> {
    // Stream 0 of the seed: rounds use streams 1, 2, ...
    partition(labels, count, split, derive_seed(seed, 0))
}

/// The seed of learner `node_id`'s local training in round `round` (rounds and node ids
/// count from 1): one independent stream per round and learner.
pub fn local_seed(seed: u64, round: u64, node_id: u64) -> u64 {
    derive_seed(derive_seed(seed, round), node_id)
}

/// How learner `node_id` trains in round `round`; `progress` labels its progress lines.
pub fn local_train_config(seed: u64, round: u64, node_id: u64, epochs: usize, batch_size: usize, progress: String) -> TrainConfig {
    TrainConfig { epochs, batch_size, seed: local_seed(seed, round, node_id), progress: Some(progress) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_round_and_learner_gets_its_own_stream() {
        let seeds: Vec<u64> = [(1, 1), (1, 2), (2, 1), (2, 2)].iter().map(|&(round, node)| local_seed(7, round, node)).collect();
        for (i, a) in seeds.iter().enumerate() {
            assert!(seeds[i + 1..].iter().all(|b| a != b), "{seeds:?}");
        }
        assert_eq!(local_seed(7, 2, 1), derive_seed(derive_seed(7, 2), 1));
        let config = local_train_config(7, 2, 1, 3, 32, "learner 1 round 2".into());
        assert_eq!((config.seed, config.epochs), (local_seed(7, 2, 1), 3));
    }
}
