//! Guests that run: the ring-1 guest (tests/guests/ring1) under lg.ko, friendly and hostile.
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
use lg_module::abi::data::SWITCHER_WINDOW_START;
use lg_module::abi::PAGE_SIZE;
use lg_module::layout;

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

/// `guest-hostile-<attack>`: the guest tries `attack` and must die for it, with the fast paths
/// and without; the host lives on.
pub fn hostile(attack: &str) -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let mut c = Checks::new();
    for (how, options) in FAST_PATH_CHOICES {
        c.ok(how, attacked(attack, options));
    }
    c.ok("after the attack", hello_still_runs());
    c.finish()
}

/// One run of `attack`, with the launcher's `options`: killed for it, as `hostile` requires.
fn attacked(attack: &str, options: &[&str]) -> anyhow::Result<()> {
    let mut args = options.to_vec();
    args.extend_from_slice(&[MEM, GUEST, attack]);
    let run = launch(&args, PATIENCE)?;
    let mut c = Checks::new();
    died(&mut c, &[attack], &run);
    let stdout = |needle: &str| run.stdout.lines().any(|l| l.contains(needle));
    match attack {
        // The CPU keeps IOPL at 0 for an iretq at CPL 1; the guest prints what it got, then
        // dies on `cli`.
        "iretq-iopl3" => c.that(run.stdout.lines().any(|l| l == "iopl=0"), || {
            format!("expected iopl=0 on stdout, got: {}", run.shown_stdout())
        }),
        // The hypercall made on the bad stack must come back (the trap frame goes on the host's
        // stack, not the guest's), with RSP untouched; only the guest's own push kills it.
        "bad-stack" => c.that(
            stdout("bad-stack: the hypercall returned") && stdout("rsp=0x700000000000"),
            || {
                format!(
                    "expected the hypercall on the bad stack to return with rsp=0x700000000000, \
                     got stdout: {}",
                    run.shown_stdout()
                )
            },
        ),
        // What the guest could read must hold no host address (a KASLR leak at least).
        "read-switcher-host" => c.that(leaked_host_addresses(&run.stdout).is_empty(), || {
            format!(
                "the Switcher window shows host addresses: {}",
                run.shown_stdout()
            )
        }),
        _ => {}
    }
    c.finish()
}

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

/// What `hostile-pagetable` tries, and the reason the host must give.
const BAD_PAGE_TABLES: [(&str, &str); 3] = [
    ("pt-beyond-ram", "beyond RAM"),
    ("pt-switcher-window", "Switcher window"),
    ("pt-rewritten", "beyond RAM"),
];

/// `hostile-pagetable`: page tables that map a frame beyond guest RAM, reach into the Switcher
/// window, or are rewritten in place after the host shadowed them: each kills the guest with
/// its reason, and a fresh guest runs afterwards.
pub fn bad_page_tables() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let mut c = Checks::new();
    for (attack, reason) in BAD_PAGE_TABLES {
        let run = guest(&[attack], PATIENCE)?;
        died(&mut c, &[attack], &run);
        c.that(run.stderr.contains(reason), || {
            format!(
                "{attack}: expected a reason with {reason:?}, got: {}",
                run.shown()
            )
        });
    }
    c.ok("after the page tables", hello_still_runs());
    c.finish()
}

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

/// The gates `hostile-idt-gdt` offers the host: task and call gates, gates into the host's
/// ring-0 segment or into user code, gates with an IST stack or a non-canonical handler, and a
/// gate for the hypercall vector.
const BAD_GATES: [&str; 7] = [
    "idt-call-gate",
    "idt-task-gate",
    "idt-ring0-selector",
    "idt-user-selector",
    "idt-ist",
    "idt-noncanonical",
    "idt-hypercall-vector",
];

/// `hostile-idt-gdt`: every forbidden kind of gate is refused (the guest dies with
/// LOAD_IDT_ENTRY's reason), and the host runs a fresh guest afterwards. (The GDT is the host's
/// alone: there is no hypercall to change it yet, so there is nothing there to refuse.)
pub fn bad_gates() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let mut c = Checks::new();
    for attack in BAD_GATES {
        let run = guest(&[attack], PATIENCE)?;
        died(&mut c, &[attack], &run);
        c.that(run.stderr.contains("LOAD_IDT_ENTRY"), || {
            format!(
                "{attack}: expected a LOAD_IDT_ENTRY reason, got: {}",
                run.shown()
            )
        });
    }
    c.ok("after the gates", hello_still_runs());
    c.finish()
}

/// A vector's run gets less time than most: 256 of them must fit in the test VM's budget. Each
/// took 0.05 s, and 0.2 s slowed three times (measured as for [`PATIENCE`]).
const VECTOR_PATIENCE: Duration = Duration::from_secs(10);
/// After this many hung runs, the rest of the vectors are not tried.
const HUNG_MAX: usize = 3;

