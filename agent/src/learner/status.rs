//! `fl-agent status`: what this board's learner last did, read from its state folder
//! alone, for an operator on the board's shell. It never contacts the chain or IPFS, so
//! it answers when they do not; what the chain says is `fl-aggregator status`'s job.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use super::config::FLAGS;
use super::state::{read_json, PendingState, Pins, StateDir, Status};
use super::{state_folder_name, LearnerConfig};

const USAGE: &str = "\
usage: fl-agent status --config FILE [flags]

prints what this board's learner last did, from its state folder alone (it never contacts
the chain or IPFS): its node id, registry and chain, the last global model it fetched, its
last local model (round, samples, test accuracy on the board's data), its last update the
chain recorded, a registering transaction in flight, the uploads it keeps pinned on its
IPFS node, its last error. The learner does not evaluate global models; their accuracy is
in `fl-aggregator status`.

It reads the configuration as `run` does, with the same flags (--config, --node-id,
--registry, --chain-id, --state-dir and --keep-rounds change what it shows). Without
chain_id it cannot know the chain: it shows every chain's state folder of the registry.

";

/// `fl-agent status`.
pub fn main(args: Vec<OsString>) -> Result<()> {
    let Some(config) = LearnerConfig::parse_with_help(args, &format!("{USAGE}{FLAGS}"))? else { return Ok(()) };
    print!("{}", report(&config));
    Ok(())
}

/// The text `fl-agent status` prints for `config`. Missing or damaged files are said to
/// be so; nothing here fails.
pub fn report(config: &LearnerConfig) -> String {
    let mut out = String::new();
    let keep = match config.keep_rounds {
        0 => "keep_rounds 0: every upload stays pinned".to_string(),
        n => format!("keep_rounds {n}: uploads older than the latest {n} are unpinned"),
    };
    let _ = writeln!(out, "learner {}, registry {:?} ({keep})", config.node_id, config.registry);
    let state_dir = &config.state_dir;
    match folder(state_dir) {
        Ok(true) => {}
        Ok(false) => {
            let _ = writeln!(out, "no state folder {}: the learner has not run with this state_dir", state_dir.display());
            return out;
        }
        Err(err) => {
            let _ = writeln!(out, "{err}");
            return out;
        }
    }
    match config.endpoints.chain_id {
        Some(chain_id) => {
            let _ = writeln!(out, "chain {chain_id} (chain_id in the configuration)");
            let dir = state_dir.join(state_folder_name(chain_id, config.registry));
            match folder(&dir) {
                Ok(true) => section(&mut out, config, &dir),
                Ok(false) => {
                    let _ = writeln!(out, "  no state folder {} yet: the learner has not run on this chain and registry", dir.display());
                }
                Err(err) => {
                    let _ = writeln!(out, "  {err}");
                }
            }
        }
        None => {
            let folders = match chain_folders(state_dir, config) {
                Ok(folders) => folders,
                Err(err) => {
                    let _ = writeln!(
                        out,
                        "cannot list {}: {err:#} (run as the learner's user, e.g. `sudo -u fl-agent fl-agent status ...`)",
                        state_dir.display()
                    );
                    return out;
                }
            };
            let _ = writeln!(
                out,
                "chain: not in the configuration, and status does not ask the node; {} state folder(s) of this registry under {}",
                folders.len(),
                state_dir.display()
            );
            for (chain_id, dir) in folders {
                let _ = writeln!(out, "chain {chain_id}");
                section(&mut out, config, &dir);
            }
        }
    }
    out
}

/// Whether `path` is a folder: `Ok(false)` if nothing is there, an error saying how to
/// read it if it cannot be looked at (the packaged state folder is the `fl-agent` user's).
fn folder(path: &Path) -> Result<bool, String> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(true),
        Ok(_) => Err(format!("{} is not a folder", path.display())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(err) => {
            Err(format!("cannot read {}: {err} (run as the learner's user, e.g. `sudo -u fl-agent fl-agent status ...`)", path.display()))
        }
    }
}

/// The state folders of `config`'s registry under its state_dir, by chain id.
fn chain_folders(state_dir: &Path, config: &LearnerConfig) -> Result<Vec<(u64, std::path::PathBuf)>> {
    let suffix = format!("-{:?}", config.registry);
    let mut folders: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(state_dir)?
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().is_dir())
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let chain_id = name.strip_prefix("chain-")?.strip_suffix(&suffix)?.parse().ok()?;
            Some((chain_id, entry.path()))
        })
        .collect();
    folders.sort();
    Ok(folders)
}

