//! The native backend: the real instructions, and the PC's own chips.
//!
//! This is what a kernel does when it owns the machine: `cli`/`sti`/`pushf`/`popf` for the
//! interrupt flag, `lidt`, the TSS for the kernel stack, the MSRs of `syscall`,
//! `mov cr2`/`mov cr3`/`invlpg`, `hlt`.
//! For time and interrupts it uses the oldest hardware every PC (and QEMU's `pc` and `microvm`
//! machines) has: the 8254 PIT's channel 0, both as the one-shot timer (IRQ 0) and, before
//! that, as the ruler the TSC is measured against; and the 8259 PIC, remapped so that IRQ n
//! arrives at vector 32 + n, as it does under lguest. The console is COM1, and power-off is
//! QEMU's isa-debug-exit device.

use core::arch::{asm, naked_asm, x86_64::__cpuid_count};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, Ordering};

use guest_core::clock::{self, PIT_HZ};
use lguest_abi::hcall::FIRST_IRQ_VECTOR;

use crate::console::ConsoleOps;
use crate::cpu::{CpuOps, Cpuid, Gate, Idt};
use crate::irq::IrqOps;
use crate::mmu::MmuOps;
use crate::platform::PlatformOps;
use crate::time::{rdtsc, TimeOps};
use crate::{Backend, PvInfo, PvOps};

/// The native table: what [`crate::init`] installs for [`Backend::Native`], and what the table
/// holds before `init`, as Linux's `pv_ops` starts out native.
pub const OPS: PvOps = PvOps {
    info: PvInfo {
        name: "native",
        backend: Backend::Native,
        kernel_rpl: 0,
    },
    cpu: CpuOps {
        write_idt_entry,
        load_idt,
        load_sp0,
        syscall_init,
        cpuid,
        iret: native_iret,
    },
    irq: IrqOps {
        save_fl,
        restore_fl,
        irq_disable,
        irq_enable,
        safe_halt,
        unmask_irq,
    },
    mmu: MmuOps {
        read_cr2,
        write_cr3,
        flush_tlb_one_user,
        flush_tlb_user,
        enter_lazy_mmu_mode,
        leave_lazy_mmu_mode,
    },
    time: TimeOps {
        tsc_khz,
        set_next_event,
    },
    console: ConsoleOps { write },
    platform: PlatformOps { eoi, power_off },
};

/// Prepares the chips: the TSC measured against the PIT, then the PIC remapped with only the
/// timer's line open (which also forgets the edge the measurement may have raised on it), and
/// the timer disarmed (the firmware may have left it ticking).
pub(crate) fn init() {
    TSC_KHZ.store(calibrate_tsc_khz(), Ordering::Relaxed);
    init_pic();
    set_next_event(0);
}

// ---- Ports ------------------------------------------------------------------------------------

/// Writes `value` to I/O port `port`.
///
/// # Safety
///
/// Port writes program devices; the caller knows what this one does.
unsafe fn outb(port: u16, value: u8) {
    // SAFETY: the caller vouches for the device write.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// Reads I/O port `port`.
///
/// # Safety
///
/// Some port reads change a device's state; the caller knows what this one does.
unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: the caller vouches for the device read.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    value
}

// ---- cpu --------------------------------------------------------------------------------------

fn write_idt_entry(idt: &'static Idt, vector: u8, gate: Gate) {
    idt.store(vector, gate);
}

/// What `lidt` and `lgdt` load: the table's limit (its size - 1), then its base.
#[repr(C, packed)]
struct TablePointer {
    limit: u16,
    base: u64,
}

fn load_idt(idt: &'static Idt) {
    let pointer = TablePointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: idt.base(),
    };
    // SAFETY: the table is 'static, so the CPU may keep using it for as long as it likes.
    unsafe { asm!("lidt [{}]", in(reg) &pointer, options(readonly, nostack, preserves_flags)) };
}

/// The 64-bit TSS (SDM 3A 8.7). In long mode it holds no task state, only stack pointers: RSP0,
/// the stack a trap from user mode switches to, and the IST stacks. The I/O map base past its
/// end means no I/O bitmap: user mode gets no ports.
#[repr(C, packed(4))]
struct Tss {
    reserved0: u32,
    rsp: [u64; 3],
    reserved1: u64,
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    iomap_base: u16,
}

#[repr(transparent)]
struct TssCell(UnsafeCell<Tss>);

// SAFETY: one CPU; RSP0 is written only by `load_sp0` and read only by the CPU.
unsafe impl Sync for TssCell {}

const TSS_SIZE: usize = core::mem::size_of::<Tss>();

static TSS: TssCell = TssCell(UnsafeCell::new(Tss {
    reserved0: 0,
    rsp: [0; 3],
    reserved1: 0,
    ist: [0; 7],
    reserved2: 0,
    reserved3: 0,
    iomap_base: TSS_SIZE as u16,
}));

