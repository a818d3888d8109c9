//! Keeping a board's IPFS repository bounded: `pin_rm` and `repo_gc` really delete an
//! unpinned model's blocks on a js-ipfs node while a model kept in MFS (`mfs_keep`, how the
//! aggregator keeps what `verify` needs) survives; and a learner with `keep_rounds = 1`
//! unpins its older uploads in a real federation, which `fl-agent status` then describes.

use std::time::Duration;

use anyhow::Result;
use fl_ipfs::{ClientConfig, Error};
use fl_tests::ipfs_node::{new_swarm_key, IpfsNode};
use fl_tests::util::TempDir;

/// Size of the paper's model as f32: 619,786 parameters x 4 bytes.
const MODEL_BYTES: usize = 619_786 * 4;

/// Blocks of a model-sized file: 10 raw leaves of 262,144 bytes and one root.
const MODEL_BLOCKS: u64 = 11;

/// Seeded pseudo-random bytes (xorshift64*), so a failure can be reproduced.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
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
fn retention_unpinned_model_is_collected_and_a_model_kept_in_mfs_survives() -> Result<()> {
    let dir = TempDir::new("retention-key")?;
    // One node with no peers: whatever it cannot find in its own repository, it cannot get.
    let node = IpfsNode::start(&new_swarm_key(dir.path(), "swarm.key")?)?;
    let client = node.client();
    let dropped = random_bytes(MODEL_BYTES, 1);
    let kept = random_bytes(MODEL_BYTES, 2);
    let dropped_cid = client.add(&dropped)?;
    let kept_cid = client.add(&kept)?;
    let pins = client.pins()?;
    assert!(pins.contains(&dropped_cid) && pins.contains(&kept_cid), "add pins: {pins:?}");

    // The aggregator keeps one in MFS; keeping it again is fine.
    let path = "/fl-aggregator/round-1/learner-1";
    client.mfs_keep(&kept_cid, path)?;
    client.mfs_keep(&kept_cid, path)?;
    // The learner unpins both of its uploads; a second unpin, or one of a CID this node
    // never pinned, finds nothing to remove and is not an error.
    assert!(client.pin_rm(&dropped_cid)?, "a pin was removed");
    assert!(!client.pin_rm(&dropped_cid)?, "nothing left to remove");
    assert!(client.pin_rm(&kept_cid)?);
    assert!(!client.pin_rm(&fl_ipfs::cid_of(&random_bytes(1000, 3)))?);
    let pins = client.pins()?;
    assert!(!pins.contains(&dropped_cid) && !pins.contains(&kept_cid), "{pins:?}");

    let removed = client.repo_gc()?;
    assert!(removed >= MODEL_BLOCKS, "gc removed {removed} blocks, fewer than the unpinned model's {MODEL_BLOCKS}");
    // Gone: a node without peers waits for blocks it does not have until the time limit.
    let short =
        ClientConfig { timeout: Duration::from_secs(3), connect_timeout: Duration::from_secs(2), attempts: 1, ..ClientConfig::default() };
    let err = node.client_with(short).cat(&dropped_cid, MODEL_BYTES as u64).unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "the collected model is still served: {err}");
    // Kept: MFS protects it from the same sweep.
    assert!(client.cat(&kept_cid, MODEL_BYTES as u64)? == kept, "the model kept in MFS changed");

    // The path holds the kept model: another CID there is refused, the same one accepted.
    let err = client.mfs_keep(&dropped_cid, path).unwrap_err();
    assert!(matches!(err, Error::MfsConflict { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains(path) && text.contains(&kept_cid) && text.contains(&dropped_cid) && text.contains(&node.api_url), "{text}");
    client.mfs_keep(&kept_cid, path)?;
    // A folder in the way of a file is a conflict too, never replaced.
    let err = client.mfs_keep(&kept_cid, "/fl-aggregator/round-1").unwrap_err();
    assert!(matches!(err, Error::MfsConflict { .. }), "{err}");
    Ok(())
}
