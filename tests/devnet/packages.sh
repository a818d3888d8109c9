#!/usr/bin/env bash
# The Debian packages every step of the project needs, each named explicitly, and the one
# place that installs them. Nothing may come in as a Recommends (apt-get runs with
# --no-install-recommends), and nothing may be assumed to be on the machine already: a
# fresh Debian 12 or Ubuntu 24.04 with this project's prerequisites (README.md) is enough.
#
#   tests/devnet/packages.sh GROUP...          installs what is missing of those groups
#   tests/devnet/packages.sh --list GROUP...   prints the packages of those groups, one a line
#
# Groups, and the steps that ask for them:
#   build   the host build: cargo links with the system C compiler   (make setup, so every step)
#   node    Node.js and npm for the pinned npm parts                 (make setup, so every step)
#   test    what the tests call besides the above                    (make test)
#   cross   ARM cross linkers, their C libraries, qemu, packaging    (make cross, make test)
#   bench   the benchmarks' tools                                    (make bench-cross, bench-vs-keras)
#   fresh   a clean Debian root for `make check-fresh`
#
# A package counts as present when dpkg says it is installed. Node.js is the exception: a
# machine may already run another build of it (NodeSource's, or one from nvm), and Debian's
# npm would fight with that one, so any `node` >= 18 with its `npm` on PATH is accepted and
# Debian's nodejs and npm are installed only when there is none.
# NO_INSTALL=1 never calls apt-get: it fails, naming what is missing.
set -euo pipefail

# Node.js 18 is what Debian 12 (18.20) and Ubuntu 24.04 (18.19) ship; the pinned js-ipfs
# tree, solc-js and anvil's npm package all run on it.
NODE_MIN_MAJOR=18

packages_of() {
    case $1 in
        # gcc and libc6-dev: cargo's linker and the C start files (no build-essential: g++
        # and dpkg-dev are not needed). git: the packages' timestamps; the tests' clones.
        build) echo gcc libc6-dev make git ca-certificates coreutils ;;
        node)  echo nodejs npm ;;
        # procps: `kill`, which the tests' process guards use to stop node groups.
        # chromium: the dashboard test loads the aggregator's page in it, headless.
        # systemd: systemd-analyze verifies both units and scores their hardening (cross.rs).
        # (promtool comes from Debian's prometheus package too, but unpacked, not installed:
        # see unpack_promtool below.)
        # python3 and python3-venv: the export test runs onnxruntime and numpy from a venv.
        test)  echo procps chromium systemd python3 python3-venv ;;
        # The cross gcc packages only *recommend* the target's C library headers and start
        # files (Scrt1.o, crti.o): without libc6-dev-*-cross nothing links.
        cross) echo gcc-aarch64-linux-gnu libc6-dev-arm64-cross binutils-aarch64-linux-gnu \
                    gcc-arm-linux-gnueabihf libc6-dev-armhf-cross binutils-arm-linux-gnueabihf \
                    qemu-user-static binutils dpkg python3 ;;
        # time: GNU time for peak memory; strace: the start-up budget; python3-venv: Keras.
        bench) echo time strace python3 python3-venv ;;
        fresh) echo debootstrap mount ;;
        *) echo "packages: unknown group '$1' (build, node, test, cross, bench, fresh)" >&2; return 1 ;;
    esac
}

say() { printf 'packages: %s\n' "$*" >&2; }

installed() { [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]; }

node_is_enough() {
    command -v node >/dev/null && command -v npm >/dev/null || return 1
    local major
    major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null) || return 1
    ((major >= NODE_MIN_MAJOR))
}