/// The TSS's base and limit, for the kernel's GDT: natively the kernel owns the GDT, this
/// backend owns the TSS whose RSP0 `load_sp0` sets, and the kernel's TSS descriptor must point
/// here before its `ltr`.
pub fn tss() -> (u64, u32) {
    (TSS.0.get() as u64, TSS_SIZE as u32 - 1)
}

fn load_sp0(sp0: u64) {
    // SAFETY: a field of our TSS, written unaligned because the TSS is packed (RSP0 sits at
    // offset 4); see `TssCell` for why nothing races.
    unsafe { (&raw mut (*TSS.0.get()).rsp[0]).write_unaligned(sp0) };
}

const MSR_EFER: u32 = 0xc000_0080;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_FMASK: u32 = 0xc000_0084;
/// EFER.SCE: `syscall` and `sysret` exist (without it `syscall` is #UD).
const EFER_SCE: u64 = 1 << 0;
/// What `syscall` clears in RFLAGS (FMASK): IF, so that no interrupt comes before the entry
/// has left the user's stack; TF, DF, AC and NT, which user mode may have set and the kernel
/// does not want (Linux masks the same and more).
const SYSCALL_MASK: u64 = 1 << 9 | 1 << 8 | 1 << 10 | 1 << 18 | 1 << 14;

/// Reads model-specific register `msr`.
///
/// # Safety
///
/// `msr` must exist on this CPU (else #GP).
unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller vouches that the MSR exists; reading it changes nothing.
    unsafe {
        asm!(
            "rdmsr",
            in("ecx") msr,
            out("eax") lo,
            out("edx") hi,
            options(nomem, nostack, preserves_flags)
        )
    };
    u64::from(hi) << 32 | u64::from(lo)
}

/// Writes `value` to model-specific register `msr`.
///
/// # Safety
///
/// `msr` must exist, and the caller knows what writing it does.
unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller vouches for the write.
    unsafe {
        asm!(
            "wrmsr",
            in("ecx") msr,
            in("eax") value as u32,
            in("edx") (value >> 32) as u32,
            options(nostack, preserves_flags)
        )
    };
}

/// `syscall` enters at `entry` (LSTAR) in the code segment we run on now, the kernel's, and its
/// stack segment 8 above (STAR bits 32-47, the layout `syscall` requires). STAR's other half,
/// the selectors `sysret` would load, stays 0: the kernel returns from a system call with
/// `iretq`, the way it returns from `int $0x80` (as Xen PV kernels do), never with `sysret`.
/// The vector is lguest's business.
fn syscall_init(entry: unsafe extern "C" fn(), _vector: u8) {
    let cs: u16;
    // SAFETY: reading CS changes nothing.
    unsafe { asm!("mov {:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags)) };
    // SAFETY: every x86-64 CPU has these MSRs; they tell `syscall` where the kernel's entry
    // point is, and `entry` is one (the kernel's contract with this op).
    unsafe {
        wrmsr(MSR_STAR, u64::from(cs & !3) << 32);
        wrmsr(MSR_LSTAR, entry as usize as u64);
        wrmsr(MSR_FMASK, SYSCALL_MASK);
        wrmsr(MSR_EFER, rdmsr(MSR_EFER) | EFER_SCE);
    }
}

fn cpuid(leaf: u32, subleaf: u32) -> Cpuid {
    let r = __cpuid_count(leaf, subleaf);
    Cpuid {
        eax: r.eax,
        ebx: r.ebx,
        ecx: r.ecx,
        edx: r.edx,
    }
}

/// The native return from a trap: the frame at RSP is exactly what the CPU pushed.
#[unsafe(naked)]
unsafe extern "C" fn native_iret() {
    naked_asm!("iretq")
}

// ---- irq --------------------------------------------------------------------------------------
// None of these asm blocks says `nomem`: each must also be a compiler barrier, so that no memory
// access the compiler could move slips out of (or into) a section with interrupts off.

fn save_fl() -> u64 {
    let flags: u64;
    // SAFETY: pushf/pop only read RFLAGS, through the stack.
    unsafe { asm!("pushfq", "pop {}", out(reg) flags, options(preserves_flags)) };
    flags
}

fn restore_fl(flags: u64) {
    // SAFETY: only IF matters to callers, and popf of a value from save_fl changes nothing the
    // compiler relies on (it treats the flags as clobbered).
    unsafe { asm!("push {}", "popfq", in(reg) flags) };
}

fn irq_disable() {
    // SAFETY: cli only clears IF.
    unsafe { asm!("cli", options(nostack)) };
}

fn irq_enable() {
    // SAFETY: sti only sets IF; handlers are installed before anyone enables interrupts.
    unsafe { asm!("sti", options(nostack)) };
}

fn safe_halt() {
    // SAFETY: sti takes effect after the next instruction, so an interrupt that is already
    // waiting wakes the hlt instead of being taken before it and slept through.
    unsafe { asm!("sti", "hlt", options(nostack)) };
}

/// Clears `irq`'s bit in its PIC's mask register (OCW1, read back from the same port), and for
/// the second PIC's lines also the cascade's, IRQ 2 on the first: Linux's `unmask_8259A_irq`.
fn unmask_irq(irq: u32) {
    let flags = save_fl();
    irq_disable();
    // SAFETY: reading a PIC's mask register has no side effect, and writing it back with one
    // more line open only lets that line's interrupts through to their vector. Interrupts are
    // off, so nothing else changes the mask in between.
    unsafe {
        if irq >= 8 {
            outb(PIC2_DATA, inb(PIC2_DATA) & !(1 << (irq - 8)));
            outb(PIC1_DATA, inb(PIC1_DATA) & !(1 << 2));
        } else {
            outb(PIC1_DATA, inb(PIC1_DATA) & !(1 << irq));
        }
    }
    restore_fl(flags);
}

// ---- mmu --------------------------------------------------------------------------------------

fn read_cr2() -> u64 {
    let cr2: u64;
    // SAFETY: reading CR2 has no effect.
    unsafe { asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack, preserves_flags)) };
    cr2
}

