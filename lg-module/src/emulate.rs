//! The instruction at a trap's RIP: what the host makes of its bytes.
//!
//! Part of the way back from the guest. A #GP or #UD is sometimes not the guest's fault but an
//! instruction the host carries out on its behalf: an `int n` the real IDT refused (docs/traps.md),
//! a `syscall` with EFER.SCE off, or one of the privileged instructions a Linux kernel executes
//! without a paravirt hook (`mov` from CR4, `xsetbv`, port I/O: the ABI's `privileged` module).
//! Exit handling (`exception` in src/exit/interrupts_and_traps.rs) fetches the bytes at RIP
//! once, through the guest's page tables (`fetch_instruction` in src/exit/memory.rs), and every
//! decision here is made on that one copy: the launcher shares guest memory and could change a
//! byte between two reads.
//!
//! Only exact encodings are recognised. What is not is the guest's #GP or #UD, as before.

use crate::abi::privileged::{virtual_cr4, xcr0_refusal, PORT_IN_VALUE};
use crate::abi::regs::{Reg, Regs};
use crate::death;
use crate::death::Death;

/// The longest instruction the CPU decodes.
const INSN_MAX: usize = 15;

/// The length of the `int n` at the start of `bytes` (`cd n`, or `cc` for n = 3), if that is
/// what is there. A software interrupt resumes after its instruction, and the error code of
/// the #GP it raised is no proof of what is at RIP. Prefixes change nothing for `int n` and the
/// CPU accepts them, up to its 15 bytes: the legacy ones (segment overrides, operand and address
/// size, REP) and REX. (The kernel's mov_ss_trap selftest runs `int3` behind fourteen of them.)
pub fn int_length(bytes: &[u8], n: u64) -> Option<u64> {
    let prefixes = bytes
        .iter()
        .take_while(|b| {
            matches!(
                b,
                0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x66 | 0x67 | 0xf2 | 0xf3 | 0x40..=0x4f
            )
        })
        .count();
    let length = match &bytes[prefixes..] {
        [0xcd, v, ..] if u64::from(*v) == n => 2,
        [0xcc, ..] if n == 3 => 1,
        _ => return None,
    };
    (prefixes + length <= INSN_MAX).then_some((prefixes + length) as u64)
}

/// RFLAGS.RF: the CPU sets it in the flags it saves for a fault, and clears it once an
/// instruction completes.
const RFLAGS_RF: u64 = 1 << 16;

/// `regs` after the host carried out, on the guest's behalf, the `len`-byte instruction at RIP
/// that faulted: RIP past it, and RF clear, as after any instruction that completes (the fault
/// left RF set in the flags it saved).
pub fn complete(regs: &mut Regs, len: u64) {
    regs.set(Reg::Rip, regs.get(Reg::Rip).wrapping_add(len));
    regs.set(Reg::Rflags, regs.get(Reg::Rflags) & !RFLAGS_RF);
}

/// Whether `bytes` start with `syscall` (`0f 05`).
pub fn is_syscall(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x0f, 0x05])
}

/// What the host runs the guest with, which emulated instructions show it.
#[derive(Clone, Copy, Debug)]
pub struct HostCpu {
    /// The host's CR4.
    pub cr4: u64,
    /// The host's XCR0, 0 without XSAVE.
    pub xcr0: u64,
}

/// A privileged instruction the host emulates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Privileged {
    /// `mov %cr4, %reg`, `reg` in ModRM order (0 RAX, 1 RCX, ... 15 R15).
    ReadCr4 {
        reg: u8,
    },
    Xsetbv,
    /// `in` of `width` bytes (1, 2 or 4) into AL, AX or EAX.
    In {
        width: u8,
    },
    Out,
}

/// The privileged instruction `bytes` start with, and its length, if it is one the host
/// emulates (the table in the ABI's `privileged` module).
fn decode(bytes: &[u8]) -> Option<(Privileged, u64)> {
    match bytes {
        [0x0f, 0x01, 0xd1, ..] => Some((Privileged::Xsetbv, 3)),
        [0x0f, 0x20, modrm, ..] => read_cr4(0, *modrm).map(|insn| (insn, 3)),
        // REX: W is ignored (a control register move is always 64-bit), B extends ModRM.rm; R
        // would name CR12, which is #UD, never this #GP.
        [rex @ 0x40..=0x4f, 0x0f, 0x20, modrm, ..] if rex & 0x4 == 0 => {
            read_cr4(rex & 1, *modrm).map(|insn| (insn, 4))
        }
        [0x66, rest @ ..] => port_io(rest, 2).map(|(insn, len)| (insn, len + 1)),
        _ => port_io(bytes, 4),
    }
}

/// `mov %cr4, %reg` from its ModRM byte (mod 3, reg 4), `rex_b` extending the register.
fn read_cr4(rex_b: u8, modrm: u8) -> Option<Privileged> {
    (modrm >> 6 == 3 && (modrm >> 3) & 7 == 4).then_some(Privileged::ReadCr4 {
        reg: rex_b << 3 | (modrm & 7),
    })
}

