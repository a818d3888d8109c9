//! The registry's compiled artifacts (embedded, so building needs no solc), its parsed ABI,
//! calldata encoding and revert decoding.

use crate::error::{Error, Result};
use ethers_core::abi::{Abi, Function, Token};
use ethers_core::types::Bytes;
use std::sync::OnceLock;

/// The registry's ABI as solc wrote it (`contracts/artifacts/Registry.abi.json`).
pub const REGISTRY_ABI_JSON: &str = include_str!("../artifacts/Registry.abi.json");
/// The registry's creation bytecode in hex (`contracts/artifacts/Registry.bin`).
pub const REGISTRY_BIN_HEX: &str = include_str!("../artifacts/Registry.bin");
/// The compiler that produced the artifacts.
pub const SOLC_VERSION: &str = include_str!("../artifacts/solc-version.txt");

/// Version 1 of the registry (no `version()`, no sample caps, no round record), kept so that
/// its deployments' events still decode and tests can deploy it (`contracts/history/`).
pub mod v1 {
    use super::*;

    pub const REGISTRY_ABI_JSON: &str = include_str!("../artifacts/v1/Registry.abi.json");
    pub const REGISTRY_BIN_HEX: &str = include_str!("../artifacts/v1/Registry.bin");

    /// The parsed version-1 ABI.
    pub fn registry_abi() -> &'static Abi {
        static ABI: OnceLock<Abi> = OnceLock::new();
        ABI.get_or_init(|| serde_json::from_str(REGISTRY_ABI_JSON).expect("contracts/artifacts/v1/Registry.abi.json is valid ABI JSON"))
    }

    /// The version-1 creation bytecode (its constructor takes no arguments).
    pub fn registry_bytecode() -> Bytes {
        bytecode(REGISTRY_BIN_HEX, "contracts/artifacts/v1/Registry.bin")
    }

    /// Calldata for version-1 function `name` with `args`.
    pub fn encode_call(name: &str, args: &[Token]) -> Result<Bytes> {
        let function = registry_abi().function(name).map_err(|e| Error::Invalid(format!("version-1 registry: {e}")))?;
        function.encode_input(args).map(Bytes::from).map_err(|e| Error::Invalid(format!("encoding version-1 call {name}: {e}")))
    }
}

/// Version 2 of the registry (sample caps and round records, synchronous rounds only): its
/// events and functions are version 3's, so only its bytecode is kept, for tests that
/// deploy it to check that its rounds still verify (`contracts/history/`).
pub mod v2 {
    use super::*;

    pub const REGISTRY_BIN_HEX: &str = include_str!("../artifacts/v2/Registry.bin");

    /// The version-2 creation bytecode (its constructor takes the sample cap only).
    pub fn registry_bytecode() -> Bytes {
        bytecode(REGISTRY_BIN_HEX, "contracts/artifacts/v2/Registry.bin")
    }
}

/// Version 3 of the registry (asynchronous rounds, no model spec): its events and functions
/// are version 4's, so only its bytecode is kept, for tests that deploy it to check that a
/// registry without a spec reads as the built-in model (`contracts/history/`).
pub mod v3 {
    use super::*;

    pub const REGISTRY_BIN_HEX: &str = include_str!("../artifacts/v3/Registry.bin");

    /// The version-3 creation bytecode (its constructor takes the sample cap, buffer and
    /// staleness bound).
    pub fn registry_bytecode() -> Bytes {
        bytecode(REGISTRY_BIN_HEX, "contracts/artifacts/v3/Registry.bin")
    }
}

/// Committed hex bytecode; checked by this crate's tests, so a bad file is a build defect.
fn bytecode(hex: &str, file: &str) -> Bytes {
    Bytes::from(ethers_core::utils::hex::decode(hex.trim()).unwrap_or_else(|_| panic!("{file} is hex")))
}

/// The parsed registry ABI.
pub fn registry_abi() -> &'static Abi {
    static ABI: OnceLock<Abi> = OnceLock::new();
    // The artifact is checked by this crate's tests, so a parse failure is a build defect.
    ABI.get_or_init(|| serde_json::from_str(REGISTRY_ABI_JSON).expect("contracts/artifacts/Registry.abi.json is valid ABI JSON"))
}

/// The registry's creation bytecode.
pub fn registry_bytecode() -> Bytes {
    bytecode(REGISTRY_BIN_HEX, "contracts/artifacts/Registry.bin")
}

/// The registry function `name` (each is declared once, no overloads).
pub fn function(name: &str) -> &'static Function {
    registry_abi().function(name).unwrap_or_else(|_| panic!("registry ABI has no function {name}"))
}

