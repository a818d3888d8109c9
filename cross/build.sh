#!/usr/bin/env bash
# `make cross` (= `make package`): builds fl-agent for Raspberry Pi boards without Docker,
# and fl-aggregator for servers and 64-bit Pi header nodes, and packages them.
#
#   1. installs (once) and proves Debian's cross linkers, qemu-user-static and the rustup
#      targets (cross/toolchains.sh);
#   2. builds `fl-agent` with the `release-pi` profile (.cargo/config.toml) for
#      aarch64-unknown-linux-gnu (64-bit Raspberry Pi OS) and
#      armv7-unknown-linux-gnueabihf (32-bit Raspberry Pi OS), and `fl-aggregator` for
#      x86_64-unknown-linux-gnu (servers) and aarch64 (Pi 5 header nodes; the tests also
#      compare its `verify` with x86-64's);
#   3. checks each binary: right ELF machine, no glibc symbol newer than Bookworm's 2.36 on
#      the Pi targets, and `--version` answers (under qemu for ARM);
#   4. packages them into target/cross/: fl-agent_<version>_<arch>.deb (arm64, armhf) and
#      fl-agent-<version>-<triple>.tar.gz, and fl-aggregator_<version>_<arch>.deb (amd64,
#      arm64), each with its hardened systemd unit, system user and conffile.
#
# Options (environment): TARGETS="aarch64-unknown-linux-gnu" builds only some Pi targets
# (the amd64 aggregator is always built);
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
# The aggregator: for servers (x86-64, the host's own toolchain) and for 64-bit ARM header
# nodes such as a Pi 5 (cross-linked like the agent; skipped with cross-rs, whose image we
# only configure for the agent).
AGGREGATOR_TARGETS=x86_64-unknown-linux-gnu
if [[ " $TARGETS " == *" aarch64-unknown-linux-gnu "* ]]; then
    if [[ -z ${USE_CROSS_RS:-} ]]; then
        AGGREGATOR_TARGETS+=" aarch64-unknown-linux-gnu"
    else
        say "USE_CROSS_RS: not building or packaging fl-aggregator for aarch64"
    fi
fi
for t in $AGGREGATOR_TARGETS; do
    say "building fl-aggregator for $t (profile $PROFILE)"
    cargo build -p fl-aggregator --bin fl-aggregator --profile "$PROFILE" --target "$t"
done

# `cargo pkgid` prints e.g. path+file:///work/main/agent#fl-agent@0.1.0 (or ...#0.1.0).
version=$(cargo pkgid -p fl-agent | sed 's/.*[#@]//')
[[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+ ]] || die "could not read fl-agent's version from cargo pkgid (got '$version')"

# The config templates must stay valid TOML (tomllib is in Python >= 3.11, as on Bookworm).
if python3 -c 'import tomllib' 2>/dev/null; then
    for template in cross/pkg/agent.toml cross/pkg/fl-aggregator/aggregator.toml; do
        python3 -c 'import sys, tomllib; tomllib.load(open(sys.argv[1], "rb"))' "$template" ||
            die "$template is not valid TOML"
    done
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

# Runs a built binary: natively for the host's own target, under qemu with the target's
# sysroot and oldest supported core for the Pi targets.
run_on() {
    local t=$1 bin=$2
    shift 2
    case $t in
        x86_64-*) "$bin" "$@" ;;
        *) "$(qemu_bin "$t")" -cpu "$(qemu_cpu "$t")" -L "$(sysroot "$t")" "$bin" "$@" ;;
    esac
}

# ---- 3. checks ----------------------------------------------------------------------------
# check_binary NAME TARGET BIN: checks BIN and prints the highest GLIBC version it needs.
check_binary() {
    local name=$1 t=$2 bin=$3 objdump machine glibc ran
    [[ -x $bin ]] || die "$bin was not built"
    objdump=$(tool_prefix "$t")-objdump
    machine=$(readelf -h "$bin" | sed -n 's/^ *Machine: *//p')
    [[ $machine == "$(elf_machine "$t")" ]] || die "$bin is built for $machine, expected $(elf_machine "$t")"
    if [[ $t == armv7-* ]] && ! readelf -h "$bin" | grep -q 'hard-float ABI'; then
        die "$bin does not use the hard-float ABI of armhf"
    fi
    glibc=$(max_glibc "$bin" "$objdump")
    [[ -n $glibc ]] || die "$bin needs no GLIBC symbol version: is it really a glibc binary?"
    # The boards run Raspberry Pi OS Bookworm. A server package needs the glibc of the
    # machine that built it, which its Depends line states (Debian 12 here: 2.36).
    if [[ $t != x86_64-* && $(printf '%s\n%s\n' "$glibc" "$MAX_GLIBC" | sort -V | tail -n 1) != "$MAX_GLIBC" ]]; then
        die "$bin needs GLIBC_$glibc, newer than Raspberry Pi OS Bookworm's $MAX_GLIBC: $("$objdump" -T "$bin" | grep "GLIBC_$glibc" | head -5)"
    fi
    ran=$(run_on "$t" "$bin" --version) || die "$bin --version failed on $t"
    [[ $ran == "$name $version" ]] || die "$bin --version printed '$ran', expected '$name $version'"
    say "$t: $name is $(stat -c %s "$bin") bytes, needs GLIBC_$glibc, --version says: $ran"
    echo "$glibc"
}

# Packages carry the time of the last commit, not of the build, so that rebuilding the same
# commit gives the same archive members (dpkg-deb reads SOURCE_DATE_EPOCH).
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
license=$(sed -n 's/^license = "\(.*\)"/\1/p' Cargo.toml | head -n 1)

