#!/usr/bin/env bash
# The teaching guest (guest/) and its paravirt-ops crate (paravirt-ops/): build both, and
# optionally boot the guest natively in QEMU.
# Usage: teaching-guest.sh                        build, and print the guest ELF's path
#        teaching-guest.sh --native               build, boot it as QEMU's kernel (PVH entry):
#                                                 the self-tests
#        teaching-guest.sh --native bench         ... the microbenchmarks
#        teaching-guest.sh --native long-run SECS ... two tasks under a 1 ms tick for SECS seconds
#        teaching-guest.sh --native count         ... count mode's workload and its own tally
#        teaching-guest.sh --native-devices       build, boot it on QEMU's microvm machine with
#                                                 four virtio devices: `devices echo`, then a
#                                                 fresh boot with `devices-verify echo`, which
#                                                 reads back the disk the first one wrote
#        teaching-guest.sh --native-devices WORDS ... one boot with that command line:
#                                                 `devices [echo]`, `devices-verify [echo]` or
#                                                 `bench`, then parameters (`ping=10.0.2.3`)
#
# The words after --native are the guest's command line (QEMU's -append); under lg.ko the same
# words follow the kernel on the launcher's command line (`lguest-launcher 64m teaching-guest
# bench`). The native boot runs under the same QEMU settings as the test VM (run-vm.sh), so
# that bench figures from the two worlds compare, and is slowed down as LGUEST_SLOWDOWN says.
# The guest ends QEMU through isa-debug-exit: status 1 when it succeeded, 3 when it failed or
# panicked; anything else (124: the timeout) means it never got that far. The guest's own output
# goes to stdout; the exit status of this script is 0 only if QEMU said "succeeded" and the
# mode's last line is there and good:
#   self-tests  `selftests: N passed, 0 failed`
#   bench       `bench done`, after one `bench <name> <cycles>` line per microbenchmark
#               (with --native-devices also `bench blk-read-mbps`, `blk-write-mbps` and
#               `net-tx-mbps`, each with a figure)
#   long-run    `long-run: T ticks in M ms, tasks ran A and B times, lost L`, and
#               `frames: F free before the run, F after`
#   devices     `devices: N passed, 0 failed` with N > 0, and with `echo` the virtio
#               console's output holding the echo of the line typed on it
#   count       `count: done`, after `count trap 6: 100` (its hundred ud2s)
# The whole serial output, firmware included, is kept in $CACHE/runs/teaching-guest-native-*.log.
# (Under lg.ko the same ELF is booted by lguest-launcher: lguest-dev/e2e wire that run.)
set -euo pipefail
. "$(dirname "$0")/common.sh"

usage="usage: teaching-guest.sh [--native [bench | long-run SECONDS | count] | --native-devices [WORDS]]"
mode=none seconds=0
if [ "${1:-}" = --native-devices ]; then
    case ${2:-devices} in
    devices | devices-verify) mode=devices ;;
    bench) mode=bench ;;
    *) die "$usage" ;;
    esac
