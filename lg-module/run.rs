// SPDX-License-Identifier: GPL-2.0
//! Running a guest: the loop behind `read()` of `/dev/lguest`.
//!
//! `run` switches to the guest (`run_once`) and hands whatever brought it back to exit handling
//! (src/exit/), which decides, without touching hardware, what the host does: carry out a
//! hypercall, fix a page fault, deliver a trap or end the guest; an interrupt that was the
//! host's was already handed to the host's own handler, on the same CPU, before interrupts came
//! back on. Before each trip in, a pending interrupt is delivered if the guest's virtual
//! interrupt flag allows. Between two runs the task is an ordinary task: it can be preempted,
//! migrate to another CPU, or take a signal, which ends `read()` with -ERESTARTSYS (so Ctrl-C on
//! the launcher works). The guest is bound to a CPU only inside `run_once`, with interrupts off.
//!
//! This file is the hardware's side of that split: the trip itself, and what exit handling asks
//! of the host ([`KernelHost`], and [`Shadow`] for the guest's `Owner`). Every guest-physical
//! access goes through `LauncherRam` (src/guest_ram.rs), which checks it against RAM and then
//! copies with the kernel's fault-checked user copies (`LauncherMemory`): guest memory is the
//! launcher's.
//!
//! Every trip, exit, call from the asynchronous ring and interrupt delivered is counted in the
//! guest's [`ExitStats`], with the TSC cycles it took; `src/stats.rs` says which bucket each goes
//! in.

use crate::abi::boot::CPUNODE_GDT_ENTRY;
use crate::abi::data::{offset, SWITCHER_WINDOW_START};
use crate::abi::dev::Refusal;
use crate::abi::exit::{ExitKind, ExitRecord};
use crate::abi::stats::Bucket;
use crate::address::{GuestPhys, GuestVirt, HostPhys, LauncherAddr};
use crate::cpu::{self, CR4_PGE, CR4_PKE, CR4_SMAP, EFER_SCE};
use crate::death;
use crate::death::Death;
use crate::descriptors;
use crate::emulate::HostCpu;
use crate::exit::{self, Exit, GuestRam, Host, OutOfMemory, PinFailure, Shadow};
use crate::fast_syscall;
use crate::guest_ram::LauncherRam;
use crate::interrupts;
use crate::irqs::Interrupts;
use crate::layout::*;
use crate::lg_bindings;
use crate::owner::{LauncherMemory, Owner};
use crate::session::Guest;
use crate::stats::ExitStats;
use crate::switcher::Switcher;
use crate::traps::{self, Trap};
use core::sync::atomic::Ordering::SeqCst;
use kernel::{bindings, prelude::*};

/// What one trip into the guest brought back.
struct TrapInfo {
    exit: Exit,
    /// The vector plus one, if the trap came from inside the Switcher.
    switcher_fault: u64,
}

/// Run the guest until the launcher is needed: returns the exit for the launcher, or
/// ERESTARTSYS for a signal.
pub(crate) fn run(
    guest: &mut Guest<Owner>,
    switcher: &Switcher,
    irqs: &Interrupts,
    stats: &ExitStats,
) -> Result<ExitRecord> {
    let host = KernelHost {
        ram: LauncherRam {
            user: &LauncherMemory,
            base: guest.config.base,
            ram_bytes: guest.ram_bytes(),
        },
        irqs,
        xcr0: guest.owner.fpu.xcr0(),
    };
    let result = run_until_needed(guest, switcher, &host, stats);
    // Every trap from the guest left a null SS, as any interrupt from a lower ring does, and
    // Linux copes with that in kernel context; but on AMD CPUs a SYSRET back to the launcher
    // with SS null returns with an unusable SS (Linux's X86_BUG_SYSRET_SS_ATTRS, which it fixes
    // only when it switches tasks). So the kernel's SS comes back once, on the way out of read():
    // under TCG a load of SS costs about a tenth of a round trip (guest-many-switches' figure,
    // median of three: 117k cycles with a load per exit, 105k without), too much for every exit.
    // SAFETY: loads __KERNEL_DS, the selector Linux itself runs with, into SS.
    unsafe { lg_bindings::lg_load_kernel_ss() };
    result
}

