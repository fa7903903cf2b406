//! 10. The self-tests: each mechanism, exercised and checked, in both worlds.
//!
//! Each test prints exactly one line, `selftest <name>: PASS`, `selftest <name>: FAIL: <why>`
//! or `selftest <name>: SKIP: <why>`, which the end-to-end harness reads. They run in the
//! order of this file, with interrupts off between them (as at boot).

use core::arch::asm;
use core::fmt::{self, Write};

use paravirt_ops::irq::{self, IF};
use paravirt_ops::{info, Backend};

use crate::traps::{self, Trap};
use crate::{paging, println, timer, with_fixup};

/// A test's verdict.
enum Outcome {
    Pass,
    Fail(Why),
    Skip(&'static str),
}

/// Why a test failed: a short formatted message, without an allocator.
struct Why {
    buf: [u8; 160],
    len: usize,
}

impl Write for Why {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
        Ok(())
    }
}

/// `Outcome::Fail` with a `format!`-style message.
macro_rules! fail {
    ($($arg:tt)*) => {{
        let mut why = Why { buf: [0; 160], len: 0 };
        let _ = write!(why, $($arg)*);
        return Outcome::Fail(why)
    }};
}

/// A test: its name and its body.
type Test = (&'static str, fn() -> Outcome);

/// Runs every test; returns (passed, failed).
pub fn run_all() -> (u32, u32) {
    let tests: [Test; 7] = [
        ("irq-flag", irq_flag),
        ("timer-ticks", timer_ticks),
        ("guest-#UD", guest_ud),
        ("guest-#GP", guest_gp),
        ("guest-#DE", guest_de),
        ("guest-int3", guest_int3),
        ("page-fault-demand", page_fault_demand),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, test) in tests {
        match test() {
            Outcome::Pass => {
                passed += 1;
                println!("selftest {name}: PASS");
            }
            Outcome::Fail(why) => {
                failed += 1;
                let why = core::str::from_utf8(&why.buf[..why.len]).unwrap_or("?");
                println!("selftest {name}: FAIL: {why}");
            }
            Outcome::Skip(why) => println!("selftest {name}: SKIP: {why}"),
        }
        irq::irq_disable();
    }
    (passed, failed)
}

// ---- irq-flag ---------------------------------------------------------------------------------

/// The interrupt flag's semantics, whatever holds it: `irq_disable` and `irq_enable` show in
/// `save_fl`, and `restore_fl` puts back either state. Natively the flag is RFLAGS.IF; under
/// lguest it is `lguest_data.irq_enabled`, while the real IF stays on.
fn irq_flag() -> Outcome {
    irq::irq_disable();
    if irq::save_fl() & IF != 0 {
        fail!("save_fl shows interrupts on after irq_disable");
    }
    irq::irq_enable();
    if irq::save_fl() & IF == 0 {
        fail!("save_fl shows interrupts off after irq_enable");
    }
    let saved = irq::irq_save();
    if saved & IF == 0 || irq::save_fl() & IF != 0 {
        fail!("irq_save returned {saved:#x} (wanted IF, as before it) or left interrupts on");
    }
    irq::restore_fl(saved);
    if irq::save_fl() & IF == 0 {
        fail!("restore_fl of a flags word with IF left interrupts off");
    }
    irq::restore_fl(0);
    if irq::save_fl() & IF != 0 {
        fail!("restore_fl(0) left interrupts on");
    }
    Outcome::Pass
}

// ---- timer-ticks ------------------------------------------------------------------------------

/// The tick's period in the test: 2 ms, 500 Hz.
const TICK_NS: u64 = 2_000_000;
const MS: u64 = 1_000_000;

/// Ticks arrive while interrupts are on and not while they are off; the one that fell due while
/// they were off arrives as soon as they are back on (natively the PIC held it; under lguest
/// `irq_pending` made `irq_enable` ask for it with SEND_INTERRUPTS); and `safe_halt` sleeps
/// until a tick wakes it.
fn timer_ticks() -> Outcome {
    timer::start(TICK_NS);
    let outcome = tick_checks();
    irq::irq_disable();
    timer::stop();
    outcome
}

fn tick_checks() -> Outcome {
    irq::irq_enable();
    let before = timer::ticks();
    timer::spin_for(40 * MS);
    let during = timer::ticks() - before;
    // 20 are due; TCG's timing is loose, so ask for a quarter.
    if during < 5 {
        fail!("{during} ticks in 40 ms with interrupts on (20 due)");
    }

    irq::irq_disable();
    let off = timer::ticks();
    timer::spin_for(20 * MS);
    let late = timer::ticks() - off;
    if late != 0 {
        fail!("{late} ticks arrived in 20 ms with interrupts off");
    }
    irq::irq_enable();
    if timer::ticks() == off {
        fail!("the tick held back while interrupts were off did not arrive at irq_enable");
    }

    irq::irq_disable();
    let asleep = timer::ticks();
    irq::safe_halt();
    if timer::ticks() == asleep {
        fail!("safe_halt returned without a tick");
    }
    if irq::save_fl() & IF == 0 {
        fail!("safe_halt returned with interrupts off");
    }
    Outcome::Pass
}

// ---- guest-#UD, guest-#GP, guest-#DE, guest-int3 ----------------------------------------------

/// Runs `raise`, which must cause exactly one exception `vector`, checks the kernel's own
/// handler caught it (under lguest: that the host reflected it to the guest's handler rather
/// than dealing with it, or killing the guest), and lets `check` look at the details.
fn expect_trap(vector: u64, raise: fn(), check: fn(&Trap) -> Outcome) -> Outcome {
    let before = traps::last_trap().count;
    raise();
    let trap = traps::last_trap();
    let taken = trap.count - before;
    if taken != 1 || trap.vector != vector {
        fail!(
            "{taken} exceptions caught, the last vector {} (wanted one, vector {vector})",
            trap.vector
        );
    }
    check(&trap)
}

/// `ud2`, the instruction defined to be undefined.
fn guest_ud() -> Outcome {
    fn raise() {
        // SAFETY: ud2 raises #UD; the exception table resumes after it; no register changes.
        unsafe { asm!(with_fixup!("ud2"), options(nostack)) };
    }
    expect_trap(traps::INVALID_OPCODE, raise, |_| Outcome::Pass)
}

/// A load from a non-canonical address: #GP(0), at any ring. (A privileged instruction would
/// not do: under lguest the host may emulate it or hand it to the launcher.)
fn guest_gp() -> Outcome {
    fn raise() {
        // SAFETY: the load raises #GP before it reads anything; the exception table resumes
        // after it, with RAX unchanged (declared clobbered anyway).
        unsafe {
            asm!(
                with_fixup!("mov rax, [rcx]"),
                in("rcx") 0x8000_0000_0000_0000u64,
                out("rax") _,
                options(nostack, readonly)
            )
        };
    }
    expect_trap(traps::GENERAL_PROTECTION, raise, |trap| {
        if trap.error_code != 0 {
            fail!("#GP error code {:#x}, not 0", trap.error_code);
        }
        Outcome::Pass
    })
}

/// `div` by zero.
fn guest_de() -> Outcome {
    fn raise() {
        // SAFETY: the div raises #DE before it writes RAX or RDX; the exception table resumes
        // after it.
        unsafe {
            asm!(
                with_fixup!("div rcx"),
                in("rcx") 0u64,
                inout("rax") 1u64 => _,
                inout("rdx") 0u64 => _,
                options(nomem, nostack)
            )
        };
    }
    expect_trap(traps::DIVIDE_ERROR, raise, |_| Outcome::Pass)
}

/// `int3`, the debugger's breakpoint: a trap, so the handler returns to the next instruction.
/// Under lguest it reaches the host as a #GP (the Switcher's gate 3 has DPL 0), which the host
/// turns into vector 3 because the guest's own gate has DPL 3.
fn guest_int3() -> Outcome {
    fn raise() {
        // SAFETY: int3 traps to our handler, which returns right after it.
        unsafe { asm!("int3", options(nomem, nostack)) };
    }
    expect_trap(traps::BREAKPOINT, raise, |_| Outcome::Pass)
}

// ---- page-fault-demand ------------------------------------------------------------------------

/// Pages of the demand window that the test touches.
const DEMAND_PAGES: u64 = 4;

/// Natively: four pages of the demand window, untouched so far, each fault once on first write
/// and keep what was written; CR2 (through the mmu op) named the address; a page unmapped (and
/// flushed from the TLB) faults again and comes back as a fresh zeroed frame.
fn page_fault_demand() -> Outcome {
    if info().backend == Backend::Lguest || !paging::own_tables() {
        return Outcome::Skip(
            "under lguest the kernel keeps the launcher's page tables, and the host's shadow \
             tables do not follow guest PTE writes until NEW_PGTABLE/SET_PTE (issue #4)",
        );
    }
    let page = |i: u64| paging::DEMAND_START + i * 4096;
    let before = paging::demand_faults();
    for i in 0..DEMAND_PAGES {
        // SAFETY: a page of the demand window: its first touch faults and the handler maps a
        // fresh frame there, which only this test uses.
        unsafe { ((page(i) + 8) as *mut u64).write_volatile(0x5eed_0000 + i) };
    }
    let faults = paging::demand_faults() - before;
    if faults != DEMAND_PAGES {
        fail!("{faults} demand faults for {DEMAND_PAGES} new pages");
    }
    let last = traps::last_trap();
    if last.vector != traps::PAGE_FAULT || last.address != page(DEMAND_PAGES - 1) + 8 {
        fail!(
            "the last fault was vector {} at {:#x}",
            last.vector,
            last.address
        );
    }
    for i in 0..DEMAND_PAGES {
        // SAFETY: mapped above.
        let value = unsafe { ((page(i) + 8) as *const u64).read_volatile() };
        if value != 0x5eed_0000 + i {
            fail!("page {i} reads {value:#x} back");
        }
    }
    if paging::unmap(page(0)).is_none() {
        fail!("page 0 was not mapped");
    }
    // SAFETY: page 0 is unmapped again, so this faults and gets a new zeroed frame.
    let fresh = unsafe { ((page(0) + 8) as *const u64).read_volatile() };
    if fresh != 0 || paging::demand_faults() - before != DEMAND_PAGES + 1 {
        fail!("after unmapping, page 0 read {fresh:#x} (stale TLB entry?)");
    }
    for i in 0..DEMAND_PAGES {
        paging::unmap(page(i));
    }
    Outcome::Pass
}
