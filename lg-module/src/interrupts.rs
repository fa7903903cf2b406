//! Traps and interrupts delivered to the guest, minus the hardware.
//!
//! The real IDT is the Switcher's: every trap comes to the host. What the guest installs with
//! LOAD_IDT_ENTRY is a *virtual* IDT, checked here ([`GuestGate::decode`]) and kept by the host,
//! which delivers a trap or interrupt through it the way the CPU would have: it builds the frame
//! ([`trap_frame`]) on the guest kernel's stack and resumes the guest at the handler. The
//! frame's conventions (CS shown with RPL 0 for kernel-mode traps, RFLAGS.IF = the virtual flag)
//! are the ABI's (`abi::hcall`). Exit handling (`deliver` in src/exit/interrupts_and_traps.rs)
//! writes the frame into guest memory and changes the registers.

use crate::abi::boot::{GUEST_KERNEL_CS, GUEST_KERNEL_SS};
use crate::abi::data::IRQ_ENABLED;
use crate::abi::hcall;
use crate::abi::regs::{Reg, Regs};
use crate::death;
use crate::death::Death;
use crate::traps::is_canonical;

/// A handler the guest installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestGate {
    /// The handler's guest-virtual address.
    pub handler: u64,
    /// An interrupt gate turns the virtual interrupt flag off on delivery; a trap gate leaves it.
    pub interrupt_gate: bool,
    /// The outermost ring that may reach it with `int n` (its DPL).
    pub dpl: u8,
}

impl GuestGate {
    /// Check a 16-byte gate the guest gave LOAD_IDT_ENTRY (`low`, `high` quadwords). `None`:
    /// not present (remove the handler). Anything but a present interrupt or trap gate into the
    /// guest's own kernel code segment, with no IST and a canonical handler, is refused: the
    /// guest may not install task or call gates, nor aim a gate at a segment of the host's.
    pub fn decode(vector: u64, low: u64, high: u64) -> Result<Option<GuestGate>, Death> {
        if vector > 255 {
            return Err(death!("LOAD_IDT_ENTRY for vector {vector}"));
        }
        if vector == hcall::VECTOR as u64 {
            return Err(death!("LOAD_IDT_ENTRY for the hypercall vector"));
        }
        let attributes = (low >> 40) & 0xff;
        if attributes & 0x80 == 0 {
            return Ok(None);
        }
        let kind = attributes & 0x1f;
        if kind != 0xe && kind != 0xf {
            return Err(death!(
                "LOAD_IDT_ENTRY {vector}: gate type {kind:#x} (only 0xe and 0xf)"
            ));
        }
        let selector = (low >> 16) & 0xffff;
        if selector | 1 != GUEST_KERNEL_CS {
            return Err(death!(
                "LOAD_IDT_ENTRY {vector}: gate into selector {selector:#x}"
            ));
        }
        if (low >> 32) & 7 != 0 {
            return Err(death!("LOAD_IDT_ENTRY {vector}: gate with an IST stack"));
        }
        if (low >> 35) & 0x1f != 0 {
            return Err(death!("LOAD_IDT_ENTRY {vector}: reserved bits set"));
        }
        if high >> 32 != 0 {
            return Err(death!("LOAD_IDT_ENTRY {vector}: reserved bits set"));
        }
        let handler = (low & 0xffff) | ((low >> 48) & 0xffff) << 16 | (high & 0xffff_ffff) << 32;
        if !is_canonical(handler) {
            return Err(death!(
                "LOAD_IDT_ENTRY {vector}: non-canonical handler {handler:#x}"
            ));
        }
        Ok(Some(GuestGate {
            handler,
            interrupt_gate: kind == 0xe,
            dpl: ((attributes >> 5) & 3) as u8,
        }))
    }
}

/// The exceptions for which the CPU pushes an error code, one bit per vector: #DF (8), #TS to
/// #PF (10-14), #AC (17), #CP (21), #VC (29) and #SX (30). The Switcher's stubs push a zero for
/// every other vector, reading the same mask (switcher/layout.h).
pub const ERROR_CODE_VECTORS: u32 =
    (1 << 8) | (0b1_1111 << 10) | (1 << 17) | (1 << 21) | (1 << 29) | (1 << 30);

