#!/usr/bin/env bash
# The Linux guest booted natively: the very bzImage and initramfs that lguest-launcher runs under
# lg.ko (linux-boots), booted by QEMU as the machine's own kernel. Like a Xen PV kernel on bare
# metal, it is entered through startup_64 by the boot protocol rather than through the lguest
# ELF note, so it never takes the lguest platform and its pv_ops stay native. That is what makes
# a comparison of the two boots honest: one image, two worlds.
# Usage: linux-native.sh [--selftests] [--disk IMAGE] [--net] [--patience SECONDS] [WORDS...]
#
# Builds the guest kernel and its initramfs (both cached or cheap), boots them on QEMU's microvm
# machine and checks what linux-boots checks under lg.ko, where it applies natively: the banner
# "Linux version 6.12", the e820 map (qboot's here, the launcher's there), the platform ("Booting
# paravirtualized kernel on bare hardware", where under lg.ko it says "on lguest") and the init
# running; then that init reached its end and the guest ended QEMU. WORDS go on the kernel's
# command line after the harness's own (`lguest.run=demo`: init shows a few things first).
# --disk gives the guest IMAGE as its virtio disk, /dev/vda, as `lguest-launcher --block` does;
# --net gives it a virtio network card on a tap, as `--net tap=` does, and behind the tap the
# peer the bench's TCP figures are measured against (see below); --patience gives a longer run
# (the benchmarks) more than the 60 s a boot gets.
#
# It prints the banner, the platform line and everything from the init line on, then
# `e2e-info linux-native: from QEMU's start, the banner after B s, init running after I s, QEMU
# gone after T s`, in wall-clock time (the guest's own clock starts with the kernel, after the
# firmware and the decompression, and drifts under TCG), and exits 0; or it ends with one
# `error:` line saying what went wrong. The whole serial output is kept in
# $CACHE/runs/linux-native-*.log.
#
# With --selftests (linux-selftests-x86-native) the initramfs carries the kernel's own x86
# selftests as well (build-x86-selftests.sh), and init runs them (lguest.run=script, the script
# being /selftests/run, with the time they need): it also checks that the runner found every test
# as its list expects, and prints its verdicts, `selftest NAME: ...`, the same lines
# linux-selftests-x86 judges under lg.ko.
set -euo pipefail
. "$(dirname "$0")/common.sh"

INIT_RUNNING="lguest-linux: init running on Linux 6.12"
# 60 s, linux-boots' own patience: from QEMU's start to its exit the boot took 1.6 to 5.9 s on 2
# shared cores (11 s once, beside a Rust build), and 6.0 to 7.0 s with LGUEST_SLOWDOWN=3
# (docs/building.md).
PATIENCE=60
# With --selftests: QEMU's start to its exit took 7.3 to 10.3 s (the tests 5 s of it); the
# runner gives up on one test after 120 s.
SELFTEST_PATIENCE=180

# --net: the tap, the host's address on it (as the bench's tap has in the test VM: tests/e2e/
# src/bench.rs) and the peer. The script runs again in a network namespace of its own (as root:
# the harness runs as root), where the tap, its address and the peer are all there is, and all
# go when the last process in it does; the machine's own networking is never touched. There the
# same path carries a frame as under lg.ko: the guest's virtio-net driver, a device model in user
# space (QEMU's here, the launcher's there), a tap, the host kernel's TCP stack and the peer, the
# same program (`lguest-e2e tcp-peer`, tests/e2e/src/tcp_peer.rs) on both sides.
NET_TAP=lgnative0
NET_HOST=10.0.2.2
# QEMU's virtio-net offers checksum and segmentation offloads, mergeable receive buffers, event
# indices, indirect descriptors and a control queue; the launcher's offers a MAC and a link
# status and no more. Off, all of them, so that both sides' guests run the same driver the same
# way (1500-byte frames, checksums in software) and the difference is the platform's, not a
# feature's: with the offloads, the guest would hand QEMU one 64 KiB segment where under lg.ko it
# makes 45 frames.
LAUNCHER_NET_FEATURES=csum=off,guest_csum=off,gso=off,guest_tso4=off,guest_tso6=off,guest_ecn=off
LAUNCHER_NET_FEATURES+=,guest_ufo=off,guest_uso4=off,guest_uso6=off,host_tso4=off,host_tso6=off
LAUNCHER_NET_FEATURES+=,host_ecn=off,host_ufo=off,host_uso=off,mrg_rxbuf=off,event_idx=off
LAUNCHER_NET_FEATURES+=,indirect_desc=off,ctrl_vq=off,ctrl_rx=off,ctrl_vlan=off
LAUNCHER_NET_FEATURES+=,ctrl_rx_extra=off,ctrl_mac_addr=off,ctrl_guest_offloads=off
LAUNCHER_NET_FEATURES+=,guest_announce=off

