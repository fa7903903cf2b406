//! paravirt-ops: what a kernel cannot do for itself at ring 1, behind one table.
//!
//! A kernel that runs on the bare machine turns interrupts off with `cli`, loads its IDT with
//! `lidt`, reads the faulting address of a page fault from CR2 and programs a timer chip. Under
//! lguest-rs the same kernel runs at ring 1, where every one of those instructions faults
//! (docs/hazards.md, "What ring 1 can and cannot do"). Linux solved this once for Xen and lguest
//! with `pv_ops`: a table of function pointers that starts out pointing at the native
//! instructions and that a hypervisor's boot code overwrites with its own versions. This crate is
//! that table for lguest-rs guests, with the same groups and, where Linux has one, the same
//! names:
//!
//! | op | Linux | native | lguest |
//! |----|-------|--------|--------|
//! | `cpu.write_idt_entry` | `pv_ops.cpu.write_idt_entry` | store the gate | store it, LOAD_IDT_ENTRY |
//! | `cpu.load_idt` | `pv_ops.cpu.load_idt` | `lidt` | nothing (the host has every entry) |
//! | `cpu.load_sp0` | `pv_ops.cpu.load_sp0` | TSS.RSP0 | SET_STACK |
//! | `cpu.syscall_init` | `syscall_init` (MSRs by `pv_ops.cpu.write_msr`) | EFER.SCE, STAR, LSTAR, FMASK | `lguest_data.syscall_vec` |
//! | `cpu.cpuid` | `pv_ops.cpu.cpuid` | `cpuid` | `cpuid`, filtered |
//! | `cpu.iret` | `INTERRUPT_RETURN` (32-bit: `pv_ops.cpu.iret`) | `iretq` | RPL 1; SEND_INTERRUPTS if one waits; virtual IF, `iretq` |
//! | `irq.save_fl` | `pv_ops.irq.save_fl` | `pushf` | load `irq_enabled` |
//! | `irq.restore_fl` | `pv_ops.irq.restore_fl` (until 5.10) | `popf` | store; SEND_INTERRUPTS if pending |
//! | `irq.irq_disable` | `pv_ops.irq.irq_disable` | `cli` | store 0 |
//! | `irq.irq_enable` | `pv_ops.irq.irq_enable` | `sti` | store IF; SEND_INTERRUPTS if pending |
//! | `irq.safe_halt` | `pv_ops.irq.safe_halt` | `sti; hlt` | store IF, HALT |
//! | `irq.unmask_irq` | `irq_chip.irq_unmask` (lguest: `enable_lguest_irq`) | clear the line's bit in the 8259's mask | clear its bit in `lguest_data.blocked_interrupts` |
//! | `mmu.read_cr2` | `pv_ops.mmu.read_cr2` | `mov cr2` | `lguest_data.cr2` |
//! | `mmu.write_cr3` | `pv_ops.mmu.write_cr3` | `mov cr3` | NEW_PGTABLE |
//! | `mmu.flush_tlb_one_user` | `pv_ops.mmu.flush_tlb_one_user` | `invlpg` | SET_PTE (queued in lazy mode) |
//! | `mmu.flush_tlb_user` | `pv_ops.mmu.flush_tlb_user` | CR3 reload | FLUSH_TLB 0 (queued in lazy mode) |
//! | `mmu.enter_lazy_mmu_mode` | `pv_ops.mmu.lazy_mode.enter` | nothing | start queuing |
//! | `mmu.leave_lazy_mmu_mode` | `pv_ops.mmu.lazy_mode.leave` | nothing | FLUSH_ASYNC, if anything is queued |
//! | `time.tsc_khz` | `x86_platform.calibrate_tsc` | timed against the PIT | `lguest_data.tsc_khz` |
//! | `time.set_next_event` | `clock_event_device.set_next_event` | PIT channel 0 | SET_CLOCKEVENT |
//! | [`time::sched_clock`] | `pv_ops.time.sched_clock` | TSC / `tsc_khz` | the same |
//! | `console.write` | early console (lguest: `hvc`) | COM1 | CONSOLE_WRITE |
//! | `platform.eoi` | `apic->eoi`, `irq_chip.irq_eoi` (lguest: `lguest_apic`) | 8259 PIC EOI | nothing |
//! | `platform.power_off` | `pm_power_off` | isa-debug-exit | SHUTDOWN |
//!
//! `platform` is not part of Linux's `pv_ops` (EOI belongs to the APIC driver, power-off to
//! `machine_ops`), but lguest replaced both too, and a kernel cannot do without them.
//!
//! ## How a kernel uses it
//!
//! The kernel's entry code calls [`init`] once, first thing, with the [`Backend`] its entry point
//! implies (the PVH entry: native; the lguest note's entry: lguest). From then on it calls the
//! wrappers in each group's module (`irq::irq_disable()`, `mmu::read_cr2()`, ...), which call
//! through the table. Its trap handlers end with a jump to [`cpu::interrupt_return`]; the
//! few things a kernel must know rather than call are in [`PvInfo`].
//!
//! ## Not here
//!
//! - `pv_ops.cpu.load_gdt`/`write_gdt_entry`/`load_tls`: the teaching guest runs on the host's
//!   GDT as it is (its native GDT copies the layout), and needs no TLS segments.
//! - The FPU ops (32-bit Linux's `clts`, `read_cr0`/`write_cr0` for lazy FPU switching with
//!   CR0.TS): lg.ko keeps a guest's FPU state apart from the launcher's, and a kernel switches
//!   its tasks' state itself with `fxsave`/`fxrstor`, which ring 1 may execute.
//! - The page-table ops (`pv_ops.mmu.set_pte`, `alloc_pte`, ...): the host reads the guest's
//!   tables itself when it builds a shadow, and hears of changes through the flush ops above.
//!
//! Every address this crate hands the host (a console buffer, the lguest_data page, a page-table
//! root) is taken as guest-physical: the kernels that use it so far run on an identity map. A
//! kernel linked elsewhere would translate (Linux's `__pa`).
#![no_std]

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

