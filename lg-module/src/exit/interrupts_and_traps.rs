//! Interrupts and traps: a trap the host does not handle itself becomes what the CPU would have
//! made of it for a kernel at ring 0 (an `int n`, a `syscall`, an emulated privileged
//! instruction), or goes to the guest's handler, or ends the guest; and before each trip in, a
//! pending interrupt goes to the guest if its virtual interrupt flag allows. The arithmetic of a
//! delivery (the frame, its address, the flags) is src/interrupts.rs's; here it is carried out
//! on the guest's memory.

use super::memory::{fetch_instruction, get_data, push_frame, read_virtual, set_data};
use super::{GuestRam, Host};
use crate::abi::boot::GUEST_USER_CS;
use crate::abi::data::offset;
use crate::abi::hcall::{self, FIRST_IRQ_VECTOR};
use crate::abi::regs::Reg;
use crate::abi::stats::Bucket;
use crate::death;
use crate::death::Death;
use crate::emulate;
use crate::fast_syscall;
use crate::interrupts::{self, GuestGate};
use crate::session::Guest;
use crate::stats::ExitStats;
use crate::traps;

/// An exception the host does not handle itself: the guest's, if it has a handler for it.
///
/// An `int n` the guest's IDT allows arrives as #GP (the real IDT lets the guest through only
/// the hypercall gate): it becomes vector n, resuming after the instruction, as the CPU would.
/// So do the few privileged instructions the host emulates for the guest kernel (src/emulate.rs).
pub(super) fn exception<O, H: Host>(
    guest: &mut Guest<O>,
    host: &H,
    vector: u64,
    error: u64,
) -> Result<(), Death> {
    let rip = guest.regs.get(Reg::Rip);
    let cpl = guest.regs.get(Reg::Cs) & 3;
    if vector == traps::GENERAL_PROTECTION {
        let (insn, len) = fetch_instruction(guest, host, rip);
        let insn = &insn[..len];
        let gate = guest
            .idt
            .get((error >> 3) as usize)
            .and_then(Option::as_ref);
        if let Some(n) = interrupts::software_interrupt(error, cpl, gate) {
            let length = emulate::int_length(insn, n);
            if let (Some(length), Some(gate)) = (length, guest.idt[n as usize]) {
                emulate::complete(&mut guest.regs, length);
                return deliver(guest, host, n, None, &gate);
            }
        }
        // A privileged instruction a Linux kernel runs without a hook (abi::privileged).
        if emulate::emulate(insn, error, &mut guest.regs, host.cpu())? {
            return Ok(());
        }
    }
    // `syscall` from guest user mode is #UD (the host keeps EFER.SCE off while a guest runs):
    // delivered as the guest's syscall vector, with RCX, R11 and RFLAGS as SYSCALL would set
    // them. In compatibility mode it stays #UD, as on Intel's CPUs.
    if vector == traps::INVALID_OPCODE && guest.regs.get(Reg::Cs) == GUEST_USER_CS {
        let syscall_vec = get_data(guest, host, offset::SYSCALL_VEC)?;
        let (insn, len) = fetch_instruction(guest, host, rip);
        let gate = guest.idt.get(syscall_vec as usize).copied().flatten();
        if let (true, Some(gate)) = (emulate::is_syscall(&insn[..len]) && syscall_vec != 0, gate) {
            // As the Switcher's fast path does it when armed (src/fast_syscall.rs).
            let enabled = get_data(guest, host, offset::IRQ_ENABLED)?;
            let delivery = fast_syscall::deliver(&guest.regs, &gate, guest.kernel_stack, enabled)?;
            push_frame(guest, host, syscall_vec, delivery.frame_at, &delivery.frame)?;
            guest.regs = delivery.regs;
            if delivery.clears_if {
                set_data(guest, host, offset::IRQ_ENABLED, 0)?;
            }
            return Ok(());
        }
    }
    // The guest kernel's own `iretq` back to user mode refused the frame: the fault is the user
    // program's, at the frame's target (src/interrupts.rs).
    if let Some(frame) = refused_return_to_user(guest, host, vector) {
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
    deliver(guest, host, vector, error, &gate)
}

/// If the guest kernel took `vector` at an `iretq` to user mode that the CPU refused, the frame
/// it was popping (RIP, CS, RFLAGS, RSP, SS).
fn refused_return_to_user<O>(
    guest: &Guest<O>,
    ram: &impl GuestRam,
    vector: u64,
) -> Option<[u64; 5]> {
    let cpl = guest.regs.get(Reg::Cs) & 3;
    if cpl == 3 || !interrupts::IRET_FAULTS.contains(&vector) {
        return None;
    }
    let (insn, len) = fetch_instruction(guest, ram, guest.regs.get(Reg::Rip));
    let mut bytes = [0u8; 40];
    read_virtual(guest, ram, guest.regs.get(Reg::Rsp), &mut bytes).ok()?;
    let frame: [u64; 5] = core::array::from_fn(|i| {
        u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]))
    });
    interrupts::is_refused_return_to_user(vector, cpl, &insn[..len], &frame).then_some(frame)
}

