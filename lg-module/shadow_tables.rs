// SPDX-License-Identifier: GPL-2.0
//! A guest's shadow page tables: the tables the CPU really walks while the guest runs.
//!
//! They start with nothing but the Switcher: PGD slot 256 leads to the text pages and the block
//! of the CPU the guest runs on (`map_switcher_for`), never another CPU's block and never the
//! host page. Everything else is filled in one page at a time as the guest faults
//! (`src/shadow.rs` decides, `map` installs), each page pinned in the launcher's memory while
//! any shadow entry maps it, so the host can never reuse a page the guest can reach. Each pinned
//! page counts the shadow entries that map it; the last one to go (SET_PTE, FLUSH_TLB, a shadow
//! root evicted) unpins it, and the launcher's memory is its own again. Dropping the tables
//! unpins every page and frees every table.
//!
//! The lower half of each shadow root is that page table's own. The kernel half (PML4 slots 257
//! to 511) is one set of tables every root points to, as the TLB keeps global entries across a
//! CR3 load: Linux switches page tables, and flushes, at every context switch, and without this
//! the kernel's text, stacks and data would fault back in after each one.
//!
//! What a guest can make the host allocate is bounded: a guest page is pinned once however many
//! addresses map it (so pins never exceed guest RAM), and the shadow tables are thrown away
//! and rebuilt on demand when they reach `MAX_SHADOW_TABLES`, however sparse the guest's own
//! address space. And it is charged to the launcher, as KVM and VFIO charge theirs: the tables
//! to its memory cgroup (GFP_KERNEL_ACCOUNT), the pins to its RLIMIT_MEMLOCK (`MemlockCharge`).
//!
//! The pins are in shadow_tables/pins.rs, and the Switcher's slot (the CPU's block, the
//! lguest_data page mapped for the fast paths) in shadow_tables/switcher_slot.rs.

mod pins;
mod switcher_slot;

use self::pins::{MemlockCharge, PinnedPage};
use crate::abi::paging::{
    PTE_ACCESSED, PTE_ADDR_MASK, PTE_DIRTY, PTE_NO_EXEC, PTE_PRESENT, PTE_USER, PTE_WRITE,
};
use crate::address::GuestVirt;
use crate::layout::*;
use crate::lg_bindings;
use crate::shadow::{in_kernel_half, KERNEL_HALF_FIRST_SLOT};
use crate::switcher::{KernelPage, Switcher, TABLE, WINDOW_PGD_SLOT};
use kernel::{alloc::flags::GFP_KERNEL_ACCOUNT, bindings, prelude::*, rbtree::RBTree};

/// The most shadow table pages (below the root) one guest may have: 16 MiB of host memory.
/// A guest with a sparse address space could otherwise make the host allocate a table page for
/// each 2 MiB it touches. Reaching the bound empties the tables; they refill as the guest runs.
const MAX_SHADOW_TABLES: usize = 4096;

/// Guest views of Switcher pages: text read-only and executable; IDT and GDT/TSS read-only
/// (the guest must not rewrite its own gates and descriptors); IST stacks and the regs page
/// writable, since the CPU pushes trap frames there.
const GUEST_TEXT: u64 = PTE_PRESENT | PTE_ACCESSED | PTE_DIRTY;
const GUEST_READ_ONLY: u64 = PTE_PRESENT | PTE_ACCESSED | PTE_DIRTY | PTE_NO_EXEC;
const GUEST_WRITABLE: u64 = GUEST_READ_ONLY | PTE_WRITE;
/// Shadow table entries allow everything; the leaf entry decides (x86 takes the most
/// restrictive permission along the walk).
const SHADOW_TABLE: u64 = TABLE | PTE_USER;

/// How many of the guest's page tables keep a shadow of their lower half: switching back to one
/// of them (a context switch to a recent process) without a flush keeps its mappings. lguest kept
/// four.
const SHADOW_ROOTS: usize = 4;

/// The most lower-half entries a flush confirms against the guest's tables
/// (`recheck_lower_half`) rather than letting them go: enough for a small process's working
/// set, and a bound on what one flush costs the host.
const MAX_RECHECKED: usize = 512;

/// The most kernel-half mappings of entries the guest did not mark global kept at once. Each is
/// dropped at the next page-table switch, so they are remembered one by one; rather than keep
/// more, the host lets the whole kernel half go.
const MAX_LOCAL_KERNEL_MAPPINGS: usize = 64;

