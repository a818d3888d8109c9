//! The federated learner's machine-learning core, shared by both binaries: MNIST data and
//! partitions, the seeded generator, the paper's CNN (its candle reference and the
//! buffer-based network that trains it on our CPU kernels), training and evaluation, the
//! model file format, FedAvg and the robust aggregation rules (median, trimmed mean, Krum,
//! Multi-Krum, norm clipping), how a federated round derives its seeds and shards, how a stale update enters an
//! asynchronous round (`staleness`), and
//! the command-line helpers both binaries use, and the round record (how each global model
//! was made) that the aggregator writes and learners and `verify` read. Nothing here talks to a network.

pub mod attacks;
pub mod data;
pub mod encoding;
pub mod ensemble;
pub mod export;
pub mod fedavg;
pub mod files;
pub mod flags;
pub mod kernels;
pub mod model;
pub mod network;
pub mod record;
pub mod rng;
pub mod rounds;
pub mod rules;
pub mod spec;
pub mod staleness;
pub mod train;
pub mod weights;
