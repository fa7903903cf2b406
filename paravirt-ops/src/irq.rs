//! `irq`: the interrupt flag, real or virtual: Linux's `pv_ops.irq`.
//!
//! Natively "interrupts off" is RFLAGS.IF, changed with `cli`/`sti`/`popf`. At ring 1 `cli` and
//! `sti` fault and `popf` silently keeps IF, so under lguest the flag is *virtual*: a word in
//! `lguest_data` that the host reads before it delivers an interrupt. Both backends speak the
//! same language: a flags word whose bit 9 ([`IF`]) says "enabled", so `save_fl`'s value can be
//! handed back to `restore_fl` either way.

use crate::ops;

/// RFLAGS.IF, and `lguest_data.irq_enabled`'s "enabled" value (lguest-abi's `IRQ_ENABLED`).
pub const IF: u64 = 1 << 9;

/// The `irq` group.
pub struct IrqOps {
    /// The flags word; only [`IF`] means anything (`pv_ops.irq.save_fl`).
    pub save_fl: fn() -> u64,
    /// Sets the interrupt flag to `flags & IF` (`pv_ops.irq.restore_fl`, which Linux replaced
    /// in 5.10 by "enable if IF was set").
    pub restore_fl: fn(flags: u64),
    /// `cli` (`pv_ops.irq.irq_disable`).
    pub irq_disable: fn(),
    /// `sti` (`pv_ops.irq.irq_enable`).
    pub irq_enable: fn(),
    /// Enables interrupts and sleeps until one has come, in one step so that none can slip in
    /// between and be slept through (`pv_ops.irq.safe_halt`). Returns with interrupts on.
    pub safe_halt: fn(),
}

/// The current flags word.
pub fn save_fl() -> u64 {
    (ops().irq.save_fl)()
}

/// Puts back a flags word from [`save_fl`] or [`irq_save`].
pub fn restore_fl(flags: u64) {
    (ops().irq.restore_fl)(flags)
}

/// Interrupts off.
pub fn irq_disable() {
    (ops().irq.irq_disable)()
}

/// Interrupts on; one that was held back while they were off arrives now.
pub fn irq_enable() {
    (ops().irq.irq_enable)()
}

/// Interrupts on, and sleep until one comes.
pub fn safe_halt() {
    (ops().irq.safe_halt)()
}

/// Interrupts off, returning the flags to restore afterwards: Linux's `local_irq_save`.
pub fn irq_save() -> u64 {
    let flags = save_fl();
    irq_disable();
    flags
}
