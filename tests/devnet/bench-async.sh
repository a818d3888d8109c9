#!/usr/bin/env bash
# `make bench-async` (also the second half of `make bench-fleet`): time for the global model
# to reach TARGET test accuracy (default 0.97) on a fleet of LEARNERS (default 10) of which
# the last third are SLOWDOWN (default 4) times slower (each waits, after training, 3 times
# its training time: fl-demo --slow), synchronous rounds against asynchronous ones
# (FedBuff: a global model per K = LEARNERS / 2 updates, staleness at most S = 4), same
# shards (TRAIN_LIMIT images split IID, default all 60,000), same local epochs (1), same seed,
# in the same session. The time counts from the initial global model's publication to the
# first global model at or above the target; synchronous is the reference. Figures, not
# assertions: these machines are shared and noisy, and all learners share its two cores.
#
#   make bench-async                 about 25 minutes here
#   LEARNERS=6 TRAIN_LIMIT=12000 make bench-async
set -euo pipefail
cd "$(dirname "$0")/../.."
LEARNERS=${LEARNERS:-10}
TRAIN_LIMIT=${TRAIN_LIMIT:-60000}
TEST_LIMIT=${TEST_LIMIT:-2000}
TARGET=${TARGET:-0.97}
SLOWDOWN=${SLOWDOWN:-4}
SYNC_ROUNDS=${SYNC_ROUNDS:-4}
ASYNC_ROUNDS=${ASYNC_ROUNDS:-10}
BUFFER=$((LEARNERS / 2))
SLOW=$((LEARNERS / 3))
OUT=target/bench-async
cargo build --release --quiet -p fl-agent -p fl-aggregator -p fl-tests --bins
rm -rf "$OUT"
mkdir -p "$OUT"
common=(--learners "$LEARNERS" --ipfs-nodes $((LEARNERS < 4 ? LEARNERS : 4)) --local-epochs 1
        --train-limit "$TRAIN_LIMIT" --test-limit "$TEST_LIMIT" --no-local-eval
        --slow "$SLOW" --slowdown "$SLOWDOWN" --data data/mnist)
for mode in sync async; do
    printf 'bench-async: %s, %s learners (%s slowed %sx): ' "$mode" "$LEARNERS" "$SLOW" "$SLOWDOWN" >&2
    started=$(date +%s)
    if [[ $mode == sync ]]; then
        extra=(--rounds "$SYNC_ROUNDS")
    else
        extra=(--rounds "$ASYNC_ROUNDS" --mode async --buffer "$BUFFER" --max-staleness 4)
    fi
    target/release/fl-demo "${common[@]}" "${extra[@]}" --out "$OUT/$mode" >"$OUT/$mode.log" 2>&1 \
        || { echo "failed: see $OUT/$mode.log" >&2; exit 1; }
    echo "$(($(date +%s) - started)) s" >&2
done

python3 - "$OUT" "$TARGET" "$LEARNERS" "$SLOW" "$SLOWDOWN" "$BUFFER" <<'PY'
import json, sys
out, target, learners, slow, slowdown, buffer = sys.argv[1], float(sys.argv[2]), *sys.argv[3:]
print(f"time to {100 * target:.0f}% global test accuracy, {learners} learners ({slow} slowed {slowdown}x), "
      f"1 local epoch; async: buffer {buffer}, staleness at most 4")
print(f"{'mode':>6} {'globals':>7} {'reached at':>10} {'seconds':>8} {'ratio':>6}  accuracy by global model (s after round 0)")
reference = None
for mode in ["sync", "async"]:
    rounds = json.load(open(f"{out}/{mode}/results.json"))["rounds"]
    start = rounds[0]["published_at"]
    reached = next((r for r in rounds if (r["global"].get("accuracy") or 0) >= target), None)
    seconds = None if reached is None else reached["published_at"] - start
    if mode == "sync":
        reference = seconds
    ratio = "" if seconds is None or not reference else f"{seconds / reference:.2f}"
    trail = ", ".join(f"{100 * r['global']['accuracy']:.2f}% @{r['published_at'] - start:.0f}" for r in rounds[1:])
    print(f"{mode:>6} {len(rounds) - 1:>7} {('round ' + str(reached['round'])) if reached else 'never':>10} "
          f"{'' if seconds is None else f'{seconds:.0f}':>8} {ratio:>6}  {trail}")
PY
