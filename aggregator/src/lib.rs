//! The aggregator (header node): FedAvg of the learners' models, the paper's experiment
//! in one process, the operator's chain commands, and the aggregation loop.

pub mod average;
pub mod operator;
pub mod report;
pub mod run;
pub mod simulate;
pub mod verify;
