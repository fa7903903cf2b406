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
# network card for theirs; and so does the Linux guest, once, on microvm with a scratch disk and a
# network card on a tap (linux-native.sh --disk --net: its TCP peer runs on this machine, in a
# network namespace of its own), for the Linux table's native column.
# All of it runs RUNS times (default 3), the boots of one run back to back, so that native and
# lg.ko figures always come from the same minutes. Under TCG one run's figures move by a third
# from one run to the next; so every figure is printed as the median of the runs with its spread
# (lowest-highest), and every ratio with the range the runs allow. A change is a change only
# where the before and after ranges do not overlap.
# Prints the tables on stdout and writes them, one figure per line, to $CACHE/runs/bench-*.tsv,
# drawn as bench-*.svg (bench-plot.sh);
# `--before TSV` adds the ratios of an earlier run's file beside this run's. Exits non-zero, with
# one line, if a figure is missing. Every boot's output is kept in $CACHE/runs/bench-*.log.
set -euo pipefail
. "$(dirname "$0")/common.sh"
usage="usage: bench.sh BZIMAGE INITRAMFS [--runs N] [--before TSV]"
[ $# -ge 2 ] || die "$usage"
bzimage=$1 initramfs=$2 runs=3 before=
shift 2
while [ $# -gt 0 ]; do
    case $1 in
    --runs) [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || die "--runs wants a whole number of runs, 1 or more"
            runs=$2; shift 2 ;;
    --before) [ -f "${2:-}" ] || die "--before wants the .tsv file of an earlier bench run"
              before=$2; shift 2 ;;
    *) die "$usage" ;;
    esac
done

step "building the floor probe"
CARGO_TARGET_DIR=$CACHE/guests-target cargo_build "the floor probe" --release \
    --manifest-path "$REPO/tests/guests/floor/Cargo.toml" --target x86_64-unknown-none
probe=$CACHE/guests-target/x86_64-unknown-none/release/floor-probe

mkdir -p "$CACHE/runs"
stamp=$CACHE/runs/bench-$(date +%Y%m%d-%H%M%S)
log=$stamp.log results=$stamp.tsv
: >"$log"
linux_disk=$(mktemp)
trap 'rm -f "$linux_disk"' EXIT
# one_run N: every boot once, its output appended to $log after a `bench run N` line.
one_run() {
    echo "bench run $1" >>"$log"
    step "run $1 of $runs: booting the floor probe in QEMU"
    # isa-debug-exit is how the probe ends QEMU; its status (1 when done) is not the verdict: the
    # figures are.
    slowed timeout --foreground 120 qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 1G \
        -nographic -no-reboot -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
        -kernel "$probe" </dev/null >>"$log" 2>&1 || true
    step "run $1 of $runs: booting the teaching guest natively: its microbenchmarks"
    "$REPO/tests/harness/teaching-guest.sh" --native bench 2>&1 | sed 's/^bench /bench teaching-native /' >>"$log" || true
    step "run $1 of $runs: booting the teaching guest natively: 30 s of its 1 ms tick"
    # As long as tests/e2e/src/bench.rs's LONG_RUN_SECONDS; its one line becomes three figures.
    "$REPO/tests/harness/teaching-guest.sh" --native long-run 30 2>&1 | awk '
        /^long-run: [0-9]+ ticks in [0-9]+ ms, / {
            print "bench teaching-native long-run-ticks " $2
            print "bench teaching-native long-run-ms " $5
            print "bench teaching-native long-run-lost " $NF
        }
        { print }' >>"$log" || true
    step "run $1 of $runs: booting the teaching guest natively on microvm with QEMU's virtio devices: their throughput"
    "$REPO/tests/harness/teaching-guest.sh" --native-devices bench 2>&1 |
        sed 's/^bench /bench teaching-native-devices /' >>"$log" || true
    step "run $1 of $runs: booting the Linux guest natively: its microbenchmarks"
    truncate -s 32M "$linux_disk"
    "$REPO/tests/harness/linux-native.sh" --disk "$linux_disk" --net --patience 600 \
        lguest.run=bench lguest.bench-disk=/dev/vda lguest.bench-peer=10.0.2.2 2>&1 | awk '
        match($0, /init running after [0-9.]+ s/) {
            print "bench linux-native boot-to-init-ms " \
                int(1000 * substr($0, RSTART + 19, RLENGTH - 21))
        }
        { sub(/bench /, "bench linux-native "); print }' >>"$log" || true
    step "run $1 of $runs: booting the host kernel in QEMU: lguest-e2e bench"
    "$REPO/tests/harness/run-vm.sh" "$bzimage" "$initramfs" 600 "lguest.mode=bench" \
        </dev/null >>"$log" 2>&1 || true
}
for run in $(seq "$runs"); do
    one_run "$run"
