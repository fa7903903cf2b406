//! `mmu`: control registers of the MMU, the TLB, and batching: Linux's `pv_ops.mmu`.
//!
//! Natively the kernel's page tables are the CPU's: `mov cr3` switches them and `invlpg` or a
//! CR3 reload makes the TLB forget what changed. Under lguest the CPU walks the host's *shadow*
//! page tables, built from the guest's as it faults, and the host must hear of every change
//! that could leave a shadow entry stale: switching page tables is NEW_PGTABLE (the host keeps
//! the shadows of a few recent ones), a changed entry is SET_PTE (the host drops its shadow of
//! that page) and a changed table above the last level is FLUSH_TLB. So the TLB-flush ops are
//! the points where the host learns: exactly where a native kernel must flush anyway, which is
//! why the shadow can stay coherent without a hook on every PTE store. A page that goes from
//! not present to present needs neither: the TLB never caches "not present", nor does the
//! shadow.
//!
//! **Lazy mode** (Linux's `arch_enter_lazy_mmu_mode`/`arch_leave_lazy_mmu_mode`): between
//! [`enter_lazy_mmu_mode`] and [`leave_lazy_mmu_mode`] a backend may delay the flushes until
//! the leave. Natively there is nothing to gain. Under lguest each flush is a world switch, so
//! they are queued in `lguest_data`'s asynchronous hypercall ring and the host carries out the
//! whole batch at once on the leave (FLUSH_ASYNC), or earlier at any synchronous hypercall. The
//! rule for the caller, as in Linux: until the leave, do not use the mappings being changed.

use crate::ops;

/// The `mmu` group.
pub struct MmuOps {
    /// The address of the last page fault (`pv_ops.mmu.read_cr2`).
    pub read_cr2: fn() -> u64,
    /// Switches to the page tables rooted at physical `root` (`pv_ops.mmu.write_cr3`).
    ///
    /// # Safety
    ///
    /// The new tables must map everything the kernel is using (its code, its stack, the data
    /// it holds references to) where the old ones did.
    pub write_cr3: unsafe fn(root: u64),
    /// Forgets any cached translation of the page holding `va` in the current page tables,
    /// after its entry changed (`pv_ops.mmu.flush_tlb_one_user`).
    pub flush_tlb_one_user: fn(va: u64),
    /// Forgets every cached translation of the current page tables, after an entry above the
    /// last level changed (`pv_ops.mmu.flush_tlb_user`).
    pub flush_tlb_user: fn(),
    /// Starts a batch of page-table changes (`pv_ops.mmu.lazy_mode.enter`).
    pub enter_lazy_mmu_mode: fn(),
    /// Ends the batch: every flush made since the enter has taken effect when it returns
    /// (`pv_ops.mmu.lazy_mode.leave`).
    pub leave_lazy_mmu_mode: fn(),
}

/// The faulting address of the page fault being handled.
pub fn read_cr2() -> u64 {
    (ops().mmu.read_cr2)()
}

/// Switches page tables.
///
/// # Safety
///
/// See [`MmuOps::write_cr3`].
pub unsafe fn write_cr3(root: u64) {
    // SAFETY: the caller vouches for the new tables.
    unsafe { (ops().mmu.write_cr3)(root) }
}

/// Drops the TLB's translation of `va`, after its page-table entry changed.
pub fn flush_tlb_one_user(va: u64) {
    (ops().mmu.flush_tlb_one_user)(va)
}

/// Drops every translation of the current page tables, after a table (not a page) changed.
pub fn flush_tlb_user() {
    (ops().mmu.flush_tlb_user)()
}

/// Lets the backend batch the flushes that follow, until [`leave_lazy_mmu_mode`]. Call it
/// with interrupts off: a handler's flush must not wait for the interrupted code's leave.
pub fn enter_lazy_mmu_mode() {
    (ops().mmu.enter_lazy_mmu_mode)()
}

/// Carries out the batch.
pub fn leave_lazy_mmu_mode() {
    (ops().mmu.leave_lazy_mmu_mode)()
}
