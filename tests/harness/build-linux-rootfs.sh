#!/usr/bin/env bash
# Assemble the Linux guest's initramfs: Debian's static busybox, the guest's init
# (tests/harness/linux-guest/init) and its microbenchmarks (linux-guest/lguest-bench.c, built
# static and cached by the hash of its source), as a gzipped cpio the guest kernel unpacks
# (RD_GZIP).
# Usage: build-linux-rootfs.sh OUT
set -euo pipefail
. "$(dirname "$0")/common.sh"
[ $# = 1 ] || die "usage: build-linux-rootfs.sh OUT"
out=$1

bench_src=$REPO/tests/harness/linux-guest/lguest-bench.c
bench=$CACHE/linux-bench/$(cat "$bench_src" <(gcc --version) | sha256sum | cut -c1-16)/lguest-bench
if [ ! -x "$bench" ]; then
    mkdir -p "$(dirname "$bench")"
    gcc -static -O2 -Wall -Werror -o "$bench.tmp" "$bench_src" || die "building lguest-bench failed"
    mv "$bench.tmp" "$bench"
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,proc,sys,dev,tmp,root,mnt}
cp /bin/busybox "$root/bin/busybox"
cp "$REPO/tests/harness/linux-guest/init" "$root/init"
cp "$bench" "$root/bin/lguest-bench"
(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -9 >"$out"
