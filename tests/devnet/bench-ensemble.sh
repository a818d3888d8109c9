#!/usr/bin/env bash
# `make bench-ensemble`: heterogeneous models on MNIST, the paper's future work. Two model
# groups, the paper's CNN and a small dense network for weaker boards, in one federation of
# LEARNERS (default 4) learners as processes on real nodes: learners 1, 3, ... train the
# CNN, 2, 4, ... the dense network, each on its own IID shard of TRAIN_LIMIT images
# (default 20,000), ROUNDS rounds (default 3) of 1 local epoch. The aggregator evaluates,
# after every round and on the same TEST_LIMIT test images (default all 10,000), each
# group's model alone and the global model, their ensemble (the mean of their softmax
# outputs). Figures, not assertions.
#
#   make bench-ensemble      about 5 minutes here
set -euo pipefail
cd "$(dirname "$0")/../.."
LEARNERS=${LEARNERS:-4}
TRAIN_LIMIT=${TRAIN_LIMIT:-20000}
TEST_LIMIT=${TEST_LIMIT:-10000}
ROUNDS=${ROUNDS:-3}
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
