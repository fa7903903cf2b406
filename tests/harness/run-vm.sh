#!/usr/bin/env bash
# Boot the host kernel with an initramfs in QEMU (TCG: KVM does not work on these machines).
# Usage: run-vm.sh BZIMAGE INITRAMFS TIMEOUT_SECONDS KERNEL_ARGS...
# Serial console on stdio; in an interactive terminal, Ctrl-A X quits as QEMU users expect.
# QEMU always runs under `timeout`, so a hung guest cannot hang the caller; and as LGUEST_SLOWDOWN
# says (common.sh), slowed down.
# 2 GiB of RAM: linux-mm-stress fills a Linux guest of 1 GiB, and lg.ko pins what it fills.
set -euo pipefail
. "$(dirname "$0")/common.sh"
[ $# -ge 3 ] || die "usage: run-vm.sh BZIMAGE INITRAMFS TIMEOUT_SECONDS KERNEL_ARGS..."
bzimage=$1 initramfs=$2 seconds=$3
shift 3
slowed timeout --foreground "$seconds" qemu-system-x86_64 \
    -accel tcg -cpu max -smp 2 -m 2G \
    -nographic -no-reboot \
    -kernel "$bzimage" -initrd "$initramfs" \
    -append "console=ttyS0 panic=-1 quiet $*"
