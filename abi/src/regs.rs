//! The guest's registers as the launcher sees them through GETREG and SETREG.
//!
//! lguest reused the ptrace register layout; a 64-bit lguest guest has none of ptrace's
//! `orig_rax`, `fs`/`gs` selectors or `ds`/`es`, so lguest-rs numbers only the registers a guest
//! really has. A register is named on the wire by its byte offset in [`Regs`], like ptrace's
//! PEEKUSER: `offset = Reg::X as u64 * 8`.

/// RFLAGS' arithmetic flags: CF, PF, AF, ZF, SF and OF.
pub const RFLAGS_ARITHMETIC: u64 = 0x8d5;

/// Each register, in the order it sits in [`Regs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Reg {
    Rax = 0,
    Rbx,
    Rcx,
    Rdx,
    Rsi,
    Rdi,
    Rbp,
    R8,
    R9,
    R10,
    R11,
    R12,
    R13,
    R14,
    R15,
    Rip,
    Rsp,
    Rflags,
    Cs,
    Ss,
}

impl Reg {
    /// How many registers [`Regs`] holds.
    pub const COUNT: usize = 20;

    /// The sixteen general registers in the order x86 numbers them in an instruction (ModRM,
    /// REX): RAX is 0, RCX 1, ..., R15 15. The host's emulator and the launcher's MMIO decoder
    /// both name registers this way.
    pub const BY_ENCODING: [Reg; 16] = [
        Reg::Rax,
        Reg::Rcx,
        Reg::Rdx,
        Reg::Rbx,
        Reg::Rsp,
        Reg::Rbp,
        Reg::Rsi,
        Reg::Rdi,
        Reg::R8,
        Reg::R9,
        Reg::R10,
        Reg::R11,
        Reg::R12,
        Reg::R13,
        Reg::R14,
        Reg::R15,
    ];

    /// All registers, in offset order.
    pub const ALL: [Reg; Reg::COUNT] = [
        Reg::Rax,
        Reg::Rbx,
        Reg::Rcx,
        Reg::Rdx,
        Reg::Rsi,
        Reg::Rdi,
        Reg::Rbp,
        Reg::R8,
        Reg::R9,
        Reg::R10,
        Reg::R11,
        Reg::R12,
        Reg::R13,
        Reg::R14,
        Reg::R15,
        Reg::Rip,
        Reg::Rsp,
        Reg::Rflags,
        Reg::Cs,
        Reg::Ss,
    ];

    /// The wire name of this register: its byte offset in [`Regs`].
    pub const fn offset(self) -> u64 {
        self as u64 * 8
    }

    /// The register at byte offset `offset`, if there is one (offsets are multiples of 8).
    pub fn from_offset(offset: u64) -> Option<Reg> {
        if offset % 8 != 0 {
            return None;
        }
        Reg::ALL.get(usize::try_from(offset / 8).ok()?).copied()
    }

    /// The bits of this register the launcher may change with SETREG; the others keep their
    /// value.
    ///
    /// As in lguest, the launcher may set the general registers, the instruction pointer and
    /// the stack pointer (it needs them to start a guest and to step over an emulated
    /// instruction). Of RFLAGS it may set only the arithmetic flags ([`RFLAGS_ARITHMETIC`]):
    /// an emulated `cmp` or `test` of a device register sets them. The segment selectors and
    /// the rest of RFLAGS decide the guest's privilege and whether the host's interrupts stay
    /// on: only the host sets them, so a buggy or hostile launcher cannot start a guest at
    /// CPL 0 or with IOPL 3.
    pub const fn writable_bits(self) -> u64 {
        match self {
            Reg::Rflags => RFLAGS_ARITHMETIC,
            Reg::Cs | Reg::Ss => 0,
            _ => u64::MAX,
        }
    }

    /// Whether SETREG may change this register at all.
    pub const fn is_writable(self) -> bool {
        self.writable_bits() != 0
    }
}

/// The guest's register file: `Regs.0[r as usize]` is register `r`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regs(pub [u64; Reg::COUNT]);

impl Regs {
    pub fn get(&self, reg: Reg) -> u64 {
        self.0[reg as usize]
    }

    pub fn set(&mut self, reg: Reg, value: u64) {
        self.0[reg as usize] = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_round_trip_and_reject_the_rest() {
        for reg in Reg::ALL {
            assert_eq!(Reg::from_offset(reg.offset()), Some(reg));
        }
        assert_eq!(Reg::from_offset(4), None, "unaligned offset");
        assert_eq!(
            Reg::from_offset(Reg::COUNT as u64 * 8),
            None,
            "one past the end"
        );
        assert_eq!(Reg::from_offset(u64::MAX - 7), None, "huge offset");
    }

    #[test]
    fn only_selectors_are_read_only_and_of_rflags_only_arithmetic() {
        for reg in Reg::ALL {
            let expected = match reg {
                Reg::Cs | Reg::Ss => 0,
                // IF (bit 9) and IOPL (bits 12-13) stay the host's.
                Reg::Rflags => 0b1000_1101_0101,
                _ => u64::MAX,
            };
            assert_eq!(reg.writable_bits(), expected, "{reg:?}");
            assert_eq!(reg.is_writable(), expected != 0, "{reg:?}");
        }
    }
}
