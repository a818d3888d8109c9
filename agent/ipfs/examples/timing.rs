//! Times `add` and `cat` of a model-sized file (619,786 f32 = 2,479,144 bytes) through the
//! client: on one node, and fetched by a second node peered with the first.
//!
//! usage: cargo run --release -p fl-ipfs --example timing -- API_A SWARM_ADDR_A API_B [ROUNDS]
//! (start the two nodes with `node tests/ipfs-node/launch.mjs --swarm-key K --nodes 2 --dir D`).

use anyhow::{bail, Context, Result};
use fl_ipfs::Client;
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        bail!("usage: timing API_A SWARM_ADDR_A API_B [ROUNDS]");
    }
    let rounds: usize = match args.get(3) {
        Some(n) => n.parse().with_context(|| format!("ROUNDS: expected a number, got {n:?}"))?,
        None => 5,
    };
    let (a, b) = (Client::new(&args[0]), Client::new(&args[2]));
    b.swarm_connect(&args[1])?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("round,add_ms,cat_same_node_ms,cat_peer_ms");
    for round in 0..rounds {
        // Fresh bytes each round, so the peer never has them cached.
        let mut model = vec![0u8; 619_786 * 4];
        let mut state = Sha256::digest(format!("timing round {round} {:?}", Instant::now())).to_vec();
        for chunk in model.chunks_mut(32) {
            state = Sha256::digest(&state).to_vec();
            chunk.copy_from_slice(&state[..chunk.len()]);
        }
        let digest: [u8; 32] = Sha256::digest(&model).into();
        let started = Instant::now();
        let cid = a.add(&model)?;
        let add = started.elapsed();
        let started = Instant::now();
        a.fetch_verified(&cid, &digest, model.len() as u64)?;
        let cat_same = started.elapsed();
        let started = Instant::now();
        b.fetch_verified(&cid, &digest, model.len() as u64)?;
        let cat_peer = started.elapsed();
        println!("{round},{:.1},{:.1},{:.1}", ms(add), ms(cat_same), ms(cat_peer));
        a.pin_rm(&cid)?;
    }
    Ok(())
}
