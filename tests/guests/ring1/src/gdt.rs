//! Segments: the GDT entries a guest may set (LOAD_GDT_ENTRY), and those it may not.
//!
//! The GDT is the host's, but a guest kernel keeps its thread-local storage segments in it (GDT
//! entries 12 to 14), as Linux does on every task switch. `gdt-tls` shows such a segment loads
//! with its base and never with more privilege than ring 1; `gdt-*` offers descriptors the host
//! must refuse: a system segment, a call gate, 64-bit code, and the entries the guest kernel and
//! the host run on. `hostile-idt-gdt` runs both.

use crate::hcall::{hcall, poweroff};
use crate::println;

/// A data segment descriptor: base (32 bits), 4 GiB limit, writable, present, `dpl`, accessed
/// bit clear (the host must set it).
fn data_descriptor(base: u64, dpl: u64) -> u64 {
    0x00cf_9200_0000_ffff | (base & 0xff_ffff) << 16 | (base >> 24 & 0xff) << 56 | dpl << 45
}

fn load_gdt_entry(index: u64, descriptor: u64) {
    // SAFETY: the host only reads the registers.
    unsafe {
        hcall(
            lguest_abi::hcall::LOAD_GDT_ENTRY,
            [index, descriptor, 0, 0, 0],
        )
    };
}

/// `gdt-tls`: a TLS segment the guest sets is loadable, with its base; one given with DPL 0 is
/// raised to DPL 1 (so it never has the host's privilege) and still loads at ring 1.
pub fn tls() -> ! {
    const BASE: u64 = 0x12_3000;
    load_gdt_entry(12, data_descriptor(BASE, 3));
    load_gdt_entry(13, data_descriptor(0, 0));
    let (fs_base, rights): (u64, u64);
    // SAFETY: loads FS with our TLS segment (selector 0x63: entry 12, RPL 3) and reads its
    // base (FSGSBASE works at ring 1), then asks for entry 13's access rights (0x69: RPL 1).
    unsafe {
        core::arch::asm!(
            "mov ax, 0x63", "mov fs, ax", "rdfsbase {base}",
            "mov ax, 0x69", "mov gs, ax", "lar {rights}, ax",
            base = out(reg) fs_base, rights = out(reg) rights, out("rax") _,
        )
    };
    let dpl = rights >> 13 & 3;
    if fs_base != BASE || dpl != 1 {
        panic!(
            "gdt-tls: fs base {fs_base:#x} (expected {BASE:#x}), entry 13's DPL {dpl} (expected 1)"
        );
    }
    println!("gdt-tls: fs base {fs_base:#x}, a DPL 0 segment came back DPL {dpl}");
    poweroff("gdt-tls done")
}

/// `gdt-*`: descriptors the host must refuse.
pub fn bad_descriptor(name: &str) -> ! {
    let (index, descriptor) = match name {
        "gdt-system" => (12, 0x0000_8900_0000_0067), // an available 64-bit TSS
        "gdt-call-gate" => (12, 0x0000_ec00_0051_1000), // a call gate to the kernel's code
        "gdt-long" => (12, 0x00af_fa00_0000_ffff),   // 64-bit code, DPL 3
        "gdt-kernel-entry" => (10, data_descriptor(0, 3)), // the guest kernel's code segment
        "gdt-host-entry" => (2, data_descriptor(0, 3)), // the host's (and Switcher's) code segment
        _ => panic!("unknown scenario {name:?}"),
    };
    println!("attack: {name}");
    load_gdt_entry(index, descriptor);
    println!("attack {name}: survived (the host took the descriptor)");
    poweroff("bad descriptor taken")
}
