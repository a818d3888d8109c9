//! `fl-aggregator verify --round N`: anyone with RPC and IPFS access recomputes round N's
//! global model from the local updates it commits to, and checks the bytes against the
//! digest published on chain. Needs no key.
//!
//! Steps: find the round's `GlobalWeightSet` event (its CID, digest, commitment and the node
//! ids it averaged); find those learners' `LocalWeightSet` events of the round; check they
//! hash to the published commitment; fetch each model (checked against its digest on
//! chain); FedAvg them in ascending node id order, as the aggregator does; compare.

use std::collections::BTreeMap;
use std::ffi::OsString;

use anyhow::{bail, Context, Result};
use fl_contracts::endpoints::{EndpointSettings, Endpoints, Missing, CHAIN_HELP, IPFS_HELP};
use fl_contracts::{commitment, Event, GlobalUpdate, LocalUpdate, Registry};
use fl_core::fedavg::FedAvg;
use fl_core::flags::number;
use fl_core::weights::{hex, sha256, ModelFile, MAX_MODEL_BYTES};
use lexopt::prelude::*;

const USAGE: &str = "\
usage: fl-aggregator verify --round N [flags]

recomputes round N's global model from the local updates it commits to and checks that
its bytes match the digest published on chain; exits with status 1 if they do not

  --round N              the round to check (1 or later)
  --from-block N         first block to search for events (default: the registry's deployment)
";

/// What `verify` found.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub round: u64,
    pub published_digest: [u8; 32],
    pub recomputed_digest: [u8; 32],
    pub commitment_matches: bool,
    pub node_ids: Vec<u64>,
}

impl Verdict {
    /// True if the commitment and the model bytes both match.
    pub fn ok(&self) -> bool {
        self.commitment_matches && self.published_digest == self.recomputed_digest
    }
}

/// Parses the flags of `fl-aggregator verify` and runs it.
pub fn main(args: Vec<OsString>) -> Result<()> {
    let mut parser = lexopt::Parser::from_args(args);
    let mut endpoints = EndpointSettings::default();
    let (mut round, mut from_block) = (None, None);
    while let Some(arg) = parser.next()? {
        match arg {
            Long(flag) if EndpointSettings::handles(flag) => {
                let flag = flag.to_string();
                endpoints.set_flag(&flag, parser.value()?)?;
            }
            Long("round") => round = Some(number::<u64>(&mut parser, "--round")?),
            Long("from-block") => from_block = Some(number(&mut parser, "--from-block")?),
            Short('h') | Long("help") => {
                print!("{USAGE}{CHAIN_HELP}{IPFS_HELP}");
                return Ok(());
            }
            _ => return Err(arg.unexpected().into()),
        }
    }
    let round = round.context("--round N is required")?;
    if round == 0 {
        bail!("--round 0 is the seeded initial model: it has no inputs to recompute it from");
    }
    let endpoints = endpoints.or(EndpointSettings::from_env()?).finish(Missing::Loopback, "")?;
    let verdict = verify(&endpoints, round, from_block)?;
    println!(
        "round {}: inputs {:?}, commitment {}, published sha256 {}, recomputed sha256 {}",
        verdict.round,
        verdict.node_ids,
        if verdict.commitment_matches { "matches" } else { "DOES NOT MATCH" },
        hex(&verdict.published_digest),
        hex(&verdict.recomputed_digest)
    );
    if !verdict.ok() {
        bail!("round {round}: the published global model is not the FedAvg of the updates it commits to");
    }
    println!("round {round}: verified");
    Ok(())
}

/// Recomputes round `round` from the chain and IPFS.
pub fn verify(endpoints: &Endpoints, round: u64, from_block: Option<u64>) -> Result<Verdict> {
    let client = endpoints.read_only_client()?;
    let registry = Registry::at(&client, endpoints.registry()?);
    let from_block = match from_block {
        Some(block) => block,
        None => registry.deployed_at()?,
    };
    let ipfs = endpoints.ipfs();
    let latest = client.confirmed_head()?;
    // One pass over the events, keeping only what this round needs.
    let mut global: Option<GlobalUpdate> = None;
    let mut locals: BTreeMap<u64, LocalUpdate> = BTreeMap::new();
    registry.for_each_event(from_block, latest, &mut |logged| {
        match logged.event {
            Event::GlobalWeightSet(g) if g.round == round => global = Some(g),
            Event::LocalWeightSet(u) if u.round == round => {
                locals.insert(u.node_id, u);
            }
            _ => {}
        }
        Ok(())
    })?;
    let global = global.with_context(|| format!("no global model of round {round} published in blocks {from_block}..={latest}"))?;
    let mut inputs = Vec::with_capacity(global.node_ids.len());
    for id in &global.node_ids {
        let update = locals
            .remove(id)
            .with_context(|| format!("round {round} averages learner {id}, but no round-{round} update of it is on chain"))?;
        inputs.push(update);
    }
    let commitment_matches = commitment(&inputs)? == global.inputs_commitment;
    let mut fedavg = FedAvg::new();
    for update in &inputs {
        let bytes = ipfs
            .fetch_verified(&update.cid, &update.digest, MAX_MODEL_BYTES)
            .with_context(|| format!("fetching learner {}'s round-{round} model", update.node_id))?;
        let model =
            ModelFile::from_bytes(&bytes).with_context(|| format!("learner {}'s round-{round} model {}", update.node_id, update.cid))?;
        fedavg.add(&model, &format!("learner {}", update.node_id))?;
    }
    let mut recomputed = fedavg.finish()?;
    recomputed.round = round;
    Ok(Verdict {
        round,
        published_digest: global.digest,
        recomputed_digest: sha256(&recomputed.to_bytes()),
        commitment_matches,
        node_ids: global.node_ids,
    })
}
