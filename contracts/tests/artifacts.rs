//! The committed artifacts are exactly what the pinned solc-js produces from Registry.sol.

use std::path::Path;
use std::process::Command;

#[test]
fn recompiling_reproduces_the_committed_artifacts_byte_for_byte() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(
        dir.join("node_modules/solc/package.json").exists(),
        "contracts/node_modules/solc is missing: run `make setup` (npm install in contracts/)"
    );
    let output = Command::new("node")
        .arg("build.mjs")
        .arg("--check")
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("running node (Node.js 18 or newer is needed, see tests/devnet/setup.sh): {e}"));
    assert!(
        output.status.success(),
        "node build.mjs --check failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
