//! Traps: the guest's registers as the Switcher's frame, and what each vector means.
//!
//! Every exit from the guest is a trap: the CPU and the Switcher's stub leave a frame in the
//! regs page (`layout::FrameWord`), and the host reads the guest's registers, the vector and the
//! error code from it. Every entry goes the other way, and the frame the Switcher will `iretq`
//! from is checked first ([`check_entry`]): the iretq runs at ring 0, so a frame with a ring-0
//! selector or a non-canonical address would fault inside the Switcher, or worse, succeed.

use crate::abi::boot::{
    GUEST_KERNEL_CS, GUEST_KERNEL_SS, GUEST_TLS_ENTRIES, GUEST_USER32_CS, GUEST_USER_CS,
    GUEST_USER_SS,
};
use crate::abi::hcall;
use crate::abi::regs::{Reg, Regs};
use crate::death;
use crate::death::Death;
use crate::layout::{FrameWord, FRAME_WORDS};

/// The frame's words for `regs` (vector and error code zero).
pub fn frame_from_regs(regs: &Regs) -> [u64; FRAME_WORDS as usize] {
    let mut frame = [0u64; FRAME_WORDS as usize];
    for (word, reg) in FRAME_REGS {
        frame[word as usize] = regs.get(reg);
    }
    frame
}

/// The guest registers saved in `frame`.
pub fn regs_from_frame(frame: &[u64; FRAME_WORDS as usize]) -> Regs {
    let mut regs = Regs::default();
    for (word, reg) in FRAME_REGS {
        regs.set(reg, frame[word as usize]);
    }
    regs
}

/// Which frame word holds which register.
const FRAME_REGS: [(FrameWord, Reg); 20] = [
    (FrameWord::R15, Reg::R15),
    (FrameWord::R14, Reg::R14),
    (FrameWord::R13, Reg::R13),
    (FrameWord::R12, Reg::R12),
    (FrameWord::R11, Reg::R11),
    (FrameWord::R10, Reg::R10),
    (FrameWord::R9, Reg::R9),
    (FrameWord::R8, Reg::R8),
    (FrameWord::Rbp, Reg::Rbp),
    (FrameWord::Rdi, Reg::Rdi),
    (FrameWord::Rsi, Reg::Rsi),
    (FrameWord::Rdx, Reg::Rdx),
    (FrameWord::Rcx, Reg::Rcx),
    (FrameWord::Rbx, Reg::Rbx),
    (FrameWord::Rax, Reg::Rax),
    (FrameWord::Rip, Reg::Rip),
    (FrameWord::Cs, Reg::Cs),
    (FrameWord::Rflags, Reg::Rflags),
    (FrameWord::Rsp, Reg::Rsp),
    (FrameWord::Ss, Reg::Ss),
];

/// RFLAGS bits.
const RFLAGS_ALWAYS_ONE: u64 = 1 << 1;
pub const RFLAGS_IF: u64 = 1 << 9;
const RFLAGS_IOPL: u64 = 3 << 12;
const RFLAGS_NT: u64 = 1 << 14;
const RFLAGS_VM: u64 = 1 << 17;

/// Whether `addr` is canonical for 48-bit virtual addresses.
pub fn is_canonical(addr: u64) -> bool {
    let high = addr >> 47;
    high == 0 || high == 0x1_ffff
}

/// The null selector with RPL 1: SS after the CPU entered ring 1 from ring 3.
pub const NULL_SS_RING1: u64 = 1;

/// Check and sanitise the frame the Switcher is about to `iretq` from (hazard 2 in
/// docs/hazards.md): the guest returns to ring 1 or 3 with its own selectors only, at a
/// canonical RIP and RSP, with IF on (so the host's interrupts keep coming), IOPL 0 (so no
/// `cli` or port I/O), and no VM, nor NT in its kernel. Flags are sanitised; anything else kills
/// the guest. `tls` is the guest's TLS entries (LOAD_GDT_ENTRY): user mode may run with SS one
/// of them, if it is a stack segment an `iretq` to ring 3 accepts, and with any RSP.
pub fn check_entry(regs: &mut Regs, tls: &[u64; 3]) -> Result<(), Death> {
    let (cs, ss) = (regs.get(Reg::Cs), regs.get(Reg::Ss));
    let kernel = [
        (GUEST_KERNEL_CS, GUEST_KERNEL_SS),
        // A direct trap (from ring 3 to ring 1, by the CPU) leaves SS a null selector with
        // RPL 1, as every change of privilege in 64-bit mode does; iretq may load it back.
        (GUEST_KERNEL_CS, NULL_SS_RING1),
    ];
    let tls_stack = |ss: u64| {
        let index = ss >> 3;
        ss & 7 == 3
            && GUEST_TLS_ENTRIES.contains(&index)
            && crate::descriptors::is_user_stack_segment(
                tls[(index - GUEST_TLS_ENTRIES.start()) as usize],
            )
    };
    let user =
        (cs == GUEST_USER_CS || cs == GUEST_USER32_CS) && (ss == GUEST_USER_SS || tls_stack(ss));
    if !user && !kernel.contains(&(cs, ss)) {
        return Err(death!("entering with cs {cs:#x} ss {ss:#x}"));
    }
    let rip = regs.get(Reg::Rip);
    if !is_canonical(rip) {
        return Err(death!("entering at non-canonical rip {rip:#x}"));
    }
    // `iretq` loads RSP as it is: a program may run with a non-canonical one (until it next
    // uses its stack), as natively, and the kernel's sigreturn selftest returns to one. The
    // guest kernel's own stack must be canonical: the host pushes its traps there.
    let rsp = regs.get(Reg::Rsp);
    if !user && !is_canonical(rsp) {
        return Err(death!("entering with non-canonical rsp {rsp:#x}"));
    }
    regs.set(Reg::Rflags, sane_rflags(regs.get(Reg::Rflags), user));
    Ok(())
}

