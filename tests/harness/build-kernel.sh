#!/usr/bin/env bash
# Build the host kernel: Linux 6.12 with CONFIG_RUST=y, configured by host-kernel.config.
#
# The built tree is cached in $CACHE/kernel/<key>, where the key hashes everything that could
# change the result: the source package's version, the config fragment's options, and the
# versions of gcc, rustc and bindgen. A second run with the same inputs builds nothing. Prints the tree's
# path on stdout (lg.ko is built against it; its bzImage is what QEMU boots).
set -euo pipefail
. "$(dirname "$0")/common.sh"

TARBALL=/usr/src/linux-source-6.12.tar.xz
FRAGMENT=$REPO/tests/harness/host-kernel.config
[ -f "$TARBALL" ] || die "no $TARBALL: run tests/harness/setup.sh first"
[ -x "$BINDGEN" ] || die "no bindgen at $BINDGEN: run tests/harness/setup.sh first"

# The fragment's options, not its comments: rewording a reason must not cost a rebuild.
key=$( {
    dpkg-query -W -f='${Version}' linux-source-6.12
    config_options "$FRAGMENT"
    gcc --version | head -n1
    /usr/bin/rustc --version
    "$BINDGEN" --version
} | sha256sum | cut -c1-16)
KDIR=$CACHE/kernel/$key
SRC=$KDIR/linux

# One build per key at a time: a second run waits for the first, and then finds it built.
mkdir -p "$CACHE/kernel"
hold_lock "$CACHE/kernel/$key.lock" "host kernel $key"

if [ -f "$KDIR/built" ]; then
    echo "$SRC"
    exit 0
fi

step "host kernel $key: not cached, building (about 4-8 minutes on 2 cores)"
rm -rf "$KDIR"
mkdir -p "$KDIR"
step "extracting $(basename "$TARBALL")"
tar -C "$KDIR" -xf "$TARBALL"
mv "$KDIR"/linux-source-6.12 "$SRC"

MAKE=(make -C "$SRC" "${KERNEL_RUST_VARS[@]}" BINDGEN="$BINDGEN")

configure_kernel "$SRC" "$FRAGMENT" "${MAKE[@]}"

"${MAKE[@]}" rustavailable >/dev/null || die "the kernel does not accept this Rust toolchain: see 'make rustavailable' in $SRC"

run_with_progress "$KDIR/build.log" "kernel build" "${MAKE[@]}" -j"$(nproc)" bzImage modules
touch "$KDIR/built"
ok "host kernel built: $SRC/arch/x86/boot/bzImage ($(du -k "$SRC/arch/x86/boot/bzImage" | cut -f1) KiB)"
echo "$SRC"