pub mod console;
pub mod cpu;
pub mod irq;
pub mod lguest;
pub mod mmu;
pub mod native;
pub mod platform;
pub mod time;

/// Which set of operations the kernel runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The bare machine (or a full emulator such as QEMU): the real instructions.
    Native,
    /// Ring 1 under lg.ko: hypercalls and the shared `lguest_data` page.
    Lguest,
}

/// What a kernel must know, rather than call: Linux's `pv_info`.
#[derive(Clone, Copy, Debug)]
pub struct PvInfo {
    /// The backend's name, for the boot banner (`pv_info.name`).
    pub name: &'static str,
    /// Which backend this is.
    pub backend: Backend,
    /// The ring the kernel runs in, which is also the RPL of its code and stack selectors:
    /// 0 natively, 1 under lguest (32-bit Linux's `pv_info.kernel_rpl`).
    pub kernel_rpl: u16,
}

/// The table: one group per `pv_ops` member, each a struct of function pointers.
#[repr(C)]
pub struct PvOps {
    pub info: PvInfo,
    pub cpu: cpu::CpuOps,
    pub irq: irq::IrqOps,
    pub mmu: mmu::MmuOps,
    pub time: time::TimeOps,
    pub console: console::ConsoleOps,
    pub platform: platform::PlatformOps,
}

/// The one table, native until [`init`] says otherwise, as Linux's `pv_ops` starts native.
/// `repr(transparent)`: [`cpu::interrupt_return`] jumps through a field of it by address.
#[repr(transparent)]
struct Table(UnsafeCell<PvOps>);

// SAFETY: the table is written once, by `init`, before the kernel enables interrupts or starts
// anything that could read it concurrently (its contract); afterwards it is only read.
unsafe impl Sync for Table {}

static PV_OPS: Table = Table(UnsafeCell::new(native::OPS));

/// Set by the first [`init`]: a second choice is a bug, not a change of mind.
static CHOSEN: AtomicBool = AtomicBool::new(false);

/// Chooses the backend and prepares it: the native one calibrates the TSC and quiets the PIC
/// and PIT; the lguest one registers `lguest_data` with LGUEST_INIT (the first hypercall the
/// host allows).
///
/// # Safety
///
/// Call once, first thing at boot, on one CPU, with interrupts off (natively IF clear, under
/// lguest the virtual flag starts off), and with the backend the entry point implies: the
/// native backend's instructions fault at ring 1, and the lguest backend's hypercalls mean
/// nothing on a machine without lg.ko.
pub unsafe fn init(backend: Backend) {
    if CHOSEN.swap(true, Ordering::SeqCst) {
        panic!("paravirt-ops: init called twice");
    }
    let ops = match backend {
        Backend::Native => native::OPS,
        Backend::Lguest => lguest::OPS,
    };
    // SAFETY: nothing reads the table concurrently (the contract above: one CPU, interrupts
    // off, nothing else running yet), so this one write cannot race.
    unsafe { *PV_OPS.0.get() = ops };
    match backend {
        Backend::Native => native::init(),
        Backend::Lguest => lguest::init(),
    }
}

/// The table, for the wrappers in each group's module.
pub fn ops() -> &'static PvOps {
    // SAFETY: the table is only written by `init`, before anything runs that could hold this
    // reference (see `Table`'s Sync).
    unsafe { &*PV_OPS.0.get() }
}

/// What the kernel must know about the backend it runs on.
pub fn info() -> PvInfo {
    ops().info
}
