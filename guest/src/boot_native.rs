//! 2. The native entry: from QEMU's PVH boot to [`crate::kernel_main`].
//!
//! QEMU's `-kernel` boots an ELF file that carries a XEN_ELFNOTE_PHYS32_ENTRY note the way Xen
//! boots a PVH guest: it loads the segments at their physical addresses and jumps to the note's
//! address in 32-bit protected mode, flat segments, paging off, interrupts off, with EBX pointing
//! at an `hvm_start_info` block (Xen's public/arch-x86/hvm/start_info.h). From there:
//!
//! 1. `lgdt` the kernel's GDT (gdt.rs), whose 64-bit code segment the far jump will need;
//! 2. point CR3 at boot page tables that identity-map the first GiB with 2 MiB pages, built by
//!    the assembler so no code has to run to make them;
//! 3. CR4.PAE, EFER.LME, CR0.PG (and CR0.WP, so that read-only pages are read-only to the
//!    kernel too): the CPU is in long mode, still running the 32-bit segment. On the way, SSE
//!    for the user tasks: CR4.OSFXSR and OSXMMEXCPT (the kernel saves their XMM registers with
//!    `fxsave`, and SSE exceptions are #XM), CR0.MP and not EM (under lguest the host's CR0 and
//!    CR4 already say so);
//! 4. a far jump loads the 64-bit code segment; then data segments, the boot stack, and Rust,
//!    with start_info's address as the argument;
//! 5. in [`native_main`]: choose the native paravirt-ops backend, read the memory map and the
//!    command line (QEMU's `-append`), start the frame allocator, load the TSS, and run
//!    `kernel_main`, which builds the real page tables.

use core::arch::global_asm;

use paravirt_ops::Backend;

use crate::frames::{self, MemoryMap};
use crate::gdt::{self, KERNEL_CS, KERNEL_DS};
use crate::{command_line_at, STACK_SIZE};

global_asm!(
    r#"
    // The PVH note. QEMU reads the descriptor of an ELF64 note as 8 bytes, and pads the name by
    // the PT_NOTE's alignment (4), as the ELF spec lays notes out.
    .section .note.Xen, "a", @note
    .balign 4
    .long 4                         // name size: "Xen" and its NUL
    .long 8                         // descriptor size
    .long 18                        // XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .quad pvh_start

    .text
    .code32
    .global pvh_start
pvh_start:
    lgdt [gdt_pointer]              // the 32-bit lgdt reads the low 4 bytes of the base
    mov eax, cr4
    or eax, 1 << 5 | 1 << 9 | 1 << 10   // PAE: long mode's page tables; OSFXSR, OSXMMEXCPT
    mov cr4, eax
    mov eax, offset boot_pml4
    mov cr3, eax
    mov ecx, 0xc0000080             // EFER
    rdmsr
    or eax, 1 << 8                  // LME
    wrmsr
    mov eax, cr0
    and eax, ~(1 << 2)              // not EM: SSE instructions run, rather than fault
    or eax, 1 << 31 | 1 << 16 | 1 << 1  // PG: long mode is active from here; WP; MP
    mov cr0, eax
    ljmp {kernel_cs}, offset pvh_long_mode

    .code64
pvh_long_mode:
    // SS must name our data segment: an interrupt at CPL 0 pushes SS and iretq reloads it from
    // our GDT, where the firmware's selector would name something else.
    mov eax, {kernel_ds}
    mov ds, eax
    mov es, eax
    mov ss, eax
    xor eax, eax
    mov fs, eax
    mov gs, eax
    lea rsp, [rip + {stack} + {stack_size}]
    xor ebp, ebp                    // the end of any backtrace
    mov edi, ebx                    // start_info, zero-extended
    call {main}
    ud2

    .data
    .balign 8
gdt_pointer:
    .word {gdt_size} - 1
    .quad {gdt}

    // The boot page tables: entries are the next table's address | present | writable (0x3); a
    // page-directory entry with PS (0x80) maps 2 MiB. Supervisor only: ring 0's, as a kernel's
    // memory is. paging::init replaces them as soon as the frame allocator can give it frames.
    .balign 4096
boot_pml4:
    .quad boot_pdpt + 3
    .fill 511, 8, 0
boot_pdpt:
    .quad boot_pd + 3
    .fill 511, 8, 0
boot_pd:
    .set page, 0
    .rept 512
    .quad (page << 21) | 0x83
    .set page, page + 1
    .endr
    .text
    "#,
    kernel_cs = const KERNEL_CS,
    kernel_ds = const KERNEL_DS,
    stack = sym crate::BOOT_STACK,
    stack_size = const STACK_SIZE,
    main = sym native_main,
    gdt = sym gdt::GDT,
    gdt_size = const gdt::GDT_BYTES,
);

/// `hvm_start_info`'s magic number.
const START_INFO_MAGIC: u32 = 0x336e_c578;
/// The memory map type of usable RAM (the e820 numbering).
const MEMMAP_RAM: u32 = 1;

/// `struct hvm_start_info` (version 1, the first with a memory map).
#[repr(C)]
struct StartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

/// `struct hvm_memmap_table_entry`.
#[repr(C)]
struct MemmapEntry {
    addr: u64,
    size: u64,
    kind: u32,
    reserved: u32,
}

/// Step 5: the Rust half of the native boot.
extern "C" fn native_main(start_info: u64) -> ! {
    // SAFETY: the first thing the native entry does, on the only CPU, with interrupts off (PVH
    // enters with IF clear); and this is the machine's own kernel, so the native backend fits.
    unsafe { paravirt_ops::init(Backend::Native) };
    // SAFETY: QEMU put start_info at this address, below 1 GiB, which the boot page tables map.
    let info = unsafe { &*(start_info as *const StartInfo) };
    if info.magic != START_INFO_MAGIC || info.version < 1 {
        panic!(
            "PVH start_info at {start_info:#x}: magic {:#x}, version {}: no memory map",
            info.magic, info.version
        );
    }
    let map = memory_map(info);
    // SAFETY: start_info names QEMU's copy of `-append`, NUL-terminated, in low memory (or 0).
    let cmdline = unsafe { command_line_at(info.cmdline_paddr) };
    frames::init(&map);
    gdt::init();
    crate::kernel_main(&map, &cmdline)
}

/// The RAM ranges start_info's memory map lists.
fn memory_map(info: &StartInfo) -> MemoryMap {
    let entries = info.memmap_paddr as *const MemmapEntry;
    let mut map = MemoryMap::new();
    for i in 0..info.memmap_entries as usize {
        // SAFETY: start_info says `memmap_entries` entries are there, in mapped low memory.
        let entry = unsafe { &*entries.add(i) };
        if entry.kind == MEMMAP_RAM {
            map.add(entry.addr, entry.size);
        }
    }
    map
}