/// `run`'s loop: trips into the guest until one ends in something for the launcher.
fn run_until_needed(
    guest: &mut Guest<Owner>,
    switcher: &Switcher,
    host: &KernelHost<'_>,
    stats: &ExitStats,
) -> Result<ExitRecord> {
    loop {
        if let Some(ended) = guest.ended {
            return Ok(ended);
        }
        if current!().signal_pending() {
            return Err(ERESTARTSYS);
        }
        // SAFETY: We hold no spinlock and run in process context.
        unsafe { lg_bindings::lg_cond_resched() };
        if let Err(death) = exit::deliver_interrupts(guest, host, stats)
            .and_then(|()| traps::check_entry(&mut guest.regs, &guest.tls))
        {
            guest.end(died(death));
            continue;
        }
        let entered = cpu::rdtsc();
        let trap = match run_once(guest, switcher) {
            Ok(trap) => trap,
            Err(death) => {
                guest.end(died(death));
                continue;
            }
        };
        let exited = cpu::rdtsc();
        stats.add(Bucket::SWITCHES, exited.saturating_sub(entered));
        if trap.switcher_fault != 0 {
            stats.add(Bucket::DIED, 0);
            let vector = trap.switcher_fault - 1;
            guest.end(died(death!(
                "fault inside the Switcher: trap {vector} ({})",
                traps::trap_name(vector)
            )));
            continue;
        }
        match exit::handle(guest, host, stats, trap.exit, exited) {
            Ok(Some(record)) => return Ok(record),
            Ok(None) => {}
            Err(death) => guest.end(died(death)),
        }
    }
}

fn died(death: Death) -> ExitRecord {
    ExitRecord::new(ExitKind::Died, death.as_bytes())
}

