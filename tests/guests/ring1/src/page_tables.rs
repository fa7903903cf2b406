//! The guest's own page tables: the identity map every scenario that leaves the launcher's
//! tables starts from, and the tables the host must refuse.
//!
//! The launcher boots the guest on tables it built; a kernel soon wants its own, and hands them
//! to the host with NEW_PGTABLE. The host shadows them, so whatever they map is checked there:
//! `pt-*` (`hostile-pagetable`) maps what a guest must not have and must die for it, and
//! `pin-churn` (`guest-pins-released`) maps page after page to show the host lets go of each.
//! The helpers serve user.rs (a page open to ring 3), linux.rs, hazards.rs and device_pages.rs.

use core::ptr;

use lguest_abi::hcall::NEW_PGTABLE;

use crate::hcall::{hcall, poweroff};
use crate::{println, rdtsc};

/// A page table of the guest's own, and the three that map RAM: PML4 -> PDPT -> PD, 2 MiB
/// pages. The kernel's own pages stay supervisor-only: with SMEP on, ring 1 could not run code
/// in a user page.
#[repr(C, align(4096))]
pub(crate) struct Table(pub(crate) [u64; 512]);
pub(crate) static mut PML4: Table = Table([0; 512]);
pub(crate) static mut PDPT: Table = Table([0; 512]);
pub(crate) static mut PD: Table = Table([0; 512]);
/// Page-table entry bits: present, writable, user, a 2 MiB page; and that page's size.
pub(crate) const P: u64 = 1;
pub(crate) const W: u64 = 2;
pub(crate) const U: u64 = 4;
pub(crate) const HUGE: u64 = 0x80;
pub(crate) const HUGE_PAGE: u64 = 0x20_0000;

/// Fills the guest's own tables (PML4 -> PDPT -> PD) with the first 64 MiB of RAM
/// identity-mapped in 2 MiB pages, as the launcher's tables map it, so that switching to them
/// keeps this code and its stack mapped. Returns the PD and the PML4, for the caller to add
/// its own entries before it loads them (NEW_PGTABLE). The PML4 and PDPT entries allow ring 3
/// (x86 takes the most restrictive permission along the walk), so a PD entry with the user bit
/// is a user page; the identity map's are not.
///
/// # Safety
///
/// Single CPU, and nothing may hold a reference into PD, PDPT or PML4.
pub(crate) unsafe fn ram_identity_tables() -> (&'static mut [u64; 512], &'static mut [u64; 512]) {
    // SAFETY: by the function's contract, these are ours to write.
    unsafe {
        let pd = &mut (*ptr::addr_of_mut!(PD)).0;
        for (i, entry) in pd.iter_mut().take(32).enumerate() {
            *entry = (i as u64 * HUGE_PAGE) | P | W | HUGE;
        }
        (*ptr::addr_of_mut!(PDPT)).0[0] = ptr::addr_of!(PD) as u64 | P | W | U;
        let pml4 = &mut (*ptr::addr_of_mut!(PML4)).0;
        pml4[0] = ptr::addr_of!(PDPT) as u64 | P | W | U;
        (pd, pml4)
    }
}

/// Loads the guest's own tables (NEW_PGTABLE, RCX 0: the host may keep a shadow it has of them;
/// the callers tell it of what they change, or mean to test what it kept).
pub(crate) fn load_own_tables() {
    // SAFETY: the host only reads the table's address.
    unsafe { hcall(NEW_PGTABLE, [ptr::addr_of!(PML4) as u64, 0, 0, 0, 0]) };
}

/// `pt-*`: page tables of the guest's own that map what it must not have, each touched once:
/// the host must kill the guest with the reason, never map the page.
/// - `pt-beyond-ram`: a page beyond guest RAM (1 TiB up);
/// - `pt-switcher-window`: an entry in PML4 slot 256, over the Switcher's window (the host page
///   of CPU 0's block, which no guest view maps);
/// - `pt-rewritten`: the launcher's tables, written in place (they are in guest RAM, writable)
///   to point a mapped address beyond RAM, announced with FLUSH_TLB.
pub fn bad_page_tables(name: &str) -> ! {
    println!("attack: {name}");
    // SAFETY: single CPU; the tables are ours; the addresses touched are the attack.
    unsafe {
        let (pd, pml4) = ram_identity_tables();
        let target: u64 = match name {
            "pt-beyond-ram" => {
                pd[40] = 1 << 40 | P | W | HUGE;
                40 * HUGE_PAGE
            }
            "pt-switcher-window" => {
                pml4[256] = ptr::addr_of!(PDPT) as u64 | P | W;
                // Window page 16: CPU 0's host page (block 0 starts at page 2; +14).
                lguest_abi::data::SWITCHER_WINDOW_START + 16 * 4096
            }
            "pt-rewritten" => {
                // Map it first, and touch it, so that the host has a shadow of it...
                pd[40] = HUGE_PAGE | P | W | HUGE;
                load_own_tables();
                ptr::read_volatile((40 * HUGE_PAGE) as *const u64);
                // ...then point it beyond RAM behind the shadow's back, and own up (a change
                // above the last level wants FLUSH_TLB).
                ptr::write_volatile(&mut pd[40], 1 << 40 | P | W | HUGE);
                hcall(lguest_abi::hcall::FLUSH_TLB, [0, 0, 0, 0, 0]);
                40 * HUGE_PAGE
            }
            _ => panic!("unknown scenario {name:?}"),
        };
        load_own_tables();
        let value = ptr::read_volatile(target as *const u64);
        println!("attack {name}: survived (read {value:#x} at {target:#x})");
    }
    poweroff("bad page tables taken")
}

/// `pin-churn N`: one virtual page mapped in turn to N different pages of RAM, each touched and
/// then announced gone (SET_PTE), then a few seconds of spinning before powering off. The host
/// pins a page while a shadow entry maps it: the test (`guest-pins-released`) watches the
/// host's pin count stay small during the spin, where pins kept until the guest's end would
/// have piled up to N.
pub fn pin_churn(pages: u64) -> ! {
    const CHURN_VA: u64 = 41 * HUGE_PAGE;
    const FIRST_GPA: u64 = 16 << 20;
    static mut PT: Table = Table([0; 512]);
    // SAFETY: single CPU; the tables are ours (ram_identity_tables); the churned pages are
    // unused RAM.
    unsafe {
        let (pd, _) = ram_identity_tables();
        pd[41] = ptr::addr_of!(PT) as u64 | P | W;
        load_own_tables();
        let pt = ptr::addr_of_mut!(PT.0[0]);
        for k in 0..pages {
            ptr::write_volatile(pt, (FIRST_GPA + k * 4096) | P | W);
            hcall(lguest_abi::hcall::SET_PTE, [CHURN_VA, 0, 0, 0, 0]);
            ptr::write_volatile(CHURN_VA as *mut u64, k);
        }
        ptr::write_volatile(pt, 0);
        hcall(lguest_abi::hcall::SET_PTE, [CHURN_VA, 0, 0, 0, 0]);
    }
    println!("pin-churn: {pages} pages mapped, touched and unmapped");
    let start = rdtsc();
    while rdtsc() - start < 3 * crate::tsc_khz() * 1000 {
        core::hint::spin_loop();
    }
    poweroff("pin-churn done")
}
