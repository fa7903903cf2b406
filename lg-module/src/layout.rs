//! Where everything in the Switcher window lies.
//!
//! The Switcher is a handful of pages mapped at the same virtual address, the window, in the
//! host and in every guest: the code that switches address spaces must still be there after the
//! switch. The window is PML4 slot 256 (`abi::data::SWITCHER_WINDOW_START`), and within it:
//!
//! ```text
//!   page 0-1   text: the world switch and the 256 trap stubs          host RX, guest RX
//!   page 2...  one block of 16 pages per host CPU:
//!     +0       guard in the host; a guest's own lguest_data page in  host --, guest RW
//!              its view, for the Switcher's fast paths
//!     +1..+8   IST 1-4, two pages each: the host's own handlers' stacks  host RW, guest --
//!     +9..+11  IST 5-7: the Switcher's double fault, NMI, machine check  host RW, guest RW
//!     +12      regs page: the guest's registers; TSS.RSP0 is its top    host RW, guest RW
//!     +13      state page: this CPU's guest GDT and TSS, and what the   host RW, guest RO
//!              fast paths may do on this trip
//!     +14      host page: what the host needs back; never in a guest    host RW, guest --
//!     +15      IDT: 256 gates into the stubs, one of them maybe the     host RW, guest RO
//!              running guest's direct trap
//! ```
//!
//! Why an IDT per CPU: every gate leads into the Switcher except, while a guest that asked for
//! it runs, the system-call vector's, which leads straight to that guest's handler at ring 1 (a
//! direct trap: docs/traps.md). Two guests on two CPUs need two different gates there.
//!
//! Why two sets of IST stacks: for a few instructions of each switch the guest's TSS is loaded
//! while the host's IDT is (the switch changes one before the other), and a host NMI handler
//! that runs then takes its stack from the guest's TSS, by the host's IST numbers (1 double
//! fault, 2 NMI, 3 debug, 4 machine check). Those instants are always in the host's address
//! space, so IST 1-4 point at host-only pages: whatever the host's handlers leave on a stack
//! never becomes readable by a guest; and they are two pages each, the size Linux gives its own
//! exception stacks (EXCEPTION_STKSZ). The Switcher's own gates use IST 5-7, which must be
//! mapped in the guest (they run in both address spaces) and hold a frame or two.
//!
//! A guest's page tables map the text, the IDT and only the block of the CPU it runs on, so
//! one guest can never see another CPU's pages. The host page holds the host's stack pointer
//! and descriptor tables; it is never mapped for a guest (docs/design.md, D3: lguest kept them in a
//! page the guest could read, a KASLR leak).
//!
//! `switcher/switcher.S` takes these numbers from `switcher/layout.h`, a header of `#define`s
//! generated from this file (`layout_header.rs`), so the two cannot disagree.

/// Bytes in a page.
pub const PAGE: u64 = 4096;
/// Pages of Switcher text.
pub const TEXT_PAGES: u64 = 2;
/// Page index of CPU 0's block.
pub const FIRST_BLOCK_PAGE: u64 = 2;
/// Pages per CPU block.
pub const BLOCK_PAGES: u64 = 16;
/// The most host CPUs lg.ko supports: the window's page table (one 4 KiB table, 512 entries)
/// must hold the text and every block.
pub const MAX_CPUS: u64 = 31;
/// Pages the window's page table maps, blocks of every supported CPU included.
pub const WINDOW_PAGES: u64 = FIRST_BLOCK_PAGE + MAX_CPUS * BLOCK_PAGES;

/// Offsets of the pages within a block.
pub const BLOCK_DATA: u64 = 0;
pub const BLOCK_REGS: u64 = 12 * PAGE;
pub const BLOCK_STATE: u64 = 13 * PAGE;
pub const BLOCK_HOST: u64 = 14 * PAGE;
pub const BLOCK_IDT: u64 = 15 * PAGE;
/// IST stacks in the TSS (the architecture's maximum).
pub const IST_STACKS: u8 = 7;
/// The IST numbers the Switcher's own gates use.
pub const IST_DOUBLE_FAULT: u8 = 5;
pub const IST_NMI: u8 = 6;
pub const IST_MACHINE_CHECK: u8 = 7;
/// The first IST number of the Switcher's own stacks: IST 1-4 are the host's.
pub const FIRST_SWITCHER_IST: u8 = IST_DOUBLE_FAULT;