/// One trip: into the guest on this CPU, and back. Interrupts are off from before the switch
/// until the host has taken back whatever interrupt ended the trip.
///
/// Around the switch itself, everything of the host's that the Switcher does not swap is set
/// aside here and put back: EFER.SCE and SYSENTER_CS, the LDT, the hardware breakpoints, TSC_AUX,
/// PKRU, and the debug and XFD status a guest's trap leaves behind (docs/hazards.md lists why
/// each matters).
fn run_once(guest: &mut Guest<Owner>, switcher: &Switcher) -> Result<TrapInfo, Death> {
    // The Switcher parks the host's CR3 in KERNEL_GS_BASE, which takes only canonical values:
    // a CR3 with bits above 47 (an encryption bit, LAM) would fault in the middle of the switch.
    // The bits that could do so belong to the address space, not the moment, so one look
    // before the trip is enough.
    let host_cr3 = cpu::read_cr3();
    if !traps::is_canonical(host_cr3) {
        return Err(death!(
            "the launcher's CR3 ({host_cr3:#x}) is not a canonical address, which the Switcher \
             cannot park (linear address masking?)"
        ));
    }
    // The guest may use SSE and AVX registers: kernel_fpu_begin saves the launcher's first (they
    // come back before it returns to user space), then the guest's own go in (fpu.rs).
    // SAFETY: process context, not in an FPU section already.
    unsafe { lg_bindings::lg_fpu_begin() };
    // SAFETY: reading CR4 has no side effects.
    let cr4 = unsafe { lg_bindings::lg_read_cr4() } as u64;
    // PKRU is part of the XSAVE state, so the guest's xrstor replaces it: the launcher's value
    // must be read before, or the launcher would return to user space with the guest's keys
    // (Linux reloads PKRU only when it switches tasks).
    let pkru = (cr4 & CR4_PKE != 0).then(cpu::rdpkru);
    guest.owner.fpu.load();
    // SAFETY: Turning interrupts off in process context; on again below.
    unsafe { lg_bindings::lg_irq_disable() };
    // SAFETY: Interrupts are off, so we stay on this CPU until they are back on.
    let cpu = unsafe { lg_bindings::lg_this_cpu() } as u64;
    guest.owner.shadow.map_switcher_for(switcher, cpu);
    switcher.take_block(cpu, guest.owner.shadow.id());
    let direct = interrupts::direct_trap_handler(
        guest.idt[descriptors::DIRECT_TRAP_VECTOR].as_ref(),
        guest.kernel_stack,
    );
    switcher.set_syscall_gate(cpu, direct, guest.kernel_stack);
    let shadow = &guest.owner.shadow;
    // Before LGUEST_INIT there is no syscall_vec, and nothing to arm.
    let syscall_vec = shadow.guest_data_word(offset::SYSCALL_VEC).unwrap_or(0);
    let armed = fast_syscall::arm(
        guest.fast_paths,
        syscall_vec,
        guest.idt.get(syscall_vec as usize).and_then(Option::as_ref),
        guest.kernel_stack,
        |va| shadow.kernel_may_write(va),
    );
    switcher.set_fast_syscall(cpu, armed);
    let regs_page = switcher.block_page(cpu, BLOCK_REGS);
    let host_page = switcher.block_page(cpu, BLOCK_HOST);
    let frame = traps::frame_from_regs(&guest.regs);
    // SAFETY: The regs and host pages are this CPU's, allocated for every possible CPU at load;
    // with interrupts off nothing else on this CPU uses them, and other CPUs use their own.
    unsafe {
        core::ptr::copy_nonoverlapping(
            frame.as_ptr(),
            (regs_page + REGS_FRAME as usize) as *mut u64,
            frame.len(),
        );
    }

    // SAFETY: These MSRs exist on every x86-64 CPU; every one changed here is restored below,
    // before interrupts come back on.
    let (efer, sysenter_cs) =
        unsafe { (cpu::rdmsr(cpu::MSR_EFER), cpu::rdmsr(cpu::MSR_SYSENTER_CS)) };
    // The Switcher notes an NMI or machine check that interrupts it in TSC_AUX's high bits, and
    // the host re-raises whatever it finds there after the trip: the bits go in clear, so only
    // what happened during this trip comes out.
    // SAFETY: lg.ko loads only on CPUs with TSC_AUX (Switcher::new checks); the value written
    // is Linux's own with the Switcher's bits clear.
    let aux = unsafe {
        let raw = cpu::rdmsr(cpu::MSR_TSC_AUX);
        let aux = raw & !(AUX_NMI_PENDING | AUX_MC_PENDING);
        if raw != aux {
            cpu::wrmsr(cpu::MSR_TSC_AUX, aux);
        }
        aux
    };
    let (ds, es) = cpu::data_selectors();
    let (fs, gs) = cpu::fs_gs_selectors();
    // The Switcher loads a null LDT for the guest; the launcher's, if it has one, comes back.
    let host_ldt = cpu::ldt_selector();
    // SAFETY: reads this CPU's copy of DR7, as Linux keeps it.
    let host_breakpoints = unsafe { lg_bindings::lg_hw_breakpoint_active() };
    // SAFETY: lg_current_gdt_rw returns this CPU's writable GDT alias; we are pinned to it.
    let gdt_rw = unsafe { lg_bindings::lg_current_gdt_rw() } as u64;
    // The host's CPU-number segment, which a host NMI handler may look up in the guest's GDT
    // (abi::boot::CPUNODE_GDT_ENTRY), with its accessed bit set: the guest sees the GDT
    // read-only, so the CPU must never need to set it.
    // SAFETY: The host GDT has GDT_ENTRIES (16) entries; the state page holds the guest GDT at
    // STATE_GDT, with room for as many, and the host page four selector words at
    // HOST_GUEST_SELECTORS (src/layout.rs checks both); with interrupts off, only we use them.
    let cpunode = unsafe {
        let cpunode = ((gdt_rw as usize + CPUNODE_GDT_ENTRY * 8) as *const u64).read() | 1 << 40;
        let gdt = (switcher.block_page(cpu, BLOCK_STATE) + STATE_GDT as usize) as *mut u64;
        gdt.add(CPUNODE_GDT_ENTRY).write(cpunode);
        // And the guest's own TLS segments, checked when it set them (LOAD_GDT_ENTRY).
        let first = *crate::abi::boot::GUEST_TLS_ENTRIES.start() as usize;
        for (i, descriptor) in guest.tls.iter().enumerate() {
            gdt.add(first + i).write(*descriptor);
        }
        // The guest's segment selectors, each checked against this very GDT, as the guest
        // will have it (with its own CPU-number segment, which the Switcher puts in).
        let image: [u64; crate::abi::boot::GUEST_GDT_ENTRIES] = core::array::from_fn(|i| {
            if i == CPUNODE_GDT_ENTRY {
                descriptors::GUEST_CPUNODE
            } else {
                gdt.add(i).read()
            }
        });
        let segments = descriptors::segments_to_load(
            descriptors::Segments {
                selectors: guest.selectors,
                fs_base: guest.fs_base,
                gs_base: guest.gs_base,
            },
            &image,
        );
        (guest.selectors, guest.fs_base, guest.gs_base) =
            (segments.selectors, segments.fs_base, segments.gs_base);
        let words = (host_page + HOST_GUEST_SELECTORS as usize) as *mut u16;
        for (i, selector) in guest.selectors.iter().enumerate() {
            words.add(i).write(*selector);
        }
        cpunode
    };
    let host = |offset: u64, value: u64| {
        // SAFETY: In bounds of this CPU's host page (offsets from src/layout.rs), see above.
        unsafe { ((host_page + offset as usize) as *mut u64).write(value) }
    };
    // SAFETY: as above for the MSRs.
    let (host_fs_base, host_kernel_gs_base) = unsafe {
        (
            cpu::rdmsr(cpu::MSR_FS_BASE),
            cpu::rdmsr(cpu::MSR_KERNEL_GS_BASE),
        )
    };
    host(HOST_FS_BASE, host_fs_base);
    // SAFETY: as above for the MSRs.
    host(HOST_GS_BASE, unsafe { cpu::rdmsr(cpu::MSR_GS_BASE) });
    host(HOST_KERNEL_GS_BASE, host_kernel_gs_base);
    // The writable GDT alias as an lgdt operand: limit in the first word, base after it.
    host(HOST_GDTR_RW, cpu::gdt_limit() as u64 | gdt_rw << 16);
    host(HOST_GDTR_RW + 8, gdt_rw >> 48);
    host(HOST_DS, ds as u64);
    host(HOST_ES, es as u64);
    host(HOST_CR4, cr4);
    // No PGE, so the CR4 write flushes the host's global TLB entries (hazard 3); no SMAP, so
    // the guest kernel reaches its user pages. The Switcher writes the host's CR4 back before
    // any host code runs, and the guest could set AC with popf anyway: SMAP fences ring 1 off
    // from nothing.
    host(HOST_GUEST_CR4, cr4 & !(CR4_PGE | CR4_SMAP));
    host(HOST_GUEST_CR3, guest.owner.shadow.root_phys());
    // The host's CPU-number segment for the exit path to put back, and the guest's own for the
    // entry path to put in: a guest program's getcpu() must not see the host's CPU.
    host(HOST_CPUNODE, cpunode);
    host(HOST_GUEST_CPUNODE, descriptors::GUEST_CPUNODE);
    host(HOST_GUEST_FS_BASE, guest.fs_base);
    host(HOST_GUEST_GS_BASE, guest.gs_base);

    // SAFETY: `entry` is switch_to_guest in the window, mapped (by `install`) in this task's
    // address space, which is the one loaded. It returns with every register the host relies
    // on restored (switcher.S). EFER.SCE, SYSENTER_CS and the breakpoints are off only while
    // the guest runs; the LDT selector is the host's own, from this CPU's unchanged GDT.
    unsafe {
        if host_breakpoints {
            cpu::disarm_breakpoints();
        }
        cpu::wrmsr(cpu::MSR_EFER, efer & !EFER_SCE);
        cpu::wrmsr(cpu::MSR_SYSENTER_CS, 0);
        let switch: unsafe extern "C" fn(u64) = core::mem::transmute(switcher.entry() as usize);
        switch(SWITCHER_WINDOW_START + block_offset(cpu));
        cpu::wrmsr(cpu::MSR_SYSENTER_CS, sysenter_cs);
        cpu::wrmsr(cpu::MSR_EFER, efer);
        if host_ldt != 0 {
            cpu::load_ldt(host_ldt);
        }
    }
    // SAFETY: As above; this writes back Linux's own value.
    let noted = unsafe {
        let noted = cpu::rdmsr(cpu::MSR_TSC_AUX);
        cpu::wrmsr(cpu::MSR_TSC_AUX, aux);
        noted
    };
    // A guest that loaded FS or GS left its selector there; the launcher's comes back through
    // the kernel's own helpers (safe against NMIs), and then its bases, which loading reset.
    if cpu::fs_gs_selectors() != (fs, gs) {
        // SAFETY: Loads selectors the launcher had a moment ago; the bases are restored next.
        unsafe {
            lg_bindings::lg_load_fs_gs(fs, gs);
            cpu::wrmsr(cpu::MSR_FS_BASE, host_fs_base);
            cpu::wrmsr(cpu::MSR_KERNEL_GS_BASE, host_kernel_gs_base);
        }
    }
    // The guest's vector registers (and PKRU, which XSAVE includes) out before the host's
    // protection keys come back.
    guest.owner.fpu.save();
    if let Some(pkru) = pkru {
        cpu::wrpkru(pkru);
    }

    let mut frame = [0u64; FRAME_WORDS as usize];
    // SAFETY: As above: this CPU's regs page, in bounds.
    let (fs_base, gs_base, cr2, switcher_fault, selectors) = unsafe {
        core::ptr::copy_nonoverlapping(
            (regs_page + REGS_FRAME as usize) as *const u64,
            frame.as_mut_ptr(),
            frame.len(),
        );
        let word = |offset: u64| ((regs_page + offset as usize) as *const u64).read();
        let selectors = (regs_page + REGS_SELECTORS as usize) as *const u16;
        (
            word(REGS_FS_BASE),
            word(REGS_GS_BASE),
            word(REGS_CR2),
            word(REGS_SWITCHER_FAULT),
            core::array::from_fn::<u16, 4, _>(|i| selectors.add(i).read()),
        )
    };
    let mut trap = TrapInfo {
        exit: Exit {
            vector: frame[FrameWord::Vector as usize],
            error: frame[FrameWord::ErrorCode as usize],
            cr2,
            dr6: 0,
        },
        switcher_fault,
    };
    if switcher_fault == 0 {
        guest.regs = traps::regs_from_frame(&frame);
        // The exit path saved the real FS and GS bases here, but the guest can write this page
        // too: a non-canonical value would fault the next entry's wrmsr, so it is dropped.
        let canonical_or_zero = |base: u64| if traps::is_canonical(base) { base } else { 0 };
        guest.fs_base = canonical_or_zero(fs_base);
        guest.gs_base = canonical_or_zero(gs_base);
        // Checked before they are loaded again, like anything else from this page.
        guest.selectors = selectors;
    }
    // A #DB in the guest (TF, icebp, a bus lock) leaves its status bits in DR6, which Linux
    // clears only in its own #DB handler: a stale single-step bit would make the next host #DB
    // on this CPU look like a single step. Reset it (and re-arm the host's breakpoints) as KVM
    // does.
    let debug_trap = trap.exit.vector == traps::DEBUG || switcher_fault == traps::DEBUG + 1;
    if debug_trap {
        trap.exit.dr6 = cpu::read_dr6();
    }
    if host_breakpoints || debug_trap {
        // SAFETY: Writes back Linux's own DR0-3 and DR7 for this CPU and DR6's reset value.
        unsafe { lg_bindings::lg_hw_breakpoint_restore() };
    }
    // Likewise the record of which disabled feature a guest's #NM was for: Linux would read it
    // at the launcher's next #NM and act on the guest's AMX instruction.
    // SAFETY: reads a CPU feature bit fixed at boot; XFD_ERR exists when XFD does, and 0 is
    // its value when no #NM is pending.
    unsafe {
        if trap.exit.vector == traps::DEVICE_NOT_AVAILABLE && lg_bindings::lg_cpu_has_xfd() {
            cpu::wrmsr(cpu::MSR_XFD_ERR, 0);
        }
    }
    // Interrupts that were the host's go to the host's own handlers now, on this CPU, as if
    // they had just arrived: nothing is dropped.
    if noted & AUX_NMI_PENDING != 0 {
        reraise(traps::NMI);
    }
    if noted & AUX_MC_PENDING != 0 {
        reraise(traps::MACHINE_CHECK);
    }
    if switcher_fault == 0 {
        if let Trap::Host { vector } = traps::classify(trap.exit.vector, trap.exit.cr2) {
            reraise(vector);
        }
    }
    // SAFETY: Interrupts back on and the FPU section ended, as begun above.
    unsafe {
        lg_bindings::lg_irq_enable();
        lg_bindings::lg_fpu_end();
    }
    Ok(trap)
}

