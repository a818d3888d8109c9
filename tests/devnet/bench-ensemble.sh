#!/usr/bin/env bash
# `make bench-ensemble`: heterogeneous models on MNIST, the paper's future work. Two model
# groups, the paper's CNN and a small dense network for weaker boards, in one federation of
# LEARNERS (default 4) learners as processes on real nodes: learners 1, 3, ... train the
# CNN, 2, 4, ... the dense network, each on its own IID shard of TRAIN_LIMIT images
# (default 20,000), ROUNDS rounds (default 3) of 1 local epoch. The aggregator evaluates,
# after every round and on the same TEST_LIMIT test images (default all 10,000), each
# group's model alone and the global model, their ensemble (the mean of their softmax
# outputs). Then the same federation over SEEDS (default 1 2 3) in one process
# (`fl-aggregator simulate`, the same training and aggregation without chain or IPFS): one
# seed's figures are not a finding. Figures, not assertions.
#
#   make bench-ensemble      about a minute here once built (64 s, 2026-12-04)
set -euo pipefail
cd "$(dirname "$0")/../.."
LEARNERS=${LEARNERS:-4}
TRAIN_LIMIT=${TRAIN_LIMIT:-20000}
TEST_LIMIT=${TEST_LIMIT:-10000}
ROUNDS=${ROUNDS:-3}
SEEDS=${SEEDS:-1 2 3}
OUT=target/bench-ensemble
cargo build --release --quiet -p fl-agent -p fl-aggregator -p fl-tests --bins
rm -rf "$OUT"
mkdir -p "$OUT"
cat > "$OUT/cnn.toml" <<'TOML'
# The paper's CNN (the built-in spec, written out).
name = "paper-mnist-cnn"
input = [28, 28, 1]
classes = 10
[[layer]]
conv = 32
pool = true
[[layer]]
conv = 64
pool = true
[[layer]]
conv = 128
pool = true
[[layer]]
dense = 256
[[layer]]
dropout = 0.5
TOML
cat > "$OUT/dense.toml" <<'TOML'
# A small dense network for weaker boards: 784 -> 64 -> 10, 50,890 parameters.
name = "mnist-dense-64"
input = [28, 28, 1]
classes = 10
[[layer]]
dense = 64
TOML
echo "bench-ensemble: $LEARNERS learners, $ROUNDS rounds, $TRAIN_LIMIT training images, $TEST_LIMIT test images" >&2
target/release/fl-demo --learners "$LEARNERS" --rounds "$ROUNDS" --local-epochs 1 --train-limit "$TRAIN_LIMIT" \
    --test-limit "$TEST_LIMIT" --no-local-eval --model "$OUT/cnn.toml" --model "$OUT/dense.toml" \
    --data data/mnist --out "$OUT/run" >"$OUT/run.log" 2>&1 || { echo "failed: see $OUT/run.log" >&2; exit 1; }
python3 - "$OUT/run/results.json" "$LEARNERS" "$TRAIN_LIMIT" "$TEST_LIMIT" <<'PY'
import json, sys
path, learners, train, test = sys.argv[1:]
rounds = json.load(open(path))["rounds"]
print(f"global test accuracy on {test} MNIST test images; {learners} learners, {int(train) // int(learners)} images each, "
      f"1 local epoch per round; each group's model alone against their ensemble (the global model)")
print(f"{'round':>5} {'CNN group alone':>16} {'dense group alone':>18} {'ensemble':>9}")
for r in rounds[1:]:
    cnn, dense = r["group_accuracy"]
    print(f"{r['round']:>5} {100 * cnn:>15.2f}% {100 * dense:>17.2f}% {100 * r['global']['accuracy']:>8.2f}%")
PY

echo "bench-ensemble: the same over seeds $SEEDS in one process (fl-aggregator simulate)" >&2
for seed in $SEEDS; do
    target/release/fl-aggregator simulate --seed "$seed" --learners "$LEARNERS" --rounds "$ROUNDS" --local-epochs 1 \
        --train-limit "$TRAIN_LIMIT" --test-limit "$TEST_LIMIT" --no-local-eval --spec "$OUT/cnn.toml" \
        --spec "$OUT/dense.toml" --data data/mnist >"$OUT/seed-$seed.txt" 2>"$OUT/seed-$seed.log" \
        || { echo "failed: see $OUT/seed-$seed.log" >&2; exit 1; }
done
python3 - "$OUT" $SEEDS <<'PY'
import re, sys
out, seeds = sys.argv[1], sys.argv[2:]
runs = {}
for seed in seeds:
    text = open(f"{out}/seed-{seed}.txt").read()
    ensemble = {int(m[1]): float(m[2]) for m in re.finditer(r"^\s+(\d+)\s.*?([\d.]+)%\s*$", text, re.M)}
    groups = {int(m[1]): (float(m[2]), float(m[3])) for m in re.finditer(r"^round (\d+): each group alone: group 1 ([\d.]+)%, group 2 ([\d.]+)%", text, re.M)}
    if not ensemble or ensemble.keys() != groups.keys():
        sys.exit(f"bench-ensemble: cannot read the rounds of {out}/seed-{seed}.txt")
    runs[seed] = {r: (*groups[r], ensemble[r]) for r in ensemble}
def span(values):
    return f"{sum(values) / len(values):6.2f}% ({min(values):.2f}-{max(values):.2f})"
print(f"\nover seeds {', '.join(seeds)} (simulate): mean (min-max) of each group alone and of the ensemble")
print(f"{'round':>5} {'CNN group alone':>24} {'dense group alone':>24} {'ensemble':>24} {'ensemble beats CNN':>19}")
for r in sorted(next(iter(runs.values()))):
    rows = [runs[s][r] for s in seeds]
    beats = sum(e > c for c, _, e in rows)
    print(f"{r:>5} {span([c for c, _, _ in rows]):>24} {span([d for _, d, _ in rows]):>24} {span([e for _, _, e in rows]):>24} {f'{beats} of {len(rows)}':>19}")
PY
