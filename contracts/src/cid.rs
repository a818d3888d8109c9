//! CIDs as the contract stores them: CIDv1 with a one-byte codec and a SHA-256 multihash,
//! 36 bytes in binary, `b` + lower-case base32 (59 characters) as text (`bafk…`, `bafy…`).

use crate::error::{Error, Result};

const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
/// Length of a binary CIDv1 with a SHA-256 multihash: version, codec, hash code, length, hash.
pub const CID_BYTES: usize = 36;

/// Parses a base32 CIDv1 text into its 36 binary bytes, checking that it is CIDv1 with a
/// one-byte codec and a SHA-256 multihash (what the registry accepts).
pub fn cid_to_bytes(cid: &str) -> Result<[u8; CID_BYTES]> {
    let bad = |why: &str| Error::Invalid(format!("cid {cid:?}: {why}"));
    let body = cid.strip_prefix('b').ok_or_else(|| bad("expected base32 CIDv1 text starting with 'b'"))?;
    let mut out = Vec::with_capacity(CID_BYTES);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in body.bytes() {
        let value = ALPHABET.iter().position(|&a| a == c).ok_or_else(|| bad("not lower-case base32"))? as u32;
        buffer = (buffer << 5) | value;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    if buffer != 0 {
        return Err(bad("base32 text has non-zero padding bits"));
    }
    let bytes: [u8; CID_BYTES] = out
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
    let mut text = String::with_capacity(59);
    text.push('b');
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &byte in bytes {
        buffer = (buffer << 8) | byte as u32;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            text.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
        buffer &= (1 << bits) - 1;
    }
    if bits > 0 {
        text.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    Ok(text)
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
