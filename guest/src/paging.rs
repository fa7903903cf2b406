//! 7. Page tables: the kernel's own, an address space per user task, and faults the kernel fixes.
//!
//! x86-64 translates an address through four levels of 512-entry tables (PML4, PDPT, PD, PT),
//! 9 bits of the address each, and an entry in the PD may map 2 MiB at once (lguest-abi's
//! `paging` module has the entry bits).
//!
//! **The kernel half.** [`init`] builds the kernel's tables from allocator frames, in both
//! worlds: all RAM at virtual == physical in 2 MiB pages, supervisor-only, as the boot loader's
//! tables mapped it; then the mmu op `write_cr3` switches to them. Natively that is `mov cr3`;
//! under lguest it is NEW_PGTABLE, and from then on the host builds its shadow page tables from
//! these instead of the launcher's. Everything the kernel maps lies under PML4 slot 0, the
//! first 512 GiB.
//!
//! **Address spaces.** Each user task gets a PML4 of its own ([`AddressSpace`]) whose slot 0
//! points at the kernel's PDPT, shared, so the kernel is mapped the same way in every address
//! space, and whose slot 1, from [`USER_START`], holds the task's pages: the only ones with the
//! user bit, at every level of the walk. That split is also what SMEP and SMAP want (SMEP is on
//! under lguest, where the guest runs with the host's CR4 less PGE and SMAP; SMAP natively, on
//! a CPU that has it): ring 3 cannot touch the kernel's pages, and the kernel neither runs nor
//! reads user pages through their user mapping. It fills them through the identity map instead,
//! before they are mapped.
//!
//! **Which tables are loaded.** Switching page tables goes through [`switch_to`], which makes the
//! mmu op `write_cr3` and remembers the root, for the fault handler below: the paravirt-ops
//! crate has no `read_cr3` (under lguest the real CR3 is the host's shadow anyway).
//!
//! **Faults the kernel fixes**, in [`demand_fault`] and [`write_fault`]:
//! - *demand paging*: the kernel's window [`DEMAND_START`]..[`DEMAND_END`], and in every user
//!   address space the window [`USER_DEMAND_START`]..[`USER_DEMAND_END`], start empty; the
//!   first touch of a page there faults, and the handler maps a fresh frame and lets the
//!   instruction run again. That is the mechanism behind every `malloc`, stack growth and lazily
//!   loaded program. A user page mapped so belongs to its address space, like the task's code
//!   and stack, and goes with it; [`unmap_user_page`] gives one back earlier.
//! - *write protection*: a page marked [`PTE_WRITE_ON_FAULT`] is mapped read-only until its
//!   first write, which faults, and the handler makes it writable. That is the mechanism behind
//!   copy-on-write (which would copy the page first) and dirty tracking.
//!
//! **Device registers** are not RAM: [`map_io`] maps them, uncached, into a window of their own
//! ([`IO_START`]..[`IO_END`]) wherever they are in the physical address space (natively QEMU's
//! `microvm` puts its virtio devices just under 4 GiB, the launcher right above guest RAM),
//! as Linux's `ioremap` does. Under lguest the host sees the guest's page table name an address
//! that is no RAM of the guest's, and turns each access to it into an exit to the launcher,
//! which plays the device. The other way, a device is told where a buffer is by its physical
//! address ([`phys_addr`]): kernel memory is identity-mapped, so that is the address itself.
//!
//! **Telling the TLB, and the host.** A page that becomes present needs nothing: the TLB never
//! caches "not present", nor does the host's shadow. A mapping that changes or goes away needs
//! `flush_tlb_one_user` (natively `invlpg`, under lguest SET_PTE, so the host drops its shadow of
//! it); a table that goes needs `flush_tlb_user` (a CR3 reload; FLUSH_TLB). Frames are freed
//! only after the flush: until then a stale translation could still reach them.

use core::sync::atomic::{AtomicU64, Ordering};

