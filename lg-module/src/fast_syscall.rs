//! The Switcher's fast path for a user `syscall`: the guest's system call without a trip to the
//! host.
//!
//! While a guest runs, EFER.SCE is off, so a `syscall` in its user mode is a #UD, and the slow
//! path is a whole world switch: out to the host, which sees `0f 05` at RIP (`exception` in
//! src/exit/interrupts_and_traps.rs), pushes a frame on the guest's kernel stack, enters the
//! guest's handler for `lguest_data.syscall_vec`, and switches back in. A Linux guest makes a
//! system call every few thousand instructions. So before each trip in, the host works out whether the Switcher could
//! do the same without it ([`arm`]), and if so writes what it needs into the state page, which
//! the guest can read but not write. The Switcher's #UD stub then checks, on the spot, that the
//! trap came from ring 3, that the bytes at RIP are `0f 05` and that `syscall_vec` is still the
//! vector armed; and delivers the system call itself, in the guest's address space, as
//! [`reflect`] describes. Anything else goes the slow way.
//!
//! The two paths must decide alike. So the slow path builds its delivery with [`deliver`], and
//! the tests below hold the Switcher's arithmetic written in Rust, step for step
//! (switcher/switcher.S, `ud_exit`), feed both the same guests and require the same registers,
//! frame and flag. Everything the Switcher touches is made fault-free before the trip: the frame's
//! page must be mapped writable and supervisor-only in the shadow the guest runs on, the
//! lguest_data page is mapped into the Switcher's block for this CPU, and the instruction bytes
//! were fetched by the CPU a moment before (protection keys, which could forbid reading them,
//! are lifted around the read when they do: shadow entries all have key 0).

use crate::abi::regs::{Reg, Regs};
use crate::death::Death;
use crate::emulate;
use crate::interrupts::{self, GuestGate};

/// Words of the frame a system call pushes: RIP, CS, RFLAGS, RSP, SS.
pub const FRAME_WORDS: usize = 5;

/// What the Switcher needs to deliver a user `syscall` by itself, written into the state page
/// before a trip (all zero: disarmed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Armed {
    /// The vector `lguest_data.syscall_vec` named when the host looked; the Switcher checks it
    /// still does.
    pub vector: u64,
    /// The guest's handler for that vector.
    pub handler: u64,
    /// Where the frame goes: below the kernel stack the guest gave SET_STACK.
    pub frame_at: u64,
    /// The gate is an interrupt gate: delivery turns the virtual interrupt flag off.
    pub clears_if: bool,
}

/// Whether the Switcher may deliver a user `syscall` on this trip, and with what: the guest
/// named a vector (`syscall_vec`, non-zero) with a handler (`gate`) and gave a kernel stack,
/// and `writable(va)` says the shadow maps `va`'s page writable for the kernel, for every byte
/// of the frame. `fast_paths` is the launcher's choice (off for the hostile-guest scenarios'
/// second run, and for whoever wants to compare).
pub fn arm(
    fast_paths: bool,
    syscall_vec: u64,
    gate: Option<&GuestGate>,
    kernel_stack: u64,
    writable: impl Fn(u64) -> bool,
) -> Option<Armed> {
    if !fast_paths || syscall_vec == 0 || syscall_vec > 255 {
        return None;
    }
    let gate = gate?;
    let mut user = Regs::default();
    user.set(Reg::Cs, 3);
    let frame_at = interrupts::frame_address(&user, kernel_stack, FRAME_WORDS).ok()?;
    let last = frame_at.checked_add(FRAME_WORDS as u64 * 8 - 1)?;
    if !writable(frame_at) || !writable(last) {
        return None;
    }
    Some(Armed {
        vector: syscall_vec,
        handler: gate.handler,
        frame_at,
        clears_if: gate.interrupt_gate,
    })
}

/// A delivered system call: the registers the guest resumes with (at its handler), the frame
/// to write at `frame_at`, and whether the virtual interrupt flag must be turned off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub regs: Regs,
    pub frame_at: u64,
    pub frame: [u64; FRAME_WORDS],
    pub clears_if: bool,
}