/// Whether the CPU pushes an error code for exception `vector`.
pub fn has_error_code(vector: u64) -> bool {
    vector < 32 && ERROR_CODE_VECTORS & (1 << vector) != 0
}

/// The frame to push for a trap with `vector` (and `error`, if it has one) taken at `regs`,
/// lowest address first, with `irq_enabled` the virtual flag; and how many words it has.
pub fn trap_frame(regs: &Regs, irq_enabled: u64, error: Option<u64>) -> ([u64; 6], usize) {
    const IF: u64 = 1 << 9;
    let from_user = regs.get(Reg::Cs) & 3 == 3;
    // A kernel-mode trap shows RPL 0, so that `cs & 3` means "came from user mode" (ABI).
    let (cs, ss) = if from_user {
        (regs.get(Reg::Cs), regs.get(Reg::Ss))
    } else {
        (regs.get(Reg::Cs) & !3, regs.get(Reg::Ss) & !3)
    };
    let flags = regs.get(Reg::Rflags) & !IF | if irq_enabled != 0 { IF } else { 0 };
    let (rip, rsp) = (regs.get(Reg::Rip), regs.get(Reg::Rsp));
    match error {
        Some(code) => ([code, rip, cs, flags, rsp, ss], 6),
        None => ([rip, cs, flags, rsp, ss, 0], 5),
    }
}

/// Where the frame goes: the stack the guest was on if it was in its kernel, else the one it
/// gave SET_STACK; 16-byte aligned as the CPU aligns it, and below it the frame itself.
pub fn frame_address(regs: &Regs, kernel_stack: u64, words: usize) -> Result<u64, Death> {
    let from_user = regs.get(Reg::Cs) & 3 == 3;
    let top = if from_user {
        kernel_stack
    } else {
        regs.get(Reg::Rsp)
    };
    if from_user && top == 0 {
        return Err(death!("a trap from user mode before SET_STACK"));
    }
    let at = (top & !0xf).wrapping_sub(8 * words as u64);
    if !is_canonical(at) || !is_canonical(top) {
        return Err(death!("cannot deliver a trap: stack at {top:#x}"));
    }
    Ok(at)
}

/// RFLAGS bits the CPU clears when it delivers through a gate (the frame keeps them): TF, so a
/// single-stepped user program does not single-step the kernel's handler too; NT and RF.
const FLAGS_CLEARED_ON_DELIVERY: u64 = 1 << 8 | 1 << 14 | 1 << 16;

/// The registers that resume the guest at `gate`'s handler with its frame at `frame_at`.
pub fn enter_handler(regs: &mut Regs, gate: &GuestGate, frame_at: u64) {
    regs.set(Reg::Rip, gate.handler);
    regs.set(Reg::Cs, GUEST_KERNEL_CS);
    regs.set(Reg::Ss, GUEST_KERNEL_SS);
    regs.set(Reg::Rsp, frame_at);
    let flags = regs.get(Reg::Rflags);
    regs.set(Reg::Rflags, flags & !FLAGS_CLEARED_ON_DELIVERY);
}

/// What SYSCALL clears in RFLAGS for the kernel it enters, as Linux's SYSCALL_MASK has it on
/// every x86-64 host: TF, DF, IOPL, AC and NT, and IF, which for the guest is the virtual flag
/// (the interrupt gate clears it). The host applies it to the handler of a `syscall` it delivers:
/// Linux's entry after the hardware frame counts on DF clear, as its SYSCALL leaves it, and has
/// no `cld` of its own.
pub const SYSCALL_FLAGS_MASK: u64 = 1 << 8 | 1 << 10 | 3 << 12 | 1 << 18 | 1 << 14;

/// The exceptions an `iretq` raises when the frame it pops is one the CPU refuses: a bad or
/// not-present selector, a non-canonical RIP (#GP, #NP, #SS).
pub const IRET_FAULTS: [u64; 3] = [11, 12, 13];

