//! 9. A periodic tick from a one-shot timer.
//!
//! The time ops offer a one-shot timer ("clock event"): `set_next_event(ns)` asks for one
//! interrupt, IRQ 0 at vector 32, `ns` from now. Natively that is the PIT counting down through
//! the 8259 PIC; under lguest the host arms a high-resolution timer (SET_CLOCKEVENT) and marks
//! IRQ 0 pending when it fires. A tick is the same one-shot armed again from its own handler,
//! as Linux's clockevents core does for a periodic tick on a one-shot device.
//!
//! **Absolute deadlines.** Each tick has a deadline on the clock (`sched_clock`): the first is
//! one period after [`start`], each next one a period after the last. The handler arms the timer
//! for the time left until the next deadline, not for a whole period from now, so a tick that
//! arrives late (interrupts were off, the host was busy) does not push every later one back
//! (Linux's `hrtimer_forward` does the same). A tick so late that whole deadlines went by
//! unserved does not try to catch up with a burst: the deadlines it missed are counted as
//! [`lost`], and the next one is the first still ahead. That arithmetic is guest-core's
//! (`guest-core/src/tick.rs`), unit-tested on the host with ticks late, lost and past the top
//! of the clock; here are the timer and the counters.

use core::sync::atomic::{AtomicU64, Ordering};

use guest_core::tick;
use lguest_abi::hcall::TIMER_IRQ;
use paravirt_ops::{irq, platform, time};

/// Ticks so far.
static TICKS: AtomicU64 = AtomicU64::new(0);
/// Deadlines that went by without a tick of their own.
static LOST: AtomicU64 = AtomicU64::new(0);
/// The tick's period; 0 when stopped.
static PERIOD_NS: AtomicU64 = AtomicU64::new(0);
/// The deadline of the tick the timer is armed for, in `sched_clock` nanoseconds.
static DEADLINE_NS: AtomicU64 = AtomicU64::new(0);

pub fn ticks() -> u64 {
    TICKS.load(Ordering::Relaxed)
}

pub fn lost() -> u64 {
    LOST.load(Ordering::Relaxed)
}

/// Whether the tick is on: a wait that must end even if nothing else comes needs it
/// (virtio/mod.rs).
pub fn running() -> bool {
    PERIOD_NS.load(Ordering::Relaxed) != 0
}

/// Starts a tick every `period_ns` (at most the time ops' MAX_DELTA_NS).
pub fn start(period_ns: u64) {
    // Interrupts off around the arming: natively it is three port writes, and a tick arriving
    // in their middle would re-arm the timer from its handler and garble them.
    let flags = irq::irq_save();
    PERIOD_NS.store(period_ns, Ordering::Relaxed);
    DEADLINE_NS.store(
        time::sched_clock().wrapping_add(period_ns),
        Ordering::Relaxed,
    );
    time::set_next_event(period_ns);
    irq::restore_fl(flags);
}

/// Stops the tick.
pub fn stop() {
    let flags = irq::irq_save();
    PERIOD_NS.store(0, Ordering::Relaxed);
    time::set_next_event(0);
    irq::restore_fl(flags);
}

/// The handler for vector 32: count, arm the next tick for the next deadline still ahead (the
/// ones already gone are lost), acknowledge.
pub fn interrupt() {
    TICKS.fetch_add(1, Ordering::Relaxed);
    let deadline = DEADLINE_NS.load(Ordering::Relaxed);
    let period = PERIOD_NS.load(Ordering::Relaxed);
    if let Some(next) = tick::next_tick(deadline, period, time::sched_clock()) {
        LOST.fetch_add(next.lost, Ordering::Relaxed);
        DEADLINE_NS.store(next.deadline, Ordering::Relaxed);
        time::set_next_event(next.delay_ns);
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