/// The IRQ the guest could take next: pending, not masked, with a handler. An IRQ the guest has
/// no handler for stays pending, as on a masked line.
pub(super) fn deliverable_irq<O, H: Host>(
    guest: &Guest<O>,
    host: &H,
) -> Result<Option<u32>, Death> {
    let pending = host.pending_irqs();
    if pending == 0 {
        return Ok(None);
    }
    let handled = (0..hcall::IRQS)
        .filter(|irq| guest.idt[(FIRST_IRQ_VECTOR + *irq as u64) as usize].is_some())
        .fold(0u64, |mask, irq| mask | 1 << irq);
    let blocked = get_data(guest, host, offset::BLOCKED_INTERRUPTS)?;
    Ok(interrupts::next_irq(pending & handled, blocked))
}

/// Deliver a pending interrupt if the guest can take one now; if one waits only for its
/// virtual flag, say so in `irq_pending` (the guest's irq_enable then makes SEND_INTERRUPTS).
pub fn deliver_interrupts<O, H: Host>(
    guest: &mut Guest<O>,
    host: &H,
    stats: &ExitStats,
) -> Result<(), Death> {
    if guest.lguest_data.is_none() {
        return Ok(());
    }
    let Some(irq) = deliverable_irq(guest, host)? else {
        return Ok(());
    };
    let started = host.now();
    let enabled = get_data(guest, host, offset::IRQ_ENABLED)?;
    let noirq = (
        get_data(guest, host, offset::NOIRQ_IRET_START)?,
        get_data(guest, host, offset::NOIRQ_IRET_END)?,
    );
    if !interrupts::may_interrupt(enabled, guest.regs.get(Reg::Rip), noirq) {
        return set_data(guest, host, offset::IRQ_PENDING, 1);
    }
    let vector = FIRST_IRQ_VECTOR + irq as u64;
    let gate = guest.idt[vector as usize].ok_or_else(|| death!("IRQ {irq} lost its handler"))?;
    host.clear_irq(irq);
    // Nothing else waits unless another deliverable IRQ does.
    let more = deliverable_irq(guest, host)?.is_some();
    set_data(guest, host, offset::IRQ_PENDING, more as u64)?;
    deliver(guest, host, vector, None, &gate)?;
    if let Some(bucket) = Bucket::irq(irq.into()) {
        stats.add(bucket, host.now().saturating_sub(started));
    }
    Ok(())
}

/// Deliver `vector` through the guest's `gate`: push the frame the CPU would have pushed onto
/// the guest kernel's stack and resume the guest at the handler (`src/interrupts.rs`).
pub(super) fn deliver<O>(
    guest: &mut Guest<O>,
    ram: &impl GuestRam,
    vector: u64,
    error: Option<u64>,
    gate: &GuestGate,
) -> Result<(), Death> {
    let enabled = get_data(guest, ram, offset::IRQ_ENABLED)?;
    let (frame, words) = interrupts::trap_frame(&guest.regs, enabled, error);
    let at = interrupts::frame_address(&guest.regs, guest.kernel_stack, words)?;
    push_frame(guest, ram, vector, at, &frame[..words])?;
    interrupts::enter_handler(&mut guest.regs, gate, at);
    if gate.interrupt_gate {
        set_data(guest, ram, offset::IRQ_ENABLED, 0)?;
    }
    Ok(())
}
