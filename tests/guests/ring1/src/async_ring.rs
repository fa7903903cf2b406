//! The asynchronous hypercall ring: calls a guest queues in lguest_data instead of making them.
//!
//! A kernel that changes many page-table entries at once (Linux's lazy MMU mode) queues the
//! hypercalls in the ring and lets the next synchronous call carry them out, in order: one world
//! switch instead of many. `async` (`guest-async`) checks the order and the slots' status;
//! `async-console` checks that a call whose point is its effect on the launcher may not be
//! queued.

use core::ptr;
use core::sync::atomic::Ordering;

use lguest_abi::boot::GUEST_KERNEL_CS;
use lguest_abi::data::offset;
use lguest_abi::hcall::LOAD_IDT_ENTRY;

use crate::hcall::{data_word, hcall, poweroff};
use crate::println;
use crate::traps::{check, gate, install, load_idt_entry, trap_entry_6, SKIP};

/// Queue hypercall `nr` with `args` in slot `slot` of lguest_data's ring.
fn queue(slot: usize, nr: u64, args: [u64; 5]) {
    let entry = data_word(offset::HCALLS + slot as u64 * 48);
    // SAFETY: our lguest_data page; the slot is written in full before its status says so.
    unsafe {
        ptr::write_volatile(entry, nr);
        for (i, arg) in args.into_iter().enumerate() {
            ptr::write_volatile(entry.add(1 + i), arg);
        }
        let status = data_word(offset::HCALL_STATUS).cast::<u8>().add(slot);
        ptr::write_volatile(status, lguest_abi::data::HCALL_PENDING);
    }
}

fn status(slot: usize) -> u8 {
    // SAFETY: our lguest_data page.
    unsafe { ptr::read_volatile(data_word(offset::HCALL_STATUS).cast::<u8>().add(slot)) }
}

/// `async`: calls queued in the ring are carried out, in order, before the next synchronous
/// call (here FLUSH_ASYNC), and their slots come back done: the #UD handler that a queued
/// LOAD_IDT_ENTRY installed catches a ud2.
pub fn async_ring() -> ! {
    install();
    let (low, high) = gate(trap_entry_6 as *const () as u64, 0xe, 0, GUEST_KERNEL_CS);
    load_idt_entry(6, (0, 0));
    queue(0, LOAD_IDT_ENTRY, [6, low, high, 0, 0]);
    queue(1, lguest_abi::hcall::NOP, [0; 5]);
    if status(0) != lguest_abi::data::HCALL_PENDING {
        panic!("async: the host ran slot 0 before any synchronous call");
    }
    // SAFETY: FLUSH_ASYNC only drains the ring.
    unsafe { hcall(lguest_abi::hcall::FLUSH_ASYNC, [0; 5]) };
    if status(0) != lguest_abi::data::HCALL_DONE || status(1) != lguest_abi::data::HCALL_DONE {
        panic!(
            "async: slots 0 and 1 are {} and {} after FLUSH_ASYNC",
            status(0),
            status(1)
        );
    }
    SKIP.store(2, Ordering::SeqCst);
    // SAFETY: ud2 faults; the queued handler skips it.
    unsafe { core::arch::asm!("ud2") };
    check("#UD", [6, 0, GUEST_KERNEL_CS & !3]);
    println!("async: queued calls ran in order at FLUSH_ASYNC");
    poweroff("async done")
}

/// `async-console`: a call whose point is its effect on the launcher (console output) may not
/// hide in the ring: the guest dies for it.
pub fn async_console() -> ! {
    println!("attack: async-console");
    let text = b"from the ring";
    queue(
        0,
        lguest_abi::hcall::CONSOLE_WRITE,
        [text.as_ptr() as u64, text.len() as u64, 0, 0, 0],
    );
    // SAFETY: drains the ring.
    unsafe { hcall(lguest_abi::hcall::FLUSH_ASYNC, [0; 5]) };
    println!("attack async-console: survived");
    poweroff("async console taken")
}
