#!/usr/bin/env bash
# `make paper`: the paper's full experiment (a long benchmark, not a test). Two learners,
# 30,000 / 30,000, 5 rounds of 5 local epochs on a local federation, then the single-node
# baseline of 25 epochs on all 60,000 images; prints both beside the paper's figures and
# the wall times. Results in demo-out/paper/.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --quiet -p fl-agent -p fl-aggregator -p fl-tests --bins
out=demo-out/paper
mkdir -p "$out"
start=$(date +%s)
target/release/fl-demo --data data/mnist --out "$out/federation" --learners 2 --rounds 5 --local-epochs 5 "$@" | tee "$out/federation.txt"
federated_s=$(( $(date +%s) - start ))
start=$(date +%s)
target/release/fl-agent train --data data/mnist --epochs 25 --out "$out/single-node.bin" | tee "$out/single-node.txt"
single_s=$(( $(date +%s) - start ))
global=$(grep -o 'global model after [0-9]* rounds of [0-9]* local epoch(s): [0-9.]*%' "$out/federation.txt" | grep -o '[0-9.]*%$')
single=$(tail -n 1 "$out/single-node.txt" | grep -o 'test accuracy [0-9.]*%' | grep -o '[0-9.]*%')
printf '\n%-34s %10s %10s %10s\n' "" "paper" "ours" "wall"
printf '%-34s %10s %10s %9ss\n' "federated, 2 x 5 rounds x 5 epochs" "99.46%" "$global" "$federated_s"
printf '%-34s %10s %10s %9ss\n' "single node, 25 epochs" "99.48%" "$single" "$single_s"
