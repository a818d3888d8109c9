//! When a transaction or an event is final enough to act on: the confirmation rule, in one
//! place, for chains that can reorganise (Clique, proof of work).
//!
//! With `n` confirmations (see [`crate::Client::with_confirmations`]):
//! - a transaction counts as done when its receipt is there, the head is at least its
//!   block + `n`, and, read again after that, the receipt is still there in the same block
//!   and that block is still the canonical one at its height. A receipt that disappeared
//!   or moved means the transaction was reorganised out: if the node still knows the
//!   transaction (back in its pool, or mined again elsewhere) the wait goes on; if it does
//!   not, the wait reports it dropped, and the caller sends again;
//! - events and views are read at the head − `n` only, so nothing acts on a block that can
//!   still vanish in a reorganisation of at most `n` blocks.
//!
//! `n = 0` (the default, for development chains that never reorganise) accepts a receipt
//! as soon as it exists and reads at the head, as before.

use crate::error::{Error, Result};
use crate::rpc::Rpc;
use ethers_core::types::{TransactionReceipt, H256};
use std::time::{Duration, Instant};

/// The most confirmations a client accepts. Views are read at the head − n, and a geth
/// node that is not an archive node keeps the state of only its last 128 blocks; half of
/// that leaves room for the head to move between reading it and the view.
pub const MAX_CONFIRMATIONS: u64 = 64;

/// How long a node must keep saying it does not know a transaction before the wait reports
/// it dropped: during a reorganisation a node takes transactions out of the chain before it
/// puts them back in its pool, and a resend in that moment would race the original.
pub const DROP_GRACE: Duration = Duration::from_secs(1);

/// Checks a number of confirmations from a config file, the environment or a flag.
pub fn check_confirmations(n: u64) -> Result<u64> {
    if n > MAX_CONFIRMATIONS {
        return Err(Error::Invalid(format!(
            "{n} confirmations is more than {MAX_CONFIRMATIONS}: views are read at the head minus the confirmations, and nodes keep the state of only their last 128 blocks"
        )));
    }
    Ok(n)
}

/// The highest block with at least `confirmations` blocks on top of it (the head itself
/// with 0). Before the chain is that long it is the genesis block, which never changes.
pub(crate) fn confirmed_head(rpc: &Rpc, confirmations: u64) -> Result<u64> {
    Ok(rpc.block_number()?.saturating_sub(confirmations))
}

/// How [`wait_receipt`] waits.
pub(crate) struct WaitRule {
    pub confirmations: u64,
    /// Longest wait for the transaction to be mined, and longest time without a new block
    /// while it collects confirmations.
    pub timeout: Duration,
    pub poll: Duration,
}

/// The receipt of `hash` once it has `rule.confirmations` confirmations (whatever its
/// status), or `None` if the node no longer knows the transaction.
pub(crate) fn wait_receipt(rpc: &Rpc, what: &str, hash: H256, rule: &WaitRule) -> Result<Option<TransactionReceipt>> {
    let mut deadline = Instant::now() + rule.timeout;
    // The head seen while the transaction was mined: confirmations in progress move the
    // deadline, a stalled chain does not.
    let mut mined_head: Option<u64> = None;
    let mut unknown_since: Option<Instant> = None;
    loop {
        let receipt = rpc.transaction_receipt(hash)?;
        match receipt.as_ref().and_then(|r| Some((r.block_number?.as_u64(), r.block_hash?))) {
            Some((block, block_hash)) => {
                unknown_since = None;
                if rule.confirmations == 0 {
                    return Ok(receipt);
                }
                let head = rpc.block_number()?;
                if mined_head.is_none_or(|seen| head > seen) {
                    deadline = deadline.max(Instant::now() + rule.timeout);
                    mined_head = Some(head);
                }
                if head >= block.saturating_add(rule.confirmations) {
                    // Read again: a reorganisation between the first read and now shows as
                    // a receipt that is gone, in another block, or in a block no longer
                    // canonical at its height.
                    let again = rpc.transaction_receipt(hash)?;
                    let same = again.as_ref().is_some_and(|r| r.block_hash == Some(block_hash));
                    if same && rpc.block_hash(block)? == Some(block_hash) {
                        return Ok(again);
                    }
                    // Moved or gone: the next pass tells which.
                }
            }
            None => {
                mined_head = None;
                // In the pool (or mined and its receipt not indexed yet) means keep waiting;
                // unknown for longer than the grace means dropped.
                if rpc.transaction_by_hash(hash)?.is_some() {
                    unknown_since = None;
                } else if unknown_since.get_or_insert_with(Instant::now).elapsed() >= DROP_GRACE {
                    return Ok(None);
                }
            }
        }
        if Instant::now() >= deadline {
            let waiting = match mined_head {
                Some(_) => format!("waiting for {} confirmations of {hash:?}", rule.confirmations),
                None => format!("waiting for receipt of {hash:?}"),
            };
            return Err(Error::Timeout { what: format!("{what}: {waiting}"), after: rule.timeout });
        }
        std::thread::sleep(rule.poll);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirmations_beyond_the_states_a_node_keeps_are_refused() {
        assert_eq!(check_confirmations(0).unwrap(), 0);
        assert_eq!(check_confirmations(MAX_CONFIRMATIONS).unwrap(), MAX_CONFIRMATIONS);
        let err = check_confirmations(MAX_CONFIRMATIONS + 1).unwrap_err().to_string();
        assert!(err.starts_with("65 confirmations is more than 64"), "{err}");
    }
}
