//! The guest's first page tables, built by the launcher before the guest runs.
//!
//! A 64-bit guest starts in long mode with paging on, so something must have built page tables
//! before its first instruction: on a PC that is the bootloader's or the kernel's own 32-bit
//! stub; here it is the launcher, as Xen's domain builder does for a PV guest. This file only
//! writes tables into an area of guest memory the caller chose (boot_params.rs places it at the
//! top of RAM and marks it reserved in the e820 map); lg.ko then shadows them from INITIALIZE's
//! `cr3`.
//!
//! Two views of RAM are mapped, both read-write, supervisor-only:
//! - the identity map (`va = pa`), which early boot code that runs before it knows its own
//!   virtual layout relies on;
//! - the kernel's own view at `va = pa + kernel_virt_offset`, where a kernel linked high (Linux
//!   links at `0xffffffff80000000 + pa`) expects its code and data. Its ELF program headers give
//!   the offset (`p_vaddr - p_paddr`).
//!
//! Whole 2 MiB chunks use 2 MiB pages (one PD entry each, no page table at all), so even 64 GiB
//! takes only a few dozen tables; a RAM size that is not a multiple of 2 MiB gets one 4 KiB page
//! table for the rest. The tables are built in launcher memory first and then copied into guest
//! memory in one go, which lets [`page_table_bytes`] size the area with the very same code.

use anyhow::{bail, ensure, Context};
use lguest_abi::paging::{ENTRIES_PER_TABLE, PTE_ADDR_MASK, PTE_HUGE, PTE_PRESENT, PTE_WRITE};
use lguest_abi::PAGE_SIZE;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

// Every entry is PRESENT|WRITE, and the leaves HUGE where they map 2 MiB. Without USER (bit 2)
// the pages are for the guest kernel only; NX and GLOBAL are left clear, so everything is
// executable and nothing survives a CR3 load: the guest kernel replaces these tables with its
// own soon enough.
const HUGE_PAGE: u64 = 2 << 20;
/// 4-level paging translates 48 bits; the lower half of the address space ends here and the
/// upper half starts at its sign-extended mirror.
const LOWER_HALF_END: u64 = 1 << 47;
const UPPER_HALF_START: u64 = 0xffff_8000_0000_0000;

/// Where the tables ended up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageTables {
    /// Guest-physical address of the top-level table (PML4): INITIALIZE's `cr3`.
    pub cr3: u64,
    /// The first guest-physical address after the last table.
    pub end: u64,
}

/// Writes page tables mapping `ram_bytes` of RAM (identity, and at `kernel_virt_offset` if it is
/// not zero) into guest memory from `area_start`, which must be page-aligned and have room for
/// [`page_table_bytes`] bytes.
pub fn write_initial_page_tables(
    mem: &GuestMemoryMmap,
    area_start: u64,
    ram_bytes: u64,
    kernel_virt_offset: u64,
) -> anyhow::Result<PageTables> {
    ensure!(
        area_start.is_multiple_of(PAGE_SIZE),
        "page-table area at {area_start:#x} is not page-aligned"
    );
    let maps = mappings(ram_bytes, kernel_virt_offset)?;
    let tables = Tables::build(area_start, &maps);
    let end = area_start + tables.bytes();
    for (i, table) in tables.tables.iter().enumerate() {
        let bytes: Vec<u8> = table.iter().flat_map(|entry| entry.to_le_bytes()).collect();
        let gpa = area_start + i as u64 * PAGE_SIZE;
        mem.write_slice(&bytes, GuestAddress(gpa))
            .with_context(|| {
                format!("page tables at {area_start:#x}..{end:#x} do not fit in guest RAM")
            })?;
    }
    Ok(PageTables {
        cr3: area_start,
        end,
    })
}

/// How many bytes of tables [`write_initial_page_tables`] will write for these arguments.
///
/// For arguments it refuses (a misaligned or overlapping offset), this is the size of the
/// identity map alone; the error comes from [`write_initial_page_tables`].
pub fn page_table_bytes(ram_bytes: u64, kernel_virt_offset: u64) -> u64 {
    let maps = mappings(ram_bytes, kernel_virt_offset)
        .unwrap_or_else(|_| vec![(0, ram_bytes.min(LOWER_HALF_END) & !(PAGE_SIZE - 1))]);
    Tables::build(0, &maps).bytes()
}

