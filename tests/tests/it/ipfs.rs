//! IPFS client against real js-ipfs nodes.
