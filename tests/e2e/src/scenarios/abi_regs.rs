//! The /dev/lguest ABI once a guest exists: its registers (GETREG, SETREG and the read that
//! answers GETREG), as abi/src/dev.rs and abi/src/regs.rs define them.
//!
//! `abi-regs` checks what each register holds after INITIALIZE, that every register the
//! launcher may write comes back as written, and that the rest (CS, SS, RFLAGS beyond its
//! arithmetic flags) and offsets that name no register are refused or ignored, with the errno
//! [`Refusal`] gives, leaving the registers as they were.

use anyhow::{anyhow, Context};
use lguest_abi::boot::{GUEST_INITIAL_RFLAGS, GUEST_KERNEL_CS, GUEST_KERNEL_SS};
use lguest_abi::dev::{Refusal, Request};
use lguest_abi::regs::Reg;

use crate::check::Checks;
use crate::kmod;
use crate::lguest::{Lguest, TestGuest, BOOT_PARAMS, ENTRY, GETREG_LEN};

/// What each register holds right after INITIALIZE (abi/src/boot.rs, abi/src/dev.rs).
fn initial(reg: Reg) -> u64 {
    match reg {
        Reg::Rip => ENTRY,
        Reg::Rsi => BOOT_PARAMS,
        Reg::Cs => GUEST_KERNEL_CS,
        Reg::Ss => GUEST_KERNEL_SS,
        Reg::Rflags => GUEST_INITIAL_RFLAGS,
        _ => 0,
    }
}

/// A value for SETREG that no other register gets and that uses all 64 bits, so a swapped
/// offset or a truncation shows. RIP and RSP get canonical kernel addresses, as a launcher
/// stepping over an instruction would set.
fn test_value(reg: Reg) -> u64 {
    match reg {
        Reg::Rip => 0xffff_ffff_8100_0040,
        Reg::Rsp => 0xffff_ffff_8200_0ff0,
        _ => 0xa5a5_0000_0000_1000 | (reg.offset() << 29) | reg.offset(),
    }
}

/// `abi-regs`: the registers a guest starts with, SETREG/GETREG round trips, and the
/// registers and offsets the launcher may not touch.
pub fn regs() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let guest = TestGuest::new()?;
    let dev = Lguest::open_initialized(guest.valid())?;
    let mut c = Checks::new();

    for reg in Reg::ALL {
        c.equal(&format!("initial {reg:?}"), dev.get_reg(reg), initial(reg));
    }
    for reg in Reg::ALL.into_iter().filter(|r| r.is_writable()) {
        c.ok(
            &format!("SETREG {reg:?}"),
            dev.set_reg(reg, test_value(reg)),
        );
    }
    // RFLAGS takes only its arithmetic flags from SETREG.
    let expected =
        |reg: Reg| initial(reg) & !reg.writable_bits() | test_value(reg) & reg.writable_bits();
    for reg in Reg::ALL {
        c.equal(
            &format!("{reg:?} after SETREGs"),
            dev.get_reg(reg),
            expected(reg),
        );
    }

    // What a hostile launcher would try: IOPL 3 and IF off (taken, and ignored)...
    c.ok("SETREG Rflags to IOPL 3", dev.set_reg(Reg::Rflags, 0x3002));
    c.equal(
        "Rflags after SETREG to IOPL 3",
        dev.get_reg(Reg::Rflags),
        initial(Reg::Rflags),
    );
    // ...and the kernel's own ring-0 selectors (refused).
    for (reg, value) in [(Reg::Cs, 0x10), (Reg::Ss, 0x18)] {
        let got = dev.request(Request::SetReg {
            offset: reg.offset(),
            value,
        });
        c.refused(&format!("SETREG {reg:?}"), got, Refusal::ReadOnlyRegister);
        c.equal(
            &format!("{reg:?} after the refused SETREG"),
            dev.get_reg(reg),
            initial(reg),
        );
    }

    // Offsets that name no register; 2^32 is RAX's offset to a host that truncates to u32.
    for offset in [4, Reg::COUNT as u64 * 8, u64::MAX - 7, 1 << 32] {
        let get = dev.request(Request::GetReg { offset });
        c.refused(
            &format!("GETREG offset {offset:#x}"),
            get,
            Refusal::NoSuchRegister,
        );
        let set = dev.request(Request::SetReg { offset, value: 0 });
        c.refused(
            &format!("SETREG offset {offset:#x}"),
            set,
            Refusal::NoSuchRegister,
        );
    }
    c.equal(
        "RAX after SETREGs of bad offsets",
        dev.get_reg(Reg::Rax),
        test_value(Reg::Rax),
    );

    // (A read with no GETREG pending runs the guest, which this one has no code for: the guest
    // scenarios do that.)
    let getreg = |reg: Reg| Request::GetReg {
        offset: reg.offset(),
    };
    c.returned("GETREG RIP", dev.request(getreg(Reg::Rip)), GETREG_LEN);
    c.refused("read into 4 bytes", dev.read_len(4), Refusal::ShortRead);
    // The refused read consumed nothing: the answer is still there for a big enough buffer.
    let rip = dev
        .read(8)
        .map_err(|e| anyhow!("read: {e:?}"))
        .and_then(|bytes| {
            Ok(u64::from_le_bytes(
                bytes.as_slice().try_into().context("not 8 bytes")?,
            ))
        });
    c.equal(
        "RIP read after the refused short read",
        rip,
        test_value(Reg::Rip),
    );
    c.returned("GETREG RBX", dev.request(getreg(Reg::Rbx)), GETREG_LEN);
    c.returned("read into 16 bytes", dev.read_len(16), 8);

    // Framing, on a file that has a guest.
    let get = getreg(Reg::Rax).encode().as_bytes().to_vec();
    let set = Request::SetReg {
        offset: 0,
        value: 0,
    }
    .encode()
    .as_bytes()
    .to_vec();
    c.refused("15-byte GETREG", dev.write(&get[..15]), Refusal::ShortWrite);
    c.refused(
        "24-byte GETREG",
        dev.write(&[&get[..], &[0; 8]].concat()),
        Refusal::LongWrite,
    );
    c.refused("16-byte SETREG", dev.write(&set[..16]), Refusal::ShortWrite);
    c.refused(
        "32-byte SETREG",
        dev.write(&[&set[..], &[0; 8]].concat()),
        Refusal::LongWrite,
    );
    c.equal(
        "RAX after malformed SETREGs",
        dev.get_reg(Reg::Rax),
        test_value(Reg::Rax),
    );
    c.finish()
}
