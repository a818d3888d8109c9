//! Helpers for whole-system tests: real nodes (anvil, IPFS) started on free loopback
//! ports and stopped on drop, temporary folders, and paths to the project's binaries.

pub mod anvil;
pub mod devnet;
pub mod ipfs_node;
pub mod proxy;
pub mod util;
