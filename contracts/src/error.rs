//! The error a caller of the chain client may need to match on: the node answered with an
//! error, the node could not be reached, a deadline passed, the contract reverted, or a sent
//! transaction was dropped.

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
            Error::Dropped { what, hash } => write!(
                f,
                "{what}: transaction {hash:?} is no longer known to the node (dropped from its pool or reorganised out of the chain); it has to be sent again"
            ),
            Error::Key(msg) | Error::Invalid(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for Error {}
