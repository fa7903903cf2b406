//! `platform`: acknowledging an interrupt and turning the machine off.
//!
//! Neither is in Linux's `pv_ops`: the end-of-interrupt belongs to the interrupt controller's
//! driver (`apic->eoi`), power-off to `pm_power_off`. lguest replaced both (its `lguest_apic`
//! acknowledged nothing, its `lguest_power_off` made the SHUTDOWN hypercall), and so must a
//! kernel that runs in both worlds.

use crate::ops;

/// The `platform` group.
pub struct PlatformOps {
    /// Tells the interrupt controller that `irq`'s handler is done, so it may raise it again.
    pub eoi: fn(irq: u32),
    /// Stops the machine; `failed` says whether the kernel is ending in failure (natively the
    /// emulator's exit status tells; under lguest `message` reaches the launcher).
    pub power_off: fn(message: &str, failed: bool) -> !,
}

/// End of interrupt `irq`.
pub fn eoi(irq: u32) {
    (ops().platform.eoi)(irq)
}

/// Powers the machine off.
pub fn power_off(message: &str, failed: bool) -> ! {
    (ops().platform.power_off)(message, failed)
}
