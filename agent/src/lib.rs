//! The learner (`fl-agent`): the `summary`/`train`/`eval` commands over the ML core
//! ([`fl_core`]) and the networked loop that trains each round and publishes through IPFS
//! and the registry ([`learner`]).

pub mod cli;
pub mod learner;