/// `in` or `out` with a port in DX or an immediate; `wide` is the width of the forms that are
/// not byte-sized (4, or 2 after an operand-size prefix).
fn port_io(bytes: &[u8], wide: u8) -> Option<(Privileged, u64)> {
    let opcode = *bytes.first()?;
    let immediate = match opcode {
        0xe4..=0xe7 => true,
        0xec..=0xef => false,
        _ => return None,
    };
    if immediate && bytes.len() < 2 {
        return None;
    }
    let width = if opcode & 1 == 0 { 1 } else { wide };
    let insn = if opcode & 2 == 0 {
        Privileged::In { width }
    } else {
        Privileged::Out
    };
    Some((insn, 1 + u64::from(immediate)))
}

/// Carry out the privileged instruction at the start of `bytes` for a #GP with `error` code, if
/// it is one the host emulates from the guest kernel: change `regs` as the instruction would
/// (RIP past it). `Ok(false)`: not for the host to emulate (another instruction, a #GP not of
/// this kind, guest user mode), the guest's #GP as before. An `xsetbv` of a value the host
/// refuses kills the guest.
pub fn emulate(bytes: &[u8], error: u64, regs: &mut Regs, host: HostCpu) -> Result<bool, Death> {
    // Each raises #GP(0) at CPL 1; ring 3 gets its #GP, as on hardware.
    if error != 0 || regs.get(Reg::Cs) & 3 != 1 {
        return Ok(false);
    }
    let Some((insn, len)) = decode(bytes) else {
        return Ok(false);
    };
    match insn {
        Privileged::ReadCr4 { reg } => {
            regs.set(Reg::BY_ENCODING[reg as usize], virtual_cr4(host.cr4))
        }
        Privileged::Xsetbv => {
            let index = regs.get(Reg::Rcx) as u32;
            let value = (regs.get(Reg::Rdx) as u32 as u64) << 32 | regs.get(Reg::Rax) as u32 as u64;
            if let Some(why) = xcr0_refusal(index, value, host.xcr0) {
                return Err(death!(
                    "xsetbv of {value:#x} to XCR{index} (the host's XCR0 is {:#x}): {why}",
                    host.xcr0
                ));
            }
        }
        Privileged::In { width } => {
            // A 32-bit destination zero-extends into RAX; AL and AX leave the rest alone.
            let rax = regs.get(Reg::Rax);
            let value = match width {
                1 => rax & !0xff | PORT_IN_VALUE & 0xff,
                2 => rax & !0xffff | PORT_IN_VALUE & 0xffff,
                _ => PORT_IN_VALUE & 0xffff_ffff,
            };
            regs.set(Reg::Rax, value);
        }
        Privileged::Out => {}
    }
    complete(regs, len);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::boot::{GUEST_KERNEL_CS, GUEST_USER_CS};

    const HOST: HostCpu = HostCpu {
        cr4: 0x770ff0,
        xcr0: 0x7,
    };
    const RIP: u64 = 0x20_0000;

    fn kernel_regs() -> Regs {
        let mut regs = Regs::default();
        regs.set(Reg::Cs, GUEST_KERNEL_CS);
        regs.set(Reg::Rip, RIP);
        regs.set(Reg::Rax, 0x1122_3344_5566_7788);
        regs
    }

    /// Emulate `bytes` from the guest kernel: the registers after, or None if not emulated.
    fn run(bytes: &[u8]) -> Option<Regs> {
        let mut regs = kernel_regs();
        emulate(bytes, 0, &mut regs, HOST).unwrap().then_some(regs)
    }

    #[test]
    fn int_and_syscall_are_recognised_by_their_bytes() {
        assert_eq!(int_length(&[0xcd, 0x80], 0x80), Some(2));
        assert_eq!(int_length(&[0xcd, 0x81], 0x80), None);
        assert_eq!(int_length(&[0xcc], 3), Some(1));
        assert_eq!(int_length(&[0xcc], 4), None);
        assert_eq!(
            int_length(&[0x2e, 0x2e, 0xcc], 3),
            Some(3),
            "behind prefixes"
        );
        assert_eq!(int_length(&[0x66, 0x48, 0xcd, 0x80], 0x80), Some(4));
        let mut longest = [0x2e; 15];
        longest[14] = 0xcc;
        assert_eq!(int_length(&longest, 3), Some(15), "fourteen prefixes");
        assert_eq!(
            int_length(&[0x2e; 15], 3),
            None,
            "prefixes and nothing else"
        );
        assert_eq!(
            int_length(&[0xf0, 0xcc], 3),
            None,
            "lock is no prefix for int3"
        );
        let mut regs = Regs::default();
        regs.set(Reg::Rip, 0x1000);
        regs.set(Reg::Rflags, 0x10202);
        complete(&mut regs, 3);
        assert_eq!((regs.get(Reg::Rip), regs.get(Reg::Rflags)), (0x1003, 0x202));
        assert_eq!(int_length(&[0xcd], 0), None);
        assert!(is_syscall(&[0x0f, 0x05, 0x90]));
        assert!(!is_syscall(&[0x0f]));
    }

    #[test]
    fn mov_from_cr4_writes_the_virtual_cr4_into_any_register() {
        // mov %cr4, %rax; mov %cr4, %rsi; mov %cr4, %r13 (REX.B); REX.W ignored.
        for (bytes, reg, len) in [
            (&[0x0f, 0x20, 0xe0][..], Reg::Rax, 3),
            (&[0x0f, 0x20, 0xe6][..], Reg::Rsi, 3),
            (&[0x41, 0x0f, 0x20, 0xe5][..], Reg::R13, 4),
            (&[0x49, 0x0f, 0x20, 0xe0][..], Reg::R8, 4),
        ] {
            let regs = run(bytes).unwrap();
            assert_eq!(regs.get(reg), 0x50620, "{bytes:x?}");
            assert_eq!(regs.get(Reg::Rip), RIP + len);
        }
    }

    #[test]
    fn other_control_register_moves_are_not_emulated() {
        for bytes in [
            &[0x0f, 0x22, 0xe0][..],       // mov %rax, %cr4
            &[0x0f, 0x20, 0xc0][..],       // mov %cr0, %rax
            &[0x0f, 0x20, 0xd8][..],       // mov %cr3, %rax
            &[0x44, 0x0f, 0x20, 0xe0][..], // REX.R: %cr12
            &[0x0f, 0x20, 0x20][..],       // mod 0
            &[0x66, 0x0f, 0x20, 0xe0][..], // a prefix
            &[0x0f, 0x20][..],             // cut short
        ] {
            assert!(run(bytes).is_none(), "{bytes:x?}");
        }
    }

    #[test]
    fn port_input_is_all_ones_at_its_width() {
        let before = 0x1122_3344_5566_7788;
        for (bytes, rax, len) in [
            (&[0xec][..], before | 0xff, 1),
            (&[0xe4, 0x61][..], before | 0xff, 2),
            (&[0x66, 0xed][..], before | 0xffff, 2),
            (&[0x66, 0xe5, 0x40][..], before | 0xffff, 3),
            (&[0xed][..], 0xffff_ffff, 1),
            (&[0xe5, 0x71][..], 0xffff_ffff, 2),
        ] {
            let regs = run(bytes).unwrap();
            assert_eq!(regs.get(Reg::Rax), rax, "{bytes:x?}");
            assert_eq!(regs.get(Reg::Rip), RIP + len, "{bytes:x?}");
        }
    }

    #[test]
    fn port_output_is_skipped_and_string_forms_are_not_emulated() {
        for (bytes, len) in [
            (&[0xee][..], 1),
            (&[0xe6, 0x80][..], 2),
            (&[0x66, 0xef][..], 2),
            (&[0xe7, 0x43][..], 2),
        ] {
            let regs = run(bytes).unwrap();
            assert_eq!(regs.get(Reg::Rax), kernel_regs().get(Reg::Rax));
            assert_eq!(regs.get(Reg::Rip), RIP + len, "{bytes:x?}");
        }
        for bytes in [
            &[0x6c][..],       // insb
            &[0x6f][..],       // outsd
            &[0xf3, 0x6e][..], // rep outsb
            &[0xe4][..],       // cut short
            &[0x66, 0x66, 0xec][..],
            &[0x48, 0xed][..],
        ] {
            assert!(run(bytes).is_none(), "{bytes:x?}");
        }
    }

    #[test]
    fn only_the_guest_kernel_and_only_gp_0() {
        let mut user = kernel_regs();
        user.set(Reg::Cs, GUEST_USER_CS);
        assert_eq!(emulate(&[0xec], 0, &mut user, HOST), Ok(false));
        let mut regs = kernel_regs();
        assert_eq!(emulate(&[0xec], 0x80 << 3 | 2, &mut regs, HOST), Ok(false));
        assert_eq!(regs, kernel_regs());
    }

    #[test]
    fn xsetbv_accepts_a_subset_of_the_hosts_xcr0_and_kills_otherwise() {
        let xsetbv = [0x0f, 0x01, 0xd1];
        let with = |rcx: u64, rdx: u64, rax: u64| {
            let mut regs = kernel_regs();
            regs.set(Reg::Rcx, rcx);
            regs.set(Reg::Rdx, rdx);
            regs.set(Reg::Rax, rax);
            let before = regs;
            emulate(&xsetbv, 0, &mut regs, HOST).map(|done| (done, before, regs))
        };
        let (done, before, after) = with(0, 0, 0x7).unwrap();
        assert!(done);
        assert_eq!(after.get(Reg::Rip), RIP + 3);
        assert_eq!(after.get(Reg::Rax), before.get(Reg::Rax));
        // The high halves of RAX, RCX and RDX are ignored, as by the CPU.
        assert!(with(1 << 32, 1 << 32, 0xffff_ffff_0000_0003).is_ok());
        for (rcx, rdx, rax) in [(1, 0, 3), (0, 0, 1), (0, 0, 0xf), (0, 1, 3)] {
            let death = with(rcx, rdx, rax).unwrap_err();
            assert!(death.as_bytes().starts_with(b"xsetbv of "), "{death:?}");
        }
    }
}
