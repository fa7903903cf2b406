//! Emulating the one instruction a guest used to touch a device page.
//!
//! Device registers live on guest-physical pages past RAM that the host never maps, so each
//! access faults and comes to the launcher as an MMIO exit (`lguest_abi::exit::MmioAccess`):
//! the address, whether it was a write, the instruction's bytes and the guest's registers. The
//! fault does not say how wide the access was or which register holds (or wants) the value:
//! only the instruction does. So it is decoded here with a real x86 decoder (iced-x86), and
//! turned into a [`DeviceAccess`] for the device models plus the register changes that finish
//! the instruction. A real CPU does all of this in silicon; lguest's launcher did it with a
//! table of the few opcodes Linux's `readl`/`writel` compile to.
//!
//! The forms understood are the ones MMIO accessors compile to: `mov` between a register and
//! memory, `mov` of an immediate to memory, and `movzx`/`movsx` loads. Rust's volatile reads
//! add two more: the compiler may fold a volatile load into the comparison that uses it
//! (`cmp dword ptr [rax+0x44], 0`), so `cmp` and `test` with a memory operand are read and
//! compared here, setting the arithmetic flags as the CPU would. (Linux's `readl` is inline
//! assembly, which the compiler cannot fold.) Anything else (a read-modify-write like
//! `or [mem], eax`, a string instruction) is refused with the instruction's text: a device
//! register is not ordinary memory, and emulating more would hide a driver bug rather than
//! help. This file is pure: it touches neither the guest nor a device (the register file the
//! access lands in, virtio-mmio, is `virtio/mmio/mod.rs`).

use iced_x86::{Decoder, DecoderOptions, Formatter, Instruction, Mnemonic, OpKind, Register};
use lguest_abi::exit::MmioAccess;
use lguest_abi::regs::{Reg, RFLAGS_ARITHMETIC};

/// What the device sees: a read or a write of `width` bytes (1, 2, 4 or 8) at `gpa`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceAccess {
    Read { gpa: u64, width: usize },
    Write { gpa: u64, width: usize, value: u64 },
}

/// Where a read's value goes once the device has answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load {
    /// The 64-bit register written.
    reg: Reg,
    /// How many low bytes of the register the instruction writes.
    dest_width: usize,
    /// The destination is AH, CH, DH or BH: bits 8-15.
    high_byte: bool,
    /// `movsx`: sign-extend the device's value (else zero-extend).
    sign_extend: bool,
}

/// A `cmp` or `test` of a device register: what the value read is compared with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compare {
    /// `test` (AND) rather than `cmp` (subtraction).
    test: bool,
    /// The other operand: a register's value or an immediate.
    other: u64,
    /// The device's value is the first operand (`cmp [mem], x`), else the second (`cmp r, [mem]`).
    device_first: bool,
}

/// What the instruction does with a value read from the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// Nothing: it was a write.
    Nothing,
    /// Put it in a register.
    Load(Load),
    /// Compare it, setting the arithmetic flags.
    Compare(Compare),
}

/// One decoded MMIO instruction: the access, and how to finish it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Emulation {
    pub access: DeviceAccess,
    pub finish: Finish,
    /// The instruction's length: RIP moves past it.
    pub len: u64,
    /// The instruction, for `--trace`.
    instruction: Instruction,
}

impl Emulation {
    /// The instruction in Intel syntax.
    pub fn text(&self) -> String {
        intel_text(&self.instruction)
    }

    /// The register writes that complete the instruction, given what the device answered for a
    /// read (ignored for a write): `(register, new value)`, RIP last.
    pub fn completion(&self, exit: &MmioAccess, device_value: u64) -> Vec<(Reg, u64)> {
        let mut writes = Vec::with_capacity(2);
        if let DeviceAccess::Read { width, .. } = self.access {
            match self.finish {
                Finish::Load(load) => {
                    let old = exit.regs.get(load.reg);
                    writes.push((load.reg, load.merge(old, device_value, width)));
                }
                Finish::Compare(compare) => {
                    let old = exit.regs.get(Reg::Rflags);
                    let flags = compare.flags(device_value & mask(width), width);
                    writes.push((Reg::Rflags, old & !RFLAGS_ARITHMETIC | flags));
                }
                Finish::Nothing => {}
            }
        }
        writes.push((Reg::Rip, exit.regs.get(Reg::Rip).wrapping_add(self.len)));
        writes
    }
}

