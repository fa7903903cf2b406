// SPDX-License-Identifier: GPL-2.0
//! Pins: the launcher's pages the shadow tables map, held in place for as long as any entry
//! maps them, and charged to the launcher's RLIMIT_MEMLOCK.
//!
//! A guest page is pinned at its first mapping (`pin`, from a page fault) and counted by every
//! shadow entry installed for it (`mapped`); the last entry to go (`unmapped`: SET_PTE, a flush,
//! a root evicted, the tables dropped) unpins it. Part of the shadow tables (the parent
//! module), whose fields it shares.

use super::ShadowTables;
use crate::abi::paging::{PTE_ADDR_MASK, PTE_PRESENT};
use crate::address::{GuestPhys, HostPhys, LauncherAddr};
use crate::exit::PinFailure;
use crate::lg_bindings;
use kernel::{alloc::flags::GFP_KERNEL_ACCOUNT, bindings, prelude::*};

/// Pages charged to RLIMIT_MEMLOCK at a time: each charge takes the launcher's mmap lock for
/// writing, which one per pinned page would make a cost of every first touch.
const MEMLOCK_CHUNK: u64 = 256;

/// The only errors the tables' own allocations return are ENOMEM.
impl From<Error> for PinFailure {
    fn from(_: Error) -> PinFailure {
        PinFailure::NoMemory
    }
}

/// The guest's pins as locked memory of the launcher (its mm's `locked_vm`, shown as VmLck in
/// /proc/PID/status), checked against RLIMIT_MEMLOCK as VFIO checks the pages it pins: a pin
/// that lasts as long as the guest is locked memory by another name. Charged a chunk at a time
/// and given back whole with the tables.
///
/// # Invariants
///
/// `mm` is live for as long as this value (the guest's Owner holds it); `charged` pages are
/// charged to it, and at least `pinned`.
pub(super) struct MemlockCharge {
    mm: *mut bindings::mm_struct,
    pinned: u64,
    charged: u64,
}

impl MemlockCharge {
    /// Nothing charged yet, to `mm`.
    ///
    /// # Safety
    ///
    /// `mm` must stay live for as long as the value.
    pub(super) unsafe fn new(mm: *mut bindings::mm_struct) -> MemlockCharge {
        // INVARIANT: live for as long as the value (the caller's contract); nothing is charged.
        MemlockCharge {
            mm,
            pinned: 0,
            charged: 0,
        }
    }

    /// Count one more pinned page, charging more first if it needs to: a chunk, or, where the
    /// limit has no room for a chunk, the one page.
    pub(super) fn pin_one(&mut self) -> Result<(), PinFailure> {
        if self.pinned == self.charged {
            let mm = self.mm;
            let charge = |pages: u64| {
                // SAFETY: `mm` is live (type invariant); we are in process context (a page
                // fault handled in the launcher's read()), where account_locked_vm may sleep,
                // and the launcher is `current`, whose limit it checks.
                unsafe { bindings::account_locked_vm(mm, pages as _, true) == 0 }
            };
            let charged = [MEMLOCK_CHUNK, 1]
                .into_iter()
                .find(|&pages| charge(pages))
                .ok_or(PinFailure::OverMemlock)?;
            self.charged += charged;
        }
        self.pinned += 1;
        Ok(())
    }

    pub(super) fn unpin_one(&mut self) {
        self.pinned = self.pinned.saturating_sub(1);
    }
}

impl Drop for MemlockCharge {
    fn drop(&mut self) {
        // SAFETY: `mm` is live and `charged` pages were charged to it (type invariant); the
        // tables drop in process context (release() or a failed write()).
        unsafe { bindings::account_locked_vm(self.mm, self.charged as _, false) };
    }
}

/// A page of the launcher's memory, pinned.
///
/// # Invariants
///
/// `page` was pinned once by `pin_user_pages_fast`; this value owns that pin.
pub(super) struct PinnedPage {
    page: *mut bindings::page,
    phys: u64,
    /// Shadow leaf entries, in every root, that map it.
    mappings: u64,
}