use lguest_abi::paging::{
    ENTRIES_PER_TABLE, PTE_ADDR_MASK, PTE_HUGE, PTE_PRESENT, PTE_USER, PTE_WRITE,
};
use lguest_abi::PAGE_SIZE;
use paravirt_ops::mmu;

use crate::frames;

/// The first address of the demand-paged window: 256 GiB, far above any RAM we map.
pub const DEMAND_START: u64 = 0x40_0000_0000;
/// The end of the window: 1 GiB of it.
pub const DEMAND_END: u64 = DEMAND_START + (1 << 30);
/// The first address of the user half: PML4 slot 1, 512 GiB.
pub const USER_START: u64 = 1 << 39;
/// The end of the user half (PML4 slot 1 only).
pub const USER_END: u64 = 2 << 39;
/// The demand-paged window of each user address space: 1 GiB of it, 1 GiB into the user half,
/// clear of the code and stack pages (user.rs).
pub const USER_DEMAND_START: u64 = USER_START + (1 << 30);
pub const USER_DEMAND_END: u64 = USER_DEMAND_START + (1 << 30);
/// The window device registers are mapped into ([`map_io`]): 1 GiB at 384 GiB, under the
/// kernel's PML4 slot like everything it maps, so that every address space has it.
pub const IO_START: u64 = 0x60_0000_0000;
pub const IO_END: u64 = IO_START + (1 << 30);
/// Page-level write-through and cache-disable: a read of a device register must reach the
/// device, and writes must reach it in order, which neither a cached line nor a write-back can
/// promise. (TCG and lg.ko trap the accesses anyway; a real CPU would not.)
const PTE_WRITE_THROUGH: u64 = 1 << 3;
const PTE_CACHE_DISABLE: u64 = 1 << 4;
const KERNEL_SLOT: usize = 0;
const USER_SLOT: usize = 1;
const HUGE_PAGE: u64 = 2 << 20;
/// A software bit (the MMU ignores bits 9-11): the page is read-only only until its first
/// write, which [`write_fault`] lets through.
pub const PTE_WRITE_ON_FAULT: u64 = 1 << 9;
/// Page-fault error code bits: the page was present (a protection fault, not a missing page);
/// the access was a write.
const PF_PRESENT: u64 = 1 << 0;
const PF_WRITE: u64 = 1 << 1;
/// ... and it came from user mode.
const PF_USER: u64 = 1 << 2;

/// The physical address of the kernel's PML4.
static KERNEL_ROOT: AtomicU64 = AtomicU64::new(0);
/// The physical address of the PML4 loaded now: the kernel's, or a user task's.
static CURRENT_ROOT: AtomicU64 = AtomicU64::new(0);
/// The end of RAM, all of it identity-mapped: where [`phys_addr`] stops.
static RAM_END: AtomicU64 = AtomicU64::new(0);
/// The next free address of the I/O window.
static IO_NEXT: AtomicU64 = AtomicU64::new(IO_START);
/// How many faults [`demand_fault`] and [`write_fault`] have fixed.
static DEMAND_FAULTS: AtomicU64 = AtomicU64::new(0);
static WRITE_FAULTS: AtomicU64 = AtomicU64::new(0);

/// Builds the identity map of RAM below `ram_end` and switches to it.
pub fn init(ram_end: u64) {
    assert!(
        ram_end <= DEMAND_START,
        "RAM reaches the demand-paging window"
    );
    let root = new_table();
    for pa in (0..ram_end.next_multiple_of(HUGE_PAGE)).step_by(HUGE_PAGE as usize) {
        let pd = table_for(root, pa, 2, 0);
        set_entry(pd, index(pa, 2), pa | PTE_PRESENT | PTE_WRITE | PTE_HUGE);
    }
    KERNEL_ROOT.store(root, Ordering::Relaxed);
    RAM_END.store(ram_end, Ordering::Relaxed);
    // SAFETY: the new tables map all RAM where the boot loader's did (identity), and the
    // kernel, its stacks and everything it refers to are in RAM.
    unsafe { switch_to(root) };
}