/// The shadow of one of the guest's page tables: its lower half, and pointers to the Switcher's
/// tables (slot 256) and to the kernel half's (slots 257 up).
struct ShadowRoot {
    /// The guest's own PML4 (guest-physical) this shadows.
    guest_cr3: u64,
    /// When it was last switched to (a count of switches), to evict the least recently used.
    last_used: u64,
    root: KernelPage,
    /// Every table page of its lower half, kept to be freed.
    tables: KVec<KernelPage>,
}

/// The kernel half of the address space: one shadow, which every root's top slots point into.
struct KernelHalf {
    /// The top-level entries from `KERNEL_HALF_FIRST_SLOT` up, as every root holds them.
    top: KernelPage,
    /// Every table page below them, kept to be freed.
    tables: KVec<KernelPage>,
    /// The addresses of mappings here whose guest entry is not global, the first `local_len`
    /// of them: they go at the next page-table switch, as a non-global TLB entry would.
    local: [u64; MAX_LOCAL_KERNEL_MAPPINGS],
    local_len: usize,
}

pub(crate) struct ShadowTables {
    /// This guest's number (`Switcher::new_guest_id`).
    id: u64,
    /// The shadows of recent page tables; `roots[current]` is the one in use.
    roots: KVec<ShadowRoot>,
    kernel: KernelHalf,
    current: usize,
    /// Switches so far: the clock of `ShadowRoot::last_used`.
    switches: u64,
    /// The Switcher's PUD, which every root's slot 256 points to.
    switcher_pud: KernelPage,
    /// The Switcher's PMD, kept to be freed.
    _switcher_pmd: KernelPage,
    switcher_pt: KernelPage,
    /// Every guest page some shadow entry maps, by guest-physical page number, pinned.
    pinned: RBTree<u64, PinnedPage>,
    /// The same pages by host physical address: a shadow entry holds only that, and the page
    /// it leaves must be found when it goes.
    by_phys: RBTree<u64, u64>,
    /// The CPU whose block the Switcher slot maps now.
    mapped_cpu: Option<u64>,
    /// The host-physical address of the guest's lguest_data page, pinned for as long as the
    /// tables and mapped at BLOCK_DATA in the block the Switcher slot maps, once LGUEST_INIT
    /// named it (`map_guest_data`).
    guest_data: Option<u64>,
    memlock: MemlockCharge,
}

// SAFETY: The pinned pages are references the tables own, which any task may unpin; the mm is
// one whose reference the guest's owner holds, charged and uncharged from any task.
unsafe impl Send for ShadowTables {}

impl ShadowTables {
    /// Empty tables for the guest's first page tables (at `guest_cr3`), with the Switcher's
    /// text mapped; the guest's pins are charged to `mm`.
    ///
    /// # Safety
    ///
    /// `mm` must be the launcher's address space and stay live as long as the tables.
    pub(crate) unsafe fn new(
        switcher: &Switcher,
        guest_cr3: u64,
        mm: *mut bindings::mm_struct,
    ) -> Result<ShadowTables> {
        let (mut pud, mut pmd, mut switcher_pt) = (
            KernelPage::for_guest()?,
            KernelPage::for_guest()?,
            KernelPage::for_guest()?,
        );
        for index in 0..TEXT_PAGES {
            let page = switcher.page(index).ok_or(EINVAL)?;
            switcher_pt.entries()[index as usize] = page.phys() | GUEST_TEXT;
        }
        pmd.entries()[0] = switcher_pt.phys() | TABLE;
        pud.entries()[0] = pmd.phys() | TABLE;
        let mut tables = ShadowTables {
            id: switcher.new_guest_id(),
            roots: KVec::new(),
            kernel: KernelHalf {
                top: KernelPage::for_guest()?,
                tables: KVec::new(),
                local: [0; MAX_LOCAL_KERNEL_MAPPINGS],
                local_len: 0,
            },
            current: 0,
            switches: 0,
            switcher_pud: pud,
            _switcher_pmd: pmd,
            switcher_pt,
            pinned: RBTree::new(),
            by_phys: RBTree::new(),
            mapped_cpu: None,
            guest_data: None,
            // SAFETY: `mm` stays live as long as the tables (the caller's contract).
            memlock: unsafe { MemlockCharge::new(mm) },
        };
        tables.switch_to(guest_cr3, false, |_| None)?;
        Ok(tables)
    }

