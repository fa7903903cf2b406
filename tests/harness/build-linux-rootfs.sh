#!/usr/bin/env bash
# Assemble the Linux guest's initramfs: Debian's static busybox, the guest's init
# (tests/harness/linux-guest/init) and two static programs of its own, built here and cached by
# the hash of their source: lguest-bench (linux-guest/lguest-bench.c, the guest's
# microbenchmarks) and memwork (linux-guest/memwork.c, the load scenarios' memory checks); as a
# gzipped cpio the guest kernel unpacks (RD_GZIP).
# Usage: build-linux-rootfs.sh OUT
set -euo pipefail
. "$(dirname "$0")/common.sh"
[ $# = 1 ] || die "usage: build-linux-rootfs.sh OUT"
out=$1

# static_program NAME: linux-guest/NAME.c built static, from the cache when it is there.
static_program() {
    local src=$REPO/tests/harness/linux-guest/$1.c built
    built=$CACHE/linux-programs/$(cat "$src" <(gcc --version) | sha256sum | cut -c1-16)/$1
    if [ ! -x "$built" ]; then
        mkdir -p "$(dirname "$built")"
        gcc -static -O2 -Wall -Wextra -Werror -o "$built.tmp" "$src" || die "building $1 failed"
        mv "$built.tmp" "$built"
    fi
    echo "$built"
}
bench=$(static_program lguest-bench)
memwork=$(static_program memwork)

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,proc,sys,dev,tmp,root,mnt}
cp /bin/busybox "$root/bin/busybox"
cp "$REPO/tests/harness/linux-guest/init" "$root/init"
cp "$bench" "$root/bin/lguest-bench"
cp "$memwork" "$root/bin/memwork"
(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -9 >"$out"
