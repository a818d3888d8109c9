//! The round record: "how this global model was made", published with every global model
//! (the `record` of `GlobalWeightSet`, covered by its inputs commitment), so that anyone
//! can recompute the model (`fl-aggregator verify`) and see every update the round did not
//! use, and why.
//!
//! It is compact JSON with a `version`. Version 1 holds:
//! - `seed` (round 0 only): the seed of the initial model;
//! - `rule` and `clip_norm` (later rounds): the aggregation rule in its canonical text
//!   (`fedavg`, `median`, `trimmed-mean:B`, `krum:F`, `multi-krum:F`, see `fl_core::rules`)
//!   and the clipping bound, if any;
//! - `closed_at_block`: the last block whose updates the aggregator had read when it closed
//!   the round; an update of the round mined later arrived too late and needs no reason;
//! - `selected` (the updates the rule's result is drawn from: Krum's choice, Multi-Krum's
//!   m, every input for the others) and `clipped` (the updates clipping changed): both
//!   recomputed by `verify`;
//! - `left_out`: every update of the round read by `closed_at_block` that is not an input,
//!   with the reason (not fetched, digest or file wrong, learner no longer registered).
//!
//! Version 2 adds (compressed updates, `fl_core::encoding`):
//! - `encodings`: every input's node id under the encoding its file used (`f32`, `f16`,
//!   `int8`), recomputed by `verify` from the files; an input it does not name is f32;
//! - `global_encoded` (when the aggregator runs with `--global-encoding`): the encoding,
//!   CID and SHA-256 of the encoded copy of the global model that learners may download
//!   instead of the f32 one. The f32 model stays what the chain's digest and `verify`
//!   define; the encoded copy is derived from it deterministically, and `verify` derives
//!   it again and checks both.
//!
//! Version 3 adds (asynchronous rounds, `fl_core::staleness`):
//! - `asynchronous`: the federation's buffer K and staleness bound S, the staleness
//!   `weighting`, `opened_after_block` (the previous global model's `closed_at_block`, or
//!   the block before the registry's deployment for round 1), and `rounds`, each input's
//!   round in the order of the event's node ids. An asynchronous global model takes every
//!   update mined in blocks `opened_after_block + 1 ..= closed_at_block`, whatever its
//!   round: each is an input or in `left_out` (with its `round`: too stale, superseded by
//!   the same learner's newer update, or any reason of version 1), so no update is used
//!   twice or lost between two global models, and `verify` checks both.
//!
//! Version 4 adds (declared models: boards' own evaluations, `fl_core::encoding::Report`,
//! and model groups, `fl_core::ensemble`):
//! - `reported`: per input node id (only inputs whose file carries a report), the accuracy,
//!   loss and test-example count its learner reported for the model it sent, on its own
//!   test set: `"reported":{"1":{"accuracy":0.97,"loss":0.09,"examples":500}}`. Recorded,
//!   never trusted: the figures never influence aggregation; `verify` recomputes the map
//!   from the files and flags any difference.
//! - `groups` (a federation of model groups only): per group, in group order, the node ids
//!   of its inputs (ascending; every input in exactly one group, the group the registry
//!   registered its learner to). Each group's inputs are combined by the round's rule on
//!   their own; a group without inputs keeps its previous model; `selected` and `clipped`
//!   are the union over the groups. `verify` checks the grouping against the registry and
//!   recomputes each group.
//!
//! Later features add optional fields; a reader
//! refuses a record whose version is newer than it knows rather than misread it. A round
//! published by a version-1 registry has no record: it was FedAvg of its inputs, without
//! clipping.

use std::collections::BTreeMap;

use crate::encoding::{Encoding, Report};
use crate::rules::{parse_clip_norm, Recipe, Rule};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// The record version this code writes and the newest it reads.
pub const RECORD_VERSION: u32 = 4;

/// Longest reason kept per left-out update (the record is calldata: it costs gas).
const MAX_REASON_CHARS: usize = 160;

/// One update of the round that the rule did not take as an input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeftOut {
    pub node_id: u64,
    /// The update's round (version 3, asynchronous rounds; else the record's round).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<u64>,
    pub reason: String,
}

/// How an asynchronous global model was made (record version 3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AsyncRound {
    /// The federation's buffer K: a global model has at least K inputs.
    pub buffer: u64,
    /// The federation's staleness bound S: no input is more than S rounds old.
    pub max_staleness: u64,
    /// The staleness function ([`crate::staleness::WEIGHTING`]).
    pub weighting: String,
    /// The updates considered are those mined after this block.
    pub opened_after_block: u64,
    /// Each input's round, in the order of the event's node ids.
    pub rounds: Vec<u64>,
}

