//! Which EVM rule set a contract needs, and whether a chain offers it: the opcodes added
//! after Frontier with the hardfork that added each, a scan of bytecode for them, node
//! errors that mean "this opcode is not enabled here", and [`preflight`], which asks the
//! node itself before a deployment spends any gas.
//!
//! Why probing opcodes rather than running the contract: a deployment can be simulated
//! with a plain `eth_call` of its creation code (no `to`), which every node supports, but
//! that runs only the constructor; running the deployed code's functions before it exists
//! needs either `eth_call`'s state-override parameter (not in the JSON-RPC specification,
//! not offered by every node) or a wrapper that deploys inside the call, and either way
//! only the paths a call takes are tried. An opcode fails when it is executed, whatever
//! the path, so trying each opcode the bytecode contains, alone, covers every function,
//! including the writes that cannot run before the registry is set up.

use crate::client::Client;
use crate::error::{Error, Result};
use ethers_core::types::transaction::eip2718::TypedTransaction;
use ethers_core::types::{BlockNumber, Bytes, TransactionRequest};

/// An Ethereum hardfork that added opcodes (the rule sets in between added none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hardfork {
    Homestead,
    Byzantium,
    Constantinople,
    Istanbul,
    London,
    Shanghai,
    Cancun,
    Osaka,
}

impl Hardfork {
    /// The usual capitalised name ("Shanghai").
    pub fn name(self) -> &'static str {
        match self {
            Hardfork::Homestead => "Homestead",
            Hardfork::Byzantium => "Byzantium",
            Hardfork::Constantinople => "Constantinople",
            Hardfork::Istanbul => "Istanbul",
            Hardfork::London => "London",
            Hardfork::Shanghai => "Shanghai",
            Hardfork::Cancun => "Cancun",
            Hardfork::Osaka => "Osaka",
        }
    }
}

/// An opcode that some chains lack: one added after Frontier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opcode {
    pub byte: u8,
    pub name: &'static str,
    /// How many stack items it pops (to build a probe that executes it).
    pub inputs: u8,
    /// The hardfork that added it.
    pub fork: Hardfork,
    /// The EIP that defines it.
    pub eip: u32,
}

/// Every opcode added after Frontier, from the EIPs named (and the execution-specs'
/// per-fork instruction tables). Paris only renamed DIFFICULTY (0x44) to PREVRANDAO, and
/// Berlin, Prague and the glacier forks added no opcodes.
pub const OPCODES: &[Opcode] = &[
    Opcode { byte: 0xf4, name: "DELEGATECALL", inputs: 6, fork: Hardfork::Homestead, eip: 7 },
    Opcode { byte: 0xfd, name: "REVERT", inputs: 2, fork: Hardfork::Byzantium, eip: 140 },
    Opcode { byte: 0x3d, name: "RETURNDATASIZE", inputs: 0, fork: Hardfork::Byzantium, eip: 211 },
    Opcode { byte: 0x3e, name: "RETURNDATACOPY", inputs: 3, fork: Hardfork::Byzantium, eip: 211 },
    Opcode { byte: 0xfa, name: "STATICCALL", inputs: 6, fork: Hardfork::Byzantium, eip: 214 },
    Opcode { byte: 0x1b, name: "SHL", inputs: 2, fork: Hardfork::Constantinople, eip: 145 },
    Opcode { byte: 0x1c, name: "SHR", inputs: 2, fork: Hardfork::Constantinople, eip: 145 },
    Opcode { byte: 0x1d, name: "SAR", inputs: 2, fork: Hardfork::Constantinople, eip: 145 },
    Opcode { byte: 0x3f, name: "EXTCODEHASH", inputs: 1, fork: Hardfork::Constantinople, eip: 1052 },
    Opcode { byte: 0xf5, name: "CREATE2", inputs: 4, fork: Hardfork::Constantinople, eip: 1014 },
    Opcode { byte: 0x46, name: "CHAINID", inputs: 0, fork: Hardfork::Istanbul, eip: 1344 },
    Opcode { byte: 0x47, name: "SELFBALANCE", inputs: 0, fork: Hardfork::Istanbul, eip: 1884 },
    Opcode { byte: 0x48, name: "BASEFEE", inputs: 0, fork: Hardfork::London, eip: 3198 },
    Opcode { byte: 0x5f, name: "PUSH0", inputs: 0, fork: Hardfork::Shanghai, eip: 3855 },
    Opcode { byte: 0x5c, name: "TLOAD", inputs: 1, fork: Hardfork::Cancun, eip: 1153 },
    Opcode { byte: 0x5d, name: "TSTORE", inputs: 2, fork: Hardfork::Cancun, eip: 1153 },
    Opcode { byte: 0x5e, name: "MCOPY", inputs: 3, fork: Hardfork::Cancun, eip: 5656 },
    Opcode { byte: 0x49, name: "BLOBHASH", inputs: 1, fork: Hardfork::Cancun, eip: 4844 },
    Opcode { byte: 0x4a, name: "BLOBBASEFEE", inputs: 0, fork: Hardfork::Cancun, eip: 7516 },
    Opcode { byte: 0x1e, name: "CLZ", inputs: 1, fork: Hardfork::Osaka, eip: 7939 },
];