/// The kernel's page tables: what runs when no user task does.
pub fn kernel_root() -> u64 {
    KERNEL_ROOT.load(Ordering::Relaxed)
}

/// The page tables loaded now.
pub fn current_root() -> u64 {
    CURRENT_ROOT.load(Ordering::Relaxed)
}

/// Loads the page tables at `root` (the mmu op `write_cr3`: natively `mov cr3`, under lguest
/// NEW_PGTABLE), and remembers them.
///
/// # Safety
///
/// As for `mmu::write_cr3`: the new tables map everything the kernel is using where the old
/// ones did. Tables made here all do: they share the kernel half.
pub unsafe fn switch_to(root: u64) {
    // SAFETY: the caller's promise.
    unsafe { mmu::write_cr3(root) };
    CURRENT_ROOT.store(root, Ordering::Relaxed);
}

/// The page-fault handler's first question: is `addr` a page of a demand window that is simply
/// not there yet: the kernel's, touched by the kernel, or the running task's, touched by the
/// task? If so, map a fresh zeroed frame there and say so.
pub fn demand_fault(addr: u64, error: u64) -> bool {
    if error & PF_PRESENT != 0 {
        return false;
    }
    let from_user = error & PF_USER != 0;
    let (root, user) = if !from_user && (DEMAND_START..DEMAND_END).contains(&addr) {
        (kernel_root(), 0)
    } else if from_user
        && (USER_DEMAND_START..USER_DEMAND_END).contains(&addr)
        && current_root() != kernel_root()
    {
        (current_root(), PTE_USER)
    } else {
        return false;
    };
    let Some(frame) = frames::alloc_zeroed() else {
        return false;
    };
    let pt = table_for(root, addr, 1, user);
    set_entry(pt, index(addr, 1), frame | PTE_PRESENT | PTE_WRITE | user);
    DEMAND_FAULTS.fetch_add(1, Ordering::Relaxed);
    true
}

/// The second question: is this a write to a kernel page that is read-only only until written
/// ([`PTE_WRITE_ON_FAULT`])? If so, make it writable and tell the TLB (under lguest: the host,
/// whose shadow entry is read-only too), and say so.
pub fn write_fault(addr: u64, error: u64) -> bool {
    if error & (PF_PRESENT | PF_WRITE) != PF_PRESENT | PF_WRITE {
        return false;
    }
    let Some((pt, i)) = leaf(kernel_root(), addr) else {
        return false;
    };
    let entry = get_entry(pt, i);
    if entry & PTE_WRITE_ON_FAULT == 0 {
        return false;
    }
    set_entry(pt, i, entry & !PTE_WRITE_ON_FAULT | PTE_WRITE);
    mmu::flush_tlb_one_user(addr);
    WRITE_FAULTS.fetch_add(1, Ordering::Relaxed);
    true
}

/// How many demand faults, and write faults, have been fixed so far.
pub fn demand_faults() -> u64 {
    DEMAND_FAULTS.load(Ordering::Relaxed)
}

pub fn write_faults() -> u64 {
    WRITE_FAULTS.load(Ordering::Relaxed)
}

/// Makes the kernel page at `va` read-only until its next write ([`write_fault`]). A mapping
/// that loses a permission must be flushed: the TLB (or the host's shadow) would keep it.
pub fn write_protect(va: u64) {
    let (pt, i) = leaf(kernel_root(), va).expect("write_protect: the page is not mapped");
    let entry = get_entry(pt, i);
    set_entry(pt, i, entry & !PTE_WRITE | PTE_WRITE_ON_FAULT);
    mmu::flush_tlb_one_user(va);
}

/// Unmaps the kernel page at `va` and returns its frame, if it was mapped (the caller may free
/// it: the flush is done).
pub fn unmap(va: u64) -> Option<u64> {
    unmap_in(kernel_root(), va)
}

/// Unmaps the page at `va` of the running task's demand window and returns its frame, if it
/// was mapped (the caller may free it: the flush is done). The `unmap` system call.
pub fn unmap_user_page(va: u64) -> Option<u64> {
    let root = current_root();
    if !(USER_DEMAND_START..USER_DEMAND_END).contains(&va) || root == kernel_root() {
        return None;
    }
    unmap_in(root, va)
}

