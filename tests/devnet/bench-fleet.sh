#!/usr/bin/env bash
# `make bench-fleet`: the aggregator's round overhead as the fleet grows. For each fleet size
# (FLEETS, default "10 50 100" learners on 8 shared IPFS nodes, 100 training images each,
# 500 test images), fl-demo runs 2 rounds twice in the same session: with one fetch worker
# (the reference: the aggregator before --fetch-workers) and with FETCH_WORKERS (default 4).
# It prints round 2's overhead (waiting for the learners excluded) by phase, the ratio of
# the two, and the aggregator's peak resident memory. Figures, not assertions: these
# machines are shared and noisy.
#
#   make bench-fleet                     all three sizes (about 15 minutes here)
#   make bench-fleet ARGS="--no-local-eval"   without evaluating each learner's model
#   FLEETS="10" make bench-fleet        one size
set -euo pipefail
cd "$(dirname "$0")/../.."
FLEETS=${FLEETS:-10 50 100}
FETCH_WORKERS=${FETCH_WORKERS:-4}
OUT=target/bench-fleet
cargo build --release --quiet -p fl-agent -p fl-aggregator -p fl-tests --bins
rm -rf "$OUT"
mkdir -p "$OUT"

# Peak resident memory (VmHWM, kB) of the process running `fl-aggregator run` that the
# fl-demo with pid $1 started, sampled until that fl-demo ends.
watch_aggregator() {
    local demo=$1 peak=0 pid hwm
    while kill -0 "$demo" 2>/dev/null; do
        pid=$(pgrep -P "$demo" -f 'fl-aggregator run' | head -n 1 || true)
        if [[ -n $pid ]]; then
            hwm=$(sed -n 's/^VmHWM:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$pid/status" 2>/dev/null || true)
            [[ -n $hwm && $hwm -gt $peak ]] && peak=$hwm
        fi
        sleep 0.2
    done
    echo "$peak"
}

for n in $FLEETS; do
    for workers in 1 "$FETCH_WORKERS"; do
        dir=$OUT/learners-$n-workers-$workers
        printf 'bench-fleet: %s learners, %s fetch worker(s): ' "$n" "$workers" >&2
        started=$(date +%s)
        target/release/fl-demo --learners "$n" --ipfs-nodes $((n < 8 ? n : 8)) --rounds 2 \
            --train-limit $((n * 100)) --test-limit 500 --fetch-workers "$workers" "$@" \
            --data data/mnist --out "$dir" >"$OUT/learners-$n-workers-$workers.log" 2>&1 &
        demo=$!
        peak=$(watch_aggregator "$demo")
        wait "$demo" || { echo "failed: see $OUT/learners-$n-workers-$workers.log" >&2; exit 1; }
        echo "$peak" >"$dir/aggregator-peak-kb"
        echo "$(($(date +%s) - started)) s" >&2
    done
done

python3 - "$OUT" "$FETCH_WORKERS" $FLEETS <<'EOF'
import json, os, sys
out, workers, fleets = sys.argv[1], sys.argv[2], sys.argv[3:]
phases = ["fetch_s", "evaluate_s", "average_s", "publish_s", "verify_s"]
print("round 2 overhead in seconds (waiting for learners excluded); evaluate = every learner's model and the global one")
print(f"{'learners':>8} {'workers':>7} " + " ".join(f"{p[:-2]:>8}" for p in phases) + f" {'total':>8} {'ratio':>6} {'peak MB':>8}")
for n in fleets:
    totals = {}
    for w in ["1", workers]:
        d = os.path.join(out, f"learners-{n}-workers-{w}")
        results = json.load(open(os.path.join(d, "results.json")))
        t = next(r for r in results["rounds"] if r["round"] == 2)["timings"]
        total = sum(t.get(p, 0.0) for p in phases)
        totals[w] = total
        ratio = totals["1"] / total if w != "1" else 1.0
        peak = int(open(os.path.join(d, "aggregator-peak-kb")).read()) / 1024
        print(f"{n:>8} {w:>7} " + " ".join(f"{t.get(p, 0.0):8.2f}" for p in phases) + f" {total:8.2f} {ratio:5.2f}x {peak:8.0f}")
EOF