/// The encoded copy of a global model (record version 2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncodedGlobal {
    /// `f16` or `int8`.
    pub encoding: String,
    pub cid: String,
    /// Lower-case hex SHA-256 of the encoded file.
    pub sha256: String,
}

/// See the module documentation.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoundRecord {
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_norm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_at_block: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub selected: Vec<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clipped: Vec<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<LeftOut>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub encodings: BTreeMap<String, Vec<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_encoded: Option<EncodedGlobal>,
    /// Version 4: what each input's file reported, by node id (recorded, never used).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reported: BTreeMap<u64, Report>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asynchronous: Option<AsyncRound>,
    /// Version 4, model groups: each group's inputs (node ids, ascending), in group order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<Vec<u64>>,
}

impl RoundRecord {
    /// The record of round 0, the initial model made from `seed`.
    pub fn initial(seed: u64) -> RoundRecord {
        RoundRecord { version: RECORD_VERSION, seed: Some(seed), ..RoundRecord::default() }
    }

    /// The record of an aggregated round (`selected`, `clipped` and `left_out` are set by
    /// the caller once known).
    pub fn aggregated(recipe: &Recipe, closed_at_block: u64) -> RoundRecord {
        RoundRecord {
            version: RECORD_VERSION,
            rule: Some(recipe.rule.to_string()),
            clip_norm: recipe.clip_norm.map(|c| c.to_string()),
            closed_at_block: Some(closed_at_block),
            ..RoundRecord::default()
        }
    }

    /// Records an update left out, its reason cut to a bounded length.
    pub fn leave_out(&mut self, node_id: u64, reason: &str) {
        self.leave_out_of_round(node_id, None, reason);
    }

    /// [`RoundRecord::leave_out`] naming the update's round (asynchronous rounds).
    pub fn leave_out_of_round(&mut self, node_id: u64, round: Option<u64>, reason: &str) {
        let mut kept: String = reason.chars().take(MAX_REASON_CHARS).collect();
        if kept.len() < reason.len() {
            kept.push_str("...");
        }
        self.left_out.push(LeftOut { node_id, round, reason: kept });
    }

    /// True if the record leaves out learner `node_id`'s update of `round` (a left-out entry
    /// without a round is of the record's own round, `own_round`).
    pub fn leaves_out(&self, node_id: u64, round: u64, own_round: u64) -> bool {
        self.left_out.iter().any(|l| l.node_id == node_id && l.round.unwrap_or(own_round) == round)
    }

    /// Notes that input `node_id`'s file used `encoding`.
    pub fn note_encoding(&mut self, node_id: u64, encoding: Encoding) {
        let ids = self.encodings.entry(encoding.to_string()).or_default();
        ids.push(node_id);
        ids.sort_unstable();
        ids.dedup();
    }

    /// The encoding the record gives input `node_id`, if it names one.
    pub fn encoding_of(&self, node_id: u64) -> Option<&str> {
        self.encodings.iter().find(|(_, ids)| ids.contains(&node_id)).map(|(name, _)| name.as_str())
    }

    /// The bytes published on chain.
    pub fn to_bytes(&self) -> Vec<u8> {
        // A plain struct of strings and numbers always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads published bytes; a version newer than [`RECORD_VERSION`] is an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<RoundRecord> {
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .with_context(|| format!("round record is not JSON: {:?}", String::from_utf8_lossy(&bytes[..bytes.len().min(200)])))?;
        let version = value.get("version").and_then(|v| v.as_u64()).context("round record has no numeric \"version\"")?;
        if version > u64::from(RECORD_VERSION) {
            bail!("round record version {version} is newer than this program reads ({RECORD_VERSION}): upgrade fl-aggregator");
        }
        serde_json::from_value(value).with_context(|| format!("round record (version {version})"))
    }

