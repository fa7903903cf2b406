//! The teaching guest: one small kernel that runs on the bare machine and at ring 1 under
//! lguest-rs, from the same ELF image.
//!
//! It is a kernel in the spirit of Xen's Mini-OS: just enough of one to show every mechanism a
//! paravirtualized kernel needs, each next to its native twin. QEMU boots the image as the
//! machine's kernel through its PVH entry note; `lguest-launcher` boots it through its lguest
//! note, at ring 1 in long mode. Each entry point picks its backend of the paravirt-ops crate
//! (`../paravirt-ops`, the table of operations a kernel cannot do itself at ring 1) and then runs
//! the same [`kernel_main`], which prints through the console op, builds its page tables,
//! installs its trap handlers and system calls, and then does what its command line says
//! ([`Mode`]) before powering off:
//!
//! - nothing: the self-tests (user tasks at ring 3 among them), each printing
//!   `selftest <name>: PASS` or `FAIL: <why>`;
//! - `bench`: the microbenchmarks, each printing `bench <name> <cycles per operation>`, and if
//!   there are virtio devices their throughput (`bench blk-read-mbps <MB/s>`...), then
//!   `bench done`;
//! - `long-run SECONDS`: two user tasks under a 1 ms tick for that long, then one line of what
//!   happened (`long-run: T ticks in M ms, tasks ran A and B times, lost L`) and one of the
//!   frames before and after;
//! - `devices [echo]`: a self-test for each virtio device (entropy source, block device,
//!   network card, and with `echo` the console, which waits for a line typed on it), each
//!   printing `selftest <name>: PASS` or `FAIL: <why>`, then `devices: N passed, M failed`;
//!   `devices-verify [echo]` is the same but that the block device's test only reads back what
//!   an earlier `devices` boot wrote;
//! - `count`: a known workload, then the kernel's own tally of the hypercalls it made, the traps
//!   and interrupts it took (`count hypercall 21: 1000`...), then `count: done`: what lg.ko's
//!   exit statistics are held against.
//!
//! The command line is QEMU's `-append` natively (PVH start_info), the launcher's arguments after
//! the kernel under lguest (boot_params): `lguest-launcher 64m teaching-guest long-run 60`.
//! Besides the mode's words it may hold parameters, `key=value`: the virtio devices
//! (`virtio_mmio.device=4K@0x4000000:1`, Linux's syntax, which QEMU's `microvm` machine and the
//! launcher append themselves), and the addresses the network test uses (`ip=`, `ping=`).
//!
//! ## Reading order
//!
//! What the kernel decides without touching the machine (the frame allocator's bookkeeping, the
//! tick's deadlines, the command line, the ping frames) is in the guest-core crate
//! (`../guest-core`), where the host unit-tests it; each file below says what it takes from
//! there.
//!
//! 1. `main.rs`: this overview, the boot stack, and [`kernel_main`].
//! 2. `boot_native.rs`: QEMU's PVH entry, from 32-bit protected mode into long mode.
//! 3. `boot_lguest.rs`: the lguest note and entry: already in long mode, at ring 1.
//! 4. `console.rs`: `print!` over the console op.
//! 5. `frames.rs`: the memory map, and a page-frame allocator over it.
//! 6. `gdt.rs`: natively, the kernel's own GDT, which copies the layout of the host's.
//! 7. `paging.rs`: the kernel's own page tables, address spaces for user tasks, and the page
//!    faults the kernel fixes.
//! 8. `traps.rs`: the IDT through the cpu ops, the trap entry and exit, the exception handlers.
//! 9. `timer.rs`: a periodic tick from a one-shot timer.
//! 10. `task.rs`: user tasks, their kernel stacks and SSE registers, the context switch and the
//!     scheduler.
//! 11. `syscall.rs`: the two ways ring 3 calls the kernel, `int $0x80` and `syscall`.
//! 12. `user.rs`: the programs the tasks run.
//! 13. `selftest.rs`: the self-tests, which exercise all of the above.
//! 14. `bench.rs`: bench mode, what each mechanism costs in each world.
//! 15. `long_run.rs`: long-run mode, the scheduler and the timer for minutes on end.
//! 16. `virtio/mod.rs`: virtio devices over MMIO: found on the command line, their registers
//!     mapped, memory lent to them, their interrupts, bounded waits.
//! 17. `virtio/rng.rs`: the entropy source, a driver of the kernel's own on the crate's queue.
//! 18. `virtio/console.rs`: the console, another: bytes out, a line in, asleep until it comes.
//! 19. `virtio/block.rs`: the block device, the crate's driver with the kernel's waits.
//! 20. `virtio/net.rs`: the network card, likewise, with receive buffers of the driver's own.
//! 21. `guest-core/src/ping.rs`: just enough Ethernet, ARP, IPv4 and ICMP to ping.
//! 22. `devices.rs`: devices mode, a self-test per device, and the devices' benchmarks.
//! 23. `count.rs`: count mode, a known workload and the kernel's own tally of it.
//!
//! ## What each world does for the kernel
//!
//! | job | native (QEMU) | lguest (ring 1) |
//! |-----|--------------|-----------------|
//! | entry | PVH: 32-bit, paging off, EBX = start_info | 64-bit, ring 1, paging on, RSI = boot_params |
//! | memory map | start_info's memmap | boot_params' e820 table |
//! | command line | start_info's cmdline (QEMU's `-append`) | boot_params' `cmd_line_ptr` (the launcher's arguments) |
//! | GDT | its own (`gdt.rs`), `lgdt` and `ltr` | the host's, same layout |
//! | page tables | its own (`paging.rs`), `mov cr3` | its own too, NEW_PGTABLE; the host shadows them |
//! | a changed mapping | `invlpg`, CR3 reload | SET_PTE, FLUSH_TLB (batched in lazy mode) |
//! | IDT | its own, `lidt` | the same gates, told to the host (LOAD_IDT_ENTRY) |
//! | stack for traps from ring 3 | TSS.RSP0 | SET_STACK |
//! | `syscall` | EFER.SCE, LSTAR: an entry that switches stacks | the host delivers it as `int $0x80` |
//! | interrupts on/off | RFLAGS.IF | `lguest_data.irq_enabled` |
//! | timer | PIT channel 0 through the 8259 PIC, vector 32 | SET_CLOCKEVENT, IRQ 0 at vector 32 |
//! | tasks' SSE registers | `fxsave`/`fxrstor` at each switch | the same; the host keeps them from the launcher's |
//! | console, power-off | COM1, isa-debug-exit | CONSOLE_WRITE, SHUTDOWN |
//! | finding virtio devices | `virtio_mmio.device=` words QEMU's `microvm` appends | the same words, from the launcher |
//! | a device's registers | an uncached page QEMU emulates (`0xfeb00e00`...) | an uncached page above RAM, each access an exit to the launcher |
//! | a device's interrupt | IRQ 5-12 through the 8259 PIC, vector 32 + n, unmasked there | IRQ 1, 2... from the host, vector 32 + n, unblocked in `lguest_data.blocked_interrupts` |
//!
//! ## What comes next
//!
//! What a bigger kernel would add on the same mechanisms: a task that faults killed rather than
//! the kernel panicking, per-task FS and GS bases (`wrfsbase`, which CR4.FSGSBASE allows at ring
//! 1), AVX state (`xsave`), blocking and waking instead of round robin only, and system calls
//! that reach the virtio devices (a task waiting on a device, woken by its interrupt).
#![no_std]
#![no_main]

