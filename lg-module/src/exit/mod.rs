//! Exit handling: what the host does with a trip into the guest once it has come back.
//!
//! lg-module/run.rs makes the trip (`run_once`, all hardware) and hands what it brought back to
//! [`handle`]: a hypercall is carried out (hypercalls.rs), a page fault fixed in the shadow,
//! handed to the launcher or given to the guest (page_faults.rs), and any other trap turned
//! into what the CPU would have done, or given to the guest's handler, or the guest killed
//! (interrupts_and_traps.rs, which also delivers the interrupts before each trip in). The files
//! are split as lguest's were.
//!
//! None of it touches hardware. What it needs of the machine comes through three small traits,
//! which lg.ko implements over the launcher's memory, the shadow page tables and the hrtimer
//! (run.rs), and the tests (tests.rs) over a byte vector and a few counters: guest RAM
//! ([`GuestRam`], src/guest_ram.rs), the shadow page tables ([`Shadow`], the guest's owner) and
//! the rest of the host ([`Host`]: interrupts, the timer, clocks). So every decision here is
//! unit-tested with fake exits.

mod hypercalls;
mod interrupts_and_traps;
mod memory;
mod page_faults;
#[cfg(test)]
mod tests;

pub use crate::guest_ram::GuestRam;
pub use interrupts_and_traps::deliver_interrupts;

use crate::abi::data::offset;
use crate::abi::exit::ExitRecord;
use crate::abi::regs::Reg;
use crate::address::{GuestPhys, GuestVirt, HostPhys, LauncherAddr};
use crate::death::Death;
use crate::emulate::HostCpu;
use crate::session::Guest;
use crate::stats::{self, ExitStats};
use crate::traps::{self, Trap};

/// Why a guest page could not be pinned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinFailure {
    /// The launcher's memory for it is unmapped, or not writable.
    Gone,
    /// Another pinned page would exceed the launcher's RLIMIT_MEMLOCK.
    OverMemlock,
    /// The host is out of memory.
    NoMemory,
}

/// The host has no memory for another shadow page table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfMemory;

/// The shadow page tables the guest runs on (lg-module/shadow_tables.rs), as exit handling uses
/// them. `now(va)` in `switch_to` and `flush` says what an entry for `va` may hold after a
/// flush, as the guest's tables say it now (`shadow::after_flush`).
pub trait Shadow {
    /// Pin the launcher's page at `launcher_addr`, which backs guest-physical `gpa_page`: its
    /// host-physical address.
    fn pin(
        &mut self,
        gpa_page: GuestPhys,
        launcher_addr: LauncherAddr,
    ) -> Result<HostPhys, PinFailure>;
    /// Install `pte` for the page at `va`; whether the entry changed.
    fn set_entry(&mut self, va: GuestVirt, pte: u64, global: bool) -> Result<bool, OutOfMemory>;
    /// Run on the shadow of the guest's tables at `cr3` (NEW_PGTABLE).
    fn switch_to(
        &mut self,
        cr3: u64,
        flush: bool,
        now: &mut dyn FnMut(u64) -> Option<(u64, u64)>,
    ) -> Result<(), OutOfMemory>;
    /// Forget what the guest's TLB flush covers (FLUSH_TLB).
    fn flush(&mut self, all: bool, now: &mut dyn FnMut(u64) -> Option<(u64, u64)>);
    /// Forget the shadow entry for `va` (SET_PTE).
    fn invalidate(&mut self, va: GuestVirt);
    /// Keep the lguest_data page pinned and mapped for the Switcher's fast paths (LGUEST_INIT).
    fn map_guest_data(
        &mut self,
        gpa_page: GuestPhys,
        launcher_addr: LauncherAddr,
    ) -> Result<(), PinFailure>;
}

/// The rest of the host: the guest's interrupts and timer (lg-module/irqs.rs's
/// `Interrupts`), its CPU as the guest is shown it, and the clocks.
pub trait Host: GuestRam {
    /// The IRQs raised and not yet delivered: bit n for IRQ n.
    fn pending_irqs(&self) -> u64;
    /// IRQ `irq` is being delivered: no longer pending.
    fn clear_irq(&self, irq: u32);
    /// Fire the guest's timer `nanoseconds` from now, or stop it (0).
    fn set_timer(&self, nanoseconds: u64);
    /// Sleep until `ready()` says an interrupt the guest can take is pending, or a signal comes
    /// (HALT). `ready` may be asked again after every wake-up.
    fn halt(&self, ready: &dyn Fn() -> bool);
    /// CR4 and XCR0 as privileged instructions the host emulates show them.
    fn cpu(&self) -> HostCpu;
    /// The TSC's rate in kHz, and the real-time clock in ns: what LGUEST_INIT tells the guest.
    fn tsc_khz(&self) -> u64;
    fn wallclock_ns(&self) -> u64;
    /// The TSC, for the exit statistics.
    fn now(&self) -> u64;
}

/// What one trip into the guest brought back (a trap from inside the Switcher never gets here:
/// run.rs kills the guest for it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    pub vector: u64,
    pub error: u64,
    /// CR2 after a page fault.
    pub cr2: u64,
    /// DR6 after a debug exception (0 after any other trap).
    pub dr6: u64,
}

/// Handle `exit`, which came back at TSC `exited`: `Some` if the launcher must see the result.
/// The time it took is counted in `stats`, in the bucket `stats::exit_bucket` picks.
pub fn handle<O: Shadow, H: Host>(
    guest: &mut Guest<O>,
    host: &H,
    stats: &ExitStats,
    exit: Exit,
    exited: u64,
) -> Result<Option<ExitRecord>, Death> {
    // RAX before the hypercall answers in it: the call's number, for its bucket.
    let rax = guest.regs.get(Reg::Rax);
    let (fault, outcome) = match traps::classify(exit.vector, exit.cr2) {
        Trap::Host { .. } => (None, Ok(None)),
        Trap::Hypercall => (None, hypercalls::hypercall(guest, host, stats)),
        Trap::PageFault { addr } => match page_faults::page_fault(guest, host, addr, exit.error) {
            Ok((fault, record)) => (Some(fault), Ok(record)),
            Err(death) => (None, Err(death)),
        },
        // Ring 1 cannot read DR6: a #DB's reason goes to lguest_data, as a #PF's CR2 does.
        Trap::Fatal if exit.vector == traps::DEBUG => (
            None,
            memory::set_data(guest, host, offset::DR6, exit.dr6)
                .and_then(|()| {
                    interrupts_and_traps::exception(guest, host, exit.vector, exit.error)
                })
                .map(|()| None),
        ),
        Trap::Fatal => (
            None,
            interrupts_and_traps::exception(guest, host, exit.vector, exit.error).map(|()| None),
        ),
    };
    let bucket = stats::exit_bucket(exit.vector, rax, fault, outcome.is_err());
    stats.add(bucket, host.now().saturating_sub(exited));
    outcome
}
