//! Blocking client for the IPFS HTTP RPC API (Kubo's `/api/v0`, also served by js-ipfs),
//! local CID computation so uploads can be checked, SHA-256 checks of downloads, and
//! private-network swarm keys; also the project's one backoff ([`retry::Backoff`]).
//!
//! Models travel through IPFS; the chain records each model's CID and SHA-256 digest.
//! Nothing downloaded is used before its digest is checked (`Client::fetch_verified`), and
//! nothing uploaded is trusted before the node's CID is compared with the local one.

pub mod cid;
pub mod client;
pub mod retry;
pub mod swarm_key;

pub use cid::{cid_of, Cid};
pub use client::{Client, ClientConfig, Error, PeerInfo};
pub use retry::Backoff;
pub use swarm_key::SwarmKey;
