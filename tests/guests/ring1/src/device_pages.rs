//! Device pages: guest-physical addresses above RAM where the launcher's virtio devices live.
//!
//! Nothing there is memory: an access through a mapping of such a page leaves the guest (an
//! MMIO exit), and the launcher decodes the instruction and emulates the register. `mmio`
//! (`launcher-mmio`) reads and writes registers with the instruction forms drivers use;
//! `mmio-loop` times one exit for `./lguest-dev bench`; `mmio-exec` and `mmio-rmw`
//! (`launcher-mmio-refused`) try what the host or the launcher must refuse. virtqueue.rs maps
//! its device with `map_device_page` too.

use core::arch::asm;
use core::ptr;

use crate::hcall::poweroff;
use crate::page_tables::{load_own_tables, ram_identity_tables, HUGE, HUGE_PAGE, P, W};
use crate::{println, rdtsc};

/// Where [`map_device_page`] maps device pages: a 2 MiB page of the guest's own tables.
const DEVICE_WINDOW: u64 = 40 * HUGE_PAGE;

/// Switches to page tables of the guest's own: RAM identity-mapped as the launcher's were, and
/// the 2 MiB around guest-physical `gpa` at DEVICE_WINDOW. Returns where `gpa` is mapped.
///
/// Nothing at `gpa` is RAM (the launcher's first virtio device sits right above RAM): every
/// access through the returned address leaves the guest, and the launcher emulates it.
pub fn map_device_page(gpa: u64) -> u64 {
    // SAFETY: single CPU; the tables are ours (ram_identity_tables).
    let (pd, _) = unsafe { ram_identity_tables() };
    pd[40] = (gpa & !(HUGE_PAGE - 1)) | P | W | HUGE;
    load_own_tables();
    DEVICE_WINDOW + (gpa & (HUGE_PAGE - 1))
}

/// `mmio GPA` and `mmio-*`: the device page at guest-physical GPA, touched:
/// - `mmio GPA`: reads a virtio-blk device's magic and device id (32-bit registers), then its
///   capacity in config space (any width there) with the instruction forms drivers use: a
///   64-bit `mov`, a `movzx` of one byte, a 16-bit `mov` that must leave the rest of R9 alone,
///   and a `cmp` whose flags must come back; then writes the status register (a reset);
/// - `mmio-loop GPA`: reads the magic register over and over, timed: what an MMIO exit costs;
/// - `mmio-exec GPA`: jumps into the device page: the host must kill the guest;
/// - `mmio-rmw GPA`: `or [reg], eax` on a device register, which the launcher refuses to
///   emulate: it must stop with the instruction's text.
pub fn mmio(name: &str, gpa: u64) -> ! {
    if !matches!(name, "mmio" | "mmio-loop") {
        println!("attack: {name}");
    }
    let base = map_device_page(gpa);
    // SAFETY: `base` is the device page; the instructions below touch only its registers.
    unsafe {
        match name {
            "mmio" => {
                let (magic, device, capacity, byte, below): (u32, u32, u64, u32, u8);
                let mut r9: u64 = 0x1111_2222_3333_4444;
                asm!(
                    "mov {magic:e}, [{base}]",
                    "mov {device:e}, [{base} + 8]",
                    "mov {capacity}, [{base} + 0x100]",
                    "movzx {byte:e}, byte ptr [{base} + 0x101]",
                    "mov r9w, [{base} + 0x100]",
                    "cmp qword ptr [{base} + 0x100], 0x4001",
                    "setb {below}",
                    "mov dword ptr [{base} + 0x70], 0",
                    base = in(reg) base,
                    magic = out(reg) magic,
                    device = out(reg) device,
                    capacity = out(reg) capacity,
                    byte = out(reg) byte,
                    below = out(reg_byte) below,
                    inout("r9") r9,
                    options(nostack),
                );
                println!(
                    "mmio: magic={magic:#x} device={device} capacity={capacity:#x} byte={byte:#x} \
                     r9={r9:#x} below-0x4001={below}"
                );
                poweroff("mmio done")
            }
            "mmio-loop" => {
                // What one read costs: a full MMIO exit to the launcher and back.
                const READS: u64 = 20_000;
                let start = rdtsc();
                for _ in 0..READS {
                    ptr::read_volatile(base as *const u32);
                }
                let cycles = (rdtsc() - start) / READS;
                println!("mmio-loop: {READS} device reads, {cycles} cycles each");
                poweroff("mmio-loop done")
            }
            "mmio-exec" => {
                let device_code: extern "C" fn() = core::mem::transmute(base as *const ());
                device_code();
                println!("attack {name}: survived (ran code from a device page)");
            }
            "mmio-rmw" => {
                asm!("or dword ptr [{base} + 0x70], eax", base = in(reg) base, in("eax") 1,
                    options(nostack));
                println!("attack {name}: survived (the launcher emulated or)");
            }
            _ => panic!("unknown scenario {name:?}"),
        }
    }
    poweroff("device page attack done")
}
