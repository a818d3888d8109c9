# Sourced by the cross scripts: what each Raspberry Pi target is made of, said once.
# Per target: Debian architecture, cross gcc and the Debian packages that make it link (the
# gcc alone is not enough: the C start files are in libc6-dev-*-cross, a mere Recommends),
# its sysroot (for qemu -L), binutils prefix, qemu binary and the oldest core we support
# (qemu's model of it, so an instruction that core lacks fails here), and the ELF machine.
PI_TARGETS="aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf"
# x86_64 appears only where the aggregator's server package needs it (deb_arch, tool_prefix, elf_machine).
deb_arch()   { case $1 in aarch64-*) echo arm64;; armv7-*) echo armhf;; x86_64-*) echo amd64;; *) die "unknown target $1";; esac; }
cross_gcc()  { case $1 in aarch64-*) echo aarch64-linux-gnu-gcc;; armv7-*) echo arm-linux-gnueabihf-gcc;; *) die "unknown target $1";; esac; }
gcc_pkgs()   { case $1 in aarch64-*) echo gcc-aarch64-linux-gnu libc6-dev-arm64-cross;; armv7-*) echo gcc-arm-linux-gnueabihf libc6-dev-armhf-cross;; *) die "unknown target $1";; esac; }
sysroot()    { case $1 in aarch64-*) echo /usr/aarch64-linux-gnu;; armv7-*) echo /usr/arm-linux-gnueabihf;; *) die "unknown target $1";; esac; }
tool_prefix(){ case $1 in aarch64-*) echo aarch64-linux-gnu;; armv7-*) echo arm-linux-gnueabihf;; x86_64-*) echo x86_64-linux-gnu;; *) die "unknown target $1";; esac; }
qemu_bin()   { case $1 in aarch64-*) echo qemu-aarch64-static;; armv7-*) echo qemu-arm-static;; *) die "unknown target $1";; esac; }
qemu_cpu()   { case $1 in aarch64-*) echo cortex-a53;; armv7-*) echo cortex-a7;; *) die "unknown target $1";; esac; }
elf_machine(){ case $1 in aarch64-*) echo "AArch64";; armv7-*) echo "ARM";; x86_64-*) echo "Advanced Micro Devices X86-64";; *) die "unknown target $1";; esac; }
