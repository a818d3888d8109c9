//! A real IPFS node for tests (owned by the IPFS work).