# ---- 4. packages --------------------------------------------------------------------------
# build_deb NAME TARGET BIN GLIBC PKGDIR CONFIG DESCRIPTION: the .deb of NAME in $OUT, with
# its binary, PKGDIR/NAME.service, PKGDIR/CONFIG as the conffile /etc/NAME/CONFIG, the
# keystore folder /etc/NAME/keys (0700), PKGDIR's maintainer scripts and the README.
# DESCRIPTION: the synopsis, then the long description's lines, each starting with a space.
build_deb() {
    local name=$1 t=$2 bin=$3 glibc=$4 pkgdir=$5 config=$6 description=$7
    local arch stage deb installed_kb contents f
    arch=$(deb_arch "$t")
    stage=$OUT/stage/$name-$t
    rm -rf "$stage"
    install -D -m 0755 "$bin" "$stage/usr/bin/$name"
    install -D -m 0644 "$pkgdir/$name.service" "$stage/lib/systemd/system/$name.service"
    install -D -m 0644 "$pkgdir/$config" "$stage/etc/$name/$config"
    install -d -m 0700 "$stage/etc/$name/keys"
    install -D -m 0644 cross/README.md "$stage/usr/share/doc/$name/README.md"
    printf '%s %s\nLicense: %s\nThe full text of the license is in /usr/share/common-licenses/Apache-2.0.\n' \
        "$name" "$version" "$license" >"$stage/usr/share/doc/$name/copyright"
    install -d -m 0755 "$stage/DEBIAN"
    install -m 0755 "$pkgdir/postinst" "$pkgdir/prerm" "$pkgdir/postrm" "$stage/DEBIAN/"
    echo "/etc/$name/$config" >"$stage/DEBIAN/conffiles"
    installed_kb=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
    {
        echo "Package: $name"
        echo "Version: $version"
        echo "Architecture: $arch"
        echo "Maintainer: edge-fl maintainers <edge-fl@example.invalid>"
        echo "Installed-Size: $installed_kb"
        echo "Depends: $(deb_depends "$bin" "$glibc"), adduser"
        echo "Section: science"
        echo "Priority: optional"
        echo "Homepage: https://example.invalid/edge-fl"
        echo "Description: $description"
    } >"$stage/DEBIAN/control"
    deb=$OUT/${name}_${version}_${arch}.deb
    dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
    # dpkg-deb checked the control file; check what we meant to ship is in it.
    contents=$(dpkg-deb --contents "$deb")
    for f in "./usr/bin/$name" "./lib/systemd/system/$name.service" "./etc/$name/$config" "./etc/$name/keys/"; do
        grep -q " $f\$" <<<"$contents" || die "$deb lacks $f"
    done
    rm -rf "$stage"
    say "$t: $deb ($(stat -c %s "$deb") bytes)"
}

AGENT_DESCRIPTION="federated learning agent for Raspberry Pi boards
 Trains a small convolutional network on the board's own data, uploads the
 weights to IPFS and records their CID on an Ethereum registry contract, then
 takes the aggregated global model for the next round. Runs as the systemd
 service fl-agent under its own system user; configure
 /etc/fl-agent/agent.toml and put the board's keystore in /etc/fl-agent/keys/,
 then run: systemctl enable --now fl-agent"

AGGREGATOR_DESCRIPTION="federated learning aggregator, the federation's header node
 Follows the registry contract, fetches and checks each learner's update from
 IPFS, combines them with the recorded rule, evaluates and publishes the global
 model, and re-verifies every round it publishes. Serves /healthz, Prometheus
 /metrics and a dashboard when listen is set. Runs as the systemd service
 fl-aggregator under its own system user; configure
 /etc/fl-aggregator/aggregator.toml, put the registry owner's keystore in
 /etc/fl-aggregator/keys/ and the MNIST test set in /var/lib/fl-aggregator/data,
 then run: systemctl enable --now fl-aggregator"

mkdir -p "$OUT"
# Honours CARGO_TARGET_DIR and build.target-dir.
target_dir=$(cargo metadata --no-deps --format-version 1 | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[[ -d $target_dir ]] || die "could not find cargo's target folder (cargo metadata said '$target_dir')"
for t in $TARGETS; do
    bin=$target_dir/$t/$PROFILE/fl-agent
    glibc=$(check_binary fl-agent "$t" "$bin")
    build_deb fl-agent "$t" "$bin" "$glibc" cross/pkg agent.toml "$AGENT_DESCRIPTION"

    # The tarball, for boards without dpkg or for a look inside.
    name=fl-agent-$version-$t
    tdir=$OUT/stage/tar/$name
    rm -rf "$OUT/stage/tar"
    install -D -m 0755 "$bin" "$tdir/fl-agent"
    install -m 0644 cross/pkg/fl-agent.service cross/pkg/agent.toml "$tdir/"
    install -m 0644 cross/README.md "$tdir/README.md"
    tar -C "$OUT/stage/tar" --owner=0 --group=0 --numeric-owner --sort=name --mtime="@$SOURCE_DATE_EPOCH" -cf - "$name" |
        gzip -n -9 >"$OUT/$name.tar.gz"
    rm -rf "$OUT/stage/tar"
    say "$t: $OUT/$name.tar.gz"
done
for t in $AGGREGATOR_TARGETS; do
    bin=$target_dir/$t/$PROFILE/fl-aggregator
    glibc=$(check_binary fl-aggregator "$t" "$bin")
    build_deb fl-aggregator "$t" "$bin" "$glibc" cross/pkg/fl-aggregator aggregator.toml "$AGGREGATOR_DESCRIPTION"
done
rmdir "$OUT/stage" 2>/dev/null || true

# One line per package on stdout: what `make cross` produced.
ls -1 "$OUT"/fl-agent_"$version"_*.deb "$OUT"/fl-agent-"$version"-*.tar.gz "$OUT"/fl-aggregator_"$version"_*.deb
