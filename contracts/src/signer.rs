//! The key that signs transactions: from a Web3 Secret Storage keystore (as geth and
//! Foundry's cast write them) or, for development, a raw key in `ETH_PRIVATE_KEY`. Never from
//! a command-line argument, and never printed: `Debug` shows only the address.

use crate::error::{Error, Result};
use ethers_core::k256::ecdsa::SigningKey;
use ethers_core::types::transaction::eip2718::TypedTransaction;
use ethers_core::types::{Address, Bytes, Signature, U256};
use ethers_core::utils::secret_key_to_address;
use std::fmt;
use std::path::{Path, PathBuf};

/// A secp256k1 signing key and its Ethereum address.
pub struct Signer {
    key: SigningKey,
    address: Address,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer").field("address", &self.address).field("key", &"<redacted>").finish()
    }
}

/// Where to look for a key: flags first, then the environment, as Foundry does.
#[derive(Debug, Clone, Default)]
pub struct KeySource {
    /// `--keystore FILE` (else `ETH_KEYSTORE`).
    pub keystore: Option<PathBuf>,
    /// `--password-file FILE` (else `ETH_PASSWORD_FILE`); `ETH_PASSWORD` wins over both.
    pub password_file: Option<PathBuf>,
}

impl Signer {
    /// A signer from 32 raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Signer> {
        let key = SigningKey::from_slice(bytes).map_err(|_| Error::Key("private key is not a valid secp256k1 scalar".into()))?;
        let address = secret_key_to_address(&key);
        Ok(Signer { key, address })
    }

    /// A signer from a hex private key (`0x` optional), as `ETH_PRIVATE_KEY` holds it.
    pub fn from_hex(hex_key: &str) -> Result<Signer> {
        let text = hex_key.trim();
        let text = text.strip_prefix("0x").unwrap_or(text);
        if text.len() != 64 {
            return Err(Error::Key(format!("private key: expected 64 hex digits, found {}", text.len())));
        }
        let bytes = ethers_core::utils::hex::decode(text).map_err(|_| Error::Key("private key: not hex".into()))?;
        Signer::from_bytes(&bytes)
    }

    /// Decrypts a Web3 Secret Storage (v3) keystore file.
    pub fn from_keystore(path: &Path, password: &str) -> Result<Signer> {
        let bytes = eth_keystore::decrypt_key(path, password).map_err(|e| match e {
            eth_keystore::KeystoreError::MacMismatch => Error::Key(format!("keystore {}: wrong password", path.display())),
            other => Error::Key(format!("keystore {}: {other}", path.display())),
        })?;
        Signer::from_bytes(&bytes)
    }

    /// Loads the key described by `source` and the environment:
    /// a keystore (`--keystore` / `ETH_KEYSTORE`) with its password from `ETH_PASSWORD` or a
    /// password file (`--password-file` / `ETH_PASSWORD_FILE`), else `ETH_PRIVATE_KEY`.
    pub fn from_source(source: &KeySource) -> Result<Signer> {
        let env_path = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        if let Some(keystore) = source.keystore.clone().or_else(|| env_path("ETH_KEYSTORE")) {
            let password = match std::env::var("ETH_PASSWORD") {
                Ok(password) => password,
                Err(_) => {
                    let Some(file) = source.password_file.clone().or_else(|| env_path("ETH_PASSWORD_FILE")) else {
                        return Err(Error::Key(format!(
                            "keystore {}: no password (set ETH_PASSWORD or pass --password-file FILE)",
                            keystore.display()
                        )));
                    };
                    let text =
                        std::fs::read_to_string(&file).map_err(|e| Error::Key(format!("reading password file {}: {e}", file.display())))?;
                    // Files written by `echo` end with a newline that is not part of the password.
                    text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text).to_string()
                }
            };
            return Signer::from_keystore(&keystore, &password);
        }
        match std::env::var("ETH_PRIVATE_KEY") {
            Ok(hex_key) if !hex_key.is_empty() => Signer::from_hex(&hex_key).map_err(|e| Error::Key(format!("ETH_PRIVATE_KEY: {e}"))),
            _ => Err(Error::Key(
                "no signing key: pass --keystore FILE (or set ETH_KEYSTORE) with ETH_PASSWORD or --password-file, \
                 or set ETH_PRIVATE_KEY for development"
                    .into(),
            )),
        }
    }

    /// Writes this key as an encrypted Web3 Secret Storage file at `path` (scrypt with
    /// eth-keystore's parameters, n = 2^13, lighter than geth's 2^18 so a Raspberry Pi
    /// decrypts it quickly), e.g. to give a learner a keystore instead of a raw key.
    pub fn write_keystore(&self, path: &Path, password: &str) -> Result<()> {
        let fail = |why: String| Error::Key(format!("writing keystore {}: {why}", path.display()));
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| fail("no file name".into()))?;
        let key = self.key.to_bytes();
        eth_keystore::encrypt_key(dir, &mut ethers_core::rand::thread_rng(), key.as_slice(), password, Some(name))
            .map_err(|e| fail(e.to_string()))?;
        Ok(())
    }

    /// The account's address.
    pub fn address(&self) -> Address {
        self.address
    }

    /// Signs `tx` for `chain_id` (EIP-155 replay protection for legacy transactions, the
    /// y-parity for typed ones) and returns the raw transaction for `eth_sendRawTransaction`.
    pub fn sign_transaction(&self, tx: &TypedTransaction, chain_id: u64) -> Result<Bytes> {
        let mut tx = tx.clone();
        tx.set_chain_id(chain_id);
        let sighash = tx.sighash();
        let (signature, recovery_id) =
            self.key.sign_prehash_recoverable(sighash.as_bytes()).map_err(|e| Error::Key(format!("signing transaction: {e}")))?;
        let (r, s) = signature.split_bytes();
        let signature = Signature {
            r: U256::from_big_endian(&r),
            s: U256::from_big_endian(&s),
            // EIP-155 v; typed transactions normalise it back to the y-parity when encoding.
            v: recovery_id.to_byte() as u64 + 35 + 2 * chain_id,
        };
        Ok(tx.rlp_signed(&signature))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_key() {
        // anvil's first public development key (printed by every `anvil` start).
        let hex_key = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
        let signer = Signer::from_hex(hex_key).unwrap();
        let shown = format!("{signer:?}");
        assert!(!shown.contains(hex_key) && !shown.contains("ac0974"), "{shown}");
        assert_eq!(format!("{:?}", signer.address()), "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266");
    }

    #[test]
    fn keystore_round_trip_and_wrong_password() {
        let dir = std::env::temp_dir().join(format!("fl-keystore-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = [7u8; 32];
        // eth-keystore 0.5 returns the key's uuid, not the file name it was given.
        eth_keystore::encrypt_key(&dir, &mut ethers_core::rand::thread_rng(), key, "pw", Some("k.json")).unwrap();
        let path = dir.join("k.json");
        let signer = Signer::from_keystore(&path, "pw").unwrap();
        assert_eq!(signer.address(), Signer::from_bytes(&key).unwrap().address());
        let err = Signer::from_keystore(&path, "nope").unwrap_err().to_string();
        assert!(err.contains("wrong password"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