done

# per_run SOURCE NAME: "RUN VALUE" for each run that printed the figure (its last value in that
# run; a whole number, or a decimal one as the TCP figures are). The figure is searched for
# anywhere in a line, as the firmware or the kernel may have left a line unfinished just before
# it.
per_run() {
    tr -d '\r' <"$log" | awk -v want="bench $1 $2 " '
        match($0, /bench run [0-9]+$/) { run = substr($0, RSTART + 10) }
        (at = index($0, want)) && match(rest = substr($0, at + length(want)), /^[0-9]+(\.[0-9]+)?/) {
            value[run] = substr(rest, 1, RLENGTH)
        }
        END { for (r in value) print r, value[r] }' | sort -n
}

# spread: from values on stdin, one per line, "MEDIAN MIN MAX COUNT" (nothing if there are none).
spread() {
    sort -g | awk '{ v[NR] = $1 }
        END {
            if (NR == 0) exit
            m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            # %.12g: mawk prints and %d stop at 2^31, and a gzip takes billions of cycles.
            printf "%.12g %.12g %.12g %d\n", m, v[1], v[NR], NR
        }'
}

# rate SOURCE COUNT MS: "RUN VALUE" of COUNT per second, from each run's COUNT and MS.
rate() {
    join <(per_run "$1" "$2") <(per_run "$1" "$3") | awk '$3 > 0 { print $1, 1000 * $2 / $3 }'
}

# median FIGURE: the median of per-run figure FIGURE.
median() { cut -d' ' -f2 <<<"$1" | spread | cut -d' ' -f1; }

# show FIGURE: per-run figure FIGURE as "median [min-max]", with how many runs had it when not all
# did.
show() {
    cut -d' ' -f2 <<<"$1" | spread | awk -v runs="$runs" '{
        f = ($1 == int($1) && $1 > 100) ? "%.0f" : "%.2f"
        printf f " [" f "-" f "]", $1, $2, $3
        if ($4 < runs) printf " (%d of %d runs)", $4, runs
    }'
}

# ratio A B: for per-run figures A and B ("RUN VALUE" lines), the spread of A/B over the runs
# that have both: a run's two figures come from the same minutes, so they are compared together.
ratio() {
    join <(echo "$1") <(echo "$2") | awk '$3 > 0 { print $2 / $3 }' | spread
}

# before_of SECTION NAME: that row's ratio and range in the --before file, or nothing.
before_of() {
    [ -n "$before" ] || return 0
    awk -F'\t' -v s="$1" -v n="$2" '$1 == s && $2 == n { print $5, $6, $7 }' "$before"
}

# row SECTION NAME A B: for per-run figures A and B, one line: B and A each as median [spread],
# the ratio A/B with its spread, and with --before the earlier ratio and whether the two spreads
# overlap. The medians and the ratio go to $results too.
row() {
    local r b verdict=
    r=$(ratio "$3" "$4") b=$(before_of "$1" "$2")
    printf '%-26s %26s %26s   %s' "$2" "$(show "$4")" "$(show "$3")" \
        "$(awk '{ printf "%.2f [%.2f-%.2f]", $1, $2, $3 }' <<<"$r")"
    if [ -n "$before" ]; then
        if [ -n "$b" ]; then
            verdict=$(awk -v now="$r" -v was="$b" 'BEGIN {
                split(now, n, " "); split(was, w, " ")
                print (n[3] < w[2] ? "lower" : n[2] > w[3] ? "higher" : "within the spread")
            }')
            printf '   before %s: %s' "$(awk '{ printf "%.2f [%.2f-%.2f]", $1, $2, $3 }' <<<"$b")" \
                "$verdict"
        else
            printf '   before: -'
        fi
    fi
    echo
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$(median "$4")" "$(median "$3")" \
        "$(cut -d' ' -f1-3 <<<"$r" | tr ' ' '\t')" >>"$results"
}

header() { printf '\n%-26s %26s %26s   %s\n' "$1" "$2" "$3" "$3/$2 [range]"; }

