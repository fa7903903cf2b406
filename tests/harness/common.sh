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

# The `[Ns]` on each line counts from the start of the command the user typed: lguest-dev sets
# LGUEST_T0 and every script it runs inherits it, so one run's times add up instead of starting
# again at each sub-script.
export LGUEST_T0=${LGUEST_T0:-$(date +%s)}
elapsed() { echo $(( $(date +%s) - LGUEST_T0 ))s; }
# Colours for a person at a terminal only: not in a CI log or a file, nor under NO_COLOR
# (https://no-color.org: set and not empty).
if [ -t 2 ] && [ -z "${NO_COLOR:-}" ]; then
    _bold=$'\033[1m' _green=$'\033[32m' _red=$'\033[31m' _plain=$'\033[0m'
else
    _bold='' _green='' _red='' _plain=''
fi
step() { printf '%s==> %s%s [%s]\n' "$_bold" "$*" "$_plain" "$(elapsed)" >&2; }
ok() { printf '%s==> %s%s [%s]\n' "$_green" "$*" "$_plain" "$(elapsed)" >&2; }
die() { printf '%serror: %s%s\n' "$_red" "$*" "$_plain" >&2; exit 1; }

# How often a long command says it is still going, in seconds (the harness's self-test shortens
# it).
HEARTBEAT_SECONDS=${HEARTBEAT_SECONDS:-30}

# run_watched LOGFILE LABEL CMD...: run a long command with its output in LOGFILE and a heartbeat
# every HEARTBEAT_SECONDS (label, time so far, last line of the log), so nobody stares at a
# silent terminal for eight minutes; returns the command's status. A command done sooner than
# that says nothing.
run_watched() {
    local log=$1 label=$2; shift 2
    local start; start=$(date +%s)
    # A command started with & by a script ignores Ctrl-C, so a make left to itself would build
    # on after the script is gone, and race the next run's clean-up. It runs in a session of
    # its own instead, and an interrupted script takes all of it (compilers too) down first.
    setsid "$@" >"$log" 2>&1 &
    local pid=$!
    # shellcheck disable=SC2064 # the trap must name this command's pid, known now
    trap "kill -TERM -- -$pid 2>/dev/null; wait $pid; exit 130" INT TERM
    local last=$start
    while kill -0 "$pid" 2>/dev/null; do
        sleep 1
        local now; now=$(date +%s)
        if (( now - last >= HEARTBEAT_SECONDS )) && kill -0 "$pid" 2>/dev/null; then
            last=$now
            local line; line=$(tail -n 1 "$log" | cut -c1-80)
            printf '    %s: %ds%s\n' "$label" $((now - start)) "${line:+, $line}" >&2
        fi
    done
    local status=0
    wait "$pid" || status=$?
    trap - INT TERM
    return "$status"
}

# run_with_progress LOGFILE LABEL CMD...: run_watched, and on failure the log's tail and the end.
run_with_progress() {
    local log=$1 label=$2
    if ! run_watched "$@"; then
        tail -n 30 "$log" >&2
        die "$label failed (full log: $log)"
    fi
}