/// `guest-hostile-int`: `int $n` from ring 1 for every vector: each must kill the guest (only
/// 0x1f is a hypercall, and the guest asks it for hypercall 999, which does not exist).
pub fn int_every_vector() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    // The vectors that did not kill the guest, and why the first of them failed.
    let mut wrong: Vec<String> = Vec::new();
    let mut first_why = String::new();
    let mut hung = 0;
    for vector in 0..=255u32 {
        let n = format!("{vector:#x}");
        let words = ["int", n.as_str()];
        let mut c = Checks::new();
        match guest(&words, VECTOR_PATIENCE) {
            Ok(run) => died(&mut c, &words, &run),
            Err(e) => {
                hung += 1;
                c.ok(&n, Err::<(), _>(e));
            }
        }
        if let Err(e) = c.finish() {
            if wrong.is_empty() {
                first_why = format!("{e:#}");
            }
            wrong.push(n);
        }
        if hung >= HUNG_MAX && vector < 255 {
            wrong.push(format!("(not tried: {:#x}..=0xff)", vector + 1));
            break;
        }
    }
    let mut c = Checks::new();
    c.that(wrong.is_empty(), || {
        format!(
            "these vectors did not kill the guest: {}; the first: {first_why}",
            wrong.join(" ")
        )
    });
    c.ok("after the attacks", hello_still_runs());
    c.finish()
}

/// The ring-1 guest's lines that report a host address it read in the Switcher window, but for
/// the Switcher's text (the first `layout::TEXT_PAGES` pages). The text is the module's
/// assembled code, the same bytes for every guest and for anyone who has lg.ko, and
/// build-module.sh refuses a Switcher whose text has a relocation, the only way a host address
/// could get in; eight bytes of instructions, though, can read like one (a `mov $-1` did). The
/// guest says `NAME: host address WORD at ADDRESS`, and `NAME: N host addresses in page K`.
fn leaked_host_addresses(stdout: &str) -> Vec<&str> {
    let text_end = SWITCHER_WINDOW_START + layout::TEXT_PAGES * PAGE_SIZE;
    let in_text = |line: &str| {
        let at = line
            .rsplit_once(" at 0x")
            .map(|(_, hex)| u64::from_str_radix(hex, 16));
        let page = line.rsplit_once(" in page ").map(|(_, k)| k.parse::<u64>());
        match (at, page) {
            (Some(Ok(address)), _) => (SWITCHER_WINDOW_START..text_end).contains(&address),
            (_, Some(Ok(k))) => k < layout::TEXT_PAGES,
            _ => false,
        }
    };
    stdout
        .lines()
        .filter(|line| line.contains("host address") && !in_text(line))
        .collect()
}

/// The Switcher window's pages that `guest-hostile-switcher-pages` writes and reads, from
/// lg.ko's own layout (lg-module/src/layout.rs): the text, the IDT, then one block per host CPU.
/// The test VM has two CPUs, so both blocks are covered, whichever CPU the guest runs on.
const SWITCHER_PAGES: u64 = layout::FIRST_BLOCK_PAGE + 2 * layout::BLOCK_PAGES;

/// `guest-hostile-switcher-pages`: a write to, and a read of, every Switcher page. A write must
/// kill the guest, except to a page the CPU itself writes while the guest runs (this CPU's
/// register page, where the trap frame lands): there the guest must go on as if nothing
/// happened (its next hypercalls work, it powers off cleanly). A read may succeed, but must find
/// no host address. Either way the host lives on.
pub fn switcher_pages() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let mut c = Checks::new();
    let mut writable = Vec::new();
    let mut readable = Vec::new();
    for k in 0..SWITCHER_PAGES {
        let k_str = k.to_string();
        for attack in ["write-switcher-page", "read-switcher-page"] {
            let words = [attack, k_str.as_str()];
            let run = match guest(&words, PATIENCE) {
                Ok(run) => run,
                Err(e) => {
                    c.ok(&words.join(" "), Err::<(), _>(e));
                    continue;
                }
            };
            if run.code == Some(0) {
                // The guest survived: it must say so, cleanly.
                let line = format!("attack {attack}: survived (");
                c.that(run.stdout.contains(&line) && run.stderr.is_empty(), || {
                    format!(
                        "{attack} {k}: exit 0 without a clean \"survived\": stdout: {}, \
                         stderr: {}",
                        run.shown_stdout(),
                        run.shown()
                    )
                });
                if attack == "write-switcher-page" {
                    writable.push(k);
                } else {
                    readable.push(k);
                }
            } else {
                died(&mut c, &words, &run);
            }
            c.that(leaked_host_addresses(&run.stdout).is_empty(), || {
                format!(
                    "{attack} {k}: the page shows host addresses: {}",
                    run.shown_stdout()
                )
            });
        }
    }
    // For the reader of the log, not for the verdict: what the window looks like from ring 1.
    println!(
        "e2e-info guest-hostile-switcher-pages: writable pages {writable:?}, readable pages \
         {readable:?}"
    );
    c.ok("after the attacks", hello_still_runs());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_addresses_count_outside_the_switchers_text_only() {
        let text = SWITCHER_WINDOW_START + 0x240;
        let idt = SWITCHER_WINDOW_START + layout::TEXT_PAGES * PAGE_SIZE + 0x10;
        let stdout = format!(
            "read-switcher-host: reading page 0 at {SWITCHER_WINDOW_START:#x}\n\
             read-switcher-host: host address 0xffffffffc7c74800 at {text:#x}\n\
             read-switcher-host: 3 host addresses in page 0\n\
             read-switcher-host: host address 0xffff888000001000 at {idt:#x}\n\
             read-switcher-host: 2 host addresses in page {}\n",
            layout::TEXT_PAGES
        );
        let leaks = leaked_host_addresses(&stdout);
        assert_eq!(leaks.len(), 2, "{leaks:?}");
        assert!(leaks[0].ends_with(&format!("at {idt:#x}")));
        assert!(leaked_host_addresses("x: host address 0x1 at nowhere").len() == 1);
    }
}
