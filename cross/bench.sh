#!/usr/bin/env bash
# `make bench-cross`: the Raspberry Pi budgets of the agent, as figures (not pass/fail).
#
#   1. stripped binary size per target (goal: at most 12 MB) and package sizes;
#   2. peak RSS of a training run on a 30,000-image shard at batch 32 (goal: at most
#      100 MB; a Zero 2 W has 512 MB): natively on this x86 machine for the full shard,
#      and the aarch64 build under qemu on a small shard (emulation is ~20x slower);
#   3. time from start to the first JSON-RPC connection, native (`fl-agent run`).
#
# Expects `make cross` to have run (the Makefile's bench-cross target does) and MNIST in
# data/mnist (`make setup`). Options (environment): SHARD=30000, EMULATED_SHARD=512,
# TEST_IMAGES=500. Figures go to stdout, progress to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

SHARD=${SHARD:-30000}
EMULATED_SHARD=${EMULATED_SHARD:-512}
TEST_IMAGES=${TEST_IMAGES:-500}
PROFILE=release-pi
MNIST=$root/data/mnist
GOAL_SIZE=$((12 * 1024 * 1024))
GOAL_RSS_KB=$((100 * 1024))

say() { printf 'bench-cross: %s\n' "$*" >&2; }
die() { printf 'bench-cross: error: %s\n' "$*" >&2; exit 1; }
mib() { awk -v b="$1" 'BEGIN { printf "%.2f MiB", b / 1048576 }'; }

# GNU time and strace (tests/devnet/packages.sh, group bench).
bash tests/devnet/packages.sh bench
[[ -f $MNIST/train-images-idx3-ubyte ]] || die "MNIST not found in $MNIST: run \`make setup\`"