/// The post-Frontier opcode with this byte, if it is one.
pub fn opcode(byte: u8) -> Option<&'static Opcode> {
    OPCODES.iter().find(|op| op.byte == byte)
}

/// `code` without the CBOR metadata solc appends (its length is the last two bytes, and it
/// starts with a CBOR map header, 0xa0..=0xb7 or 0xbf): those bytes are data, not code, and
/// may look like any opcode (the Istanbul build's metadata hash contains a 0x5f).
pub fn strip_metadata(code: &[u8]) -> &[u8] {
    if code.len() < 2 {
        return code;
    }
    let length = u16::from_be_bytes([code[code.len() - 2], code[code.len() - 1]]) as usize;
    let Some(start) = code.len().checked_sub(length + 2) else { return code };
    match code.get(start) {
        Some(0xa0..=0xb7 | 0xbf) if length > 0 => &code[..start],
        _ => code,
    }
}

/// The post-Frontier opcodes `code` contains, each once, oldest hardfork first. The scan
/// is linear (push data skipped, metadata stripped); a data byte solc placed after the code
/// could show up as an opcode, which only costs one more probe.
pub fn opcodes_used(code: &[u8]) -> Vec<&'static Opcode> {
    let code = strip_metadata(code);
    let mut seen: Vec<&'static Opcode> = Vec::new();
    let mut i = 0;
    while i < code.len() {
        let byte = code[i];
        if let Some(op) = opcode(byte) {
            if !seen.iter().any(|s| s.byte == byte) {
                seen.push(op);
            }
        }
        // PUSH1..PUSH32 carry 1..32 bytes of data.
        i += 1 + if (0x60..=0x7f).contains(&byte) { (byte - 0x5f) as usize } else { 0 };
    }
    seen.sort_by_key(|op| (op.fork, op.byte));
    seen
}

/// Creation code that executes `op` once on zero arguments and stops: `PUSH1 0` per
/// input (not PUSH0, which is itself one of the opcodes being probed), the opcode, STOP.
/// Zero arguments keep every probe harmless (calls to address zero with no gas, copies of
/// zero bytes); REVERT's probe reverts, which shows the opcode is there.
pub fn probe_code(op: &Opcode) -> Vec<u8> {
    let mut code = Vec::with_capacity(2 * op.inputs as usize + 2);
    for _ in 0..op.inputs {
        code.extend([0x60, 0x00]);
    }
    code.extend([op.byte, 0x00]);
    code
}

