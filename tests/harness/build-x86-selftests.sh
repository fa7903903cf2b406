#!/usr/bin/env bash
# Build the kernel's own x86 selftests from the Linux guest's source tree, for the guest to run
# natively and under lg.ko (linux-selftests-x86, linux-selftests-x86-native), and pack them as an
# initramfs overlay: a gzipped cpio that, appended to the guest's initramfs
# (build-linux-rootfs.sh), adds /selftests with the tests, their runner
# (tests/harness/linux-guest/run-selftests) and the list it judges them by
# (tests/harness/linux-guest/x86-selftests.list).
# Usage: build-x86-selftests.sh OVERLAY
#
# The tests are the list's, built 64-bit only with this machine's gcc, by the selftests' own
# Makefiles (tools/testing/selftests/x86 and vDSO) against the tree's exported headers (`make
# headers`). The guest has no 32-bit user space (guest.config: IA32_EMULATION off), so a test
# that exists only as a 32-bit program is listed as not built, and the 64-bit build never gets
# CAN_BUILD_32 (which would add int $0x80 cases for a compat entry the guest does not have).
# Every test is static but vdso_test_correctness, the kselftest form of the old test_vdso: it finds
# the vDSO with dlopen(), which a static program cannot do without the C library's shared objects
# anyway, so it is linked dynamically and the overlay carries the loader and libc.so.6.
#
# The binaries are cached outside the tree, in $CACHE/x86-selftests/out-<key>, keyed by the tree
# (source package and compiler), the C library they are linked with, this script and the list of
# tests; the overlay is packed afresh each time (the runner and the list may change alone).
set -euo pipefail
. "$(dirname "$0")/common.sh"
[ $# = 1 ] || die "usage: build-x86-selftests.sh OVERLAY"
overlay=$1

LIST=$REPO/tests/harness/linux-guest/x86-selftests.list
RUNNER=$REPO/tests/harness/linux-guest/run-selftests
# The dynamic loader and C library vdso_test_correctness runs with: the ones it was linked against.
LOADER=/lib64/ld-linux-x86-64.so.2
LIBC=/lib/x86_64-linux-gnu/libc.so.6

# The tests to build: every test the list names and does not say is absent.
mapfile -t wanted < <(grep -v -e '^#' -e '^[[:space:]]*$' "$LIST" | awk '
    $3 == "absent" { absent[$1] = 1 }
    !seen[$1]++ { order[++n] = $1 }
    END { for (i = 1; i <= n; i++) if (!absent[order[i]]) print order[i] }')
[ ${#wanted[@]} -gt 0 ] || die "$LIST names no test to build"

TREE=$(linux_guest_tree)
SRC=$TREE/linux
key=$( {
    echo "${TREE##*/tree-}"
    dpkg-query -W -f='${Version}' libc6-dev
    cat "$0"
    printf '%s\n' "${wanted[@]}"
} | sha256sum | cut -c1-16)
OUT=$CACHE/x86-selftests/out-$key
work='' root=''
trap 'rm -rf "$work" "$root"' EXIT

if [ ! -f "$OUT/done" ]; then
    [ -d "$SRC" ] ||
        die "no Linux guest tree in $TREE: run tests/harness/build-linux-guest.sh first"
    mkdir -p "$CACHE/x86-selftests"
    # The tree is shared with build-linux-guest.sh, which may be swapping patches in and out.
    hold_lock "$TREE.lock" "the Linux guest in $TREE"
    work=$(mktemp -d)
    step "x86 selftests: building ${#wanted[@]} from $SRC"
    make -C "$SRC" -s headers >"$work/headers.log" 2>&1 ||
        { tail -n 20 "$work/headers.log" >&2; die "make headers failed in $SRC"; }
    selftests=$SRC/tools/testing/selftests
    x86=() vdso=()
    for t in "${wanted[@]}"; do
        if [ -f "$selftests/x86/$t.c" ]; then
            x86+=("$t")
        elif [ -f "$selftests/vDSO/$t.c" ]; then
            vdso+=("$t")
        else
            die "x86-selftests.list names $t, which is in neither selftests/x86 nor selftests/vDSO"
        fi
    done
    # The x86 Makefile's lists decide what it builds: the wanted ones, all as 64-bit programs.
    flags=(KHDR_INCLUDES="-isystem $SRC/usr/include" OUTPUT="$work/x86" CAN_BUILD_I386=0
        CC="gcc -static" TARGETS_C_BOTHBITS="${x86[*]}" TARGETS_C_64BIT_ONLY=
        TARGETS_C_32BIT_ONLY= TARGETS_C_32BIT_NEEDED=)
    mkdir -p "$work/x86" "$work/vDSO"
    ((${#x86[@]} == 0)) || run_with_progress "$work/x86.log" "x86 selftests" \
        make -C "$selftests/x86" "${flags[@]}" -j"$(nproc)" all_64
    for t in "${vdso[@]}"; do
        cc=(gcc -static)
        [ "$t" = vdso_test_correctness ] && cc=(gcc)
        run_with_progress "$work/vdso.log" "vDSO selftest $t" make -C "$selftests/vDSO" \
            KHDR_INCLUDES="-isystem $SRC/usr/include" OUTPUT="$work/vDSO" CC="${cc[*]}" \
            "$work/vDSO/$t"
    done
    rm -rf "$OUT.new"
    mkdir -p "$OUT.new"
    for t in "${x86[@]}"; do cp "$work/x86/${t}_64" "$OUT.new/$t"; done
    for t in "${vdso[@]}"; do cp "$work/vDSO/$t" "$OUT.new/$t"; done
    touch "$OUT.new/done"
    rm -rf "$OUT"
    mv "$OUT.new" "$OUT"
    ok "x86 selftests built: $OUT"
fi

# The overlay: the tests stripped (the cache keeps them whole, for addr2line), the runner, the
# list, and for the one dynamic test its loader and C library.
root=$(mktemp -d)
mkdir -p "$root/selftests" "$root/lib64" "$root/lib/x86_64-linux-gnu"
for t in "${wanted[@]}"; do strip -o "$root/selftests/$t" "$OUT/$t"; done
cp "$RUNNER" "$root/selftests/run"
cp "$LIST" "$root/selftests/x86-selftests.list"
cp -L "$LOADER" "$root/lib64/"
cp -L "$LIBC" "$root/lib/x86_64-linux-gnu/"
(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -9 >"$overlay"
