//! Guests that run: the ring-1 guest (tests/guests/ring1) under lg.ko, and the rules every
//! scenario that runs it judges by.
//!
//! Every scenario here starts `lguest-launcher 64m /guests/ring1 <scenario>` and judges the
//! run by what a user would see: the exit status, the guest's console on stdout, and the
//! launcher's one line on stderr. The guest's scenarios and attacks are described in
//! tests/guests/ring1/src (main.rs and attacks.rs). The rules:
//!
//! - a friendly guest (`hello`, `nop-loop`, `spin`) powers off: exit 0, and its line on stdout;
//! - a hostile guest announces its attack (`attack: <name>`) and must be killed by the host:
//!   exit 3 and exactly one stderr line, `lguest-launcher: guest died: <reason>`. A guest that
//!   survives says `attack <name>: survived (...)` and powers off, which fails the scenario;
//! - after every hostile guest a fresh `hello` guest must still run: a host that survived in
//!   name only fails there. (The runner checks the kernel log for oopses and warnings, too.)
//!
//! This file has the friendly scenarios and the helpers for those rules; the hostile guests are
//! in hostile.rs, hazards.rs and privileged.rs, the teaching guest in teaching_guest.rs.

use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::check::Checks;
use crate::launch::{self, launch, Run, FAILURE};
use crate::leak::{self, Snapshot};
use crate::lguest::Lguest;
use crate::{kmod, procfs};

/// The ring-1 guest, as the initramfs holds it (tests/harness/build-initramfs.sh).
pub(super) const GUEST: &str = "/guests/ring1";
/// Guest RAM for every run: the guest itself needs less than a megabyte.
pub(super) const MEM: &str = "64m";
/// What `hello` prints: CS is GDT entry 10 with RPL 1 (lguest-abi's `GUEST_KERNEL_CS`), and the
/// CPL is CS's low bits.
const HELLO: &str = "hello from ring 1: cs=0x51 cpl=1";
/// What the launcher prints, first, when the host killed its guest.
const DIED: &str = "lguest-launcher: guest died: ";
/// A guest that does one thing and stops takes a moment even under TCG; one that hangs is
/// killed after this and fails. The slowest, pin-churn's, took 3.8 s on 2 shared cores and 6.9 s
/// with LGUEST_SLOWDOWN=3 (docs/building.md): four times that.
pub(super) const PATIENCE: Duration = Duration::from_secs(30);

/// Runs the ring-1 guest with `words` on its command line.
pub(super) fn guest(words: &[&str], patience: Duration) -> anyhow::Result<Run> {
    let mut args = vec![MEM, GUEST];
    args.extend_from_slice(words);
    launch(&args, patience)
}

/// A fresh `hello` guest must run to its end: the host is still usable.
pub(super) fn hello_still_runs() -> anyhow::Result<()> {
    let run = guest(&["hello"], PATIENCE)?;
    ensure!(
        run.code == Some(0) && run.stdout.contains(HELLO),
        "a fresh hello guest afterwards: expected exit 0 and {HELLO:?}, got {}, stdout: {}, \
         stderr: {}",
        run.status(),
        run.shown_stdout(),
        run.shown()
    );
    Ok(())
}

/// `guest-hello`: the first guest prints its CS and CPL from ring 1, and the launcher exits 0
/// without a word of its own.
pub fn hello() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let run = guest(&["hello"], PATIENCE)?;
    let mut c = Checks::new();
    c.that(run.code == Some(0), || {
        format!(
            "expected exit 0, got {}; stderr: {}",
            run.status(),
            run.shown()
        )
    });
    c.that(run.stdout.lines().any(|l| l == HELLO), || {
        format!(
            "expected the line {HELLO:?} on stdout, got: {}",
            run.shown_stdout()
        )
    });
    c.that(run.stderr.is_empty(), || {
        format!("expected nothing on stderr, got: {}", run.shown())
    });
    c.finish()
}

