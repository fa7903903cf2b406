#!/usr/bin/env bash
# Assemble the VM's initramfs: busybox, our init, lg.ko, the launcher and lguest-stat, the
# scenario runner, the guests (BIN_DIR/guests/* as /guests/*), the Linux guest (LINUX_DIR/bzImage,
# its own initramfs, that initramfs with the x86 selftests added, and a root disk, as
# /guests/linux/), e2fsck to check that disk, the host's own bzImage, a kernel the launcher must
# refuse, and a user database.
# Usage: build-initramfs.sh LG_KO BIN_DIR BZIMAGE LINUX_DIR OUT
# An uncompressed cpio: the host kernel unpacks it faster than it would gunzip it under TCG.
set -euo pipefail
. "$(dirname "$0")/common.sh"
[ $# = 5 ] || die "usage: build-initramfs.sh LG_KO BIN_DIR BZIMAGE LINUX_DIR OUT"
lg_ko=$1 bin=$2 bzimage=$3 linux=$4 out=$5

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,lib/modules,boot,guests/linux,proc,sys,dev,tmp}
cp /bin/busybox "$root/bin/busybox"
cp "$REPO/tests/harness/initramfs/init" "$root/init"
cp "$lg_ko" "$root/lib/modules/lg.ko"
cp "$bin/lguest-launcher" "$bin/lguest-stat" "$bin/lguest-e2e" "$root/bin/"
cp "$bin"/guests/* "$root/guests/"
cp "$linux/bzImage" "$root/guests/linux/bzImage"
"$REPO/tests/harness/build-linux-rootfs.sh" "$root/guests/linux/initramfs.cpio.gz"
"$REPO/tests/harness/build-linux-diskroot.sh" "$root/guests/linux/root.ext4.gz"
cp /sbin/e2fsck.static "$root/bin/e2fsck"
# The same with the kernel's x86 selftests added (linux-selftests-x86): Linux unpacks the
# overlay's gzipped cpio after the first one's.
"$REPO/tests/harness/build-x86-selftests.sh" "$root/selftests.cpio.gz"
cat "$root/guests/linux/initramfs.cpio.gz" "$root/selftests.cpio.gz" \
    >"$root/guests/linux/initramfs-selftests.cpio.gz"
rm "$root/selftests.cpio.gz"
cp "$bzimage" "$root/boot/bzImage"
# A user database, for the launcher's --user (launcher-confined): root, and nobody in its own
# group, numbered as Debian numbers them. nsswitch.conf keeps the static launcher's C library to
# these files, with no module to load.
mkdir -p "$root/etc"
printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
printf 'passwd: files\ngroup: files\n' >"$root/etc/nsswitch.conf"
(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet) >"$out"