impl Compare {
    /// The arithmetic flags `cmp` or `test` leaves for `device_value` (already cut to `width`
    /// bytes), as the SDM defines them for SUB and AND.
    fn flags(&self, device_value: u64, width: usize) -> u64 {
        const CF: u64 = 1 << 0;
        const PF: u64 = 1 << 2;
        const AF: u64 = 1 << 4;
        const ZF: u64 = 1 << 6;
        const SF: u64 = 1 << 7;
        const OF: u64 = 1 << 11;
        let other = self.other & mask(width);
        let (a, b) = if self.device_first {
            (device_value, other)
        } else {
            (other, device_value)
        };
        let sign = 1u64 << (8 * width - 1);
        let (result, mut flags) = if self.test {
            (a & b, 0)
        } else {
            let result = a.wrapping_sub(b) & mask(width);
            let mut flags = 0;
            if a < b {
                flags |= CF;
            }
            if (a ^ b) & (a ^ result) & sign != 0 {
                flags |= OF;
            }
            if (a ^ b ^ result) & 0x10 != 0 {
                flags |= AF;
            }
            (result, flags)
        };
        if result == 0 {
            flags |= ZF;
        }
        if result & sign != 0 {
            flags |= SF;
        }
        // PF: an even number of ones in the low byte.
        if (result as u8).count_ones().is_multiple_of(2) {
            flags |= PF;
        }
        flags
    }
}

impl Load {
    /// The register's new value: x86's rules for partial registers. A 32-bit destination clears
    /// the upper half; 8- and 16-bit destinations leave the other bits alone.
    fn merge(&self, old: u64, device_value: u64, width: usize) -> u64 {
        let value = device_value & mask(width);
        let value = if self.sign_extend {
            let shift = 64 - 8 * width as u32;
            (((value << shift) as i64) >> shift) as u64
        } else {
            value
        };
        match (self.dest_width, self.high_byte) {
            (1, true) => old & !0xff00 | (value & 0xff) << 8,
            (1 | 2, false) => old & !mask(self.dest_width) | value & mask(self.dest_width),
            (4, _) => value & mask(4),
            _ => value,
        }
    }
}

/// Why an MMIO exit could not be emulated. The launcher stops the guest with this.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unemulated {
    /// The bytes at RIP are not a whole instruction.
    Undecodable { rip: u64 },
    /// An instruction this emulator does not do to device memory; its text.
    Unsupported { rip: u64, text: String },
    /// The fault said read and the instruction writes, or the other way round: the guest
    /// changed the instruction under us (another CPU of it did), or the host is confused.
    DirectionMismatch { rip: u64, text: String },
}

impl std::fmt::Display for Unemulated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unemulated::Undecodable { rip } => {
                write!(
                    f,
                    "the device access at rip {rip:#x} is not a valid instruction"
                )
            }
            Unemulated::Unsupported { rip, text } => write!(
                f,
                "the device access at rip {rip:#x} uses '{text}', which the launcher does not \
                 emulate (only mov, movzx and movsx reach device registers)"
            ),
            Unemulated::DirectionMismatch { rip, text } => write!(
                f,
                "the device access at rip {rip:#x} ('{text}') does not match the fault's direction"
            ),
        }
    }
}

impl std::error::Error for Unemulated {}

