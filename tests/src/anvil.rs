//! anvil: a real local chain for tests (owned by the contracts work).
