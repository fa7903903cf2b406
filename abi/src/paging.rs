//! The x86-64 page-table entry format, as the launcher writes it and the host walks it.
//!
//! This is the hardware's ABI rather than ours, but two parties of lguest-rs speak it: the
//! launcher builds the guest's first page tables, and lg.ko walks the guest's page tables (to
//! check the entry point now, to shadow them later). One definition keeps them in step.

/// Present: the entry maps a page or points to a table.
pub const PTE_PRESENT: u64 = 1 << 0;
/// Writable. Without it the page (or everything below the table) is read-only.
pub const PTE_WRITE: u64 = 1 << 1;
/// User: ring 3 may use the page (at every level of the walk).
pub const PTE_USER: u64 = 1 << 2;
/// Accessed: set by the MMU (or, under lguest, by the host) when the entry is used.
pub const PTE_ACCESSED: u64 = 1 << 5;
/// Dirty: set when the page is written.
pub const PTE_DIRTY: u64 = 1 << 6;
/// Page size: in a PDPT entry a 1 GiB page, in a PD entry a 2 MiB page, instead of a table.
pub const PTE_HUGE: u64 = 1 << 7;
/// Global: the translation survives a CR3 load (with CR4.PGE), so a kernel's mappings, the same
/// in every address space, need not be refilled after each switch. Under lguest the host keeps
/// its shadows of global kernel entries across page-table switches in the same way.
pub const PTE_GLOBAL: u64 = 1 << 8;
/// Bits 12..51 of an entry: the physical address of the page or of the next table.
pub const PTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// No-execute (needs EFER.NXE, which the host always has on).
pub const PTE_NO_EXEC: u64 = 1 << 63;
/// Entries in one table of any level.
pub const ENTRIES_PER_TABLE: usize = 512;
