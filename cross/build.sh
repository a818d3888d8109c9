#!/usr/bin/env bash
# `make cross`: builds fl-agent for Raspberry Pi boards without Docker and packages it.
#
#   1. installs (once) and proves Debian's cross linkers, qemu-user-static and the rustup
#      targets (cross/toolchains.sh);
#   2. builds `fl-agent` with the `release-pi` profile (.cargo/config.toml) for
#      aarch64-unknown-linux-gnu (64-bit Raspberry Pi OS) and
#      armv7-unknown-linux-gnueabihf (32-bit Raspberry Pi OS), and `fl-aggregator` for
#      aarch64 (so `verify` runs on 64-bit ARM; the tests compare it with x86-64);
#   3. checks each binary: right ELF machine, no glibc symbol newer than Bookworm's 2.36,
#      and `--version` answers under qemu;
#   4. packages each into target/cross/: fl-agent_<version>_<arch>.deb and
#      fl-agent-<version>-<triple>.tar.gz.
#
# Options (environment): TARGETS="aarch64-unknown-linux-gnu" builds only some targets;
# NO_INSTALL=1 never calls apt-get or rustup (fails instead if something is missing);
# USE_CROSS_RS=1 builds with cross-rs in Docker (cross/Cross.toml) instead of the Debian
# cross linkers (which are installed all the same: qemu runs the result from their sysroots).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

PROFILE=release-pi
# Raspberry Pi OS Bookworm ships glibc 2.36: no binary may need a newer symbol version.
MAX_GLIBC=2.36
OUT=$root/target/cross

say() { printf 'cross: %s\n' "$*" >&2; }
die() { printf 'cross: error: %s\n' "$*" >&2; exit 1; }

source cross/targets.sh
TARGETS=${TARGETS:-$PI_TARGETS}

# ---- 1. toolchains (idempotent) ----------------------------------------------------------
# cross/toolchains.sh installs Debian's cross linkers with their C libraries, qemu and the
# packaging tools (tests/devnet/packages.sh names each one), adds the rustup targets, and links
# and runs a hello-world for each target, so a broken toolchain fails here with the package
# to install. With cross-rs the linkers live in Docker, but qemu's -L sysroots and the
# targets' objdump still come from the Debian packages, so the same step runs.
TARGETS=$TARGETS bash cross/toolchains.sh

# ---- 2. build -------------------------------------------------------------------------------
for t in $TARGETS; do
    say "building fl-agent for $t (profile $PROFILE; the first build with fat LTO takes minutes)"
    if [[ -n ${USE_CROSS_RS:-} ]]; then
        command -v cross >/dev/null || die "USE_CROSS_RS is set but cross is not installed (cargo install cross)"
        CROSS_CONFIG=${CROSS_CONFIG:-$root/cross/Cross.toml} \
            cross build -p fl-agent --bin fl-agent --profile "$PROFILE" --target "$t"
    else
        cargo build -p fl-agent --bin fl-agent --profile "$PROFILE" --target "$t"
    fi
done
# The verifier for 64-bit ARM machines (a third party checking rounds on another CPU; the
# tests run its re-computation under qemu and compare it with x86-64's). Not packaged.
if [[ " $TARGETS " == *" aarch64-unknown-linux-gnu "* && -z ${USE_CROSS_RS:-} ]]; then
    say "building fl-aggregator for aarch64-unknown-linux-gnu (verify on 64-bit ARM)"
    cargo build -p fl-aggregator --bin fl-aggregator --profile "$PROFILE" --target aarch64-unknown-linux-gnu
fi

# `cargo pkgid` prints e.g. path+file:///work/main/agent#fl-agent@0.1.0 (or ...#0.1.0).
version=$(cargo pkgid -p fl-agent | sed 's/.*[#@]//')
[[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+ ]] || die "could not read fl-agent's version from cargo pkgid (got '$version')"

# The config template must stay valid TOML (tomllib is in Python >= 3.11, as on Bookworm).
if python3 -c 'import tomllib' 2>/dev/null; then
    python3 -c 'import sys, tomllib; tomllib.load(open(sys.argv[1], "rb"))' cross/pkg/agent.toml ||
        die "cross/pkg/agent.toml is not valid TOML"
fi

# Highest GLIBC_x.y symbol version an ELF file needs, or nothing if it needs none
# ($2: the target's objdump).
max_glibc() {
    "$2" -T "$1" | { grep -o 'GLIBC_[0-9][0-9.]*' || true; } | sed 's/GLIBC_//' | sort -uV | tail -n 1
}

# Debian package for each shared library the binary links; an unknown one stops the build
# so that the .deb never silently misses a dependency.
deb_depends() {
    local bin=$1 glibc=$2 libs=() lib
    mapfile -t libs < <(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
    local deps=("libc6 (>= $glibc)")
    for lib in "${libs[@]}"; do
        case $lib in
            libc.so.6|libm.so.6|libdl.so.2|libpthread.so.0|librt.so.1|ld-linux*.so.*) ;;
            libgcc_s.so.1) deps+=("libgcc-s1") ;;
            *) die "$bin links $lib, which cross/build.sh does not know the Debian package of" ;;
        esac
    done
    local IFS=,
    echo "${deps[*]}" | sed 's/,/, /g'
}

# Packages carry the time of the last commit, not of the build, so that rebuilding the same
# commit gives the same archive members (dpkg-deb reads SOURCE_DATE_EPOCH).
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
license=$(sed -n 's/^license = "\(.*\)"/\1/p' Cargo.toml | head -n 1)

