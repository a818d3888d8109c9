//! Signed transactions over [`Rpc`]: fees (EIP-1559 when the node reports a base fee, legacy
//! otherwise), gas estimates, a nonce manager for several transactions in flight, receipt
//! waits with a deadline and a number of confirmations (the rule is in [`crate::finality`]),
//! views at the confirmed head, and reverts decoded into the contract's custom errors.

use crate::abi::decode_revert;
use crate::error::{Error, Result};
use crate::finality::{self, WaitRule};
use crate::rpc::Rpc;
use crate::signer::Signer;
use ethers_core::types::transaction::eip2718::TypedTransaction;
use ethers_core::types::{
    Address, BlockNumber, Bytes, Eip1559TransactionRequest, NameOrAddress, TransactionReceipt, TransactionRequest, H256, U256,
};
use std::sync::Mutex;
use std::time::Duration;

/// How long [`Client::wait`] waits for a receipt unless told otherwise.
pub const DEFAULT_RECEIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// Fee style chosen once per client from what the node reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeeMode {
    /// EIP-1559 (type 2) transactions: the node's blocks carry a base fee.
    Eip1559,
    /// Legacy transactions with `eth_gasPrice` (EIP-155 signed).
    Legacy,
}

/// A transaction that was accepted by the node's pool.
#[derive(Debug, Clone, Copy)]
pub struct PendingTx {
    pub hash: H256,
    pub nonce: U256,
}

/// A signer bound to one node: builds, signs, sends and waits for transactions.
#[derive(Debug)]
pub struct Client {
    rpc: Rpc,
    /// `None` for a read-only client (views and logs only).
    signer: Option<Signer>,
    chain_id: u64,
    fee_mode: FeeMode,
    /// The next nonce to use; `None` means "ask the node" (at start and after a failed send).
    next_nonce: Mutex<Option<U256>>,
    receipt_timeout: Duration,
    poll_interval: Duration,
    /// Blocks on top of a transaction's before it counts, and how far below the head views
    /// and event reads stay (see [`crate::finality`]).
    confirmations: u64,
}

impl Client {
    /// Connects `signer` to the node behind `rpc`: reads the chain id (checked against
    /// `expected_chain_id` when given) and whether the node supports EIP-1559.
    pub fn new(rpc: Rpc, signer: Signer, expected_chain_id: Option<u64>) -> Result<Client> {
        Client::connect(rpc, Some(signer), expected_chain_id)
    }

    /// A client without a key: views, logs and receipts only; sending fails with [`Error::Key`].
    pub fn read_only(rpc: Rpc, expected_chain_id: Option<u64>) -> Result<Client> {
        Client::connect(rpc, None, expected_chain_id)
    }

    fn connect(rpc: Rpc, signer: Option<Signer>, expected_chain_id: Option<u64>) -> Result<Client> {
        let chain_id = rpc.chain_id()?;
        if let Some(expected) = expected_chain_id {
            if expected != chain_id {
                return Err(Error::Invalid(format!("node at {} is on chain id {chain_id}, expected chain id {expected}", rpc.url())));
            }
        }
        let fee_mode = match rpc.fee_history(1, &[50.0]) {
            Ok(history) if history.base_fee_per_gas.iter().any(|fee| !fee.is_zero()) => FeeMode::Eip1559,
            Ok(_) => FeeMode::Legacy,
            // Nodes without eth_feeHistory answer "method not found"; they get legacy transactions.
            Err(Error::Rpc { .. }) => FeeMode::Legacy,
            Err(other) => return Err(other),
        };
        Ok(Client {
            rpc,
            signer,
            chain_id,
            fee_mode,
            next_nonce: Mutex::new(None),
            receipt_timeout: DEFAULT_RECEIPT_TIMEOUT,
            poll_interval: Duration::from_millis(100),
            confirmations: 0,
        })
    }

    /// Changes how long [`Client::wait`] waits for a receipt.
    pub fn with_receipt_timeout(mut self, timeout: Duration) -> Client {
        self.receipt_timeout = timeout;
        self
    }

    /// Changes how often [`Client::wait`] asks for a receipt (100 ms by default). A local
    /// development chain mines within milliseconds; tests sending thousands of
    /// transactions poll faster.
    pub fn with_poll_interval(mut self, interval: Duration) -> Client {
        self.poll_interval = interval;
        self
    }

    /// Waits for `n` confirmations of every transaction and reads views and events `n`
    /// blocks below the head (0, the default, suits development chains that never
    /// reorganise). Callers check `n` with [`crate::check_confirmations`] first.
    pub fn with_confirmations(mut self, n: u64) -> Client {
        self.confirmations = n;
        self
    }

    /// Forces legacy transactions even on an EIP-1559 chain.
    pub fn with_fee_mode(mut self, mode: FeeMode) -> Client {
        self.fee_mode = mode;
        self
    }