/// Checks that `run`, the guest told to attack with `words`, got as far as the attack and was
/// killed for it: exit 3, one stderr line saying so, no "survived".
pub(super) fn died(c: &mut Checks, words: &[&str], run: &Run) {
    let what = words.join(" ");
    let announced = format!("attack: {}", words[0]);
    c.that(run.stdout.lines().any(|l| l == announced), || {
        format!(
            "{what}: the guest never announced its attack (stdout: {}; {}, stderr: {})",
            run.shown_stdout(),
            run.status(),
            run.shown()
        )
    });
    let lines = run.stderr.lines().count();
    let killed = run.code == Some(FAILURE) && lines == 1 && run.stderr.starts_with(DIED);
    c.that(killed, || {
        format!(
            "{what}: expected exit {FAILURE} and one stderr line starting {DIED:?}, got {} and \
             {lines} lines: {}; stdout: {}",
            run.status(),
            run.shown(),
            run.shown_stdout()
        )
    });
}

/// The two ways a guest can be run: with the Switcher's fast paths, as every guest starts, and
/// without (`--no-fast-paths`). A fast path is a second implementation of decisions the host
/// makes, so a scenario that shows a check holding shows it both ways.
pub(super) const FAST_PATH_CHOICES: [(&str, &[&str]); 2] = [
    ("with the fast paths", &[]),
    ("with --no-fast-paths", &["--no-fast-paths"]),
];

/// A guest scenario that must end with exit 0 and print a line starting `expected`.
pub(super) fn runs_to(words: &[&str], expected: &str) -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let run = guest(words, PATIENCE)?;
    let mut c = Checks::new();
    c.that(
        run.code == Some(0) && run.stdout.lines().any(|l| l.starts_with(expected)),
        || {
            format!(
            "{}: expected exit 0 and a line starting {expected:?}, got {}; stdout: {}; stderr: {}",
            words.join(" "),
            run.status(),
            run.shown_stdout(),
            run.shown()
        )
        },
    );
    c.finish()
}

/// `guest-traps`: exceptions (#UD, #DE, #GP, #PF with its address in lguest_data.cr2) and
/// software interrupts its IDT allows (int3, int $0x80) reach the guest's own handlers, with the
/// frame the ABI describes; the guest returns from each and goes on.
pub fn traps() -> anyhow::Result<()> {
    runs_to(
        &["traps"],
        "traps: #UD #DE #GP int3 int0x80 #PF reached their handlers",
    )
}

/// `guest-timer`: the timer's interrupt waits while the guest's virtual flag is off (and the
/// host says one is waiting), comes on SEND_INTERRUPTS, and wakes the guest from HALT.
pub fn timer() -> anyhow::Result<()> {
    runs_to(
        &["timer"],
        "timer: held while off, delivered on SEND_INTERRUPTS, 20 ticks in",
    )
}

/// `guest-user`: the guest switches to page tables of its own (NEW_PGTABLE) and runs a ring-3
/// program; its `int $0x80` (a direct trap, or a #GP the host turns into the guest's vector 0x80)
/// and its `syscall`s (a #UD the Switcher or the host turns into the guest's syscall vector, also
/// when the guest moved that vector behind the host's back, and with every protection key
/// denied) reach the guest kernel on the stack it gave SET_STACK, and the guest comes back to
/// ring 1; with the fast paths and without (tests/guests/ring1/src/user.rs).
pub fn user() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let mut c = Checks::new();
    for (how, options) in FAST_PATH_CHOICES {
        let mut args = options.to_vec();
        args.extend_from_slice(&[MEM, GUEST, "user"]);
        let expected = "user: int 0x80 and syscall from ring 3 reached the kernel";
        let run = launch(&args, PATIENCE)?;
        c.that(
            run.code == Some(0) && run.stdout.lines().any(|l| l.starts_with(expected)),
            || {
                format!(
                    "{how}: expected exit 0 and a line starting {expected:?}, got {}; stdout: \
                     {}; stderr: {}",
                    run.status(),
                    run.shown_stdout(),
                    run.shown()
                )
            },
        );
    }
    c.finish()
}

/// `guest-async`: hypercalls queued in lguest_data's ring run in order at the next synchronous
/// call, their slots come back done, and a console write may not be queued (`async-console`
/// dies for it).
pub fn async_ring() -> anyhow::Result<()> {
    runs_to(
        &["async"],
        "async: queued calls ran in order at FLUSH_ASYNC",
    )?;
    let run = guest(&["async-console"], PATIENCE)?;
    let mut c = Checks::new();
    died(&mut c, &["async-console"], &run);
    c.that(
        run.stderr.contains("queued in the asynchronous ring"),
        || {
            format!(
                "async-console: expected the queued-call reason, got: {}",
                run.shown()
            )
        },
    );
    c.finish()
}

