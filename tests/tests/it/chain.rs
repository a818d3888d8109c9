//! Registry contract and JSON-RPC client against a real anvil.