/// Hand the host an interrupt or exception that arrived while the guest ran (or while the
/// Switcher did), on this CPU, with interrupts still off: `int $vector` through the host's IDT,
/// except a machine check, which the handler must see as coming from the launcher's user mode
/// (helpers.c's lg_machine_check).
fn reraise(vector: u64) {
    // SAFETY: Both run the host's own handler for an event the hardware delivered to us, which
    // is what the handler expects; interrupts are off, as for a real one.
    unsafe {
        if vector == traps::MACHINE_CHECK {
            lg_bindings::lg_machine_check();
        } else {
            lg_bindings::lg_reraise(vector as u32);
        }
    }
}

/// The host as exit handling sees it (src/exit/mod.rs): the launcher's memory for guest RAM,
/// this guest's interrupts and timer, and this machine's CPU and clocks.
struct KernelHost<'a> {
    ram: LauncherRam<'static, LauncherMemory>,
    irqs: &'a Interrupts,
    xcr0: u64,
}

impl GuestRam for KernelHost<'_> {
    fn ram_bytes(&self) -> u64 {
        self.ram.ram_bytes
    }

    fn read(&self, gpa: u64, out: &mut [u8]) -> Result<(), Refusal> {
        self.ram.read(gpa, out)
    }

    fn write(&self, gpa: u64, bytes: &[u8]) -> Result<(), Refusal> {
        self.ram.write(gpa, bytes)
    }
}

