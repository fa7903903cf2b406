//! The teaching guest (guest/) under lg.ko: its self-tests, and its scheduler over a long run.
//!
//! The same image QEMU boots natively (`teaching-guest-native`) boots here at ring 1 on the
//! paravirt-ops crate's lguest backend: `teaching-guest-lguest` runs its self-tests, and
//! `guest-long-run` its two tasks and 1 ms tick for a minute of guest time, to show that the
//! host keeps time and keeps nothing it should have given back.

use std::time::Duration;

use anyhow::{bail, ensure};

use crate::check::Checks;
use crate::kmod;
use crate::launch;
use crate::leak::{self, Snapshot};

use super::guest::{hello_still_runs, MEM, PATIENCE};

/// `teaching-guest-lguest`: the teaching guest (guest/), the same image QEMU boots natively in
/// `teaching-guest-native`, boots under lg.ko at ring 1 with the paravirt-ops crate's lguest
/// backend, and every self-test it runs passes.
pub fn teaching_guest() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let run = launch::spawn(&[MEM, "/guests/teaching-guest"])?.finish(PATIENCE)?;
    let mut c = Checks::new();
    let failed: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("selftest ") && l.contains(": FAIL"))
        .collect();
    let summary = run.stdout.lines().find(|l| l.starts_with("selftests: "));
    c.that(run.code == Some(0) && failed.is_empty() && summary.is_some_and(|l| l.ends_with(" 0 failed")), || {
        format!(
            "expected exit 0 and every self-test passing, got {}; failures: {failed:?}; summary: {summary:?}; stderr: {}",
            run.status(),
            run.shown()
        )
    });
    c.that(run.stdout.contains("ring 1"), || {
        format!(
            "expected it to say it runs at ring 1: {}",
            run.shown_stdout()
        )
    });
    c.finish()
}

/// The deadlines after the last tick, which are neither ticks nor lost: the guest stops its tick
/// a moment after the last one came, or after a stop of the host's that came at the very end
/// (measured as for [`PATIENCE`]: at most 3 ms, and 11 ms slowed three times). A second is far
/// more than that, and far less than what a tick with relative deadlines falls behind by when
/// the host keeps the guest waiting: this suite's runs lost 2000 to 5500 ticks in 30 s (23000
/// slowed), which relative deadlines would have pushed as many milliseconds back instead.
const UNACCOUNTED_MS: u64 = 1000;

/// `guest-long-run`: the teaching guest runs its scheduler (two user tasks, a 1 ms timer tick)
/// for 60 s of guest time under lg.ko, as two guests of 30 s so that a host leak shows in both
/// rounds. The ticks keep coming to the end and the deadlines stay absolute: every millisecond
/// of the run is a tick or a lost one, give or take [`UNACCOUNTED_MS`] at the end; both tasks
/// got time slices (only the tick switches them); the guest gets all its frames back, and so
/// does the host. How many ticks were lost is a speed figure, not a verdict: `./lguest-dev bench`
/// sets it beside the same guest's natively.
pub fn long_run() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    hello_still_runs()?;
    Snapshot::take()?;
    let mut figures = Vec::new();
    // 30000 ticks and as many task switches a round: a leak of one object each is tens of
    // thousands.
    leak::grows_in_every_round("30 s of the teaching guest's scheduler", 2, 1000, || {
        let args = [MEM, "/guests/teaching-guest", "long-run", "30"];
        let run = launch::spawn(&args)?.finish(LONG_RUN_PATIENCE)?;
        let line = |prefix: &str| {
            run.stdout
                .lines()
                .find_map(|l| l.strip_prefix(prefix).map(str::to_owned))
        };
        // "T ticks in M ms, tasks ran A and B times, lost L"
        let counts = line("long-run: ").and_then(|rest| {
            let (ticks, rest) = rest.split_once(" ticks in ")?;
            let (ms, rest) = rest.split_once(" ms, tasks ran ")?;
            let (runs, lost) = rest.rsplit_once(" times, lost ")?;
            let (a, b) = runs.split_once(" and ")?;
            Some(LongRun {
                ticks: ticks.parse().ok()?,
                ms: ms.parse().ok()?,
                runs: [a.parse().ok()?, b.parse().ok()?],
                lost: lost.parse().ok()?,
            })
        });
        // "F free before the run, G after"
        let frames = line("frames: ").and_then(|rest| {
            let (before, after) = rest
                .strip_suffix(" after")?
                .split_once(" free before the run, ")?;
            Some((before.to_owned(), after.to_owned()))
        });
        let (Some(counts), Some((before, after))) = (counts, frames) else {
            bail!(
                "long-run: expected its figures, got {}; stdout: {}; stderr: {}",
                run.status(),
                run.shown_stdout(),
                run.shown()
            );
        };
        let LongRun {
            ticks,
            ms,
            runs,
            lost,
        } = counts;
        ensure!(
            run.code == Some(0),
            "long-run: expected exit 0, got {}; stderr: {}",
            run.status(),
            run.shown()
        );
        ensure!(
            ticks > 0 && runs.iter().all(|&r| r > 1),
            "long-run: the tick stopped: {ticks} ticks, the tasks ran {runs:?} times"
        );
        // Deadlines are absolute: a late tick is lost, never a later deadline. One more than the
        // milliseconds would be a tick counted twice (or a burst catching up).
        let accounted = ticks + lost;
        ensure!(
            accounted <= ms + 1 && accounted + UNACCOUNTED_MS >= ms,
            "long-run: {ticks} ticks and {lost} lost in {ms} ms: the deadlines did not stay \
             absolute (every millisecond but the last {UNACCOUNTED_MS} must be one or the other)"
        );
        ensure!(
            before == after,
            "long-run: the guest's frames went from {before} to {after}"
        );
        figures.push(format!(
            "{ticks} ticks/{ms} ms, {lost} lost, {} unaccounted",
            ms.saturating_sub(accounted)
        ));
        Ok(())
    })?;
    println!("e2e-info guest-long-run: {}", figures.join("; "));
    Ok(())
}

/// How long a 30 s `long-run` guest may take: its 30 s of TSC time, which pass at the wall
/// clock's pace however slow the machine, and its boot and exit (31 s either way, measured as for
/// [`PATIENCE`]).
const LONG_RUN_PATIENCE: Duration = Duration::from_secs(150);

/// What a `long-run` guest counted.
struct LongRun {
    ticks: u64,
    ms: u64,
    /// The time slices each task got.
    runs: [u64; 2],
    lost: u64,
}
