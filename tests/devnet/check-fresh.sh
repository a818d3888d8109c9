#!/usr/bin/env bash
# `make check-fresh`: proves the project's install steps where nothing is preinstalled.
#
# Builds a minimal Debian 12 root with debootstrap, clones the committed HEAD into it and,
# inside it, with nothing but what the project's own scripts install:
#   1. shows that a cross gcc alone does not link (the missing Recommends of issue 11) and
#      that the toolchain proof names the package to install;
#   2. installs every Debian package of the build, Node.js, test and cross groups
#      (tests/devnet/packages.sh), with Debian's own Node.js;
#   3. proves both cross toolchains (cross/toolchains.sh: a C and a Rust hello-world linked
#      and run under qemu for each Raspberry Pi target);
#   4. runs `make setup` (pinned npm parts, MNIST) and starts one development IPFS node,
#      asking its API for its identity.
# The host's Rust toolchain is bind-mounted read-only (rustc only: no crate is built); the
# apt side comes only from the project's scripts. Not part of `make test`: it downloads a
# Debian base system and about 300 MB of npm packages. Needs root (chroot, mounts).
#
# Options (environment): SUITE=bookworm, MIRROR=http://deb.debian.org/debian, KEEP=1 keeps
# the root folder for a look around afterwards.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

say() { printf 'check-fresh: %s\n' "$*" >&2; }
die() { printf 'check-fresh: error: %s\n' "$*" >&2; exit 1; }
source cross/targets.sh

((EUID == 0)) || die "needs root (debootstrap, chroot and mounts)"
bash tests/devnet/packages.sh fresh
command -v rustc >/dev/null || die "rustc not found: the host's Rust toolchain is mounted into the fresh root (install it with rustup)"
rust_sysroot=$(rustc --print sysroot)
for t in $PI_TARGETS; do
    [[ -d $rust_sysroot/lib/rustlib/$t ]] && continue
    command -v rustup >/dev/null || die "the host's Rust has no $t target and there is no rustup to add it"
    rustup target add "$t" >&2
done

work=$(mktemp -d /var/tmp/fl-check-fresh.XXXXXX)
root=$work/root
mounted=()
cleanup() {
    local i
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[i]}" 2>/dev/null || true; done
    if [[ -n ${KEEP:-} ]]; then say "kept $root"; else rm -rf "$work"; fi
}
trap cleanup EXIT

started=$(date +%s)
phase_start=$started
phase() {
    local now
    now=$(date +%s)
    say "$1 ($((now - phase_start)) s)"
    phase_start=$now
}

say "debootstrap --variant=minbase $SUITE from $MIRROR into $root"
debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 ||
    die "debootstrap failed; its last lines:
$(tail -n 15 "$work/debootstrap.log")"
phase "a minimal $SUITE root is ready"

cp /etc/resolv.conf "$root/etc/resolv.conf"
bind() { mkdir -p "$root$2"; mount "${@:3}" "$1" "$root$2"; mounted+=("$root$2"); }
bind proc /proc -t proc
# /dev with its pts (apt and dpkg want a terminal); rslave so nothing propagates back.
bind /dev /dev --rbind
mount --make-rslave "$root/dev"
mkdir -p "$root/opt/rust"
mount --bind "$rust_sysroot" "$root/opt/rust"
mounted+=("$root/opt/rust")
mount -o remount,bind,ro "$root/opt/rust"
# A site's own CAs (a TLS proxy's, say) are trusted in the root as on the host: Debian's
# ca-certificates adds /usr/local/share/ca-certificates when it is installed in step 2.
if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
fi
git clone --quiet --no-hardlinks "$repo" "$root/src"
say "cloned $(git -C "$root/src" rev-parse --short HEAD) (the committed HEAD: uncommitted changes are not checked)"

# Everything below runs inside the fresh root, with a clean environment.
inside() {
    chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
        NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt \
        PATH=/opt/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        bash -euo pipefail -c "cd /src; $1"
}

# 1. The failure a fresh machine met: the cross gcc without its Recommends.
inside 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc-aarch64-linux-gnu qemu-user-static >/dev/null'
if inside 'NO_PACKAGES=1 NO_RUST=1 TARGETS=aarch64-unknown-linux-gnu bash cross/toolchains.sh' 2>"$work/negative.log"; then
    die "the toolchain proof passed with gcc-aarch64-linux-gnu alone: it no longer detects a missing libc6-dev-arm64-cross"
fi
grep -q 'libc6-dev-arm64-cross' "$work/negative.log" ||
    die "the toolchain proof failed without naming libc6-dev-arm64-cross:
$(cat "$work/negative.log")"
say "without its Recommends the aarch64 gcc does not link, and the proof says: $(grep -m1 'error:' "$work/negative.log")"
phase "checked the failure of a bare cross gcc"

# 2. The project's own install step for every Debian package.
inside 'bash tests/devnet/packages.sh build node test cross'
phase "installed the Debian packages (build, node, test, cross)"

# 3. Both cross toolchains, C and Rust.
inside 'NO_INSTALL=1 bash cross/toolchains.sh'
phase "both cross toolchains link and run a C and a Rust hello-world"

# 4. make setup with Debian's Node.js, and one development IPFS node.
say "Node.js in the fresh root: $(inside 'node --version'), npm $(inside 'npm --version')"
inside 'make setup'
phase "make setup passed"
inside '
    node tests/ipfs-node/launch.mjs --new-swarm-key /tmp/swarm.key >/dev/null
    node tests/ipfs-node/launch.mjs --swarm-key /tmp/swarm.key --repo /tmp/ipfs-repo >/tmp/ipfs.out 2>/tmp/ipfs.err &
    pid=$!
    for _ in $(seq 120); do grep -q "Daemon is ready" /tmp/ipfs.out && break; kill -0 $pid 2>/dev/null || break; sleep 0.5; done
    grep -q "Daemon is ready" /tmp/ipfs.out || { echo "the IPFS node did not start:"; cat /tmp/ipfs.err; kill $pid 2>/dev/null; exit 1; } >&2
    api=$(sed -n "s/^node 0 api //p" /tmp/ipfs.out)
    node -e "fetch(process.argv[1] + \"/api/v0/id\", { method: \"POST\" }).then(r => r.json()).then(j => console.log(\"ipfs node \" + j.ID + \" (\" + j.AgentVersion + \") answers at \" + process.argv[1]))" "$api"
    kill -TERM $pid; wait $pid || true'
phase "a development IPFS node started and answered"
say "passed in $(($(date +%s) - started)) s"
