//! Hostile guests whose hole is in the host's own state: registers the world switch must load
//! for the guest (LDTR) or put back for the host (DR6, PKRU). The guest's side is
//! tests/guests/ring1/src/hazards.rs.
//!
//! - `guest-hostile-ldt-call-gate`: the guest runs under a launcher that has an LDT (a child of
//!   this process gives itself one with modify_ldt and runs the guest in-process, as exec would
//!   drop it: src/inprocess.rs) and makes a far call through an LDT selector. It must die, as in
//!   every guest-hostile-* scenario, and no host address may reach it.
//! - `guest-hostile-single-step`: the guest single-steps on one CPU; then this process, on that
//!   CPU, raises a debug exception with `int1`, and Linux must find DR6 clean: SIGTRAP with
//!   TRAP_BRKPT, not the TRAP_TRACE of a single step.
//! - `guest-hostile-pkru`: the guest writes PKRU; the process that ran it must find its own
//!   PKRU afterwards.
//!
//! After each, a fresh `hello` guest must still run.

use std::arch::asm;
use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::{ensure, Context};
use lguest_launcher::run::Stop;
use nix::errno::Errno;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

use super::guest::{died, guest, hello_still_runs, GUEST, MEM, PATIENCE};
use crate::check::Checks;
use crate::inprocess::{self, InProcessRun};
use crate::kmod;
use crate::pinned::Pinned;

// ---- The LDT ----------------------------------------------------------------------------------

const LDT_ATTACK: &str = "ldt-call-gate";

/// Linux's `struct user_desc` (asm/ldt.h), as modify_ldt reads it: the entry, its base and
/// limit, and the bit fields seg_32bit, contents (2 bits), read_exec_only, limit_in_pages,
/// seg_not_present, useable, lm, from bit 0 up.
#[repr(C)]
struct UserDesc {
    entry_number: u32,
    base_addr: u32,
    limit: u32,
    flags: u32,
}

/// seg_32bit, limit_in_pages, useable: a flat 32-bit data segment, read-write and present.
const FLAT_DATA: u32 = 1 | 1 << 4 | 1 << 6;

/// Gives this process an LDT: a data segment in entry 1. Two entries make the LDT's limit 16
/// bytes, enough for the 16-byte call gate the guest looks for at entry 0; with a shorter limit
/// its far call would be #GP even on a host that leaves the LDT loaded, and the hole unseen.
fn install_ldt() -> anyhow::Result<()> {
    let desc = UserDesc {
        entry_number: 1,
        base_addr: 0,
        limit: 0xf_ffff,
        flags: FLAT_DATA,
    };
    // SAFETY: modify_ldt(1, ...) reads `desc`, which is ours and as long as the size says; it
    // changes only this process's LDT, which no code here uses.
    let written = unsafe {
        libc::syscall(
            libc::SYS_modify_ldt,
            1,
            &desc as *const UserDesc,
            size_of::<UserDesc>(),
        )
    };
    Errno::result(written).context("modify_ldt")?;
    Ok(())
}

/// guest.rs's `died` for a guest run in-process: it announced its attack, and the host killed
/// it.
fn died_in_process(c: &mut Checks, attack: &str, run: &InProcessRun) {
    let announced = format!("attack: {attack}");
    c.that(run.console.lines().any(|l| l == announced), || {
        format!(
            "{attack}: the guest never announced its attack (console: {}; it ended with {:?})",
            run.shown_console(),
            run.stop
        )
    });
    c.that(matches!(run.stop, Stop::Died(_)), || {
        format!(
            "{attack}: expected the host to kill the guest, it ended with {:?}; console: {}",
            run.stop,
            run.shown_console()
        )
    });
}

/// `guest-hostile-ldt-call-gate`: a guest whose launcher has an LDT calls through LDT entry 0.
/// The host must run it with no LDT (the call is #GP, and the guest, with no #GP handler,
/// dies): with the launcher's LDT loaded, the fault tells the guest the LDT's host address, and
/// a call gate the guest maps there takes it to ring 0.
pub fn ldt_call_gate() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let mut c = Checks::new();
    c.ok(
        "run by a launcher with an LDT",
        super::in_child(|| {
            install_ldt()?;
            let run = inprocess::run(MEM, GUEST, &[LDT_ATTACK], PATIENCE)?;
            let mut c = Checks::new();
            died_in_process(&mut c, LDT_ATTACK, &run);
            c.that(!run.console.contains("host address"), || {
                format!("the guest learned a host address: {}", run.shown_console())
            });
            c.finish()
        }),
    );
    c.ok("after the attack", hello_still_runs());
    c.finish()
}

// ---- Debug status -----------------------------------------------------------------------------

const SINGLE_STEP_ATTACK: &str = "single-step";

/// SIGTRAP's si_code for a breakpoint (icebp included) and for a single step
/// (asm-generic/siginfo.h); Linux picks by DR6's BS bit (arch/x86 get_si_code).
const TRAP_BRKPT: i32 = 1;
const TRAP_TRACE: i32 = 2;

/// The si_code of the last SIGTRAP; 0 until one comes.
static SIGTRAP_CODE: AtomicI32 = AtomicI32::new(0);

extern "C" fn note_sigtrap(_: c_int, info: *mut libc::siginfo_t, _: *mut c_void) {
    // SAFETY: the kernel hands an SA_SIGINFO handler a valid siginfo.
    let code = unsafe { (*info).si_code };
    SIGTRAP_CODE.store(code, Ordering::SeqCst);
}