/// Whether a node's error message says the EVM refused an instruction, and which opcode
/// bytes it names (empty when it does not say). Replies recognised:
/// anvil / revm (Foundry 1.7.1, captured): `EVM error NotActivated` (an opcode of a later
/// rule set), `EVM error OpcodeNotFound` (an undefined byte), `EVM error InvalidFEOpcode`;
/// geth: `invalid opcode: PUSH0`, `invalid opcode: opcode 0x5f not defined`; besu (25.x):
/// `... (invalid opcode: 0xaa)`; Nethermind and OpenEthereum: `Bad instruction`.
pub fn invalid_opcode_in(message: &str) -> Option<Vec<u8>> {
    let lower = message.to_ascii_lowercase();
    const MARKERS: [&str; 6] = ["notactivated", "opcodenotfound", "invalidfeopcode", "invalid opcode", "bad instruction", "badinstruction"];
    if !MARKERS.iter().any(|m| lower.contains(m)) {
        return None;
    }
    if lower.contains("invalidfeopcode") {
        return Some(vec![0xfe]);
    }
    let mut named = Vec::new();
    // "0x5f" (geth's "opcode 0x5f not defined", besu's "invalid opcode: 0xaa").
    let bytes = lower.as_bytes();
    for (at, _) in lower.match_indices("0x") {
        let digits: String = bytes[at + 2..].iter().take_while(|b| b.is_ascii_hexdigit()).map(|&b| b as char).collect();
        if (1..=2).contains(&digits.len()) {
            if let Ok(byte) = u8::from_str_radix(&digits, 16) {
                named.push(byte);
            }
        }
    }
    // geth's "invalid opcode: PUSH0" names it.
    if named.is_empty() {
        if let Some((_, rest)) = lower.split_once("invalid opcode: ") {
            let word = rest.split(|c: char| !c.is_ascii_alphanumeric()).next().unwrap_or_default();
            if word == "invalid" {
                named.push(0xfe);
            } else if let Some(op) = OPCODES.iter().find(|op| op.name.eq_ignore_ascii_case(word)) {
                named.push(op.byte);
            }
        }
    }
    Some(named)
}

/// Checks, before anything is sent, that the chain behind `client` can run the contract
/// whose creation code is `creation`: every post-Frontier opcode the code contains is
/// executed alone with `eth_call` (no `to`, so it runs as creation code), then the
/// creation code itself, which runs the constructor and must return the code to deploy.
/// Only standard `eth_call`s, so it works on any node; nothing is signed or sent.
///
/// An opcode the chain lacks gives [`Error::InvalidOpcode`] naming every such opcode and
/// the hardfork that added it; a constructor that reverts gives [`Error::Revert`].
pub fn preflight(client: &Client, what: &str, creation: &[u8]) -> Result<()> {
    let mut missing = Vec::new();
    let mut node_message = String::new();
    for op in opcodes_used(creation) {
        match simulate_creation(client, what, probe_code(op)) {
            // Present: it ran, or it reverted (REVERT's own probe) or failed for another
            // reason the node could only report once it knew the opcode.
            Ok(_) | Err(Error::Revert { .. }) => {}
            Err(Error::InvalidOpcode { message, .. }) => {
                missing.push(op.byte);
                node_message = message;
            }
            Err(other) => return Err(other),
        }
    }
    if !missing.is_empty() {
        return Err(Error::InvalidOpcode { call: what.to_string(), opcodes: missing, message: node_message });
    }
    let runtime = simulate_creation(client, what, creation.to_vec())?;
    if runtime.is_empty() {
        return Err(Error::Invalid(format!(
            "{what}: the constructor, simulated with eth_call on {}, returned no code to deploy",
            client.rpc().url()
        )));
    }
    Ok(())
}