/// Unmaps the page at `va` in the page tables at `root`, flushes it, and returns its frame, if
/// it was mapped: what [`unmap`] and [`unmap_user_page`] share.
fn unmap_in(root: u64, va: u64) -> Option<u64> {
    let (pt, i) = leaf(root, va)?;
    let entry = get_entry(pt, i);
    if entry & PTE_PRESENT == 0 {
        return None;
    }
    set_entry(pt, i, 0);
    mmu::flush_tlb_one_user(va);
    Some(entry & PTE_ADDR_MASK)
}

/// Maps the device registers at physical `pa..pa + len` into the I/O window, uncached, and
/// returns the address `pa` now has: Linux's `ioremap`. No flush: the pages were not present.
/// Nothing is ever unmapped, so the window only fills up; a device's registers take a page.
pub fn map_io(pa: u64, len: u64) -> u64 {
    let first = pa & !(PAGE_SIZE - 1);
    let pages = (pa + len.max(1) - first).div_ceil(PAGE_SIZE);
    let va = IO_NEXT.fetch_add(pages * PAGE_SIZE, Ordering::Relaxed);
    assert!(va + pages * PAGE_SIZE <= IO_END, "the I/O window is full");
    for i in 0..pages {
        let page = va + i * PAGE_SIZE;
        let pt = table_for(kernel_root(), page, 1, 0);
        let entry = (first + i * PAGE_SIZE)
            | PTE_PRESENT
            | PTE_WRITE
            | PTE_WRITE_THROUGH
            | PTE_CACHE_DISABLE;
        set_entry(pt, index(page, 1), entry);
    }
    va + (pa - first)
}

/// The physical address of kernel memory `va..va + len`, if the identity map of RAM holds all
/// of it (stacks, statics, frames from the allocator; not the demand or I/O windows): what a
/// device is told of a buffer.
pub fn phys_addr(va: u64, len: u64) -> Option<u64> {
    (va.checked_add(len)? <= RAM_END.load(Ordering::Relaxed)).then_some(va)
}

// ---- Address spaces ---------------------------------------------------------------------------

/// A user task's page tables: the kernel half shared, the user half its own.
///
/// # Invariants
///
/// `root` is a PML4 frame from the allocator, owned by this value, whose slot 0 is the kernel's
/// and whose user half (slot 1) holds tables and pages owned by this value too.
pub struct AddressSpace {
    root: u64,
}

impl AddressSpace {
    /// An address space with the kernel mapped and nothing in the user half.
    pub fn new() -> AddressSpace {
        let root = new_table();
        set_entry(root, KERNEL_SLOT, get_entry(kernel_root(), KERNEL_SLOT));
        // INVARIANT: a fresh frame, slot 0 the kernel's, the user half empty.
        AddressSpace { root }
    }

    /// The PML4's physical address, for `write_cr3`.
    pub fn root(&self) -> u64 {
        self.root
    }

    /// Maps user page `va` to `frame`, which the address space then owns (and frees). No flush:
    /// the page was not present.
    pub fn map_user(&mut self, va: u64, frame: u64, writable: bool) {
        assert!(
            (USER_START..USER_END).contains(&va),
            "{va:#x} is not a user address"
        );
        let pt = table_for(self.root, va, 1, PTE_USER);
        let write = if writable { PTE_WRITE } else { 0 };
        set_entry(pt, index(va, 1), frame | PTE_PRESENT | PTE_USER | write);
    }

    /// Takes the whole user half away and frees its tables and pages: what a task's exit does.
    /// The address space must be the current one (the flush is for the current page tables).
    pub fn unmap_user(&mut self) {
        let entry = get_entry(self.root, USER_SLOT);
        if entry & PTE_PRESENT == 0 {
            return;
        }
        set_entry(self.root, USER_SLOT, 0);
        mmu::flush_tlb_user();
        // SAFETY: the subtree is this address space's alone (the invariant), and after the flush
        // nothing maps or remembers it.
        unsafe { free_tree(entry & PTE_ADDR_MASK, 3) };
    }
}