/// Pages the guest maps in `guest-pins-released`.
const CHURNED_PAGES: i64 = 4000;

/// `guest-pins-released`: a guest maps 4000 different pages one after another, touching and
/// unmapping each (SET_PTE), then spins. A page is pinned only while a shadow entry maps it, so
/// while the guest spins the host holds a handful of pins, not 4000.
pub fn pins_released() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let before = leak::pinned_pages()?;
    let mut running = launch::spawn(&[MEM, GUEST, "pin-churn", &CHURNED_PAGES.to_string()])?;
    let mut most = 0;
    while running.alive()? {
        most = most.max(leak::pinned_pages()? - before);
        sleep(Duration::from_millis(20));
    }
    let run = running.finish(PATIENCE)?;
    let after = leak::pinned_pages()? - before;
    let mut c = Checks::new();
    c.that(
        run.code == Some(0) && run.stdout.contains("pin-churn: 4000 pages mapped"),
        || {
            format!(
                "expected the churn to finish, got {}: {}",
                run.status(),
                run.shown_stdout()
            )
        },
    );
    // The guest's kernel, stack, tables and lguest_data stay mapped: tens of pages.
    c.that(most > 0 && most < CHURNED_PAGES / 10, || {
        format!("while the guest ran, the host held up to {most} more pinned pages (expected a few, not {CHURNED_PAGES})")
    });
    c.that(after == 0, || {
        format!("{after} pages still pinned after the guest ended")
    });
    c.finish()
}

/// How long half a million hypercalls may take: 17 to 22 s, and 66 to 92 s slowed three times
/// (measured as for [`PATIENCE`]).
const SWITCHES_PATIENCE: Duration = Duration::from_secs(300);

/// `guest-many-switches`: a million null hypercalls, each a world switch there and back; the
/// host's memory afterwards is what it was. The guest's own timing is printed for the benchmark
/// as an `e2e-figure` line, which the harness ignores.
pub fn many_switches() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    // Warm up: the first guest creates things that stay, and so does the first look (see
    // module.rs's leak check).
    hello_still_runs()?;
    Snapshot::take()?;
    // Half a million switches, twice: a leak grows in every round, the kernel's own background
    // noise seldom does (leak.rs).
    let mut figure = None;
    // A leak per switch would be half a million objects a round (a leak per guest is
    // module-unload's to catch: it runs a hundred guests a round).
    leak::grows_in_every_round("half a million hypercalls", 2, 1000, || {
        let run = guest(&["nop-loop", "500000"], SWITCHES_PATIENCE)?;
        ensure!(
            run.code == Some(0),
            "nop-loop: expected exit 0, got {}; stderr: {}; stdout: {}",
            run.status(),
            run.shown(),
            run.shown_stdout()
        );
        let cycles = run
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("nop-loop: 500000 hypercalls, "))
            .and_then(|rest| rest.strip_suffix(" cycles each"))
            .with_context(|| format!("no nop-loop figure on stdout: {}", run.shown_stdout()))?;
        figure.get_or_insert_with(|| cycles.to_owned());
        Ok(())
    })?;
    if let Some(cycles) = figure {
        println!("e2e-figure nop-hypercall-cycles {cycles}");
    }
    Ok(())
}

/// How long `spin` guests spin in `guest-two-at-once`.
const SPIN_SECONDS: &str = "3";