/// Calldata for registry function `name` with `args`.
pub fn encode_call(name: &str, args: &[Token]) -> Result<Bytes> {
    function(name).encode_input(args).map(Bytes::from).map_err(|e| Error::Invalid(format!("encoding call {name}: {e}")))
}

/// Decodes the return data of registry function `name`.
pub fn decode_output(name: &str, data: &[u8]) -> Result<Vec<Token>> {
    function(name)
        .decode_output(data)
        .map_err(|e| Error::Invalid(format!("decoding result of {name}: {e} (0x{})", ethers_core::utils::hex::encode(data))))
}

/// Turns revert data into the contract's custom error with named arguments, or the standard
/// `Error(string)` / `Panic(uint256)`; unknown data is shown in hex.
pub fn decode_revert(call: &str, data: &[u8]) -> Error {
    let revert = |name: String, args: Vec<(String, String)>| Error::Revert { call: call.to_string(), name, args, data: data.to_vec() };
    if data.len() < 4 {
        return revert("(no reason)".into(), vec![]);
    }
    let (selector, body) = data.split_at(4);
    for error in registry_abi().errors() {
        if error.signature().as_bytes()[..4] == *selector {
            if let Ok(values) = error.decode(body) {
                let args = error.inputs.iter().zip(values).map(|(p, v)| (p.name.clone(), show(&v))).collect();
                return revert(error.name.clone(), args);
            }
        }
    }
    let standard = [("Error", ethers_core::abi::ParamType::String), ("Panic", ethers_core::abi::ParamType::Uint(256))];
    for (name, kind) in standard {
        let signature = format!("{name}({})", if name == "Error" { "string" } else { "uint256" });
        if ethers_core::utils::id(&signature)[..4] == *selector {
            if let Ok(values) = ethers_core::abi::decode(&[kind], body) {
                return revert(name.to_string(), values.iter().map(|v| (String::new(), show(v))).collect());
            }
        }
    }
    revert(format!("unknown error 0x{}", ethers_core::utils::hex::encode(data)), vec![])
}

