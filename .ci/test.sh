#!/usr/bin/env bash
# Everything `make test` runs, in order. Real nodes are started by the tests themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
# What the tests call besides the build, Node.js and the cross toolchains (tests/devnet/packages.sh).
bash tests/devnet/packages.sh test
# The export test's Python (pinned numpy, safetensors, onnxruntime in tests/export/.venv).
bash tests/export/venv.sh

# Gates: formatting, lints, and the rust-version Cargo.toml declares (dependencies set its
# floor: postcard 1.2 and zip 7.4 need 1.88, bytemuck's AVX-512 types (through gemm) 1.89).
msrv=$(sed -n 's/^rust-version = "\([0-9.]*\)"/\1/p' Cargo.toml)
[[ -n $msrv ]] || { echo "test: no rust-version in Cargo.toml" >&2; exit 1; }
rustup component add rustfmt clippy
cargo fmt --check
cargo clippy --workspace --all-targets -- -D warnings
rustup toolchain install "$msrv" --profile minimal >/dev/null
cargo "+$msrv" check --workspace --all-targets

# Binaries first: the whole-system tests run fl-agent and fl-aggregator as processes.
cargo build --workspace --bins
# Raspberry Pi builds and packages (installs the cross toolchains once): the tests run them under qemu.
bash cross/build.sh
cargo test --workspace --no-fail-fast