/// # Safety
///
/// See [`MmuOps::write_cr3`].
unsafe fn write_cr3(root: u64) {
    // SAFETY: the caller vouches that `root` maps what the kernel uses; not `nomem`, because
    // every access after it goes through the new tables.
    unsafe { asm!("mov cr3, {}", in(reg) root, options(nostack, preserves_flags)) };
}

fn flush_tlb_one_user(va: u64) {
    // SAFETY: invlpg only drops a cached translation.
    unsafe { asm!("invlpg [{}]", in(reg) va, options(nostack, preserves_flags)) };
}

/// A CR3 reload: it drops every translation but global ones, and this kernel has none.
fn flush_tlb_user() {
    // SAFETY: writes back the CR3 we run on; not `nomem`, as the TLB flush orders memory
    // accesses through changed tables after it.
    unsafe { asm!("mov {0}, cr3", "mov cr3, {0}", out(reg) _, options(nostack, preserves_flags)) };
}

/// Nothing to batch natively: every flush is one instruction.
fn enter_lazy_mmu_mode() {}

fn leave_lazy_mmu_mode() {}

// ---- time: the PIT ----------------------------------------------------------------------------

const PIT_CHANNEL0: u16 = 0x40;
const PIT_COMMAND: u16 = 0x43;
/// Command: channel 0, low byte then high byte, mode 0 ("interrupt on terminal count": OUT goes
/// high, raising IRQ 0, once when the count runs out), binary.
const PIT_CH0_ONESHOT: u8 = 0x30;
/// Command: latch channel 0's count, so that its two bytes are read from one instant.
const PIT_CH0_LATCH: u8 = 0x00;

/// The TSC's rate, measured once by `init`.
static TSC_KHZ: AtomicU64 = AtomicU64::new(0);

fn tsc_khz() -> u64 {
    TSC_KHZ.load(Ordering::Relaxed)
}

/// Channel 0's count now.
fn pit_count() -> u16 {
    // SAFETY: the latch command and the two reads of channel 0 only read its count.
    unsafe {
        outb(PIT_COMMAND, PIT_CH0_LATCH);
        let low = inb(PIT_CHANNEL0);
        let high = inb(PIT_CHANNEL0);
        u16::from_le_bytes([low, high])
    }
}

/// Counts TSC cycles while PIT channel 0 counts down 50 ms, reading its count back. Linux's
/// `pit_calibrate_tsc` watches channel 2's output in port B (0x61) instead, less its care for
/// SMIs and slow ports, which QEMU has not; but port B is a PC/AT extra that QEMU's `microvm`
/// machine lacks, while every PIT has channel 0 and its latch. The count goes down from the
/// largest value, and runs out (raising IRQ 0) only after 55 ms; `init` remaps the PIC
/// afterwards anyway, which forgets an edge it saw. Between two readings the count may also
/// have wrapped around (in mode 0 it goes on from 0xffff), which `pit_ticks_between` absorbs.
fn calibrate_tsc_khz() -> u64 {
    const MS: u64 = 50;
    let ticks = PIT_HZ * MS / 1000;
    // SAFETY: programs channel 0, the timer this backend owns, which nothing uses yet.
    unsafe {
        outb(PIT_COMMAND, PIT_CH0_ONESHOT);
        outb(PIT_CHANNEL0, 0xff);
        outb(PIT_CHANNEL0, 0xff);
    }
    // A real PIT loads the count at its next clock pulse: one reading lets that pass.
    pit_count();
    let mut previous = pit_count();
    let start = rdtsc();
    let mut elapsed = 0;
    while elapsed < ticks {
        let count = pit_count();
        elapsed += clock::pit_ticks_between(previous, count);
        previous = count;
    }
    clock::tsc_khz(rdtsc() - start, elapsed)
}