/// The virtual ranges to map, as `(first va, length)`, each onto physical `0..length`.
fn mappings(ram_bytes: u64, offset: u64) -> anyhow::Result<Vec<(u64, u64)>> {
    ensure!(
        ram_bytes != 0 && ram_bytes.is_multiple_of(PAGE_SIZE),
        "guest RAM of {ram_bytes} bytes is not a non-zero multiple of {PAGE_SIZE}"
    );
    ensure!(
        ram_bytes <= LOWER_HALF_END,
        "guest RAM of {ram_bytes} bytes cannot be identity-mapped with 4-level paging"
    );
    let mut maps = vec![(0, ram_bytes)];
    if offset == 0 {
        return Ok(maps);
    }
    if !offset.is_multiple_of(HUGE_PAGE) {
        bail!("kernel virtual offset {offset:#x} is not 2 MiB aligned");
    }
    let len = if offset < LOWER_HALF_END {
        // Two views in the lower half must not overlap, or one address would mean two pages.
        if offset < ram_bytes {
            bail!("kernel virtual offset {offset:#x} overlaps the identity map of guest RAM");
        }
        if ram_bytes > LOWER_HALF_END - offset {
            bail!("kernel virtual offset {offset:#x} puts guest RAM past the lower half");
        }
        ram_bytes
    } else if offset >= UPPER_HALF_START {
        // A kernel linked at the top (Linux: -2 GiB) sees only what fits below 2^64; RAM above
        // that is reached through the identity map or the kernel's own direct map later.
        ram_bytes.min(offset.wrapping_neg())
    } else {
        bail!("kernel virtual offset {offset:#x} is not a canonical address");
    };
    maps.push((offset, len));
    Ok(maps)
}

/// Page tables under construction, in launcher memory. Table `i` will live at guest-physical
/// `area_start + i * PAGE_SIZE`; table 0 is the PML4.
struct Tables {
    area_start: u64,
    tables: Vec<[u64; ENTRIES_PER_TABLE]>,
}

impl Tables {
    fn build(area_start: u64, maps: &[(u64, u64)]) -> Tables {
        let mut t = Tables {
            area_start,
            tables: vec![[0; ENTRIES_PER_TABLE]],
        };
        for &(va, len) in maps {
            let whole = len & !(HUGE_PAGE - 1);
            for off in (0..whole).step_by(HUGE_PAGE as usize) {
                let pd = t.table_for(va + off, 2);
                t.tables[pd][index(va + off, 2)] = off | PTE_PRESENT | PTE_WRITE | PTE_HUGE;
            }
            for off in (whole..len).step_by(PAGE_SIZE as usize) {
                let pt = t.table_for(va + off, 1);
                t.tables[pt][index(va + off, 1)] = off | PTE_PRESENT | PTE_WRITE;
            }
        }
        t
    }

    /// The level-`level` table on the way to `va` (2 = page directory, 1 = page table),
    /// creating the tables above it as needed.
    fn table_for(&mut self, va: u64, level: u32) -> usize {
        let mut table = 0;
        for upper in (level + 1..=4).rev() {
            table = self.child(table, index(va, upper));
        }
        table
    }

    /// The table that entry `index` of `table` points to, allocating it if the entry is empty.
    fn child(&mut self, table: usize, index: usize) -> usize {
        let entry = self.tables[table][index];
        if entry & PTE_PRESENT != 0 {
            return ((entry & PTE_ADDR_MASK) - self.area_start) as usize / PAGE_SIZE as usize;
        }
        let new = self.tables.len();
        self.tables.push([0; ENTRIES_PER_TABLE]);
        self.tables[table][index] =
            (self.area_start + new as u64 * PAGE_SIZE) | PTE_PRESENT | PTE_WRITE;
        new
    }

    fn bytes(&self) -> u64 {
        self.tables.len() as u64 * PAGE_SIZE
    }
}