/// A token as a person reads it: numbers in decimal, addresses and bytes in hex.
pub fn show(token: &Token) -> String {
    match token {
        Token::Uint(v) | Token::Int(v) => v.to_string(),
        Token::Address(a) => format!("{a:?}"),
        Token::Bytes(b) | Token::FixedBytes(b) => format!("0x{}", ethers_core::utils::hex::encode(b)),
        Token::String(s) => format!("{s:?}"),
        Token::Bool(b) => b.to_string(),
        Token::Array(items) | Token::FixedArray(items) | Token::Tuple(items) => {
            format!("[{}]", items.iter().map(show).collect::<Vec<_>>().join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha3_free_keccak::keccak256;

    /// Keccak-256 written out from the FIPS 202 / Keccak reference (rate 136, original
    /// 0x01 padding), so selectors are checked against a computation that shares no code
    /// with ethers-core.
    mod sha3_free_keccak {
        const RC: [u64; 24] = [
            0x0000000000000001,
            0x0000000000008082,
            0x800000000000808a,
            0x8000000080008000,
            0x000000000000808b,
            0x0000000080000001,
            0x8000000080008081,
            0x8000000000008009,
            0x000000000000008a,
            0x0000000000000088,
            0x0000000080008009,
            0x000000008000000a,
            0x000000008000808b,
            0x800000000000008b,
            0x8000000000008089,
            0x8000000000008003,
            0x8000000000008002,
            0x8000000000000080,
            0x000000000000800a,
            0x800000008000000a,
            0x8000000080008081,
            0x8000000000008080,
            0x0000000080000001,
            0x8000000080008008,
        ];
        const ROT: [u32; 25] = [0, 1, 62, 28, 27, 36, 44, 6, 55, 20, 3, 10, 43, 25, 39, 41, 45, 15, 21, 8, 18, 2, 61, 56, 14];

        fn permute(a: &mut [u64; 25]) {
            for rc in RC {
                let mut c = [0u64; 5];
                for x in 0..5 {
                    c[x] = a[x] ^ a[x + 5] ^ a[x + 10] ^ a[x + 15] ^ a[x + 20];
                }
                for x in 0..5 {
                    let d = c[(x + 4) % 5] ^ c[(x + 1) % 5].rotate_left(1);
                    for y in 0..5 {
                        a[x + 5 * y] ^= d;
                    }
                }
                let mut b = [0u64; 25];
                for x in 0..5 {
                    for y in 0..5 {
                        b[y + 5 * ((2 * x + 3 * y) % 5)] = a[x + 5 * y].rotate_left(ROT[x + 5 * y]);
                    }
                }
                for x in 0..5 {
                    for y in 0..5 {
                        a[x + 5 * y] = b[x + 5 * y] ^ (!b[(x + 1) % 5 + 5 * y] & b[(x + 2) % 5 + 5 * y]);
                    }
                }
                a[0] ^= rc;
            }
        }

        pub fn keccak256(data: &[u8]) -> [u8; 32] {
            let mut padded = data.to_vec();
            padded.push(0x01);
            while !padded.len().is_multiple_of(136) {
                padded.push(0);
            }
            let last = padded.len() - 1;
            padded[last] |= 0x80;
            let mut state = [0u64; 25];
            for block in padded.chunks(136) {
                for (i, lane) in block.chunks(8).enumerate() {
                    state[i] ^= u64::from_le_bytes(lane.try_into().unwrap());
                }
                permute(&mut state);
            }
            let mut out = [0u8; 32];
            for i in 0..4 {
                out[8 * i..8 * i + 8].copy_from_slice(&state[i].to_le_bytes());
            }
            out
        }
    }

    #[test]
    fn independent_keccak_matches_published_vectors() {
        // Keccak-256("") as published with the Keccak submission (and quoted in the
        // Ethereum yellow paper's KEC examples): c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470.
        assert_eq!(ethers_core::utils::hex::encode(keccak256(b"")), "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470");
        // ERC-20's transfer selector as published in the EIP-20 ecosystem: 0xa9059cbb.
        assert_eq!(keccak256(b"transfer(address,uint256)")[..4], [0xa9, 0x05, 0x9c, 0xbb]);
    }

    #[test]
    fn selectors_match_independent_keccak() {
        let signatures = [
            "setLocalWeight(uint256,uint256,bytes,bytes32,uint256)",
            "getLocalWeight(uint256)",
            "setGlobalWeight(uint256,bytes,bytes32,bytes32,uint256[],bytes)",
            "getGlobalWeight()",
            "addLearner(uint256,address,uint256)",
            "removeLearner(uint256)",
            "localUpdate(uint256)",
            "globalUpdate()",
            "learnerIds()",
            "currentRound()",
            "owner()",
            "deployedAt()",
            "version()",
            "defaultMaxSamples()",
            "replaceLearnerAccount(uint256,address)",
            "transferOwnership(address)",
            "acceptOwnership()",
            "pendingOwner()",
            "asyncBuffer()",
            "maxStaleness()",
            "modelSpec()",
            "modelGroups()",
            "learnerGroup(uint256)",
            "setLearnerGroup(uint256,uint256)",
        ];
        let abi = registry_abi();
        assert_eq!(abi.functions().count(), signatures.len(), "every function is checked");
        for signature in signatures {
            let name = &signature[..signature.find('(').unwrap()];
            assert_eq!(function(name).short_signature(), keccak256(signature.as_bytes())[..4], "{signature}");
        }
        let events = [
            "LearnerAdded(uint256,address,uint256)",
            "LearnerRemoved(uint256,address)",
            "LearnerGroupSet(uint256,uint256)",
            "LocalWeightSet(uint256,uint256,bytes,bytes32,uint256)",
            "GlobalWeightSet(uint256,bytes,bytes32,bytes32,uint256[],bytes)",
            "LearnerAccountChanged(uint256,address,address)",
            "OwnershipTransferStarted(address,address)",
            "OwnershipTransferred(address,address)",
        ];
        assert_eq!(abi.events().count(), events.len(), "every event is checked");
        for signature in events {
            let name = &signature[..signature.find('(').unwrap()];
            assert_eq!(abi.event(name).unwrap().signature().0, keccak256(signature.as_bytes()), "{signature}");
        }
        // The paper's getters keep their exact shapes.
        assert_eq!(function("getLocalWeight").outputs.len(), 1);
        assert_eq!(function("getLocalWeight").outputs[0].kind, ethers_core::abi::ParamType::String);
        assert_eq!(function("getGlobalWeight").outputs[0].kind, ethers_core::abi::ParamType::String);
    }

    #[test]
    fn artifacts_parse() {
        assert!(registry_bytecode().len() > 1000);
        assert!(SOLC_VERSION.starts_with("0.8.28+"), "{SOLC_VERSION}");
    }

    #[test]
    fn custom_error_decodes_with_arguments() {
        let mut data = keccak256(b"WrongRound(uint256,uint256)")[..4].to_vec();
        data.extend(ethers_core::abi::encode(&[Token::Uint(5.into()), Token::Uint(3.into())]));
        let err = decode_revert("setLocalWeight", &data);
        assert_eq!(err.to_string(), "setLocalWeight: reverted with WrongRound(given=5, current=3)");
    }
}
