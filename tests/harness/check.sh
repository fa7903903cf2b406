#!/usr/bin/env bash
# The fast tier, `./lguest-dev check`: everything that can be judged without booting QEMU, so
# that a formatting slip or a missing SAFETY comment fails in seconds rather than after the VM's
# minutes. `.ci/run` runs it before `./lguest-dev test`.
#
# Each step prints one line, `check <step>: PASS` or `check <step>: FAIL`, the latter followed
# by the start of its output (all of it is in $CACHE/runs/check-<step>.log); the last line
# counts them, and the exit status is 0 only if every step passed. The steps:
#   rustfmt           every crate formatted (rustfmt.toml: 100 columns)
#   clippy-workspace  the workspace's crates, for the host
#   clippy-guests     the crates outside it, built for x86_64-unknown-none
#   clippy-module     lg.ko itself, through Kbuild's CLIPPY=1 (build-module.sh --clippy)
#   unit-tests        cargo test --workspace (guest-core's tests too: the teaching guest's logic)
#   docs              the book names only what exists (tests/docs-check)
#   scripts           bash -n and shellcheck on every harness script
#   harness           the harness's own tests (selftest.sh): progress lines, colours, heartbeats,
#                     interrupted builds, verdicts as they come, the scenario list
# Every clippy runs with warnings as errors and undocumented unsafe blocks denied. lg.ko needs
# the host kernel built: on a fresh machine the first check builds it (build-kernel.sh).
set -euo pipefail
. "$(dirname "$0")/common.sh"
cd "$REPO"

# The crates outside the workspace: kernels' code for bare x86-64, each a workspace of its own
# (built by build-userspace.sh, teaching-guest.sh and bench.sh). Each says `test = false`: no
# test harness runs on bare x86-64. What the teaching guest and paravirt-ops decide without the
# machine is in guest-core/, and what every guest shares with the host in abi/, both workspace
# members that the unit-tests step runs on the host; the ring-1 and floor guests are hardware
# access throughout.
GUEST_CRATES=(paravirt-ops guest tests/guests/ring1 tests/guests/floor)
CLIPPY_ARGS=(-- -D warnings -D clippy::undocumented_unsafe_blocks)

# The diffs go to a log, where colours would be noise.
rustfmt_check() {
    local status=0 crate
    cargo fmt --all --check -- --color never || status=1
    for crate in "${GUEST_CRATES[@]}"; do
        cargo fmt --check --manifest-path "$crate/Cargo.toml" -- --color never || status=1
    done
    # lg.ko's crate root, and through it the kernel-only files no Cargo.toml reaches.
    rustfmt --check --color never --edition 2021 lg-module/lguest.rs || status=1
    return "$status"
}

clippy_workspace() {
    CARGO_TARGET_DIR=$CACHE/target cargo clippy --quiet --workspace --all-targets \
        "${CLIPPY_ARGS[@]}"
}

clippy_guests() {
    local status=0 crate
    for crate in "${GUEST_CRATES[@]}"; do
        CARGO_TARGET_DIR=$CACHE/guests-target cargo clippy --quiet --all-targets \
            --manifest-path "$crate/Cargo.toml" --target x86_64-unknown-none \
            "${CLIPPY_ARGS[@]}" || status=1
    done
    return "$status"
}

clippy_module() {
    tests/harness/build-module.sh --clippy >/dev/null
}

unit_tests() {
    CARGO_TARGET_DIR=$CACHE/target cargo test --quiet --workspace
}

docs_check() {
    CARGO_TARGET_DIR=$CACHE/target cargo run --quiet -p lguest-docs-check -- "$REPO"
}

# Warnings and errors only: shellcheck's "info" notes flag idioms these scripts use on purpose
# (`[ -n "$a" ] && [ -n "$b" ] || die`). common.sh is sourced, never run: it has no shebang of
# its own, and shellcheck reads it (-x) as part of every script that sources it.
scripts_check() {
    local status=0 script linted=()
    for script in lguest-dev .ci/run tests/harness/*.sh tests/harness/initramfs/init; do
        bash -n "$script" || status=1
        [ "$script" = tests/harness/common.sh ] || linted+=("$script")
    done
    shellcheck -x --source-path=SCRIPTDIR --severity=warning "${linted[@]}" || status=1
    return "$status"
}

passed=0 failed=0
mkdir -p "$CACHE/runs"

# run_step NAME FUNCTION: one step, its output in its log, its verdict on one line.
run_step() {
    local name=$1 log=$CACHE/runs/check-$1.log start
    start=$(date +%s)
    if "$2" >"$log" 2>&1; then
        echo "check $name: PASS ($(($(date +%s) - start)) s)"
        passed=$((passed + 1))
    else
        echo "check $name: FAIL ($(($(date +%s) - start)) s; all of it in $log)"
        head -n 40 "$log" | sed 's/^/    /'
        failed=$((failed + 1))
    fi
}

run_step rustfmt rustfmt_check
run_step clippy-workspace clippy_workspace
run_step clippy-guests clippy_guests
run_step clippy-module clippy_module
run_step unit-tests unit_tests
run_step docs docs_check
run_step scripts scripts_check
run_step harness tests/harness/selftest.sh
echo "check: $passed passed, $failed failed"
[ "$failed" = 0 ]