mkdir -p "$OUT"
# Honours CARGO_TARGET_DIR and build.target-dir.
target_dir=$(cargo metadata --no-deps --format-version 1 | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[[ -d $target_dir ]] || die "could not find cargo's target folder (cargo metadata said '$target_dir')"
for t in $TARGETS; do
    bin=$target_dir/$t/$PROFILE/fl-agent
    arch=$(deb_arch "$t")
    [[ -x $bin ]] || die "$bin was not built"

    # ---- 3. checks ------------------------------------------------------------------------
    objdump=$(tool_prefix "$t")-objdump
    machine=$(readelf -h "$bin" | sed -n 's/^ *Machine: *//p')
    [[ $machine == "$(elf_machine "$t")" ]] || die "$bin is built for $machine, expected $(elf_machine "$t")"
    if [[ $t == armv7-* ]] && ! readelf -h "$bin" | grep -q 'hard-float ABI'; then
        die "$bin does not use the hard-float ABI of armhf"
    fi
    glibc=$(max_glibc "$bin" "$objdump")
    [[ -n $glibc ]] || die "$bin needs no GLIBC symbol version: is it really a glibc binary?"
    if [[ $(printf '%s\n%s\n' "$glibc" "$MAX_GLIBC" | sort -V | tail -n 1) != "$MAX_GLIBC" ]]; then
        die "$bin needs GLIBC_$glibc, newer than Raspberry Pi OS Bookworm's $MAX_GLIBC: $("$objdump" -T "$bin" | grep "GLIBC_$glibc" | head -5)"
    fi
    ran=$("$(qemu_bin "$t")" -cpu "$(qemu_cpu "$t")" -L "$(sysroot "$t")" "$bin" --version) ||
        die "$bin --version failed under $(qemu_bin "$t") -cpu $(qemu_cpu "$t")"
    [[ $ran == "fl-agent $version" ]] || die "$bin --version printed '$ran', expected 'fl-agent $version'"
    size=$(stat -c %s "$bin")
    say "$t: $size bytes, needs GLIBC_$glibc (<= $MAX_GLIBC), qemu -cpu $(qemu_cpu "$t") says: $ran"

    # ---- 4. packages ----------------------------------------------------------------------
    stage=$OUT/stage/$t
    rm -rf "$stage"
    install -D -m 0755 "$bin" "$stage/deb/usr/bin/fl-agent"
    install -D -m 0644 cross/pkg/fl-agent.service "$stage/deb/lib/systemd/system/fl-agent.service"
    install -D -m 0644 cross/pkg/agent.toml "$stage/deb/etc/fl-agent/agent.toml"
    install -d -m 0700 "$stage/deb/etc/fl-agent/keys"
    install -D -m 0644 cross/README.md "$stage/deb/usr/share/doc/fl-agent/README.md"
    printf 'fl-agent %s\nLicense: %s\nThe full text of the license is in /usr/share/common-licenses/Apache-2.0.\n' \
        "$version" "$license" >"$stage/deb/usr/share/doc/fl-agent/copyright"
    install -d -m 0755 "$stage/deb/DEBIAN"
    install -m 0755 cross/pkg/postinst cross/pkg/prerm cross/pkg/postrm "$stage/deb/DEBIAN/"
    echo /etc/fl-agent/agent.toml >"$stage/deb/DEBIAN/conffiles"
    installed_kb=$(du -sk --exclude=DEBIAN "$stage/deb" | cut -f1)
    cat >"$stage/deb/DEBIAN/control" <<EOF
Package: fl-agent
Version: $version
Architecture: $arch
Maintainer: edge-fl maintainers <edge-fl@example.invalid>
Installed-Size: $installed_kb
Depends: $(deb_depends "$bin" "$glibc"), adduser
Section: science
Priority: optional
Homepage: https://example.invalid/edge-fl
Description: federated learning agent for Raspberry Pi boards
 Trains a small convolutional network on the board's own data, uploads the
 weights to IPFS and records their CID on an Ethereum registry contract, then
 takes the aggregated global model for the next round. Runs as the systemd
 service fl-agent under its own system user; configure
 /etc/fl-agent/agent.toml and put the board's keystore in /etc/fl-agent/keys/,
 then run: systemctl enable --now fl-agent
EOF
    deb=$OUT/fl-agent_${version}_${arch}.deb
    dpkg-deb --root-owner-group -Zxz --build "$stage/deb" "$deb" >/dev/null
    # dpkg-deb checked the control file; check what we meant to ship is in it.
    contents=$(dpkg-deb --contents "$deb")
    for f in ./usr/bin/fl-agent ./lib/systemd/system/fl-agent.service ./etc/fl-agent/agent.toml ./etc/fl-agent/keys/; do
        grep -q " $f\$" <<<"$contents" || die "$deb lacks $f"
    done

    name=fl-agent-$version-$t
    tdir=$stage/tar/$name
    install -D -m 0755 "$bin" "$tdir/fl-agent"
    install -m 0644 cross/pkg/fl-agent.service cross/pkg/agent.toml "$tdir/"
    install -m 0644 cross/README.md "$tdir/README.md"
    tar -C "$stage/tar" --owner=0 --group=0 --numeric-owner --sort=name --mtime="@$SOURCE_DATE_EPOCH" -cf - "$name" |
        gzip -n -9 >"$OUT/$name.tar.gz"
    rm -rf "$stage"
    say "$t: $deb and $OUT/$name.tar.gz"
done
rmdir "$OUT/stage" 2>/dev/null || true

# One line per package on stdout: what `make cross` produced.
ls -1 "$OUT"/fl-agent_"$version"_*.deb "$OUT"/fl-agent-"$version"-*.tar.gz