# cargo_build WHAT ARGS...: `cargo build --quiet ARGS` with run_watched's heartbeat; what it
# printed (warnings) is shown afterwards, and if it fails, its first errors, then the end.
cargo_build() {
    local what=$1 log; shift
    mkdir -p "$CACHE/runs"
    log=$CACHE/runs/cargo-build-${what//[^a-zA-Z0-9]/-}.log
    if ! run_watched "$log" "building $what" cargo build --quiet "$@"; then
        head -n 60 "$log" >&2
        die "building $what failed (full log: $log)"
    fi
    cat "$log" >&2
}

# verdicts LOG: the VM's console on stdin, kept in LOG without its carriage returns and terminal
# escapes, and its verdict lines (`e2e NAME: ...`, `lguest-vm: ...`) on stdout. Each is shown as
# its scenario ends: every stage passes lines on as they come (sed -u, tee, grep
# --line-buffered), where tr would hold them in its buffer till the end.
verdicts() {
    sed -u -e 's/\r//g' -e 's/\x1bc//g' -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' | tee "$1" |
        grep --line-buffered -E '^e2e |lguest-vm:'
}

# scenario_names: the end-to-end scenarios, in the order `lguest-e2e all` runs them, read from
# the table in tests/e2e/src/scenarios/mod.rs without building anything (a unit test there
# checks that this reading and the table agree): each `name: "NAME",` line, and each
# `guest_hostile!("ATTACK"...),` line, which is the scenario guest-hostile-ATTACK.
scenario_names() {
    sed -n -e 's/^ *name: "\([^"]*\)",$/\1/p' \
        -e 's/^ *guest_hostile!("\([^"]*\)"[^"]*),$/guest-hostile-\1/p' \
        "$REPO/tests/e2e/src/scenarios/mod.rs"
}

# LGUEST_SLOWDOWN=N (a whole number; 1, the default, changes nothing): every QEMU runs as if on a
# machine N times slower, so that anyone can check that no timeout is too tight for a slower
# machine than theirs (docs/building.md). `slowed` gives QEMU a cgroup of its own whose CPU quota
# is 1/N of a CPU. Under TCG each of -smp 2's vCPUs is a thread, but the second one idles most of
# the time: over the suite QEMU keeps 0.9 CPUs busy (measured: 150 s of CPU in 164 s), so 1/N of
# one CPU slows it about N times (with N=3 the slowest scenarios took 3.0 to 3.6 times as long).
SLOWDOWN=${LGUEST_SLOWDOWN:-1}
[[ $SLOWDOWN =~ ^[1-9][0-9]*$ ]] ||
    die "LGUEST_SLOWDOWN wants a whole number (3: three times slower), not '$SLOWDOWN'"
# The quota's period, in microseconds. Short, so that QEMU is held back in many short stops, as a
# slow CPU would be, rather than stopped for two thirds of a second now and then.
SLOW_PERIOD_US=10000

# slowed CMD...: runs CMD (a QEMU, or `timeout` running one) as LGUEST_SLOWDOWN says, and returns
# its status. With a slowdown CMD runs in a fresh cgroup, made here and removed once CMD is gone
# (on Ctrl-C too); 125 if the cgroup cannot be made, as `timeout` says it could not run a command.
slowed() {
    if [ "$SLOWDOWN" = 1 ]; then
        "$@"
        return
    fi
    (
        cgroup=$(slow_cgroup "$BASHPID") || exit 125
        trap 'rmdir "$cgroup"' EXIT
        trap 'exit 130' INT
        trap 'exit 143' TERM
        # A subshell moves itself into the cgroup and becomes CMD; this one stays out, to remove
        # the cgroup, which cannot be done from inside.
        (echo "$BASHPID" >"$cgroup/cgroup.procs" && exec "$@")
    )
}

# slow_cgroup PID: makes a cgroup named after PID (the shell that will remove it) with
# 1/LGUEST_SLOWDOWN of a CPU's quota, and prints its path; dies with the reason if it cannot. cgroup
# v2 (cpu.max) if /sys/fs/cgroup is one, else v1's cpu controller (cpu.cfs_quota_us), as
# systemd's hybrid layout mounts it.
slow_cgroup() {
    local quota=$((SLOW_PERIOD_US / SLOWDOWN)) root cgroup
    # The kernel refuses a quota under a millisecond.
    ((quota >= 1000)) ||
        die "LGUEST_SLOWDOWN=$SLOWDOWN: at most $((SLOW_PERIOD_US / 1000)) (a quota of 1 ms)"
    if [ "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)" = cgroup2fs ]; then
        root=/sys/fs/cgroup
        grep -qw cpu "$root/cgroup.controllers" ||
            die "LGUEST_SLOWDOWN: cgroup v2 at $root has no cpu controller (cgroup.controllers)"
        grep -qw cpu "$root/cgroup.subtree_control" ||
            echo +cpu 2>/dev/null >"$root/cgroup.subtree_control" ||
            die "LGUEST_SLOWDOWN: cannot enable cpu in $root/cgroup.subtree_control (not root?)"
        cgroup=$root/lguest-slow-$1
        mkdir "$cgroup" 2>/dev/null || die "LGUEST_SLOWDOWN: cannot create $cgroup (not root?)"
        echo "$quota $SLOW_PERIOD_US" 2>/dev/null >"$cgroup/cpu.max" ||
            { rmdir "$cgroup"; die "LGUEST_SLOWDOWN: cannot write $cgroup/cpu.max"; }
    elif [ -f /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]; then
        root=/sys/fs/cgroup/cpu
        cgroup=$root/lguest-slow-$1
        mkdir "$cgroup" 2>/dev/null || die "LGUEST_SLOWDOWN: cannot create $cgroup (not root?)"
        { echo "$SLOW_PERIOD_US" >"$cgroup/cpu.cfs_period_us" &&
            echo "$quota" >"$cgroup/cpu.cfs_quota_us"; } 2>/dev/null ||
            { rmdir "$cgroup"; die "LGUEST_SLOWDOWN: cannot write the quota in $cgroup"; }
    else
        die "LGUEST_SLOWDOWN needs the cpu controller: cgroup v2 at /sys/fs/cgroup or v1 at" \
            "/sys/fs/cgroup/cpu, and there is neither"
    fi
    echo "$cgroup"
}

# configure_kernel SRC FRAGMENT MAKE...: `make tinyconfig` in SRC, then FRAGMENT's choices (one
# per line: `+NAME` enables, `-NAME` disables, `NAME=value` sets; `#` starts a comment), then
# `make olddefconfig`, which silently drops what a dependency forbids: so every choice is checked
# afterwards, and one that did not survive is an error naming it. MAKE is the make command line
# for SRC. The host kernel and the Linux guest are both configured this way.
configure_kernel() {
    local src=$1 fragment=$2; shift 2
    step "configuring: tinyconfig + $(basename "$fragment")"
    "$@" -s tinyconfig >/dev/null
    local args=() line
    while read -r line; do
        case "$line" in
            ''|'#'*) ;;
            +*) args+=(--enable "${line#+}") ;;
            -*) args+=(--disable "${line#-}") ;;
            *=*) args+=(--set-val "${line%%=*}" "${line#*=}") ;;
        esac
    done <"$fragment"
    "$src"/scripts/config --file "$src/.config" "${args[@]}"
    "$@" -s olddefconfig >/dev/null
    while read -r line; do
        case "$line" in
            ''|'#'*) ;;
            +*) grep -qx "CONFIG_${line#+}=y" "$src/.config" \
                    || die "CONFIG_${line#+}=y did not survive olddefconfig (a missing dependency?)" ;;
            -*) ! grep -q "^CONFIG_${line#-}=" "$src/.config" \
                    || die "CONFIG_${line#-} is still set after olddefconfig" ;;
            *=*) grep -qx "CONFIG_$line" "$src/.config" \
                    || die "CONFIG_$line did not survive olddefconfig" ;;
        esac
    done <"$fragment"
}

# config_options FRAGMENT: the fragment's choices without its comments, for a cache key:
# rewording a reason must not cost a rebuild.
config_options() {
    grep -v -e '^#' -e '^$' "$1"
}

# hold_lock FILE WHAT: takes an exclusive lock on FILE (on file descriptor 9) for the rest of the
# script, saying first that it waits for WHAT if another run holds it. Two runs that would build
# in the same tree (another clone sharing the cache, a module build that asks for the kernel)
# then take turns instead of deleting what the other is building.
hold_lock() {
    exec 9>"$1"
    if ! flock -n 9; then
        step "another run is building $2, waiting"
        flock 9
    fi
}

# linux_guest_tree: the directory build-linux-guest.sh keeps the Linux guest's source tree in,
# $CACHE/linux-guest/tree-<key>, keyed by the source package and the compiler. The tree itself
# is in its `linux` subdirectory; whoever reads or builds there holds "$TREE.lock" (hold_lock).
linux_guest_tree() {
    local key
    key=$( {
        dpkg-query -W -f='${Version}' linux-source-6.12
        gcc --version | head -n1
    } | sha256sum | cut -c1-16)
    echo "$CACHE/linux-guest/tree-$key"
}
