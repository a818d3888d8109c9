#!/usr/bin/env bash
# `make bench-compression`: what compressed updates cost and save (a benchmark, not a test).
#  1. bytes per update, encode and decode time, and the IPFS transfer time of one update
#     between two peered nodes, per encoding (fl-bench-compression, real js-ipfs nodes);
#  2. accuracy: the paper's setting (2 learners x 30,000, ROUNDS rounds of EPOCHS local
#     epochs) simulated per encoding and seed through the same encoder and decoder as
#     `run`: f32 (the reference), int8 updates, and int8 updates from int8 global models.
# Results in demo-out/compression/; a finished accuracy run is reused (delete its file to
# run it again). Environment: SEEDS (default "1 2 3"), ROUNDS and EPOCHS (default 5 and
# 5), VARIANTS (UPDATE:GLOBAL pairs, default "f32:f32 int8:f32 int8:int8"), SKIP_ACCURACY=1
# or SKIP_TRANSFER=1 to run one part only.
set -euo pipefail
cd "$(dirname "$0")/../.."
SEEDS=${SEEDS:-1 2 3}
ROUNDS=${ROUNDS:-5}
EPOCHS=${EPOCHS:-5}
VARIANTS=${VARIANTS:-f32:f32 int8:f32 int8:int8}
out=demo-out/compression
mkdir -p "$out"
cargo build --release --quiet -p fl-aggregator -p fl-tests --bins

if [ "${SKIP_TRANSFER:-}" != 1 ]; then
    target/release/fl-bench-compression --data data/mnist | tee "$out/sizes-and-transfer.txt"
fi
[ "${SKIP_ACCURACY:-}" = 1 ] && exit 0

final_accuracy() { grep -o '^ *'"$ROUNDS"' .*%$' "$1" | grep -o '[0-9.]*%$' | tr -d '%'; }
for seed in $SEEDS; do
    for variant in $VARIANTS; do
        update=${variant%:*}
        global=${variant#*:}
        file="$out/accuracy-r$ROUNDS-e$EPOCHS-$update-$global-seed$seed.txt"
        if [ -s "$file" ] && [ -n "$(final_accuracy "$file" || true)" ]; then
            echo "reusing $file"
            continue
        fi
        echo "simulating seed $seed, $update updates, $global global models ($ROUNDS x $EPOCHS)"
        start=$(date +%s)
        target/release/fl-aggregator simulate --data data/mnist --learners 2 --rounds "$ROUNDS" \
            --local-epochs "$EPOCHS" --seed "$seed" --no-local-eval \
            --update-encoding "$update" --global-encoding "$global" >"$file.tmp" 2>"$file.log"
        echo "wall $(( $(date +%s) - start )) s" >>"$file.log"
        mv "$file.tmp" "$file"
    done
done

printf '\n%-28s' "final global accuracy (%)"
for seed in $SEEDS; do printf '%10s' "seed $seed"; done
printf '%10s %12s\n' "mean" "vs f32"
reference=""
for variant in $VARIANTS; do
    update=${variant%:*}
    global=${variant#*:}
    printf '%-28s' "$update updates, $global global"
    values=""
    for seed in $SEEDS; do
        a=$(final_accuracy "$out/accuracy-r$ROUNDS-e$EPOCHS-$update-$global-seed$seed.txt")
        printf '%10s' "$a"
        values="$values $a"
    done
    mean=$(echo "$values" | awk '{ s = 0; for (i = 1; i <= NF; i++) s += $i; printf "%.3f", s / NF }')
    [ -z "$reference" ] && reference=$mean
    diff=$(awk -v m="$mean" -v r="$reference" 'BEGIN { printf "%+.3f", m - r }')
    printf '%10s %12s\n' "$mean" "$diff"
done
