//! From QEMU's PVH entry to Rust: the shortest road from 32-bit protected mode into long mode.
//!
//! QEMU's `-kernel` boots an ELF file that carries a XEN_ELFNOTE_PHYS32_ENTRY note the way Xen
//! PVH guests boot: it loads the segments at their physical addresses and enters the note's
//! address in 32-bit protected mode, flat segments, paging off, interrupts off, EBX pointing at a
//! start_info block the probe never needs. From there:
//!
//! 1. load our GDT (64-bit code for ring 0 and a code/data pair for ring 1);
//! 2. point CR3 at page tables that identity-map the first GiB with 2 MiB pages, built by the
//!    assembler, so no code has to run to make them;
//! 3. CR4.PAE, EFER.LME, CR0.PG: the CPU is in long mode, still running the 32-bit segment;
//! 4. a far jump loads the 64-bit code segment; then data segments, a stack, and Rust.
//!
//! A second root, `pml4_b`, maps the same GiB through the same lower tables: the floor handler
//! switches to it and back, as a world switch switches to the guest's tables and back.

use core::arch::global_asm;

/// GDT slot 1: ring-0 64-bit code.
pub const KERNEL_CS: u16 = 0x08;
/// GDT slot 2: ring-0 data, loaded into SS (and DS/ES, which long mode otherwise ignores).
pub const KERNEL_DS: u16 = 0x10;
/// GDT slot 3: ring-1 64-bit code, with RPL 1.
pub const RING1_CS: u16 = 0x18 | 1;
/// GDT slot 4: ring-1 data, the stack segment at CPL 1, with RPL 1.
pub const RING1_DS: u16 = 0x20 | 1;
/// GDT slots 5 and 6: the 64-bit TSS, filled in by `main::init_cpu` (the assembler cannot
/// split an address into the descriptor's pieces).
pub const TSS_SEL: u16 = 0x28;
/// Slot of the TSS descriptor in [`gdt`].
pub const TSS_SLOT: usize = 5;

extern "C" {
    /// The GDT below: seven 8-byte slots, the last two for the TSS.
    pub static mut gdt: [u64; 7];
}

global_asm!(
    r#"
    // The PVH note. QEMU reads the descriptor of an ELF64 note as 8 bytes, and pads the name by
    // the PT_NOTE's alignment, so the section stays 4-aligned as the ELF spec lays notes out.
    .section .note.Xen, "a", @note
    .balign 4
    .long 4                         // name size: "Xen" and its NUL
    .long 8                         // descriptor size
    .long 18                        // XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .quad pvh_start

    .section .text.pvh_start, "ax"
    .code32
    .global pvh_start
pvh_start:
    lgdt [gdt_ptr]                  // the 32-bit lgdt reads the low 4 bytes of the base
    mov eax, cr4
    or eax, 1 << 5                  // PAE: long mode's page tables
    mov cr4, eax
    mov eax, offset pml4
    mov cr3, eax
    mov ecx, 0xc0000080             // EFER
    rdmsr
    or eax, 1 << 8                  // LME
    wrmsr
    mov eax, cr0
    or eax, 1 << 31                 // PG: long mode is active from here
    mov cr0, eax
    ljmp {kernel_cs}, offset long_mode

    .code64
long_mode:
    // SS must name our data segment: an int at CPL 0 pushes SS, and iretq reloads it from our
    // GDT, where the firmware's selector would name something else.
    mov eax, {kernel_ds}
    mov ds, eax
    mov es, eax
    mov ss, eax
    lea rsp, [rip + {stack} + {stack_size}]
    call {main}
    ud2

    .section .data.boot, "aw"
    .balign 8
    .global gdt
gdt:
    .quad 0                         // null
    .quad 0x00af9a000000ffff        // 0x08 ring-0 code: P, DPL 0, execute/read, L
    .quad 0x00cf92000000ffff        // 0x10 ring-0 data: P, DPL 0, read/write
    .quad 0x00afba000000ffff        // 0x18 ring-1 code: P, DPL 1, execute/read, L
    .quad 0x00cfb2000000ffff        // 0x20 ring-1 data: P, DPL 1, read/write
    .quad 0, 0                      // 0x28 the TSS, filled in at run time
gdt_end:
gdt_ptr:
    .word gdt_end - gdt - 1
    .quad gdt

    // Page tables: entries are the next table's address | present | writable (0x3); a
    // page-directory entry with PS (0x80) maps 2 MiB. Every page is supervisor, so ring 1
    // reaches all of it, as a guest kernel reaches its own memory.
    .balign 4096
    .global pml4, pml4_b
pml4:
    .quad pdpt + 3
    .fill 511, 8, 0
pml4_b:                             // the second root: same mappings, different CR3 value
    .quad pdpt + 3
    .fill 511, 8, 0
pdpt:
    .quad pd + 3
    .fill 511, 8, 0
pd:
    .set page, 0
    .rept 512
    .quad (page << 21) | 0x83
    .set page, page + 1
    .endr
    "#,
    kernel_cs = const KERNEL_CS,
    kernel_ds = const KERNEL_DS,
    stack = sym crate::BOOT_STACK,
    stack_size = const crate::STACK_SIZE,
    main = sym crate::probe_main,
);
