//! Hostile guests whose hole is in the host's own state: registers the world switch must put
//! back for the host (DR6). The guest's side is tests/guests/ring1/src/hazards.rs.
//!
//! - `guest-hostile-single-step`: the guest single-steps on one CPU; then this process, on that
//!   CPU, raises a debug exception with `int1`, and Linux must find DR6 clean: SIGTRAP with
//!   TRAP_BRKPT, not the TRAP_TRACE of a single step.
//!
//! Afterwards, a fresh `hello` guest must still run.

use std::arch::asm;
use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::{ensure, Context};
use nix::sched::{sched_getaffinity, sched_getcpu, sched_setaffinity, CpuSet};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::unistd::Pid;

use super::guest::{died, guest, hello_still_runs, PATIENCE};
use crate::check::Checks;
use crate::kmod;

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

/// This thread pinned to the CPU it is on, until dropped; what it spawns meanwhile (a launcher)
/// is pinned there too.
struct Pinned {
    cpu: usize,
    before: CpuSet,
}

impl Pinned {
    fn here() -> anyhow::Result<Pinned> {
        let me = Pid::from_raw(0);
        let before = sched_getaffinity(me).context("sched_getaffinity")?;
        let cpu = sched_getcpu().context("sched_getcpu")?;
        let mut only = CpuSet::new();
        only.set(cpu)?;
        sched_setaffinity(me, &only).context("sched_setaffinity")?;
        Ok(Pinned { cpu, before })
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // Best effort: the CPUs allowed before are still there.
        let _ = sched_setaffinity(Pid::from_raw(0), &self.before);
    }
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
