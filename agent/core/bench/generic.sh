#!/usr/bin/env bash
# `make bench-generic`: the paper's CNN through the generic, spec-driven network against
# the specialised network it replaced (the last commit before model specs), in the same
# run: both builds of the training benchmark alternate, ROUNDS times each, and the script
# prints each round's images/s at batch 32 and 128 and the median ratio generic /
# specialised (the issue's bar: at least 0.95). The specialised build is made from git
# history in a worktree under target/, so this needs the repository's history.
# Threads: RAYON_NUM_THREADS if set, else all cores.
set -euo pipefail
cd "$(dirname "$0")/../../.."
DATA="${MNIST_DIR:-data/mnist}"
ROUNDS="${ROUNDS:-5}"
# The last commit whose network was written for the paper's CNN only.
SPECIALISED=1f45b08
[ -f "$DATA/train-images-idx3-ubyte" ] || { echo "bench-generic: no MNIST in $DATA (run make setup)" >&2; exit 1; }
git cat-file -e "$SPECIALISED^{commit}" 2>/dev/null || { echo "bench-generic: commit $SPECIALISED is not in this clone's history" >&2; exit 1; }
OLD="target/bench-specialised"
if [ ! -d "$OLD" ]; then
  git worktree add --detach "$OLD" "$SPECIALISED" >/dev/null
fi
( cd "$OLD" && CARGO_TARGET_DIR="$PWD/../bench-specialised-target" cargo build --quiet --release -p fl-core --example bench )
cargo build --quiet --release -p fl-core --example bench
NEW_BIN=target/release/examples/bench
OLD_BIN=target/bench-specialised-target/release/examples/bench
run() { "$1" speed --data "$DATA" --batch-sizes 32,128 --train-images 6400 --eval-images 2000; }
rates=$(mktemp)
for i in $(seq "$ROUNDS"); do
  # Alternate which goes first, so that drift of the machine's speed hits both alike.
  if [ $((i % 2)) -eq 1 ]; then order="new old"; else order="old new"; fi
  for which in $order; do
    bin=$NEW_BIN; [ "$which" = old ] && bin=$OLD_BIN
    run "$bin" | sed -n 's/^\(train bs=[0-9]*\|eval bs=[0-9]*\) images_per_s=\([0-9]*\).*/\1 \2/p' | while read -r kind bs rate; do
      echo "$i $which $kind-$bs $rate"
    done >> "$rates"
  done
done
echo "images/s per round (generic = this build, specialised = $SPECIALISED):"
python3 - "$rates" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
by = {}
for rnd, which, kind, rate in rows:
    by.setdefault(kind, {}).setdefault(int(rnd), {})[which] = float(rate)
for kind, rounds in by.items():
    ratios = [r["new"] / r["old"] for r in rounds.values() if "new" in r and "old" in r]
    new = statistics.median(r["new"] for r in rounds.values())
    old = statistics.median(r["old"] for r in rounds.values())
    print(f"{kind:12} generic {new:7.0f}  specialised {old:7.0f}  ratio median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}, {len(ratios)} pairs)")
PY
rm -f "$rates"
