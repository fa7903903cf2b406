//! The guest's memory as exit handling reaches it: guest-physical through [`GuestRam`],
//! guest-virtual through the guest's own page tables (at `guest.cr3`, walked by
//! src/pagewalk.rs), and the words of its lguest_data page.
//!
//! Guest memory is the launcher's too, and may change between two reads: whatever the host
//! decides must be decided on one copy, so each byte is read once.

use super::GuestRam;
use crate::abi::dev::Refusal;
use crate::abi::exit::MMIO_INSN_MAX;
use crate::death;
use crate::death::Death;
use crate::guest_ram::Phys;
use crate::pagewalk::{self, GuestPhysRead, Leaf};
use crate::session::Guest;

/// The guest's page tables at `cr3`, walked for `va` through guest RAM, every table bounded by
/// it (src/pagewalk.rs).
pub(super) fn walk(ram: &impl GuestRam, cr3: u64, va: u64) -> Result<Option<Leaf>, Refusal> {
    pagewalk::walk(&Phys(ram), ram.ram_bytes(), cr3, va)
}

/// A word of the guest's lguest_data (0 before LGUEST_INIT).
pub(super) fn get_data<O>(guest: &Guest<O>, ram: &impl GuestRam, field: u64) -> Result<u64, Death> {
    let Some(data) = guest.lguest_data else {
        return Ok(0);
    };
    Phys(ram)
        .read_u64(data + field)
        .map_err(|_| death!("lguest_data at {data:#x} is not readable"))
}

/// Write a word of the guest's lguest_data (nothing before LGUEST_INIT).
pub(super) fn set_data<O>(
    guest: &Guest<O>,
    ram: &impl GuestRam,
    field: u64,
    value: u64,
) -> Result<(), Death> {
    let Some(data) = guest.lguest_data else {
        return Ok(());
    };
    ram.write(data + field, &value.to_le_bytes())
        .map_err(|_| death!("lguest_data at {data:#x} is not writable"))
}

/// Guest-virtual `va..va + len`, translated through the guest's page tables one page at a
/// time: `each(gpa, offset, length)` for every piece; with `write`, every page must be mapped
/// writable.
fn for_each_page<O>(
    guest: &Guest<O>,
    ram: &impl GuestRam,
    va: u64,
    len: usize,
    write: bool,
    mut each: impl FnMut(u64, usize, usize) -> Result<(), Refusal>,
) -> Result<(), Refusal> {
    let mut done = 0;
    while done < len {
        let at = va.wrapping_add(done as u64);
        let in_page = ((0x1000 - (at & 0xfff)) as usize).min(len - done);
        let leaf = walk(ram, guest.cr3, at)?.ok_or(Refusal::Fault)?;
        if write && !leaf.writable {
            return Err(Refusal::Fault);
        }
        each(leaf.gpa, done, in_page)?;
        done += in_page;
    }
    Ok(())
}

/// Read guest-virtual memory.
pub(super) fn read_virtual<O>(
    guest: &Guest<O>,
    ram: &impl GuestRam,
    va: u64,
    out: &mut [u8],
) -> Result<(), Refusal> {
    let len = out.len();
    for_each_page(guest, ram, va, len, false, |gpa, at, n| {
        ram.read(gpa, &mut out[at..at + n])
    })
}

/// Write guest-virtual memory the guest's page tables map writable.
pub(super) fn write_virtual<O>(
    guest: &Guest<O>,
    ram: &impl GuestRam,
    va: u64,
    bytes: &[u8],
) -> Result<(), Refusal> {
    for_each_page(guest, ram, va, bytes.len(), true, |gpa, at, n| {
        ram.write(gpa, &bytes[at..at + n])
    })
}

/// The instruction at guest-virtual `rip`: up to MMIO_INSN_MAX bytes, fewer where the next page
/// is not mapped (none if RIP's page is not), and how many.
pub(super) fn fetch_instruction<O>(
    guest: &Guest<O>,
    ram: &impl GuestRam,
    rip: u64,
) -> ([u8; MMIO_INSN_MAX], usize) {
    let mut insn = [0u8; MMIO_INSN_MAX];
    let in_page = ((0x1000 - (rip & 0xfff)) as usize).min(MMIO_INSN_MAX);
    if read_virtual(guest, ram, rip, &mut insn[..in_page]).is_err() {
        return (insn, 0);
    }
    let next = rip.wrapping_add(in_page as u64);
    if in_page == MMIO_INSN_MAX || read_virtual(guest, ram, next, &mut insn[in_page..]).is_err() {
        return (insn, in_page);
    }
    (insn, MMIO_INSN_MAX)
}

/// Write the trap frame `words` for `vector` at guest-virtual `at`, through the guest's page
/// tables.
pub(super) fn push_frame<O>(
    guest: &Guest<O>,
    ram: &impl GuestRam,
    vector: u64,
    at: u64,
    words: &[u64],
) -> Result<(), Death> {
    let mut bytes = [0u8; 48];
    let len = (words.len() * 8).min(bytes.len());
    for (i, byte) in bytes[..len].iter_mut().enumerate() {
        *byte = (words[i / 8] >> (8 * (i % 8))) as u8;
    }
    write_virtual(guest, ram, at, &bytes[..len])
        .map_err(|_| death!("cannot deliver trap {vector}: its stack at {at:#x} is not writable"))
}
