//! Hostile guests: the ring-1 guest attacks the host, and must die for it while the host lives on.
//!
//! The attacks are the ring-1 guest's (tests/guests/ring1/src/attacks.rs and its neighbours);
//! the rules for judging them are guest.rs's `died`: the guest announces its attack, the launcher
//! exits 3 with one line saying the host killed the guest, and a fresh `hello` guest runs
//! afterwards. Here are the scenarios built on those rules:
//!
//! - `guest-hostile-<attack>`, one scenario per attack, each run with the Switcher's fast paths
//!   and without ([`dies_for`]); mod.rs lists them, and checks its list against the guest's own
//!   ATTACKS table, so that an attack the guest learns cannot go untested;
//! - `guest-hostile-int` (every vector) and `guest-hostile-switcher-pages` (every page of the
//!   Switcher window), one attack with many arguments;
//! - `hostile-idt-gdt` and `hostile-pagetable`: gates, GDT descriptors and page tables the host
//!   must refuse, each with the reason the guest dies for.

use std::time::Duration;

use crate::check::Checks;
use crate::kmod;
use crate::launch::launch;
use lg_module::abi::data::SWITCHER_WINDOW_START;
use lg_module::abi::PAGE_SIZE;
use lg_module::layout;

use super::guest::{
    died, guest, hello_still_runs, runs_to, FAST_PATH_CHOICES, GUEST, MEM, PATIENCE,
};

/// `guest-hostile-<attack>`: the guest tries `attack` and must die for it, with the fast paths
/// and without; the host lives on.
pub fn dies_for(attack: &str) -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let mut c = Checks::new();
    for (how, options) in FAST_PATH_CHOICES {
        c.ok(how, attacked(attack, options));
    }
    c.ok("after the attack", hello_still_runs());
    c.finish()
}

/// One run of `attack`, with the launcher's `options`: killed for it, as `dies_for` requires.
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
/// The ring-1 guest's attacks on one Switcher page, which `guest-hostile-switcher-pages` makes
/// on each.
pub(super) const SWITCHER_PAGE_ATTACKS: [&str; 2] = ["write-switcher-page", "read-switcher-page"];

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
        for attack in SWITCHER_PAGE_ATTACKS {
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

/// The TLS descriptors `hostile-idt-gdt` offers LOAD_GDT_ENTRY: a system descriptor (a TSS), a
/// call gate, a 64-bit code segment, and ordinary data segments for entries other than the TLS
/// ones (the guest kernel's code segment, the host's).
const BAD_DESCRIPTORS: [&str; 5] = [
    "gdt-system",
    "gdt-call-gate",
    "gdt-long",
    "gdt-kernel-entry",
    "gdt-host-entry",
];

/// `hostile-idt-gdt`: every forbidden kind of gate and of GDT descriptor is refused (the guest
/// dies with LOAD_IDT_ENTRY's or LOAD_GDT_ENTRY's reason), a TLS segment the host takes loads
/// with its base and no more privilege than ring 1 (`gdt-tls`), and the host runs a fresh guest
/// afterwards.
pub fn bad_gates() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let mut c = Checks::new();
    let refused = BAD_GATES
        .map(|attack| (attack, "LOAD_IDT_ENTRY"))
        .into_iter()
        .chain(BAD_DESCRIPTORS.map(|attack| (attack, "LOAD_GDT_ENTRY")));
    for (attack, reason) in refused {
        let run = guest(&[attack], PATIENCE)?;
        died(&mut c, &[attack], &run);
        c.that(run.stderr.contains(reason), || {
            format!("{attack}: expected a {reason} reason, got: {}", run.shown())
        });
    }
    c.ok(
        "gdt-tls",
        runs_to(
            &["gdt-tls"],
            "gdt-tls: fs base 0x123000, a DPL 0 segment came back DPL 1",
        ),
    );
    c.ok("after the gates", hello_still_runs());
    c.finish()
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