impl Host for KernelHost<'_> {
    fn pending_irqs(&self) -> u64 {
        self.irqs.pending.load(SeqCst)
    }

    fn clear_irq(&self, irq: u32) {
        self.irqs.pending.fetch_and(!(1 << irq), SeqCst);
    }

    fn set_timer(&self, nanoseconds: u64) {
        self.irqs.set_timer(nanoseconds);
    }

    /// Whether an IRQ is deliverable depends on the guest's mask in lguest_data, a copy from
    /// user memory that may fault and sleep, so `ready` is asked while still running; only the
    /// lock-free pending word is looked at again after the sleep is announced. A wake-up between
    /// the look and schedule() either changed that word (raise() sets it before it wakes us) or
    /// put us back to running, and either way is not lost. The mask cannot change meanwhile:
    /// only the guest writes it, and the guest is here.
    fn halt(&self, ready: &dyn Fn() -> bool) {
        loop {
            let seen = self.irqs.pending.load(SeqCst);
            if ready() || current!().signal_pending() {
                return;
            }
            // SAFETY: process context; we end in TASK_RUNNING below.
            unsafe { lg_bindings::lg_prepare_to_sleep() };
            if self.irqs.pending.load(SeqCst) == seen && !current!().signal_pending() {
                // SAFETY: process context, no spinlocks held.
                unsafe { bindings::schedule() };
            }
            // SAFETY: process context.
            unsafe { lg_bindings::lg_finish_sleep() };
        }
    }

    fn cpu(&self) -> HostCpu {
        HostCpu {
            // SAFETY: reading CR4 has no side effects. The bits the guest is shown are the same
            // on every CPU, so which one this runs on does not matter.
            cr4: unsafe { lg_bindings::lg_read_cr4() } as u64,
            xcr0: self.xcr0,
        }
    }

    fn tsc_khz(&self) -> u64 {
        // SAFETY: reads a kernel variable set once the TSC is calibrated.
        unsafe { lg_bindings::lg_tsc_khz() as u64 }
    }

    fn wallclock_ns(&self) -> u64 {
        // SAFETY: reads the real-time clock, which any context may.
        unsafe { lg_bindings::lg_ktime_get_real_ns() }
    }

    fn now(&self) -> u64 {
        cpu::rdtsc()
    }
}