/// `eth_call` of `code` as creation code from the client's account at the latest block.
fn simulate_creation(client: &Client, what: &str, code: Vec<u8>) -> Result<Bytes> {
    let tx = TypedTransaction::Legacy(TransactionRequest::new().from(client.address()).data(Bytes::from(code)));
    client.rpc().call(&tx, BlockNumber::Latest).map_err(|e| crate::client::revert_or(what, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::registry_bytecode;

    /// The registry is compiled for Istanbul: nothing a later rule set added may appear,
    /// or Istanbul and Berlin chains could not run it.
    #[test]
    fn the_registry_uses_no_opcode_newer_than_istanbul() {
        let used = opcodes_used(&registry_bytecode());
        let newer: Vec<&str> = used.iter().filter(|op| op.fork > Hardfork::Istanbul).map(|op| op.name).collect();
        assert!(newer.is_empty(), "the registry's bytecode uses {newer:?}: compile it with evmVersion istanbul (contracts/build.mjs)");
        // Not vacuous: the scan sees the Byzantium and Constantinople opcodes solc uses.
        let names: Vec<&str> = used.iter().map(|op| op.name).collect();
        for name in ["REVERT", "SHL", "SHR"] {
            assert!(names.contains(&name), "{names:?}");
        }
    }

    #[test]
    fn scan_skips_push_data_and_metadata() {
        // PUSH2 0x5f5e, then PUSH0, then MCOPY; then metadata `a1 00 5f 5e` (length 4).
        let code = [0x61, 0x5f, 0x5e, 0x5f, 0x5e, 0xa1, 0x00, 0x5f, 0x5e, 0x00, 0x04];
        let names: Vec<&str> = opcodes_used(&code).iter().map(|op| op.name).collect();
        assert_eq!(names, ["PUSH0", "MCOPY"]);
        assert_eq!(strip_metadata(&code).len(), 5);
        // No metadata: nothing stripped.
        assert_eq!(strip_metadata(&[0x5f, 0x00, 0x01]), &[0x5f, 0x00, 0x01]);
        assert_eq!(opcodes_used(&[0x7f; 1]).len(), 0, "a truncated PUSH32 is not an opcode");
    }

    #[test]
    fn probes_push_one_zero_per_input() {
        let mcopy = opcode(0x5e).unwrap();
        assert_eq!(probe_code(mcopy), [0x60, 0, 0x60, 0, 0x60, 0, 0x5e, 0x00]);
        assert_eq!(probe_code(opcode(0x5f).unwrap()), [0x5f, 0x00]);
        for op in OPCODES {
            assert_eq!(probe_code(op).len(), 2 * op.inputs as usize + 2, "{}", op.name);
        }
    }

    /// Replies captured from anvil 1.7.1 (`--hardfork london|shanghai`, eth_call and
    /// eth_estimateGas of PUSH0 / MCOPY / 0xfe / 0x0c) and, for other nodes, the messages
    /// quoted in their issue trackers: geth (go-ethereum #28955 "invalid opcode: SHR",
    /// OpenZeppelin #4714 "invalid opcode: opcode 0x5f not defined"), besu (#8129).
    #[test]
    fn node_messages_for_invalid_opcodes_are_recognised() {
        assert_eq!(invalid_opcode_in("EVM error NotActivated"), Some(vec![]));
        assert_eq!(invalid_opcode_in("EVM error OpcodeNotFound"), Some(vec![]));
        assert_eq!(invalid_opcode_in("EVM error InvalidFEOpcode"), Some(vec![0xfe]));
        assert_eq!(invalid_opcode_in("invalid opcode: PUSH0"), Some(vec![0x5f]));
        assert_eq!(invalid_opcode_in("invalid opcode: SHR"), Some(vec![0x1c]));
        assert_eq!(invalid_opcode_in("invalid opcode: INVALID"), Some(vec![0xfe]));
        assert_eq!(invalid_opcode_in("invalid opcode: opcode 0x5f not defined"), Some(vec![0x5f]));
        assert_eq!(
            invalid_opcode_in("Transaction processing could not be completed due to an exception (invalid opcode: 0xaa)"),
            Some(vec![0xaa])
        );
        assert_eq!(invalid_opcode_in("Bad instruction"), Some(vec![]));
        // Not opcode failures.
        assert_eq!(invalid_opcode_in("execution reverted"), None);
        assert_eq!(invalid_opcode_in("EVM error OutOfGas"), None);
        assert_eq!(invalid_opcode_in("nonce too low"), None);
    }
}
