//! Content identifiers: parsing any CID a node may answer with, printing CIDv1 in base32,
//! and computing locally the CID that Kubo and js-ipfs give a file added with the
//! project's parameters, so an upload can be checked without trusting the node.
//!
//! The parameters are those of `ipfs add --cid-version=1 --raw-leaves --chunker=size-262144`
//! with the default balanced layout: the bytes are cut into 262,144-byte chunks, each
//! chunk is a `raw` block; a file of one chunk is that raw block itself; otherwise the
//! chunks are grouped, in order, 174 to a UnixFS `File` node (dag-pb), and the nodes
//! again 174 to a parent, until one root is left (go-unixfs `importer/balanced`,
//! js `ipfs-unixfs-importer` `dag-builder/file/balanced.js`, both with 174 links per node).

use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// Chunk size of every upload: `chunker=size-262144`, the Kubo and js-ipfs default, named
/// explicitly so a node configured otherwise cannot change the CID.
pub const CHUNK_SIZE: usize = 262_144;

/// Links per UnixFS node in the balanced layout: 174 in go-unixfs
/// (`helpers.DefaultLinksPerBlock`) and js `ipfs-unixfs-importer` (`maxChildrenPerNode`).
pub const MAX_LINKS: usize = 174;

/// Multicodec of a raw block (multicodec table: `raw` = 0x55).
pub const RAW: u64 = 0x55;
/// Multicodec of a dag-pb (UnixFS) node (multicodec table: `dag-pb` = 0x70).
pub const DAG_PB: u64 = 0x70;
/// Multihash code of SHA2-256 (multicodec table: `sha2-256` = 0x12), 32-byte digests.
const SHA2_256: u64 = 0x12;

/// A content identifier: CID version, content codec and multihash. It always prints as
/// CIDv1 in base32 (`bafy...`, `bafk...`), whatever form it was parsed from, so CIDs
/// from Kubo (base32) and js-ipfs (base58btc unless told otherwise) compare equal.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Cid {
    codec: u64,
    multihash: Vec<u8>,
}

impl Cid {
    /// The CIDv1 of a block with `codec` whose SHA2-256 digest is `digest`.
    pub fn from_sha256(codec: u64, digest: [u8; 32]) -> Cid {
        let mut multihash = Vec::with_capacity(34);
        put_varint(&mut multihash, SHA2_256);
        put_varint(&mut multihash, 32);
        multihash.extend_from_slice(&digest);
        Cid { codec, multihash }
    }

    /// The content codec (`RAW` or `DAG_PB` for files).
    pub fn codec(&self) -> u64 {
        self.codec
    }

    /// The binary CIDv1: version, codec, multihash, as links in dag-pb hold it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.multihash.len());
        put_varint(&mut out, 1);
        put_varint(&mut out, self.codec);
        out.extend_from_slice(&self.multihash);
        out
    }
}

impl fmt::Display for Cid {
    /// CIDv1, multibase `b` (RFC 4648 base32, lowercase, no padding).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b{}", base32_lower(&self.to_bytes()))
    }
}

impl fmt::Debug for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cid({self})")
    }
}

impl FromStr for Cid {
    type Err = String;

    /// Accepts CIDv0 (`Qm...`, base58btc dag-pb) and CIDv1 in base32 (`b...`, either case)
    /// or base58btc (`z...`), the forms Kubo and js-ipfs answer with.
    fn from_str(text: &str) -> Result<Cid, String> {
        if text.len() == 46 && text.starts_with("Qm") {
            let multihash = base58_decode(text)?;
            check_multihash(&multihash)?;
            return Ok(Cid { codec: DAG_PB, multihash });
        }
        let bytes = match text.chars().next() {
            Some('b') => base32_decode(&text[1..])?,
            Some('B') => base32_decode(&text[1..].to_ascii_lowercase())?,
            Some('z') => base58_decode(&text[1..])?,
            _ => return Err("expected a CIDv0 (Qm...) or a CIDv1 in base32 (b...) or base58btc (z...)".into()),
        };
        Cid::from_bytes(&bytes)
    }
}