/// Whether a fault with `vector`, taken in the guest kernel at an `iretq` (`insn`, the bytes at
/// RIP) whose frame is `frame` (RIP, CS, RFLAGS, RSP, SS, read at RSP), is a return to user
/// mode that the CPU refused. If so the fault is the user program's, not the kernel's: it is
/// delivered as if the `iretq` had completed and the fault had come from user mode at the
/// frame's target (`rewind_to_iret_target`), which is what Linux's `fixup_bad_iret` makes of it
/// natively. The other registers already hold what the user program should see: a kernel's
/// `iretq` is its last instruction on the way out.
pub fn is_refused_return_to_user(vector: u64, cpl: u64, insn: &[u8], frame: &[u64; 5]) -> bool {
    cpl != 3
        && IRET_FAULTS.contains(&vector)
        && insn.starts_with(&[0x48, 0xcf])
        && frame[1] & 3 == 3
}

/// The registers as they would be had the `iretq` popped `frame` (RIP, CS, RFLAGS, RSP, SS).
pub fn rewind_to_iret_target(regs: &mut Regs, frame: &[u64; 5]) {
    for (reg, value) in [Reg::Rip, Reg::Cs, Reg::Rflags, Reg::Rsp, Reg::Ss]
        .into_iter()
        .zip(frame)
    {
        regs.set(reg, *value);
    }
}

/// If a #GP with `error` came from an `int n` the guest's IDT would allow from ring `cpl`,
/// that n. The real IDT lets the guest use only the hypercall gate, so every other `int n`
/// arrives as #GP with error `n * 8 + 2` ("IDT", vector n) at the instruction.
pub fn software_interrupt(error: u64, cpl: u64, gate: Option<&GuestGate>) -> Option<u64> {
    if error & 3 != 2 {
        return None;
    }
    let vector = error >> 3;
    match gate {
        Some(g) if vector <= 255 && cpl <= g.dpl as u64 => Some(vector),
        _ => None,
    }
}

/// The handler a direct trap may jump to for the system-call vector, if the guest's gate for it
/// allows one: user code may reach it (DPL 3), it is a trap gate (an interrupt gate must clear
/// the virtual interrupt flag, which only the host can do), and the guest has told the host its
/// kernel stack (SET_STACK), where the CPU will push the frame.
pub fn direct_trap_handler(gate: Option<&GuestGate>, kernel_stack: u64) -> Option<u64> {
    let gate = gate?;
    (gate.dpl == 3 && !gate.interrupt_gate && kernel_stack != 0).then_some(gate.handler)
}

/// The IRQ to deliver next: the lowest pending one not blocked.
pub fn next_irq(pending: u64, blocked: u64) -> Option<u32> {
    let ready = pending & !blocked;
    (ready != 0).then(|| ready.trailing_zeros())
}

