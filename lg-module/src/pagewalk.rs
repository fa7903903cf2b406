//! Walking the guest's own page tables, as the hardware would.
//!
//! The host reads guest page tables to check at INITIALIZE that the entry point the launcher
//! named really lands in guest RAM, to build shadow page tables on demand, and to reach guest
//! memory by its virtual address (the instruction bytes of an `int n` or `syscall`, a trap
//! frame it pushes on the guest's stack). Every table the walk touches is guest memory, so every
//! entry is untrusted: a table pointer outside RAM stops the walk instead of reading somewhere
//! else.
//!
//! Hardware-free: guest memory is reached through [`GuestPhysRead`], which lg.ko implements with
//! copy_from_user and the unit tests with an array.

use crate::abi::dev::Refusal;
use crate::abi::paging::{PTE_ADDR_MASK, PTE_HUGE, PTE_NO_EXEC, PTE_PRESENT, PTE_USER, PTE_WRITE};

/// Reads 8 bytes of guest-physical memory.
pub trait GuestPhysRead {
    /// Read the little-endian u64 at guest-physical `gpa`. Callers pass only 8-aligned
    /// addresses inside guest RAM; the implementation still fails with [`Refusal::Fault`]
    /// rather than trust that.
    fn read_u64(&self, gpa: u64) -> Result<u64, Refusal>;
}

/// What a walk found at the bottom: the page and what every level allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// The guest-physical address `va` translates to.
    pub gpa: u64,
    /// The guest-physical address of the entry that maps the page (a PTE, or a PDE/PDPTE for a
    /// huge page): the host sets its accessed and dirty bits there, as the hardware would.
    pub entry_gpa: u64,
    /// That entry's value.
    pub entry: u64,
    /// Writable at every level.
    pub writable: bool,
    /// User-accessible at every level.
    pub user: bool,
    /// No-execute at some level.
    pub no_exec: bool,
}

/// Walk the 4-level tables at `cr3` for `va`, as the MMU would: `None` if it is not mapped
/// (non-canonical, or a non-present entry on the way).
///
/// `ram_bytes` bounds every table the walk reads: a table pointer beyond it is refused with
/// [`Refusal::OutsideRam`]. The page found is not checked against RAM: callers decide what
/// lies there.
pub fn walk(
    mem: &impl GuestPhysRead,
    ram_bytes: u64,
    cr3: u64,
    va: u64,
) -> Result<Option<Leaf>, Refusal> {
    // Bits 63..47 must all equal bit 47, or the CPU faults before it looks at any table.
    let high = va >> 47;
    if high != 0 && high != 0x1_ffff {
        return Ok(None);
    }
    let mut table = cr3 & PTE_ADDR_MASK;
    let (mut writable, mut user, mut no_exec) = (true, true, false);
    // Levels from PML4 (shift 39) down to the page table (shift 12).
    for shift in [39u32, 30, 21, 12] {
        let entry_gpa = table + ((va >> shift) & 0x1ff) * 8;
        if entry_gpa + 8 > ram_bytes {
            return Err(Refusal::OutsideRam);
        }
        let entry = mem.read_u64(entry_gpa)?;
        if entry & PTE_PRESENT == 0 {
            return Ok(None);
        }
        writable &= entry & PTE_WRITE != 0;
        user &= entry & PTE_USER != 0;
        no_exec |= entry & PTE_NO_EXEC != 0;
        // A huge page: 1 GiB at the PDPT level, 2 MiB at the PD level; else the 4 KiB page.
        let huge = (shift == 30 || shift == 21) && entry & PTE_HUGE != 0;
        if huge || shift == 12 {
            let page_mask = (1u64 << shift) - 1;
            let gpa = (entry & PTE_ADDR_MASK & !page_mask) | (va & page_mask);
            return Ok(Some(Leaf {
                gpa,
                entry_gpa,
                entry,
                writable,
                user,
                no_exec,
            }));
        }
        table = entry & PTE_ADDR_MASK;
    }
    unreachable!("the walk ends at the page-table level")
}

