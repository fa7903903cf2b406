//! The teaching guest: one small kernel that runs on the bare machine and at ring 1 under
//! lguest-rs, from the same ELF image.
//!
//! It is a kernel in the spirit of Xen's Mini-OS: just enough of one to show every mechanism a
//! paravirtualized kernel needs, each next to its native twin. QEMU boots the image as the
//! machine's kernel through its PVH entry note; `lguest-launcher` boots it through its lguest
//! note, at ring 1 in long mode. Each entry point picks its backend of the paravirt-ops crate
//! (`../paravirt-ops`, the table of operations a kernel cannot do itself at ring 1) and then runs
//! the same [`kernel_main`], which prints through the console op, installs its trap handlers,
//! and runs its self-tests, each printing `selftest <name>: PASS` (or `FAIL: <why>`, or
//! `SKIP: <why>`), before powering off.
//!
//! ## Reading order
//!
//! 1. `main.rs`: this overview, the boot stack, and [`kernel_main`].
//! 2. `boot_native.rs`: QEMU's PVH entry, from 32-bit protected mode into long mode.
//! 3. `boot_lguest.rs`: the lguest note and entry: already in long mode, at ring 1.
//! 4. `console.rs`: `print!` over the console op.
//! 5. `frames.rs`: the memory map, and a page-frame allocator over it.
//! 6. `gdt.rs`: natively, the kernel's own GDT, which copies the layout of the host's.
//! 7. `paging.rs`: natively, the kernel's own page tables, and pages mapped on demand.
//! 8. `traps.rs`: the IDT through the cpu ops, the trap entry and exit, the exception handlers.
//! 9. `timer.rs`: a periodic tick from a one-shot timer.
//! 10. `selftest.rs`: the self-tests, which exercise all of the above.
//!
//! ## What each world does for the kernel
//!
//! | job | native (QEMU) | lguest (ring 1) |
//! |-----|--------------|-----------------|
//! | entry | PVH: 32-bit, paging off, EBX = start_info | 64-bit, ring 1, paging on, RSI = boot_params |
//! | memory map | start_info's memmap | boot_params' e820 table |
//! | GDT | its own (`gdt.rs`), `lgdt` and `ltr` | the host's, same layout |
//! | page tables | its own (`paging.rs`) | the launcher's identity map, kept for now |
//! | IDT | its own, `lidt` | the same gates, told to the host (LOAD_IDT_ENTRY) |
//! | interrupts on/off | RFLAGS.IF | `lguest_data.irq_enabled` |
//! | timer | PIT channel 0 through the 8259 PIC, vector 32 | SET_CLOCKEVENT, IRQ 0 at vector 32 |
//! | console, power-off | COM1, isa-debug-exit | CONSOLE_WRITE, SHUTDOWN |
//!
//! ## What comes next (issue #4)
//!
//! User tasks at ring 3 and their system calls, through `int $0x80` (a DPL 3 gate the host may
//! let through directly) and `syscall` (which the host must reflect): they enter through the
//! same stubs in `traps.rs`, whose frames already say where they came from (`cs & 3`), and on
//! the stack `traps::init` hands `load_sp0`; the user segments are in the GDT already. Then a
//! context switch between two tasks driven by the tick in `timer.rs` (each task with its own
//! kernel stack, given to `load_sp0` when it runs), FPU state kept across preemption,
//! demand paging under lguest once the host's shadow page tables follow the guest's
//! (NEW_PGTABLE/SET_PTE in the mmu ops), and lazy-MMU batching of those calls.
#![no_std]
#![no_main]

use core::arch::asm;
use core::panic::PanicInfo;

use paravirt_ops::{cpu, info, platform, time};

mod boot_lguest;
mod boot_native;
mod console;
mod frames;
mod gdt;
mod paging;
mod selftest;
mod timer;
mod traps;

// ---- The boot stack ---------------------------------------------------------------------------

pub const STACK_SIZE: usize = 64 * 1024;

/// A kernel stack, 16-byte aligned as the x86-64 ABI wants at a call.
#[repr(C, align(16))]
pub struct Stack(pub [u8; STACK_SIZE]);

/// The stack both entry points switch to before their first call, and the kernel's only one
/// until there are tasks.
pub static mut BOOT_STACK: Stack = Stack([0; STACK_SIZE]);

// ---- Main -------------------------------------------------------------------------------------

/// Where both entry points end up, with the paravirt-ops backend chosen and, natively, the GDT
/// and page tables in place; `map` is the RAM the boot loader reported.
pub fn kernel_main(map: &frames::MemoryMap) -> ! {
    let cs = current_cs();
    println!(
        "teaching-guest: {} boot, running with cs {cs:#x}: ring {}",
        info().name,
        cs & 3
    );
    print_cpu();
    println!(
        "memory: {} MiB of RAM in {} range(s), {} frames free above the kernel",
        map.total() >> 20,
        map.regions().len(),
        frames::free_frames()
    );
    traps::init();
    let (passed, failed) = selftest::run_all();
    println!("selftests: {passed} passed, {failed} failed");
    if failed == 0 {
        platform::power_off("teaching-guest: all self-tests passed", false)
    } else {
        platform::power_off("teaching-guest: self-tests failed", true)
    }
}

/// The CPU's vendor, whether it admits to a hypervisor, and the TSC's rate: all through the
/// cpu and time ops, which under lguest filter and measure on the host's word.
fn print_cpu() {
    let id = cpu::cpuid(0, 0);
    let mut vendor = [0u8; 12];
    for (chunk, reg) in vendor.chunks_exact_mut(4).zip([id.ebx, id.edx, id.ecx]) {
        chunk.copy_from_slice(&reg.to_le_bytes());
    }
    let hypervisor = cpu::cpuid(1, 0).ecx & 1 << 31 != 0;
    println!(
        "cpu: {}, hypervisor bit {}, TSC at {} MHz",
        core::str::from_utf8(&vendor).unwrap_or("?"),
        if hypervisor { "on" } else { "off" },
        time::tsc_khz() / 1000
    );
}

/// The code segment selector we run on; its low two bits are the CPL.
fn current_cs() -> u16 {
    let cs: u16;
    // SAFETY: reading CS is allowed at every privilege level and changes nothing.
    unsafe { asm!("mov {:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags)) };
    cs
}

/// A panic is the kernel's own bug: say so, and power off as failed.
#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    println!("teaching-guest: panic: {info}");
    platform::power_off("teaching-guest: panic", true)
}
