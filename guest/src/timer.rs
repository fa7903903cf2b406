//! 9. A periodic tick from a one-shot timer.
//!
//! The time ops offer a one-shot timer ("clock event"): `set_next_event(ns)` asks for one
//! interrupt, IRQ 0 at vector 32, `ns` from now. Natively that is the PIT counting down through
//! the 8259 PIC; under lguest the host arms a high-resolution timer (SET_CLOCKEVENT) and marks
//! IRQ 0 pending when it fires. A tick is the same one-shot armed again from its own handler,
//! as Linux's clockevents core does for a periodic tick on a one-shot device.

use core::sync::atomic::{AtomicU64, Ordering};

use lguest_abi::hcall::TIMER_IRQ;
use paravirt_ops::{irq, platform, time};

/// Ticks so far.
static TICKS: AtomicU64 = AtomicU64::new(0);
/// The tick's period; 0 when stopped.
static PERIOD_NS: AtomicU64 = AtomicU64::new(0);

pub fn ticks() -> u64 {
    TICKS.load(Ordering::Relaxed)
}

/// Starts a tick every `period_ns` (at most the time ops' MAX_DELTA_NS).
pub fn start(period_ns: u64) {
    PERIOD_NS.store(period_ns, Ordering::Relaxed);
    // Interrupts off around the arming: natively it is three port writes, and a tick arriving
    // in their middle would re-arm the timer from its handler and garble them.
    let flags = irq::irq_save();
    time::set_next_event(period_ns);
    irq::restore_fl(flags);
}

/// Stops the tick.
pub fn stop() {
    PERIOD_NS.store(0, Ordering::Relaxed);
    let flags = irq::irq_save();
    time::set_next_event(0);
    irq::restore_fl(flags);
}

/// The handler for vector 32: count, arm the next tick, acknowledge.
pub fn interrupt() {
    TICKS.fetch_add(1, Ordering::Relaxed);
    let period = PERIOD_NS.load(Ordering::Relaxed);
    if period != 0 {
        time::set_next_event(period);
    }
    platform::eoi(TIMER_IRQ);
}

/// Busy-waits `ns` on the clock, with interrupts as they are.
pub fn spin_for(ns: u64) {
    let deadline = time::sched_clock() + ns;
    while time::sched_clock() < deadline {
        core::hint::spin_loop();
    }
}
