#!/usr/bin/env bash
# Build the static user-space programs the VM runs (the launcher, lguest-stat and the scenario
# runner) and the guests they run, and print the directory holding them: the programs at its top,
# the guests in its guests/ directory. Cargo keeps its outputs in the cache, and rebuilds only
# what changed.
set -euo pipefail
. "$(dirname "$0")/common.sh"

export CARGO_TARGET_DIR=$CACHE/target
# The initramfs has no C library: link everything in. The explicit --target keeps the flag off
# build scripts and proc-macros, which run on this machine.
RUSTFLAGS="-C target-feature=+crt-static" cargo_build "the launcher and test runner" --release \
    --manifest-path "$REPO/Cargo.toml" --target x86_64-unknown-linux-gnu \
    -p lguest-launcher -p lguest-e2e
bin=$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release

# The guests are kernels, built for bare x86-64 in a workspace (and target directory) of their
# own; the launcher loads them as ELF files.
CARGO_TARGET_DIR=$CACHE/guests-target cargo_build "the ring-1 guest" --release \
    --manifest-path "$REPO/tests/guests/ring1/Cargo.toml" --target x86_64-unknown-none
mkdir -p "$bin/guests"
cp "$CACHE/guests-target/x86_64-unknown-none/release/ring1" "$bin/guests/ring1"
# The teaching guest (guest/, with paravirt-ops/) boots under lg.ko from the same image.
cp "$("$REPO/tests/harness/teaching-guest.sh")" "$bin/guests/teaching-guest"
echo "$bin"
