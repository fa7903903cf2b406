//! `irq`: the interrupt flag, real or virtual: Linux's `pv_ops.irq`.
//!
//! Natively "interrupts off" is RFLAGS.IF, changed with `cli`/`sti`/`popf`. At ring 1 `cli` and
//! `sti` fault and `popf` silently keeps IF, so under lguest the flag is *virtual*: a word in
//! `lguest_data` that the host reads before it delivers an interrupt. Both backends speak the
//! same language: a flags word whose bit 9 ([`IF`]) says "enabled", so `save_fl`'s value can be
//! handed back to `restore_fl` either way.
//!
//! One op here is not in Linux's `pv_ops.irq`: [`unmask_irq`], which opens one interrupt line.
//! Linux asks that of the line's `irq_chip` (`irq_unmask`): the 8259's `unmask_8259A_irq`
//! natively, lguest's `enable_lguest_irq` under lguest; a kernel this small has one chip per
//! world, so the op sits with the flag. Both worlds start with every line but the timer's
//! closed, and a driver opens its device's line once its handler is in place. The other half of
//! an irq_chip, telling the chip a handler is done, is `platform::eoi`.

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
    /// Lets IRQ `irq` through: natively clears its bit in the 8259 PIC's mask register (and,
    /// for IRQs 8-15, the cascade's on the first PIC); under lguest clears its bit in
    /// `lguest_data.blocked_interrupts` (Linux: `irq_chip.irq_unmask`).
    pub unmask_irq: fn(irq: u32),
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

/// Lets IRQ `irq` through to its vector, `FIRST_IRQ_VECTOR + irq`, which must have a gate by
/// then.
pub fn unmask_irq(irq: u32) {
    (ops().irq.unmask_irq)(irq)
}

/// Interrupts off, returning the flags to restore afterwards: Linux's `local_irq_save`.
pub fn irq_save() -> u64 {
    let flags = save_fl();
    irq_disable();
    flags
}
