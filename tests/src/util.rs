//! Temporary folders, free ports, child processes that die with their guard, and the
//! locations of the project's own files and tools.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The workspace root (the folder holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ lives inside the workspace").to_path_buf()
}

/// A TCP port on 127.0.0.1 that was free a moment ago. The OS hands out ports from the
/// ephemeral range in sequence, so a port just released is not reused at once.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0 to find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// A folder under the system temp dir, removed (with its contents) on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> Result<TempDir> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("fl-{label}-{}-{n}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path).with_context(|| format!("removing stale {}", path.display()))?;
        }
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("FL_KEEP_TEMP").is_none() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A child process that is killed (and reaped) when the guard is dropped, so a failing
/// test never leaves a node running.
pub struct ChildGuard {
    pub child: Child,
    pub name: String,
}

impl ChildGuard {
    pub fn new(name: impl Into<String>, child: Child) -> ChildGuard {
        ChildGuard { child, name: name.into() }
    }

    /// Sends SIGTERM and waits up to `grace` for the process to exit, then SIGKILL.
    pub fn terminate(&mut self, grace: Duration) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = self.child.id().to_string();
        let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(5));
    }
}

/// Reads `stdout` on a background thread until a line contains `needle`, or fails after
/// `timeout` with the lines seen so far and `hint` (what to install or check).
/// Returns the lines read up to and including the matching one; the thread keeps draining
/// the pipe afterwards so the child never blocks on a full pipe.
pub fn wait_for_line(stdout: ChildStdout, needle: &str, timeout: Duration, hint: &str) -> Result<Vec<String>> {
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let reader = BufReader::new(stdout);
        for line in reader.lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                // Receiver gone: keep draining so the child never blocks on a full pipe.
                continue;
            }
        }
    });
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let hit = line.contains(needle);
                seen.push(line);
                if hit {
                    // Keep draining in the background without holding the lines.
                    std::thread::spawn(move || for _ in rx {});
                    return Ok(seen);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!("no line containing {needle:?} within {timeout:?} ({hint}); output so far:\n{}", seen.join("\n"))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("process exited before printing {needle:?} ({hint}); output:\n{}", seen.join("\n"))
            }
        }
    }
}

/// Path of a binary built from this workspace (`fl-agent`, `fl-aggregator`), in the same
/// profile as the running test.
pub fn workspace_bin(name: &str) -> Result<PathBuf> {
    // Integration tests run from target/<profile>/deps/; the binaries sit one level up.
    let exe = std::env::current_exe().context("locating the test executable")?;
    let dir = exe.parent().and_then(|p| p.parent()).context("test executable has no parent folder")?;
    let path = dir.join(name);
    if !path.exists() {
        bail!("{} not found: build it first (`cargo build --workspace --bins`; `make test` does)", path.display());
    }
    Ok(path)
}

/// The path of the command `bin`: on PATH, else unpacked by `tests/devnet/packages.sh test`
/// under target/tools/ (promtool: see there). An error names the Debian package to get.
pub fn tool(bin: &str, package: &str) -> Result<PathBuf> {
    let unpacked = workspace_root().join("target/tools").join(package).join("usr/bin").join(bin);
    if unpacked.is_file() {
        return Ok(unpacked);
    }
    let on_path = std::env::var_os("PATH").iter().flat_map(std::env::split_paths).map(|dir| dir.join(bin)).find(|path| path.is_file());
    on_path.with_context(|| format!("{bin} not found: it comes from Debian's {package} package; run `bash tests/devnet/packages.sh test`"))
}
