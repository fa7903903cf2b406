#!/usr/bin/env bash
# Build lg.ko against the cached host kernel; prints the path of lg.ko on stdout.
#
# Kbuild writes its objects next to the sources, so the module's sources (and the ABI and
# hardware-free files it includes by path) are mirrored into the cache first and built there.
# rsync keeps modification times, so make rebuilds only what an edit touched.
set -euo pipefail
. "$(dirname "$0")/common.sh"

KSRC=$("$REPO/tests/harness/build-kernel.sh")
BUILD=$CACHE/module-build/$(basename "$(dirname "$KSRC")")
mkdir -p "$BUILD"
# --delete-after keeps Kbuild's own outputs (*.o, .*.cmd, lg_bindings.rs) that rsync filters out.
rsync -a --delete --filter='P *.o' --filter='P .*.cmd' --filter='P *.ko' --filter='P *.mod*' \
    --filter='P lg_bindings.rs' --filter='P Module.symvers' --filter='P modules.order' \
    --filter='P .*.d' --exclude=target "$REPO/abi" "$REPO/lg-module" "$REPO/switcher" "$BUILD/"

step "building lg.ko"
if ! make -C "$KSRC" "${KERNEL_RUST_VARS[@]}" BINDGEN="$BINDGEN" M="$BUILD/lg-module" \
        modules >"$BUILD/build.log" 2>&1; then
    grep -v "^make" "$BUILD/build.log" | head -n 60 >&2
    die "lg.ko failed to build"
fi
grep -E 'warning|error' "$BUILD/build.log" >&2 || true
echo "$BUILD/lg-module/lg.ko"