# enter_namespace: outside the namespace, builds the peer (with the test VM's programs, cached)
# and runs this script again inside one, with the same arguments, and exits with its status;
# inside, returns.
enter_namespace() {
    [ -z "${LGUEST_NATIVE_PEER:-}" ] || return 0
    local bin
    bin=$("$REPO/tests/harness/build-userspace.sh")
    LGUEST_NATIVE_PEER=$bin/lguest-e2e exec unshare --net -- "$0" "${all_args[@]}"
}

# start_tap_and_peer: in the namespace, makes the tap and starts the peer, and returns once it
# listens; its pid is in peer_pid.
start_tap_and_peer() {
    ip tuntap add dev "$NET_TAP" mode tap || die "cannot make a tap in a network namespace"
    ip addr add "$NET_HOST/24" dev "$NET_TAP"
    ip link set "$NET_TAP" up
    local said=
    exec {peer_out}< <(exec "$LGUEST_NATIVE_PEER" tcp-peer "$NET_HOST")
    peer_pid=$!
    read -r -t 30 said <&"$peer_out" || true
    [[ $said == "tcp-peer: listening on"* ]] || die "the TCP peer did not start: '$said'"
}

usage="usage: linux-native.sh [--selftests] [--disk IMAGE] [--net] [--patience SECONDS] [WORDS...] (WORDS go on the command line)"
all_args=("$@")
disk=() net=()
selftests=
while [ $# -gt 0 ] && [[ $1 == -* ]]; do
    case $1 in
    --selftests) selftests=1; PATIENCE=$SELFTEST_PATIENCE; shift ;;
    --disk) [ -f "${2:-}" ] || die "--disk wants a disk image file"
            disk=(-drive "id=disk,file=$2,format=raw,if=none" -device "virtio-blk-device,drive=disk")
            shift 2 ;;
    --net) net=(-netdev "tap,id=net,ifname=$NET_TAP,script=no,downscript=no"
                -device "virtio-net-device,netdev=net,$LAUNCHER_NET_FEATURES")
           shift ;;
    --patience) [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || die "--patience wants a whole number of seconds"
                PATIENCE=$2; shift 2 ;;
    *) die "$usage" ;;
    esac
