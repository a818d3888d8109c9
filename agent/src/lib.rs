//! The learner's machine-learning core: MNIST data and partitions, the paper's CNN in
//! candle, training and evaluation, and the model file format shared with the
//! aggregator. The `fl-agent` binary's commands live in [`cli`].

pub mod cli;
pub mod data;
pub mod kernels;
pub mod learner;
pub mod model;
pub mod network;
pub mod rng;
pub mod train;
pub mod weights;