/// The block pages of IST `n`'s stack (1-based, as in the TSS). Stacks grow down from the end
/// of their last page.
pub const fn ist_pages(n: u8) -> core::ops::Range<u64> {
    if n < FIRST_SWITCHER_IST {
        let first = 2 * n as u64 - 1;
        first..first + 2
    } else {
        let first = n as u64 + 4;
        first..first + 1
    }
}

// The regs page: a few words at the bottom, the trap frame at the top.
/// The guest's FS base, saved by the exit path.
pub const REGS_FS_BASE: u64 = 0;
/// The guest's GS base, saved by the exit path.
pub const REGS_GS_BASE: u64 = 8;
/// CR2 at the exit (the faulting address of a page fault).
pub const REGS_CR2: u64 = 16;
/// Non-zero if the trap came from the Switcher itself (CPL 0): the vector plus one. Written by
/// every exit, so what the guest writes into its regs page never reaches the host here.
pub const REGS_SWITCHER_FAULT: u64 = 24;
/// The guest's DS, ES, FS and GS selectors at the exit, a 16-bit word each in that order.
pub const REGS_SELECTORS: u64 = 32;

/// Bits of MSR_TSC_AUX where the Switcher notes an NMI or machine check that interrupted the
/// Switcher itself: an MSR, because the guest can write any memory the Switcher can write while
/// the guest's page tables are loaded, and the host must not re-raise either on its say-so.
/// Linux keeps its CPU and node numbers in the low bits, which stay untouched.
pub const AUX_NMI_PENDING: u64 = 1 << 31;
pub const AUX_MC_PENDING: u64 = 1 << 30;

/// Words in the trap frame: 15 general registers pushed by the Switcher, the vector and error
/// code pushed by the stub, and the 5 words the CPU pushes (RIP, CS, RFLAGS, RSP, SS).
pub const FRAME_WORDS: u64 = 22;
/// Where the frame starts in the regs page: it ends exactly at the page's end, where TSS.RSP0
/// points, so a trap from ring 1 or 3 pushes its frame straight into place.
pub const REGS_FRAME: u64 = PAGE - FRAME_WORDS * 8;

/// The frame's words, lowest address first (the order the Switcher's pushes leave them in).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameWord {
    R15 = 0,
    R14,
    R13,
    R12,
    R11,
    R10,
    R9,
    R8,
    Rbp,
    Rdi,
    Rsi,
    Rdx,
    Rcx,
    Rbx,
    Rax,
    Vector,
    ErrorCode,
    Rip,
    Cs,
    Rflags,
    Rsp,
    Ss,
}

// The state page.
/// The guest GDT, at the start of the state page.
pub const STATE_GDT: u64 = 0;
/// The guest TSS (104 bytes).
pub const STATE_TSS: u64 = 256;
/// The pseudo-descriptor `lgdt` loads (limit, base).
pub const STATE_GDTR: u64 = 512;
/// The pseudo-descriptor `lidt` loads.
pub const STATE_IDTR: u64 = 528;
/// The fast path for a user `syscall` on this trip (src/fast_syscall.rs, `Armed`): the vector
/// (0: disarmed), the handler, the frame's address, and whether the virtual IF goes off.
pub const STATE_FAST_VECTOR: u64 = 1024;
pub const STATE_FAST_HANDLER: u64 = 1032;
pub const STATE_FAST_FRAME: u64 = 1040;
pub const STATE_FAST_CLEARS_IF: u64 = 1048;

// The guest's lguest_data page, as the Switcher reads it at BLOCK_DATA.
/// `syscall_vec` and `irq_enabled`.
pub const DATA_SYSCALL_VEC: u64 = crate::abi::data::offset::SYSCALL_VEC;
pub const DATA_IRQ_ENABLED: u64 = crate::abi::data::offset::IRQ_ENABLED;