    /// Use the shadow of the guest's page tables at `guest_cr3`: a cached one, or a new one in
    /// place of the least recently used (whose mappings are let go first). With `flush` (the
    /// guest wants its tables as they are now), a cached one keeps only the lower-half entries
    /// `now` confirms (`recheck_lower_half`). Either way the kernel half stays, less its mappings
    /// of non-global entries.
    pub(crate) fn switch_to(
        &mut self,
        guest_cr3: u64,
        flush: bool,
        mut now: impl FnMut(u64) -> Option<(u64, u64)>,
    ) -> Result {
        self.switches += 1;
        if let Some(at) = self.roots.iter().position(|r| r.guest_cr3 == guest_cr3) {
            if flush || at != self.current {
                self.forget_local_kernel_mappings();
            }
            self.current = at;
            self.roots[at].last_used = self.switches;
            if flush {
                self.recheck_lower_half(&mut now);
            }
            return Ok(());
        }
        self.forget_local_kernel_mappings();
        let mut root = KernelPage::for_guest()?;
        root.entries()[WINDOW_PGD_SLOT] = self.switcher_pud.phys() | TABLE;
        let kernel_half = &self.kernel.top.entries()[KERNEL_HALF_FIRST_SLOT..];
        for (mine, shared) in root.entries()[KERNEL_HALF_FIRST_SLOT..]
            .iter_mut()
            .zip(kernel_half)
        {
            *mine = *shared;
        }
        let fresh = ShadowRoot {
            guest_cr3,
            last_used: self.switches,
            root,
            tables: KVec::new(),
        };
        if self.roots.len() < SHADOW_ROOTS {
            self.roots.push(fresh, GFP_KERNEL_ACCOUNT)?;
            self.current = self.roots.len() - 1;
        } else {
            let oldest = (0..self.roots.len())
                .min_by_key(|&i| self.roots[i].last_used)
                .unwrap_or(0);
            self.forget_lower_half(oldest);
            self.roots[oldest] = fresh;
            self.current = oldest;
        }
        Ok(())
    }

    /// Forget the shadow mappings the guest's TLB flush covers: with `all`, every mapping of
    /// every page table, global ones too (a kernel's global flush); else the current page
    /// table's own that `now` does not confirm (`recheck_lower_half`) and the kernel half's
    /// non-global ones (a CR3 reload).
    pub(crate) fn flush(&mut self, all: bool, mut now: impl FnMut(u64) -> Option<(u64, u64)>) {
        if all {
            for index in 0..self.roots.len() {
                self.forget_lower_half(index);
            }
            self.forget_kernel_half();
        } else {
            self.recheck_lower_half(&mut now);
            self.forget_local_kernel_mappings();
        }
    }

    /// After the guest flushed the current page table's TLB entries: keep each lower-half entry
    /// that is exactly what `now(va)` says the entry for `va` may be now (the guest page, and the
    /// entry without its host address: `shadow::after_flush`), and let the others go. Confirming
    /// an entry costs a walk of the guest's tables, where a fault costs a world switch; but past
    /// `MAX_RECHECKED` entries the rest go unasked, so that a flush of a big process costs no
    /// more than a bounded number of walks.
    fn recheck_lower_half(&mut self, now: &mut impl FnMut(u64) -> Option<(u64, u64)>) {
        let top = self.roots[self.current].root.addr();
        let mut budget = MAX_RECHECKED;
        for slot in 0..WINDOW_PGD_SLOT {
            // SAFETY: the current root's page, in the direct map; ours while we hold `&mut self`.
            let entry = unsafe { &mut (*(top as *mut [u64; TABLE_ENTRIES]))[slot] };
            let va = (slot as u64) << 39;
            self.recheck_below(entry, 3, va, &mut budget, now);
        }
    }

    /// `recheck_lower_half` for the entries below `entry`, `levels` above the leaves, which maps
    /// the addresses from `va`.
    fn recheck_below(
        &mut self,
        entry: &mut u64,
        levels: u32,
        va: u64,
        budget: &mut usize,
        now: &mut impl FnMut(u64) -> Option<(u64, u64)>,
    ) {
        if *entry & PTE_PRESENT == 0 {
            return;
        }
        if levels == 0 {
            let keep = *budget > 0
                && now(va).is_some_and(|(gpa_page, flags)| {
                    *entry & !PTE_ADDR_MASK == flags
                        && self.by_phys.get(&(*entry & PTE_ADDR_MASK)) == Some(&gpa_page)
                });
            *budget = budget.saturating_sub(1);
            if !keep {
                let old = core::mem::replace(entry, 0);
                self.unmapped(old);
            }
            return;
        }
        // SAFETY: A present entry above the leaves points to one of our own table pages, in the
        // direct map, which stays ours (and allocated) while we hold `&mut self`.
        let table = unsafe {
            &mut *(lg_bindings::lg_va((*entry & PTE_ADDR_MASK) as _) as *mut [u64; TABLE_ENTRIES])
        };
        let shift = 12 + 9 * (levels - 1);
        for (index, below) in table.iter_mut().enumerate() {
            let va = va | (index as u64) << shift;
            self.recheck_below(below, levels - 1, va, budget, now);
        }
    }

