# Shared by every harness script: where the cache lives, how progress is shown, how to fail.
# Sourced, never run.

# Build outputs live outside the source tree, keyed by what produced them, so a fresh clone on a
# machine that built before reuses them.
CACHE=${LGUEST_CACHE:-$HOME/.cache/lguest-rs}
BINDGEN=$CACHE/tools/bin/bindgen
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
mkdir -p "$CACHE"

# The kernel's Rust must be Debian's rustc-web (see docs/building.md); rustup's comes first on PATH.
KERNEL_RUST_VARS=(RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc HOSTRUSTC=/usr/bin/rustc)

_t0=$(date +%s)
elapsed() { echo $(( $(date +%s) - _t0 ))s; }
step() { printf '\033[1m==> %s\033[0m [%s]\n' "$*" "$(elapsed)" >&2; }
ok() { printf '\033[32m==> %s\033[0m [%s]\n' "$*" "$(elapsed)" >&2; }
die() { printf '\033[31merror: %s\033[0m\n' "$*" >&2; exit 1; }

# run_with_progress LOGFILE LABEL CMD...: run a long command with its output in LOGFILE and a
# heartbeat every 30 s (label, elapsed time, last line of the log) so nobody stares at a silent
# terminal for eight minutes. On failure, the log's tail is shown.
run_with_progress() {
    local log=$1 label=$2; shift 2
    local start; start=$(date +%s)
    "$@" >"$log" 2>&1 &
    local pid=$! last=$start
    while kill -0 "$pid" 2>/dev/null; do
        sleep 2
        local now; now=$(date +%s)
        if (( now - last >= 30 )) && kill -0 "$pid" 2>/dev/null; then
            last=$now
            printf '    %s: %ds, %s\n' "$label" $((now - start)) \
                "$(tail -n 1 "$log" | cut -c1-80)" >&2
        fi
    done
    if ! wait "$pid"; then
        tail -n 30 "$log" >&2
        die "$label failed (full log: $log)"
    fi
}
