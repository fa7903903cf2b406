//! `launcher-stats`: lg.ko's exit statistics hold against the guest's own count.
//!
//! The teaching guest's count mode does a known workload and then prints what it counted
//! itself: the hypercalls it made and queued, by number, and the traps and interrupts its
//! handlers took (guest/src/count.rs). The launcher's `--stats` prints what lg.ko counted of the
//! same run. Each of the guest's numbers must be lg.ko's: a hypercall's exits, the calls carried
//! out from the asynchronous ring, the #UDs, the page faults reflected to the guest (every page
//! fault its handler took), the IRQs delivered; and lg.ko's exits must add up to its trips into
//! the guest. A run with devices shows their MMIO exits by device page, each under its device's
//! name. Then `lguest-stat` watches a running guest, once and live, until the guest ends.

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use anyhow::{ensure, Context};
use lguest_abi::hcall;
use lguest_abi::stats::{Bucket, Family};

use crate::check::Checks;
use crate::kmod;
use crate::launch;

const TEACHING: &str = "/guests/teaching-guest";
const LGUEST_STAT: &str = "/bin/lguest-stat";
/// What count mode does a known number of times (guest/src/count.rs).
const NOPS: u64 = 1000;
const UD2S: u64 = 100;
/// A count-mode run took 2 s on 2 shared cores; a watched long run its 3 s and a boot.
const PATIENCE: Duration = Duration::from_secs(60);

/// `launcher-stats`.
pub fn stats() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let mut c = Checks::new();
    c.ok("--stats against count mode", counts_match());
    c.ok("--stats with devices", devices_by_page());
    c.ok("lguest-stat", lguest_stat());
    c.finish()
}

/// The guest's tally: (kind, number) to count, kind one of hypercall, queued, trap, irq.
fn guest_tally(stdout: &str) -> anyhow::Result<BTreeMap<(String, u64), u64>> {
    ensure!(
        stdout.lines().any(|line| line == "count: done"),
        "the guest did not finish its count: {}",
        launch::shorten(stdout)
    );
    let mut tally = BTreeMap::new();
    for line in stdout.lines() {
        let Some(rest) = line.strip_prefix("count ") else {
            continue;
        };
        let parsed = rest.split_once(": ").and_then(|(what, count)| {
            let (kind, number) = what.split_once(' ')?;
            Some(((kind.to_owned(), number.parse().ok()?), count.parse().ok()?))
        });
        let (key, count) = parsed.with_context(|| format!("the guest printed {line:?}"))?;
        tally.insert(key, count);
    }
    Ok(tally)
}

/// lg.ko's counts from `--stats`'s table on stderr: each row starts with the bucket's key and
/// its count.
fn host_counts(stderr: &str) -> anyhow::Result<BTreeMap<Bucket, u64>> {
    let table = stderr
        .split_once("exits and events lg.ko counted")
        .map(|(_, table)| table)
        .with_context(|| format!("no --stats table on stderr: {}", launch::shorten(stderr)))?;
    let mut counts = BTreeMap::new();
    for line in table.lines() {
        let mut words = line.split_whitespace();
        let (Some(key), Some(count)) = (words.next(), words.next()) else {
            continue;
        };
        if let (Some(bucket), Ok(count)) = (Bucket::from_key(key), count.parse()) {
            counts.insert(bucket, count);
        }
    }
    ensure!(
        counts.contains_key(&Bucket::SWITCHES),
        "the --stats table has no switches row: {}",
        launch::shorten(table)
    );
    Ok(counts)
}

fn counts_match() -> anyhow::Result<()> {
    let run = launch::launch(&["--stats", "64m", TEACHING, "count"], PATIENCE)?;
    ensure!(
        run.code == Some(0),
        "expected exit 0, got {}: {}",
        run.status(),
        run.shown()
    );
    let guest = guest_tally(&run.stdout)?;
    let host = host_counts(&run.stderr)?;
    let ours =
        |kind: &str, number: u64| guest.get(&(kind.to_owned(), number)).copied().unwrap_or(0);
    let lg = |bucket: Option<Bucket>| bucket.and_then(|b| host.get(&b).copied()).unwrap_or(0);
    let mut c = Checks::new();
    for number in 0..Family::Hypercall.buckets() {
        let (made, exits) = (ours("hypercall", number), lg(Bucket::hypercall(number)));
        match number {
            // The report's own lines, and the power-off after it, come after the guest counted.
            hcall::CONSOLE_WRITE => c.that(exits > made, || {
                format!("CONSOLE_WRITE: lg.ko counted {exits}, fewer than the {made} before the report")
            }),
            hcall::SHUTDOWN => c.that(made == 0 && exits == 1, || {
                format!("SHUTDOWN: the guest made {made} before its report, lg.ko counted {exits} (0 and 1 due)")
            }),
            _ => c.that(made == exits, || {
                format!("hypercall {number}: the guest made {made}, lg.ko counted {exits}")
            }),
        }
        let (queued, carried_out) = (ours("queued", number), lg(Bucket::queued(number)));
        c.that(queued == carried_out, || {
            format!("hypercall {number} queued: the guest queued {queued}, lg.ko carried out {carried_out}")
        });
    }
    c.that(ours("hypercall", hcall::NOP) == NOPS, || {
        format!(
            "the guest made {} NOPs, not its {NOPS}",
            ours("hypercall", hcall::NOP)
        )
    });
    for number in 0..Family::Irq.buckets() {
        let (taken, delivered) = (ours("irq", number), lg(Bucket::irq(number)));
        c.that(taken == delivered, || {
            format!("IRQ {number}: the guest took {taken}, lg.ko delivered {delivered}")
        });
    }
    let (ud, ud_exits) = (ours("trap", 6), lg(Bucket::trap(6)));
    c.that(ud == UD2S && ud_exits == UD2S, || {
        format!("#UD: the guest took {ud}, lg.ko counted {ud_exits} ({UD2S} due)")
    });
    let (faults, reflected) = (ours("trap", 14), lg(Some(Bucket::FAULT_REFLECTED)));
    c.that(faults == reflected && faults > 0, || {
        format!("page faults: the guest's handler took {faults}, lg.ko reflected {reflected}")
    });
    c.that(lg(Some(Bucket::FAULT_FIXED)) > 0, || {
        "lg.ko filled no shadow entry: fault-fixed is 0".to_owned()
    });
    c.that(lg(Some(Bucket::DIED)) == 0, || {
        "a guest that powered off counted as died".to_owned()
    });
    let exits: u64 = host
        .iter()
        .filter(|(b, _)| b.is_exit())
        .map(|(_, n)| n)
        .sum();
    let switches = lg(Some(Bucket::SWITCHES));
    c.that(exits == switches, || {
        format!("lg.ko's exits add up to {exits}, its trips into the guest to {switches}")
    });
    c.finish()
}

