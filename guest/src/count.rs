//! 23. Count mode: a known workload, and the kernel's own tally of what it asked of the host.
//!
//! lg.ko counts every exit a guest makes, by reason (`lguest-launcher --stats`, `lguest-stat`:
//! chapter 2). This mode gives those counts something to be held against: it does a few things a
//! known number of times (NOP hypercalls, `ud2`, demand faults, a batch of flushes in the
//! asynchronous ring, write faults, timer ticks slept through with HALT), then prints what the
//! kernel counted itself, and powers off. The kernel's counts are its own: the hypercalls the
//! paravirt-ops backend made and queued (lguest.rs), the traps and interrupts its handlers took
//! (traps.rs). The `launcher-stats` scenario compares them with lg.ko's, bucket by bucket.
//!
//! The lines, after the workload: `count hypercall N: M` and `count queued N: M` for each
//! hypercall number N the kernel made or queued (M times, until this report: the report's own
//! CONSOLE_WRITEs and the SHUTDOWN after it come later), `count trap V: M` for each exception
//! vector its handlers took, `count irq N: M` for each IRQ, then `count: done`. Natively there is
//! no host and no hypercall to count; the traps and ticks are the CPU's and the PIT's.

use core::arch::asm;

use paravirt_ops::lguest::{self, HCALL_NUMBERS};
use paravirt_ops::{info, irq, mmu, platform, Backend};

use lguest_abi::hcall::{FIRST_IRQ_VECTOR, IRQS};

use crate::{frames, paging, println, timer, traps, with_fixup};

/// NOP hypercalls made.
pub const NOPS: u64 = 1000;
/// `ud2`s executed in the kernel, each a #UD its handler skips.
pub const UD2S: u64 = 100;
/// Fresh pages of the demand window touched: a page fault each, which the kernel fixes.
pub const DEMAND_PAGES: u64 = 32;
/// Of them, pages write-protected in one lazy-MMU batch (a SET_PTE each, queued), then written
/// again: a write fault each.
pub const BATCH: u64 = 16;
/// Timer ticks slept through, at 1 kHz.
pub const TICKS: u64 = 20;
const TICK_NS: u64 = 1_000_000;

/// Runs the workload, prints the tally and powers off.
pub fn run() -> ! {
    let lguest = info().backend == Backend::Lguest;
    if lguest {
        for _ in 0..NOPS {
            lguest::null_hypercall();
        }
    }
    for _ in 0..UD2S {
        // SAFETY: ud2 raises #UD; the exception table resumes after it; no register changes.
        unsafe { asm!(with_fixup!("ud2"), options(nostack)) };
    }
    let page = |i: u64| paging::DEMAND_START + i * 4096;
    for i in 0..DEMAND_PAGES {
        // SAFETY: a page of the demand window, which nothing else uses in this mode: the write
        // faults and the handler maps a fresh frame there.
        unsafe { (page(i) as *mut u64).write_volatile(i) };
    }
    mmu::enter_lazy_mmu_mode();
    for i in 0..BATCH {
        paging::write_protect(page(i));
    }
    mmu::leave_lazy_mmu_mode();
    for i in 0..BATCH {
        // SAFETY: mapped above, read-only until this write, which the fault handler lets
        // through.
        unsafe { (page(i) as *mut u64).write_volatile(i + 1) };
    }
    for i in 0..DEMAND_PAGES {
        if let Some(frame) = paging::unmap(page(i)) {
            // SAFETY: `unmap` flushed the only mapping of a frame only this mode used.
            unsafe { frames::free(frame) };
        }
    }
    sleep_through_ticks();
    report();
    platform::power_off("teaching-guest: count done", false)
}

/// TICKS ticks of a 1 ms timer, each slept for with `safe_halt`; then the timer stopped with
/// interrupts on, so that no tick is left pending to arrive during the report.
fn sleep_through_ticks() {
    irq::irq_disable();
    timer::start(TICK_NS);
    let first = timer::ticks();
    while timer::ticks() - first < TICKS {
        irq::safe_halt();
        irq::irq_disable();
    }
    irq::irq_enable();
    timer::stop();
}

/// The tally: every number with a count.
fn report() {
    for nr in 0..HCALL_NUMBERS as u64 {
        let made = lguest::hypercalls_made(nr);
        if made != 0 {
            println!("count hypercall {nr}: {made}");
        }
        let queued = lguest::hypercalls_queued(nr);
        if queued != 0 {
            println!("count queued {nr}: {queued}");
        }
    }
    for vector in 0..FIRST_IRQ_VECTOR {
        let taken = traps::taken(vector);
        if taken != 0 {
            println!("count trap {vector}: {taken}");
        }
    }
    for irq in 0..u64::from(IRQS) {
        let taken = traps::taken(FIRST_IRQ_VECTOR + irq);
        if taken != 0 {
            println!("count irq {irq}: {taken}");
        }
    }
    println!("count: done");
}
