//! Carrying out hypercalls: the guest's `int $0x1f` (decoded and checked by src/hypercall.rs),
//! and the calls it queued in the asynchronous ring of its lguest_data page, which come first.

use super::page_faults::{phys_layout, shadow_after_flush};
use super::{interrupts_and_traps, Host, Shadow};
use crate::abi::data::{
    offset, ASYNC_HCALLS, HCALL_DONE, HCALL_PENDING, SWITCHER_WINDOW_END, SWITCHER_WINDOW_START,
};
use crate::abi::exit::{ExitKind, ExitRecord};
use crate::abi::hcall::{CONSOLE_WRITE_MAX, SHUTDOWN_MESSAGE_MAX};
use crate::abi::regs::{Reg, Regs};
use crate::abi::stats::Bucket;
use crate::address::{GuestPhys, GuestVirt};
use crate::death;
use crate::death::Death;
use crate::hypercall::{self, Hypercall, Shutdown};
use crate::session::Guest;
use crate::stats::ExitStats;

/// Carry out the hypercall in the guest's registers; `Some` if the launcher must see its result.
pub(super) fn hypercall<O: Shadow, H: Host>(
    guest: &mut Guest<O>,
    host: &H,
    stats: &ExitStats,
) -> Result<Option<ExitRecord>, Death> {
    let call = hypercall::decode(&guest.regs, guest.lguest_data.is_some(), host.ram_bytes())?;
    // What the guest queued comes first: it was asked for before this call (lguest's rule).
    drain_async(guest, host, stats)?;
    carry_out(guest, host, call)
}

/// Carry out the calls queued in the guest's asynchronous ring, in order, from where the host
/// stopped last; each slot is marked done as it is carried out.
fn drain_async<O: Shadow, H: Host>(
    guest: &mut Guest<O>,
    host: &H,
    stats: &ExitStats,
) -> Result<(), Death> {
    let Some(data) = guest.lguest_data else {
        return Ok(());
    };
    let unreadable = || death!("lguest_data at {data:#x} is not readable");
    for _ in 0..ASYNC_HCALLS {
        let started = host.now();
        let slot = guest.next_async;
        let status_at = data + offset::HCALL_STATUS + slot as u64;
        let mut status = [0u8; 1];
        host.read(status_at, &mut status)
            .map_err(|_| unreadable())?;
        if status[0] != HCALL_PENDING {
            return Ok(());
        }
        let mut words = [0u8; 48];
        host.read(data + offset::HCALLS + slot as u64 * 48, &mut words)
            .map_err(|_| unreadable())?;
        let word =
            |i: usize| u64::from_le_bytes(words[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        let mut regs = Regs::default();
        for (i, reg) in [Reg::Rax, Reg::Rbx, Reg::Rcx, Reg::Rdx, Reg::Rsi, Reg::Rdi]
            .into_iter()
            .enumerate()
        {
            regs.set(reg, word(i));
        }
        let call = hypercall::decode(&regs, true, host.ram_bytes())?;
        if !call.may_be_queued() {
            return Err(death!(
                "hypercall {} queued in the asynchronous ring",
                word(0)
            ));
        }
        carry_out(guest, host, call)?;
        host.write(status_at, &[HCALL_DONE])
            .map_err(|_| death!("lguest_data at {data:#x} is not writable"))?;
        guest.next_async = (slot + 1) % ASYNC_HCALLS;
        if let Some(bucket) = Bucket::queued(word(0)) {
            stats.add(bucket, host.now().saturating_sub(started));
        }
    }
    Ok(())
}

/// Carry out one decoded hypercall; `Some` if the launcher must see its result.
fn carry_out<O: Shadow, H: Host>(
    guest: &mut Guest<O>,
    host: &H,
    call: Hypercall,
) -> Result<Option<ExitRecord>, Death> {
    let unreadable = |what: &str| death!("{what}: guest memory is not readable");
    match call {
        Hypercall::LguestInit { data_gpa } => {
            // Only the host's fields: a guest may have set its own before registering the page.
            let host_fields = [
                (offset::SWITCHER_WINDOW_START, SWITCHER_WINDOW_START),
                (offset::SWITCHER_WINDOW_END, SWITCHER_WINDOW_END),
                (offset::TSC_KHZ, host.tsc_khz()),
                (offset::WALLCLOCK_NS, host.wallclock_ns()),
            ];
            for (field, value) in host_fields {
                host.write(data_gpa + field, &value.to_le_bytes())
                    .map_err(|_| death!("LGUEST_INIT: guest memory is not writable"))?;
            }
            let (page, launcher_addr) = (
                GuestPhys(data_gpa),
                guest.launcher_addr(GuestPhys(data_gpa)),
            );
            guest
                .owner
                .map_guest_data(page, launcher_addr)
                .map_err(|_| death!("LGUEST_INIT: cannot pin the lguest_data page"))?;
            guest.lguest_data = Some(data_gpa);
            Ok(None)
        }
        Hypercall::Shutdown { message_gpa, how } => {
            let mut message = [0u8; SHUTDOWN_MESSAGE_MAX];
            let len = (host.ram_bytes() - message_gpa).min(SHUTDOWN_MESSAGE_MAX as u64) as usize;
            host.read(message_gpa, &mut message[..len])
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
            let guest = &*guest;
            host.halt(&|| {
                // A guest whose lguest_data cannot be read is woken, and dies at the next look.
                interrupts_and_traps::deliverable_irq(guest, host).map_or(true, |irq| irq.is_some())
            });
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
            host.set_timer(nanoseconds);
            Ok(None)
        }
        // Pending interrupts are delivered before every trip in: this one just makes the trip.
        Hypercall::SendInterrupts => Ok(None),
        Hypercall::NewPgtable { cr3, flush } => {
            let phys = phys_layout(guest);
            guest
                .owner
                .switch_to(cr3, flush, &mut |va| {
                    shadow_after_flush(host, cr3, va, phys)
                })
                .map_err(|_| death!("out of memory for shadow page tables"))?;
            guest.cr3 = cr3;
            Ok(None)
        }
        Hypercall::FlushTlb { all } => {
            let (cr3, phys) = (guest.cr3, phys_layout(guest));
            guest
                .owner
                .flush(all, &mut |va| shadow_after_flush(host, cr3, va, phys));
            Ok(None)
        }
        Hypercall::SetPte { va } => {
            guest.owner.invalidate(GuestVirt(va));
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
            host.read(gpa, &mut bytes[..len])
                .map_err(|_| unreadable("CONSOLE_WRITE"))?;
            Ok(Some(ExitRecord::new(ExitKind::Console, &bytes[..len])))
        }
        Hypercall::Nop => Ok(None),
    }
}