done
linux=$("$REPO/tests/harness/build-linux-guest.sh")
[ ${#net[@]} = 0 ] || enter_namespace
dir=$(mktemp -d)
trap 'rm -rf "$dir"; [ -z "${peer_pid:-}" ] || kill "$peer_pid"' EXIT
[ ${#net[@]} = 0 ] || start_tap_and_peer
"$REPO/tests/harness/build-linux-rootfs.sh" "$dir/initramfs.cpio.gz"
if [ -n "$selftests" ]; then
    # Linux unpacks gzipped cpio archives one after the other: the overlay adds /selftests.
    "$REPO/tests/harness/build-x86-selftests.sh" "$dir/selftests.cpio.gz"
    cat "$dir/selftests.cpio.gz" >>"$dir/initramfs.cpio.gz"
    # init's scripts come in hexadecimal (tests/harness/linux-guest/init).
    script=$(printf 'sh /selftests/run\n' | xxd -p | tr -d '\n')
    set -- lguest.run=script "lguest.script=$script" "$@"
fi

# The command line: the console on microvm's COM1 (under lg.ko it is hvc0), and an end that ends
# QEMU. Without ACPI the guest cannot power the machine off (Linux halts and QEMU waits), so init
# reboots instead (lguest.end=reboot), and -no-reboot turns the reboot into QEMU's exit, status
# 0. reboot=t makes that reboot a triple fault, the reset QEMU turns into an exit. Linux's own
# order tries ACPI and the keyboard controller (microvm has neither), then jumps back into the
# firmware in real mode (reboot=b): no reset at all in QEMU's eyes, so qboot boots the guest
# again, and again, until the timeout. (The teaching guest ends QEMU through isa-debug-exit
# instead; from this guest's user space that would take /dev/port, which the kernel is built
# without, and a config option for the test's sake alone.)
# panic=-1: a panic reboots at once too, so a broken boot ends in seconds, its reason in the log.
cmdline="console=ttyS0 reboot=t panic=-1 lguest.end=reboot${*:+ $*}"

# stamp START DIR: copies QEMU's output to stdout without the serial console's carriage returns,
# and notes in DIR how many milliseconds after START (an $EPOCHREALTIME) the kernel's banner came
# out (banner-ms: firmware, loading and decompression behind it) and the init line (init-ms).
stamp() {
    local line
    while IFS= read -r line || [ -n "$line" ]; do
        line=${line%$'\r'}
        printf '%s\n' "$line"
        if [[ $line == *"Linux version"* ]] && [ ! -s "$2/banner-ms" ]; then
            since "$1" >"$2/banner-ms"
        elif [[ $line == *"$INIT_RUNNING"* ]] && [ ! -s "$2/init-ms" ]; then
            since "$1" >"$2/init-ms"
        fi
    done
}

# since START: milliseconds since START, an $EPOCHREALTIME. Only its digits are used: its
# decimal point is the locale's.
since() {
    local now=${EPOCHREALTIME//[!0-9]/} start=${1//[!0-9]/}
    echo $(((now - start) / 1000))
}

# secs MILLISECONDS: in seconds, to a hundredth.
secs() { printf '%d.%02d' $(($1 / 1000)) $(($1 % 1000 / 10)); }

mkdir -p "$CACHE/runs"
log=$CACHE/runs/linux-native-$(date +%Y%m%d-%H%M%S).log
step "booting the Linux guest natively on microvm: $cmdline"
# microvm: a PC without PCI or firmware tables to speak of, as the guest is configured (no PCI,
# no ACPI), whose virtio devices sit on MMIO transports that QEMU names on the command line with
# acpi=off, as the launcher does; its firmware (qboot) loads the bzImage in a blink and prints
# nothing. COM1 (isa-serial, on by default) is the console. 64 MiB, as under lg.ko in
# linux-boots (`lguest-launcher 64m`); one CPU, as the guest is built without SMP; -cpu max, as
# the test VM has. The guest's output goes to the log.
start=$EPOCHREALTIME
if slowed timeout --foreground "$PATIENCE" qemu-system-x86_64 \
    -M microvm,isa-serial=on,acpi=off -accel tcg -cpu max -m 64M -nographic -no-reboot \
    -kernel "$linux/bzImage" -initrd "$dir/initramfs.cpio.gz" -append "$cmdline" "${disk[@]}" "${net[@]}" \
    </dev/null 2>&1 | stamp "$start" "$dir" >"$log"; then
    status=0
else
    status=${PIPESTATUS[0]}
fi
took=$(since "$start")

# The first thing missing, in the order a boot says them, is where it stopped; how QEMU ended
# goes with it.
case $status in
0) qemu="QEMU exited" ;;
124) qemu="QEMU was stopped after $PATIENCE s" ;;
*) qemu="QEMU failed with status $status" ;;
esac
fail() { die "$*; $qemu (log: $log)"; }
said() { grep -aq -- "$1" "$log"; }
panic=$(grep -a -m1 'Kernel panic' "$log" || true)
[ -z "$panic" ] || fail "the guest panicked: ${panic#*] }"
said "Linux version 6.12" || fail "no banner on the console"
said "BIOS-e820: \[mem 0x0000000000000000-" || fail "no e820 map on the console"
platform=$(grep -a -m1 -o 'Booting paravirtualized kernel on .*' "$log" || true)
[ "$platform" = "Booting paravirtualized kernel on bare hardware" ] ||
    fail "the kernel did not say it runs on bare hardware: '${platform:-nothing}'"
said "$INIT_RUNNING" || fail "init never ran"
if [ -n "$selftests" ]; then
    # Every verdict first, for the scenario's FAIL line (lguest-dev's host_scenario) to quote.
    grep -a -e '^selftest' -e '^    ' "$log" || true
    summary=$(grep -a -m1 '^selftests (native): ' "$log" || true)
    [ -n "$summary" ] || fail "the selftests never ended (no summary line)"
    said "lguest-linux: script exited with status 0" ||
        fail "selftests did not all go as listed: $summary"
fi
said "lguest-linux: rebooting" || fail "init ran but did not reach its end"
[ "$status" = 0 ] || fail "the guest rebooted, but QEMU did not end"

if [ -z "$selftests" ]; then
    grep -a -m1 'Linux version' "$log"
    echo "$platform"
    sed -n "/$INIT_RUNNING/,\$p" "$log"
fi
init=$(secs "$(cat "$dir/init-ms")")
banner=$(secs "$(cat "$dir/banner-ms")")
echo "e2e-info linux-native${selftests:+ --selftests}: from QEMU's start," \
    "the banner after $banner s, init running after $init s, QEMU gone after $(secs "$took") s"
ok "Linux guest, native on microvm: init ran $init s after QEMU started (log: $log)"