/// Decode the instruction of an MMIO exit.
pub fn decode(exit: &MmioAccess) -> Result<Emulation, Unemulated> {
    let rip = exit.regs.get(Reg::Rip);
    let bytes = &exit.insn[..exit.insn_len];
    let mut decoder = Decoder::with_ip(64, bytes, rip, DecoderOptions::NONE);
    let insn = decoder.decode();
    if insn.is_invalid() {
        return Err(Unemulated::Undecodable { rip });
    }
    let text = || intel_text(&insn);
    let unsupported = || Unemulated::Unsupported { rip, text: text() };
    let width = insn.memory_size().size();
    if !matches!(width, 1 | 2 | 4 | 8) || insn.op_count() != 2 {
        return Err(unsupported());
    }
    let gpa = exit.gpa;
    let read = DeviceAccess::Read { gpa, width };
    let (access, finish) = match (insn.mnemonic(), insn.op0_kind(), insn.op1_kind()) {
        (Mnemonic::Mov, OpKind::Memory, OpKind::Register) => {
            let value = register_value(exit, insn.op1_register()).ok_or_else(unsupported)?;
            (DeviceAccess::Write { gpa, width, value }, Finish::Nothing)
        }
        (Mnemonic::Mov, OpKind::Memory, _) => {
            let value = immediate(&insn).ok_or_else(unsupported)?;
            (DeviceAccess::Write { gpa, width, value }, Finish::Nothing)
        }
        (Mnemonic::Mov | Mnemonic::Movzx | Mnemonic::Movsx, OpKind::Register, OpKind::Memory) => {
            let load = load_into(insn.op0_register(), insn.mnemonic() == Mnemonic::Movsx)
                .ok_or_else(unsupported)?;
            (read, Finish::Load(load))
        }
        (Mnemonic::Cmp | Mnemonic::Test, first, second) => {
            let (device_first, other) = match (first, second) {
                (OpKind::Memory, OpKind::Register) => {
                    (true, register_value(exit, insn.op1_register()))
                }
                (OpKind::Memory, _) => (true, immediate(&insn)),
                (OpKind::Register, OpKind::Memory) => {
                    (false, register_value(exit, insn.op0_register()))
                }
                _ => (true, None),
            };
            let compare = Compare {
                test: insn.mnemonic() == Mnemonic::Test,
                other: other.ok_or_else(unsupported)?,
                device_first,
            };
            (read, Finish::Compare(compare))
        }
        _ => return Err(unsupported()),
    };
    if matches!(access, DeviceAccess::Write { .. }) != exit.write {
        return Err(Unemulated::DirectionMismatch { rip, text: text() });
    }
    Ok(Emulation {
        access,
        finish,
        len: insn.len() as u64,
        instruction: insn,
    })
}

fn intel_text(instruction: &Instruction) -> String {
    let mut out = String::new();
    iced_x86::IntelFormatter::new().format(instruction, &mut out);
    out
}

fn mask(width: usize) -> u64 {
    if width >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * width)) - 1
    }
}

/// The general register an iced-x86 register is part of, and whether it is a high byte.
fn general_register(register: Register) -> Option<(Reg, bool)> {
    if !register.is_gpr() {
        return None;
    }
    let high_byte = matches!(
        register,
        Register::AH | Register::CH | Register::DH | Register::BH
    );
    let full = register.full_register();
    let number = full as usize - Register::RAX as usize;
    Reg::BY_ENCODING.get(number).map(|reg| (*reg, high_byte))
}

/// The value a store writes from `register`, as wide as the register.
fn register_value(exit: &MmioAccess, register: Register) -> Option<u64> {
    let (reg, high_byte) = general_register(register)?;
    let value = exit.regs.get(reg);
    Some(if high_byte { value >> 8 } else { value } & mask(register.size()))
}

/// A store's immediate, sign-extended to 64 bits as the CPU extends it to the access width.
fn immediate(insn: &Instruction) -> Option<u64> {
    match insn.op1_kind() {
        OpKind::Immediate8
        | OpKind::Immediate16
        | OpKind::Immediate32
        | OpKind::Immediate32to64
        | OpKind::Immediate8to16
        | OpKind::Immediate8to32
        | OpKind::Immediate8to64 => Some(insn.immediate(1)),
        _ => None,
    }
}