impl Drop for AddressSpace {
    /// Frees the PML4. Under lguest the host may still keep a shadow of it, and would use that
    /// shadow again were the frame to become a PML4 once more; it is harmless because the user
    /// half had to go first ([`AddressSpace::unmap_user`], flushed), and the kernel half is
    /// the same in every address space.
    fn drop(&mut self) {
        assert!(
            get_entry(self.root, USER_SLOT) == 0,
            "an address space freed with its user half still mapped"
        );
        // SAFETY: the root is ours (the invariant); it is not loaded (the caller switched
        // away before dropping it), and the user half is gone.
        unsafe { frames::free(self.root) };
    }
}

/// Frees the level-`level` table at `table` (3 = PDPT, 1 = PT) and everything it maps.
///
/// # Safety
///
/// Everything below `table` is the caller's to free, and nothing maps or remembers it.
unsafe fn free_tree(table: u64, level: u32) {
    for i in 0..ENTRIES_PER_TABLE {
        let entry = get_entry(table, i);
        if entry & PTE_PRESENT == 0 {
            continue;
        }
        if level > 1 {
            // SAFETY: a table below ours: the caller's promise covers it.
            unsafe { free_tree(entry & PTE_ADDR_MASK, level - 1) };
        } else {
            // SAFETY: a page below ours, likewise.
            unsafe { frames::free(entry & PTE_ADDR_MASK) };
        }
    }
    // SAFETY: the table itself, likewise.
    unsafe { frames::free(table) };
}

// ---- Walking the tables -----------------------------------------------------------------------

/// The level-`level` table (2 = PD, 1 = PT) on the way to `va` from `root`, made where missing,
/// with `user` (0 or PTE_USER) in the entries it makes.
fn table_for(root: u64, va: u64, level: u32, user: u64) -> u64 {
    let mut table = root;
    for upper in (level + 1..=4).rev() {
        let i = index(va, upper);
        let entry = get_entry(table, i);
        table = if entry & PTE_PRESENT == 0 {
            let new = new_table();
            set_entry(table, i, new | PTE_PRESENT | PTE_WRITE | user);
            new
        } else {
            assert!(entry & PTE_HUGE == 0, "{va:#x} is inside a huge page");
            entry & PTE_ADDR_MASK
        };
    }
    table
}

/// The page table and index of `va`'s 4 KiB entry under `root`, if the tables down to it exist.
fn leaf(root: u64, va: u64) -> Option<(u64, usize)> {
    let mut table = root;
    for level in (2..=4).rev() {
        let entry = get_entry(table, index(va, level));
        if entry & PTE_PRESENT == 0 || entry & PTE_HUGE != 0 {
            return None;
        }
        table = entry & PTE_ADDR_MASK;
    }
    Some((table, index(va, 1)))
}

fn new_table() -> u64 {
    frames::alloc_zeroed().expect("out of memory for page tables")
}

/// The index into a level-`level` table for `va` (4 = PML4, 1 = page table).
fn index(va: u64, level: u32) -> usize {
    ((va >> (12 + 9 * (level - 1))) & (ENTRIES_PER_TABLE as u64 - 1)) as usize
}

fn get_entry(table: u64, index: usize) -> u64 {
    // SAFETY: `table` is a page-table frame of ours, identity-mapped; index < 512. Volatile, as
    // the MMU reads (and sets accessed and dirty bits in) the same words, and so under lguest
    // does the host.
    unsafe { (table as *const u64).add(index).read_volatile() }
}

fn set_entry(table: u64, index: usize, entry: u64) {
    // SAFETY: as in get_entry; only this module writes our tables, one CPU, and each caller
    // holds the only path to the entry (the fault handlers change only kernel-half pages that
    // no interrupted code is changing).
    unsafe { (table as *mut u64).add(index).write_volatile(entry) }
}
