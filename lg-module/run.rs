// SPDX-License-Identifier: GPL-2.0
//! Running a guest: the loop behind `read()` of `/dev/lguest`.
//!
//! `run` switches to the guest, and when it comes back looks at why: a hypercall or a page fault
//! the host handles itself and goes straight back in; an interrupt that was the host's is handed
//! to the host's own handler (on the same CPU, before interrupts come back on) and the guest
//! goes back in; an exception the guest has a handler for (LOAD_IDT_ENTRY) is delivered to it
//! (`deliver`), and one it has none for ends it. Before each trip in, a pending interrupt is
//! delivered if the guest's virtual interrupt flag allows (`deliver_interrupts`). Between two
//! runs the task is an ordinary task: it can be preempted, migrate to another CPU, or take a
//! signal, which ends `read()` with -ERESTARTSYS (so Ctrl-C on the launcher works). The guest is
//! bound to a CPU only inside `run_once`, with interrupts off.
//!
//! Every trip, exit, call from the asynchronous ring and interrupt delivered is counted in the
//! guest's [`ExitStats`], with the TSC cycles it took; `src/stats.rs` says which bucket each goes
//! in.
//!
//! Every guest-physical access goes through `GuestMemory`, which checks it against RAM and
//! then copies with the kernel's fault-checked user copies: guest memory is the launcher's.

use crate::abi::boot::{CPUNODE_GDT_ENTRY, GUEST_USER_CS};
use crate::abi::data::{
    offset, ASYNC_HCALLS, HCALL_DONE, HCALL_PENDING, SWITCHER_WINDOW_END, SWITCHER_WINDOW_START,
};
use crate::abi::dev::Refusal;
use crate::abi::exit::{ExitKind, ExitRecord, MmioAccess, MMIO_INSN_MAX};
use crate::abi::hcall::{self, CONSOLE_WRITE_MAX, FIRST_IRQ_VECTOR, SHUTDOWN_MESSAGE_MAX};
use crate::abi::regs::{Reg, Regs};
use crate::abi::stats::Bucket;
use crate::abi::PAGE_SIZE;
use crate::cpu::{self, CR4_PGE, CR4_PKE, CR4_SMAP, EFER_SCE};
use crate::death;
use crate::death::Death;
use crate::descriptors;
use crate::emulate;
use crate::fast_syscall;
use crate::hypercall::{self, Hypercall, Shutdown};
use crate::interrupts::{self, GuestGate};
use crate::irqs::Interrupts;
use crate::layout::*;
use crate::lg_bindings;
use crate::owner::Owner;
use crate::pagewalk::{self, GuestPhysRead};
use crate::session::Guest;
use crate::shadow::{self, shadow_pte_for, PhysLayout, Unresolved, PF_PRESENT};
use crate::shadow_tables::PinError;
use crate::stats::{self, ExitStats, Fault};
use crate::switcher::Switcher;
use crate::traps::{self, Trap};
use kernel::{bindings, prelude::*, uaccess::UserSlice};

/// Guest RAM, as the launcher mapped it: guest-physical `gpa` is user address `base + gpa`.
struct GuestMemory {
    base: u64,
    ram_bytes: u64,
}

impl GuestMemory {
    fn user(&self, gpa: u64, len: usize) -> Result<UserSlice, Refusal> {
        if !hypercall::in_ram(gpa, len as u64, self.ram_bytes) {
            return Err(Refusal::OutsideRam);
        }
        Ok(UserSlice::new((self.base + gpa) as usize, len))
    }

    fn read(&self, gpa: u64, out: &mut [u8]) -> Result<(), Refusal> {
        self.user(gpa, out.len())?
            .reader()
            .read_slice(out)
            .map_err(|_| Refusal::Fault)
    }

    fn write(&self, gpa: u64, bytes: &[u8]) -> Result<(), Refusal> {
        self.user(gpa, bytes.len())?
            .writer()
            .write_slice(bytes)
            .map_err(|_| Refusal::Fault)
    }
}