int0=$(per_run native int-iretq) int1=$(per_run native int-iretq-ring1) cr3=$(per_run native cr3-write)
floor=$(per_run native floor) hcall=$(per_run lguest nop-hypercall) sys=$(per_run host null-syscall)
mmio=$(per_run lguest mmio-read)
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
: >"$results"

echo "$runs run(s); each figure is the median of the runs [lowest-highest]; TSC cycles"
header "the world switch" "floor" "lg.ko"
printf '%-26s %26s\n' "int+iretq ring 0" "$(show "$int0")"
printf '%-26s %26s\n' "int+iretq ring 1->0->1" "$(show "$int1")"
printf '%-26s %26s\n' "CR3 write" "$(show "$cr3")"
row world null-hypercall "$hcall" "$floor"
row world mmio-read "$mmio" "$floor"
row world hypercall-vs-syscall "$hcall" "$sys"
echo "(floor: int, two CR3 writes, iretq at ring 0, natively; the last row divides by a host"
echo " null syscall instead)"

# The teaching guest, the same image both ways: native (QEMU's kernel) and under lg.ko.
header "teaching guest, per op" "native" "lg.ko"
for name in null-hypercall syscall-int80 syscall-syscall page-fault context-switch timer-interrupt; do
    native=$(per_run teaching-native "$name") lguest=$(per_run teaching-lguest "$name")
    [ -n "$native" ] && [ -n "$lguest" ] || die "missing teaching-guest figure $name; see $log"
    row teaching "$name" "$lguest" "$native"
done
echo "(native null-hypercall is the world-switch floor: int, two CR3 writes, iretq at ring 0)"
# The devices: QEMU's own virtio-mmio devices for the native boot (microvm), the launcher's under
# lg.ko; MB/s, so here lg.ko/native below 1 is the slowdown.
header "teaching guest, MB/s" "native" "lg.ko"
for name in blk-read-mbps blk-write-mbps net-tx-mbps; do
    native=$(per_run teaching-native-devices "$name") lguest=$(per_run teaching-lguest "$name")
    [ -n "$native" ] && [ -n "$lguest" ] || die "missing device figure $name; see $log"
    row virtio "$name" "$lguest" "$native"
done
# The tick: ticks served and deadlines that went by unserved, per second of the run, both ways.
# Under TCG the native run loses ticks too; the ratio is what lg.ko changes, and with none lost
# natively there is nothing to divide by.
header "1 ms tick, per second" "native" "lg.ko"
for figure in ticks:served lost:lost; do
    name=${figure%:*}
    native=$(rate teaching-native "long-run-$name" long-run-ms)
    lguest=$(rate teaching-lguest "long-run-$name" long-run-ms)
    [ -n "$native" ] && [ -n "$lguest" ] || die "missing long-run figure $name; see $log"
    if [ "$(median "$native")" = 0 ]; then
        printf '%-26s %26s %26s   -\n' "ticks ${figure#*:}" "$(show "$native")" "$(show "$lguest")"
    else
        row tick "ticks ${figure#*:}" "$lguest" "$native"
    fi
done
# The Linux guest, the same bzImage and initramfs both ways: natively on QEMU's microvm, with its
# virtio disk and network card (a tap in a network namespace on this machine, the TCP peer behind
# it); under lg.ko with the launcher's (a tap in the test VM, the same peer behind it).
header "Linux guest" "native" "lg.ko"
for name in boot-to-init-ms null-syscall fork-exit fork-exec pipe-round-trip page-fault \
    gzip-2mib blk-read-mbps blk-write-mbps tcp-send-mbps tcp-receive-mbps tcp-round-trips-per-s; do
    native=$(per_run linux-native "$name") lguest=$(per_run linux-lguest "$name")
    [ -n "$native" ] && [ -n "$lguest" ] || die "missing Linux guest figure $name; see $log"
    row linux "$name" "$lguest" "$native"
done
echo "(TSC cycles per operation, but boot-to-init-ms in ms from the start of QEMU natively and of"
echo " the launcher under lg.ko, the disk and TCP in MB/s and TCP's one-byte round trips per second:"
echo " there lg.ko/native below 1 is the slowdown; TCP's peer runs on this machine natively, in the"
echo " test VM, on its emulated CPUs, under lg.ko)"
"$REPO/tests/harness/bench-plot.sh" "$results" ${before:+"$before"} >"$stamp.svg"
ok "bench done (all boots' output: $log; the table: $results; drawn: $stamp.svg)"
