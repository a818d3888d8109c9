//! CIDs as the contract stores them: CIDv1 with a one-byte codec and a SHA-256 multihash,
//! 36 bytes in binary, `b` + lower-case base32 (59 characters) as text (`bafk…`, `bafy…`).
//!
//! The text codec is `fl_ipfs::Cid`'s (the one crate that knows how CIDs are made); this
//! module only adds what the registry accepts: the binary form's size and shape, and
//! only the canonical text, as `fl_ipfs::Client::add` returns it.

use crate::error::{Error, Result};

/// Length of a binary CIDv1 with a SHA-256 multihash: version, codec, hash code, length, hash.
pub const CID_BYTES: usize = 36;

/// Parses a base32 CIDv1 text into its 36 binary bytes, checking that it is CIDv1 with a
/// one-byte codec and a SHA-256 multihash (what the registry accepts).
pub fn cid_to_bytes(cid: &str) -> Result<[u8; CID_BYTES]> {
    let bad = |why: &str| Error::Invalid(format!("cid {cid:?}: {why}"));
    let parsed: fl_ipfs::Cid = cid.parse().map_err(|why: String| bad(&why))?;
    // Other spellings of the same CID (CIDv0, upper case, base58btc, non-zero padding
    // bits) would make the chain's text differ from the uploader's: refuse them.
    if parsed.to_string() != cid {
        return Err(bad("expected canonical base32 CIDv1 text (b + lower-case base32)"));
    }
    let bytes: [u8; CID_BYTES] = parsed
        .to_bytes()
        .try_into()
        .map_err(|v: Vec<u8>| bad(&format!("expected {CID_BYTES} bytes (CIDv1, SHA-256), found {}", v.len())))?;
    check(&bytes).map_err(|why| bad(&why))?;
    Ok(bytes)
}

/// The base32 text of a binary CID (the inverse of [`cid_to_bytes`]).
pub fn cid_from_bytes(bytes: &[u8]) -> Result<String> {
    let bytes: &[u8; CID_BYTES] =
        bytes.try_into().map_err(|_| Error::Invalid(format!("binary cid: expected {CID_BYTES} bytes, found {}", bytes.len())))?;
    check(bytes).map_err(|why| Error::Invalid(format!("binary cid: {why}")))?;
    let cid = fl_ipfs::Cid::from_bytes(bytes).map_err(|why| Error::Invalid(format!("binary cid: {why}")))?;
    Ok(cid.to_string())
}

fn check(bytes: &[u8; CID_BYTES]) -> std::result::Result<(), String> {
    if bytes[0] != 0x01 {
        return Err(format!("expected CID version 1, found {}", bytes[0]));
    }
    if bytes[1] == 0 || bytes[1] >= 0x80 {
        return Err(format!("codec 0x{:02x} is not a one-byte multicodec", bytes[1]));
    }
    if bytes[2] != 0x12 || bytes[3] != 0x20 {
        return Err("expected a SHA-256 multihash (0x12 0x20)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CID of zero bytes as a raw leaf, as `ipfs add --cid-version 1 --raw-leaves` prints
    /// it for an empty file; its hash is SHA-256("") = e3b0c442…b855 (FIPS 180-4 test value).
    const EMPTY_RAW: &str = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";

    #[test]
    fn empty_file_cid_round_trips() {
        let bytes = cid_to_bytes(EMPTY_RAW).unwrap();
        assert_eq!(&bytes[..4], &[0x01, 0x55, 0x12, 0x20]);
        let sha256_empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(ethers_core::utils::hex::encode(&bytes[4..]), sha256_empty);
        assert_eq!(cid_from_bytes(&bytes).unwrap(), EMPTY_RAW);
    }

    #[test]
    fn rejects_other_cids() {
        // CIDv0 (base58) and a truncated CID.
        assert!(cid_to_bytes("QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH").is_err());
        assert!(cid_to_bytes(&EMPTY_RAW[..40]).is_err());
        assert!(cid_to_bytes("BAFKREIHDWDCEFGH4DQKJV67UZCMW7OJEE6XEDZDETOJUZJEVTENXQUVYKU").is_err());
    }
}
