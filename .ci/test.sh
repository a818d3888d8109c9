#!/usr/bin/env bash
# Everything `make test` runs, in order. Real nodes are started by the tests themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
# What the tests call besides the build, Node.js and the cross toolchains (tests/devnet/packages.sh).
bash tests/devnet/packages.sh test
# Binaries first: the whole-system tests run fl-agent and fl-aggregator as processes.
cargo build --workspace --bins
# Raspberry Pi builds and packages (installs the cross toolchains once): the tests run them under qemu.
bash cross/build.sh
cargo test --workspace --no-fail-fast
