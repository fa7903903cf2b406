// SPDX-License-Identifier: GPL-2.0
//! The few privileged instructions the host side of a switch needs, one function each.
//!
//! These run at ring 0 in lg.ko, around the call into the Switcher, with interrupts off: the
//! model-specific registers a guest must not inherit from the host (EFER.SCE, SYSENTER_CS) or
//! that the Switcher restores (the FS/GS bases), the selectors and descriptor-table registers
//! it saves, and the host state a guest must never run with or leave behind (the LDT, the debug
//! registers, PKRU); and the time-stamp counter, which times the exits.

use core::arch::asm;

pub(crate) const MSR_EFER: u32 = 0xc000_0080;
pub(crate) const MSR_FS_BASE: u32 = 0xc000_0100;
pub(crate) const MSR_GS_BASE: u32 = 0xc000_0101;
pub(crate) const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
pub(crate) const MSR_SYSENTER_CS: u32 = 0x174;
pub(crate) const MSR_TSC_AUX: u32 = 0xc000_0103;
/// Which XFD-disabled feature (AMX) a #NM was for: the CPU sets it, only software clears it.
pub(crate) const MSR_XFD_ERR: u32 = 0x1c5;
/// EFER.SCE: SYSCALL enabled. Cleared while a guest runs, so `syscall` is #UD at ring 1 and 3
/// instead of a jump into the host's entry code with the guest's stack (hazard 1).
pub(crate) const EFER_SCE: u64 = 1 << 0;
pub(crate) const CR4_PGE: u64 = 1 << 7;
/// CR4.SMAP: supervisor accesses to user pages fault. Off while a guest runs: a guest kernel
/// at ring 1 is "supervisor" and must reach its own user pages (copy_to_user), and it has no
/// `stac`/`clac` (#UD at ring 1) to open the way.
pub(crate) const CR4_SMAP: u64 = 1 << 21;
pub(crate) const CR4_PKE: u64 = 1 << 22;

/// Read a model-specific register.
///
/// # Safety
///
/// `msr` must exist on this CPU (all the MSRs above do on every x86-64 CPU lg.ko loads on).
pub(crate) unsafe fn rdmsr(msr: u32) -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: The caller guarantees the MSR exists; rdmsr has no other effect.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") low, out("edx") high, options(nomem, nostack))
    };
    (high as u64) << 32 | low as u64
}

/// Write a model-specific register.
///
/// # Safety
///
/// `msr` must exist and `value` be valid for it, and the write must leave the kernel working:
/// callers restore every value they change before anything else runs on this CPU.
pub(crate) unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: The caller guarantees the write is valid and undone in time.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nostack))
    };
}

/// The DS and ES selectors.
pub(crate) fn data_selectors() -> (u16, u16) {
    let (ds, es): (u16, u16);
    // SAFETY: Reading segment registers has no effect.
    unsafe {
        asm!("mov {0:x}, ds", "mov {1:x}, es", out(reg) ds, out(reg) es, options(nomem, nostack))
    };
    (ds, es)
}

/// The FS and GS selectors.
pub(crate) fn fs_gs_selectors() -> (u16, u16) {
    let (fs, gs): (u16, u16);
    // SAFETY: Reading segment registers has no effect.
    unsafe {
        asm!("mov {0:x}, fs", "mov {1:x}, gs", out(reg) fs, out(reg) gs, options(nomem, nostack))
    };
    (fs, gs)
}

/// The limit of the current GDT (`sgdt`).
pub(crate) fn gdt_limit() -> u16 {
    let mut gdtr = [0u8; 10];
    // SAFETY: sgdt stores 10 bytes at the given address, which is our buffer.
    unsafe { asm!("sgdt [{0}]", in(reg) gdtr.as_mut_ptr(), options(nostack)) };
    u16::from_le_bytes([gdtr[0], gdtr[1]])
}

/// The time-stamp counter: what the exit statistics time with. One instruction and no memory,
/// where the kernel's clock reads (`ktime_get`) touch the timekeeper's data, a page more per
/// exit for the TLB to refill after the switch's CR3 writes.
pub(crate) fn rdtsc() -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: rdtsc reads a counter, at ring 0 always allowed; it has no other effect.
    unsafe { asm!("rdtsc", out("eax") low, out("edx") high, options(nomem, nostack)) };
    (high as u64) << 32 | low as u64
}

/// The protection-key rights register, if CR4.PKE is on (a ring-1 guest can `wrpkru`).
pub(crate) fn rdpkru() -> u32 {
    let pkru: u32;
    // SAFETY: Callers only use this with CR4.PKE set, where rdpkru is defined at ring 0.
    unsafe { asm!("rdpkru", in("ecx") 0, out("eax") pkru, out("edx") _, options(nomem, nostack)) };
    pkru
}

/// Restore the protection-key rights register.
pub(crate) fn wrpkru(pkru: u32) {
    // SAFETY: Callers only write back a value rdpkru returned, with CR4.PKE set.
    unsafe { asm!("wrpkru", in("eax") pkru, in("ecx") 0, in("edx") 0, options(nostack)) };
}

/// The host's CR3 (the launcher's page tables, with its PCID in the low bits).
pub(crate) fn read_cr3() -> u64 {
    let cr3: u64;
    // SAFETY: Reading CR3 at ring 0 has no effect.
    unsafe { asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack)) };
    cr3
}

/// The LDT selector in LDTR (0: none).
pub(crate) fn ldt_selector() -> u16 {
    let selector: u16;
    // SAFETY: sldt only reads LDTR; at ring 0 UMIP does not apply.
    unsafe { asm!("sldt {0:x}", out(reg) selector, options(nomem, nostack)) };
    selector
}

/// Load LDTR from `selector` in the current GDT.
///
/// # Safety
///
/// `selector` must be one `ldt_selector` returned on this CPU with this GDT loaded, whose
/// descriptor has not changed since: the host's own LDT, loaded again.
pub(crate) unsafe fn load_ldt(selector: u16) {
    // SAFETY: The caller guarantees the descriptor is the LDT Linux had loaded.
    unsafe { asm!("lldt {0:x}", in(reg) selector, options(nostack)) };
}

/// The debug status register, DR6: why the last debug exception came.
pub(crate) fn read_dr6() -> u64 {
    let dr6: u64;
    // SAFETY: Reading DR6 at ring 0 has no effect.
    unsafe { asm!("mov {}, dr6", out(reg) dr6, options(nomem, nostack)) };
    dr6
}

/// Disarm every hardware breakpoint (DR7 = 0): the host's must not fire in the Switcher or the
/// guest. `lg_hw_breakpoint_restore` arms them again.
///
/// # Safety
///
/// The caller restores the host's breakpoints before interrupts come back on.
pub(crate) unsafe fn disarm_breakpoints() {
    // SAFETY: DR7 = 0 only disables breakpoints; the caller restores them.
    unsafe { asm!("mov dr7, {}", in(reg) 0u64, options(nomem, nostack)) };
}
