//! Shadow paging decisions: what the host maps when the guest takes a page fault.
//!
//! The guest never runs on its own page tables. It runs on shadow tables the host builds, which
//! map only guest RAM and the Switcher, and which start empty: each first touch of a page
//! faults to the host, which walks the guest's tables ([`crate::pagewalk::walk`]), checks what
//! the guest asked for, and installs one shadow entry pointing at the host page that backs that
//! guest-physical page. This file is the checking; `lg-module/shadow_tables.rs` does the
//! installing.
//!
//! The checks are lguest's: the guest mapping must be present, writable for a write, user for a
//! ring-3 access, executable for a fetch, and must point inside guest RAM. A read fault maps the
//! page read-only unless the guest's entry is already dirty, so that the first write faults too
//! and the host can set the dirty bit, as the MMU would have.
//!
//! **The two halves.** The upper half of the address space, past the Switcher's slot, is a
//! kernel's, the same in every process: the host keeps one shadow of it for every page table
//! the guest switches between ([`in_kernel_half`]), as the TLB keeps global entries across a CR3
//! load. A mapping there that the guest did not mark global ([`Mapping::global`]) is dropped
//! whenever the guest changes page tables, as the TLB would drop it. The lower half is each
//! page table's own, and a flush empties it.
//!
//! Guest-physical pages past RAM, up to the device limit, are device pages. They are never
//! mapped: every access to one faults here and goes to the launcher (an MMIO exit), which
//! emulates the instruction against its device models.

use crate::abi::data::{SWITCHER_WINDOW_END, SWITCHER_WINDOW_START};
use crate::abi::paging::{
    PTE_ACCESSED, PTE_DIRTY, PTE_GLOBAL, PTE_NO_EXEC, PTE_PRESENT, PTE_USER, PTE_WRITE,
};
use crate::address::HostPhys;
use crate::death;
use crate::death::Death;
use crate::pagewalk::Leaf;

/// Page-fault error code bits, as the CPU pushes them.
pub const PF_PRESENT: u64 = 1 << 0;
pub const PF_WRITE: u64 = 1 << 1;
pub const PF_USER: u64 = 1 << 2;
pub const PF_FETCH: u64 = 1 << 4;

/// What to install for a fault the guest may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Guest-physical address of the 4 KiB page to map.
    pub gpa_page: u64,
    pub writable: bool,
    pub user: bool,
    pub no_exec: bool,
    /// The guest's entry is global: in the kernel half, its shadow outlives page-table switches.
    pub global: bool,
    /// The guest entry with accessed (and, for a write, dirty) set: the host writes it back.
    pub updated_entry: u64,
}

/// A fault the shadow cannot resolve.
#[derive(Debug, PartialEq)]
pub enum Unresolved {
    /// The guest's own tables forbid the access: the guest gets the page fault, with this
    /// error code (as its MMU would have given it), if it has a handler; else it dies for `death`.
    Reflect { error: u64, death: Death },
    /// The guest broke a rule of the host's.
    Kill(Death),
    /// A permitted read or write of a device page: the launcher's to emulate.
    Device { gpa: u64, write: bool },
}

/// Guest-physical memory: RAM, then device pages up to `device_limit` (bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhysLayout {
    pub ram_bytes: u64,
    pub device_limit: u64,
}

/// Decide what a fault at `va` with `error` means, given what the guest's tables say (`leaf`).
pub fn decide(
    va: u64,
    error: u64,
    leaf: Option<Leaf>,
    phys: PhysLayout,
) -> Result<Mapping, Unresolved> {
    if (SWITCHER_WINDOW_START..SWITCHER_WINDOW_END).contains(&va) {
        return Err(Unresolved::Kill(death!(
            "touched the Switcher window at {va:#x} (error {error:#x})"
        )));
    }
    let what = if error & PF_FETCH != 0 {
        "fetch from"
    } else if error & PF_WRITE != 0 {
        "write to"
    } else {
        "read of"
    };
    let Some(leaf) = leaf else {
        let death = death!("page fault: {what} unmapped {va:#x}");
        return Err(Unresolved::Reflect {
            error: error & !PF_PRESENT,
            death,
        });
    };
    let refused = |why: &str| Unresolved::Reflect {
        error: error | PF_PRESENT,
        death: death!("page fault: {what} {why} {va:#x}"),
    };
    if error & PF_WRITE != 0 && !leaf.writable {
        return Err(refused("read-only"));
    }
    if error & PF_USER != 0 && !leaf.user {
        return Err(refused("supervisor page"));
    }
    if error & PF_FETCH != 0 && leaf.no_exec {
        return Err(refused("no-execute page"));
    }
    if leaf.gpa >= phys.ram_bytes {
        if leaf.gpa >= phys.device_limit {
            return Err(Unresolved::Kill(death!(
                "page fault: {va:#x} maps guest-physical {:#x}, beyond RAM and devices",
                leaf.gpa
            )));
        }
        // Device registers are read and written, never run.
        if error & PF_FETCH != 0 {
            return Err(Unresolved::Kill(death!(
                "page fault: fetch from device memory at {va:#x} (guest-physical {:#x})",
                leaf.gpa
            )));
        }
        return Err(Unresolved::Device {
            gpa: leaf.gpa,
            write: error & PF_WRITE != 0,
        });
    }
    let write = error & PF_WRITE != 0;
    let mut updated_entry = leaf.entry | PTE_ACCESSED;
    if write {
        updated_entry |= PTE_DIRTY;
    }
    Ok(Mapping {
        gpa_page: leaf.gpa & !0xfff,
        // Read-only until the guest entry is dirty, so the first write comes back to us.
        writable: leaf.writable && updated_entry & PTE_DIRTY != 0,
        user: leaf.user,
        no_exec: leaf.no_exec,
        global: leaf.entry & PTE_GLOBAL != 0,
        updated_entry,
    })
}