    /// Drop the shadow of the page at `va` from every root.
    pub(crate) fn invalidate(&mut self, GuestVirt(va): GuestVirt) {
        if in_kernel_half(va) {
            self.unmap_below(self.kernel.top.addr(), va);
        } else {
            for index in 0..self.roots.len() {
                self.unmap_below(self.roots[index].root.addr(), va);
            }
        }
    }

    /// Drop the leaf entry for `va` in the tables below the top-level table at `top`, if any.
    fn unmap_below(&mut self, top: usize, va: u64) {
        if let Some(entry) = leaf_below(top, va) {
            // SAFETY: `leaf_below` found an entry of one of our table pages, which nothing
            // else touches while we hold `&mut self`.
            let old = unsafe { core::ptr::replace(entry, 0) };
            self.unmapped(old);
        }
    }

    /// Drop every mapping of root `index`'s lower half, and free its tables; the guest's next
    /// touches fault them back in.
    fn forget_lower_half(&mut self, index: usize) {
        let root = &mut self.roots[index];
        // Kept until the walk below is done: the entries lead into these pages.
        let tables = core::mem::take(&mut root.tables);
        let top = root.root.addr();
        self.release_slots(top, 0..WINDOW_PGD_SLOT);
        drop(tables);
    }

    /// Drop every mapping of the kernel half and free its tables.
    fn forget_kernel_half(&mut self) {
        let tables = core::mem::take(&mut self.kernel.tables);
        self.release_slots(
            self.kernel.top.addr(),
            KERNEL_HALF_FIRST_SLOT..TABLE_ENTRIES,
        );
        for root in self.roots.iter_mut() {
            root.root.entries()[KERNEL_HALF_FIRST_SLOT..].fill(0);
        }
        self.kernel.local_len = 0;
        drop(tables);
    }

    /// Drop the kernel half's mappings of non-global entries: the guest changed page tables.
    fn forget_local_kernel_mappings(&mut self) {
        for index in 0..self.kernel.local_len {
            self.unmap_below(self.kernel.top.addr(), self.kernel.local[index]);
        }
        self.kernel.local_len = 0;
    }

    /// Empty the entries `slots` of the top-level table at `top`, letting go of every mapping
    /// below them. The caller keeps the table pages alive until this returns.
    fn release_slots(&mut self, top: usize, slots: core::ops::Range<usize>) {
        // SAFETY: `top` is one of our top-level table pages, in the direct map; nothing else
        // uses it while we hold `&mut self`.
        let entries = unsafe { &mut *(top as *mut [u64; TABLE_ENTRIES]) };
        for entry in &mut entries[slots] {
            self.release_below(core::mem::replace(entry, 0), 3);
        }
    }