impl Drop for PinnedPage {
    fn drop(&mut self) {
        // SAFETY: By the type invariant we own one pin on `page`.
        unsafe { bindings::unpin_user_page(self.page) };
    }
}

impl ShadowTables {
    /// The physical address of the launcher's page backing guest-physical page `gpa_page`
    /// (at user address `user_addr`), pinned on first use; `map` then counts the mapping, and
    /// the pin lasts until the last mapping goes.
    pub(crate) fn pin(
        &mut self,
        gpa_page: GuestPhys,
        user_addr: LauncherAddr,
    ) -> Result<HostPhys, PinFailure> {
        if let Some(pinned) = self.pinned.get(&gpa_page.0) {
            return Ok(HostPhys(pinned.phys));
        }
        self.memlock.pin_one()?;
        self.pin_counted(gpa_page.0, user_addr.0)
            .map(HostPhys)
            .inspect_err(|_| self.memlock.unpin_one())
    }

    /// `pin`'s second half, for a page already counted in `memlock`.
    fn pin_counted(&mut self, gpa_page: u64, user_addr: u64) -> Result<u64, PinFailure> {
        let mut page: *mut bindings::page = core::ptr::null_mut();
        // Always for writing: that breaks copy-on-write now, so every alias of a guest page
        // maps the same host page (a read-only pin could be the shared zero page).
        let flags = bindings::FOLL_WRITE | bindings::FOLL_LONGTERM;
        // SAFETY: We run in the launcher's context (read() of its own file), so `user_addr`
        // is looked up in its mm; pin_user_pages_fast checks the address and fails for
        // anything not mapped writable there.
        let got =
            unsafe { bindings::pin_user_pages_fast(user_addr as _, 1, flags as _, &mut page) };
        if got != 1 {
            return Err(PinFailure::Gone);
        }
        // SAFETY: `page` is a valid page we just pinned.
        let phys = unsafe { lg_bindings::lg_page_to_phys(page) } as u64;
        // INVARIANT: the pin just taken is handed to the PinnedPage (dropped, and so unpinned,
        // if the insertion fails). It counts no mapping until `map` installs one.
        let pinned = PinnedPage {
            page,
            phys,
            mappings: 0,
        };
        self.pinned
            .try_create_and_insert(gpa_page, pinned, GFP_KERNEL_ACCOUNT)?;
        if let Err(err) = self
            .by_phys
            .try_create_and_insert(phys, gpa_page, GFP_KERNEL_ACCOUNT)
        {
            self.pinned.remove(&gpa_page);
            return Err(err.into());
        }
        Ok(phys)
    }

    /// A shadow leaf entry `old` was removed: one mapping fewer of its page, which is unpinned
    /// when none is left.
    pub(super) fn unmapped(&mut self, old: u64) {
        if old & PTE_PRESENT == 0 {
            return;
        }
        let phys = old & PTE_ADDR_MASK;
        let Some(&gpa_page) = self.by_phys.get(&phys) else {
            return;
        };
        let last = match self.pinned.get_mut(&gpa_page) {
            Some(pinned) => {
                pinned.mappings = pinned.mappings.saturating_sub(1);
                pinned.mappings == 0
            }
            None => false,
        };
        if last {
            // Dropping the PinnedPage unpins it.
            self.pinned.remove(&gpa_page);
            self.by_phys.remove(&phys);
            self.memlock.unpin_one();
        }
    }

    /// A shadow leaf entry `new` was installed: one mapping more of its page.
    pub(super) fn mapped(&mut self, new: u64) {
        let phys = new & PTE_ADDR_MASK;
        if let Some(&gpa_page) = self.by_phys.get(&phys) {
            if let Some(pinned) = self.pinned.get_mut(&gpa_page) {
                pinned.mappings += 1;
            }
        }
    }
}