fn load_into(register: Register, sign_extend: bool) -> Option<Load> {
    let (reg, high_byte) = general_register(register)?;
    // RSP is never a device register's destination in sane code, and writing it from a device
    // would let the device choose the guest's stack: refused as unsupported.
    if reg == Reg::Rsp {
        return None;
    }
    Some(Load {
        reg,
        dest_width: register.size(),
        high_byte,
        sign_extend,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lguest_abi::exit::MMIO_INSN_MAX;
    use lguest_abi::regs::Regs;

    const RIP: u64 = 0xffff_ffff_8100_0000;
    const GPA: u64 = 0x400_0070;

    fn exit(bytes: &[u8], write: bool, set: &[(Reg, u64)]) -> MmioAccess {
        let mut insn = [0u8; MMIO_INSN_MAX];
        insn[..bytes.len()].copy_from_slice(bytes);
        let mut regs = Regs::default();
        regs.set(Reg::Rip, RIP);
        for (reg, value) in set {
            regs.set(*reg, *value);
        }
        MmioAccess {
            gpa: GPA,
            write,
            insn,
            insn_len: bytes.len(),
            regs,
        }
    }

    #[test]
    fn stores_take_the_value_from_the_register_or_immediate() {
        // mov [rdi], eax
        let e = exit(&[0x89, 0x07], true, &[(Reg::Rax, 0xdead_beef_1234_5678)]);
        let emulation = decode(&e).unwrap();
        assert_eq!(
            emulation.access,
            DeviceAccess::Write {
                gpa: GPA,
                width: 4,
                value: 0x1234_5678
            }
        );
        assert_eq!(emulation.completion(&e, 0), vec![(Reg::Rip, RIP + 2)]);
        // mov [rdi+0x70], bh
        let e = exit(&[0x88, 0x7f, 0x70], true, &[(Reg::Rbx, 0xab00)]);
        assert_eq!(
            decode(&e).unwrap().access,
            DeviceAccess::Write {
                gpa: GPA,
                width: 1,
                value: 0xab
            }
        );
        // mov dword [rdi], 0x2 and mov qword [rdi], -1
        let e = exit(&[0xc7, 0x07, 2, 0, 0, 0], true, &[]);
        assert_eq!(
            decode(&e).unwrap().access,
            DeviceAccess::Write {
                gpa: GPA,
                width: 4,
                value: 2
            }
        );
        let e = exit(&[0x48, 0xc7, 0x07, 0xff, 0xff, 0xff, 0xff], true, &[]);
        assert_eq!(
            decode(&e).unwrap().access,
            DeviceAccess::Write {
                gpa: GPA,
                width: 8,
                value: u64::MAX
            }
        );
    }

    #[test]
    fn loads_follow_the_partial_register_rules() {
        let old = 0x1111_2222_3333_4444;
        // mov eax, [rdi]: the upper half is cleared.
        let e = exit(&[0x8b, 0x07], false, &[(Reg::Rax, old)]);
        let emulation = decode(&e).unwrap();
        assert_eq!(emulation.access, DeviceAccess::Read { gpa: GPA, width: 4 });
        assert_eq!(
            emulation.completion(&e, 0xffff_ffff_7472_6976),
            vec![(Reg::Rax, 0x7472_6976), (Reg::Rip, RIP + 2)]
        );
        // mov r9w, [rdi]: only the low 16 bits change.
        let e = exit(&[0x66, 0x44, 0x8b, 0x0f], false, &[(Reg::R9, old)]);
        assert_eq!(
            decode(&e).unwrap().completion(&e, 0xabcd),
            vec![(Reg::R9, 0x1111_2222_3333_abcd), (Reg::Rip, RIP + 4)]
        );
        // mov ah, [rdi]: bits 8-15.
        let e = exit(&[0x8a, 0x27], false, &[(Reg::Rax, old)]);
        assert_eq!(
            decode(&e).unwrap().completion(&e, 0x99),
            vec![(Reg::Rax, 0x1111_2222_3333_9944), (Reg::Rip, RIP + 2)]
        );
        // movzx ecx, byte [rdi] and movsx rdx, word [rdi]
        let e = exit(&[0x0f, 0xb6, 0x0f], false, &[(Reg::Rcx, old)]);
        assert_eq!(
            decode(&e).unwrap().completion(&e, 0x80)[0],
            (Reg::Rcx, 0x80)
        );
        let e = exit(&[0x48, 0x0f, 0xbf, 0x17], false, &[]);
        assert_eq!(
            decode(&e).unwrap().completion(&e, 0x8000)[0],
            (Reg::Rdx, 0xffff_ffff_ffff_8000)
        );
    }

    #[test]
    fn comparisons_set_the_arithmetic_flags_as_the_cpu_does() {
        const CF: u64 = 1;
        const PF: u64 = 4;
        const AF: u64 = 0x10;
        const ZF: u64 = 0x40;
        const SF: u64 = 0x80;
        const OF: u64 = 0x800;
        // IF and IOPL are not the launcher's to change, and a stale ZF must go.
        let rflags = 0x3202 | ZF;
        let flags_after = |bytes: &[u8], set: &[(Reg, u64)], device: u64| {
            let mut set = set.to_vec();
            set.push((Reg::Rflags, rflags));
            let e = exit(bytes, false, &set);
            let writes = decode(&e).unwrap().completion(&e, device);
            assert_eq!(writes[1], (Reg::Rip, RIP + bytes.len() as u64));
            assert_eq!(writes[0].0, Reg::Rflags);
            assert_eq!(writes[0].1 & 0x3200, 0x3200, "IF and IOPL kept");
            writes[0].1 & RFLAGS_ARITHMETIC
        };
        // cmp dword [rax+rcx*4+0x40], 0: what rustc made of `read_volatile(..) != 0`.
        let cmp_zero = [0x83, 0x7c, 0x88, 0x40, 0x00];
        assert_eq!(flags_after(&cmp_zero, &[], 0), ZF | PF);
        assert_eq!(flags_after(&cmp_zero, &[], 1), 0);
        assert_eq!(flags_after(&cmp_zero, &[], 0x8000_0000), SF | PF);
        // cmp eax, [rdi]: eax - device.
        let cmp_reg_mem = [0x3b, 0x07];
        assert_eq!(
            flags_after(&cmp_reg_mem, &[(Reg::Rax, 1)], 2),
            CF | SF | AF | PF
        );
        // cmp byte [rdi], 0x7f with the device at 0x80: 0x80 - 0x7f overflows a signed byte.
        assert_eq!(flags_after(&[0x80, 0x3f, 0x7f], &[], 0x80), OF | AF);
        // test dword [rdi], 0x100 and test [rdi], eax
        assert_eq!(flags_after(&[0xf7, 0x07, 0, 1, 0, 0], &[], 0x100), PF);
        assert_eq!(
            flags_after(&[0x85, 0x07], &[(Reg::Rax, 0xff)], 0x100),
            ZF | PF
        );
    }

    #[test]
    fn other_instructions_are_refused_with_their_text() {
        // or [rdi], eax: a read-modify-write.
        let err = decode(&exit(&[0x09, 0x07], true, &[])).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "the device access at rip {RIP:#x} uses 'or [rdi],eax', which the launcher does \
                 not emulate (only mov, movzx and movsx reach device registers)"
            )
        );
        // mov rsp, [rdi]
        assert!(matches!(
            decode(&exit(&[0x48, 0x8b, 0x27], false, &[])),
            Err(Unemulated::Unsupported { .. })
        ));
        // A cut-off instruction, and one whose direction disagrees with the fault.
        assert_eq!(
            decode(&exit(&[0x48, 0xc7], true, &[])),
            Err(Unemulated::Undecodable { rip: RIP })
        );
        assert!(matches!(
            decode(&exit(&[0x8b, 0x07], true, &[])),
            Err(Unemulated::DirectionMismatch { .. })
        ));
    }
}