/// The teaching guest's devices mode with an entropy source: its console (device page 0) and
/// the rng (page 1) both take MMIO exits, named as such, and no other page does.
fn devices_by_page() -> anyhow::Result<()> {
    let run = launch::launch(&["--stats", "--rng", "64m", TEACHING, "devices"], PATIENCE)?;
    ensure!(
        run.code == Some(0) && run.stdout.contains("selftest rng-entropy: PASS"),
        "expected the rng's self-test to pass, got {}: {}",
        run.status(),
        launch::shorten(&run.stdout)
    );
    let host = host_counts(&run.stderr)?;
    let mut c = Checks::new();
    for (page, name) in [(0, "(console)"), (1, "(rng)")] {
        let bucket = Bucket::device_page(page);
        let row = run
            .stderr
            .lines()
            .find(|line| line.trim_start().starts_with(&format!("{bucket} ")));
        c.that(
            host.get(&bucket).is_some_and(|&n| n > 0) && row.is_some_and(|row| row.ends_with(name)),
            || format!("device page {page}: expected MMIO exits named {name}, got row {row:?}"),
        );
    }
    let others: Vec<String> = host
        .keys()
        .filter(|bucket| bucket.family() == Family::Mmio && bucket.number() > 1)
        .map(ToString::to_string)
        .collect();
    c.that(others.is_empty(), || {
        format!("MMIO exits on pages with no device: {others:?}")
    });
    c.finish()
}

/// `lguest-stat` with no guest is one line and a failure; with one, `--once` shows its table,
/// and the live view refreshes until the guest ends, then ends itself.
fn lguest_stat() -> anyhow::Result<()> {
    let mut c = Checks::new();
    let alone = Command::new(LGUEST_STAT)
        .arg("--once")
        .output()
        .context(LGUEST_STAT)?;
    let said = String::from_utf8_lossy(&alone.stderr);
    c.that(
        alone.status.code() == Some(1)
            && said.lines().count() == 1
            && said.contains("no guest is running"),
        || {
            format!(
                "with no guest: expected exit 1 and one line, got {:?}: {said:?}",
                alone.status
            )
        },
    );

    let mut running = launch::spawn(&["64m", TEACHING, "long-run", "3"])?;
    running.wait_for("mode: long-run", 1, PATIENCE)?;
    // The launcher's PID, as a user knows it: its guest runs in a child (supervise.rs), which
    // lguest-stat finds.
    let pid = running.pid().to_string();
    let guest_pid = running.guest_pid(PATIENCE)?;
    let once = Command::new(LGUEST_STAT)
        .args(["--once", &pid])
        .output()
        .context(LGUEST_STAT)?;
    let table = String::from_utf8_lossy(&once.stdout);
    let switches = table
        .lines()
        .find_map(|line| line.trim_start().strip_prefix("switches "))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok());
    c.that(
        once.status.success()
            && table.contains(&format!("the guest of process {guest_pid} "))
            && switches.is_some_and(|n| n > 0),
        || {
            format!(
                "--once {pid}: expected its switches, got {:?}: {}",
                once.status,
                launch::shorten(&table)
            )
        },
    );
    let live = output_within(
        Command::new(LGUEST_STAT).args(["--interval", "0.5"]),
        PATIENCE,
    )?;
    let view = String::from_utf8_lossy(&live.stdout);
    c.that(
        live.status.success()
            && view.contains("per second")
            && view.trim_end().ends_with("has ended"),
        || {
            format!(
                "live: expected tables until the guest ended, got {:?}: {}",
                live.status,
                launch::shorten(&view)
            )
        },
    );
    let run = running.finish(PATIENCE)?;
    c.that(run.code == Some(0), || {
        format!("the watched guest: {}: {}", run.status(), run.shown())
    });
    c.finish()
}

/// Runs `command` to its end and returns what it said; one that still runs after `patience` is
/// killed, and that is an error.
fn output_within(command: &mut Command, patience: Duration) -> anyhow::Result<Output> {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {command:?}"))?;
    let pid = child.id();
    let (done, output) = mpsc::channel();
    // The pipes are drained while it runs, so it cannot stall on a full one.
    thread::spawn(move || done.send(child.wait_with_output()));
    match output.recv_timeout(patience) {
        Ok(output) => Ok(output?),
        Err(_) => {
            // Our child, not yet waited for (the thread still waits), so the pid is still its.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            anyhow::bail!("{command:?} still ran after {patience:?}")
        }
    }
}
