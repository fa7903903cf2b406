/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The Switcher's numbers, generated from lg-module/src/layout.rs and the constants it names by
 * lg-module/src/layout_header.rs. Do not edit: after changing any of them, run
 *   cargo run -p lg-module --bin switcher-layout
 * lg.ko does not build while this file is out of date.
 */
#ifndef LG_SWITCHER_LAYOUT_H
#define LG_SWITCHER_LAYOUT_H

/* A CPU's block of pages in the window (layout.rs) */
#define PAGE                    4096
#define BLOCK_DATA              0x0
#define BLOCK_REGS              0xc000
#define BLOCK_STATE             0xd000
#define BLOCK_HOST              0xe000

/* The regs page: words at its bottom, the trap frame at its top */
#define REGS_FS_BASE            0
#define REGS_GS_BASE            8
#define REGS_CR2                16
#define REGS_SWITCHER_FAULT     24
#define REGS_SELECTORS          32
#define REGS_FRAME              3920

/* Words of the frame, from its lowest address (FrameWord) */
#define F_VECTOR                120
#define F_CS                    144

/* The state page, and the TSS's selector in its GDT (descriptors.rs) */
#define STATE_GDT               0
#define STATE_GDTR              512
#define STATE_IDTR              528
#define STATE_FAST_VECTOR       1024
#define STATE_FAST_HANDLER      1032
#define STATE_FAST_FRAME        1040
#define STATE_FAST_CLEARS_IF    1048
#define GDT_CPUNODE             120
#define TSS_SELECTOR            0x40

/* The host page */
#define HOST_RSP                0
#define HOST_GDTR               16
#define HOST_IDTR               32
#define HOST_GDTR_RW            48
#define HOST_FS_BASE            64
#define HOST_GS_BASE            72
#define HOST_KERNEL_GS_BASE     80
#define HOST_DS                 88
#define HOST_ES                 96
#define HOST_CR4                104
#define HOST_GUEST_FS_BASE      112
#define HOST_GUEST_GS_BASE      120
#define HOST_GUEST_CR3          128
#define HOST_GUEST_CR4          136
#define HOST_GUEST_SELECTORS    144
#define HOST_CPUNODE            152
#define HOST_GUEST_CPUNODE      160

/* The guest's lguest_data page, at BLOCK_DATA in its view (abi/src/data.rs) */
#define DATA_IRQ_ENABLED        16
#define DATA_SYSCALL_VEC        72

/* The guest kernel's selectors (ring 1), and 64-bit user mode's code selector */
#define GUEST_KERNEL_CS         0x51
#define GUEST_KERNEL_SS         0x59
#define GUEST_USER_CS           0x33

/* MSR_TSC_AUX's bits for an NMI or machine check inside the Switcher */
#define AUX_NMI_PENDING         0x80000000
#define AUX_MC_PENDING          0x40000000

/* Vectors (traps.rs), and the exceptions with an error code (interrupts.rs) */
#define VECTOR_NMI              2
#define VECTOR_INVALID_OPCODE   6
#define VECTOR_DOUBLE_FAULT     8
#define VECTOR_PAGE_FAULT       14
#define VECTOR_MACHINE_CHECK    18
#define ERROR_CODE_VECTORS      0x60227d00

#endif