/// What a shadow entry for a page may hold after the guest flushed its TLB, given what the
/// guest's tables say of that page now (`leaf`): the guest page it maps and the entry without
/// its host address, or `None` if no entry may stand. A flush asks the host to forget what the
/// guest's tables no longer say; an entry the tables still say exactly the same of may stay,
/// and saves the guest a fault. So it must be what `decide` and `shadow_pte_for` would make now:
/// RAM, not a device page; writable only where the guest's entry is writable and dirty. And
/// only where the guest's entry is still accessed (and dirty, for a writable one): the host set
/// those bits when it made the entry, and a guest that cleared one since wants the next access
/// to fault and set it again, as the MMU would after a flush.
pub fn after_flush(leaf: Option<Leaf>, phys: PhysLayout) -> Option<(u64, u64)> {
    let leaf = leaf?;
    if leaf.entry & PTE_ACCESSED == 0 || leaf.gpa >= phys.ram_bytes {
        return None;
    }
    let mapping = Mapping {
        gpa_page: leaf.gpa & !0xfff,
        writable: leaf.writable && leaf.entry & PTE_DIRTY != 0,
        user: leaf.user,
        no_exec: leaf.no_exec,
        global: leaf.entry & PTE_GLOBAL != 0,
        updated_entry: leaf.entry,
    };
    Some((mapping.gpa_page, shadow_pte_for(&mapping, HostPhys(0))))
}

/// The first top-level (PML4) slot of the kernel half: the one after the Switcher's window.
pub const KERNEL_HALF_FIRST_SLOT: usize = (SWITCHER_WINDOW_END >> 39 & 0x1ff) as usize;

/// Whether `va` lies in the kernel half, whose shadow every page table shares. The Switcher's
/// window, just below it, belongs to neither half: no guest mapping is ever made there.
pub fn in_kernel_half(va: u64) -> bool {
    va >= SWITCHER_WINDOW_END
}

