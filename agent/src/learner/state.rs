//! The learner's state folder, one per chain and registry. Every file is written
//! atomically (`fl_core::files::write_atomic`):
//!
//! | file | what | read by |
//! |---|---|---|
//! | `round-R.bin` | the finished local model of round R | `run`, after a restart: no training again |
//! | `pending.json` | the hash of a registering transaction sent but not yet seen final | `run`: never register twice |
//! | `pins.json` | this learner's uploads still pinned on its IPFS node, and whether a garbage collection is owed | `run`: unpin them `keep_rounds` later |
//! | `status.json` | what the learner last did, and when | `fl-agent status` only |
//!
//! It only saves work and remembers what to clean up; the chain decides what the round is.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use fl_contracts::H256;
use fl_core::files::write_atomic;
use fl_core::weights::ModelFile;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::log;

/// What the state folder remembers between restarts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(super) struct PendingState {
    /// The round of the registering transaction below.
    pub(super) round: u64,
    /// Hash of a `setLocalWeight` transaction sent but not yet seen mined.
    pub(super) tx: Option<H256>,
}

/// One model this learner added (pinned) to its IPFS node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct Upload {
    pub(super) round: u64,
    pub(super) cid: String,
}

/// `pins.json`: this learner's uploads still pinned on its node. An upload is written
/// here before it is added, so a learner killed in between leaves nothing pinned that it
/// does not know of.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub(super) struct Pins {
    /// In the order they were added.
    pub(super) pinned: Vec<Upload>,
    /// Set when a pin was removed and the node has not yet collected since (a failed
    /// `repo/gc` is asked again next round).
    pub(super) gc_due: bool,
}

impl Pins {
    /// Notes an upload of `round` (once, however often a restart adds the same bytes).
    pub(super) fn record(&mut self, round: u64, cid: &str) {
        if !self.pinned.iter().any(|u| u.round == round && u.cid == cid) {
            self.pinned.push(Upload { round, cid: cid.to_string() });
        }
    }

    /// The uploads of rounds up to `through`, in order; they are removed from the list
    /// (the caller puts back those it could not unpin).
    pub(super) fn take_through(&mut self, through: u64) -> Vec<Upload> {
        let (due, kept): (Vec<Upload>, Vec<Upload>) = self.pinned.drain(..).partition(|u| u.round <= through);
        self.pinned = kept;
        due
    }
}

/// `status.json`: what the learner last did, for an operator on the board's shell
/// (`fl-agent status`). Informational: `run` never decides anything from it. Times are
/// Unix seconds (UTC).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Status {
    /// The node id of the learner that wrote this.
    pub node_id: u64,
    /// When that learner process started.
    pub started_at: u64,
    /// What it was doing last ("training round 3", "round 3 recorded; waiting for its global model").
    pub activity: String,
    pub activity_at: u64,
    /// The last global model it fetched (and checked against the chain's digest).
    pub global: Option<GlobalFetched>,
    /// The last local model it evaluated before sending.
    pub trained: Option<Trained>,
    /// Its last update the chain recorded.
    pub recorded: Option<Recorded>,
    /// The last unpinning of old uploads and garbage collection.
    pub cleanup: Option<Cleanup>,
    /// The last error (transient ones are retried; others stop the learner, which
    /// systemd starts again).
    pub last_error: Option<ErrorSeen>,
}

/// A global model the learner fetched.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct GlobalFetched {
    pub round: u64,
    pub cid: String,
    pub at: u64,
}

/// A local model and its accuracy on the board's test data.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Trained {
    pub round: u64,
    /// The samples claimed on chain (at most the learner's cap).
    pub samples: u64,
    /// Fraction of the test images classified correctly, in [0, 1].
    pub accuracy: f64,
    pub loss: f64,
    pub test_images: usize,
    pub at: u64,
}

/// A local update the chain recorded.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Recorded {
    pub round: u64,
    pub cid: String,
    /// The transaction that recorded it; `None` when it was recorded before a restart
    /// and the transaction sent after it reverted as a duplicate.
    pub tx: Option<H256>,
    pub gas: Option<u64>,
    pub at: u64,
}

/// One clean-up of the learner's IPFS node after a recorded round.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Cleanup {
    /// Rounds whose uploads were unpinned (or found not pinned).
    pub unpinned_rounds: Vec<u64>,
    /// Uploads whose unpinning failed; they are tried again after the next round.
    pub failed: usize,
    /// Blocks the node's garbage collection removed, if it ran and succeeded.
    pub gc_blocks: Option<u64>,
    /// Why the garbage collection failed, if it did (asked again next round).
    pub gc_error: Option<String>,
    pub at: u64,
}

