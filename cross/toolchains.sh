#!/usr/bin/env bash
# Installs (once) and proves the Raspberry Pi cross toolchains, before anything is built
# with them: for each target, a C hello-world and a Rust hello-world are linked with the
# target's gcc and run under qemu. A broken toolchain then fails here, naming the Debian
# package to install, instead of failing minutes later in a cargo build with a linker dump.
# Used by cross/build.sh (make cross, make test) and by make check-fresh.
#
# Options (environment): TARGETS (default: both Pi targets); NO_INSTALL=1 never calls
# apt-get or rustup; NO_RUST=1 proves the C side only (a machine without Rust's targets);
# NO_PACKAGES=1 asks no package manager and proves whatever toolchains are on PATH (a
# machine that is not Debian, or toolchains installed some other way).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'cross: %s\n' "$*" >&2; }
die() { printf 'cross: error: %s\n' "$*" >&2; exit 1; }

source cross/targets.sh
TARGETS=${TARGETS:-$PI_TARGETS}

# ---- packages and rustup targets (idempotent) ---------------------------------------------
[[ -n ${NO_PACKAGES:-} ]] || bash tests/devnet/packages.sh cross

if [[ -z ${NO_RUST:-} ]]; then
    if command -v rustup >/dev/null; then
        installed_targets=$(rustup target list --installed)
        for t in $TARGETS; do
            grep -qx "$t" <<<"$installed_targets" && continue
            [[ -z ${NO_INSTALL:-} ]] || die "rust target $t missing (NO_INSTALL is set): rustup target add $t"
            say "rustup target add $t"
            rustup target add "$t" >&2
        done
    fi
fi

# ---- proofs --------------------------------------------------------------------------------
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf '#include <stdio.h>\nint main(void) { puts("hello from C"); return 0; }\n' >"$work/hello.c"
printf 'fn main() { println!("hello from Rust"); }\n' >"$work/hello.rs"

# Runs "$@", and on failure stops with what failed, the hint and the first lines it printed.
prove() {
    local what=$1 hint=$2 log=$work/log
    shift 2
    if ! "$@" >"$log" 2>&1; then
        die "$what failed: $hint
  command: $*
$(head -n 8 "$log" | sed 's/^/  | /')"
    fi
}

for t in $TARGETS; do
    gcc=$(cross_gcc "$t")
    pkgs=$(gcc_pkgs "$t")
    qemu=$(qemu_bin "$t")
    command -v "$gcc" >/dev/null || die "$gcc not found: install the Debian packages $pkgs"
    prove "linking a C hello-world for $t with $gcc" \
        "the C start files or libc are missing; install the Debian packages $pkgs (apt-get install --no-install-recommends $pkgs)" \
        "$gcc" -o "$work/hello-c-$t" "$work/hello.c"
    prove "running the C hello-world for $t under $qemu" "install the Debian package qemu-user-static" \
        "$qemu" -L "$(sysroot "$t")" "$work/hello-c-$t"
    if [[ -z ${NO_RUST:-} ]]; then
        # rustc alone, no crates: the exact link step cargo performs for fl-agent.
        prove "linking a Rust hello-world for $t with $gcc" \
            "check that rustc has the target (rustup target add $t) and that $pkgs are installed" \
            rustc --edition 2021 --target "$t" -C "linker=$gcc" -o "$work/hello-rs-$t" "$work/hello.rs"
        prove "running the Rust hello-world for $t under $qemu" "install the Debian package qemu-user-static" \
            "$qemu" -L "$(sysroot "$t")" "$work/hello-rs-$t"
    fi
    say "$t: $gcc links and $qemu runs a hello-world$([[ -n ${NO_RUST:-} ]] && echo ' (C only)' || echo ' (C and Rust)')"
done