impl Cid {
    /// Parses a binary CIDv1 (version, codec, multihash), the inverse of [`Cid::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Cid, String> {
        let mut rest = bytes;
        let version = take_varint(&mut rest).ok_or("truncated CID version")?;
        if version != 1 {
            return Err(format!("unsupported CID version {version}"));
        }
        let codec = take_varint(&mut rest).ok_or("truncated CID codec")?;
        check_multihash(rest)?;
        Ok(Cid { codec, multihash: rest.to_vec() })
    }
}

/// Checks that `multihash` is one complete multihash (code, length, digest).
fn check_multihash(multihash: &[u8]) -> Result<(), String> {
    let mut rest = multihash;
    let _code = take_varint(&mut rest).ok_or("truncated multihash code")?;
    let len = take_varint(&mut rest).ok_or("truncated multihash length")?;
    if rest.len() as u64 != len {
        return Err(format!("multihash digest is {} bytes, its header says {len}", rest.len()));
    }
    Ok(())
}

/// The CID, as CIDv1 base32, that `ipfs add --cid-version=1 --raw-leaves
/// --chunker=size-262144` (balanced layout, sha2-256) gives `bytes` on Kubo and js-ipfs.
pub fn cid_of(bytes: &[u8]) -> String {
    cid_with_layout(bytes, CHUNK_SIZE, MAX_LINKS).to_string()
}

/// The CID [`cid_of`] gives a file of at most one chunk ([`CHUNK_SIZE`] bytes) whose
/// SHA-256 is `sha256`: with raw leaves such a file is one raw block, so its CID follows
/// from its digest alone (how a model spec is named on chain and found on IPFS).
pub fn one_chunk_cid(sha256: &[u8; 32]) -> String {
    Cid::from_sha256(RAW, *sha256).to_string()
}

/// One node of the file tree under construction: its CID, the bytes of file it covers, and
/// its cumulative size (its own encoding plus all blocks below, the `Tsize` of a link).
struct TreeNode {
    cid: Cid,
    file_size: u64,
    tree_size: u64,
}

/// The CID of `bytes` as a UnixFS file with raw leaves of `chunk_size` bytes in the
/// balanced layout with at most `max_links` links per node. `cid_of` uses the project's
/// parameters; other values exist so the layout can be tested with small files.
pub fn cid_with_layout(bytes: &[u8], chunk_size: usize, max_links: usize) -> Cid {
    assert!(chunk_size > 0 && max_links > 1, "chunk size and links per node are positive constants");
    // An empty file is one empty chunk, as in both importers' fixed-size chunkers.
    let chunks: Vec<&[u8]> = if bytes.is_empty() { vec![bytes] } else { bytes.chunks(chunk_size).collect() };
    let mut level: Vec<TreeNode> = chunks
        .iter()
        .map(|chunk| TreeNode {
            cid: Cid::from_sha256(RAW, Sha256::digest(chunk).into()),
            file_size: chunk.len() as u64,
            tree_size: chunk.len() as u64,
        })
        .collect();
    // A single chunk is not wrapped in a UnixFS node (go: the root is the leaf itself;
    // js: `reduceSingleLeafToSelf`).
    if level.len() == 1 {
        return level.remove(0).cid;
    }
    // Every level is grouped at least once, so a file of 175 chunks has a root over a full
    // node and a node with one link, exactly like go-unixfs' depth-first fill.
    loop {
        level = level.chunks(max_links).map(parent_node).collect();
        if level.len() == 1 {
            return level.remove(0).cid;
        }
    }
}

