//! `cpu`: the interrupt descriptor table, the kernel stack for traps from user mode, where
//! `syscall` goes, `cpuid`, and the return from a trap: Linux's `pv_ops.cpu`.
//!
//! Natively the kernel owns the IDT: it writes gates into a table and points the CPU at it with
//! `lidt`. Under lguest the real IDT is the Switcher's, and the kernel tells the host each gate
//! with LOAD_IDT_ENTRY; the host keeps them as a *virtual* IDT and delivers traps through it.
//! Either way the kernel builds the same [`Idt`] with the same [`Gate`]s and calls the same two
//! ops, so its trap code does not care where it runs.
//!
//! System calls get the same treatment. `int $0x80` from user mode needs nothing but a DPL 3
//! gate. The `syscall` instruction does not go through the IDT at all: natively it jumps to the
//! address in the LSTAR MSR, on the user's stack, so the kernel provides an entry point that
//! switches stacks itself; under lguest the host catches it and delivers it through the gate
//! of a vector the guest names, as if it were `int $n` (with RCX and R11 set as `syscall` sets
//! them). [`syscall_init`] takes both, the entry point and the vector, and each backend uses
//! the one it needs.

use core::arch::naked_asm;
use core::cell::UnsafeCell;
use core::mem::offset_of;

use crate::{ops, PvOps};

/// The `cpu` group.
pub struct CpuOps {
    /// Installs `gate` for `vector` in `idt` (`pv_ops.cpu.write_idt_entry`).
    pub write_idt_entry: fn(idt: &'static Idt, vector: u8, gate: Gate),
    /// Makes `idt` the table the CPU uses (`pv_ops.cpu.load_idt`).
    pub load_idt: fn(idt: &'static Idt),
    /// The top of the kernel stack a trap from user mode switches to (`pv_ops.cpu.load_sp0`).
    pub load_sp0: fn(sp0: u64),
    /// Makes `syscall` from user mode enter the kernel: natively at `entry`, with interrupts
    /// off, on the user's stack, RCX = the return address, R11 = the user's RFLAGS (Linux's
    /// `syscall_init`, through `pv_ops.cpu.write_msr`); under lguest as `int vector` (Xen PV
    /// registers a callback, `CALLBACKTYPE_syscall`, for the same job).
    pub syscall_init: fn(entry: unsafe extern "C" fn(), vector: u8),
    /// `cpuid` for `leaf` and `subleaf`, as this kernel may use it (`pv_ops.cpu.cpuid`).
    pub cpuid: fn(leaf: u32, subleaf: u32) -> Cpuid,
    /// The last step of every trap handler, jumped to (never called) with RSP at the CPU's
    /// frame (RIP, CS, RFLAGS, RSP, SS): Linux's `INTERRUPT_RETURN`. See [`interrupt_return`].
    pub iret: unsafe extern "C" fn(),
}

/// What `cpuid` returns.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpuid {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// What kind of gate: the CPU (and the lguest host) turns interrupts off on the way through an
/// interrupt gate and leaves them alone through a trap gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateKind {
    Interrupt = 0xe,
    Trap = 0xf,
}

/// One 16-byte 64-bit IDT gate (SDM 3A 6.14.1), as two quadwords: the layout LOAD_IDT_ENTRY
/// takes in RCX and RDX, too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Gate {
    pub low: u64,
    pub high: u64,
}

impl Gate {
    /// A present gate to `handler` in code segment `selector`, reachable with `int n` from rings
    /// up to `dpl`. IST 0: lguest gates may not switch stacks (the host refuses an IST).
    pub fn new(handler: u64, selector: u16, kind: GateKind, dpl: u8) -> Gate {
        let [low, high] =
            lguest_abi::hcall::idt_gate(handler, u64::from(selector), kind as u64, u64::from(dpl));
        Gate { low, high }
    }
}

/// 256 gates. The gates sit behind an `UnsafeCell` because the CPU reads the table while the
/// kernel may still be writing entries into it.
#[repr(C, align(16))]
pub struct Idt(UnsafeCell<[Gate; 256]>);

// SAFETY: gates are written only through `write_idt_entry` by a kernel with one CPU (the only
// kind that uses this crate so far), and read by the CPU or the host, never through a Rust
// reference that could see a torn write.
unsafe impl Sync for Idt {}

impl Idt {
    /// A table with no present gate.
    pub const fn new() -> Idt {
        Idt(UnsafeCell::new([Gate { low: 0, high: 0 }; 256]))
    }

    /// Where the table is, for `lidt`.
    pub fn base(&'static self) -> u64 {
        self.0.get() as u64
    }

    /// Stores `gate` for `vector`, for the backends.
    pub(crate) fn store(&'static self, vector: u8, gate: Gate) {
        let slot = self
            .0
            .get()
            .cast::<Gate>()
            .wrapping_add(usize::from(vector));
        // SAFETY: `slot` is inside the table (vector < 256); see `Idt`'s Sync for why no Rust
        // reference can observe the write half done.
        unsafe { slot.write_volatile(gate) };
    }
}

impl Default for Idt {
    fn default() -> Idt {
        Idt::new()
    }
}

/// Installs `gate` for `vector`.
pub fn write_idt_entry(idt: &'static Idt, vector: u8, gate: Gate) {
    (ops().cpu.write_idt_entry)(idt, vector, gate)
}

/// Makes `idt` the table traps go through.
pub fn load_idt(idt: &'static Idt) {
    (ops().cpu.load_idt)(idt)
}

/// Sets the kernel stack for traps from user mode.
pub fn load_sp0(sp0: u64) {
    (ops().cpu.load_sp0)(sp0)
}

/// Sets up the `syscall` instruction: see [`CpuOps::syscall_init`].
pub fn syscall_init(entry: unsafe extern "C" fn(), vector: u8) {
    (ops().cpu.syscall_init)(entry, vector)
}

/// `cpuid`, filtered by the backend.
pub fn cpuid(leaf: u32, subleaf: u32) -> Cpuid {
    (ops().cpu.cpuid)(leaf, subleaf)
}

/// The return from a trap handler: jump here (`jmp`, not `call`) with every register restored
/// and RSP pointing at the CPU's frame (RIP, CS, RFLAGS, RSP, SS; the error code already
/// dropped). It continues at the backend's `cpu.iret`, reading the table at run time, as
/// Linux's `INTERRUPT_RETURN` is patched at boot.
///
/// # Safety
///
/// Only as the tail of a trap handler, with the frame above at RSP.
#[unsafe(naked)]
pub unsafe extern "C" fn interrupt_return() {
    naked_asm!(
        "jmp qword ptr [rip + {table} + {iret}]",
        table = sym crate::PV_OPS,
        iret = const offset_of!(PvOps, cpu.iret),
    )
}
