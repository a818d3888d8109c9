//! Whole-system tests against real nodes: anvil for the chain, js-ipfs for IPFS.
//! One binary; each module is one topic.

/// The registry contract and the JSON-RPC client on a real anvil chain.
mod chain;
/// The IPFS client against real js-ipfs nodes on a private network.
mod ipfs;