    /// The rule and clipping bound the record says were used; a record without a rule (a
    /// version-1 registry's round has no record at all) means FedAvg.
    pub fn recipe(&self) -> Result<Recipe> {
        let rule: Rule = match &self.rule {
            Some(text) => text.parse().with_context(|| format!("round record rule {text:?}"))?,
            None => Rule::FedAvg,
        };
        let clip_norm = match &self.clip_norm {
            Some(text) => Some(parse_clip_norm(text).with_context(|| format!("round record clip_norm {text:?}"))?),
            None => None,
        };
        Ok(Recipe { rule, clip_norm })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_newer_versions_and_garbage() {
        let recipe = Recipe { rule: "trimmed-mean:0.2".parse().unwrap(), clip_norm: Some(5.0) };
        let mut record = RoundRecord::aggregated(&recipe, 42);
        record.selected = vec![1, 2, 3];
        record.leave_out(4, &"x".repeat(500));
        record.note_encoding(3, Encoding::Int8);
        record.note_encoding(1, Encoding::Int8);
        record.note_encoding(2, Encoding::F32);
        record.global_encoded = Some(EncodedGlobal { encoding: "int8".into(), cid: "bafk".into(), sha256: "00".into() });
        let bytes = record.to_bytes();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with(r#"{"version":4,"rule":"trimmed-mean:0.2","clip_norm":"5","closed_at_block":42"#), "{text}");
        assert!(text.contains(r#""encodings":{"f32":[2],"int8":[1,3]},"global_encoded":{"encoding":"int8""#), "{text}");
        assert_eq!((record.encoding_of(3), record.encoding_of(2), record.encoding_of(9)), (Some("int8"), Some("f32"), None));
        // A version-1 record (no encodings) still reads.
        let v1 = RoundRecord::from_bytes(br#"{"version":1,"rule":"fedavg","closed_at_block":7}"#).unwrap();
        assert_eq!((v1.version, v1.closed_at_block, v1.encodings.len()), (1, Some(7), 0));
        let back = RoundRecord::from_bytes(&bytes).unwrap();
        assert_eq!(back, record);
        assert_eq!(back.recipe().unwrap(), recipe);
        assert_eq!(back.left_out[0].reason.chars().count(), MAX_REASON_CHARS + 3);
        assert_eq!(RoundRecord::from_bytes(&RoundRecord::initial(7).to_bytes()).unwrap().seed, Some(7));

        let err = format!("{:#}", RoundRecord::from_bytes(br#"{"version":5,"rule":"fedavg"}"#).unwrap_err());
        assert!(err.contains("round record version 5 is newer than this program reads (4)"), "{err}");
        // Version 3: an asynchronous round, with the rounds of its inputs and left-out updates.
        let mut async_record = RoundRecord::aggregated(&recipe, 50);
        async_record.asynchronous = Some(AsyncRound {
            buffer: 2,
            max_staleness: 4,
            weighting: crate::staleness::WEIGHTING.into(),
            opened_after_block: 40,
            rounds: vec![5, 3],
        });
        async_record.leave_out_of_round(7, Some(1), "too stale");
        let text = String::from_utf8(async_record.to_bytes()).unwrap();
        assert!(text.contains(r#""left_out":[{"node_id":7,"round":1,"reason":"too stale"}]"#), "{text}");
        assert!(
            text.ends_with(
                r#""asynchronous":{"buffer":2,"max_staleness":4,"weighting":"1/sqrt(1+staleness)","opened_after_block":40,"rounds":[5,3]}}"#
            ),
            "{text}"
        );
        let back = RoundRecord::from_bytes(text.as_bytes()).unwrap();
        assert_eq!(back, async_record);
        assert!(back.leaves_out(7, 1, 6) && !back.leaves_out(7, 6, 6));
        assert!(record.leaves_out(4, 9, 9), "a version-2 entry is of the record's round");
        // Version 4: the inputs' reported figures, by node id, exactly as the files say.
        let mut reporting = RoundRecord::aggregated(&recipe, 60);
        reporting.reported.insert(2, Report { accuracy: 0.9712, loss: 0.0931, examples: 500 });
        reporting.reported.insert(10, Report { accuracy: 0.1, loss: 2.5, examples: 1 });
        let text = String::from_utf8(reporting.to_bytes()).unwrap();
        assert!(
            text.ends_with(
                r#""reported":{"2":{"accuracy":0.9712,"loss":0.0931,"examples":500},"10":{"accuracy":0.1,"loss":2.5,"examples":1}}}"#
            ),
            "{text}"
        );
        assert_eq!(RoundRecord::from_bytes(text.as_bytes()).unwrap(), reporting);
        assert!(RoundRecord::from_bytes(&record.to_bytes()).unwrap().reported.is_empty(), "a record without reports");
        let err = format!("{:#}", RoundRecord::from_bytes(br#"{"version":4,"reported":{"1":{"accuracy":1}}}"#).unwrap_err());
        assert!(err.contains("missing field `loss`"), "{err}");
        let err = format!("{:#}", RoundRecord::from_bytes(b"\x00\x01").unwrap_err());
        assert!(err.starts_with("round record is not JSON"), "{err}");
        let err = format!("{:#}", RoundRecord::from_bytes(br#"{"version":1,"colour":"red"}"#).unwrap_err());
        assert!(err.contains("unknown field `colour`"), "{err}");
        let bad_rule = RoundRecord { rule: Some("mean-ish".into()), ..RoundRecord::initial(1) };
        let err = format!("{:#}", bad_rule.recipe().unwrap_err());
        assert!(err.starts_with("round record rule \"mean-ish\""), "{err}");
    }
}
