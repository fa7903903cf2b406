#!/usr/bin/env bash
# Build lg.ko against the cached host kernel; prints the path of lg.ko on stdout.
# Usage: build-module.sh            build it, as the VM loads it
#        build-module.sh --clippy   build it through clippy (Kbuild's CLIPPY=1), every warning an
#                                   error: lg.ko's part of `./lguest-dev check`
#
# Kbuild writes its objects next to the sources, so the module's sources, the ABI it includes by
# path and the Switcher it assembles from switcher/ are mirrored into the cache and built there.
# rsync keeps modification times, so make rebuilds only what an edit touched. The clippy build
# has a mirror of its own: Kbuild rebuilds an object whose command line changed, so one mirror
# for both would rebuild lg.ko every time the one followed the other.
set -euo pipefail
. "$(dirname "$0")/common.sh"

clippy=() mirror=module-build
case "${1:-}" in
"") ;;
--clippy)
    # Debian's clippy-driver (rust-web-clippy), of the very Rust the kernel was built with: clippy
    # reads the kernel crate's metadata, which only that rustc's own version can (rustup's clippy
    # is of another Rust). KRUSTFLAGS comes after the kernel's own lints (-Wclippy::all, ...), so
    # it turns them into errors; an object that failed is not written, so a warm run that
    # rebuilds nothing has passed before.
    clippy=(CLIPPY=1 CLIPPY_DRIVER=/usr/bin/clippy-driver
            "KRUSTFLAGS=-Dwarnings -Dclippy::undocumented_unsafe_blocks")
    mirror=module-clippy
    ;;
*) die "usage: build-module.sh [--clippy]" ;;
esac

KSRC=$("$REPO/tests/harness/build-kernel.sh")
BUILD=$CACHE/$mirror/$(basename "$(dirname "$KSRC")")
mkdir -p "$BUILD"
# --delete-after keeps Kbuild's own outputs (*.o, .*.cmd, lg_bindings.rs) that rsync filters out.
rsync -a --delete --filter='P *.o' --filter='P .*.cmd' --filter='P *.ko' --filter='P *.mod*' \
    --filter='P lg_bindings.rs' --filter='P Module.symvers' --filter='P modules.order' \
    --filter='P .*.d' --exclude=target "$REPO/abi" "$REPO/lg-module" "$REPO/switcher" "$BUILD/"

step "building lg.ko${clippy[*]:+ through clippy}"
# The first errors are the ones to read: the log's head, without make's own lines.
if ! run_watched "$BUILD/build.log" "lg.ko${clippy[*]:+ through clippy}" \
        make -C "$KSRC" "${KERNEL_RUST_VARS[@]}" BINDGEN="$BINDGEN" "${clippy[@]}" \
        M="$BUILD/lg-module" modules; then
    grep -v "^make" "$BUILD/build.log" | head -n 60 >&2
    die "lg.ko failed to build${clippy[*]:+ through clippy}"
fi
grep -E 'warning|error' "$BUILD/build.log" >&2 || true
# Every guest can read the Switcher's text (chapter 4). Assembled, it holds no host address, and
# only a relocation could put one there: the guest would learn where the host's kernel is. So a
# Switcher with a relocation in its text does not build (guest-hostile-switcher-pages reads the
# other pages at run time, where the host writes).
# Kbuild assembles the Switcher where it lives, so its object is in the mirror's switcher/.
relocations=$(readelf -rW "$BUILD/switcher/switcher.o") || die "cannot read the Switcher's object"
if grep -qF "'.rela.rodata.lguest_switcher'" <<<"$relocations"; then
    die "the Switcher's text has relocations: every guest would read host addresses in it"
fi
echo "$BUILD/lg-module/lg.ko"
