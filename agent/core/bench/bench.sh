#!/usr/bin/env bash
# `make bench`: the agent's training speed at batch 32 and 128 (after warm-up), its
# evaluation speed, and the peak RSS of training one epoch on a 30,000-image shard.
# Threads: RAYON_NUM_THREADS if set, else all cores.
set -euo pipefail
cd "$(dirname "$0")/../../.."
DATA="${MNIST_DIR:-data/mnist}"
[ -f "$DATA/train-images-idx3-ubyte" ] || { echo "bench: no MNIST in $DATA (run make setup)" >&2; exit 1; }
cargo build --quiet --release -p fl-core --example bench
target/release/examples/bench speed --data "$DATA"
target/release/examples/bench rss --data "$DATA"