fn set_next_event(ns: u64) {
    // SAFETY: programs PIT channel 0, the timer this backend owns. A command byte alone stops
    // it (mode 0 waits for a count); a count restarts it.
    unsafe {
        outb(PIT_COMMAND, PIT_CH0_ONESHOT);
        if ns != 0 {
            let [low, high] = clock::pit_count(ns).to_le_bytes();
            outb(PIT_CHANNEL0, low);
            outb(PIT_CHANNEL0, high);
        }
    }
}

// ---- platform: the 8259 PIC and QEMU's exit device --------------------------------------------

const PIC1_COMMAND: u16 = 0x20;
const PIC1_DATA: u16 = 0x21;
const PIC2_COMMAND: u16 = 0xa0;
const PIC2_DATA: u16 = 0xa1;
/// The command that ends an interrupt (non-specific EOI).
const PIC_EOI: u8 = 0x20;

/// The local APIC's base MSR; bit 11 enables the APIC globally.
const MSR_APIC_BASE: u32 = 0x1b;
const APIC_GLOBAL_ENABLE: u64 = 1 << 11;

/// Remaps the two PICs so IRQs 0-15 arrive at vectors 32-47 (the BIOS left them on 8-15, where
/// they would look like exceptions), and masks all but IRQ 0, the timer.
///
/// First the local APIC goes: with it globally disabled the CPU takes the PIC's INTR line
/// directly, as a CPU without an APIC would (SDM 3A 11.4.3). With it enabled, the PIC's output
/// reaches the CPU only through the APIC's LINT0 entry, which must say "ExtINT" (the "virtual
/// wire" mode): SeaBIOS, the `pc` machine's firmware, sets that up; qboot, `microvm`'s, does
/// not; and this kernel has no other use for the APIC.
fn init_pic() {
    // SAFETY: every x86-64 CPU has the APIC base MSR; clearing its global enable only stops
    // the APIC, whose interrupts this kernel never asked for (interrupts are off here).
    unsafe { wrmsr(MSR_APIC_BASE, rdmsr(MSR_APIC_BASE) & !APIC_GLOBAL_ENABLE) };
    let base = FIRST_IRQ_VECTOR as u8;
    // SAFETY: the standard initialisation sequence (ICW1-4) of the PC's two PICs, which this
    // backend owns; interrupts are off while it runs (init's contract).
    unsafe {
        outb(PIC1_COMMAND, 0x11); // ICW1: initialise, ICW4 follows
        outb(PIC2_COMMAND, 0x11);
        outb(PIC1_DATA, base); // ICW2: first vector
        outb(PIC2_DATA, base + 8);
        outb(PIC1_DATA, 1 << 2); // ICW3: the second PIC hangs on IRQ 2
        outb(PIC2_DATA, 2);
        outb(PIC1_DATA, 0x01); // ICW4: 8086 mode
        outb(PIC2_DATA, 0x01);
        outb(PIC1_DATA, !0x01); // masks: only IRQ 0
        outb(PIC2_DATA, 0xff);
    }
}

fn eoi(irq: u32) {
    // SAFETY: EOI commands to the PICs, for an interrupt they raised.
    unsafe {
        if irq >= 8 {
            outb(PIC2_COMMAND, PIC_EOI);
        }
        outb(PIC1_COMMAND, PIC_EOI);
    }
}

/// isa-debug-exit's port (QEMU's `-device isa-debug-exit,iobase=0xf4,iosize=0x04`): QEMU exits
/// with status `2 * value + 1`, so 1 for success and 3 for failure.
const DEBUG_EXIT: u16 = 0xf4;

fn power_off(_message: &str, failed: bool) -> ! {
    // SAFETY: writing isa-debug-exit's port ends QEMU; without the device it does nothing.
    unsafe { outb(DEBUG_EXIT, u8::from(failed)) };
    loop {
        // SAFETY: with interrupts off, hlt stops this CPU for good.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

// ---- console: COM1 ----------------------------------------------------------------------------

const COM1: u16 = 0x3f8;
/// COM1's line status register; bit 5: the transmit register is empty.
const COM1_LSR: u16 = COM1 + 5;

fn write(bytes: &[u8]) {
    for &byte in bytes {
        // SAFETY: polling COM1's line status, then writing its data register, sends one byte
        // and does nothing else.
        unsafe {
            while inb(COM1_LSR) & 0x20 == 0 {
                core::hint::spin_loop();
            }
            outb(COM1, byte);
        }
    }
}