/// The guest-physical address that `va` translates to under the tables at `cr3`, if any.
pub fn translate(
    mem: &impl GuestPhysRead,
    ram_bytes: u64,
    cr3: u64,
    va: u64,
) -> Result<Option<u64>, Refusal> {
    Ok(walk(mem, ram_bytes, cr3, va)?.map(|leaf| leaf.gpa))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Guest memory for tests: a byte vector standing for guest-physical 0 upwards.
    pub struct FakeRam(pub std::vec::Vec<u8>);

    impl FakeRam {
        pub fn new(bytes: usize) -> FakeRam {
            FakeRam(std::vec![0; bytes])
        }
        pub fn put(&mut self, gpa: u64, value: u64) {
            let at = gpa as usize;
            self.0[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }
    }

    impl GuestPhysRead for FakeRam {
        fn read_u64(&self, gpa: u64) -> Result<u64, Refusal> {
            let at = usize::try_from(gpa).map_err(|_| Refusal::Fault)?;
            let bytes = self.0.get(at..at + 8).ok_or(Refusal::Fault)?;
            Ok(u64::from_le_bytes(bytes.try_into().unwrap()))
        }
    }

    const RAM: u64 = 4 << 20;

    /// PML4 at 0x1000, PDPT at 0x2000, PD at 0x3000, PT at 0x4000:
    /// va 0 maps 2 MiB at 0 (huge), va 0x20_0000 goes through the PT, and the top 1 GiB of
    /// the address space maps 0 (a 1 GiB page).
    fn sample() -> FakeRam {
        let mut ram = FakeRam::new(RAM as usize);
        ram.put(0x1000, 0x2000 | 3);
        ram.put(0x1000 + 511 * 8, 0x2000 | 3);
        ram.put(0x2000, 0x3000 | 3);
        ram.put(0x2000 + 511 * 8, PTE_HUGE | 3);
        ram.put(0x3000, PTE_HUGE | 3);
        ram.put(0x3000 + 8, 0x4000 | 3);
        ram.put(0x4000 + 5 * 8, 0x30_0000 | 3);
        ram
    }

    #[test]
    fn translates_through_each_page_size() {
        let ram = sample();
        assert_eq!(translate(&ram, RAM, 0x1000, 0x1234), Ok(Some(0x1234)));
        assert_eq!(translate(&ram, RAM, 0x1000, 0x20_5abc), Ok(Some(0x30_0abc)));
        assert_eq!(
            translate(&ram, RAM, 0x1000, 0xffff_ffff_c000_0042),
            Ok(Some(0x42))
        );
    }

    #[test]
    fn unmapped_and_noncanonical_addresses_are_none() {
        let ram = sample();
        assert_eq!(
            translate(&ram, RAM, 0x1000, 0x20_6000),
            Ok(None),
            "PT entry absent"
        );
        assert_eq!(
            translate(&ram, RAM, 0x1000, 0x4000_0000),
            Ok(None),
            "PDPT entry absent"
        );
        assert_eq!(
            translate(&ram, RAM, 0x1000, 0x0000_8000_0000_0000),
            Ok(None)
        );
    }

    #[test]
    fn permissions_accumulate_down_the_walk() {
        let mut ram = sample();
        // The PT maps its page user-accessible and no-execute, but the PD above says
        // supervisor: the page is supervisor-only.
        ram.put(0x4000 + 5 * 8, 0x30_0000 | 7 | PTE_NO_EXEC);
        let leaf = walk(&ram, RAM, 0x1000, 0x20_5abc).unwrap().unwrap();
        assert_eq!(leaf.entry_gpa, 0x4000 + 5 * 8);
        assert!(leaf.writable && !leaf.user && leaf.no_exec);
        // Read-only at the PML4 level makes everything below read-only.
        ram.put(0x1000, 0x2000 | 1);
        assert!(!walk(&ram, RAM, 0x1000, 0x1234).unwrap().unwrap().writable);
    }

    #[test]
    fn a_table_pointer_outside_ram_is_refused() {
        let mut ram = sample();
        ram.put(0x3000 + 16, 0x1_0000_0000 | 3);
        assert_eq!(
            translate(&ram, RAM, 0x1000, 0x40_0000),
            Err(Refusal::OutsideRam)
        );
        assert_eq!(
            translate(&ram, RAM, RAM, 0),
            Err(Refusal::OutsideRam),
            "cr3 past RAM"
        );
    }
}