/// `guest-two-at-once`: two guests spin at the same time, one on each CPU of the test VM, and
/// both finish.
pub fn two_at_once() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let mut a = launch::spawn(&[MEM, GUEST, "spin", SPIN_SECONDS])?;
    let mut b = launch::spawn(&[MEM, GUEST, "spin", SPIN_SECONDS])?;
    let (guest_a, guest_b) = (a.guest_pid(PATIENCE)?, b.guest_pid(PATIENCE)?);
    // Sample both while they run: their state and CPU, from /proc/<pid>/stat of the processes
    // that run them. Running at once means a sample with both running ('R'), on different CPUs.
    let mut together = 0;
    let mut samples = 0;
    let start = Instant::now();
    while a.alive()? && b.alive()? && start.elapsed() < Duration::from_secs(60) {
        let stat = |pid: i32| {
            procfs::read(&format!("/proc/{pid}/stat")).and_then(|s| procfs::stat_state_cpu(&s))
        };
        if let (Ok((sa, ca)), Ok((sb, cb))) = (stat(guest_a), stat(guest_b)) {
            samples += 1;
            if sa == 'R' && sb == 'R' && ca != cb {
                together += 1;
            }
        }
        sleep(Duration::from_millis(50));
    }
    let runs = [a.finish(PATIENCE)?, b.finish(PATIENCE)?];
    let mut c = Checks::new();
    for (name, run) in ["first", "second"].iter().zip(&runs) {
        let done = format!("spin: {SPIN_SECONDS} s done");
        c.that(run.code == Some(0) && run.stdout.contains(&done), || {
            format!(
                "{name} guest: expected exit 0 and {done:?}, got {}; stdout: {}; stderr: {}",
                run.status(),
                run.shown_stdout(),
                run.shown()
            )
        });
    }
    c.that(together > 0, || {
        format!("in {samples} samples the two guests never ran at the same time on two CPUs")
    });
    c.finish()
}

/// How long the two `fpu` guests may take: 6.5 to 8.4 s, and 25 to 32 s slowed three times
/// (measured as for [`PATIENCE`]), for their 200000 hypercalls.
const FPU_PATIENCE: Duration = Duration::from_secs(120);

/// `guest-fpu`: two guests on the two CPUs fill their vector registers with their own values
/// and check them all the while, across world switches and each other (and the runner, which
/// uses SSE as any Rust program does). Each must start from the reset state, not from another
/// task's registers, and keep what it put there.
pub fn fpu() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let a = launch::spawn(&[MEM, GUEST, "fpu", "1"])?;
    let b = launch::spawn(&[MEM, GUEST, "fpu", "2"])?;
    let runs = [a.finish(FPU_PATIENCE)?, b.finish(FPU_PATIENCE)?];
    let mut c = Checks::new();
    for (seed, run) in ["1", "2"].iter().zip(&runs) {
        let kept = format!("fpu: seed {seed}: clean at start, kept across");
        c.that(run.code == Some(0) && run.stdout.contains(&kept), || {
            format!(
                "guest with seed {seed}: expected exit 0 and {kept:?}, got {}; stdout: {}; stderr: {}",
                run.status(),
                run.shown_stdout(),
                run.shown()
            )
        });
    }
    c.finish()
}

/// `guest-ctrl-c`: SIGINT to the launcher of a guest that spins forever ends it, by that signal,
/// and leaves the host as it was: a fresh guest runs, and nothing holds lg.ko (module-unload, at
/// the end of the run, unloads it).
pub fn ctrl_c() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let mut spinner = launch::spawn(&[MEM, GUEST, "spin"])?;
    sleep(Duration::from_secs(1));
    ensure!(
        spinner.alive()?,
        "the spinning guest ended by itself: {}",
        spinner
            .finish(PATIENCE)
            .map(|r| format!("{}, stderr: {}", r.status(), r.shown()))
            .unwrap_or_else(|e| format!("{e:#}"))
    );
    kill(Pid::from_raw(spinner.pid()), Signal::SIGINT).context("kill -INT the launcher")?;
    let sent = Instant::now();
    // How soon it ends is not the verdict (a hang is): PATIENCE, as for any guest.
    let run = spinner.finish(PATIENCE)?;
    let mut c = Checks::new();
    c.that(run.signal == Some(Signal::SIGINT as i32), || {
        format!(
            "expected the launcher to die of SIGINT, got {} after {:?}; stderr: {}",
            run.status(),
            sent.elapsed(),
            run.shown()
        )
    });
    c.ok("after Ctrl-C", hello_still_runs());
    c.ok("open /dev/lguest", Lguest::open());
    c.ok("lg.ko's references", references_drop_to_zero());
    c.finish()
}

/// lg.ko's refcount must be back to zero once the launchers are gone (their files closed).
fn references_drop_to_zero() -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let module = kmod::loaded()?.context("lg is not loaded")?;
        if module.refcount == 0 {
            return Ok(());
        }
        if start.elapsed() > PATIENCE {
            bail!(
                "lg still has {} references with no launcher running",
                module.refcount
            );
        }
        sleep(Duration::from_millis(50));
    }
}
