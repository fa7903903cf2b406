#!/usr/bin/env bash
# Set-up, step one of every journey: make a fresh Debian bookworm machine able to build a
# Rust-enabled Linux 6.12, build lg.ko against it and boot both under QEMU.
#
# It touches only what it must: one apt source line for bookworm-backports, Debian packages,
# one rustup target, and bindgen-cli installed into the cache (never into the system).
# Every step checks first whether it is already done, so a second run costs a second or two.
set -euo pipefail
. "$(dirname "$0")/common.sh"

# Debian packages the build and the harness use, and why:
#  qemu-system-x86        the machine everything that needs lg.ko runs in (10.x from backports)
#  linux-source-6.12      the host kernel's source, built with CONFIG_RUST=y
#  rustc-web rust-web-src the Rust compiler and core/alloc sources the kernel's Rust is built
#  cargo-web              with (rustup's toolchain is newer than 6.12's kernel crate expects)
#  clang libclang-dev     bindgen's libclang, used by the kernel and by lg.ko's own bindings
#  bc flex bison libelf-dev libssl-dev   the kernel build itself
#  cpio busybox-static    the initramfs: a static shell and its tools
#  e2fsprogs e2fsck-static   the Linux guest's ext4 root disk (mke2fs -d) and, in the VM, the
#                         check of it after the guest ran (a static e2fsck)
#  iproute2               the tap the bench's native Linux boot sends its TCP through
#  rust-web-clippy shellcheck   the lints of `./lguest-dev check`: clippy of the kernel's Rust,
#                         for lg.ko under Kbuild's CLIPPY=1, and the harness scripts' (Debian
#                         marks rust-web-clippy as conflicting with Debian's rustup package,
#                         not with a rustup installed by rustup.rs)
PACKAGES=(qemu-system-x86 linux-source-6.12 rustc-web rust-web-src cargo-web clang libclang-dev
          bc flex bison libelf-dev libssl-dev cpio busybox-static xz-utils rsync rust-web-clippy
          shellcheck gcc libc6-dev e2fsprogs e2fsck-static iproute2)

need_apt=0
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need_apt=1
done

if [ "$need_apt" = 1 ]; then
    [ "$(id -u)" = 0 ] || die "installing packages needs root (run as root, or install: ${PACKAGES[*]})"
    if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
        step "adding bookworm-backports to apt sources"
        echo "deb http://deb.debian.org/debian bookworm-backports main" \
            > /etc/apt/sources.list.d/lguest-rs-backports.list
    fi
    step "apt-get update"
    run_with_progress "$CACHE/setup-apt.log" "apt-get update" apt-get update -qq
    step "installing Debian packages (qemu 10 and linux-source-6.12 from backports)"
    # qemu-system-x86 must come from backports: qemu-utils on these machines already does, and a
    # plain install would ask for mismatched versions.
    run_with_progress "$CACHE/setup-apt.log" "apt-get install (backports)" \
        env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports \
        qemu-system-x86 linux-source-6.12
    run_with_progress "$CACHE/setup-apt.log" "apt-get install" \
        env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${PACKAGES[@]}"
fi

# The kernel build runs bindgen; 6.12 is measured against bindgen-cli 0.70.1.
if [ ! -x "$BINDGEN" ]; then
    step "installing bindgen-cli 0.70.1 into $CACHE/tools (about 2 minutes, once)"
    run_with_progress "$CACHE/setup-bindgen.log" "bindgen-cli install" \
        cargo install --quiet bindgen-cli --version 0.70.1 --locked --root "$CACHE/tools"
fi

# The launcher and the in-VM test runner are static binaries built by rustup's toolchain.
if ! rustup target list --installed 2>/dev/null | grep -q x86_64-unknown-none; then
    step "adding the x86_64-unknown-none target (for guests)"
    rustup target add x86_64-unknown-none >/dev/null
fi

# `./lguest-dev check` formats and lints every crate with rustup's toolchain.
for component in clippy rustfmt; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
        step "adding rustup's $component"
        rustup component add "$component" >/dev/null
    fi
done

ok "set-up complete"