/// Raises a debug exception here with `int1` (icebp, which leaves DR6 alone) and returns the
/// si_code of the SIGTRAP Linux sends for it.
fn int1_si_code() -> anyhow::Result<i32> {
    let action = SigAction::new(
        SigHandler::SigAction(note_sigtrap),
        SaFlags::SA_SIGINFO,
        SigSet::empty(),
    );
    SIGTRAP_CODE.store(0, Ordering::SeqCst);
    // SAFETY: note_sigtrap only stores into an atomic, which is async-signal-safe.
    let old = unsafe { sigaction(Signal::SIGTRAP, &action) }.context("sigaction SIGTRAP")?;
    // SAFETY: int1 raises #DB as a trap: Linux sends SIGTRAP, note_sigtrap takes it, and the
    // program goes on after the instruction. It touches no register or memory of ours.
    unsafe { asm!(".byte 0xf1", options(nomem, nostack)) };
    // SAFETY: puts back the action there was before.
    unsafe { sigaction(Signal::SIGTRAP, &old) }.context("sigaction SIGTRAP")?;
    let code = SIGTRAP_CODE.load(Ordering::SeqCst);
    ensure!(code != 0, "int1 raised no SIGTRAP");
    Ok(code)
}

/// `guest-hostile-single-step`: a guest single-steps (and dies of its #DB) on this process's
/// CPU; an `int1` here afterwards must still be a breakpoint to Linux, not a single step, so
/// the host reset DR6 after the guest's #DB. (`int1` before the guest checks the probe: the
/// #DB handler that answers it resets DR6 itself.)
pub fn single_step() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let mut c = Checks::new();
    {
        let pinned = Pinned::here()?;
        let cpu = pinned.cpu;
        let probe = int1_si_code()?;
        ensure!(
            probe == TRAP_BRKPT,
            "int1 on CPU {cpu} before the guest ran: si_code {probe}, expected {TRAP_BRKPT} \
             (TRAP_BRKPT); the check cannot tell anything"
        );
        let words = [SINGLE_STEP_ATTACK];
        let run = guest(&words, PATIENCE)?;
        died(&mut c, &words, &run);
        c.that(run.stderr.contains("#DB"), || {
            format!(
                "expected the guest to die of its single step's #DB, got: {}",
                run.shown()
            )
        });
        let after = int1_si_code()?;
        c.that(after == TRAP_BRKPT, || {
            let what = if after == TRAP_TRACE {
                " (TRAP_TRACE: DR6.BS, the guest's single step, was still set)"
            } else {
                ""
            };
            format!(
                "int1 on CPU {cpu} after the guest single-stepped there: si_code {after}{what}, \
                 expected {TRAP_BRKPT} (TRAP_BRKPT)"
            )
        });
    }
    c.ok("after the attack", hello_still_runs());
    c.finish()
}

// ---- Protection keys --------------------------------------------------------------------------

const PKRU_ATTACK: &str = "pkru";

/// Whether the kernel turned protection keys on (CPUID.7.0:ECX.OSPKE, CR4.PKE as user space
/// sees it): only then do RDPKRU and WRPKRU exist.
fn ospke() -> bool {
    std::arch::x86_64::__cpuid_count(7, 0).ecx & (1 << 4) != 0
}

fn rdpkru() -> u32 {
    let pkru: u32;
    // SAFETY: callers checked OSPKE; RDPKRU only reads the register.
    unsafe { asm!("rdpkru", in("ecx") 0, out("eax") pkru, out("edx") _, options(nomem, nostack)) };
    pkru
}

/// What the guest says it wrote: "pkru: wrote 0x..., read back 0x...".
fn written_pkru(run: &InProcessRun) -> Option<u32> {
    let rest = run
        .console
        .lines()
        .find_map(|l| l.strip_prefix("pkru: wrote 0x"))?;
    u32::from_str_radix(rest.split(',').next()?, 16).ok()
}

/// `guest-hostile-pkru`: the guest writes PKRU, which it may; the process that ran it must have
/// its own PKRU back when the guest is done (Linux does not load PKRU on the way to user space:
/// lg.ko must).
pub fn pkru() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    ensure!(
        ospke(),
        "CPUID.7.0:ECX has no OSPKE: protection keys are off, so PKRU cannot be checked (the test \
         VM, QEMU -cpu max with CONFIG_X86_INTEL_MEMORY_PROTECTION_KEYS, should have them)"
    );
    let mut c = Checks::new();
    c.ok(
        "the launcher's PKRU",
        super::in_child(|| {
            let before = rdpkru();
            let run = inprocess::run(MEM, GUEST, &[PKRU_ATTACK], PATIENCE)?;
            let after = rdpkru();
            let written = written_pkru(&run);
            let mut c = Checks::new();
            c.that(
                matches!(run.stop, Stop::PowerOff(_)) && written.is_some(),
                || {
                    format!(
                        "expected the guest to write PKRU and power off, it ended with {:?}; \
                         console: {}",
                        run.stop,
                        run.shown_console()
                    )
                },
            );
            c.that(written != Some(before), || {
                format!(
                    "the guest wrote {before:#x}, this process's own PKRU: the check cannot fail"
                )
            });
            c.that(after == before, || {
                format!(
                    "this process's PKRU was {before:#x} before it ran the guest and {after:#x} \
                     after"
                )
            });
            c.finish()
        }),
    );
    c.ok("after the guest", hello_still_runs());
    c.finish()
}