/// One state folder's lines.
fn section(out: &mut String, config: &LearnerConfig, dir: &Path) {
    let state = StateDir::existing(dir);
    let mut line = |label: &str, text: String| {
        let _ = writeln!(out, "  {:<16}{text}", format!("{label}:"));
    };
    line("state folder", dir.display().to_string());
    match state.status() {
        Ok(Some(status)) => status_lines(&mut line, config, &status),
        Ok(None) => line("status.json", "none yet (the learner writes it from its first step on)".into()),
        Err(err) => line("status.json", format!("unreadable: {err:#}")),
    }
    line(
        "pending tx",
        match state.read_pending() {
            Ok(Some(PendingState { round, tx: Some(tx) })) => format!("{tx:?} for round {round} (sent, not yet seen in a final block)"),
            Ok(_) => "none".into(),
            Err(err) => format!("unreadable: {err:#}"),
        },
    );
    line(
        "saved models",
        match state.saved_rounds() {
            Ok(rounds) if rounds.is_empty() => "none".into(),
            Ok(rounds) => rounds.iter().map(|r| format!("round-{r}.bin")).collect::<Vec<_>>().join(", "),
            Err(err) => format!("unreadable: {err:#}"),
        },
    );
    line(
        "pinned uploads",
        match read_json::<Pins>(&dir.join("pins.json")) {
            Ok(pins) => {
                let pins = pins.unwrap_or_default();
                let mut text = match pins.pinned.len() {
                    0 => "none".to_string(),
                    _ => pins.pinned.iter().map(|u| format!("round {} {}", u.round, u.cid)).collect::<Vec<_>>().join(", "),
                };
                if pins.gc_due {
                    text.push_str(" (a garbage collection of the IPFS node is owed: the last one failed)");
                }
                text
            }
            Err(err) => format!("unreadable: {err:#}"),
        },
    );
}