/// Whether an interrupt may be delivered now: the virtual flag is on and the guest is not in
/// its return-from-trap window.
pub fn may_interrupt(irq_enabled: u64, rip: u64, noirq: (u64, u64)) -> bool {
    irq_enabled & IRQ_ENABLED != 0 && !(noirq.0..noirq.1).contains(&rip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::boot::{GUEST_USER_CS, GUEST_USER_SS};

    fn gate(handler: u64, kind: u64, dpl: u64, selector: u64) -> (u64, u64) {
        let [low, high] = hcall::idt_gate(handler, selector, kind, dpl);
        (low, high)
    }

    #[test]
    fn error_codes_come_with_the_vectors_the_sdm_lists() {
        let with: std::vec::Vec<u64> = (0..256).filter(|&v| has_error_code(v)).collect();
        assert_eq!(with, [8, 10, 11, 12, 13, 14, 17, 21, 29, 30]);
    }

    #[test]
    fn good_gates_decode() {
        let (lo, hi) = gate(0x20_1234, 0xe, 0, GUEST_KERNEL_CS);
        let g = GuestGate::decode(14, lo, hi).unwrap().unwrap();
        assert_eq!(
            g,
            GuestGate {
                handler: 0x20_1234,
                interrupt_gate: true,
                dpl: 0
            }
        );
        let (lo, hi) = gate(0xffff_ffff_8000_0010, 0xf, 3, GUEST_KERNEL_CS & !3);
        let g = GuestGate::decode(0x80, lo, hi).unwrap().unwrap();
        assert_eq!(
            (g.handler, g.interrupt_gate, g.dpl),
            (0xffff_ffff_8000_0010, false, 3)
        );
        assert_eq!(GuestGate::decode(3, 0, 0), Ok(None), "not present: remove");
    }

    #[test]
    fn forbidden_gates_are_refused() {
        let cases = [
            (13, gate(0x1000, 0xc, 0, GUEST_KERNEL_CS)), // call gate
            (13, gate(0x1000, 0x5, 0, GUEST_KERNEL_CS)), // task gate
            (13, gate(0x1000, 0xe, 0, 0x10)),            // into the host's ring-0 segment
            (13, gate(0x1000, 0xe, 3, GUEST_USER_CS)),   // into user code
            (0x1f, gate(0x1000, 0xe, 1, GUEST_KERNEL_CS)), // the hypercall vector
            (300, gate(0x1000, 0xe, 0, GUEST_KERNEL_CS)),
        ];
        for (vector, (lo, hi)) in cases {
            assert!(
                GuestGate::decode(vector, lo, hi).is_err(),
                "vector {vector} {lo:#x}"
            );
        }
        let (lo, hi) = gate(0x1000, 0xe, 0, GUEST_KERNEL_CS);
        assert!(GuestGate::decode(13, lo | 1 << 32, hi).is_err(), "IST");
        assert!(GuestGate::decode(13, lo, hi | 1 << 40).is_err(), "reserved");
        let (lo, hi) = gate(0x8000_0000_0000, 0xe, 0, GUEST_KERNEL_CS);
        assert!(GuestGate::decode(13, lo, hi).is_err(), "non-canonical");
    }

    #[test]
    fn frames_follow_the_abi() {
        let mut regs = Regs::default();
        regs.set(Reg::Rip, 0x20_0000);
        regs.set(Reg::Cs, GUEST_KERNEL_CS);
        regs.set(Reg::Ss, GUEST_KERNEL_SS);
        regs.set(Reg::Rsp, 0x30_0008);
        regs.set(Reg::Rflags, 0x202);
        let (frame, n) = trap_frame(&regs, 0, Some(0x6));
        assert_eq!(
            &frame[..n],
            &[
                0x6,
                0x20_0000,
                GUEST_KERNEL_CS & !3,
                0x2,
                0x30_0008,
                GUEST_KERNEL_SS & !3
            ]
        );
        assert_eq!(frame_address(&regs, 0, n), Ok(0x30_0000 - 48));
        regs.set(Reg::Cs, GUEST_USER_CS);
        regs.set(Reg::Ss, GUEST_USER_SS);
        let (frame, n) = trap_frame(&regs, IRQ_ENABLED, None);
        assert_eq!(
            &frame[..n],
            &[0x20_0000, GUEST_USER_CS, 0x202, 0x30_0008, GUEST_USER_SS]
        );
        assert_eq!(frame_address(&regs, 0x40_0000, n), Ok(0x40_0000 - 40));
        assert!(
            frame_address(&regs, 0, n).is_err(),
            "from user before SET_STACK"
        );
    }

    #[test]
    fn a_handler_starts_without_the_trap_flag() {
        let mut regs = Regs::default();
        // TF, NT, RF and AC set, as a program single-stepping itself might have them.
        regs.set(Reg::Rflags, 0x202 | 1 << 8 | 1 << 14 | 1 << 16 | 1 << 18);
        let gate = GuestGate {
            handler: 0x20_0000,
            interrupt_gate: true,
            dpl: 0,
        };
        enter_handler(&mut regs, &gate, 0x30_0000);
        assert_eq!(
            regs.get(Reg::Rflags),
            0x202 | 1 << 18,
            "AC is left, as the CPU does"
        );
        assert_eq!(regs.get(Reg::Rip), 0x20_0000);
        assert_eq!(regs.get(Reg::Rsp), 0x30_0000);
        assert_eq!(SYSCALL_FLAGS_MASK & (1 << 10), 1 << 10, "DF");
        assert_eq!(
            SYSCALL_FLAGS_MASK & IRQ_ENABLED,
            0,
            "IF is the virtual flag"
        );
    }

    #[test]
    fn a_refused_return_to_user_is_the_user_programs_fault() {
        const IRETQ: [u8; 2] = [0x48, 0xcf];
        let to_user = [0x8000_0000_0000, GUEST_USER_CS, 0x302, 0x7fff_0000, 0x47];
        let to_kernel = [
            0x20_0000,
            GUEST_KERNEL_CS,
            0x202,
            0x30_0000,
            GUEST_KERNEL_SS,
        ];
        assert!(is_refused_return_to_user(13, 1, &IRETQ, &to_user));
        assert!(is_refused_return_to_user(11, 1, &IRETQ, &to_user), "#NP");
        assert!(is_refused_return_to_user(12, 1, &IRETQ, &to_user), "#SS");
        assert!(
            !is_refused_return_to_user(14, 1, &IRETQ, &to_user),
            "a page fault"
        );
        assert!(
            !is_refused_return_to_user(13, 3, &IRETQ, &to_user),
            "user mode's own iretq"
        );
        assert!(
            !is_refused_return_to_user(13, 1, &IRETQ, &to_kernel),
            "back to the kernel"
        );
        assert!(
            !is_refused_return_to_user(13, 1, &[0xcf], &to_user),
            "a 32-bit iret"
        );
        assert!(
            !is_refused_return_to_user(13, 1, &[0x0f, 0x0b], &to_user),
            "not an iret"
        );
        let mut regs = Regs::default();
        regs.set(Reg::Rax, 42);
        rewind_to_iret_target(&mut regs, &to_user);
        assert_eq!(
            [Reg::Rip, Reg::Cs, Reg::Rflags, Reg::Rsp, Reg::Ss, Reg::Rax].map(|r| regs.get(r)),
            [
                0x8000_0000_0000,
                GUEST_USER_CS,
                0x302,
                0x7fff_0000,
                0x47,
                42
            ]
        );
    }

    #[test]
    fn software_interrupts_need_a_gate_open_to_the_ring() {
        let user_gate = GuestGate {
            handler: 1,
            interrupt_gate: false,
            dpl: 3,
        };
        let kernel_gate = GuestGate {
            handler: 1,
            interrupt_gate: true,
            dpl: 0,
        };
        assert_eq!(
            software_interrupt(0x80 << 3 | 2, 3, Some(&user_gate)),
            Some(0x80)
        );
        assert_eq!(
            software_interrupt(0x80 << 3 | 2, 3, Some(&kernel_gate)),
            None
        );
        assert_eq!(
            software_interrupt(3 << 3 | 2, 1, Some(&kernel_gate)),
            None,
            "ring 1 > DPL 0"
        );
        assert_eq!(
            software_interrupt(0, 1, Some(&user_gate)),
            None,
            "a plain #GP"
        );
        assert_eq!(software_interrupt(0x80 << 3 | 2, 3, None), None);
    }

    #[test]
    fn irqs_wait_for_the_flag_and_the_mask() {
        assert_eq!(next_irq(0b1010, 0), Some(1));
        assert_eq!(next_irq(0b1010, 0b0010), Some(3));
        assert_eq!(next_irq(0b1010, 0b1010), None);
        assert!(may_interrupt(IRQ_ENABLED, 0x1000, (0x2000, 0x2010)));
        assert!(!may_interrupt(0, 0x1000, (0x2000, 0x2010)));
        assert!(!may_interrupt(IRQ_ENABLED, 0x2004, (0x2000, 0x2010)));
    }

    #[test]
    fn only_user_reachable_trap_gates_with_a_stack_trap_directly() {
        let trap = GuestGate {
            handler: 0xffff_ffff_8100_0000,
            interrupt_gate: false,
            dpl: 3,
        };
        assert_eq!(direct_trap_handler(Some(&trap), 0x9000), Some(trap.handler));
        assert_eq!(
            direct_trap_handler(Some(&trap), 0),
            None,
            "no SET_STACK yet"
        );
        let interrupt = GuestGate {
            interrupt_gate: true,
            ..trap
        };
        assert_eq!(direct_trap_handler(Some(&interrupt), 0x9000), None);
        let kernel_only = GuestGate { dpl: 1, ..trap };
        assert_eq!(direct_trap_handler(Some(&kernel_only), 0x9000), None);
        assert_eq!(direct_trap_handler(None, 0x9000), None);
    }
}
