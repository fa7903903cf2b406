//! Page faults: the guest touched a page its shadow does not map (yet). src/shadow.rs decides
//! what the guest's own tables allow; here the decision is carried out: the page pinned and
//! mapped, a device access handed to the launcher, or the fault given to the guest.

use super::interrupts_and_traps::deliver;
use super::memory::{fetch_instruction, set_data, walk};
use super::{GuestRam, Host, PinFailure, Shadow};
use crate::abi::data::offset;
use crate::abi::exit::{ExitRecord, MmioAccess};
use crate::abi::regs::Reg;
use crate::abi::PAGE_SIZE;
use crate::address::{GuestPhys, GuestVirt};
use crate::death;
use crate::death::Death;
use crate::session::Guest;
use crate::shadow::{self, shadow_pte_for, PhysLayout, Unresolved, PF_PRESENT};
use crate::stats::Fault;
use crate::traps;

/// Guest-physical memory as the shadow sees it: RAM, then the device pages.
pub(super) fn phys_layout<O>(guest: &Guest<O>) -> PhysLayout {
    PhysLayout {
        ram_bytes: guest.ram_bytes(),
        device_limit: guest.config.device_limit * PAGE_SIZE,
    }
}

/// What a shadow entry for `va` may hold after a flush of the page tables at `cr3`, as they
/// say now (`shadow::after_flush`); nothing if they cannot be read.
pub(super) fn shadow_after_flush(
    ram: &impl GuestRam,
    cr3: u64,
    va: u64,
    phys: PhysLayout,
) -> Option<(u64, u64)> {
    let leaf = walk(ram, cr3, va).ok()?;
    shadow::after_flush(leaf, phys)
}

/// Handle a page fault at `addr`: map the page if the guest's tables allow the access, hand a
/// device access to the launcher, else give the guest the fault. Says which it was, for the
/// exit statistics.
pub(super) fn page_fault<O: Shadow, H: Host>(
    guest: &mut Guest<O>,
    host: &H,
    addr: u64,
    error: u64,
) -> Result<(Fault, Option<ExitRecord>), Death> {
    let leaf = walk(host, guest.cr3, addr)
        .map_err(|_| death!("page fault at {addr:#x}: the guest's page tables lie outside RAM"))?;
    let mapping = match shadow::decide(addr, error, leaf, phys_layout(guest)) {
        Ok(mapping) => mapping,
        Err(Unresolved::Kill(death)) => return Err(death),
        Err(Unresolved::Reflect { error, death }) => {
            return deliver_page_fault(guest, host, addr, error, death)
                .map(|()| (Fault::Reflected, None))
        }
        Err(Unresolved::Device { gpa, write }) => {
            let device = Fault::device(gpa, host.ram_bytes());
            return Ok((device, Some(mmio_exit(guest, host, gpa, write))));
        }
    };
    if let Some(leaf) = leaf {
        if mapping.updated_entry != leaf.entry {
            host.write(leaf.entry_gpa, &mapping.updated_entry.to_le_bytes())
                .map_err(|_| {
                    death!("page fault at {addr:#x}: cannot update the guest's page table")
                })?;
        }
    }
    let page = GuestPhys(mapping.gpa_page);
    let launcher_addr = guest.launcher_addr(page);
    let phys = guest
        .owner
        .pin(page, launcher_addr)
        .map_err(|failure| match failure {
            PinFailure::Gone => {
                death!("page fault at {addr:#x}: the launcher's memory for it is gone")
            }
            PinFailure::OverMemlock => death!(
                "page fault at {addr:#x}: pinning another page would exceed the launcher's \
                 RLIMIT_MEMLOCK (raise it with ulimit -l, or give it CAP_IPC_LOCK)"
            ),
            PinFailure::NoMemory => {
                death!("page fault at {addr:#x}: the host is out of memory")
            }
        })?;
    let changed = guest
        .owner
        .set_entry(
            GuestVirt(addr & !0xfff),
            shadow_pte_for(&mapping, phys),
            mapping.global,
        )
        .map_err(|_| death!("page fault at {addr:#x}: out of memory for shadow page tables"))?;
    if !changed {
        // The guest's tables allow it, yet the CPU refused: SMAP, SMEP or a protection key.
        // On real hardware the guest kernel would get this fault; so it does here.
        let death =
            death!("page fault at {addr:#x} (error {error:#x}): SMAP, SMEP or a protection key");
        return deliver_page_fault(guest, host, addr, error | PF_PRESENT, death)
            .map(|()| (Fault::Reflected, None));
    }
    Ok((Fault::Fixed, None))
}

/// The exit for a guest access to a device page: where, which way, and the instruction and
/// registers the launcher needs to emulate it. The guest stays at the instruction until the
/// launcher moves its RIP.
fn mmio_exit<O>(guest: &Guest<O>, ram: &impl GuestRam, gpa: u64, write: bool) -> ExitRecord {
    let (insn, insn_len) = fetch_instruction(guest, ram, guest.regs.get(Reg::Rip));
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
fn deliver_page_fault<O>(
    guest: &mut Guest<O>,
    ram: &impl GuestRam,
    addr: u64,
    error: u64,
    death: Death,
) -> Result<(), Death> {
    let Some(gate) = guest.idt[traps::PAGE_FAULT as usize] else {
        return Err(death);
    };
    set_data(guest, ram, offset::CR2, addr)?;
    deliver(guest, ram, traps::PAGE_FAULT, Some(error), &gate)
}
