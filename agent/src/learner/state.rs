//! The learner's state folder: the finished local model of a round (`round-R.bin`) and
//! the hash of a registering transaction sent but not yet seen mined (`pending.json`),
//! both written atomically. It only saves work after a restart; the chain decides what
//! the round is.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use fl_contracts::H256;
use fl_core::files::write_atomic;
use fl_core::weights::ModelFile;
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

/// The learner's state folder: `round-R.bin` local models and `pending.json`.
pub(super) struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub(super) fn open(dir: &Path) -> Result<StateDir> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating state folder {}", dir.display()))?;
        Ok(StateDir { dir: dir.to_path_buf() })
    }

    pub(super) fn model_path(&self, round: u64) -> PathBuf {
        self.dir.join(format!("round-{round}.bin"))
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

    pub(super) fn pending(&self) -> PendingState {
        let path = self.dir.join("pending.json");
        std::fs::read(&path).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default()
    }

    pub(super) fn set_pending(&self, state: &PendingState) -> Result<()> {
        write_atomic(&self.dir.join("pending.json"), &serde_json::to_vec(state)?)
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
        let mut model = ModelFile::initial(5).unwrap();
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

        assert_eq!(state.pending(), PendingState::default());
        let pending = PendingState { round: 2, tx: Some(H256::repeat_byte(7)) };
        state.set_pending(&pending).unwrap();
        assert_eq!(state.pending(), pending);
        state.prune(4);
        assert!(!state.model_path(2).exists() && !state.model_path(3).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