    pub fn rpc(&self) -> &Rpc {
        &self.rpc
    }
    /// The signing account (the zero address for a read-only client).
    pub fn address(&self) -> Address {
        self.signer.as_ref().map(Signer::address).unwrap_or_default()
    }
    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }
    pub fn fee_mode(&self) -> FeeMode {
        self.fee_mode
    }
    /// The confirmations this client waits for (see [`Client::with_confirmations`]).
    pub fn confirmations(&self) -> u64 {
        self.confirmations
    }

    /// The newest block with the client's confirmations on top of it: where event reads
    /// that something acts on must stop (the head itself with 0 confirmations).
    pub fn confirmed_head(&self) -> Result<u64> {
        finality::confirmed_head(&self.rpc, self.confirmations)
    }

    /// An unsigned transaction from this account (no nonce, gas or fees yet).
    fn request(&self, to: Option<Address>, data: Bytes) -> TypedTransaction {
        match self.fee_mode {
            FeeMode::Eip1559 => {
                let mut tx = Eip1559TransactionRequest::new().from(self.address()).data(data).chain_id(self.chain_id);
                if let Some(to) = to {
                    tx = tx.to(NameOrAddress::Address(to));
                }
                TypedTransaction::Eip1559(tx)
            }
            FeeMode::Legacy => {
                let mut tx = TransactionRequest::new().from(self.address()).data(data).chain_id(self.chain_id);
                if let Some(to) = to {
                    tx = tx.to(NameOrAddress::Address(to));
                }
                TypedTransaction::Legacy(tx)
            }
        }
    }

    /// `eth_call` from this account on the state of the confirmed head (the latest block
    /// with 0 confirmations); a revert becomes [`Error::Revert`] named `what`.
    pub fn call(&self, what: &str, to: Address, data: Bytes) -> Result<Bytes> {
        let tx = self.request(Some(to), data);
        let block = match self.confirmations {
            0 => BlockNumber::Latest,
            _ => BlockNumber::Number(self.confirmed_head()?.into()),
        };
        self.rpc.call(&tx, block).map_err(|e| revert_or(what, e))
    }

    /// Signs and sends a call (or a deployment when `to` is `None`) without waiting for it to
    /// be mined. Gas is estimated (so a revert is reported before anything is sent) with a 20%
    /// margin; nonces count up locally, so several transactions can be in flight at once.
    pub fn send(&self, what: &str, to: Option<Address>, data: Bytes) -> Result<PendingTx> {
        self.send_with_gas(what, to, data, None)
    }

    /// [`Client::send`] with a fixed gas limit (no estimate, so no early revert check) when
    /// `gas` is given.
    pub fn send_with_gas(&self, what: &str, to: Option<Address>, data: Bytes, gas: Option<u64>) -> Result<PendingTx> {
        let Some(signer) = &self.signer else {
            return Err(Error::Key(format!("{what}: no signing key (read-only client)")));
        };
        let mut tx = self.request(to, data);
        let gas = match gas {
            Some(gas) => U256::from(gas),
            None => {
                let estimate = self.rpc.estimate_gas(&tx).map_err(|e| revert_or(what, e))?;
                estimate + estimate / 5
            }
        };
        tx.set_gas(gas);
        self.set_fees(&mut tx)?;
        let mut next = self.next_nonce.lock().map_err(|_| Error::Invalid("nonce manager lock poisoned".into()))?;
        // Another process with the same key (an operator command while the aggregator runs)
        // may have used the nonce we counted: the node says so, and we ask it for the next.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let nonce = match *next {
                Some(nonce) => nonce,
                None => self.rpc.transaction_count(self.address(), "pending")?,
            };
            tx.set_nonce(nonce);
            let raw = signer.sign_transaction(&tx, self.chain_id)?;
            match self.rpc.send_raw_transaction(&raw) {
                Ok(hash) => {
                    *next = Some(nonce + 1);
                    return Ok(PendingTx { hash, nonce });
                }
                Err(err) => {
                    // The pool may or may not hold this nonce now; ask the node next time.
                    *next = None;
                    if attempts < 3 && is_nonce_taken(&err) {
                        continue;
                    }
                    return Err(revert_or(what, err));
                }
            }
        }
    }

    fn set_fees(&self, tx: &mut TypedTransaction) -> Result<()> {
        match tx {
            TypedTransaction::Eip1559(inner) => {
                let history = self.rpc.fee_history(5, &[50.0])?;
                let base_fee = history.base_fee_per_gas.last().copied().unwrap_or_default();
                let tips: Vec<U256> = history.reward.iter().filter_map(|r| r.first().copied()).filter(|t| !t.is_zero()).collect();
                // Median tip of recent blocks; 1 gwei (geth's default suggestion) when blocks are empty.
                let tip = if tips.is_empty() { U256::from(1_000_000_000u64) } else { tips[tips.len() / 2] };
                // Twice the base fee survives six full blocks of +12.5% each before the tx stalls.
                inner.max_priority_fee_per_gas = Some(tip);
                inner.max_fee_per_gas = Some(base_fee * 2 + tip);
            }
            other => {
                let price = self.rpc.gas_price()?;
                other.set_gas_price(price);
            }
        }
        Ok(())
    }

    /// Waits until `tx` is mined with the client's confirmations (or the receipt timeout
    /// passes); a reverted transaction is replayed with `eth_call` at its block to report
    /// the contract's error, and one the node no longer knows is [`Error::Dropped`].
    pub fn wait(&self, what: &str, tx: PendingTx) -> Result<TransactionReceipt> {
        match self.wait_receipt(what, tx.hash)? {
            Some(receipt) if receipt.status.map(|s| s.as_u64()) == Some(1) => Ok(receipt),
            Some(receipt) => Err(self.explain_failure(what, &receipt)),
            None => Err(Error::Dropped { what: what.to_string(), hash: tx.hash }),
        }
    }

    /// The receipt of `hash`, whatever its status, once it has the client's confirmations
    /// (the rule is in [`crate::finality`]); `None` if the node no longer knows the
    /// transaction (dropped, or reorganised out and not back in its pool), so the caller
    /// sends again. Works for a hash saved before a restart too. Fails with
    /// [`Error::Timeout`] if it is not mined within the receipt timeout, or the chain stops
    /// growing that long while it waits for confirmations.
    pub fn wait_receipt(&self, what: &str, hash: H256) -> Result<Option<TransactionReceipt>> {
        let rule = WaitRule { confirmations: self.confirmations, timeout: self.receipt_timeout, poll: self.poll_interval };
        let receipt = finality::wait_receipt(&self.rpc, what, hash, &rule);
        if !matches!(receipt, Ok(Some(_))) {
            // Dropped, its nonce is free again; timed out, it may have been dropped unseen
            // (a reorganisation deeper than the confirmations). Either way the next
            // transaction asks the node, rather than leave a gap that would hold it and
            // every later one back in the pool forever.
            *self.next_nonce.lock().map_err(|_| Error::Invalid("nonce manager lock poisoned".into()))? = None;
        }
        receipt
    }

    /// [`Client::send`] then [`Client::wait`].
    pub fn send_and_wait(&self, what: &str, to: Option<Address>, data: Bytes) -> Result<TransactionReceipt> {
        let pending = self.send(what, to, data)?;
        self.wait(what, pending)
    }

    /// Why a mined transaction failed (status 0): the contract's error when replaying it
    /// names one, else its hash and gas used.
    pub fn explain_failure(&self, what: &str, receipt: &TransactionReceipt) -> Error {
        let hash = receipt.transaction_hash;
        let failed = || Error::Invalid(format!("{what}: transaction {hash:?} failed (status 0, gas used {:?})", receipt.gas_used));
        let (Some(to), Some(block)) = (receipt.to, receipt.block_number) else { return failed() };
        let Ok(Some(sent)) = self.rpc.transaction_by_hash(hash) else { return failed() };
        // Replayed from the same sender on the state after its block: a transaction fails
        // mostly because an earlier one (often in the same block) changed the state, and
        // that state names the custom error.
        let mut replay = self.request(Some(to), sent.input);
        replay.set_from(sent.from);
        match self.rpc.request::<Bytes>("eth_call", serde_json::json!([replay, BlockNumber::Number(block)])) {
            Err(err @ (Error::Rpc { .. } | Error::InvalidOpcode { .. })) => match revert_or(what, err) {
                explained @ (Error::Revert { .. } | Error::InvalidOpcode { .. }) => explained,
                _ => failed(),
            },
            _ => failed(),
        }
    }
}

