#!/usr/bin/env bash
# Build the Linux guest: Debian's linux-source-6.12 with the series in guest-patches/ applied,
# configured by guest-patches/guest.config. Prints the directory that holds its bzImage, its
# vmlinux (for addr2line on a guest's crash address) and its .config.
#
# Two caches, so that changing a patch costs a minute and not a cold build:
# - the tree, $CACHE/linux-guest/tree-<key>, keyed by the source package and the compiler: one
#   extracted source in which the series is swapped (the last one applied is taken back out
#   with `patch -R`, the new one put in), so make rebuilds only what the change touched;
# - the result, $CACHE/linux-guest/out-<key>, keyed by the tree's key, the series and the
#   fragment's options: a second run with the same inputs builds nothing at all.
# The host kernel's tree cannot be shared: Kbuild refuses an O= build from a source tree that
# was built in place, and the guest's patches must not reach the host.
set -euo pipefail
. "$(dirname "$0")/common.sh"

TARBALL=/usr/src/linux-source-6.12.tar.xz
PATCHES=$REPO/guest-patches
FRAGMENT=$PATCHES/guest.config
[ -f "$TARBALL" ] || die "no $TARBALL: run tests/harness/setup.sh first"
[ -f "$PATCHES/series" ] || die "no $PATCHES/series"

# The patches in the order the series file names them (blank lines and comments skipped).
mapfile -t series < <(grep -v -e '^#' -e '^[[:space:]]*$' "$PATCHES/series")

TREE=$(linux_guest_tree)
out_key=$( {
    echo "${TREE##*/tree-}"
    for p in "${series[@]}"; do echo "$p"; cat "$PATCHES/$p"; done
    config_options "$FRAGMENT"
} | sha256sum | cut -c1-16)
OUT=$CACHE/linux-guest/out-$out_key

if [ -f "$OUT/bzImage" ]; then
    echo "$OUT"
    exit 0
fi

mkdir -p "$CACHE/linux-guest"
hold_lock "$TREE.lock" "the Linux guest in $TREE"
# Another run may have built this very series while we waited.
if [ -f "$OUT/bzImage" ]; then
    echo "$OUT"
    exit 0
fi

SRC=$TREE/linux
APPLIED=$TREE/applied

extract() {
    step "Linux guest: extracting $(basename "$TARBALL") into $TREE"
    rm -rf "$TREE"
    mkdir -p "$TREE" "$APPLIED"
    tar -C "$TREE" -xf "$TARBALL"
    mv "$TREE"/linux-source-6.12 "$SRC"
}

# Take the series applied last time back out, newest patch first. A tree it does not come out of
# cleanly (a build interrupted while patching) is thrown away and extracted again.
unapply() {
    [ -f "$APPLIED/series" ] || return 0
    local previous p i
    mapfile -t previous <"$APPLIED/series"
    for ((i = ${#previous[@]} - 1; i >= 0; i--)); do
        p=${previous[i]}
        patch -d "$SRC" -p1 -R -s -f --no-backup-if-mismatch -i "$APPLIED/$p" >/dev/null ||
            return 1
    done
    rm -f "$APPLIED"/*
}

# Taking a series out and putting one back rewrites every file it touches, and make goes by
# modification times: a header every file includes would rebuild the whole kernel for a change
# elsewhere. So the files both series touch keep their old times where their content is the same.
touched() { sed -n -e 's|^+++ b/||p' -e 's|^--- a/||p' "$@" | sort -u; }
stamps=$(mktemp)
trap 'rm -f "$stamps"' EXIT
if [ -d "$SRC" ] && [ -f "$APPLIED/series" ]; then
    (cd "$SRC" && touched "$APPLIED"/*.patch "$PATCHES"/*.patch | while read -r f; do
        [ -f "$f" ] && echo "$(sha256sum <"$f" | cut -c1-64) $(stat -c %Y "$f") $f"
    done) >"$stamps" || true
fi

if [ ! -d "$SRC" ]; then
    extract
elif ! unapply; then
    step "Linux guest: the last series would not come out of $SRC cleanly"
    extract
fi

step "Linux guest: applying ${#series[@]} patches from guest-patches/"
for p in "${series[@]}"; do
    [ -f "$PATCHES/$p" ] || die "guest-patches/series names $p, which does not exist"
    # Recorded before it is applied: a patch that fails half-way is taken out with the rest.
    cp "$PATCHES/$p" "$APPLIED/$p"
    echo "$p" >>"$APPLIED/series"
    patch -d "$SRC" -p1 -s -N --no-backup-if-mismatch -i "$PATCHES/$p" >&2 ||
        die "guest-patches/$p does not apply to linux-source-6.12"
done

while read -r sum mtime f; do
    [ -f "$SRC/$f" ] && [ "$(sha256sum <"$SRC/$f" | cut -c1-64)" = "$sum" ] &&
        touch -m -d "@$mtime" "$SRC/$f"
done <"$stamps"

MAKE=(make -C "$SRC")
configure_kernel "$SRC" "$FRAGMENT" "${MAKE[@]}"
run_with_progress "$TREE/build.log" "Linux guest build" "${MAKE[@]}" -j"$(nproc)" bzImage

rm -rf "$OUT.new"
mkdir -p "$OUT.new"
cp "$SRC/arch/x86/boot/bzImage" "$SRC/vmlinux" "$SRC/.config" "$SRC/System.map" "$OUT.new/"
rm -rf "$OUT"
mv "$OUT.new" "$OUT"
ok "Linux guest built: $OUT/bzImage ($(du -k "$OUT/bzImage" | cut -f1) KiB)"
echo "$OUT"
