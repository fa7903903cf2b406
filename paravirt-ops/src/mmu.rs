//! `mmu`: control registers of the MMU and the TLB: Linux's `pv_ops.mmu`.
//!
//! Under lguest only `read_cr2` exists so far: the host writes a page fault's address into
//! `lguest_data.cr2`, since ring 1 cannot read CR2. Switching page tables (NEW_PGTABLE) and
//! telling the host about changed entries (SET_PTE, FLUSH_TLB) arrive with the host's shadow
//! page-table coherence work (issue #4); until then a guest under lguest runs on the page tables
//! the launcher built, and the lguest versions of `write_cr3` and `flush_tlb_one_user` panic
//! with a message that says so.

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
    /// Forgets any cached translation of the page holding `va`
    /// (`pv_ops.mmu.flush_tlb_one_user`).
    pub flush_tlb_one_user: fn(va: u64),
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