    /// Let go of every leaf (4 KiB) mapping below the shadow table entry `entry`, which sits
    /// `levels` levels above the leaves (3 for a root entry). Our tables map only 4 KiB pages,
    /// so every present entry above the last level leads to one of our table pages.
    fn release_below(&mut self, entry: u64, levels: u32) {
        if entry & PTE_PRESENT == 0 {
            return;
        }
        // SAFETY: A present entry above the leaves points to one of our own table pages, in
        // the direct map, which the caller keeps until the walk is over.
        let table =
            unsafe { &*(lg_bindings::lg_va((entry & PTE_ADDR_MASK) as _) as *const [u64; 512]) };
        for &below in table.iter() {
            if levels == 1 {
                self.unmapped(below);
            } else {
                self.release_below(below, levels - 1);
            }
        }
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The value of CR3 while the guest runs.
    pub(crate) fn root_phys(&self) -> u64 {
        self.roots[self.current].root.phys()
    }

    /// Install `pte` for the 4 KiB page at guest-virtual `va`, in the current root's lower half
    /// or in the kernel half, creating tables on the way; `global` says whether the guest's
    /// entry was global. Returns whether the entry changed: a fault that leaves it as it was is
    /// one the shadow cannot fix (SMAP, SMEP, a protection key), and would only come back.
    pub(crate) fn map(&mut self, GuestVirt(va): GuestVirt, pte: u64, global: bool) -> Result<bool> {
        // src/shadow.rs refuses faults in the window; this is the last line of defence.
        if ((va >> 39) & 0x1ff) as usize == WINDOW_PGD_SLOT {
            return Err(EINVAL);
        }
        // The new mapping counts first: making room below may let go of every other mapping of
        // its page, which must stay pinned all the same.
        self.mapped(pte);
        let local = in_kernel_half(va) && !global;
        if local && self.kernel.local_len == MAX_LOCAL_KERNEL_MAPPINGS {
            self.forget_kernel_half();
        }
        let slot = match self.leaf_slot(va) {
            Ok(slot) => slot,
            Err(err) => {
                self.unmapped(pte);
                return Err(err);
            }
        };
        // SAFETY: `leaf_slot` returned an entry of one of our table pages, which nothing else
        // touches while we hold `&mut self`.
        let old = unsafe { core::ptr::replace(slot, pte) };
        self.unmapped(old);
        let kernel = &mut self.kernel;
        if local && !kernel.local[..kernel.local_len].contains(&va) {
            // There is room: it was made above.
            kernel.local[kernel.local_len] = va;
            kernel.local_len += 1;
        }
        Ok(old != pte)
    }

    /// The leaf entry for `va`, in the current root's lower half or in the kernel half,
    /// creating the tables down to it (after emptying every table if they have reached their
    /// bound). A new table at the top of the kernel half goes into every root.
    fn leaf_slot(&mut self, va: u64) -> Result<*mut u64> {
        let lower: usize = self.roots.iter().map(|r| r.tables.len()).sum();
        if lower + self.kernel.tables.len() + 3 > MAX_SHADOW_TABLES {
            self.flush(true, |_| None);
        }
        if !in_kernel_half(va) {
            let root = &mut self.roots[self.current];
            return leaf_creating(root.root.addr(), &mut root.tables, va);
        }
        let slot = leaf_creating(self.kernel.top.addr(), &mut self.kernel.tables, va)?;
        let index = ((va >> 39) & 0x1ff) as usize;
        let entry = self.kernel.top.entries()[index];
        for root in self.roots.iter_mut() {
            root.root.entries()[index] = entry;
        }
        Ok(slot)
    }
}

/// Entries in a table page of any level.
const TABLE_ENTRIES: usize = 512;

/// The leaf entry for `va` below the top-level table at `top`, creating the tables down to it
/// (each kept in `tables`, to be freed).
fn leaf_creating(top: usize, tables: &mut KVec<KernelPage>, va: u64) -> Result<*mut u64> {
    let mut table = top;
    for shift in [39u32, 30, 21] {
        let index = ((va >> shift) & 0x1ff) as usize;
        // SAFETY: `table` is one of our table pages (the top, or one found below), which the
        // caller holds exclusively.
        let entries = unsafe { &mut *(table as *mut [u64; TABLE_ENTRIES]) };
        if entries[index] & PTE_PRESENT == 0 {
            let fresh = KernelPage::for_guest()?;
            let (phys, addr) = (fresh.phys(), fresh.addr());
            tables.push(fresh, GFP_KERNEL_ACCOUNT)?;
            entries[index] = phys | SHADOW_TABLE;
            table = addr;
        } else {
            // SAFETY: Present entries below the top point to our own table pages, which live
            // in the direct map.
            table = unsafe { lg_bindings::lg_va((entries[index] & PTE_ADDR_MASK) as _) } as usize;
        }
    }
    Ok((table as *mut u64).wrapping_add(((va >> 12) & 0x1ff) as usize))
}

/// The leaf entry for `va` below the top-level table at `top`, if the tables down to it exist.
/// Never one below the Switcher's slot: those tables are the Switcher's, not the guest's.
fn leaf_below(top: usize, va: u64) -> Option<*mut u64> {
    if ((va >> 39) & 0x1ff) as usize == WINDOW_PGD_SLOT {
        return None;
    }
    let mut table = top;
    for shift in [39u32, 30, 21] {
        // SAFETY: `table` is one of our table pages (the top, or one found below).
        let entries = unsafe { &*(table as *const [u64; TABLE_ENTRIES]) };
        let entry = entries[((va >> shift) & 0x1ff) as usize];
        if entry & PTE_PRESENT == 0 {
            return None;
        }
        // SAFETY: present entries below the top point to our own table pages.
        table = unsafe { lg_bindings::lg_va((entry & PTE_ADDR_MASK) as _) } as usize;
    }
    Some((table as *mut u64).wrapping_add(((va >> 12) & 0x1ff) as usize))
}