/// The index into a level-`level` table for `va` (4 = PML4, 1 = page table).
fn index(va: u64, level: u32) -> usize {
    ((va >> (12 + 9 * (level - 1))) & 511) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestRam;

    const LINUX_OFFSET: u64 = 0xffff_ffff_8000_0000;
    const MIB: u64 = 1 << 20;

    /// Translates `va` the way the MMU would, from the tables in guest memory; also checks that
    /// every entry on the way is supervisor-only and writable.
    fn translate(mem: &GuestMemoryMmap, cr3: u64, va: u64) -> Option<u64> {
        let mut table = cr3;
        for level in (1..=4).rev() {
            let entry: u64 = mem
                .read_obj(GuestAddress(table + index(va, level) as u64 * 8))
                .unwrap();
            if entry & PTE_PRESENT == 0 {
                return None;
            }
            assert_eq!(
                entry & 0b110,
                PTE_WRITE,
                "entry {entry:#x} must be RW, not USER"
            );
            if level == 2 && entry & PTE_HUGE != 0 {
                return Some((entry & PTE_ADDR_MASK) + (va & (HUGE_PAGE - 1)));
            }
            if level == 1 {
                return Some((entry & PTE_ADDR_MASK) + (va & (PAGE_SIZE - 1)));
            }
            table = entry & PTE_ADDR_MASK;
        }
        unreachable!()
    }

    /// Builds tables at the top of a small guest for `ram_bytes` of (pretend) RAM.
    fn build(ram_bytes: u64, offset: u64) -> (GuestRam, PageTables) {
        let ram = GuestRam::new(4 * MIB, 0).unwrap();
        let area = 4 * MIB - 64 * PAGE_SIZE;
        let pt = write_initial_page_tables(ram.memory(), area, ram_bytes, offset).unwrap();
        assert_eq!(pt.cr3, area);
        assert_eq!(pt.end - pt.cr3, page_table_bytes(ram_bytes, offset));
        (ram, pt)
    }

    #[test]
    fn identity_map_covers_exactly_ram() {
        let (ram, pt) = build(64 * MIB, 0);
        let mem = ram.memory();
        for va in [0, 0x1234, 0x20_0000, 64 * MIB - 1] {
            assert_eq!(translate(mem, pt.cr3, va), Some(va));
        }
        assert_eq!(translate(mem, pt.cr3, 64 * MIB), None);
        assert_eq!(translate(mem, pt.cr3, LINUX_OFFSET), None);
        // PML4, one PDPT, one PD of 2 MiB pages.
        assert_eq!(pt.end - pt.cr3, 3 * PAGE_SIZE);
    }

    #[test]
    fn kernel_view_maps_ram_at_the_offset() {
        let (ram, pt) = build(64 * MIB, LINUX_OFFSET);
        let mem = ram.memory();
        assert_eq!(translate(mem, pt.cr3, LINUX_OFFSET), Some(0));
        assert_eq!(
            translate(mem, pt.cr3, LINUX_OFFSET + 0x100_5123),
            Some(0x100_5123)
        );
        assert_eq!(translate(mem, pt.cr3, LINUX_OFFSET + 64 * MIB), None);
        assert_eq!(translate(mem, pt.cr3, 0x100_5123), Some(0x100_5123));
        assert_eq!(pt.end - pt.cr3, 5 * PAGE_SIZE);
    }

    #[test]
    fn a_remainder_gets_4k_pages() {
        let ram_bytes = 6 * MIB + 5 * PAGE_SIZE;
        let (ram, pt) = build(ram_bytes, LINUX_OFFSET);
        let mem = ram.memory();
        for base in [0, LINUX_OFFSET] {
            assert_eq!(
                translate(mem, pt.cr3, base + 6 * MIB - 1),
                Some(6 * MIB - 1)
            );
            assert_eq!(translate(mem, pt.cr3, base + 6 * MIB), Some(6 * MIB));
            assert_eq!(
                translate(mem, pt.cr3, base + ram_bytes - 1),
                Some(ram_bytes - 1)
            );
            assert_eq!(translate(mem, pt.cr3, base + ram_bytes), None);
        }
        // Per view: PDPT, PD, one page table; plus the shared PML4.
        assert_eq!(pt.end - pt.cr3, 7 * PAGE_SIZE);
    }

    #[test]
    fn the_kernel_view_stops_at_the_top_of_the_address_space() {
        let (ram, pt) = build(4 << 30, LINUX_OFFSET);
        let mem = ram.memory();
        assert_eq!(translate(mem, pt.cr3, u64::MAX), Some((2 << 30) - 1));
        assert_eq!(translate(mem, pt.cr3, (4 << 30) - 1), Some((4 << 30) - 1));
    }

    #[test]
    fn lower_half_views_share_tables() {
        let (ram, pt) = build(64 * MIB, 1 << 30);
        let mem = ram.memory();
        assert_eq!(translate(mem, pt.cr3, (1 << 30) + 0x1000), Some(0x1000));
        assert_eq!(translate(mem, pt.cr3, 0x1000), Some(0x1000));
        // PML4 and PDPT shared, one PD each.
        assert_eq!(pt.end - pt.cr3, 4 * PAGE_SIZE);
    }

    #[test]
    fn bad_offsets_and_areas_are_refused() {
        let ram = GuestRam::new(4 * MIB, 0).unwrap();
        let mem = ram.memory();
        let err = |ram_bytes, area, offset| {
            write_initial_page_tables(mem, area, ram_bytes, offset)
                .unwrap_err()
                .to_string()
        };
        assert!(err(64 * MIB, 0, LINUX_OFFSET + PAGE_SIZE).contains("not 2 MiB aligned"));
        assert!(err(64 * MIB, 0, 2 * MIB).contains("overlaps the identity map"));
        assert!(err(64 * MIB, 0, LOWER_HALF_END).contains("not a canonical address"));
        assert!(err(64 * MIB, 0, LOWER_HALF_END - 32 * MIB).contains("past the lower half"));
        assert!(err(64 * MIB, 0x800, 0).contains("not page-aligned"));
        assert!(err(64 * MIB, 4 * MIB - PAGE_SIZE, 0).contains("do not fit in guest RAM"));
        assert!(err(0, 0, 0).contains("not a non-zero multiple"));
        // The size of a refused layout is that of the identity map alone.
        assert_eq!(
            page_table_bytes(64 * MIB, 2 * MIB),
            page_table_bytes(64 * MIB, 0)
        );
    }
}
