#!/usr/bin/env bash
# The harness's own tests, the `harness` step of `./lguest-dev check`: what common.sh promises
# the person watching a build, checked in a few seconds without building or booting anything.
#   - the `[Ns]` counter counts from the start of the lguest-dev command (LGUEST_T0), not from
#     each sub-script's;
#   - colours only on a terminal, and not under NO_COLOR;
#   - a long command gets a heartbeat, a failed one its log's tail and one error line, and one
#     that is interrupted is taken down with everything it started;
#   - the VM's verdict lines come out as they arrive, not when the VM ends;
#   - `./lguest-dev list` names the scenarios without building anything.
# One line per test, `ok: ...` or `FAIL: ...`; the exit status is 0 only if every test passed.
set -euo pipefail
HARNESS=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# A cache of its own, so nothing here touches a real one.
export LGUEST_CACHE=$work/cache
unset LGUEST_T0 NO_COLOR
failed=0

# expect WHAT COMMAND...: one test, passed if COMMAND succeeds.
expect() {
    local what=${1//$'\n'/ | }; shift
    if "$@"; then
        echo "ok: $what"
    else
        echo "FAIL: $what"
        failed=1
    fi
}

# in_harness SHELL-CODE: runs SHELL-CODE in a bash that has sourced common.sh.
in_harness() {
    bash -c ". '$HARNESS/common.sh'; $1"
}

# on_terminal SHELL-CODE: in_harness, with a pseudo-terminal as stdin, stdout and stderr.
on_terminal() {
    script -qec "bash -c \". '$HARNESS/common.sh'; $1\"" /dev/null
}

has_escape() { grep -q $'\033\\[' <<<"$1"; }
not() { ! "$@"; }

# The counter: a command that started 100 s ago says so in a sub-script.
said=$(LGUEST_T0=$(($(date +%s) - 100)) in_harness 'step building' 2>&1)
expect "[Ns] counts from LGUEST_T0: $said" grep -qE '^==> building \[1[0-9]{2}s\]$' <<<"$said"

# Colours.
said=$(in_harness 'step plain; ok plain; (die plain)' 2>&1 || true)
expect "no colour when stderr is not a terminal" not has_escape "$said"
said=$(on_terminal 'step coloured')
expect "colour on a terminal" has_escape "$said"
said=$(NO_COLOR=1 on_terminal 'step uncoloured')
expect "no colour on a terminal under NO_COLOR" not has_escape "$said"

# The heartbeat: a second apart here, 30 s in use.
said=$(HEARTBEAT_SECONDS=1 in_harness \
    "run_watched '$work/watched.log' 'slow job' sh -c 'echo working on it; sleep 3'" 2>&1)
expect "a heartbeat while a long command runs: $said" \
    grep -qE '^    slow job: [0-9]+s, working on it$' <<<"$said"
status=0
said=$(in_harness "run_with_progress '$work/failed.log' 'bad job' sh -c 'echo why; exit 3'" 2>&1) ||
    status=$?
expect "a failed command fails ($status)" [ "$status" = 1 ]
expect "a failed command shows its log's tail: $said" grep -qx why <<<"$said"
expect "a failed command ends in one error line: $said" \
    grep -qx "error: bad job failed (full log: $work/failed.log)" <<<"$said"

# An interrupted run_watched takes its command down (and the command's children with it). A
# script's background job ignores SIGINT, so TERM stands in for Ctrl-C; the trap is the same.
bash -c ". '$HARNESS/common.sh'
    run_watched '$work/killed.log' 'long job' sh -c 'echo \$\$ >$work/job.pid; exec sleep 600'" \
    2>/dev/null &
harness=$!
for _ in $(seq 300); do
    [ -s "$work/job.pid" ] && break
    sleep 0.1
done
job=$(cat "$work/job.pid" 2>/dev/null || echo none)
kill -TERM "$harness"
status=0
wait "$harness" || status=$?
expect "an interrupted build ends with 130 ($status)" [ "$status" = 130 ]
expect "an interrupted build's command started" [ "$job" != none ]
expect "an interrupted build takes its command ($job) with it" not kill -0 "$job" 2>/dev/null
[ "$job" = none ] || kill "$job" 2>/dev/null || true

# Verdict lines as they come: the first is out while the VM still runs (here, until the test
# says so, or 30 s).
mkfifo "$work/console"
in_harness "verdicts '$work/verdicts.log' <'$work/console' >'$work/verdicts.out'" &
filter=$!
{
    printf 'booting\r\n\033[0me2e first: PASS\r\n'
    for _ in $(seq 300); do
        [ -e "$work/seen" ] && break
        sleep 0.1
    done
    printf 'e2e second: PASS\r\n'
} >"$work/console" &
producer=$!
for _ in $(seq 300); do
    grep -qs first "$work/verdicts.out" && break
    sleep 0.1
done
seen_early=$(cat "$work/verdicts.out")
touch "$work/seen"
wait "$producer" "$filter"
expect "a verdict is shown before the VM ends: '$seen_early'" [ "$seen_early" = "e2e first: PASS" ]
expect "the log keeps the console without carriage returns or escapes" \
    [ "$(cat "$work/verdicts.log")" = "$(printf 'booting\ne2e first: PASS\ne2e second: PASS')" ]

# The list, from an empty cache: names, and nothing built.
listed=$("$HARNESS/../../lguest-dev" list)
expect "./lguest-dev list starts with module-load" [ "$(head -n 1 <<<"$listed")" = module-load ]
expect "./lguest-dev list ends with module-unload" [ "$(tail -n 1 <<<"$listed")" = module-unload ]
expect "./lguest-dev list names them all" [ "$(wc -l <<<"$listed")" -gt 70 ]
expect "./lguest-dev list builds nothing" [ -z "$(ls -A "$LGUEST_CACHE")" ]

exit "$failed"