/// The shadow entry for `mapping`, backed by the host page at `host_phys`. Never global (the
/// guest's entries must go with every CR3 switch), accessed and dirty preset (the host tracks
/// those in the guest's own entries, so the MMU need not write the shadow).
pub fn shadow_pte_for(mapping: &Mapping, host_phys: HostPhys) -> u64 {
    let mut pte = host_phys.0 | PTE_PRESENT | PTE_ACCESSED | PTE_DIRTY;
    if mapping.writable {
        pte |= PTE_WRITE;
    }
    if mapping.user {
        pte |= PTE_USER;
    }
    if mapping.no_exec {
        pte |= PTE_NO_EXEC;
    }
    pte
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM: u64 = 64 << 20;
    const PHYS: PhysLayout = PhysLayout {
        ram_bytes: RAM,
        device_limit: RAM + 0x2000,
    };

    fn leaf(gpa: u64, writable: bool, user: bool) -> Leaf {
        Leaf {
            gpa,
            entry_gpa: 0x3000,
            entry: gpa & !0xfff | 1,
            writable,
            user,
            no_exec: false,
        }
    }

    #[test]
    fn read_faults_map_read_only_until_dirty() {
        let m = decide(0x20_0123, 0, Some(leaf(0x20_0123, true, false)), PHYS).unwrap();
        assert_eq!(m.gpa_page, 0x20_0000);
        assert!(
            !m.writable,
            "clean page: read-only, so the first write comes back"
        );
        assert_eq!(m.updated_entry & (PTE_ACCESSED | PTE_DIRTY), PTE_ACCESSED);
        let w = decide(
            0x20_0123,
            PF_WRITE,
            Some(leaf(0x20_0123, true, false)),
            PHYS,
        )
        .unwrap();
        assert!(w.writable);
        assert_eq!(w.updated_entry & PTE_DIRTY, PTE_DIRTY);
        let pte = shadow_pte_for(&w, HostPhys(0x7_7000));
        assert_eq!(
            pte,
            0x7_7000 | PTE_PRESENT | PTE_WRITE | PTE_ACCESSED | PTE_DIRTY
        );
    }

    #[test]
    fn the_global_bit_is_carried_to_the_mapping() {
        let mut global = leaf(0x20_0000, true, false);
        global.entry |= PTE_GLOBAL;
        let kernel_va = 0xffff_ffff_8120_0000;
        assert!(decide(kernel_va, 0, Some(global), PHYS).unwrap().global);
        let local = leaf(0x20_0000, true, false);
        assert!(!decide(kernel_va, 0, Some(local), PHYS).unwrap().global);
    }

    #[test]
    fn an_entry_stays_after_a_flush_only_as_the_guest_tables_still_say() {
        let pte_for = |leaf: Leaf, write: bool| {
            let error = if write { PF_WRITE } else { 0 };
            let m = decide(0x40_0000, error, Some(leaf), PHYS).unwrap();
            (m.gpa_page, shadow_pte_for(&m, HostPhys(0)))
        };
        let mut clean = leaf(0x20_0000, true, true);
        clean.entry |= PTE_ACCESSED;
        assert_eq!(after_flush(Some(clean), PHYS), Some(pte_for(clean, false)));
        let mut dirty = clean;
        dirty.entry |= PTE_DIRTY;
        assert_eq!(after_flush(Some(dirty), PHYS), Some(pte_for(dirty, true)));
        assert_eq!(after_flush(None, PHYS), None, "unmapped since");
        let unaccessed = leaf(0x20_0000, true, true);
        assert_eq!(
            after_flush(Some(unaccessed), PHYS),
            None,
            "accessed bit cleared"
        );
        let mut device = leaf(RAM, true, false);
        device.entry |= PTE_ACCESSED;
        assert_eq!(
            after_flush(Some(device), PHYS),
            None,
            "a device page is never mapped"
        );
    }

    #[test]
    fn the_kernel_half_starts_after_the_switcher_window() {
        assert!(!in_kernel_half(0x7fff_ffff_f000), "the top of user space");
        assert!(!in_kernel_half(SWITCHER_WINDOW_START));
        assert!(!in_kernel_half(SWITCHER_WINDOW_END - 1));
        assert!(in_kernel_half(SWITCHER_WINDOW_END));
        assert!(in_kernel_half(0xffff_8880_0000_0000), "Linux's direct map");
        assert!(in_kernel_half(0xffff_ffff_8100_0000), "Linux's kernel text");
        assert_eq!(KERNEL_HALF_FIRST_SLOT, 257);
    }

    #[test]
    fn every_broken_rule_kills() {
        let cases: [(u64, u64, Option<Leaf>); 7] = [
            (0x1000, 0, None),
            (0x1000, PF_WRITE, Some(leaf(0x1000, false, true))),
            (0x1000, PF_USER, Some(leaf(0x1000, true, false))),
            (
                0x1000,
                PF_FETCH,
                Some(Leaf {
                    no_exec: true,
                    ..leaf(0x1000, true, true)
                }),
            ),
            (0x1000, 0, Some(leaf(RAM + 0x2000, true, true))),
            (0x1000, PF_FETCH, Some(leaf(RAM, true, true))),
            (
                SWITCHER_WINDOW_START + 0x2000,
                PF_WRITE | PF_PRESENT,
                Some(leaf(0x1000, true, true)),
            ),
        ];
        for (va, error, l) in cases {
            assert!(
                decide(va, error, l, PHYS).is_err(),
                "{va:#x} {error:#x} {l:?}"
            );
        }
    }

    #[test]
    fn device_pages_go_to_the_launcher_with_the_guests_rules_applied() {
        let device = leaf(RAM + 0x1010, true, false);
        assert_eq!(
            decide(0x9000_0010, PF_WRITE, Some(device), PHYS),
            Err(Unresolved::Device {
                gpa: RAM + 0x1010,
                write: true
            })
        );
        assert_eq!(
            decide(0x9000_0010, 0, Some(device), PHYS),
            Err(Unresolved::Device {
                gpa: RAM + 0x1010,
                write: false
            })
        );
        // The guest's own tables still come first: a user access to its supervisor mapping is
        // the guest's page fault, not the device's business.
        assert!(matches!(
            decide(0x9000_0010, PF_USER, Some(device), PHYS),
            Err(Unresolved::Reflect { .. })
        ));
    }
}