# Honours CARGO_TARGET_DIR and build.target-dir, like cross/build.sh.
target_dir=$(cargo metadata --no-deps --format-version 1 | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[[ -d $target_dir ]] || die "could not find cargo's target folder"

work=$(mktemp -d "${TMPDIR:-/tmp}/fl-bench-cross.XXXXXX")
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# ---- 1. sizes -------------------------------------------------------------------------------
echo "== binary sizes (stripped, profile $PROFILE; goal <= 12 MiB)"
for t in aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf; do
    bin=$target_dir/$t/$PROFILE/fl-agent
    [[ -x $bin ]] || die "$bin not found: run \`make cross\`"
    size=$(stat -c %s "$bin")
    verdict=$([[ $size -le $GOAL_SIZE ]] && echo "within goal" || echo "OVER GOAL")
    stripped=$(file -b "$bin" | grep -o 'not stripped\|stripped' | head -n 1)
    echo "$t: $size bytes ($(mib "$size")), $stripped, $verdict"
done
for pkg in "$root"/target/cross/*.deb "$root"/target/cross/*.tar.gz; do
    if [[ -f $pkg ]]; then
        echo "$(basename "$pkg"): $(stat -c %s "$pkg") bytes ($(mib "$(stat -c %s "$pkg")"))"
    fi
done

# ---- 2. peak RSS ----------------------------------------------------------------------------
# A board's data folder holds only its own shard, so the run loads exactly that: write the
# first N training images and labels (and the first TEST_IMAGES test ones) as IDX files
# with their counts rewritten, as a board would have them.
make_shard() {
    local dir=$1 n=$2
    mkdir -p "$dir"
    python3 - "$MNIST" "$dir" "$n" "$TEST_IMAGES" <<'EOF'
import struct, sys
src, dst, n_train, n_test = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for name, n in [("train-images-idx3-ubyte", n_train), ("train-labels-idx1-ubyte", n_train),
                ("t10k-images-idx3-ubyte", n_test), ("t10k-labels-idx1-ubyte", n_test)]:
    with open(f"{src}/{name}", "rb") as f:
        magic, count = struct.unpack(">II", f.read(8))
        ndim = magic & 0xFF
        dims = struct.unpack(f">{ndim - 1}I", f.read(4 * (ndim - 1)))
        if n > count:
            sys.exit(f"{src}/{name} holds {count} items, fewer than the {n} asked for")
        item = 1
        for d in dims:
            item *= d
        body = f.read(n * item)
    with open(f"{dst}/{name}", "wb") as out:
        out.write(struct.pack(">II", magic, n) + struct.pack(f">{ndim - 1}I", *dims) + body)
EOF
}

# Runs a command under GNU time; prints "<peak RSS in KiB> <wall seconds>".
peak_rss() {
    local log=$work/time.$RANDOM
    /usr/bin/time -f '%M %e' -o "$log" "$@" >"$work/last.out" 2>"$work/last.err" ||
        { cat "$work/last.err" >&2; die "failed: $*"; }
    cat "$log"
}

echo
echo "== peak RSS of \`fl-agent train\` at batch 32, 1 epoch (goal <= 100 MiB on the board)"
# The native figures use the workspace release profile (the one `make bench` builds too):
# release-pi differs only by panic = "abort", which changes code size, not the heap.
say "building the native agent (release)"
cargo build -q -p fl-agent --bin fl-agent --release
native=$target_dir/release/fl-agent

make_shard "$work/shard-full" "$SHARD"
say "native training on $SHARD images (a few minutes)"
read -r kb secs < <(peak_rss "$native" train --data "$work/shard-full" --epochs 1 --batch-size 32 --seed 1 --out "$work/m.bin")
acc=$(grep -o 'test accuracy [0-9.]*%' "$work/last.out" | tail -n 1)
verdict=$([[ $kb -le $GOAL_RSS_KB ]] && echo "within goal" || echo "OVER GOAL")
echo "x86_64 native, $SHARD-image shard + $TEST_IMAGES test images: peak RSS $kb KiB ($(mib $((kb * 1024)))), ${secs} s, $acc, $verdict"

make_shard "$work/shard-small" "$EMULATED_SHARD"
read -r kb_small_native secs_small < <(peak_rss "$native" train --data "$work/shard-small" --epochs 1 --batch-size 32 --seed 1 --out "$work/m.bin")
echo "x86_64 native, $EMULATED_SHARD-image shard: peak RSS $kb_small_native KiB ($(mib $((kb_small_native * 1024)))), ${secs_small} s"

aarch64=$target_dir/aarch64-unknown-linux-gnu/$PROFILE/fl-agent
say "emulated aarch64 training on $EMULATED_SHARD images (qemu, minutes)"
read -r kb_small_arm secs_arm < <(peak_rss qemu-aarch64-static -cpu cortex-a53 -L /usr/aarch64-linux-gnu "$aarch64" \
    train --data "$work/shard-small" --epochs 1 --batch-size 32 --seed 1 --out "$work/m.bin")
# qemu's own footprint: the emulator running a command that allocates nothing.
read -r kb_qemu _ < <(peak_rss qemu-aarch64-static -cpu cortex-a53 -L /usr/aarch64-linux-gnu "$aarch64" --version)
echo "aarch64 under qemu, $EMULATED_SHARD-image shard: peak RSS $kb_small_arm KiB ($(mib $((kb_small_arm * 1024)))), ${secs_arm} s; qemu + agent doing nothing (--version): $kb_qemu KiB"
read -r kb_native_idle _ < <(peak_rss "$native" --version)
# How much memory each training image costs: 784 bytes is one copy of its pixels, so the
# ratio says how many copies of the shard are alive at the peak.
per_image=$(awk -v a="$kb" -v b="$kb_small_native" -v n="$SHARD" -v m="$EMULATED_SHARD" \
    'BEGIN { printf "%.0f", (a - b) * 1024 / (n - m) }')
echo "native: $per_image bytes of peak RSS per training image ($(awk -v p="$per_image" 'BEGIN { printf "%.1f", p / 784 }') copies of its 784 pixels)"
# What the board would see: qemu adds its own pages (its heap, the cache of translated
# code), which a board does not have. The --version baseline removes only part of them:
# training runs far more code, so the translated-code cache grows. Comparing working sets
# (training minus the same build doing nothing) on the same small shard and correcting the
# native full-shard figure by the difference therefore gives an upper bound.
estimate=$((kb + (kb_small_arm - kb_qemu) - (kb_small_native - kb_native_idle)))
echo "estimate for aarch64 on a board, $SHARD-image shard: at most about $estimate KiB ($(mib $((estimate * 1024)))) (working sets on $EMULATED_SHARD images: aarch64 under qemu $((kb_small_arm - kb_qemu)) KiB, native $((kb_small_native - kb_native_idle)) KiB)"

# ---- 3. start-up time to the first RPC call ---------------------------------------------------
echo
echo "== time from start to the first JSON-RPC connection (native, $SHARD-image shard)"
if ! "$native" run --help >/dev/null 2>&1; then
    echo "pending: this fl-agent has no \`run\` command yet"
    exit 0
fi
anvil=$root/tests/devnet/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil
[[ -x $anvil ]] || die "anvil not found at $anvil: run \`make setup\`"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$anvil" --host 127.0.0.1 --port "$port" --cache-path "$work/anvil-cache" >"$work/anvil.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q "Listening on" "$work/anvil.log" && break; sleep 0.1; done
grep -q "Listening on" "$work/anvil.log" || die "anvil did not start: $(cat "$work/anvil.log")"
# No contract and no IPFS node: only the start-up is measured, and the agent is stopped
# right after its first connection. The key comes from ETH_PRIVATE_KEY (anvil's first
# development account, a published key) instead of a keystore, so the figure leaves out
# the keystore's scrypt decryption, which a board pays once per start.
cat >"$work/agent.toml" <<EOF
node_id = 1
rpc_url = "http://127.0.0.1:$port"
registry = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
ipfs_api = "http://127.0.0.1:9"
data_dir = "$work/shard-full"
state_dir = "$work/state"
EOF
# strace stamps every execve() and connect() with the wall clock: the first connect() to
# anvil's port is the first RPC call, measured from the execve of the agent.
ETH_PRIVATE_KEY=0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80 \
    timeout 60 strace -f -ttt -e trace=execve,connect -o "$work/strace.log" "$native" run --config "$work/agent.toml" \
    >/dev/null 2>"$work/run.err" &
agent_pid=$!
pids+=("$agent_pid")
for _ in $(seq 600); do
    grep -q "sin_port=htons($port)" "$work/strace.log" 2>/dev/null && break
    kill -0 "$agent_pid" 2>/dev/null || break
    sleep 0.1
done
start=$(awk '/execve\(/ { print $2; exit }' "$work/strace.log")
first=$(awk -v p="sin_port=htons($port)" 'index($0, p) { print $2; exit }' "$work/strace.log")
if [[ -z $first ]]; then
    echo "no connection to the RPC port observed; the agent said: $(tail -n 3 "$work/run.err")"
else
    echo "first connect() to the JSON-RPC endpoint $(awk -v a="$start" -v b="$first" 'BEGIN { printf "%.0f", (b - a) * 1000 }') ms after execve (includes loading the $SHARD-image shard)"
fi