/// The slow path's delivery of a user `syscall` at `regs` (RIP at the instruction, RFLAGS as
/// the #UD saved them) through `gate`, with `irq_enabled` the virtual flag: the instruction
/// completed (RF clear), RCX and R11 as SYSCALL sets them, the frame the guest's handler
/// expects, the handler entered as for any trap (src/interrupts.rs), and RFLAGS masked as
/// SYSCALL masks them for the kernel (`interrupts::SYSCALL_FLAGS_MASK`).
pub fn deliver(
    regs: &Regs,
    gate: &GuestGate,
    kernel_stack: u64,
    irq_enabled: u64,
) -> Result<Delivery, Death> {
    let mut regs = *regs;
    emulate::complete(&mut regs, 2);
    regs.set(Reg::Rcx, regs.get(Reg::Rip));
    regs.set(Reg::R11, regs.get(Reg::Rflags));
    let (words, count) = interrupts::trap_frame(&regs, irq_enabled, None);
    let frame_at = interrupts::frame_address(&regs, kernel_stack, count)?;
    // Without an error code, the frame is the first five words.
    let frame = [words[0], words[1], words[2], words[3], words[4]];
    interrupts::enter_handler(&mut regs, gate, frame_at);
    let flags = regs.get(Reg::Rflags) & !interrupts::SYSCALL_FLAGS_MASK;
    regs.set(Reg::Rflags, flags);
    Ok(Delivery {
        regs,
        frame_at,
        frame,
        clears_if: gate.interrupt_gate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::boot::{GUEST_KERNEL_CS, GUEST_KERNEL_SS, GUEST_USER_CS, GUEST_USER_SS};
    use crate::traps::{check_entry, sane_rflags, RFLAGS_IF};

    /// RFLAGS bits, as the Switcher names them.
    const TF: u64 = 1 << 8;
    const DF: u64 = 1 << 10;
    const IOPL: u64 = 3 << 12;
    const NT: u64 = 1 << 14;
    const RF: u64 = 1 << 16;
    const VM: u64 = 1 << 17;
    const AC: u64 = 1 << 18;

    /// What the Switcher's `ud_exit` does with a user `syscall` at `regs` once `armed` has passed
    /// its checks, `irq_enabled` being the virtual flag it reads: the same steps, in Rust. RF is
    /// cleared first (the #UD set it; the instruction completes). RFLAGS for the handler are
    /// what SYSCALL leaves a kernel, made what the host's own check of every entry makes them
    /// (`traps::check_entry`), since this entry skips the host.
    pub fn reflect(regs: &Regs, armed: &Armed, irq_enabled: u64) -> Delivery {
        let (rip, rflags) = (
            regs.get(Reg::Rip).wrapping_add(2),
            regs.get(Reg::Rflags) & !RF,
        );
        let virtual_if = if irq_enabled != 0 { RFLAGS_IF } else { 0 };
        let frame = [
            rip,
            regs.get(Reg::Cs),
            rflags & !RFLAGS_IF | virtual_if,
            regs.get(Reg::Rsp),
            regs.get(Reg::Ss),
        ];
        let mut after = *regs;
        after.set(Reg::Rcx, rip);
        after.set(Reg::R11, rflags);
        after.set(Reg::Rip, armed.handler);
        after.set(Reg::Cs, GUEST_KERNEL_CS);
        let masked = rflags & !(TF | DF | IOPL | NT | VM | AC);
        after.set(Reg::Rflags, sane_rflags(masked, false));
        after.set(Reg::Rsp, armed.frame_at);
        after.set(Reg::Ss, GUEST_KERNEL_SS);
        Delivery {
            regs: after,
            frame_at: armed.frame_at,
            frame,
            clears_if: armed.clears_if,
        }
    }

    const STACK: u64 = 0xffff_c900_0000_4000;

    fn gate(interrupt_gate: bool) -> GuestGate {
        GuestGate {
            handler: 0xffff_ffff_8100_1000,
            interrupt_gate,
            dpl: 0,
        }
    }

    fn user(rip: u64, rflags: u64) -> Regs {
        let mut regs = Regs::default();
        for (i, reg) in Reg::BY_ENCODING.iter().enumerate() {
            regs.set(*reg, 0x1111 * (i as u64 + 1));
        }
        regs.set(Reg::Rip, rip);
        regs.set(Reg::Cs, GUEST_USER_CS);
        regs.set(Reg::Rflags, rflags);
        regs.set(Reg::Rsp, 0x7ffe_0000_1238);
        regs.set(Reg::Ss, GUEST_USER_SS);
        regs
    }

    #[test]
    fn the_switcher_delivers_as_the_slow_path_does() {
        let flags = [
            0x202,
            0x246,
            0x202 | 1 << 14, // NT
            0x302,           // TF
            0x40202,         // AC
            0x10202,         // RF, as the #UD saved them
            0x200a03,
            0x7_7fd7, // all of the above, DF and IOPL too
        ];
        let stacks = [STACK, STACK + 8, STACK + 0x18, STACK - 0x1001];
        for rflags in flags {
            for kernel_stack in stacks {
                for interrupt_gate in [false, true] {
                    for irq_enabled in [0, RFLAGS_IF, 1] {
                        let regs = user(0x40_1ffe, rflags);
                        let gate = gate(interrupt_gate);
                        let armed = arm(true, 0x1e, Some(&gate), kernel_stack, |_| true).unwrap();
                        let mut slow = deliver(&regs, &gate, kernel_stack, irq_enabled).unwrap();
                        // The slow path's registers pass the host's check before the guest
                        // resumes; the Switcher's are already what that check leaves.
                        check_entry(&mut slow.regs, &[0; 3]).unwrap();
                        let fast = reflect(&regs, &armed, irq_enabled);
                        assert_eq!(fast, slow, "rflags {rflags:#x} stack {kernel_stack:#x}");
                    }
                }
            }
        }
    }

    #[test]
    fn arming_needs_a_vector_a_handler_a_stack_and_a_writable_frame() {
        let gate = gate(true);
        assert!(arm(true, 0x1e, Some(&gate), STACK, |_| true).is_some());
        assert_eq!(
            arm(false, 0x1e, Some(&gate), STACK, |_| true),
            None,
            "turned off"
        );
        assert_eq!(
            arm(true, 0, Some(&gate), STACK, |_| true),
            None,
            "no vector"
        );
        assert_eq!(
            arm(true, 256, Some(&gate), STACK, |_| true),
            None,
            "no such vector"
        );
        assert_eq!(arm(true, 0x1e, None, STACK, |_| true), None, "no handler");
        assert_eq!(
            arm(true, 0x1e, Some(&gate), 0, |_| true),
            None,
            "no SET_STACK"
        );
        let non_canonical = 0x8000_0000_0000_0000;
        assert_eq!(arm(true, 0x1e, Some(&gate), non_canonical, |_| true), None);
        assert_eq!(
            arm(true, 0x1e, Some(&gate), STACK, |_| false),
            None,
            "not writable"
        );
    }

    #[test]
    fn a_frame_across_two_pages_needs_both() {
        let gate = gate(false);
        // The frame's 40 bytes end 8 bytes into the stack's top page.
        let stack = 0x7000_0010;
        let armed = arm(true, 0x80, Some(&gate), stack, |_| true).unwrap();
        assert_eq!(armed.frame_at, 0x6fff_ffe8);
        let only_top = |va: u64| va >= 0x7000_0000;
        assert_eq!(arm(true, 0x80, Some(&gate), stack, only_top), None);
        let only_below = |va: u64| va < 0x7000_0000;
        assert_eq!(arm(true, 0x80, Some(&gate), stack, only_below), None);
    }
}
