//! The error a caller of the chain client may need to match on: the node answered with an
//! error, the node could not be reached, a deadline passed, the contract reverted, the
//! chain's EVM refused one of the contract's instructions, or a sent transaction was dropped.

use crate::evm::{self, Opcode};
use std::fmt;
use std::time::Duration;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong when talking to a node or a contract.
#[derive(Debug)]
pub enum Error {
    /// The node answered a JSON-RPC request with an error object.
    Rpc {
        method: String,
        code: i64,
        message: String,
        /// The error's `data` member (revert data for `eth_call` / `eth_estimateGas`).
        data: Option<serde_json::Value>,
    },
    /// The node could not be reached or answered something that is not JSON-RPC.
    Transport { url: String, method: String, detail: String },
    /// A request or a wait did not finish in time.
    Timeout { what: String, after: Duration },
    /// The contract reverted; `name` and `args` come from its ABI (a custom error, or the
    /// standard `Error(string)` / `Panic(uint256)`), `data` is the raw revert data.
    Revert { call: String, name: String, args: Vec<(String, String)>, data: Vec<u8> },
    /// The chain's EVM refused an instruction: most often its rule set predates an opcode
    /// the contract uses (PUSH0 before Shanghai, MCOPY before Cancun). `opcodes` are the
    /// refused opcode bytes when known (empty when the node did not say which); `message`
    /// is the node's own words. Never a revert: the contract did not choose to fail.
    InvalidOpcode { call: String, opcodes: Vec<u8>, message: String },
    /// A transaction the caller sent is no longer known to the node: dropped from its pool,
    /// or reorganised out of the chain and not put back. Nothing of it is on chain; send it
    /// again.
    Dropped { what: String, hash: ethers_core::types::H256 },
    /// A key could not be loaded (what and where; the key itself is never included).
    Key(String),
    /// Anything else that is wrong with an input or a reply, said in words.
    Invalid(String),
}