/// The dag-pb node over `children`, encoded as go-merkledag and js `@ipld/dag-pb` do:
/// links (field 2) first, each with Hash (1), an empty Name (2) and Tsize (3), then the
/// UnixFS Data (field 1): Type=File (1), filesize (3), one blocksizes entry (4) per child.
fn parent_node(children: &[TreeNode]) -> TreeNode {
    let file_size: u64 = children.iter().map(|c| c.file_size).sum();
    let mut unixfs = vec![0x08, 0x02, 0x18];
    put_varint(&mut unixfs, file_size);
    for child in children {
        unixfs.push(0x20);
        put_varint(&mut unixfs, child.file_size);
    }
    let mut node = Vec::new();
    for child in children {
        let hash = child.cid.to_bytes();
        let mut link = vec![0x0a];
        put_varint(&mut link, hash.len() as u64);
        link.extend_from_slice(&hash);
        link.extend_from_slice(&[0x12, 0x00]);
        link.push(0x18);
        put_varint(&mut link, child.tree_size);
        node.push(0x12);
        put_varint(&mut node, link.len() as u64);
        node.extend_from_slice(&link);
    }
    node.push(0x0a);
    put_varint(&mut node, unixfs.len() as u64);
    node.extend_from_slice(&unixfs);
    TreeNode {
        cid: Cid::from_sha256(DAG_PB, Sha256::digest(&node).into()),
        file_size,
        tree_size: node.len() as u64 + children.iter().map(|c| c.tree_size).sum::<u64>(),
    }
}

/// Appends `value` as an unsigned LEB128 varint (protobuf and multiformats use the same).
fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads an unsigned varint from the front of `input`; `None` if it is cut short or too long.
fn take_varint(input: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, &byte) in input.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *input = &input[i + 1..];
            return Some(value);
        }
    }
    None
}

const BASE32_ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
const BASE58_ALPHABET: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

