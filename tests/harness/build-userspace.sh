#!/usr/bin/env bash
# Build the static user-space programs the VM runs (the launcher and the scenario runner) and
# print the directory holding them. Cargo keeps its outputs in the cache, and rebuilds only what
# changed.
set -euo pipefail
. "$(dirname "$0")/common.sh"

export CARGO_TARGET_DIR=$CACHE/target
# The initramfs has no C library: link everything in. The explicit --target keeps the flag off
# build scripts and proc-macros, which run on this machine.
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release \
    --manifest-path "$REPO/Cargo.toml" --target x86_64-unknown-linux-gnu \
    -p lguest-launcher -p lguest-e2e >&2 || die "building the launcher and test runner failed"
echo "$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release"
