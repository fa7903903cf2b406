//! 11. System calls: how ring 3 asks the kernel for something, by `int $0x80` or by `syscall`.
//!
//! Two instructions, one handler. **`int $0x80`** goes through IDT gate 0x80, whose DPL 3 lets
//! ring 3 use it: the CPU switches to the task's kernel stack (TSS.RSP0) and pushes the usual
//! frame. Under lguest the real IDT is the Switcher's, and the host puts the guest's gate into
//! it while the guest runs (a *direct trap*: docs/traps.md): the CPU switches to the stack
//! SET_STACK named (TSS.RSP1) and enters the kernel at ring 1 with no exit at all. That takes a
//! trap gate, which leaves the interrupt flag alone, so `dispatch` turns interrupts off itself.
//! (On a host that cannot give direct traps the `int` becomes a #GP, and the host delivers
//! vector 0x80 itself, with the same frame.)
//!
//! **`syscall`** is cheaper on hardware because it skips all that: it puts the return address
//! in RCX and RFLAGS in R11, loads the kernel's code segment and entry point from MSRs, masks
//! RFLAGS (interrupts off), and does not touch the stack. So natively `syscall_entry` switches
//! to the task's kernel stack itself, pushes the frame `int $0x80` would have pushed (RCX and
//! R11 are the return RIP and RFLAGS), and joins the same path. Under lguest the guest cannot
//! own those MSRs: the host keeps `syscall` an invalid opcode while a guest runs, and delivers
//! it through the gate that `lguest_data.syscall_vec` names, 0x80, having set RCX and R11 as
//! `syscall` would. The paravirt-ops `syscall_init` sets up whichever of the two applies.
//!
//! Both return with `iretq`, through the trap path (`sysret` would need ring 0, and Xen PV
//! kernels return the same way). The calls take their number in RAX and arguments in RDI and
//! RSI, and answer in RAX; `syscall` clobbers RCX and R11, as on Linux.

use core::arch::global_asm;
use core::sync::atomic::{AtomicU64, Ordering};

use paravirt_ops::{cpu, irq};

use crate::gdt::{USER_CS, USER_SS};
use crate::traps::{self, TrapFrame};
use crate::{frames, paging, task, timer};

/// The system-call vector, for `int $0x80` and (under lguest) `syscall` alike.
pub const VECTOR: u64 = 0x80;

/// Ends the task with status RDI.
pub const SYS_EXIT: u64 = 0;
/// Gives the CPU to the next task.
pub const SYS_YIELD: u64 = 1;
/// Returns the task's number.
pub const SYS_GETID: u64 = 2;
/// Returns the timer ticks so far.
pub const SYS_TICKS: u64 = 3;
/// Tells the kernel a value (RDI): how a user program shows what it did.
pub const SYS_REPORT: u64 = 4;
/// Does nothing: the cheapest call there is, for timing the way in and out (bench.rs).
pub const SYS_NULL: u64 = 5;
/// Unmaps the page at RDI of the task's demand-paged window and frees its frame: 0 if it was
/// mapped, else `u64::MAX`.
pub const SYS_UNMAP: u64 = 6;

/// The user's RSP while the native `syscall` entry switches stacks (one CPU, interrupts off).
static USER_RSP: AtomicU64 = AtomicU64::new(0);

// The two ways in. `int80_entry` is an ordinary stub, like those in traps.rs. `syscall_entry`
// (native only) starts on the user's stack with interrupts off (FMASK), so it can use nothing
// but a scratch word before it is on the kernel stack, 16-byte aligned like every top the
// scheduler hands out; then the 7 words every frame starts with.
global_asm!(
    r#"
    .text
    .global int80_entry, syscall_entry
int80_entry:
    push 0
    push {vector}
    jmp trap_common

syscall_entry:
    mov [rip + {user_rsp}], rsp
    mov rsp, [rip + {kernel_rsp}]
    push {user_ss}
    push qword ptr [rip + {user_rsp}]
    push r11                        // RFLAGS
    push {user_cs}
    push rcx                        // RIP
    push 0                          // the error code
    push {vector}
    jmp trap_common
    "#,
    vector = const VECTOR,
    user_rsp = sym USER_RSP,
    kernel_rsp = sym task::KERNEL_STACK_TOP,
    user_ss = const USER_SS,
    user_cs = const USER_CS,
);

extern "C" {
    fn int80_entry();
    fn syscall_entry();
}

/// Installs gate 0x80 (a DPL 3 trap gate) and points `syscall` at the same place.
pub fn init() {
    traps::set_trap_gate(VECTOR as u8, int80_entry as *const () as u64, 3);
    cpu::syscall_init(syscall_entry, VECTOR as u8);
}

/// The task that made the last SYS_REPORT.
static LAST_REPORTER: AtomicU64 = AtomicU64::new(0);

/// Vector 0x80, by either way in. Its gate is a trap gate, so interrupts may still be on: off
/// they go, for the scheduler's sake; the way out restores them from the frame. (An interrupt
/// that came in between the gate and here was taken like any in kernel code.)
pub fn dispatch(frame: &mut TrapFrame) {
    irq::irq_disable();
    assert!(frame.cs & 3 == 3, "a system call from the kernel");
    // What `syscall` leaves behind: the return address in RCX and the flags in R11 (natively
    // the CPU, under lguest the host). `int $0x80` leaves the user's RCX, which the programs
    // that use it keep clear of that.
    let by_syscall = frame.rcx == frame.rip && frame.r11 == frame.rflags;
    task::account(|s| {
        s.calls += 1;
        s.by_syscall += u64::from(by_syscall);
    });
    frame.rax = match frame.rax {
        SYS_EXIT => task::exit(frame.rdi),
        SYS_YIELD => {
            task::yield_now();
            0
        }
        SYS_GETID => task::current() as u64,
        SYS_TICKS => timer::ticks(),
        SYS_REPORT => {
            let me = task::current() as u64;
            let other_before = LAST_REPORTER.swap(me, Ordering::Relaxed) != me;
            task::account(|s| {
                s.report = frame.rdi;
                s.handovers += u64::from(other_before);
            });
            0
        }
        SYS_NULL => 0,
        SYS_UNMAP => match paging::unmap_user_page(frame.rdi) {
            Some(page) => {
                // SAFETY: the page was the task's alone, and unmap_user_page flushed its only
                // mapping.
                unsafe { frames::free(page) };
                0
            }
            None => u64::MAX,
        },
        _ => u64::MAX,
    };
}
