//! `fl-bench-compression` (part of `make bench-compression`): what each update encoding
//! costs and saves, f32 being the reference measured in the same run. A real update (the
//! initial model trained one epoch on `--images` MNIST images) is encoded as f32, f16 and
//! int8; for each it prints the bytes, the encode and decode times (median of `--repeat`)
//! and the time one update takes to travel between two peered js-ipfs nodes of a private
//! network on loopback (added on one, fetched and checked by digest on the other, whose
//! repository is collected after each fetch so that nothing is served from its cache),
//! once over plain loopback and once through a proxy pacing the link to `--link-rate`
//! bytes per second each way (a board's slow uplink; default 1 MB/s).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use fl_core::data::Mnist;
use fl_core::encoding::{self, Encoding};
use fl_core::flags::{number, positive};
use fl_core::rounds;
use fl_core::train::{evaluate, train};
use fl_core::weights::{sha256, ModelFile, MAX_MODEL_BYTES};
use fl_tests::ipfs_node::{new_swarm_key, IpfsNode};
use fl_tests::proxy::Proxy;
use fl_tests::util::TempDir;
use lexopt::prelude::*;

const USAGE: &str = "\
usage: fl-bench-compression [--data DIR] [--images N] [--repeat N] [--link-rate BYTES]

  --data DIR    MNIST folder (default data/mnist)
  --images N    training images behind the update (default 5000)
  --repeat N    measurements per figure, the median is printed (default 5)
  --link-rate B the slow link's bytes per second, each way (default 1000000)
";

fn main() -> ExitCode {
    match run(std::env::args_os().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("fl-bench-compression: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The median of `repeat` timings of `f`, in seconds.
fn time<T>(repeat: usize, mut f: impl FnMut() -> Result<T>) -> Result<f64> {
    let mut seconds = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        let started = Instant::now();
        f()?;
        seconds.push(started.elapsed().as_secs_f64());
    }
    Ok(median(seconds))
}

fn run(args: Vec<OsString>) -> Result<()> {
    let mut parser = lexopt::Parser::from_args(args);
    let (mut data, mut images, mut repeat, mut rate) = (PathBuf::from("data/mnist"), 5000, 5, 1_000_000);
    while let Some(arg) = parser.next()? {
        match arg {
            Long("data") => data = PathBuf::from(parser.value()?),
            Long("images") => images = positive(number(&mut parser, "--images")?, "--images")?,
            Long("repeat") => repeat = positive(number(&mut parser, "--repeat")?, "--repeat")?,
            Long("link-rate") => rate = positive(number(&mut parser, "--link-rate")?, "--link-rate")?,
            Short('h') | Long("help") => {
                print!("{USAGE}");
                return Ok(());
            }
            _ => return Err(arg.unexpected().into()),
        }
    }
    let mnist = Mnist::load(&data)?;
    let base = ModelFile::initial(1);
    let config = rounds::local_train_config(1, 1, 1, 1, 32, "update".into());
    let mut update = train(&fl_core::spec::ModelSpec::paper_cnn(), &base, &mnist.train.take(images), None, &config, &mut |_| {})?.model;
    update.round = 1;
    let test = mnist.test.take(2000);
    eprintln!("starting two peered IPFS nodes");
    let dir = TempDir::new("bench-compression")?;
    let key = new_swarm_key(dir.path(), "swarm.key")?;
    let (sender, receiver) = (IpfsNode::start(&key)?, IpfsNode::start(&key)?);
    receiver.client().swarm_connect(&sender.swarm_addr).context("peering the two nodes")?;
    // A third node reaches the sender only through a pacing proxy (a slow link).
    let slow = IpfsNode::start(&key)?;
    let port = sender.swarm_addr.split('/').nth(4).context("the sender's swarm address has no port")?;
    let proxy = Proxy::start(&format!("http://127.0.0.1:{port}"))?;
    proxy.limit_rate(Some(rate as u64));
    let via_proxy = format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", proxy.url().rsplit(':').next().unwrap_or_default(), sender.peer_id);
    slow.client().swarm_connect(&via_proxy).context("peering the slow node through the proxy")?;
    let (from, to, far) = (sender.client(), receiver.client(), slow.client());

    let link = format!("{:.1} MB/s s", rate as f64 / 1e6);
    println!(
        "{:<6} {:>10} {:>8} {:>10} {:>10} {:>11} {:>7} {:>12} {:>7} {:>9}",
        "update", "bytes", "vs f32", "encode ms", "decode ms", "loopback s", "vs f32", link, "vs f32", "accuracy"
    );
    let mut reference: Option<(usize, f64, f64)> = None;
    for encoding in Encoding::ALL {
        let bytes = encoding::encode(&update, Some(&base), encoding)?;
        let encode_s = time(repeat, || encoding::encode(&update, Some(&base), encoding))?;
        let decode_s = time(repeat, || encoding::decode(&bytes, Some(&base)))?;
        let decoded = encoding::decode(&bytes, Some(&base))?.model;
        let accuracy = evaluate(&fl_core::spec::ModelSpec::paper_cnn(), &decoded, &test)?.accuracy;
        // Each transfer sends different bytes (the round field differs), so no block is
        // shared with an earlier one; the receiver also collects its repository each time.
        let mut salt = 1_000 + 1_000 * encoding as u64;
        let mut transfer = |receiver: &fl_ipfs::Client| -> Result<f64> {
            let mut fetches = Vec::with_capacity(repeat);
            for _ in 0..repeat {
                salt += 1;
                let mut copy = update.clone();
                copy.round = salt;
                let bytes = encoding::encode(&copy, Some(&base), encoding)?;
                let cid = from.add(&bytes)?;
                let started = Instant::now();
                receiver.fetch_verified(&cid, &sha256(&bytes), MAX_MODEL_BYTES)?;
                fetches.push(started.elapsed().as_secs_f64());
                receiver.repo_gc()?;
            }
            Ok(median(fetches))
        };
        let (fast, slow) = (transfer(&to)?, transfer(&far)?);
        let (f32_bytes, f32_fast, f32_slow) = *reference.get_or_insert((bytes.len(), fast, slow));
        println!(
            "{:<6} {:>10} {:>7.2}x {:>10.1} {:>10.1} {:>11.3} {:>6.2}x {:>12.3} {:>6.2}x {:>8.2}%",
            encoding.name(),
            bytes.len(),
            f32_bytes as f64 / bytes.len() as f64,
            1e3 * encode_s,
            1e3 * decode_s,
            fast,
            f32_fast / fast,
            slow,
            f32_slow / slow,
            100.0 * accuracy
        );
    }
    println!("(vs f32: how many times smaller / faster; accuracy: the decoded update's on 2,000 test images)");
    Ok(())
}
