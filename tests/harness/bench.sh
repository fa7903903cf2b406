#!/usr/bin/env bash
# The null hypercall next to the floor it should be compared with, from one run.
# Usage: bench.sh BZIMAGE INITRAMFS (./lguest-dev bench builds them and calls this).
#
# Under QEMU's TCG a hypercall's cycle count means little alone: the emulator sets the prices (a
# CR3 write flushes its whole software TLB). So two boots, back to back, with the same QEMU
# settings as run-vm.sh:
#   1. the floor probe (tests/guests/floor) as the machine's kernel: int + iretq from ring 0 and
#      from ring 1, a CR3 write, and the floor of any world switch (ring-1 int, two CR3 writes,
#      iretq), each `bench native <name> <cycles>`;
#   2. the host kernel in `lguest.mode=bench`: `lguest-e2e bench` runs the ring-1 guest's
#      nop-loop under lg.ko and times a host null syscall (tests/e2e/src/bench.rs).
# Between them the teaching guest boots natively three times: on the `pc` machine for its
# microbenchmarks and for 30 s of its 1 ms tick (`long-run 30`: how many ticks it loses, which
# lguest-e2e bench counts under lg.ko too), and on `microvm` with QEMU's virtio-mmio disk and
# network card for theirs.
# Prints a table and the two ratios on stdout; exits non-zero, with one line, if a figure is
# missing. Both boots' output is kept in $CACHE/runs/bench-*.log.
set -euo pipefail
. "$(dirname "$0")/common.sh"
[ $# = 2 ] || die "usage: bench.sh BZIMAGE INITRAMFS"
bzimage=$1 initramfs=$2

step "building the floor probe"
CARGO_TARGET_DIR=$CACHE/guests-target cargo_build "the floor probe" --release \
    --manifest-path "$REPO/tests/guests/floor/Cargo.toml" --target x86_64-unknown-none
probe=$CACHE/guests-target/x86_64-unknown-none/release/floor-probe

mkdir -p "$CACHE/runs"
log=$CACHE/runs/bench-$(date +%Y%m%d-%H%M%S).log
step "booting the floor probe in QEMU"
# isa-debug-exit is how the probe ends QEMU; its status (1 when done) is not the verdict: the
# figures are.
slowed timeout --foreground 120 qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 1G \
    -nographic -no-reboot -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
    -kernel "$probe" </dev/null >"$log" 2>&1 || true
step "booting the teaching guest natively: its microbenchmarks"
"$REPO/tests/harness/teaching-guest.sh" --native bench 2>&1 | sed 's/^bench /bench teaching-native /' >>"$log" || true
step "booting the teaching guest natively: 30 s of its 1 ms tick"
# As long as tests/e2e/src/bench.rs's LONG_RUN_SECONDS; its one line becomes three figures.
"$REPO/tests/harness/teaching-guest.sh" --native long-run 30 2>&1 | awk '
    /^long-run: [0-9]+ ticks in [0-9]+ ms, / {
        print "bench teaching-native long-run-ticks " $2
        print "bench teaching-native long-run-ms " $5
        print "bench teaching-native long-run-lost " $NF
    }
    { print }' >>"$log" || true
step "booting the teaching guest natively on microvm with QEMU's virtio devices: their throughput"
"$REPO/tests/harness/teaching-guest.sh" --native-devices bench 2>&1 |
    sed 's/^bench /bench teaching-native-devices /' >>"$log" || true
step "booting the host kernel in QEMU: lguest-e2e bench"
"$REPO/tests/harness/run-vm.sh" "$bzimage" "$initramfs" 600 "lguest.mode=bench" \
    </dev/null >>"$log" 2>&1 || true

# fig SOURCE NAME: the figure's cycles, or nothing. grep -o, as the firmware or the kernel may
# have left a line unfinished just before it.
fig() {
    { tr -d '\r' <"$log" | grep -aoE "bench $1 $2 [0-9]+" || true; } | tail -n 1 | cut -d' ' -f4
}
int0=$(fig native int-iretq) int1=$(fig native int-iretq-ring1) cr3=$(fig native cr3-write)
floor=$(fig native floor) hcall=$(fig lguest nop-hypercall) sys=$(fig host null-syscall)
mmio=$(fig lguest mmio-read)
missing=
[ -n "$int0" ] || missing+=" native:int-iretq"
[ -n "$int1" ] || missing+=" native:int-iretq-ring1"
[ -n "$cr3" ] || missing+=" native:cr3-write"
[ -n "$floor" ] || missing+=" native:floor"
[ -n "$hcall" ] || missing+=" lguest:nop-hypercall"
[ -n "$sys" ] || missing+=" host:null-syscall"
[ -n "$mmio" ] || missing+=" lguest:mmio-read"
if [ -n "$missing" ]; then
    why=$(tr -d '\r' <"$log" | grep -a -m1 'lguest-e2e bench:' || true)
    die "missing figures:$missing${why:+ ($why)}; see $log"
fi

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
# row FIGURE CYCLES [VS_FLOOR]
row() { printf '%-40s %8s' "$1" "$2"; [ -z "${3:-}" ] || printf '    %s' "$3"; echo; }
row figure cycles "vs floor"
row "native: int + iretq (ring 0)" "$int0"
row "native: int + iretq (ring 1 -> 0 -> 1)" "$int1"
row "native: CR3 write" "$cr3"
row "native: world-switch floor" "$floor" "1.00"
row "lguest: null hypercall round trip" "$hcall" "$(ratio "$hcall" "$floor")"
row "lguest: device register read (launcher)" "$mmio" "$(ratio "$mmio" "$floor")"
row "host: null syscall" "$sys" "(hypercall / syscall = $(ratio "$hcall" "$sys"))"
echo "null hypercall / world-switch floor = $(ratio "$hcall" "$floor");" \
    "null hypercall / host null syscall = $(ratio "$hcall" "$sys")"
# The teaching guest, the same image both ways: native (QEMU's kernel) and under lg.ko.
echo
row "teaching guest, per operation" "native" "lg.ko    lg.ko/native"
for name in null-hypercall syscall-int80 syscall-syscall page-fault context-switch timer-interrupt; do
    native=$(fig teaching-native "$name") lguest=$(fig teaching-lguest "$name")
    [ -n "$native" ] && [ -n "$lguest" ] || die "missing teaching-guest figure $name; see $log"
    row "$name" "$native" "$(printf '%8s    %s' "$lguest" "$(ratio "$lguest" "$native")")"
done
echo "(native null-hypercall is the world-switch floor: int, two CR3 writes, iretq at ring 0)"
# The devices: QEMU's own virtio-mmio devices for the native boot (microvm), the launcher's under
# lg.ko; MB/s, so here lg.ko/native below 1 is the slowdown.
echo
row "teaching guest, virtio (MB/s)" "native" "lg.ko    lg.ko/native"
for name in blk-read-mbps blk-write-mbps net-tx-mbps; do
    native=$(fig teaching-native-devices "$name") lguest=$(fig teaching-lguest "$name")
    [ -n "$native" ] && [ -n "$lguest" ] || die "missing device figure $name; see $log"
    row "$name" "$native" "$(printf '%8s    %s' "$lguest" "$(ratio "$lguest" "$native")")"
done
# The tick: ticks served and deadlines that went by unserved, per second of the run, both ways.
# Under TCG the native run loses ticks too; the ratio is what lg.ko changes, and with none lost
# natively there is nothing to divide by.
echo
row "teaching guest, 1 ms tick, per second" "native" "lg.ko    lg.ko/native"
for figure in ticks:served lost:lost; do
    name=${figure%:*}
    native_n=$(fig teaching-native "long-run-$name") native_ms=$(fig teaching-native long-run-ms)
    lguest_n=$(fig teaching-lguest "long-run-$name") lguest_ms=$(fig teaching-lguest long-run-ms)
    [ -n "$native_n" ] && [ -n "$native_ms" ] && [ -n "$lguest_n" ] && [ -n "$lguest_ms" ] ||
        die "missing long-run figure $name; see $log"
    native=$(ratio "$((1000 * native_n))" "$native_ms")
    lguest=$(ratio "$((1000 * lguest_n))" "$lguest_ms")
    vs=-
    [ "$native_n" = 0 ] || vs=$(ratio "$lguest" "$native")
    row "ticks ${figure#*:}" "$native" "$(printf '%8s    %s' "$lguest" "$vs")"
done
ok "bench done (all boots' output: $log)"
