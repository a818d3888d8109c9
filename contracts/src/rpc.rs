//! A blocking JSON-RPC client for an Ethereum node: one `ureq::Agent` with explicit timeouts,
//! typed results for the methods the registry needs, and errors that name the method and URL.

use crate::error::{Error, Result};
use ethers_core::types::transaction::eip2718::TypedTransaction;
use ethers_core::types::{Address, BlockNumber, Bytes, FeeHistory, Filter, Log, Transaction, TransactionReceipt, H256, U256, U64};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Default time limit of one request (connect + send + read).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A JSON-RPC endpoint (`http://…`).
pub struct Rpc {
    url: String,
    agent: ureq::Agent,
    timeout: Duration,
    next_id: AtomicU64,
}

impl fmt::Debug for Rpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rpc").field("url", &self.url).field("timeout", &self.timeout).finish()
    }
}

impl Rpc {
    /// A client for `url` with [`DEFAULT_TIMEOUT`] on every request.
    pub fn new(url: &str) -> Result<Rpc> {
        Rpc::with_timeout(url, DEFAULT_TIMEOUT)
    }

    /// A client for `url` whose every request must finish within `timeout`.
    pub fn with_timeout(url: &str, timeout: Duration) -> Result<Rpc> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Error::Invalid(format!("rpc url {url:?}: expected http://HOST:PORT or https://…")));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .timeout_connect(Some(timeout.min(Duration::from_secs(5))))
            .build()
            .into();
        Ok(Rpc { url: url.to_string(), agent, timeout, next_id: AtomicU64::new(1) })
    }

    /// The endpoint's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends one request and decodes its `result` as `T`.
    pub fn request<T: DeserializeOwned>(&self, method: &str, params: Value) -> Result<T> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let transport = |detail: String| Error::Transport { url: self.url.clone(), method: method.to_string(), detail };
        let map_err = |err: ureq::Error| match err {
            ureq::Error::Timeout(_) => Error::Timeout { what: format!("{method} on {}", self.url), after: self.timeout },
            other => transport(other.to_string()),
        };
        let mut response = self.agent.post(&self.url).send_json(&body).map_err(map_err)?;
        let reply: Value = response.body_mut().with_config().limit(64 * 1024 * 1024).read_json().map_err(map_err)?;
        if let Some(err) = reply.get("error").filter(|e| !e.is_null()) {
            return Err(node_error(method, err));
        }
        let Some(result) = reply.get("result") else {
            return Err(transport(format!("reply has neither result nor error: {}", truncate(&reply.to_string()))));
        };
        serde_json::from_value(result.clone()).map_err(|e| transport(format!("unexpected result {}: {e}", truncate(&result.to_string()))))
    }

    /// `eth_chainId`.
    pub fn chain_id(&self) -> Result<u64> {
        Ok(self.request::<U64>("eth_chainId", json!([]))?.as_u64())
    }

    /// `eth_blockNumber`.
    pub fn block_number(&self) -> Result<u64> {
        Ok(self.request::<U64>("eth_blockNumber", json!([]))?.as_u64())
    }

    /// `eth_getTransactionCount` at `block` (`"pending"` counts transactions in the pool).
    pub fn transaction_count(&self, address: Address, block: &str) -> Result<U256> {
        self.request("eth_getTransactionCount", json!([address, block]))
    }

    /// `eth_estimateGas` for `tx` against the pending state.
    pub fn estimate_gas(&self, tx: &TypedTransaction) -> Result<U256> {
        self.request("eth_estimateGas", json!([tx]))
    }

    /// `eth_gasPrice` (legacy transactions).
    pub fn gas_price(&self) -> Result<U256> {
        self.request("eth_gasPrice", json!([]))
    }

    /// `eth_feeHistory` over the last `blocks` blocks with the given reward percentiles.
    pub fn fee_history(&self, blocks: u64, percentiles: &[f64]) -> Result<FeeHistory> {
        self.request("eth_feeHistory", json!([U64::from(blocks), "latest", percentiles]))
    }

    /// `eth_sendRawTransaction`; returns the transaction hash.
    pub fn send_raw_transaction(&self, raw: &Bytes) -> Result<H256> {
        self.request("eth_sendRawTransaction", json!([raw]))
    }

    /// `eth_getTransactionReceipt`; `None` while the transaction is not mined.
    pub fn transaction_receipt(&self, hash: H256) -> Result<Option<TransactionReceipt>> {
        self.request("eth_getTransactionReceipt", json!([hash]))
    }

    /// `eth_getTransactionByHash`; `None` when the node knows no such transaction (neither
    /// in a block of its chain nor in its pool).
    pub fn transaction_by_hash(&self, hash: H256) -> Result<Option<Transaction>> {
        self.request("eth_getTransactionByHash", json!([hash]))
    }

    /// The hash of the canonical block at height `number` (`eth_getBlockByNumber`);
    /// `None` above the head.
    pub fn block_hash(&self, number: u64) -> Result<Option<H256>> {
        #[derive(serde::Deserialize)]
        struct Header {
            hash: Option<H256>,
        }
        let header: Option<Header> = self.request("eth_getBlockByNumber", json!([U64::from(number), false]))?;
        Ok(header.and_then(|h| h.hash))
    }

    /// `eth_call` of `tx` at `block`.
    pub fn call(&self, tx: &TypedTransaction, block: BlockNumber) -> Result<Bytes> {
        self.request("eth_call", json!([tx, block]))
    }

    /// `eth_getLogs` for one filter (callers keep its block range bounded).
    pub fn logs(&self, filter: &Filter) -> Result<Vec<Log>> {
        self.request("eth_getLogs", json!([filter]))
    }
}

