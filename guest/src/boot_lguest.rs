//! 3. The lguest entry: the note the launcher looks for, and the first instruction at ring 1.
//!
//! The launcher loads the same segments QEMU does, at the same addresses, then writes
//! boot_params (Linux's "zero page", with an e820 memory map) and page tables that map all of
//! guest RAM at virtual == physical. lg.ko starts the kernel at the note's address: 64-bit long
//! mode, CPL 1, paging on, RSI = boot_params' guest-physical address, no stack (RSP 0), and the
//! virtual interrupt flag off. Everything the native entry had to do to get here, the launcher
//! and the host did; what remains is to choose the lguest backend (its LGUEST_INIT must be the
//! first hypercall) and read the memory map and the command line (the launcher's arguments after
//! the kernel's name) from boot_params. The launcher's page tables serve until
//! `kernel_main` builds the kernel's own (paging.rs), as the boot tables do natively.

use core::arch::naked_asm;

use lguest_abi::boot::EntryNote;
use paravirt_ops::Backend;

use crate::frames::{self, MemoryMap};
use crate::{command_line_at, STACK_SIZE};

/// The lguest entry note (lguest-abi's `EntryNote`): the launcher refuses an image without it.
/// linker.ld keeps the section and gives it a PT_NOTE program header, where the launcher looks.
#[used]
#[link_section = ".note.lguest"]
static NOTE: EntryNote = EntryNote::new(lguest_start);

/// The first instruction under lguest: a stack, then Rust, with boot_params as the argument.
///
/// # Safety
///
/// Only the host may call this, once, as the guest's entry point.
#[unsafe(naked)]
unsafe extern "C" fn lguest_start() -> ! {
    naked_asm!(
        "lea rsp, [rip + {stack} + {size}]",
        "xor ebp, ebp",
        "mov rdi, rsi",
        "call {main}",
        "ud2",
        stack = sym crate::BOOT_STACK,
        size = const STACK_SIZE,
        main = sym lguest_main,
    )
}

extern "C" fn lguest_main(boot_params: u64) -> ! {
    // SAFETY: the first thing the lguest entry does, on the guest's only CPU, with the virtual
    // interrupt flag off (it starts off); and we were entered through the lguest note, so lg.ko
    // is there to answer hypercalls.
    unsafe { paravirt_ops::init(Backend::Lguest) };
    let map = memory_map(boot_params);
    // SAFETY: the launcher wrote boot_params there, inside RAM, which is identity-mapped; the
    // command line it names is NUL-terminated, in low RAM too.
    let cmdline = unsafe {
        let low = ((boot_params + CMD_LINE_PTR) as *const u32).read_unaligned();
        let high = ((boot_params + EXT_CMD_LINE_PTR) as *const u32).read_unaligned();
        command_line_at(u64::from(high) << 32 | u64::from(low))
    };
    frames::init(&map);
    crate::kernel_main(&map, &cmdline)
}

/// Where boot_params keeps the command line's address: the low 32 bits in the setup header's
/// `cmd_line_ptr`, the high ones in `ext_cmd_line_ptr` (zero-page.rst again).
const CMD_LINE_PTR: u64 = 0x228;
const EXT_CMD_LINE_PTR: u64 = 0xc8;

/// Where boot_params keeps the number of e820 entries (u8) and the table (20-byte entries:
/// address, size, type), per Documentation/arch/x86/zero-page.rst.
const E820_ENTRIES: u64 = 0x1e8;
const E820_TABLE: u64 = 0x2d0;
const E820_ENTRY_BYTES: u64 = 20;
const E820_MAX: u8 = 128;
const E820_RAM: u32 = 1;

/// The RAM ranges of boot_params' e820 map. The launcher marks its page tables reserved, so
/// they are not among them.
fn memory_map(boot_params: u64) -> MemoryMap {
    // SAFETY: the launcher wrote boot_params there, inside RAM, which is identity-mapped.
    let count = unsafe { ((boot_params + E820_ENTRIES) as *const u8).read() }.min(E820_MAX);
    let mut map = MemoryMap::new();
    for i in 0..u64::from(count) {
        let entry = boot_params + E820_TABLE + i * E820_ENTRY_BYTES;
        // SAFETY: entry i of the table the launcher wrote; the entries are packed, so unaligned.
        let (addr, size, kind) = unsafe {
            (
                (entry as *const u64).read_unaligned(),
                ((entry + 8) as *const u64).read_unaligned(),
                ((entry + 16) as *const u32).read_unaligned(),
            )
        };
        if kind == E820_RAM {
            map.add(addr, size);
        }
    }
    map
}