else
    case "${1:-} ${2:-} ${3:-}" in
    "  ") ;;
    "--native  ") mode=selftests ;;
    "--native bench ") mode=bench ;;
    "--native count ") mode=count ;;
    "--native long-run "*)
        seconds=${3:-}
        [[ $seconds =~ ^[1-9][0-9]*$ ]] || die "long-run wants a number of seconds, not '$seconds'"
        mode=long-run
        ;;
    *) die "$usage" ;;
    esac
    [ $# -le 3 ] || die "$usage"
fi

# --native-devices: QEMU's microvm machine, a PC without PCI, whose virtio devices sit on MMIO
# transports. Its firmware (Debian's: qboot) boots the PVH entry through QEMU's pvh.bin. The
# i8259 PIC, the PIT, the RTC and COM1 are optional on microvm, and on here; ACPI is off, so that
# QEMU appends a `virtio_mmio.device=512@<base>:<irq>` word per device to the command line (with
# ACPI it would describe them in tables instead); the second IO-APIC is off, so that the eight
# transports keep IRQs 5 to 12, which the PIC has (with it they move to 16-23, an IO-APIC's
# only). Devices take the transports from the top down: the first device on QEMU's command line
# gets 0xfeb00e00 and IRQ 12. The disk is a fresh 8 MiB file, the console's input a FIFO into
# which a line is typed once the prompt is out, the network QEMU's user-mode one (slirp: a
# gateway at 10.0.2.2 that answers ARP and ping).
console_line="hello from teaching-guest.sh"

# devices_boot WORDS...: one microvm boot with that command line, on the disk and console files
# in $dir, checked as its mode wants; dies unless it succeeded.
devices_boot() {
    local cmdline="$*" status=0 last figures log
    log=$CACHE/runs/teaching-guest-native-devices-$1-$(date +%Y%m%d-%H%M%S).log
    rm -f "$dir/console.in"
    mkfifo "$dir/console.in"
    : >"$dir/console.out"
    # The line is typed once the prompt is out, so that the driver must wait for it, asleep until
    # its interrupt. QEMU opens the FIFO at start-up and waits for this writer; the writer keeps
    # it open until it is stopped after QEMU's exit (an end of input would close the port).
    timeout 150 bash -c 'exec 3>"$1"; until grep -q "type a line" "$2"; do sleep 0.2; done
        printf "%s\n" "$3" >&3; sleep 150' _ "$dir/console.in" "$dir/console.out" "$console_line" &
    local typist=$!
    step "booting the teaching guest natively on microvm with virtio devices: $cmdline"
    # 120 s: the two boots took 1.3 s together on 2 shared cores, and 2.9 s with
    # LGUEST_SLOWDOWN=3 (docs/building.md).
    slowed timeout --foreground 120 qemu-system-x86_64 \
        -M microvm,pic=on,pit=on,rtc=on,isa-serial=on,acpi=off,ioapic2=off \
        -accel tcg -cpu max -smp 2 -m 1G -nographic -no-reboot \
        -device isa-debug-exit,iobase=0xf4,iosize=0x04 -kernel "$elf" -append "$cmdline" \
        -device virtio-rng-device \
        -drive if=none,id=disk,format=raw,file="$dir/disk.img" \
        -device virtio-blk-device,drive=disk \
        -chardev "file,id=console,path=$dir/console.out,input-path=$dir/console.in" \
        -device virtio-serial-device -device virtconsole,chardev=console \
        -netdev user,id=net -device virtio-net-device,netdev=net \
        </dev/null >"$log" 2>&1 || status=$?
    kill "$typist" 2>/dev/null || true
    wait "$typist" 2>/dev/null || true
    # qboot prints nothing: the log is the guest's output (and QEMU's complaints, if any).
    local output
    output=$(tr -d '\r' <"$log")
    echo "$output"
    sed 's/^/virtio console: /' "$dir/console.out"
    case $1 in
    bench)
        last=$(grep -ax 'bench done' <<<"$output" || true)
        figures=$(grep -acE '^bench (blk-read|blk-write|net-tx)-mbps [0-9]+$' <<<"$output" || true)
        good() { [ -n "$last" ] && [ "$figures" -eq 3 ]; }
        ;;
    *)
        last=$(grep -ao 'devices: [0-9]* passed, [0-9]* failed' <<<"$output" | tail -n 1 || true)
        good() {
            [[ $last == *" passed, 0 failed" && $last != "devices: 0 passed"* ]] || return 1
            [[ " $cmdline " != *" echo "* ]] || grep -qx "echo: $console_line" "$dir/console.out"
        }
        ;;
    esac
    case $status in
    1) good || die "QEMU said the guest succeeded, but its $1 output ends badly: '${last:-missing}' (log: $log)" ;;
    3) die "the teaching guest reported failure in $1 mode: ${last:-no last line, a panic?} (log: $log)" ;;
    124) die "the teaching guest did not finish within 120 s (log: $log)" ;;
    *) die "QEMU exited with status $status before the guest finished (log: $log)" ;;
    esac
    ok "teaching guest, native on microvm, $cmdline: $last"
}

# native_devices [WORDS...]: one boot with WORDS, or with none `devices echo` and then
# `devices-verify echo`, the second reading back the disk the first wrote.
native_devices() {
    mkdir -p "$CACHE/runs"
    dir=$(mktemp -d)
    trap 'rm -rf "$dir"' EXIT
    truncate -s 8M "$dir/disk.img"
    if [ $# -eq 0 ]; then
        devices_boot devices echo
        devices_boot devices-verify echo
    else
        devices_boot "$@"
    fi
}

# Both crates are kernels' code, built for bare x86-64 in a target directory of their own.
export CARGO_TARGET_DIR=$CACHE/guests-target
step "building paravirt-ops and the teaching guest"
cargo_build paravirt-ops --release --manifest-path "$REPO/paravirt-ops/Cargo.toml" \
    --target x86_64-unknown-none
cargo_build "the teaching guest" --release --manifest-path "$REPO/guest/Cargo.toml" \
    --target x86_64-unknown-none
elf=$CARGO_TARGET_DIR/x86_64-unknown-none/release/teaching-guest

if [ "$mode" = none ]; then
    echo "$elf"
    exit 0
fi
if [ "$1" = --native-devices ]; then
    shift
    native_devices "$@"
    exit 0
fi
shift
cmdline="$*"

mkdir -p "$CACHE/runs"
log=$CACHE/runs/teaching-guest-native-$mode-$(date +%Y%m%d-%H%M%S).log
step "booting the teaching guest natively in QEMU${cmdline:+: $cmdline}"
status=0
# 120 s and a long run's seconds: the self-tests took 0.9 s on 2 shared cores, and 1.4 s with
# LGUEST_SLOWDOWN=3 (docs/building.md).
slowed timeout --foreground $((120 + seconds)) qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 1G \
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
count)
    last=$(grep -ax 'count: done' <<<"$output" || true)
    good() { [ -n "$last" ] && grep -aqx 'count trap 6: 100' <<<"$output"; }
    ;;
esac
case $status in
1) good || die "QEMU said the guest succeeded, but its $mode output ends badly: '${last:-missing}' (log: $log)" ;;
3) die "the teaching guest reported failure in $mode mode: ${last:-no last line, a panic?} (log: $log)" ;;
124) die "the teaching guest did not finish within $((120 + seconds)) s (log: $log)" ;;
*) die "QEMU exited with status $status before the guest finished (log: $log)" ;;
esac
ok "teaching guest, native, $mode: ${last}${frames:+; $frames}"