/// Maps an RPC error that carries revert data to [`Error::Revert`] and names an invalid
/// opcode after the call that hit it (`what`, not `eth_call`); other errors pass through.
pub(crate) fn revert_or(what: &str, err: Error) -> Error {
    if let Error::InvalidOpcode { opcodes, message, .. } = err {
        return Error::InvalidOpcode { call: what.to_string(), opcodes, message };
    }
    if let Error::Rpc { data: Some(data), .. } = &err {
        // Nodes put revert data either directly in `data` or in `data.data`.
        let hex = data.as_str().or_else(|| data.get("data").and_then(|d| d.as_str()));
        if let Some(hex) = hex {
            if let Ok(bytes) = ethers_core::utils::hex::decode(hex.trim_start_matches("0x")) {
                return decode_revert(what, &bytes);
            }
        }
    }
    err
}

/// The node refused a transaction because its nonce is already used (geth, anvil: "nonce
/// too low"; besu: "NONCE_TOO_LOW"): sending again with the node's next nonce is right.
fn is_nonce_taken(err: &Error) -> bool {
    match err {
        Error::Rpc { message, .. } => {
            let message = message.to_ascii_lowercase();
            message.contains("nonce too low") || message.contains("nonce_too_low")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_used_by_another_sender_is_recognised_from_each_node() {
        let rpc = |message: &str| Error::Rpc { method: "eth_sendRawTransaction".into(), code: -32003, message: message.into(), data: None };
        assert!(is_nonce_taken(&rpc("nonce too low")));
        assert!(is_nonce_taken(&rpc("Nonce too low: next nonce 7, tx nonce 6")));
        assert!(is_nonce_taken(&rpc("NONCE_TOO_LOW")));
        assert!(!is_nonce_taken(&rpc("insufficient funds for gas * price + value")));
        assert!(!is_nonce_taken(&Error::Invalid("nonce too low".into())));
    }
}
