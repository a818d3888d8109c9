//! The model registry on Ethereum: the contract's embedded artifacts and ABI, CIDs in the
//! contract's binary form, keys, a blocking JSON-RPC client, signed transactions and the
//! [`Registry`] API that learners and the aggregator use.
//!
//! Only this crate knows the ABI, the selectors and JSON-RPC.

pub mod abi;
pub mod cid;
pub mod client;
pub mod endpoints;
pub mod error;
pub mod evm;
pub mod finality;
pub mod registry;
pub mod rpc;
pub mod signer;

pub use client::{Client, FeeMode, PendingTx};
pub use error::{is_transient, Error, Result};
/// The ethers-core this crate is built on, for callers that need its types.
pub use ethers_core;
pub use ethers_core::types::{Address, TransactionReceipt, H256, U256};
pub use finality::{check_confirmations, MAX_CONFIRMATIONS};
pub use registry::{
    commitment, creation_code, Event, GlobalUpdate, LatestUpdate, LearnerState, LocalUpdate, Logged, Mode, Registry, REGISTRY_VERSION,
};
pub use rpc::Rpc;
pub use signer::{KeySource, Signer};
