#!/usr/bin/env bash
# `make demo`: the paper's experiment on a local federation. Builds the release binaries,
# then fl-demo starts anvil and one IPFS node per participant (private network, loopback
# only), deploys the registry, registers the learners with their own keys, runs the
# aggregator and the learners as separate processes, and stops everything at the end.
# Flags go to fl-demo: `make demo ARGS="--rounds 5 --local-epochs 5"` is the paper's setting.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --quiet -p fl-agent -p fl-aggregator -p fl-tests --bins
exec target/release/fl-demo --data data/mnist --out demo-out "$@"