/// The typed error for a JSON-RPC error object: [`Error::InvalidOpcode`] when the message
/// says the EVM refused an instruction and no revert data came with it (some nodes attach
/// an empty `data: "0x"` to every failed call, which must not read as a revert without a
/// reason), else [`Error::Rpc`].
fn node_error(method: &str, err: &Value) -> Error {
    let message = err.get("message").and_then(Value::as_str).unwrap_or("(no message)").to_string();
    let data = err.get("data").cloned();
    let revert_data = match &data {
        Some(Value::String(hex)) => !hex.trim_start_matches("0x").is_empty(),
        Some(Value::Object(inner)) => inner.get("data").and_then(Value::as_str).is_some_and(|hex| !hex.trim_start_matches("0x").is_empty()),
        _ => false,
    };
    if !revert_data {
        if let Some(opcodes) = crate::evm::invalid_opcode_in(&message) {
            return Error::InvalidOpcode { call: method.to_string(), opcodes, message };
        }
    }
    Error::Rpc { method: method.to_string(), code: err.get("code").and_then(Value::as_i64).unwrap_or(0), message, data }
}

fn truncate(text: &str) -> String {
    if text.len() <= 200 {
        return text.to_string();
    }
    let mut end = 200;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Error objects exactly as anvil 1.7.1 sent them (`--hardfork london`, eth_call of
    /// code using PUSH0; an empty revert; a call on a Shanghai chain).
    #[test]
    fn node_errors_are_typed_by_what_failed() {
        let not_activated = json!({"code": -32603, "message": "EVM error NotActivated"});
        let err = node_error("eth_call", &not_activated);
        assert!(matches!(&err, Error::InvalidOpcode { call, opcodes, .. } if call == "eth_call" && opcodes.is_empty()), "{err:?}");

        let reverted = json!({"code": 3, "message": "execution reverted", "data": "0x"});
        assert!(matches!(node_error("eth_call", &reverted), Error::Rpc { code: 3, .. }));

        // An empty `data` (Nethermind's habit) does not turn an opcode failure into a revert.
        let with_empty_data = json!({"code": -32000, "message": "invalid opcode: PUSH0", "data": "0x"});
        assert!(matches!(node_error("eth_call", &with_empty_data), Error::InvalidOpcode { opcodes, .. } if opcodes == vec![0x5f]));

        // Real revert data wins over words in the message.
        let revert_reason = json!({"code": 3, "message": "execution reverted: invalid opcode", "data": "0x08c379a0"});
        assert!(matches!(node_error("eth_call", &revert_reason), Error::Rpc { .. }));

        let other = json!({"code": -32000, "message": "nonce too low"});
        assert!(matches!(node_error("eth_sendRawTransaction", &other), Error::Rpc { .. }));
    }
}
