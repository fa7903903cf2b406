// SPDX-License-Identifier: GPL-2.0
//! The Switcher's slot in the shadow tables: PGD slot 256, the same in every root, which shows
//! the Switcher's text and the block of the CPU the guest runs on, and in that block the
//! guest's lguest_data page for the Switcher's fast paths. Part of the shadow tables (the parent
//! module), whose fields it shares.

use super::{leaf_below, ShadowTables, GUEST_READ_ONLY, GUEST_WRITABLE};
use crate::abi::paging::{PTE_PRESENT, PTE_USER, PTE_WRITE};
use crate::address::{GuestPhys, HostPhys, LauncherAddr};
use crate::exit::PinFailure;
use crate::layout::*;
use crate::lg_bindings;
use crate::shadow::in_kernel_half;
use crate::switcher::Switcher;

impl ShadowTables {
    /// Make the Switcher slot show `cpu`'s block, and only it.
    pub(crate) fn map_switcher_for(&mut self, switcher: &Switcher, cpu: u64) {
        if self.mapped_cpu == Some(cpu) {
            return;
        }
        let block_first = |cpu: u64| (block_offset(cpu) / PAGE) as usize;
        if let Some(old) = self.mapped_cpu {
            for page in 0..BLOCK_PAGES as usize {
                self.switcher_pt.entries()[block_first(old) + page] = 0;
            }
        }
        // The Switcher's IST stacks and the regs page, writable; the state page and the IDT,
        // read-only. The host's IST stacks and the host page are never mapped for a guest.
        let switcher_stacks =
            (FIRST_SWITCHER_IST..=IST_STACKS).map(|n| (ist_pages(n).start, GUEST_WRITABLE));
        let regs_and_state = [
            (BLOCK_REGS / PAGE, GUEST_WRITABLE),
            (BLOCK_STATE / PAGE, GUEST_READ_ONLY),
            (BLOCK_IDT / PAGE, GUEST_READ_ONLY),
        ];
        let guest_pages = Iterator::chain(switcher_stacks, regs_and_state);
        for (page, flags) in guest_pages {
            if let Some(p) = switcher.page(block_first(cpu) as u64 + page) {
                self.switcher_pt.entries()[block_first(cpu) + page as usize] = p.phys() | flags;
            }
        }
        self.mapped_cpu = Some(cpu);
        self.map_guest_data_in_block();
    }

    /// Keep the guest's lguest_data page (guest-physical `gpa_page`, at the launcher's
    /// `user_addr`) pinned for as long as the tables, and map it at BLOCK_DATA in whichever
    /// CPU's block the guest runs on, supervisor-only: there the Switcher's fast paths read and
    /// write it without a fault (src/fast_syscall.rs). The guest may write the page anyway.
    pub(crate) fn map_guest_data(
        &mut self,
        gpa_page: GuestPhys,
        user_addr: LauncherAddr,
    ) -> Result<(), PinFailure> {
        let HostPhys(phys) = self.pin(gpa_page, user_addr)?;
        // A mapping that is never let go: the page stays pinned while the Switcher may use it.
        self.mapped(phys);
        self.guest_data = Some(phys);
        self.map_guest_data_in_block();
        Ok(())
    }

    fn map_guest_data_in_block(&mut self) {
        if let (Some(cpu), Some(phys)) = (self.mapped_cpu, self.guest_data) {
            let slot = ((block_offset(cpu) + BLOCK_DATA) / PAGE) as usize;
            self.switcher_pt.entries()[slot] = phys | GUEST_WRITABLE;
        }
    }

    /// The guest's lguest_data word at `offset`, as the Switcher would read it now; `None`
    /// before LGUEST_INIT.
    pub(crate) fn guest_data_word(&self, offset: u64) -> Option<u64> {
        let phys = self.guest_data?;
        // SAFETY: The page is pinned for as long as the tables (`map_guest_data`), and lies in
        // the direct map; `offset` is one of lguest_data's u64 fields, inside the page and
        // aligned. The guest or the launcher may write it at any time: one volatile read.
        Some(unsafe {
            core::ptr::read_volatile(
                (lg_bindings::lg_va(phys as _) as usize + offset as usize) as *const u64,
            )
        })
    }

    /// Whether the page at `va` is mapped writable and supervisor-only in the shadow the guest
    /// runs on: a write there by the Switcher, at ring 0, cannot fault (protection keys govern
    /// only user pages).
    pub(crate) fn kernel_may_write(&self, va: u64) -> bool {
        let top = if in_kernel_half(va) {
            self.kernel.top.addr()
        } else {
            self.roots[self.current].root.addr()
        };
        let Some(entry) = leaf_below(top, va) else {
            return false;
        };
        // SAFETY: `leaf_below` found an entry of one of our table pages; `&self` keeps them.
        let entry = unsafe { *entry };
        entry & (PTE_PRESENT | PTE_WRITE | PTE_USER) == PTE_PRESENT | PTE_WRITE
    }
}