/// An error and when it happened.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ErrorSeen {
    pub message: String,
    pub at: u64,
}

impl Status {
    pub(super) fn set_activity(&mut self, what: impl Into<String>) {
        self.activity = what.into();
        self.activity_at = now();
    }
}

/// Seconds since the Unix epoch (0 on a clock set before it).
pub(super) fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A JSON file of the state folder: `Ok(None)` if it does not exist, an error naming the
/// file if it cannot be read or parsed.
pub(super) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    };
    serde_json::from_slice(&bytes).map(Some).with_context(|| format!("parsing {}", path.display()))
}

/// The learner's state folder (see the module documentation).
pub(super) struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// The folder, created if needed (the learner).
    pub(super) fn open(dir: &Path) -> Result<StateDir> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating state folder {}", dir.display()))?;
        Ok(StateDir { dir: dir.to_path_buf() })
    }

    /// The folder as it is, never created (`fl-agent status`, which writes nothing).
    pub(super) fn existing(dir: &Path) -> StateDir {
        StateDir { dir: dir.to_path_buf() }
    }

    pub(super) fn model_path(&self, round: u64) -> PathBuf {
        self.dir.join(format!("round-{round}.bin"))
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The finished local model of `round`, if one was saved and is intact.
    pub(super) fn local_model(&self, round: u64) -> Option<ModelFile> {
        let path = self.model_path(round);
        if !path.exists() {
            return None;
        }
        match ModelFile::load(&path) {
            Ok(model) if model.round == round => Some(model),
            Ok(model) => {
                log(&format!("ignoring {}: it is a round-{} model", path.display(), model.round));
                None
            }
            Err(err) => {
                log(&format!("ignoring unreadable {}: {err:#}", path.display()));
                None
            }
        }
    }

    pub(super) fn save_model(&self, model: &ModelFile) -> Result<()> {
        write_atomic(&self.model_path(model.round), &model.to_bytes())
    }

    /// The rounds of the saved local models (`round-R.bin`), in order.
    pub(super) fn saved_rounds(&self) -> Result<Vec<u64>> {
        let entries = std::fs::read_dir(&self.dir).with_context(|| format!("listing {}", self.dir.display()))?;
        let mut rounds: Vec<u64> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_prefix("round-")?.strip_suffix(".bin")?.parse().ok())
            .collect();
        rounds.sort_unstable();
        Ok(rounds)
    }

    /// `pending.json` as it is (`fl-agent status`).
    pub(super) fn read_pending(&self) -> Result<Option<PendingState>> {
        read_json(&self.file("pending.json"))
    }

    /// The transaction in flight, if any. An unreadable file counts as none (logged): the
    /// contract refuses a second update of the round anyway.
    pub(super) fn pending(&self) -> PendingState {
        self.read_pending()
            .unwrap_or_else(|err| {
                log(&format!("ignoring {err:#}"));
                None
            })
            .unwrap_or_default()
    }

    pub(super) fn set_pending(&self, state: &PendingState) -> Result<()> {
        write_atomic(&self.file("pending.json"), &serde_json::to_vec(state)?)
    }

    /// `pins.json` (empty if absent).
    pub(super) fn pins(&self) -> Result<Pins> {
        Ok(read_json(&self.file("pins.json"))?.unwrap_or_default())
    }

    pub(super) fn set_pins(&self, pins: &Pins) -> Result<()> {
        write_atomic(&self.file("pins.json"), &serde_json::to_vec_pretty(pins)?)
    }

    /// `status.json` as it is.
    pub(super) fn status(&self) -> Result<Option<Status>> {
        read_json(&self.file("status.json"))
    }

    /// Changes `status.json` with `change`. Never fails: the file only informs the
    /// operator, so a damaged one starts afresh and a failed write is logged.
    pub(super) fn update_status(&self, change: impl FnOnce(&mut Status)) {
        let mut status = self.status().unwrap_or_else(|err| {
            log(&format!("starting {} afresh: {err:#}", self.file("status.json").display()));
            None
        });
        let status = status.get_or_insert_with(Status::default);
        change(status);
        let written = serde_json::to_vec_pretty(status)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| write_atomic(&self.file("status.json"), &bytes));
        if let Err(err) = written {
            log(&format!("could not record the learner's status: {err:#}"));
        }
    }

    /// Deletes the saved local models of the three rounds before `round`: only the current
    /// round's is ever reused. Called after every round, so older ones are already gone
    /// unless the learner was stopped for more than three rounds (then they stay; they
    /// are small, and never read again).
    pub(super) fn prune(&self, round: u64) {
        for old in round.saturating_sub(3)..round {
            let _ = std::fs::remove_file(self.model_path(old));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learner::temp_dir;

    #[test]
    fn state_dir_keeps_the_finished_model_and_ignores_damaged_ones() {
        let dir = temp_dir("state");
        let state = StateDir::open(&dir).unwrap();
        assert!(state.local_model(2).is_none());
        let mut model = ModelFile::initial(5);
        model.round = 2;
        model.n_samples = 10;
        state.save_model(&model).unwrap();
        assert_eq!(state.local_model(2), Some(model.clone()));
        // A truncated file (a crash while copying it by hand, a full disk) is not reused.
        let bytes = std::fs::read(state.model_path(2)).unwrap();
        std::fs::write(state.model_path(2), &bytes[..bytes.len() / 2]).unwrap();
        assert!(state.local_model(2).is_none());
        // A model saved under the wrong round is not reused either.
        std::fs::write(state.model_path(3), &bytes).unwrap();
        assert!(state.local_model(3).is_none());
        assert_eq!(state.saved_rounds().unwrap(), vec![2, 3]);

        assert_eq!(state.pending(), PendingState::default());
        let pending = PendingState { round: 2, tx: Some(H256::repeat_byte(7)) };
        state.set_pending(&pending).unwrap();
        assert_eq!(state.pending(), pending);
        // A damaged pending.json counts as no transaction for run, and is an error
        // naming the file for status.
        std::fs::write(dir.join("pending.json"), b"{\"round\": 2, \"tx\": \"0x12").unwrap();
        assert_eq!(state.pending(), PendingState::default());
        let message = format!("{:#}", state.read_pending().unwrap_err());
        assert!(message.contains("pending.json"), "{message}");
        state.prune(4);
        assert!(!state.model_path(2).exists() && !state.model_path(3).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn pins_remember_each_upload_once_and_give_back_the_old_ones() {
        let mut pins = Pins::default();
        pins.record(1, "a");
        pins.record(2, "b");
        pins.record(2, "b"); // a restart adds the same bytes again
        pins.record(2, "b2"); // a model trained again after its file was lost
        pins.record(3, "c");
        let due = pins.take_through(2);
        assert_eq!(due.iter().map(|u| u.cid.as_str()).collect::<Vec<_>>(), ["a", "b", "b2"]);
        assert_eq!(pins.pinned, vec![Upload { round: 3, cid: "c".into() }]);
        assert!(pins.take_through(0).is_empty());

        let dir = temp_dir("pins");
        let state = StateDir::open(&dir).unwrap();
        assert_eq!(state.pins().unwrap(), Pins::default(), "no file: nothing pinned");
        pins.gc_due = true;
        state.set_pins(&pins).unwrap();
        assert_eq!(state.pins().unwrap(), pins);
        std::fs::write(dir.join("pins.json"), b"[1, 2").unwrap();
        let message = format!("{:#}", state.pins().unwrap_err());
        assert!(message.contains("pins.json"), "{message}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn status_survives_a_damaged_file_and_keeps_what_it_knew() {
        let dir = temp_dir("status");
        let state = StateDir::open(&dir).unwrap();
        assert_eq!(state.status().unwrap(), None);
        state.update_status(|s| {
            s.node_id = 4;
            s.set_activity("training round 1");
        });
        state.update_status(|s| s.trained = Some(Trained { round: 1, samples: 10, accuracy: 0.5, loss: 1.0, test_images: 20, at: 7 }));
        let status = state.status().unwrap().unwrap();
        assert_eq!((status.node_id, status.activity.as_str()), (4, "training round 1"));
        assert_eq!(status.trained.unwrap().round, 1);
        // Damaged (a full disk, an editor): status says so, and the learner starts afresh.
        std::fs::write(dir.join("status.json"), b"{\"node_id\": ").unwrap();
        assert!(format!("{:#}", state.status().unwrap_err()).contains("status.json"));
        state.update_status(|s| s.node_id = 5);
        assert_eq!(state.status().unwrap().unwrap().node_id, 5);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