impl GuestPhysRead for GuestMemory {
    fn read_u64(&self, gpa: u64) -> Result<u64, Refusal> {
        let mut bytes = [0u8; 8];
        self.read(gpa, &mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }
}

/// What one trip into the guest brought back.
struct TrapInfo {
    vector: u64,
    error: u64,
    cr2: u64,
    /// The vector plus one, if the trap came from inside the Switcher.
    switcher_fault: u64,
    /// DR6 after a debug exception (0 after any other trap).
    dr6: u64,
}

/// Run the guest until the launcher is needed: returns the exit for the launcher, or
/// ERESTARTSYS for a signal.
pub(crate) fn run(
    guest: &mut Guest<Owner>,
    switcher: &Switcher,
    irqs: &Interrupts,
    stats: &ExitStats,
) -> Result<ExitRecord> {
    let result = run_until_needed(guest, switcher, irqs, stats);
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
    irqs: &Interrupts,
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
        if let Err(death) = deliver_interrupts(guest, irqs, stats)
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
        // RAX before the hypercall answers in it: the call's number, for its bucket.
        let rax = guest.regs.get(Reg::Rax);
        let (fault, outcome) = match traps::classify(trap.vector, trap.cr2) {
            Trap::Host { .. } => (None, Ok(None)),
            Trap::Hypercall => (None, hypercall(guest, irqs, stats)),
            Trap::PageFault { addr } => match page_fault(guest, addr, trap.error) {
                Ok((fault, exit)) => (Some(fault), Ok(exit)),
                Err(death) => (None, Err(death)),
            },
            // Ring 1 cannot read DR6: a #DB's reason goes to lguest_data, as a #PF's CR2 does.
            Trap::Fatal if trap.vector == traps::DEBUG => (
                None,
                set_data(guest, offset::DR6, trap.dr6)
                    .and_then(|()| exception(guest, trap.vector, trap.error))
                    .map(|()| None),
            ),
            Trap::Fatal => (
                None,
                exception(guest, trap.vector, trap.error).map(|()| None),
            ),
        };
        let bucket = stats::exit_bucket(trap.vector, rax, fault, outcome.is_err());
        stats.add(bucket, cpu::rdtsc().saturating_sub(exited));
        match outcome {
            Ok(Some(exit)) => return Ok(exit),
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
        vector: frame[FrameWord::Vector as usize],
        error: frame[FrameWord::ErrorCode as usize],
        cr2,
        switcher_fault,
        dr6: 0,
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
    let debug_trap = trap.vector == traps::DEBUG || switcher_fault == traps::DEBUG + 1;
    if debug_trap {
        trap.dr6 = cpu::read_dr6();
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
        if trap.vector == traps::DEVICE_NOT_AVAILABLE && lg_bindings::lg_cpu_has_xfd() {
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
        if let Trap::Host { vector } = traps::classify(trap.vector, trap.cr2) {
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

fn memory(guest: &Guest<Owner>) -> GuestMemory {
    GuestMemory {
        base: guest.config.base,
        ram_bytes: guest.ram_bytes(),
    }
}

/// Carry out a hypercall; `Some` if the launcher must see its result.
fn hypercall(
    guest: &mut Guest<Owner>,
    irqs: &Interrupts,
    stats: &ExitStats,
) -> Result<Option<ExitRecord>, Death> {
    let call = hypercall::decode(
        &guest.regs,
        guest.lguest_data.is_some(),
        memory(guest).ram_bytes,
    )?;
    // What the guest queued comes first: it was asked for before this call (lguest's rule).
    drain_async(guest, irqs, stats)?;
    carry_out(guest, irqs, call)
}

/// Carry out the calls queued in the guest's asynchronous ring, in order, from where the host
/// stopped last; each slot is marked done as it is carried out.
fn drain_async(
    guest: &mut Guest<Owner>,
    irqs: &Interrupts,
    stats: &ExitStats,
) -> Result<(), Death> {
    let Some(data) = guest.lguest_data else {
        return Ok(());
    };
    let mem = memory(guest);
    for _ in 0..ASYNC_HCALLS {
        let started = cpu::rdtsc();
        let slot = guest.next_async;
        let status_at = data + offset::HCALL_STATUS + slot as u64;
        let mut status = [0u8; 1];
        mem.read(status_at, &mut status)
            .map_err(|_| death!("lguest_data at {data:#x} is not readable"))?;
        if status[0] != HCALL_PENDING {
            return Ok(());
        }
        let mut words = [0u8; 48];
        mem.read(data + offset::HCALLS + slot as u64 * 48, &mut words)
            .map_err(|_| death!("lguest_data at {data:#x} is not readable"))?;
        let word =
            |i: usize| u64::from_le_bytes(words[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        let mut regs = Regs::default();
        for (i, reg) in [Reg::Rax, Reg::Rbx, Reg::Rcx, Reg::Rdx, Reg::Rsi, Reg::Rdi]
            .into_iter()
            .enumerate()
        {
            regs.set(reg, word(i));
        }
        let call = hypercall::decode(&regs, true, mem.ram_bytes)?;
        if !call.may_be_queued() {
            return Err(death!(
                "hypercall {} queued in the asynchronous ring",
                word(0)
            ));
        }
        carry_out(guest, irqs, call)?;
        mem.write(status_at, &[HCALL_DONE])
            .map_err(|_| death!("lguest_data at {data:#x} is not writable"))?;
        guest.next_async = (slot + 1) % ASYNC_HCALLS;
        if let Some(bucket) = Bucket::queued(word(0)) {
            stats.add(bucket, cpu::rdtsc().saturating_sub(started));
        }
    }
    Ok(())
}

/// Carry out one decoded hypercall; `Some` if the launcher must see its result.
fn carry_out(
    guest: &mut Guest<Owner>,
    irqs: &Interrupts,
    call: Hypercall,
) -> Result<Option<ExitRecord>, Death> {
    let mem = memory(guest);
    let unreadable = |what: &str| death!("{what}: guest memory is not readable");
    match call {
        Hypercall::LguestInit { data_gpa } => {
            // Only the host's fields: a guest may have set its own before registering the page.
            // SAFETY: reads a kernel variable set once the TSC is calibrated.
            let tsc_khz = unsafe { lg_bindings::lg_tsc_khz() } as u64;
            // SAFETY: reads the real-time clock, which any context may.
            let wallclock_ns = unsafe { lg_bindings::lg_ktime_get_real_ns() };
            let host_fields = [
                (offset::SWITCHER_WINDOW_START, SWITCHER_WINDOW_START),
                (offset::SWITCHER_WINDOW_END, SWITCHER_WINDOW_END),
                (offset::TSC_KHZ, tsc_khz),
                (offset::WALLCLOCK_NS, wallclock_ns),
            ];
            for (field, value) in host_fields {
                mem.write(data_gpa + field, &value.to_le_bytes())
                    .map_err(|_| death!("LGUEST_INIT: guest memory is not writable"))?;
            }
            guest
                .owner
                .shadow
                .map_guest_data(data_gpa, mem.base + data_gpa)
                .map_err(|_| death!("LGUEST_INIT: cannot pin the lguest_data page"))?;
            guest.lguest_data = Some(data_gpa);
            Ok(None)
        }
        Hypercall::Shutdown { message_gpa, how } => {
            let mut message = [0u8; SHUTDOWN_MESSAGE_MAX];
            let len = (mem.ram_bytes - message_gpa).min(SHUTDOWN_MESSAGE_MAX as u64) as usize;
            mem.read(message_gpa, &mut message[..len])
                .map_err(|_| unreadable("SHUTDOWN"))?;
            let text = message[..len].split(|&b| b == 0).next().unwrap_or(&[]);
            let record = match how {
                Shutdown::PowerOff => ExitRecord::new(ExitKind::PowerOff, text),
                Shutdown::Restart => ExitRecord::new(ExitKind::Restart, text),
                // A crash ends the guest as a death does, in the guest's own words.
                Shutdown::Crash => {
                    let mut reason = [0u8; SHUTDOWN_MESSAGE_MAX + 16];
                    let prefix = b"it crashed: ";
                    reason[..prefix.len()].copy_from_slice(prefix);
                    reason[prefix.len()..prefix.len() + text.len()].copy_from_slice(text);
                    ExitRecord::new(ExitKind::Died, &reason[..prefix.len() + text.len()])
                }
            };
            guest.end(record);
            Ok(Some(record))
        }
        Hypercall::Halt => {
            halt(guest, irqs);
            Ok(None)
        }
        Hypercall::LoadIdtEntry { vector, gate } => {
            guest.idt[vector as usize] = gate;
            Ok(None)
        }
        Hypercall::SetStack { top } => {
            guest.kernel_stack = top;
            Ok(None)
        }
        Hypercall::SetClockevent { nanoseconds } => {
            irqs.set_timer(nanoseconds);
            Ok(None)
        }
        // Pending interrupts are delivered before every trip in: this one just makes the trip.
        Hypercall::SendInterrupts => Ok(None),
        Hypercall::NewPgtable { cr3, flush } => {
            let phys = phys_layout(guest);
            guest
                .owner
                .shadow
                .switch_to(cr3, flush, |va| shadow_after_flush(&mem, cr3, va, phys))
                .map_err(|_| death!("out of memory for shadow page tables"))?;
            guest.cr3 = cr3;
            Ok(None)
        }
        Hypercall::FlushTlb { all } => {
            let (cr3, phys) = (guest.cr3, phys_layout(guest));
            guest
                .owner
                .shadow
                .flush(all, |va| shadow_after_flush(&mem, cr3, va, phys));
            Ok(None)
        }
        Hypercall::SetPte { va } => {
            guest.owner.shadow.invalidate(va);
            Ok(None)
        }
        // The ring was drained before this call was carried out.
        Hypercall::FlushAsync => Ok(None),
        Hypercall::LoadGdtEntry { index, descriptor } => {
            let first = *crate::abi::boot::GUEST_TLS_ENTRIES.start();
            guest.tls[(index - first) as usize] = descriptor;
            Ok(None)
        }
        Hypercall::ConsoleWrite { gpa, len } => {
            let mut bytes = [0u8; CONSOLE_WRITE_MAX];
            mem.read(gpa, &mut bytes[..len])
                .map_err(|_| unreadable("CONSOLE_WRITE"))?;
            Ok(Some(ExitRecord::new(ExitKind::Console, &bytes[..len])))
        }
        Hypercall::Nop => Ok(None),
    }
}

/// Guest-physical memory as the shadow sees it: RAM, then the device pages.
fn phys_layout(guest: &Guest<Owner>) -> PhysLayout {
    PhysLayout {
        ram_bytes: guest.ram_bytes(),
        device_limit: guest.config.device_limit * PAGE_SIZE,
    }
}

/// What a shadow entry for `va` may hold after a flush of the page tables at `cr3`, as they
/// say now (`shadow::after_flush`); nothing if they cannot be read.
fn shadow_after_flush(
    mem: &GuestMemory,
    cr3: u64,
    va: u64,
    phys: PhysLayout,
) -> Option<(u64, u64)> {
    let leaf = pagewalk::walk(mem, mem.ram_bytes, cr3, va).ok()?;
    shadow::after_flush(leaf, phys)
}

/// Handle a page fault at `addr`: map the page if the guest's tables allow the access, hand a
/// device access to the launcher, else give the guest the fault. Says which it was, for the
/// exit statistics.
fn page_fault(
    guest: &mut Guest<Owner>,
    addr: u64,
    error: u64,
) -> Result<(Fault, Option<ExitRecord>), Death> {
    let mem = memory(guest);
    let leaf = pagewalk::walk(&mem, mem.ram_bytes, guest.cr3, addr)
        .map_err(|_| death!("page fault at {addr:#x}: the guest's page tables lie outside RAM"))?;
    let mapping = match shadow::decide(addr, error, leaf, phys_layout(guest)) {
        Ok(mapping) => mapping,
        Err(Unresolved::Kill(death)) => return Err(death),
        Err(Unresolved::Reflect { error, death }) => {
            return deliver_page_fault(guest, addr, error, death).map(|()| (Fault::Reflected, None))
        }
        Err(Unresolved::Device { gpa, write }) => {
            let device = Fault::device(gpa, mem.ram_bytes);
            return Ok((device, Some(mmio_exit(guest, gpa, write))));
        }
    };
    if let Some(leaf) = leaf {
        if mapping.updated_entry != leaf.entry {
            mem.write(leaf.entry_gpa, &mapping.updated_entry.to_le_bytes())
                .map_err(|_| {
                    death!("page fault at {addr:#x}: cannot update the guest's page table")
                })?;
        }
    }
    let shadow = &mut guest.owner.shadow;
    let phys = shadow
        .pin(mapping.gpa_page, mem.base + mapping.gpa_page)
        .map_err(|err| match err {
            PinError::Gone => {
                death!("page fault at {addr:#x}: the launcher's memory for it is gone")
            }
            PinError::OverMemlock => death!(
                "page fault at {addr:#x}: pinning another page would exceed the launcher's \
                 RLIMIT_MEMLOCK (raise it with ulimit -l, or give it CAP_IPC_LOCK)"
            ),
            PinError::NoMemory => death!("page fault at {addr:#x}: the host is out of memory"),
        })?;
    let changed = shadow
        .map(
            addr & !0xfff,
            shadow_pte_for(&mapping, phys),
            mapping.global,
        )
        .map_err(|_| death!("page fault at {addr:#x}: out of memory for shadow page tables"))?;
    if !changed {
        // The guest's tables allow it, yet the CPU refused: SMAP, SMEP or a protection key.
        // On real hardware the guest kernel would get this fault; so it does here.
        let death =
            death!("page fault at {addr:#x} (error {error:#x}): SMAP, SMEP or a protection key");
        return deliver_page_fault(guest, addr, error | PF_PRESENT, death)
            .map(|()| (Fault::Reflected, None));
    }
    Ok((Fault::Fixed, None))
}

/// The exit for a guest access to a device page: where, which way, and the instruction and
/// registers the launcher needs to emulate it. The guest stays at the instruction until the
/// launcher moves its RIP.
fn mmio_exit(guest: &Guest<Owner>, gpa: u64, write: bool) -> ExitRecord {
    let (insn, insn_len) = fetch_instruction(guest, guest.regs.get(Reg::Rip));
    MmioAccess {
        gpa,
        write,
        insn,
        insn_len,
        regs: guest.regs,
    }
    .to_record()
}

/// Give the guest a page fault at `addr` with `error`, through its handler; `death` if it has
/// none.
fn deliver_page_fault(
    guest: &mut Guest<Owner>,
    addr: u64,
    error: u64,
    death: Death,
) -> Result<(), Death> {
    let Some(gate) = guest.idt[traps::PAGE_FAULT as usize] else {
        return Err(death);
    };
    set_data(guest, offset::CR2, addr)?;
    deliver(guest, traps::PAGE_FAULT, Some(error), &gate)
}

/// An exception the host does not handle itself: the guest's, if it has a handler for it.
///
/// An `int n` the guest's IDT allows arrives as #GP (the real IDT lets the guest through only
/// the hypercall gate): it becomes vector n, resuming after the instruction, as the CPU would.
/// So do the few privileged instructions the host emulates for the guest kernel (src/emulate.rs).
fn exception(guest: &mut Guest<Owner>, vector: u64, error: u64) -> Result<(), Death> {
    let rip = guest.regs.get(Reg::Rip);
    let cpl = guest.regs.get(Reg::Cs) & 3;
    if vector == traps::GENERAL_PROTECTION {
        let (insn, len) = fetch_instruction(guest, rip);
        let insn = &insn[..len];
        let soft = interrupts::software_interrupt(
            error,
            cpl,
            guest
                .idt
                .get((error >> 3) as usize)
                .and_then(Option::as_ref),
        );
        if let Some(n) = soft {
            let length = emulate::int_length(insn, n);
            if let (Some(length), Some(gate)) = (length, guest.idt[n as usize]) {
                emulate::complete(&mut guest.regs, length);
                return deliver(guest, n, None, &gate);
            }
        }
        // A privileged instruction a Linux kernel runs without a hook (abi::privileged).
        let host = emulate::HostCpu {
            // SAFETY: reading CR4 has no side effects. The bits the guest is shown are the same
            // on every CPU, so which one this runs on does not matter.
            cr4: unsafe { lg_bindings::lg_read_cr4() } as u64,
            xcr0: guest.owner.fpu.xcr0(),
        };
        if emulate::emulate(insn, error, &mut guest.regs, host)? {
            return Ok(());
        }
    }
    // `syscall` from guest user mode is #UD (the host keeps EFER.SCE off while a guest runs):
    // delivered as the guest's syscall vector, with RCX, R11 and RFLAGS as SYSCALL would set
    // them. In compatibility mode it stays #UD, as on Intel's CPUs.
    if vector == traps::INVALID_OPCODE && guest.regs.get(Reg::Cs) == GUEST_USER_CS {
        let syscall_vec = get_data(guest, offset::SYSCALL_VEC)?;
        let (insn, len) = fetch_instruction(guest, rip);
        let gate = guest.idt.get(syscall_vec as usize).copied().flatten();
        if let (true, Some(gate)) = (emulate::is_syscall(&insn[..len]) && syscall_vec != 0, gate) {
            // As the Switcher's fast path does it when armed (src/fast_syscall.rs).
            let enabled = get_data(guest, offset::IRQ_ENABLED)?;
            let delivery = fast_syscall::deliver(&guest.regs, &gate, guest.kernel_stack, enabled)?;
            push_frame(guest, syscall_vec, delivery.frame_at, &delivery.frame)?;
            guest.regs = delivery.regs;
            if delivery.clears_if {
                set_data(guest, offset::IRQ_ENABLED, 0)?;
            }
            return Ok(());
        }
    }
    // The guest kernel's own `iretq` back to user mode refused the frame: the fault is the user
    // program's, at the frame's target (src/interrupts.rs).
    if let Some(frame) = refused_return_to_user(guest, vector) {
        interrupts::rewind_to_iret_target(&mut guest.regs, &frame);
    }
    // A double fault means the guest could not take a fault: there is nothing to reflect into.
    let gate = guest.idt[vector as usize].filter(|_| vector != traps::DOUBLE_FAULT);
    let Some(gate) = gate else {
        return Err(death!(
            "trap {vector} ({}) at rip {rip:#x}, error {error:#x}",
            traps::trap_name(vector)
        ));
    };
    let error = interrupts::has_error_code(vector).then_some(error);
    deliver(guest, vector, error, &gate)
}

/// If the guest kernel took `vector` at an `iretq` to user mode that the CPU refused, the frame
/// it was popping (RIP, CS, RFLAGS, RSP, SS).
fn refused_return_to_user(guest: &Guest<Owner>, vector: u64) -> Option<[u64; 5]> {
    let cpl = guest.regs.get(Reg::Cs) & 3;
    if cpl == 3 || !interrupts::IRET_FAULTS.contains(&vector) {
        return None;
    }
    let (insn, len) = fetch_instruction(guest, guest.regs.get(Reg::Rip));
    let mut bytes = [0u8; 40];
    read_virtual(guest, guest.regs.get(Reg::Rsp), &mut bytes).ok()?;
    let frame: [u64; 5] = core::array::from_fn(|i| {
        u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]))
    });
    interrupts::is_refused_return_to_user(vector, cpl, &insn[..len], &frame).then_some(frame)
}

/// The instruction at guest-virtual `rip`, read through the guest's page tables: up to
/// MMIO_INSN_MAX bytes, fewer where the next page is not mapped (none if RIP's page is not),
/// and how many. Each byte is read once: guest memory is the launcher's too, and may change
/// between two reads, so whatever the host decides must be decided on one copy.
fn fetch_instruction(guest: &Guest<Owner>, rip: u64) -> ([u8; MMIO_INSN_MAX], usize) {
    let mut insn = [0u8; MMIO_INSN_MAX];
    let in_page = ((0x1000 - (rip & 0xfff)) as usize).min(MMIO_INSN_MAX);
    if read_virtual(guest, rip, &mut insn[..in_page]).is_err() {
        return (insn, 0);
    }
    let next = rip.wrapping_add(in_page as u64);
    if in_page == MMIO_INSN_MAX || read_virtual(guest, next, &mut insn[in_page..]).is_err() {
        return (insn, in_page);
    }
    (insn, MMIO_INSN_MAX)
}

/// The IRQ the guest could take next: pending, not masked, with a handler. An IRQ the guest has
/// no handler for stays pending, as on a masked line.
fn deliverable_irq(guest: &Guest<Owner>, irqs: &Interrupts) -> Result<Option<u32>, Death> {
    let pending = irqs.pending.load(core::sync::atomic::Ordering::SeqCst);
    if pending == 0 {
        return Ok(None);
    }
    let handled = (0..hcall::IRQS)
        .filter(|irq| guest.idt[(FIRST_IRQ_VECTOR + *irq as u64) as usize].is_some())
        .fold(0u64, |mask, irq| mask | 1 << irq);
    let blocked = get_data(guest, offset::BLOCKED_INTERRUPTS)?;
    Ok(interrupts::next_irq(pending & handled, blocked))
}

/// Deliver a pending interrupt if the guest can take one now; if one waits only for its
/// virtual flag, say so in `irq_pending` (the guest's irq_enable then makes SEND_INTERRUPTS).
fn deliver_interrupts(
    guest: &mut Guest<Owner>,
    irqs: &Interrupts,
    stats: &ExitStats,
) -> Result<(), Death> {
    if guest.lguest_data.is_none() {
        return Ok(());
    }
    let Some(irq) = deliverable_irq(guest, irqs)? else {
        return Ok(());
    };
    let started = cpu::rdtsc();
    let enabled = get_data(guest, offset::IRQ_ENABLED)?;
    let noirq = (
        get_data(guest, offset::NOIRQ_IRET_START)?,
        get_data(guest, offset::NOIRQ_IRET_END)?,
    );
    if !interrupts::may_interrupt(enabled, guest.regs.get(Reg::Rip), noirq) {
        return set_data(guest, offset::IRQ_PENDING, 1);
    }
    let vector = FIRST_IRQ_VECTOR + irq as u64;
    let gate = guest.idt[vector as usize].ok_or_else(|| death!("IRQ {irq} lost its handler"))?;
    irqs.pending
        .fetch_and(!(1 << irq), core::sync::atomic::Ordering::SeqCst);
    // Nothing else waits unless another deliverable IRQ does.
    let more = deliverable_irq(guest, irqs)?.is_some();
    set_data(guest, offset::IRQ_PENDING, more as u64)?;
    deliver(guest, vector, None, &gate)?;
    if let Some(bucket) = Bucket::irq(irq.into()) {
        stats.add(bucket, cpu::rdtsc().saturating_sub(started));
    }
    Ok(())
}

/// Deliver `vector` through the guest's `gate`: push the frame the CPU would have pushed onto
/// the guest kernel's stack and resume the guest at the handler (`src/interrupts.rs`).
fn deliver(
    guest: &mut Guest<Owner>,
    vector: u64,
    error: Option<u64>,
    gate: &GuestGate,
) -> Result<(), Death> {
    let enabled = get_data(guest, offset::IRQ_ENABLED)?;
    let (frame, words) = interrupts::trap_frame(&guest.regs, enabled, error);
    let at = interrupts::frame_address(&guest.regs, guest.kernel_stack, words)?;
    push_frame(guest, vector, at, &frame[..words])?;
    interrupts::enter_handler(&mut guest.regs, gate, at);
    if gate.interrupt_gate {
        set_data(guest, offset::IRQ_ENABLED, 0)?;
    }
    Ok(())
}

/// Write the trap frame `words` for `vector` at guest-virtual `at`, through the guest's page
/// tables.
fn push_frame(guest: &Guest<Owner>, vector: u64, at: u64, words: &[u64]) -> Result<(), Death> {
    let mut bytes = [0u8; 48];
    let len = (words.len() * 8).min(bytes.len());
    for (i, byte) in bytes[..len].iter_mut().enumerate() {
        *byte = (words[i / 8] >> (8 * (i % 8))) as u8;
    }
    write_virtual(guest, at, &bytes[..len])
        .map_err(|_| death!("cannot deliver trap {vector}: its stack at {at:#x} is not writable"))
}

/// Sleep until an interrupt the guest can take is pending (unmasked, with a handler), or a
/// signal comes.
///
/// Whether an IRQ is deliverable depends on the guest's mask in lguest_data, a copy from user
/// memory that may fault and sleep, so it is looked at while still running; only the
/// lock-free pending word is looked at again after the sleep is announced. A wake-up between
/// the look and schedule() either changed that word (raise() sets it before it wakes us) or
/// put us back to running, and either way is not lost. The mask cannot change meanwhile: only
/// the guest writes it, and the guest is here.
fn halt(guest: &Guest<Owner>, irqs: &Interrupts) {
    use core::sync::atomic::Ordering::SeqCst;
    loop {
        let seen = irqs.pending.load(SeqCst);
        // A guest whose lguest_data cannot be read is woken, and dies at the next look.
        let ready = deliverable_irq(guest, irqs).map_or(true, |irq| irq.is_some());
        if ready || current!().signal_pending() {
            return;
        }
        // SAFETY: process context; we end in TASK_RUNNING below.
        unsafe { lg_bindings::lg_prepare_to_sleep() };
        if irqs.pending.load(SeqCst) == seen && !current!().signal_pending() {
            // SAFETY: process context, no spinlocks held.
            unsafe { bindings::schedule() };
        }
        // SAFETY: process context.
        unsafe { lg_bindings::lg_finish_sleep() };
    }
}

/// A word of the guest's lguest_data (0 before LGUEST_INIT).
fn get_data(guest: &Guest<Owner>, field: u64) -> Result<u64, Death> {
    let Some(data) = guest.lguest_data else {
        return Ok(0);
    };
    memory(guest)
        .read_u64(data + field)
        .map_err(|_| death!("lguest_data at {data:#x} is not readable"))
}

/// Write a word of the guest's lguest_data (nothing before LGUEST_INIT).
fn set_data(guest: &Guest<Owner>, field: u64, value: u64) -> Result<(), Death> {
    let Some(data) = guest.lguest_data else {
        return Ok(());
    };
    memory(guest)
        .write(data + field, &value.to_le_bytes())
        .map_err(|_| death!("lguest_data at {data:#x} is not writable"))
}

/// Guest-virtual `va..va + len`, translated through the guest's page tables one page at a
/// time: `each(gpa, offset, length)` for every piece; with `write`, every page must be mapped
/// writable.
fn for_each_page(
    guest: &Guest<Owner>,
    va: u64,
    len: usize,
    write: bool,
    mut each: impl FnMut(&GuestMemory, u64, usize, usize) -> Result<(), Refusal>,
) -> Result<(), Refusal> {
    let mem = memory(guest);
    let mut done = 0;
    while done < len {
        let at = va.wrapping_add(done as u64);
        let in_page = ((0x1000 - (at & 0xfff)) as usize).min(len - done);
        let leaf = pagewalk::walk(&mem, mem.ram_bytes, guest.cr3, at)?.ok_or(Refusal::Fault)?;
        if write && !leaf.writable {
            return Err(Refusal::Fault);
        }
        each(&mem, leaf.gpa, done, in_page)?;
        done += in_page;
    }
    Ok(())
}

/// Read guest-virtual memory.
fn read_virtual(guest: &Guest<Owner>, va: u64, out: &mut [u8]) -> Result<(), Refusal> {
    let len = out.len();
    for_each_page(guest, va, len, false, |mem, gpa, at, n| {
        mem.read(gpa, &mut out[at..at + n])
    })
}

/// Write guest-virtual memory the guest's page tables map writable.
fn write_virtual(guest: &Guest<Owner>, va: u64, bytes: &[u8]) -> Result<(), Refusal> {
    for_each_page(guest, va, bytes.len(), true, |mem, gpa, at, n| {
        mem.write(gpa, &bytes[at..at + n])
    })
}