list=0
if [[ ${1:-} == --list ]]; then list=1; shift; fi
(($#)) || { echo "usage: tests/devnet/packages.sh [--list] GROUP... (build, node, test, cross, bench, fresh)" >&2; exit 2; }

wanted=()
for group in "$@"; do
    names=$(packages_of "$group") || exit 2
    read -ra pkgs <<<"$names"
    if ((list)); then printf '%s\n' "${pkgs[@]}"; continue; fi
    if [[ $group == node ]]; then
        node_is_enough && continue
        if command -v node >/dev/null; then
            say "node $(node --version 2>/dev/null || echo '(unreadable version)') is older than $NODE_MIN_MAJOR or has no npm: installing Debian's nodejs and npm"
        fi
    fi
    command -v dpkg-query >/dev/null || {
        say "no dpkg-query: this is not a Debian or Ubuntu machine; install the equivalents of: ${pkgs[*]}"
        exit 1
    }
    for p in "${pkgs[@]}"; do installed "$p" || wanted+=("$p"); done
done
# promtool, which checks the aggregator's /metrics exposition, ships only in Debian's
# prometheus package; installing that package would also enable and start a Prometheus
# server on this machine. The test group unpacks the package's files into the
# workspace's target/tools/prometheus instead (the tests look there first), once.
root=$(cd "$(dirname "$0")/../.." && pwd)
PROMTOOL_DIR=$root/target/tools/prometheus
unpack_promtool() {
    [[ -x $PROMTOOL_DIR/usr/bin/promtool ]] && return 0
    [[ -z ${NO_INSTALL:-} ]] || { say "promtool missing (NO_INSTALL is set): it comes from Debian's prometheus package"; exit 1; }
    command -v apt-get >/dev/null || { say "promtool missing and no apt-get to download Debian's prometheus package"; exit 1; }
    local tmp
    tmp=$(mktemp -d)
    say "unpacking promtool from Debian's prometheus package into $PROMTOOL_DIR"
    # apt-get download needs no root, but package lists that know the package (a fresh
    # container has none until apt-get update, which does).
    if ! { (cd "$tmp" && apt-get download -qq prometheus) ||
           { "${sudo[@]}" apt-get update -qq && (cd "$tmp" && apt-get download -qq prometheus); }; } >"$tmp/log" 2>&1; then
        tail -n 20 "$tmp/log" >&2
        rm -rf "$tmp"
        say "could not download Debian's prometheus package (for promtool)"
        exit 1
    fi
    mkdir -p "$PROMTOOL_DIR"
    dpkg-deb -x "$tmp"/prometheus_*.deb "$PROMTOOL_DIR"
    rm -rf "$tmp"
    "$PROMTOOL_DIR/usr/bin/promtool" --version >/dev/null 2>&1 || { say "the unpacked $PROMTOOL_DIR/usr/bin/promtool does not run"; exit 1; }
}
wants_promtool=0
for group in "$@"; do [[ $group == test ]] && wants_promtool=1; done

if ((list)); then
    ((wants_promtool)) && echo prometheus
    exit 0
fi
sudo=()
if ((EUID != 0)) && { ((${#wanted[@]})) || ((wants_promtool)); }; then
    command -v sudo >/dev/null || { say "installing ${wanted[*]:-promtool} needs root: run as root or install sudo"; exit 1; }
    sudo=(sudo)
fi
if ((${#wanted[@]})); then
    [[ -z ${NO_INSTALL:-} ]] || { say "missing Debian packages (NO_INSTALL is set): ${wanted[*]}"; exit 1; }
    command -v apt-get >/dev/null || { say "missing ${wanted[*]} and there is no apt-get to install them"; exit 1; }
    say "installing ${wanted[*]}"
    # apt's output goes to a log, shown only when it fails: dpkg prints hundreds of lines.
    log=$(mktemp)
    trap 'rm -f "$log"' EXIT
    if ! { "${sudo[@]}" apt-get update -qq &&
           DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${wanted[@]}"; } >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        say "apt-get could not install: ${wanted[*]} (its last lines are above)"
        exit 1
    fi
    say "installed ${wanted[*]}"
fi
((wants_promtool)) && unpack_promtool
exit 0