/// The lines `status.json` gives.
fn status_lines(line: &mut impl FnMut(&str, String), config: &LearnerConfig, status: &Status) {
    if status.node_id != config.node_id {
        line("note", format!("written by learner {}, not by node id {} of this configuration", status.node_id, config.node_id));
    }
    line("started", utc(status.started_at));
    line("last activity", format!("{} ({})", status.activity, utc(status.activity_at)));
    line(
        "global model",
        match &status.global {
            Some(g) => format!("round {} fetched {}, cid {} (accuracy: see fl-aggregator status)", g.round, utc(g.at), g.cid),
            None => "none fetched yet".into(),
        },
    );
    line(
        "last trained",
        match &status.trained {
            Some(t) => format!(
                "round {}, {}: local test accuracy {:.2}% (loss {:.4}) on {} test images, {} samples claimed",
                t.round,
                utc(t.at),
                100.0 * t.accuracy,
                t.loss,
                t.test_images,
                t.samples
            ),
            None => "none yet".into(),
        },
    );
    line(
        "last recorded",
        match &status.recorded {
            Some(r) => {
                let tx = r.tx.map(|tx| format!("{tx:?}")).unwrap_or_else(|| "sent before a restart".into());
                let gas = r.gas.map(|g| format!(", gas {g}")).unwrap_or_default();
                format!("round {}, {}: cid {}, tx {tx}{gas}", r.round, utc(r.at), r.cid)
            }
            None => "none yet".into(),
        },
    );
    if let Some(c) = &status.cleanup {
        let rounds = c.unpinned_rounds.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
        let rounds = match c.unpinned_rounds.len() {
            0 => "nothing unpinned".to_string(),
            1 => format!("unpinned round {rounds}"),
            _ => format!("unpinned rounds {rounds}"),
        };
        let failed = if c.failed > 0 { format!(", {} unpin(s) failed (tried again next round)", c.failed) } else { String::new() };
        let gc = match (&c.gc_blocks, &c.gc_error) {
            (Some(blocks), _) => format!(", gc removed {blocks} blocks"),
            (None, Some(err)) => format!(", gc failed: {err}"),
            (None, None) => String::new(),
        };
        line("last clean-up", format!("{}: {rounds}{failed}{gc}", utc(c.at)));
    }
    if let Some(e) = &status.last_error {
        line("last error", format!("{}: {}", utc(e.at), e.message));
    }
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC` (the proleptic Gregorian calendar, as
/// `date -u` prints it).
pub(super) fn utc(secs: u64) -> String {
    if secs == 0 {
        return "at an unknown time".into();
    }
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days (days since 1970-01-01 to a date), unsigned since
    // nothing here is before 1970.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rest / 3600, rest % 3600 / 60, rest % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learner::state::{Cleanup, GlobalFetched, Recorded, Trained, Upload};
    use crate::learner::temp_dir;
    use fl_contracts::H256;

    #[test]
    fn utc_matches_date() {
        // `date -u -d @SECS '+%F %T'` for each.
        for (secs, text) in [
            (1, "1970-01-01 00:00:01"),
            (951_782_400, "2000-02-29 00:00:00"),
            (1_700_000_000, "2023-11-14 22:13:20"),
            (4_107_542_399, "2100-02-28 23:59:59"),
            (4_107_542_400, "2100-03-01 00:00:00"),
        ] {
            assert_eq!(utc(secs), format!("{text} UTC"), "{secs}");
        }
        assert_eq!(utc(0), "at an unknown time");
    }

    const REGISTRY: &str = "0x5fbdb2315678afecb367f032d93f642f64180aa3";

    fn config(dir: &Path, chain_id: Option<u64>) -> LearnerConfig {
        let path = dir.join("agent.toml");
        let chain = chain_id.map(|id| format!("chain_id = {id}\n")).unwrap_or_default();
        let text = format!(
            "node_id = 2\nrpc_url = \"http://127.0.0.1:1\"\nipfs_api = \"http://127.0.0.1:1\"\nregistry = \"{REGISTRY}\"\n\
             data_dir = \"/nowhere\"\nstate_dir = \"{}\"\nkeep_rounds = 1\n{chain}",
            dir.join("state").display()
        );
        std::fs::write(&path, text).unwrap();
        LearnerConfig::parse(vec!["--config".into(), path.into()]).unwrap().unwrap()
    }

    #[test]
    fn status_reports_what_the_state_folder_holds() {
        let dir = temp_dir("status-report");
        let config = config(&dir, Some(31337));
        // Nothing yet: said, not an error.
        let text = report(&config);
        assert!(text.contains("no state folder") && text.contains("state"), "{text}");

        let folder = dir.join("state").join(format!("chain-31337-{REGISTRY}"));
        let state = StateDir::open(&folder).unwrap();
        let text = report(&config);
        assert!(text.contains("status.json:    none yet") && text.contains("pending tx:     none"), "{text}");

        state.update_status(|s| {
            s.node_id = 2;
            s.started_at = 1_700_000_000;
            s.activity = "round 3 recorded; waiting for its global model".into();
            s.activity_at = 1_700_000_300;
            s.global = Some(GlobalFetched { round: 2, cid: "bafyglobal".into(), at: 1_700_000_100 });
            s.trained = Some(Trained { round: 3, samples: 1000, accuracy: 0.912, loss: 0.2931, test_images: 500, at: 1_700_000_200 });
            s.recorded = Some(Recorded {
                round: 3,
                cid: "bafylocal3".into(),
                tx: Some(H256::repeat_byte(0xab)),
                gas: Some(45_504),
                at: 1_700_000_250,
            });
            s.cleanup = Some(Cleanup { unpinned_rounds: vec![1, 2], failed: 0, gc_blocks: Some(24), gc_error: None, at: 1_700_000_260 });
        });
        state.set_pins(&Pins { pinned: vec![Upload { round: 3, cid: "bafylocal3".into() }], gc_due: false }).unwrap();
        state.set_pending(&PendingState { round: 4, tx: Some(H256::repeat_byte(0xcd)) }).unwrap();
        let text = report(&config);
        for expected in [
            "learner 2, registry 0x5fbdb2315678afecb367f032d93f642f64180aa3 (keep_rounds 1: uploads older than the latest 1 are unpinned)",
            "chain 31337 (chain_id in the configuration)",
            "last activity:  round 3 recorded; waiting for its global model (2023-11-14 22:18:20 UTC)",
            "global model:   round 2 fetched 2023-11-14 22:15:00 UTC, cid bafyglobal",
            "last trained:   round 3, 2023-11-14 22:16:40 UTC: local test accuracy 91.20% (loss 0.2931) on 500 test images, 1000 samples claimed",
            "last recorded:  round 3, 2023-11-14 22:17:30 UTC: cid bafylocal3, tx 0xabababababababababababababababababababababababababababababababab, gas 45504",
            "pending tx:     0xcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd for round 4",
            "pinned uploads: round 3 bafylocal3",
            "last clean-up:  2023-11-14 22:17:40 UTC: unpinned rounds 1, 2, gc removed 24 blocks",
            "saved models:   none",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }

        // Damaged files are named, never a panic.
        std::fs::write(folder.join("status.json"), b"{").unwrap();
        std::fs::write(folder.join("pending.json"), b"x").unwrap();
        std::fs::write(folder.join("pins.json"), b"[").unwrap();
        let text = report(&config);
        for file in ["status.json", "pending.json", "pins.json"] {
            assert!(text.contains(&format!("unreadable: parsing {}", folder.join(file).display())), "{file}:\n{text}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn status_without_a_chain_id_shows_every_chain_of_the_registry() {
        let dir = temp_dir("status-chains");
        let config = config(&dir, None);
        for name in
            [format!("chain-1-{REGISTRY}"), format!("chain-31337-{REGISTRY}"), "chain-5-0x0000000000000000000000000000000000000001".into()]
        {
            StateDir::open(&dir.join("state").join(name)).unwrap();
        }
        let text = report(&config);
        assert!(text.contains("chain: not in the configuration") && text.contains("2 state folder(s) of this registry"), "{text}");
        let chain_1 = text.find("\nchain 1\n").expect("chain 1 shown");
        let chain_31337 = text.find("\nchain 31337\n").expect("chain 31337 shown");
        assert!(chain_1 < chain_31337 && !text.contains("chain 5"), "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