/// RFLAGS as the guest may run with them, in user mode if `user`: interrupts on (the host's,
/// while the guest runs; the guest's own flag is virtual), no I/O privilege, no virtual-8086
/// mode, and no nested task in its kernel. NT matters only to an `iretq` run with it set: in
/// user mode that is the program's own #GP, as natively (the kernel's syscall_nt selftest checks
/// that a program keeps it). Every entry into the guest goes through this.
pub fn sane_rflags(flags: u64, user: bool) -> u64 {
    let nt = if user { 0 } else { RFLAGS_NT };
    (flags | RFLAGS_ALWAYS_ONE | RFLAGS_IF) & !(RFLAGS_IOPL | nt | RFLAGS_VM)
}

/// Vectors the host treats specially.
pub const DEBUG: u64 = 1;
pub const NMI: u64 = 2;
pub const INVALID_OPCODE: u64 = 6;
pub const DEVICE_NOT_AVAILABLE: u64 = 7;
pub const DOUBLE_FAULT: u64 = 8;
pub const GENERAL_PROTECTION: u64 = 13;
pub const PAGE_FAULT: u64 = 14;
pub const MACHINE_CHECK: u64 = 18;
/// The first vector of external interrupts (and the host's own system vectors).
pub const FIRST_EXTERNAL: u64 = 32;

/// What a trap out of the guest means to the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trap {
    /// `int $0x1f` from the guest kernel.
    Hypercall,
    /// A page fault at this address.
    PageFault { addr: u64 },
    /// Something the host owns (an external interrupt, an NMI, a machine check) arrived while
    /// the guest ran: hand it to the host's own handler, then carry on.
    Host { vector: u64 },
    /// Any other exception: the guest's own, delivered through its handler if it has one
    /// (and it dies if it has none).
    Fatal,
}

/// Classify a trap with `vector` (the CR2 at the exit is `cr2`).
pub fn classify(vector: u64, cr2: u64) -> Trap {
    match vector {
        v if v == hcall::VECTOR as u64 => Trap::Hypercall,
        PAGE_FAULT => Trap::PageFault { addr: cr2 },
        NMI | MACHINE_CHECK => Trap::Host { vector },
        v if v >= FIRST_EXTERNAL => Trap::Host { vector },
        _ => Trap::Fatal,
    }
}

