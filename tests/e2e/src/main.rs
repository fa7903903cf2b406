//! lguest-e2e: the end-to-end tests, run inside the QEMU VM on the project's host kernel.
//!
//! Everything that needs lg.ko loaded into a real kernel is tested here: loading and unloading
//! the module, the /dev/lguest ABI request by request (every refusal with its errno), who may
//! use a guest, the launcher as a user meets it, and guests running at ring 1, friendly and
//! hostile. The VM's initramfs holds this binary (static), lg.ko, the launcher, the guests
//! (/guests) and a kernel image; the host-side harness boots it, runs
//! `lguest-e2e <scenario>...`, and counts the lines.
//!
//! Usage: `lguest-e2e <scenario>...`, `lguest-e2e all`, `lguest-e2e list` (or `lguest-e2e bench`,
//! figures rather than tests: src/bench.rs; or `lguest-e2e tcp-peer ADDRESS`, the host's end of
//! the Linux guest's TCP figures, which the bench also runs on the machine outside the VM:
//! src/tcp_peer.rs). Each scenario
//! prints exactly one verdict line, `e2e <name>: PASS` or `e2e <name>: FAIL: <why>` (before it,
//! `e2e-info <name>: took S s`, and from a few `e2e-figure` or more `e2e-info` lines, for the
//! benchmark, the timeouts and the reader: the harness ignores them), and the exit code is 0 iff
//! all passed (2 for a usage error). Each scenario watches the kernel log while it runs (a WARN
//! or oops fails it) and leaves lg.ko loaded, so the next starts from a known state.

mod bench;
mod check;
mod elf;
mod inprocess;
mod kmod;
mod kmsg;
mod launch;
mod leak;
mod lguest;
mod netns;
mod pinned;
mod procfs;
mod scenarios;
mod tcp_peer;

use std::panic::{self, AssertUnwindSafe};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Instant;

use scenarios::{Scenario, SCENARIOS, SOAKS};

/// The last panic's message and place, kept by the panic hook for the FAIL line.
static PANIC: Mutex<Option<String>> = Mutex::new(None);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        eprintln!("usage: lguest-e2e <scenario>... | all | list | bench | tcp-peer ADDRESS");
        return ExitCode::from(2);
    }
    // Not a scenario: figures for `./lguest-dev bench`, with no verdict (src/bench.rs).
    if args == ["bench"] {
        return bench::run();
    }
    if let [word, arg] = &args[..] {
        // Not a scenario: the second half of abi-owner's exec case, in the program it exec'd.
        if word == scenarios::READ_AFTER_EXEC {
            return scenarios::read_after_exec(arg);
        }
        // Not a scenario: a server for the bench's TCP figures, until it is killed.
        if word == "tcp-peer" {
            return tcp_peer::run(arg);
        }
    }
    if args == ["list"] {
        for s in &SCENARIOS {
            println!("{}", s.name);
        }
        return ExitCode::SUCCESS;
    }
    let mut chosen: Vec<&Scenario> = Vec::new();
    for arg in &args {
        if arg == "all" {
            chosen.extend(SCENARIOS.iter());
        } else if let Some(s) = SCENARIOS.iter().chain(&SOAKS).find(|s| s.name == arg) {
            chosen.push(s);
        } else {
            eprintln!("lguest-e2e: unknown scenario '{arg}' (`lguest-e2e list` shows them)");
            return ExitCode::from(2);
        }
    }

    // A panic is a failed scenario, not the end of the run: keep its message for the FAIL line
    // instead of letting the default hook print it.
    panic::set_hook(Box::new(|info| {
        let text = info.to_string().replace('\n', " ");
        *PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(text);
    }));

    let mut all_passed = true;
    for s in chosen {
        let start = Instant::now();
        let verdict = run(s);
        // For sizing the timeouts (docs/building.md): how long each scenario takes.
        println!(
            "e2e-info {}: took {:.1} s",
            s.name,
            start.elapsed().as_secs_f64()
        );
        all_passed &= verdict.is_ok();
        match verdict {
            Ok(()) => println!("e2e {}: PASS", s.name),
            Err(why) => println!("e2e {}: FAIL: {why}", s.name),
        }
    }
    if all_passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs one scenario; `Err` holds the one-line reason it failed.
fn run(s: &Scenario) -> Result<(), String> {
    let mut log = kmsg::KmsgCursor::at_end().map_err(one_line)?;
    let outcome = catch_panic(s.run).and_then(|result| result.map_err(one_line));
    // Leave the module loaded whatever happened, so one failure does not cascade.
    let reloaded =
        kmod::ensure_loaded().map_err(|e| format!("cannot reload lg.ko: {}", one_line(e)));
    // The host's log is checked even when the scenario failed: an oops explains more than the
    // errno that followed it.
    let alarm = match log.first_alarm() {
        Ok(Some(line)) => Err(format!("host kernel log: {line}")),
        Ok(None) => Ok(()),
        Err(e) => Err(one_line(e)),
    };
    match (outcome, alarm) {
        (Err(why), Err(log)) => Err(format!("{why} ({log})")),
        (Err(why), Ok(())) | (Ok(()), Err(why)) => Err(why),
        (Ok(()), Ok(())) => reloaded,
    }
}

/// Runs `f`, turning a panic into its message and place (kept by the hook `main` installs).
fn catch_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    panic::catch_unwind(AssertUnwindSafe(f)).map_err(|_| {
        let text = PANIC.lock().unwrap_or_else(|e| e.into_inner()).take();
        text.unwrap_or_else(|| "panicked".to_owned())
    })
}

/// An error with its causes, on one line: "outer: cause: root cause".
fn one_line(e: anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " | ")
}
