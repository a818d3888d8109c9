#!/usr/bin/env bash
# The agent against Keras (tensorflow-cpu, the paper's framework) on the same CPU, in the
# same run: same architecture, hyper-parameters, data and thread count (BENCH_THREADS,
# default 2 = this machine's cores). Prints, after warm-up, one line per measurement:
#   train bs=32 agent=N keras=M ratio=R
# The machine may be shared, so the two run in alternating order for BENCH_ROUNDS rounds
# (default 2: agent, keras, keras, agent) and each side's best rate is reported.
# Needs python3 (3.9-3.13) with venv (installed from Debian if missing); installs tensorflow-cpu into .venv/ on first use.
set -euo pipefail
cd "$(dirname "$0")/../../.."

TF_VERSION=2.20.0          # tensorflow-cpu on PyPI, wheels for CPython 3.9-3.13
THREADS="${BENCH_THREADS:-2}"
DATA="${MNIST_DIR:-data/mnist}"
TRAIN_IMAGES="${BENCH_TRAIN_IMAGES:-6400}"
ROUNDS="${BENCH_ROUNDS:-2}"
VENV=.venv

[ -f "$DATA/train-images-idx3-ubyte" ] || { echo "vs-keras: no MNIST in $DATA (run make setup)" >&2; exit 1; }
# python3 and python3-venv (Debian's python3 makes no venv without it): tests/devnet/packages.sh.
bash tests/devnet/packages.sh bench
if ! "$VENV/bin/python" -c "import tensorflow as tf; assert tf.__version__ == '$TF_VERSION'" 2>/dev/null; then
    echo "vs-keras: installing tensorflow-cpu==$TF_VERSION into $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
    "$VENV/bin/pip" install --quiet "tensorflow-cpu==$TF_VERSION"
fi

cargo build --quiet --release -p fl-core --example bench
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

run_agent() {
    RAYON_NUM_THREADS=$THREADS target/release/examples/bench speed --data "$DATA" \
        --train-images "$TRAIN_IMAGES" >>"$out/agent"
}
run_keras() {
    # Keras evaluates at the agent's evaluation batch, which the agent printed first.
    local eval_batch
    eval_batch=$(sed -n 's/^eval bs=\([0-9]*\) .*/\1/p' "$out/agent" | head -n 1)
    [ -n "$eval_batch" ] || { echo "vs-keras: the agent printed no eval line" >&2; exit 1; }
    "$VENV/bin/python" agent/core/bench/keras_bench.py --data "$DATA" --threads "$THREADS" \
        --train-images "$TRAIN_IMAGES" --eval-batch "$eval_batch" >>"$out/keras"
}
echo "vs-keras: $THREADS threads each, $ROUNDS rounds in alternating order, best of each" >&2
for round in $(seq 1 "$ROUNDS"); do
    if [ $((round % 2)) -eq 1 ]; then run_agent; run_keras; else run_keras; run_agent; fi
done

# Join the two `KIND bs=N images_per_s=R` outputs on (KIND, bs), best rate per side.
awk '
    FNR == 1 { side = (FILENAME ~ /agent$/) ? "agent" : "keras" }
    $3 ~ /^images_per_s=/ {
        key = $1 " " $2; split($3, kv, "=")
        if (!((side, key) in rate)) { if (side == "agent") order[++n] = key; rate[side, key] = kv[2] }
        else if (kv[2] + 0 > rate[side, key] + 0) rate[side, key] = kv[2]
    }
    END {
        for (i = 1; i <= n; i++) {
            k = order[i]; a = rate["agent", k]; b = rate["keras", k]
            if (b == "") { printf "%s agent=%s keras=missing\n", k, a; continue }
            printf "%s agent=%s keras=%s ratio=%.2f\n", k, a, b, a / b
        }
    }' "$out/agent" "$out/keras"
