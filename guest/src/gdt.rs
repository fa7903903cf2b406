//! 6. The GDT: natively the kernel's own, under lguest the host's, with one layout.
//!
//! In long mode segments barely matter (no bases, no limits for code and data), but the CPU
//! still wants descriptors: a 64-bit code segment per ring, a data segment for SS, and the TSS
//! that holds the stack pointer a trap from user mode switches to. Under lguest the host owns the
//! GDT the guest runs on (lguest-abi's `boot` module draws it); natively this kernel brings its
//! own, and copies the host's layout entry for entry, so that its selectors mean the same in
//! both worlds. The one difference is the kernel's ring, which is the selectors' RPL: 0x50 and
//! 0x58 natively, 0x51 and 0x59 under lguest ([`kernel_cs`]).
//!
//! The boot code (boot_native.rs) loads this table before long mode even starts; [`init`] adds
//! the TSS, which only Rust can describe (its address must be split into the descriptor's
//! pieces), and loads it with `ltr`. Both are native-only: under lguest, `lgdt` and `ltr` would
//! fault at ring 1, and the host's table already has everything.

use core::arch::asm;
use core::cell::UnsafeCell;

use lguest_abi::boot::{
    GUEST_GDT_ENTRIES, GUEST_KERNEL_CS, GUEST_KERNEL_SS, GUEST_USER_CS, GUEST_USER_SS,
};

/// The kernel's code segment natively (ring 0): the entry the host gives the guest kernel.
pub const KERNEL_CS: u16 = (GUEST_KERNEL_CS & !3) as u16;
/// The kernel's stack and data segment natively.
pub const KERNEL_DS: u16 = (GUEST_KERNEL_SS & !3) as u16;
/// User mode's code segment, and its stack and data segment: the same selectors (RPL 3) in
/// both worlds.
pub const USER_CS: u16 = GUEST_USER_CS as u16;
pub const USER_SS: u16 = GUEST_USER_SS as u16;
/// The TSS's selector (entries 8 and 9: a system descriptor takes two in long mode).
const TSS_SELECTOR: u16 = 0x40;
const TSS_ENTRY: usize = (TSS_SELECTOR / 8) as usize;

/// Descriptors (SDM 3A 3.4.5), all with base 0, limit 4 GiB (G), accessed bit preset:
/// 64-bit code (L) at DPL 0 and 3, and writable data at DPL 0 and 3.
const KERNEL_CODE: u64 = 0x00af_9b00_0000_ffff;
const KERNEL_DATA: u64 = 0x00cf_9300_0000_ffff;
const USER_CODE: u64 = 0x00af_fb00_0000_ffff;
const USER_DATA: u64 = 0x00cf_f300_0000_ffff;

/// The table, a u64 per entry; `repr(C, align(8))` so the boot code's `lgdt` can use it as is.
#[repr(C, align(8))]
pub struct Gdt(UnsafeCell<[u64; GUEST_GDT_ENTRIES]>);

// SAFETY: one CPU; written only by `init`, before interrupts are on, and otherwise read only by
// the CPU.
unsafe impl Sync for Gdt {}

pub const GDT_BYTES: usize = GUEST_GDT_ENTRIES * 8;

/// The GDT, in the host's layout.
pub static GDT: Gdt = Gdt(UnsafeCell::new({
    let mut gdt = [0u64; GUEST_GDT_ENTRIES];
    gdt[(USER_SS >> 3) as usize] = USER_DATA;
    gdt[(USER_CS >> 3) as usize] = USER_CODE;
    gdt[(KERNEL_CS >> 3) as usize] = KERNEL_CODE;
    gdt[(KERNEL_DS >> 3) as usize] = KERNEL_DATA;
    gdt
}));

/// The selector of the kernel's code segment in the world we run in: its RPL is the ring the
/// backend runs the kernel in. IDT gates name it.
pub fn kernel_cs() -> u16 {
    KERNEL_CS | paravirt_ops::info().kernel_rpl
}

/// Native only: describes the paravirt-ops backend's TSS in entries 8-9 and loads it.
pub fn init() {
    let (base, limit) = paravirt_ops::native::tss();
    // A 16-byte system descriptor: limit and base in pieces, type 9 (available 64-bit TSS),
    // present, DPL 0; the second quadword holds the top of the base.
    let low = u64::from(limit & 0xffff)
        | (base & 0xff_ffff) << 16
        | 0x89 << 40
        | u64::from(limit >> 16 & 0xf) << 48
        | (base >> 24 & 0xff) << 56;
    let gdt = GDT.0.get().cast::<u64>();
    // SAFETY: entries 8 and 9 of our GDT, which no loaded segment uses; interrupts are off and
    // nothing else writes the table. `ltr` then marks the descriptor busy, which is why the TSS
    // is loaded only once.
    unsafe {
        gdt.add(TSS_ENTRY).write_volatile(low);
        gdt.add(TSS_ENTRY + 1).write_volatile(base >> 32);
        asm!("ltr {:x}", in(reg) TSS_SELECTOR, options(nostack, preserves_flags));
    }
}
