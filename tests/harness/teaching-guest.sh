#!/usr/bin/env bash
# The teaching guest (guest/) and its paravirt-ops crate (paravirt-ops/): build both, and
# optionally boot the guest natively in QEMU.
# Usage: teaching-guest.sh                        build, and print the guest ELF's path
#        teaching-guest.sh --native               build, boot it as QEMU's kernel (PVH entry):
#                                                 the self-tests
#        teaching-guest.sh --native bench         ... the microbenchmarks
#        teaching-guest.sh --native long-run SECS ... two tasks under a 1 ms tick for SECS seconds
#
# The words after --native are the guest's command line (QEMU's -append); under lg.ko the same
# words follow the kernel on the launcher's command line (`lguest-launcher 64m teaching-guest
# bench`). The native boot runs under the same QEMU settings as the test VM (run-vm.sh), so
# that bench figures from the two worlds compare. The guest ends QEMU through isa-debug-exit:
# status 1 when it succeeded, 3 when it failed or panicked; anything else (124: the timeout)
# means it never got that far. The guest's own output goes to stdout; the exit status of this
# script is 0 only if QEMU said "succeeded" and the mode's last line is there and good:
#   self-tests  `selftests: N passed, 0 failed`
#   bench       `bench done`, after one `bench <name> <cycles>` line per microbenchmark
#   long-run    `long-run: T ticks in M ms, tasks ran A and B times, lost L`, and
#               `frames: F free before the run, F after`
# The whole serial output, firmware included, is kept in $CACHE/runs/teaching-guest-native-*.log.
# (Under lg.ko the same ELF is booted by lguest-launcher: lguest-dev/e2e wire that run.)
set -euo pipefail
. "$(dirname "$0")/common.sh"

mode=none seconds=0
case "${1:-} ${2:-} ${3:-}" in
"  ") ;;
"--native  ") mode=selftests ;;
"--native bench ") mode=bench ;;
"--native long-run "*)
    seconds=${3:-}
    [[ $seconds =~ ^[1-9][0-9]*$ ]] || die "long-run wants a number of seconds, not '$seconds'"
    mode=long-run
    ;;
*) die "usage: teaching-guest.sh [--native [bench | long-run SECONDS]]" ;;
esac
[ $# -le 3 ] || die "usage: teaching-guest.sh [--native [bench | long-run SECONDS]]"

# Both crates are kernels' code, built for bare x86-64 in a target directory of their own.
export CARGO_TARGET_DIR=$CACHE/guests-target
step "building paravirt-ops and the teaching guest"
cargo build --quiet --release --manifest-path "$REPO/paravirt-ops/Cargo.toml" \
    --target x86_64-unknown-none >&2 || die "building paravirt-ops failed"
cargo build --quiet --release --manifest-path "$REPO/guest/Cargo.toml" \
    --target x86_64-unknown-none >&2 || die "building the teaching guest failed"
elf=$CARGO_TARGET_DIR/x86_64-unknown-none/release/teaching-guest

if [ "$mode" = none ]; then
    echo "$elf"
    exit 0
fi
shift
cmdline="$*"

mkdir -p "$CACHE/runs"
log=$CACHE/runs/teaching-guest-native-$mode-$(date +%Y%m%d-%H%M%S).log
step "booting the teaching guest natively in QEMU${cmdline:+: $cmdline}"
status=0
timeout --foreground $((120 + seconds)) qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 1G \
    -nographic -no-reboot -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
    -kernel "$elf" -append "$cmdline" </dev/null >"$log" 2>&1 || status=$?
# The guest's output, without the firmware's: it starts right after SeaBIOS's last words.
output=$(tr -d '\r' <"$log" | sed -n '/Booting from ROM\.\./,$p' | sed 's/^.*Booting from ROM\.\.//')
echo "$output"

case $mode in
selftests)
    last=$(grep -ao 'selftests: [0-9]* passed, [0-9]* failed' <<<"$output" | tail -n 1 || true)
    good() { [[ $last == *", 0 failed" ]]; }
    ;;
bench)
    last=$(grep -ax 'bench done' <<<"$output" || true)
    figures=$(grep -acE '^bench [a-z0-9-]+ [0-9]+$' <<<"$output" || true)
    good() { [ -n "$last" ] && [ "$figures" -gt 0 ]; }
    ;;
long-run)
    last=$(grep -aE '^long-run: [0-9]+ ticks in [0-9]+ ms, tasks ran [0-9]+ and [0-9]+ times, lost [0-9]+$' <<<"$output" || true)
    frames=$(grep -aE '^frames: [0-9]+ free before the run, [0-9]+ after$' <<<"$output" || true)
    good() { [ -n "$last" ] && [ -n "$frames" ] && [ "$(cut -d' ' -f2 <<<"$frames")" = "$(cut -d' ' -f7 <<<"$frames")" ]; }
    ;;
esac
case $status in
1) good || die "QEMU said the guest succeeded, but its $mode output ends badly: '${last:-missing}' (log: $log)" ;;
3) die "the teaching guest reported failure in $mode mode: ${last:-no last line, a panic?} (log: $log)" ;;
124) die "the teaching guest did not finish within $((120 + seconds)) s (log: $log)" ;;
*) die "QEMU exited with status $status before the guest finished (log: $log)" ;;
esac
ok "teaching guest, native, $mode: ${last}${frames:+; $frames}"
