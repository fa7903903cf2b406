#!/usr/bin/env bash
# The teaching guest (guest/) and its paravirt-ops crate (paravirt-ops/): build both, and
# optionally boot the guest natively in QEMU.
# Usage: teaching-guest.sh            build, and print the guest ELF's path
#        teaching-guest.sh --native   build, boot it as QEMU's kernel (PVH entry), print its output
#
# The native boot runs under the same TCG settings as the test VM. The guest ends QEMU through
# isa-debug-exit: status 1 when every self-test passed, 3 when one failed or the guest panicked;
# anything else (124: the timeout) means it never got that far. The exit status of this script is
# 0 only if QEMU said "passed" and the guest's summary line says `0 failed`. The whole serial
# output, firmware included, is kept in $CACHE/runs/teaching-guest-native-*.log.
# (Under lg.ko the same ELF is booted by lguest-launcher: lguest-dev/e2e wire that run.)
set -euo pipefail
. "$(dirname "$0")/common.sh"

case ${1:-} in
"" | --native) ;;
*) die "usage: teaching-guest.sh [--native]" ;;
esac

# Both crates are kernels' code, built for bare x86-64 in a target directory of their own.
export CARGO_TARGET_DIR=$CACHE/guests-target
step "building paravirt-ops and the teaching guest"
cargo build --quiet --release --manifest-path "$REPO/paravirt-ops/Cargo.toml" \
    --target x86_64-unknown-none >&2 || die "building paravirt-ops failed"
cargo build --quiet --release --manifest-path "$REPO/guest/Cargo.toml" \
    --target x86_64-unknown-none >&2 || die "building the teaching guest failed"
elf=$CARGO_TARGET_DIR/x86_64-unknown-none/release/teaching-guest

if [ "${1:-}" != --native ]; then
    echo "$elf"
    exit 0
fi

mkdir -p "$CACHE/runs"
log=$CACHE/runs/teaching-guest-native-$(date +%Y%m%d-%H%M%S).log
step "booting the teaching guest natively in QEMU"
status=0
timeout --foreground 120 qemu-system-x86_64 -accel tcg -cpu max -m 256M \
    -nographic -no-reboot -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
    -kernel "$elf" </dev/null >"$log" 2>&1 || status=$?
# The guest's output, without the firmware's: it starts right after SeaBIOS's last words.
tr -d '\r' <"$log" | sed -n '/Booting from ROM\.\./,$p' | sed 's/^.*Booting from ROM\.\.//'

summary=$(tr -d '\r' <"$log" | grep -ao 'selftests: [0-9]* passed, [0-9]* failed' | tail -n 1 || true)
case $status in
1) [[ $summary == *", 0 failed" ]] || die "QEMU said passed, but the summary is '${summary:-missing}' (log: $log)" ;;
3) die "the teaching guest reported failure: ${summary:-no summary, a panic?} (log: $log)" ;;
124) die "the teaching guest did not finish within 120 s (log: $log)" ;;
*) die "QEMU exited with status $status before the guest finished (log: $log)" ;;
esac
ok "teaching guest, native: $summary"
