//! `time`: a clock to read and a timer to arm.
//!
//! The clock is the TSC in both backends (`rdtsc` works at ring 1 unless the host sets
//! CR4.TSD); only its rate comes from different places: natively it is measured against the
//! PIT at boot, under lguest the host says it in `lguest_data.tsc_khz`. The timer is a one-shot
//! "clock event" in Linux's sense: [`set_next_event`] asks for one interrupt, IRQ 0 at vector
//! 32, that many nanoseconds from now; a periodic tick re-arms it from its handler. The sums
//! both backends do on what they read (cycles into nanoseconds, nanoseconds into a PIT count)
//! are guest-core's (`guest-core/src/clock.rs`), unit-tested on the host.

use guest_core::clock;

use crate::ops;

/// The `time` group.
pub struct TimeOps {
    /// The TSC's rate in kHz (Linux: `x86_platform.calibrate_tsc`; lguest's `lguest_tsc_khz`).
    pub tsc_khz: fn() -> u64,
    /// Arms the one-shot timer to raise IRQ 0 in `ns` nanoseconds; 0 disarms it
    /// (`clock_event_device.set_next_event`, lguest's `lguest_clockevent_set_next_event`).
    /// Natively the PIT cannot wait longer than [`MAX_DELTA_NS`]: a longer wait fires then,
    /// early, and the handler must re-arm for the rest (Linux's `max_delta_ns`).
    pub set_next_event: fn(ns: u64),
}

/// The longest one-shot delay every backend honours: the PIT's 16-bit counter at 1.193182 MHz
/// (guest-core's clock module, which tests it against the PIT's arithmetic).
pub use guest_core::clock::MAX_DELTA_NS;

/// The TSC's rate in kHz.
pub fn tsc_khz() -> u64 {
    (ops().time.tsc_khz)()
}

/// Arms (or, with 0, disarms) the one-shot timer.
pub fn set_next_event(ns: u64) {
    (ops().time.set_next_event)(ns)
}

/// The time-stamp counter.
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc only reads the counter; ring 1 may, as long as the host leaves CR4.TSD off.
    unsafe {
        core::arch::asm!(
            "rdtsc",
            out("eax") lo,
            out("edx") hi,
            options(nomem, nostack, preserves_flags)
        )
    };
    u64::from(hi) << 32 | u64::from(lo)
}

/// Nanoseconds on a clock that only goes forward (`pv_ops.time.sched_clock`): the TSC at the
/// backend's rate. Both backends use the same code, so it is a plain function rather than an op.
pub fn sched_clock() -> u64 {
    clock::cycles_to_ns(rdtsc(), tsc_khz())
}