/// The mnemonic of an exception vector, for death reasons.
pub fn trap_name(vector: u64) -> &'static str {
    const NAMES: [&str; 32] = [
        "#DE",
        "#DB",
        "NMI",
        "#BP",
        "#OF",
        "#BR",
        "#UD",
        "#NM",
        "#DF",
        "coprocessor overrun",
        "#TS",
        "#NP",
        "#SS",
        "#GP",
        "#PF",
        "reserved",
        "#MF",
        "#AC",
        "#MC",
        "#XM",
        "#VE",
        "#CP",
        "reserved",
        "reserved",
        "reserved",
        "reserved",
        "reserved",
        "reserved",
        "#HV",
        "#VC",
        "#SX",
        "reserved",
    ];
    NAMES.get(vector as usize).copied().unwrap_or("interrupt")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel_regs() -> Regs {
        let mut regs = Regs::default();
        regs.set(Reg::Cs, GUEST_KERNEL_CS);
        regs.set(Reg::Ss, GUEST_KERNEL_SS);
        regs.set(Reg::Rip, 0x20_0000);
        regs.set(Reg::Rflags, 0x202);
        regs
    }

    #[test]
    fn frame_round_trips_every_register() {
        let mut regs = Regs::default();
        for (i, reg) in Reg::ALL.into_iter().enumerate() {
            regs.set(reg, 0x100 + i as u64);
        }
        let frame = frame_from_regs(&regs);
        assert_eq!(frame[FrameWord::Vector as usize], 0);
        assert_eq!(frame[FrameWord::Rip as usize], regs.get(Reg::Rip));
        assert_eq!(regs_from_frame(&frame), regs);
    }

    fn user_regs(cs: u64, ss: u64) -> Regs {
        let mut regs = kernel_regs();
        regs.set(Reg::Cs, cs);
        regs.set(Reg::Ss, ss);
        regs
    }

    /// A 16-bit writable data segment of DPL 3, as set_thread_area makes one, and a code one.
    const TLS_DATA16: u64 = 0x008f_f300_0000_ffff;
    const TLS_CODE32: u64 = 0x00cf_fb00_0000_ffff;

    #[test]
    fn entry_frames_keep_the_guest_out_of_ring_0() {
        let no_tls = [0; 3];
        let mut ok = kernel_regs();
        assert!(check_entry(&mut ok, &no_tls).is_ok());
        let mut ring0 = kernel_regs();
        ring0.set(Reg::Cs, 0x10);
        assert!(check_entry(&mut ring0, &no_tls).is_err());
        let mut mixed = kernel_regs();
        mixed.set(Reg::Ss, GUEST_USER_SS);
        assert!(check_entry(&mut mixed, &no_tls).is_err());
        let mut wild = kernel_regs();
        wild.set(Reg::Rip, 0x8000_0000_0000);
        assert!(check_entry(&mut wild, &no_tls).is_err());
        let mut stack = kernel_regs();
        stack.set(Reg::Rsp, 0x1234_0000_0000_0000);
        assert!(check_entry(&mut stack, &no_tls).is_err());
    }

    #[test]
    fn user_mode_may_run_in_compat_mode_and_on_a_tls_stack() {
        let tls = [TLS_DATA16, TLS_CODE32, 0];
        for (cs, ss) in [
            (GUEST_USER_CS, GUEST_USER_SS),
            (GUEST_USER32_CS, GUEST_USER_SS),
            (GUEST_USER_CS, 12 << 3 | 3),
            (GUEST_USER32_CS, 12 << 3 | 3),
        ] {
            assert!(
                check_entry(&mut user_regs(cs, ss), &tls).is_ok(),
                "{cs:#x}:{ss:#x}"
            );
        }
        let mut wild_stack = user_regs(GUEST_USER_CS, GUEST_USER_SS);
        wild_stack.set(Reg::Rsp, 0x8bad_f00d_5aad_c0de);
        assert!(
            check_entry(&mut wild_stack, &tls).is_ok(),
            "a user RSP is the program's"
        );
        let mut wild_ip = user_regs(GUEST_USER_CS, GUEST_USER_SS);
        wild_ip.set(Reg::Rip, 0x8bad_f00d_5aad_c0de);
        assert!(
            check_entry(&mut wild_ip, &tls).is_err(),
            "iretq would fault on RIP"
        );
        for (cs, ss, why) in [
            (GUEST_USER_CS, 12 << 3 | 1, "a TLS stack at RPL 1"),
            (GUEST_USER_CS, 13 << 3 | 3, "a code segment as SS"),
            (GUEST_USER_CS, 14 << 3 | 3, "an empty TLS entry"),
            (GUEST_USER_CS, 15 << 3 | 3, "the host's CPU-number segment"),
            (12 << 3 | 3, GUEST_USER_SS, "CS from a TLS entry"),
            (GUEST_USER_CS, 0, "a null SS in user mode"),
            (GUEST_KERNEL_CS, 12 << 3 | 3, "the kernel on a TLS stack"),
        ] {
            assert!(check_entry(&mut user_regs(cs, ss), &tls).is_err(), "{why}");
        }
    }

    #[test]
    fn flags_are_sanitised() {
        let mut regs = kernel_regs();
        regs.set(Reg::Rflags, RFLAGS_IOPL | RFLAGS_NT | RFLAGS_VM | 1);
        check_entry(&mut regs, &[0; 3]).unwrap();
        assert_eq!(regs.get(Reg::Rflags), RFLAGS_IF | RFLAGS_ALWAYS_ONE | 1);
        let mut user = user_regs(GUEST_USER_CS, GUEST_USER_SS);
        user.set(Reg::Rflags, RFLAGS_IOPL | RFLAGS_NT | RFLAGS_VM);
        check_entry(&mut user, &[0; 3]).unwrap();
        assert_eq!(
            user.get(Reg::Rflags),
            RFLAGS_IF | RFLAGS_ALWAYS_ONE | RFLAGS_NT,
            "user mode keeps NT"
        );
    }

    #[test]
    fn traps_are_classified() {
        assert_eq!(classify(0x1f, 0), Trap::Hypercall);
        assert_eq!(classify(14, 0xdead), Trap::PageFault { addr: 0xdead });
        assert_eq!(classify(2, 0), Trap::Host { vector: 2 });
        assert_eq!(classify(0xec, 0), Trap::Host { vector: 0xec });
        assert_eq!(classify(13, 0), Trap::Fatal);
        assert_eq!(classify(3, 0), Trap::Fatal);
        assert_eq!(trap_name(13), "#GP");
        assert_eq!(trap_name(200), "interrupt");
    }
}
