//! Who may drive a guest through /dev/lguest: the task that initialized it, and for IRQ any
//! thread of the launcher's process.
//!
//! lg.ko ties a guest to its owner at INITIALIZE. Another thread, a child that inherited the
//! file, or the owner after exec (a new address space) must be refused with EPERM ([`Refusal`]'s
//! NotOwner), except for IRQ, which device threads raise while the main thread runs the guest;
//! IRQ also wants a guest, and an interrupt line the guest has.

use anyhow::ensure;
use lguest_abi::dev::{Refusal, Request};
use lguest_abi::regs::Reg;

use crate::check::Checks;
use crate::kmod;
use crate::lguest::{Lguest, TestGuest, ENTRY};

/// `abi-owner`: a guest belongs to the task that initialized it. Another thread, or a child
/// that inherited the file, may not drive it; a child with a file of its own may.
pub fn owner() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let guest = TestGuest::new()?;
    let valid = guest.valid();
    let dev = Lguest::open_initialized(valid)?;
    let mut c = Checks::new();
    let getreg = Request::GetReg {
        offset: Reg::Rip.offset(),
    };

    let (get, read) = std::thread::scope(|s| {
        s.spawn(|| (dev.request(getreg), dev.read_len(8)))
            .join()
            .expect("two syscalls cannot panic")
    });
    c.refused("GETREG from another thread", get, Refusal::NotOwner);
    c.refused("read from another thread", read, Refusal::NotOwner);

    c.ok(
        "child using the parent's file",
        super::in_child(|| {
            let mut c = Checks::new();
            c.refused("GETREG", dev.request(getreg), Refusal::NotOwner);
            let setreg = Request::SetReg {
                offset: Reg::Rax.offset(),
                value: 0xbad,
            };
            c.refused("SETREG", dev.request(setreg), Refusal::NotOwner);
            c.refused("INITIALIZE", dev.initialize(valid), Refusal::NotOwner);
            c.refused("read", dev.read_len(8), Refusal::NotOwner);
            c.finish()
        }),
    );
    c.ok(
        "child with its own file",
        super::in_child(|| {
            let own = Lguest::open_initialized(valid)?;
            let rip = own.get_reg(Reg::Rip)?;
            ensure!(rip == ENTRY, "RIP: expected {ENTRY:#x}, got {rip:#x}");
            Ok(())
        }),
    );

    c.ok(
        "the owner after exec",
        super::in_child(|| {
            let own = Lguest::open_initialized(valid)?;
            super::exec_and_read(&own)
        }),
    );

    c.equal("RIP in the parent afterwards", dev.get_reg(Reg::Rip), ENTRY);
    c.equal(
        "RAX after the child's refused SETREG",
        dev.get_reg(Reg::Rax),
        0,
    );
    c.finish()
}

/// `abi-irq`: IRQ raises an interrupt for a device. It needs a guest, an IRQ the guest has, and
/// a caller in the launcher's address space: any thread of it (device threads raise IRQs while
/// the main thread runs the guest), but no other process, not even a child with the file.
pub fn irq() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let guest = TestGuest::new()?;
    let irq = |n: u64| Request::Irq { irq: n };
    let mut c = Checks::new();
    let fresh = Lguest::open()?;
    c.refused(
        "IRQ before INITIALIZE",
        fresh.request(irq(1)),
        Refusal::NotInitialized,
    );

    let dev = Lguest::open_initialized(guest.valid())?;
    c.returned("IRQ 1", dev.request(irq(1)), 16);
    c.returned("IRQ 63", dev.request(irq(63)), 16);
    c.refused("IRQ 64", dev.request(irq(64)), Refusal::NoSuchIrq);
    c.refused("IRQ 2^64-1", dev.request(irq(u64::MAX)), Refusal::NoSuchIrq);
    let from_thread = std::thread::scope(|s| {
        s.spawn(|| dev.request(irq(2)))
            .join()
            .expect("a write cannot panic")
    });
    c.returned("IRQ from another thread of the launcher", from_thread, 16);
    c.ok(
        "child using the parent's file",
        super::in_child(|| {
            let mut c = Checks::new();
            c.refused("IRQ", dev.request(irq(1)), Refusal::NotOwner);
            c.finish()
        }),
    );
    c.finish()
}
