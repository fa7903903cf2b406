#!/usr/bin/env bash
# Make the Linux guest's root disk for linux-disk-root: an ext4 image whose files are the same
# busybox tree as its initramfs (Debian's static busybox and tests/harness/linux-guest/init),
# made by e2fsprogs' mke2fs -d without mounting anything, and gzipped: the VM's initramfs is
# held in its RAM whole, and 32 MiB of mostly empty image compresses to about a megabyte. The
# scenario unpacks it into the VM's tmpfs, boots the guest on it with root=/dev/vda, and checks
# it with e2fsck afterwards.
# Usage: build-linux-diskroot.sh OUT
set -euo pipefail
. "$(dirname "$0")/common.sh"
[ $# = 1 ] || die "usage: build-linux-diskroot.sh OUT"
out=$1

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"/{bin,proc,sys,dev,tmp,root,mnt}
cp /bin/busybox "$root/bin/busybox"
cp "$REPO/tests/harness/linux-guest/init" "$root/init"
# The files belong to root in the guest whoever builds the image.
mke2fs -q -F -t ext4 -L lguest-root -E root_owner=0:0 -d "$root" "$work/root.ext4" 32M >/dev/null
gzip -9 <"$work/root.ext4" >"$out"