fn base32_lower(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(BASE32_ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(BASE32_ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn base32_decode(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let value = BASE32_ALPHABET.iter().position(|&a| a == c).ok_or_else(|| format!("{:?} is not a base32 character", c as char))?;
        buffer = (buffer << 5) | value as u32;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    Ok(out)
}

fn base58_decode(text: &str) -> Result<Vec<u8>, String> {
    // Big-number conversion, little-endian bytes; fine for the 30-40 bytes of a CID.
    let mut number: Vec<u8> = Vec::new();
    for c in text.bytes() {
        let mut carry =
            BASE58_ALPHABET.iter().position(|&a| a == c).ok_or_else(|| format!("{:?} is not a base58btc character", c as char))? as u32;
        for digit in number.iter_mut() {
            carry += u32::from(*digit) * 58;
            *digit = carry as u8;
            carry >>= 8;
        }
        while carry > 0 {
            number.push(carry as u8);
            carry >>= 8;
        }
    }
    let zeros = text.bytes().take_while(|&c| c == b'1').count();
    let mut out = vec![0u8; zeros];
    out.extend(number.iter().rev());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_of_one_chunk_is_named_by_its_digest() {
        for len in [0, 1, 1000, CHUNK_SIZE] {
            let bytes = pattern(len, 3);
            assert_eq!(one_chunk_cid(&Sha256::digest(&bytes).into()), cid_of(&bytes), "{len} bytes");
        }
        let two_chunks = pattern(CHUNK_SIZE + 1, 3);
        assert_ne!(one_chunk_cid(&Sha256::digest(&two_chunks).into()), cid_of(&two_chunks));
    }

    /// Deterministic test bytes (xorshift64*), regenerated identically by
    /// `tests/ipfs-node/reference-cids.mjs`, which computed the expected CIDs below.
    pub(crate) fn pattern(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        (0..len)
            .map(|_| {
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
            })
            .collect()
    }

    #[test]
    fn parses_every_form_and_prints_base32() {
        // The CIDv0/CIDv1 pair of the IPFS docs' "Content Identifiers" page, confirmed with
        // multiformats' `CID.parse(v0).toV1()` in tests/ipfs-node/reference-cids.mjs.
        let v0: Cid = "QmbWqxBEKC3P8tqsKc98xmWNzrzDtRLMiMPL8wBuTGsMnR".parse().unwrap();
        assert_eq!(v0.to_string(), "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi");
        let v1: Cid = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi".parse().unwrap();
        assert_eq!(v0, v1);
        assert_eq!(v1.codec(), DAG_PB);
        let upper: Cid = "BAFYBEIGDYRZT5SFP7UDM7HU76UH7Y26NF3EFUYLQABF3OCLGTQY55FBZDI".parse().unwrap();
        assert_eq!(upper, v1);
        // base58btc CIDv1 (what js-ipfs answers without cid-base=base32): multibase `z`
        // over the same bytes; built here from the v0 multihash.
        let z = format!("z{}", base58_encode(&v1.to_bytes()));
        assert_eq!(z.parse::<Cid>().unwrap(), v1);
        assert!("bafy!".parse::<Cid>().is_err());
        assert!("hello".parse::<Cid>().is_err());
        assert!("".parse::<Cid>().is_err());
        // Cut short: the multihash length no longer matches its header.
        assert!("bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbz".parse::<Cid>().is_err());
    }

    fn base58_encode(bytes: &[u8]) -> String {
        let mut digits: Vec<u8> = Vec::new();
        for &byte in bytes {
            let mut carry = u32::from(byte);
            for digit in digits.iter_mut() {
                carry += u32::from(*digit) << 8;
                *digit = (carry % 58) as u8;
                carry /= 58;
            }
            while carry > 0 {
                digits.push((carry % 58) as u8);
                carry /= 58;
            }
        }
        let zeros = bytes.iter().take_while(|&&b| b == 0).count();
        let mut out = "1".repeat(zeros);
        out.extend(digits.iter().rev().map(|&d| BASE58_ALPHABET[d as usize] as char));
        out
    }

    /// Expected CIDs printed by `node tests/ipfs-node/reference-cids.mjs` (js-ipfs 0.66.1's
    /// ipfs-unixfs-importer 12.0.1 with cidVersion 1, rawLeaves, balanced layout), for the
    /// same `pattern` bytes; the integration tests check the real node's `add` as well.
    #[test]
    fn matches_the_js_importer_on_every_layout() {
        let cases: &[(&str, usize, u64, usize, usize, &str)] = &[
            ("one byte", 1, 1, 262_144, 174, "bafkreibthyfb4j4blugo5zk4i476hxet2vwghy564kz3jlxi53lnoamrum"),
            ("one chunk exactly", 262_144, 2, 262_144, 174, "bafkreibrevhfjnmbo2smvc7enwxcnha7gavyjvd24n3manc6ivj2tjafw4"),
            ("one chunk and one byte", 262_145, 3, 262_144, 174, "bafybeichinkc5jgy6twogrdpkyjin4eho4tbhy6um3oyujliku6inglfca"),
            ("model-sized", 2_479_144, 4, 262_144, 174, "bafybeici6l4mwgaf2cabn6csrzlgqjbetaacmbfijisaiimjxkt3hdpmba"),
            ("175 leaves: two levels", 175 * 16, 5, 16, 174, "bafybeihrm5jnekse3zm3zfypb2ulqfxhsqvg6btv25vn5ymdzgeqgz335e"),
            ("174 leaves: one full node", 174 * 16, 6, 16, 174, "bafybeigtn773kfc73vmflsl2dk4wavmo2pdonjoy7bxioxrej6nkdt52wq"),
            (
                "174*174+1 leaves: three levels",
                (174 * 174 + 1) * 4 - 3,
                7,
                4,
                174,
                "bafybeihc5s4ihdsazudgyp7geawei6gveybmyceq7cd54g2hvh6ciy6bnu",
            ),
            ("fan-out 3, 10 leaves", 80, 8, 8, 3, "bafybeibqdwnxyiowi76c24tc4v7z3l4qsvwpaawbc3xt32f5jb3cxu74re"),
            ("fan-out 3, 28 leaves, last short", 27 * 8 + 5, 9, 8, 3, "bafybeiewgsfux4m5ysx2o6l6y5ivocwtvu7haf5monhlybvh4bnqbjnsii"),
        ];
        for &(name, len, seed, chunk, links, expected) in cases {
            let got = cid_with_layout(&pattern(len, seed), chunk, links).to_string();
            assert_eq!(got, expected, "{name}");
        }
        // cid_of uses the project's parameters.
        assert_eq!(cid_of(&pattern(2_479_144, 4)), "bafybeici6l4mwgaf2cabn6csrzlgqjbetaacmbfijisaiimjxkt3hdpmba");
    }

    #[test]
    fn empty_file_is_the_empty_raw_block() {
        // The raw CID of zero bytes (sha2-256 e3b0c442...), as Kubo prints for
        // `ipfs add --raw-leaves --cid-version=1` of an empty file.
        assert_eq!(cid_of(b""), "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku");
    }
}
