//! Writing a file so that a crash leaves either the old file or the new one, never half
//! of one: the learner's saved models and pending transaction, the aggregator's results.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Writes `bytes` to `path` through a temporary file beside it (`path` + `.tmp`) and a
/// rename, which replaces the old file in one step on the same file system.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// `path` with `.tmp` appended to its whole name (`pending.json.tmp`), so that two files
/// that differ only in their extension never share a temporary file.
fn tmp_path(path: &Path) -> PathBuf {
    let mut name: OsString = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_whole_file_and_leaves_no_temporary_file() {
        let dir = std::env::temp_dir().join(format!("fl-core-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pending.json");
        write_atomic(&path, b"a longer first version").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_eq!(tmp_path(&path), dir.join("pending.json.tmp"));
        assert!(!tmp_path(&path).exists());
        // A folder that does not exist is an error naming the file, not a panic.
        let err = write_atomic(&dir.join("missing/x.bin"), b"x").unwrap_err();
        assert!(format!("{err:#}").contains("missing/x.bin.tmp"), "{err:#}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