use core::arch::asm;
use core::panic::PanicInfo;

use guest_core::cmdline::{CommandLine, Mode, PARAMETERS};
use guest_core::virtio_mmio;
use paravirt_ops::{cpu, info, platform, time};

mod bench;
mod boot_lguest;
mod boot_native;
mod console;
mod count;
mod devices;
mod frames;
mod gdt;
mod long_run;
mod paging;
mod selftest;
mod syscall;
mod task;
mod timer;
mod traps;
mod user;
mod virtio;

// ---- The boot stack ---------------------------------------------------------------------------

pub const STACK_SIZE: usize = 64 * 1024;

/// A kernel stack, 16-byte aligned as the x86-64 ABI wants at a call.
#[repr(C, align(16))]
pub struct Stack(pub [u8; STACK_SIZE]);

/// The stack both entry points switch to before their first call: the idle task's (task.rs).
pub static mut BOOT_STACK: Stack = Stack([0; STACK_SIZE]);

// ---- The command line -------------------------------------------------------------------------
//
// What it says, its mode and its parameters, is guest-core's (`guest-core/src/cmdline.rs`),
// unit-tested on the host; here is only where it comes from.

/// The NUL-terminated command line at `addr`, copied into a [`CommandLine`] (as much of it as
/// that keeps); 0 means there is none.
///
/// # Safety
///
/// `addr` is 0 or the address of a NUL-terminated string in mapped memory (the boot
/// loader's word: both put it in low RAM, identity-mapped).
pub unsafe fn command_line_at(addr: u64) -> CommandLine {
    if addr == 0 {
        return CommandLine::default();
    }
    let bytes = (addr..).map(|at| {
        // SAFETY: inside the string, or its NUL (the caller's promise): `take_while` asks for
        // no byte after the NUL, and `from_bytes` for none past what it keeps.
        unsafe { (at as *const u8).read() }
    });
    CommandLine::from_bytes(bytes.take_while(|&byte| byte != 0))
}

// ---- Main -------------------------------------------------------------------------------------

/// Where both entry points end up, with the paravirt-ops backend chosen, the frame allocator
/// started and, natively, the GDT in place; `map` is the RAM the boot loader reported, `cmdline`
/// what it was told to pass.
pub fn kernel_main(map: &frames::MemoryMap, cmdline: &CommandLine) -> ! {
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
    let (Some(mode), None) = (Mode::parse(cmdline), cmdline.unknown_parameter()) else {
        println!(
            "teaching-guest: command line {:?}: expected nothing, `bench`, `long-run SECONDS`, \
             `devices [echo]`, `devices-verify [echo]` or `count`, and parameters \
             {PARAMETERS:?} only",
            cmdline.as_str()
        );
        platform::power_off("teaching-guest: bad command line", true)
    };
    let locations = match virtio_mmio::locations(cmdline) {
        Ok(locations) => locations,
        Err(word) => {
            println!(
                "teaching-guest: virtio_mmio.device={word}: expected <size>@<base>:<irq>, \
                 at most a page of registers, IRQ 1 to 15, at most 8 devices"
            );
            platform::power_off("teaching-guest: bad command line", true)
        }
    };
    println!("mode: {mode}");
    paging::init(map.end());
    traps::init();
    syscall::init();
    let mut devices = if mode.uses_devices() {
        virtio::probe(&locations)
    } else {
        virtio::Devices::default()
    };
    match mode {
        Mode::SelfTests => {
            let (passed, failed) = selftest::run_all();
            println!("selftests: {passed} passed, {failed} failed");
            if failed == 0 {
                platform::power_off("teaching-guest: all self-tests passed", false)
            } else {
                platform::power_off("teaching-guest: self-tests failed", true)
            }
        }
        Mode::Bench => bench::run(&mut devices),
        Mode::LongRun(seconds) => long_run::run(seconds),
        Mode::Devices(plan) => devices::run(&mut devices, cmdline, plan),
        Mode::Count => count::run(),
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
