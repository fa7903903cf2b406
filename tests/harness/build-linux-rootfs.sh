#!/usr/bin/env bash
# Assemble the Linux guest's initramfs: Debian's static busybox, the guest's init
# (tests/harness/linux-guest/init) and memwork (linux-guest/memwork.c, built static here: the
# load scenarios' memory checks), as a gzipped cpio the guest kernel unpacks (RD_GZIP).
# Usage: build-linux-rootfs.sh OUT
set -euo pipefail
. "$(dirname "$0")/common.sh"
[ $# = 1 ] || die "usage: build-linux-rootfs.sh OUT"
out=$1

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,proc,sys,dev,tmp,root,mnt}
cp /bin/busybox "$root/bin/busybox"
cp "$REPO/tests/harness/linux-guest/init" "$root/init"
gcc -static -O2 -Wall -Wextra -Werror -o "$root/bin/memwork" "$REPO/tests/harness/linux-guest/memwork.c"
(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -9 >"$out"
