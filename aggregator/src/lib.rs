//! The aggregator (header node): the aggregation rules applied to the learners' models,
//! the paper's experiment in one process, the operator's chain commands, the aggregation
//! loop, the round record each global model carries, and its public re-computation.

pub mod average;
pub mod config;
pub mod fetch;
pub mod operator;
/// The round record lives in `fl_core` (learners read it too); re-exported here.
pub use fl_core::record;
pub mod report;
pub mod run;
pub mod service;
pub mod simulate;
pub mod verify;