impl Error {
    /// True if the node could not be reached or did not answer in time, or a sent
    /// transaction was dropped (sending it again may succeed): a later attempt may
    /// succeed. Reverts, the node's own errors, keys and malformed replies would only repeat.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Transport { .. } | Error::Timeout { .. } | Error::Dropped { .. })
    }

    /// The custom error's name when this is a revert (e.g. `"WrongRound"`).
    pub fn revert_name(&self) -> Option<&str> {
        match self {
            Error::Revert { name, .. } => Some(name),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Rpc { method, code, message, .. } => write!(f, "{method}: node returned error {code}: {message}"),
            Error::Transport { url, method, detail } => write!(f, "{method}: cannot reach node at {url}: {detail}"),
            Error::Timeout { what, after } => write!(f, "{what}: no answer within {after:?}"),
            Error::Revert { call, name, args, .. } => {
                let args: Vec<String> = args.iter().map(|(k, v)| if k.is_empty() { v.clone() } else { format!("{k}={v}") }).collect();
                write!(f, "{call}: reverted with {name}({})", args.join(", "))
            }
            Error::InvalidOpcode { call, opcodes, message } => write_invalid_opcode(f, call, opcodes, message),
            Error::Dropped { what, hash } => write!(
                f,
                "{what}: transaction {hash:?} is no longer known to the node (dropped from its pool or reorganised out of the chain); it has to be sent again"
            ),
            Error::Key(msg) | Error::Invalid(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for Error {}

/// Says which opcodes the chain lacks, the rule set that added them, and what to do.
fn write_invalid_opcode(f: &mut fmt::Formatter<'_>, call: &str, opcodes: &[u8], message: &str) -> fmt::Result {
    if opcodes == [0xfe] {
        // 0xfe is INVALID by design on every rule set: the code chose to stop there.
        return write!(f, "{call}: the contract executed the designated invalid instruction 0xfe (node: {message})");
    }
    let known: Vec<&Opcode> = opcodes.iter().filter_map(|&b| evm::opcode(b)).collect();
    if known.is_empty() {
        let which = match opcodes.first() {
            Some(byte) => format!("opcode 0x{byte:02x}"),
            None => "an opcode".to_string(),
        };
        return write!(
            f,
            "{call}: the chain's EVM rejected {which} of the contract (node: {message}): its rule set is older than the \
             bytecode needs (e.g. PUSH0 needs Shanghai, MCOPY needs Cancun); use a build for an older EVM version \
             (the registry's artifact targets Istanbul) or run the chain with newer rules"
        );
    }
    let names: Vec<String> =
        known.iter().map(|op| format!("{} opcode (0x{:02x}, {}, EIP-{})", op.name, op.byte, op.fork.name(), op.eip)).collect();
    let newest = known.iter().map(|op| op.fork).max().map_or("newer", |fork| fork.name());
    write!(
        f,
        "{call}: this chain rejects the {} (node: {message}): the bytecode needs the {} rules or later; run the chain \
         with them, or compile the contract for the chain's EVM version (solc --evm-version; the registry's artifact \
         targets Istanbul)",
        names.join(" and the "),
        newest
    )
}

/// True if some cause in `err`'s chain is a chain or IPFS error worth retrying (see
/// [`Error::is_transient`] and `fl_ipfs::Error::is_transient`): what the learner's and
/// the aggregator's loops retry with a [`fl_ipfs::Backoff`]; any other error ends them.
pub fn is_transient(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause.downcast_ref::<Error>().is_some_and(Error::is_transient)
            || cause.downcast_ref::<fl_ipfs::Error>().is_some_and(fl_ipfs::Error::is_transient)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(opcodes: &[u8], message: &str) -> String {
        Error::InvalidOpcode { call: "deploy".into(), opcodes: opcodes.to_vec(), message: message.into() }.to_string()
    }

    #[test]
    fn invalid_opcode_messages_name_the_opcode_the_rule_set_and_the_way_out() {
        assert_eq!(
            invalid(&[0x5f, 0x5e], "EVM error NotActivated"),
            "deploy: this chain rejects the PUSH0 opcode (0x5f, Shanghai, EIP-3855) and the MCOPY opcode (0x5e, Cancun, \
             EIP-5656) (node: EVM error NotActivated): the bytecode needs the Cancun rules or later; run the chain with \
             them, or compile the contract for the chain's EVM version (solc --evm-version; the registry's artifact \
             targets Istanbul)"
        );
        assert_eq!(
            invalid(&[], "EVM error NotActivated"),
            "deploy: the chain's EVM rejected an opcode of the contract (node: EVM error NotActivated): its rule set is \
             older than the bytecode needs (e.g. PUSH0 needs Shanghai, MCOPY needs Cancun); use a build for an older EVM \
             version (the registry's artifact targets Istanbul) or run the chain with newer rules"
        );
        assert!(invalid(&[0x0c], "EVM error OpcodeNotFound").starts_with("deploy: the chain's EVM rejected opcode 0x0c of the contract"));
        assert_eq!(
            invalid(&[0xfe], "EVM error InvalidFEOpcode"),
            "deploy: the contract executed the designated invalid instruction 0xfe (node: EVM error InvalidFEOpcode)"
        );
        // Never worded as a revert.
        assert!(!invalid(&[], "x").contains("revert"));
    }

    #[test]
    fn only_unanswered_requests_are_retried() {
        let transport = Error::Transport { url: "http://127.0.0.1:1".into(), method: "eth_blockNumber".into(), detail: "refused".into() };
        assert!(is_transient(&anyhow::Error::from(transport).context("waiting for round 2")));
        let timeout = fl_ipfs::Error::Timeout { api: "http://127.0.0.1:5001".into(), op: "cat".into(), after: Duration::from_secs(1) };
        assert!(is_transient(&anyhow::Error::from(timeout).context("fetching the global model")));
        let revert = Error::Revert { call: "setLocalWeight".into(), name: "WrongRound".into(), args: vec![], data: vec![] };
        assert!(!is_transient(&anyhow::Error::from(revert)));
        let tampered = fl_ipfs::Error::DigestMismatch { api: "a".into(), cid: "b".into(), expected: "c".into(), actual: "d".into() };
        assert!(!is_transient(&anyhow::Error::from(tampered)));
        assert!(!is_transient(&anyhow::anyhow!("training diverged")));
        let dropped = Error::Dropped { what: "setGlobalWeight".into(), hash: ethers_core::types::H256::repeat_byte(1) };
        assert!(is_transient(&anyhow::Error::from(dropped).context("publishing the global model of round 1")));
    }
}