// The host page.
/// The host's stack pointer while the guest runs.
pub const HOST_RSP: u64 = 0;
/// `sgdt` of the host: its (read-only) GDT.
pub const HOST_GDTR: u64 = 16;
/// `sidt` of the host.
pub const HOST_IDTR: u64 = 32;
/// The host GDT's writable alias, for clearing its TSS busy bit before `ltr`.
pub const HOST_GDTR_RW: u64 = 48;
/// Host FS base, GS base and KERNEL_GS_BASE, restored on exit.
pub const HOST_FS_BASE: u64 = 64;
pub const HOST_GS_BASE: u64 = 72;
pub const HOST_KERNEL_GS_BASE: u64 = 80;
/// Host DS and ES selectors.
pub const HOST_DS: u64 = 88;
pub const HOST_ES: u64 = 96;
/// Host CR4, restored on exit (the entry path clears PGE: see docs/world-switch.md).
pub const HOST_CR4: u64 = 104;
/// What to load for the guest: FS base, GS base, CR3 (the shadow root) and CR4.
pub const HOST_GUEST_FS_BASE: u64 = 112;
pub const HOST_GUEST_GS_BASE: u64 = 120;
pub const HOST_GUEST_CR3: u64 = 128;
pub const HOST_GUEST_CR4: u64 = 136;
/// The guest's DS, ES, FS and GS selectors to load, a 16-bit word each in that order, every one
/// checked to load without a fault (`descriptors::loadable_selector`).
pub const HOST_GUEST_SELECTORS: u64 = 144;
/// GDT entry 15, the CPU-number segment, twice: the host's (this CPU's) and the guest's. The
/// Switcher puts the guest's in once no host handler can run, and the host's back before one can.
pub const HOST_CPUNODE: u64 = 152;
pub const HOST_GUEST_CPUNODE: u64 = 160;
/// Where in the GDT that entry is.
pub const GDT_CPUNODE: u64 = crate::abi::boot::CPUNODE_GDT_ENTRY as u64 * 8;

/// The offset of CPU `cpu`'s block from the window's start.
pub const fn block_offset(cpu: u64) -> u64 {
    (FIRST_BLOCK_PAGE + cpu * BLOCK_PAGES) * PAGE
}

// The layout's promises, checked when lg.ko (or this crate) is compiled: the window fits one
// page table, the regs page's words stay below the frame, which ends at the page's end
// 16-byte aligned (TSS.RSP0), and the state page's tables do not overlap.
const _: () = {
    assert!(WINDOW_PAGES <= 512);
    assert!(REGS_SELECTORS + 8 <= REGS_FRAME);
    assert!(REGS_FRAME + FRAME_WORDS * 8 == PAGE);
    assert!(FrameWord::Ss as u64 == FRAME_WORDS - 1);
    assert!(REGS_FRAME % 16 == 0);
    assert!(STATE_GDT + crate::abi::boot::GUEST_GDT_ENTRIES as u64 * 8 <= STATE_TSS);
    assert!(STATE_TSS + 104 <= STATE_GDTR);
    assert!(STATE_IDTR + 16 <= STATE_FAST_VECTOR);
    assert!(STATE_FAST_CLEARS_IF + 8 <= PAGE);
    assert!(HOST_GUEST_CPUNODE + 8 <= PAGE);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_block_ends_the_window() {
        assert_eq!(block_offset(MAX_CPUS), WINDOW_PAGES * PAGE);
    }

    #[test]
    fn ist_stacks_fill_the_pages_between_the_guard_and_the_regs_page() {
        let mut next = 1;
        for n in 1..=IST_STACKS {
            let pages = ist_pages(n);
            assert_eq!(pages.start, next, "IST {n}");
            assert_eq!(
                pages.end - pages.start,
                if n < FIRST_SWITCHER_IST { 2 } else { 1 }
            );
            next = pages.end;
        }
        assert_eq!(next * PAGE, BLOCK_REGS);
    }
}