/// The shadow page tables (shadow_tables.rs) behind exit handling's [`Shadow`].
impl Shadow for Owner {
    fn pin(
        &mut self,
        gpa_page: GuestPhys,
        launcher_addr: LauncherAddr,
    ) -> Result<HostPhys, PinFailure> {
        self.shadow.pin(gpa_page, launcher_addr)
    }

    fn set_entry(&mut self, va: GuestVirt, pte: u64, global: bool) -> Result<bool, OutOfMemory> {
        self.shadow.map(va, pte, global).map_err(|_| OutOfMemory)
    }

    fn switch_to(
        &mut self,
        cr3: u64,
        flush: bool,
        now: &mut dyn FnMut(u64) -> Option<(u64, u64)>,
    ) -> Result<(), OutOfMemory> {
        self.shadow
            .switch_to(cr3, flush, now)
            .map_err(|_| OutOfMemory)
    }

    fn flush(&mut self, all: bool, now: &mut dyn FnMut(u64) -> Option<(u64, u64)>) {
        self.shadow.flush(all, now);
    }

    fn invalidate(&mut self, va: GuestVirt) {
        self.shadow.invalidate(va);
    }

    fn map_guest_data(
        &mut self,
        gpa_page: GuestPhys,
        launcher_addr: LauncherAddr,
    ) -> Result<(), PinFailure> {
        self.shadow.map_guest_data(gpa_page, launcher_addr)
    }
}
