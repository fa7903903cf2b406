//! 7. Page tables: natively the kernel's own, and pages mapped on demand.
//!
//! x86-64 translates an address through four levels of 512-entry tables (PML4, PDPT, PD, PT),
//! 9 bits of the address each, and an entry in the PD may map 2 MiB at once (lguest-abi's
//! `paging` module has the entry bits). Natively [`init`] builds the kernel's tables from
//! allocator frames: all RAM at virtual == physical in 2 MiB pages, supervisor-only, as the boot
//! tables mapped the first GiB. Then one window, [`DEMAND_START`]..[`DEMAND_END`], is left
//! empty: the first touch of a page there faults, and [`demand_fault`] maps a fresh frame and
//! lets the instruction run again. That is demand paging, the mechanism behind every `malloc`,
//! stack growth and lazily loaded program.
//!
//! Under lguest the kernel keeps the page tables the launcher built (the same identity map),
//! and this module does nothing: a page table entry the guest writes is not seen by the host's
//! shadow page tables until the host keeps them coherent (NEW_PGTABLE, SET_PTE: issue #4), so
//! mapping on demand would fault forever. [`own_tables`] says which case we are in.

use core::sync::atomic::{AtomicU64, Ordering};

use lguest_abi::paging::{ENTRIES_PER_TABLE, PTE_ADDR_MASK, PTE_HUGE, PTE_PRESENT, PTE_WRITE};
use lguest_abi::PAGE_SIZE;
use paravirt_ops::mmu;

use crate::frames;

/// The first address of the demand-paged window: 256 GiB, far above any RAM we map.
pub const DEMAND_START: u64 = 0x40_0000_0000;
/// The end of the window: 1 GiB of it.
pub const DEMAND_END: u64 = DEMAND_START + (1 << 30);
const HUGE_PAGE: u64 = 2 << 20;
/// The page-fault error code's bit 0: the page was present (a protection fault, not a missing
/// page).
const PF_PRESENT: u64 = 1 << 0;

/// The physical address of our PML4; 0 while we run on somebody else's tables.
static ROOT: AtomicU64 = AtomicU64::new(0);
/// How many faults [`demand_fault`] has fixed.
static DEMAND_FAULTS: AtomicU64 = AtomicU64::new(0);

/// Native only: builds the identity map of RAM below `ram_end` and switches to it.
pub fn init(ram_end: u64) {
    assert!(
        ram_end <= DEMAND_START,
        "RAM reaches the demand-paging window"
    );
    let root = new_table();
    for pa in (0..ram_end.next_multiple_of(HUGE_PAGE)).step_by(HUGE_PAGE as usize) {
        let pd = table_for(root, pa, 2);
        set_entry(pd, index(pa, 2), pa | PTE_PRESENT | PTE_WRITE | PTE_HUGE);
    }
    // SAFETY: the new tables map all RAM where the boot tables did (identity), and the kernel,
    // its stacks and everything it refers to are in RAM.
    unsafe { mmu::write_cr3(root) };
    ROOT.store(root, Ordering::Relaxed);
}

/// Whether the kernel runs on its own page tables (natively), so it may map pages.
pub fn own_tables() -> bool {
    ROOT.load(Ordering::Relaxed) != 0
}

/// The page-fault handler's first question: is `addr` a page of the demand window that is
/// simply not there yet? If so, map a fresh zeroed frame there and say so; the faulting
/// instruction then runs again and finds it.
pub fn demand_fault(addr: u64, error: u64) -> bool {
    if !own_tables() || !(DEMAND_START..DEMAND_END).contains(&addr) || error & PF_PRESENT != 0 {
        return false;
    }
    let Some(frame) = frames::alloc_zeroed() else {
        return false;
    };
    map(addr & !(PAGE_SIZE - 1), frame);
    DEMAND_FAULTS.fetch_add(1, Ordering::Relaxed);
    true
}

/// How many demand faults have been fixed so far.
pub fn demand_faults() -> u64 {
    DEMAND_FAULTS.load(Ordering::Relaxed)
}

/// Maps the 4 KiB page at `va` to `frame`, writable, making tables on the way. A missing page
/// becoming present needs no TLB flush: the TLB never caches "not present".
fn map(va: u64, frame: u64) {
    let pt = table_for(ROOT.load(Ordering::Relaxed), va, 1);
    set_entry(pt, index(va, 1), frame | PTE_PRESENT | PTE_WRITE);
}

/// Unmaps the 4 KiB page at `va` and returns its frame, if it was mapped. This one does need a
/// flush: the TLB may still hold the old translation, and would keep using it.
pub fn unmap(va: u64) -> Option<u64> {
    let pt = table_for(ROOT.load(Ordering::Relaxed), va, 1);
    let entry = get_entry(pt, index(va, 1));
    if entry & PTE_PRESENT == 0 {
        return None;
    }
    set_entry(pt, index(va, 1), 0);
    mmu::flush_tlb_one_user(va);
    Some(entry & PTE_ADDR_MASK)
}

/// The level-`level` table (2 = PD, 1 = PT) on the way to `va` from `root`, made where missing.
fn table_for(root: u64, va: u64, level: u32) -> u64 {
    let mut table = root;
    for upper in (level + 1..=4).rev() {
        let i = index(va, upper);
        let entry = get_entry(table, i);
        table = if entry & PTE_PRESENT == 0 {
            let new = new_table();
            set_entry(table, i, new | PTE_PRESENT | PTE_WRITE);
            new
        } else {
            assert!(entry & PTE_HUGE == 0, "{va:#x} is inside a huge page");
            entry & PTE_ADDR_MASK
        };
    }
    table
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
    // the MMU reads (and sets accessed and dirty bits in) the same words.
    unsafe { (table as *const u64).add(index).read_volatile() }
}

fn set_entry(table: u64, index: usize, entry: u64) {
    // SAFETY: as in get_entry; only this module writes our tables, one CPU, and each caller
    // holds the only path to the entry (no interrupt handler maps pages the caller is mapping).
    unsafe { (table as *mut u64).add(index).write_volatile(entry) }
}
