//! 12. The user programs: what runs at ring 3.
//!
//! With no loader and no file system, the programs are assembled into the kernel image, between
//! `user_programs` and `user_programs_end`, and copied into each task's code page; they are
//! position-independent, so that copy runs wherever it lands. A task's address space holds two
//! pages in the user half: the code at [`CODE`] (read-only) and a stack page below
//! [`STACK_TOP`] (writable). The kernel fills the code page through the identity map before it
//! maps it for ring 3: never through the user mapping, which SMAP would refuse it.
//!
//! Each program gets its task number in RDI and one argument in RSI (task.rs), and speaks the
//! system calls of syscall.rs:
//! - `user_int80` and `user_syscall`: GETID must answer the task number, REPORT sends it plus a
//!   tag, and EXIT ends with 0 (1 if GETID was wrong); all by `int $0x80`, or all by `syscall`.
//! - `user_count`: counts, reporting the count every 64 Ki, until RSI timer ticks have passed,
//!   without ever yielding: two of them interleave only if the timer preempts them.
//! - `user_fpu`: fills XMM0-15 with values made from its task number, yields (once each way),
//!   spins until RSI ticks have passed, and exits with 0 only if all sixteen registers, both
//!   halves, still hold its values.
//! - `user_long_run`: counts until the TSC reaches RSI, reporting the count by `int $0x80` and
//!   asking its number by `syscall` every 64 Ki (long_run.rs).
//!
//! The rest are bench mode's (bench.rs). Each times its own loop with `rdtsc` (ring 3 may: no
//! kernel here sets CR4.TSD), REPORTs the cycles and exits with 0:
//! - `user_null_int80` and `user_null_syscall`: RSI null system calls, one way or the other;
//! - `user_fault`: RSI times, touches the first page of its demand window ([`USER_DEMAND_START`],
//!   not mapped: the fault handler maps it) and gives it back with UNMAP; it reports only the
//!   cycles of the touches, the faults;
//! - `user_yield`: RSI YIELDs by `syscall`;
//! - `user_spin`: reads the TSC for RSI cycles, and adds up every gap between two readings of
//!   more than [`SPIN_GAP`] cycles: the time something else took the CPU (an interrupt).

use core::arch::global_asm;

use lguest_abi::PAGE_SIZE;

use crate::frames;
use crate::paging::{AddressSpace, USER_DEMAND_START, USER_START};
use crate::syscall::{SYS_EXIT, SYS_GETID, SYS_NULL, SYS_REPORT, SYS_TICKS, SYS_UNMAP, SYS_YIELD};
use crate::task;

/// Where a task's code page is.
pub const CODE: u64 = USER_START;
/// The top of a task's stack page: 2 MiB up, so both pages share one page table.
pub const STACK_TOP: u64 = USER_START + 0x20_0000;
/// What `user_int80` and `user_syscall` add to their task number in their REPORT.
pub const INT80_TAG: u64 = 0x80;
pub const SYSCALL_TAG: u64 = 0x5c;
/// The gap between two TSC readings in `user_spin`'s loop above which the CPU was elsewhere: a
/// turn of the loop takes tens of cycles, an interrupt thousands.
pub const SPIN_GAP: u64 = 1000;

// Local labels are `.L` names: inside `global_asm!` the numeric ones would be read as binary
// numbers in Intel syntax (`1b`).
global_asm!(
    r#"
    .text
    .balign 16
    .global user_programs, user_programs_end, user_int80, user_syscall, user_count, user_fpu
    .global user_long_run, user_null_int80, user_null_syscall, user_fault, user_yield, user_spin

    // The TSC, all 64 bits of it, into \reg (RAX and RDX are clobbered).
    .macro user_rdtsc reg
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov \reg, rax
    .endm

user_programs:

user_int80:
    mov r12, rdi                    // the task number
    mov eax, {getid}
    int 0x80
    cmp rax, r12
    jne .Lint80_wrong
    lea rdi, [r12 + {int80_tag}]
    mov eax, {report}
    int 0x80
    xor edi, edi
    mov eax, {exit}
    int 0x80
.Lint80_wrong:
    mov edi, 1
    mov eax, {exit}
    int 0x80
    ud2

user_syscall:
    mov r12, rdi
    mov eax, {getid}
    syscall
    cmp rax, r12
    jne .Lsyscall_wrong
    lea rdi, [r12 + {syscall_tag}]
    mov eax, {report}
    syscall
    xor edi, edi
    mov eax, {exit}
    syscall
.Lsyscall_wrong:
    mov edi, 1
    mov eax, {exit}
    syscall
    ud2

user_count:
    mov eax, {ticks}
    syscall
    lea r13, [rax + rsi]            // until this tick
    xor r12d, r12d                  // the count
.Lcount:
    inc r12
    test r12d, 0xffff
    jnz .Lcount
    mov rdi, r12
    mov eax, {report}
    int 0x80
    mov eax, {ticks}
    syscall
    cmp rax, r13
    jb .Lcount
    xor edi, edi
    mov eax, {exit}
    int 0x80
    ud2

user_fpu:
    shl rdi, 8
    mov rax, 0x5eed000000000000
    lea r12, [rdi + rax]            // register n holds r12 + n in both halves
    .irp n, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
    lea rax, [r12 + \n]
    movq xmm\n, rax
    punpcklqdq xmm\n, xmm\n
    .endr
    mov eax, {yield}
    int 0x80
    mov eax, {yield}
    syscall
    mov eax, {ticks}
    syscall
    lea r13, [rax + rsi]
.Lfpu_spin:
    mov ecx, 0x10000
.Lfpu_delay:
    dec ecx
    jnz .Lfpu_delay
    mov eax, {ticks}
    syscall
    cmp rax, r13
    jb .Lfpu_spin
    .irp n, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
    lea rdx, [r12 + \n]
    movq rax, xmm\n
    cmp rax, rdx
    jne .Lfpu_changed
    pshufd xmm\n, xmm\n, 0x4e       // the high half, down
    movq rax, xmm\n
    cmp rax, rdx
    jne .Lfpu_changed
    .endr
    xor edi, edi
    mov eax, {exit}
    int 0x80
.Lfpu_changed:
    mov edi, 1
    mov eax, {exit}
    int 0x80
    ud2

user_long_run:
    mov r12, rdi                    // the task number
    mov r13, rsi                    // the TSC deadline
    xor r14d, r14d                  // the count
.Llong_count:
    inc r14
    test r14d, 0xffff
    jnz .Llong_count
    mov rdi, r14
    mov eax, {report}
    int 0x80
    mov eax, {getid}
    syscall
    cmp rax, r12
    jne .Llong_wrong
    user_rdtsc rax
    cmp rax, r13
    jb .Llong_count
    xor edi, edi
    mov eax, {exit}
    int 0x80
.Llong_wrong:
    mov edi, 1
    mov eax, {exit}
    int 0x80
    ud2

user_null_int80:
    mov r12, rsi                    // how many
    user_rdtsc r13                  // since when
.Lnull_int80:
    mov eax, {null}
    int 0x80
    dec r12
    jnz .Lnull_int80
    jmp .Lbench_done

user_null_syscall:
    mov r12, rsi
    user_rdtsc r13
.Lnull_syscall:
    mov eax, {null}
    syscall
    dec r12
    jnz .Lnull_syscall
    jmp .Lbench_done

user_yield:
    mov r12, rsi
    user_rdtsc r13
.Lyield:
    mov eax, {yield}
    syscall
    dec r12
    jnz .Lyield
    // The cycles since R13, reported; then exit with 0.
.Lbench_done:
    user_rdtsc rdi
    sub rdi, r13
    mov eax, {report}
    syscall
    xor edi, edi
    mov eax, {exit}
    syscall
    ud2

user_fault:
    mov r12, rsi
    mov r15, {demand}
    xor r14d, r14d                  // cycles spent in the touches
.Lfault:
    user_rdtsc r13
    mov byte ptr [r15], 1           // not mapped: the fault handler maps it
    user_rdtsc rax
    sub rax, r13
    add r14, rax
    mov rdi, r15
    mov eax, {unmap}
    syscall
    test rax, rax
    jnz .Lfault_wrong
    dec r12
    jnz .Lfault
    mov rdi, r14
    mov eax, {report}
    syscall
    xor edi, edi
    mov eax, {exit}
    syscall
.Lfault_wrong:
    mov edi, 1
    mov eax, {exit}
    syscall
    ud2

user_spin:
    user_rdtsc r12                  // the last reading
    lea r13, [r12 + rsi]            // until
    xor r14d, r14d                  // the gaps' cycles
.Lspin:
    user_rdtsc rax
    mov rcx, rax
    sub rcx, r12
    mov r12, rax
    cmp rcx, {gap}
    jb .Lspin_no_gap
    add r14, rcx
.Lspin_no_gap:
    cmp rax, r13
    jb .Lspin
    mov rdi, r14
    mov eax, {report}
    syscall
    xor edi, edi
    mov eax, {exit}
    syscall
    ud2

user_programs_end:
    "#,
    getid = const SYS_GETID,
    report = const SYS_REPORT,
    exit = const SYS_EXIT,
    ticks = const SYS_TICKS,
    yield = const SYS_YIELD,
    null = const SYS_NULL,
    unmap = const SYS_UNMAP,
    demand = const USER_DEMAND_START,
    gap = const SPIN_GAP,
    int80_tag = const INT80_TAG,
    syscall_tag = const SYSCALL_TAG,
);

extern "C" {
    static user_programs: u8;
    static user_programs_end: u8;
    static user_int80: u8;
    static user_syscall: u8;
    static user_count: u8;
    static user_fpu: u8;
    static user_long_run: u8;
    static user_null_int80: u8;
    static user_null_syscall: u8;
    static user_fault: u8;
    static user_yield: u8;
    static user_spin: u8;
}

/// The programs.
#[derive(Clone, Copy, Debug)]
pub enum Program {
    Int80,
    Syscall,
    Count,
    Fpu,
    LongRun,
    NullInt80,
    NullSyscall,
    Fault,
    Yield,
    Spin,
}

impl Program {
    /// Its entry point in a task's address space.
    fn entry(self) -> u64 {
        let symbol = match self {
            Program::Int80 => &raw const user_int80,
            Program::Syscall => &raw const user_syscall,
            Program::Count => &raw const user_count,
            Program::Fpu => &raw const user_fpu,
            Program::LongRun => &raw const user_long_run,
            Program::NullInt80 => &raw const user_null_int80,
            Program::NullSyscall => &raw const user_null_syscall,
            Program::Fault => &raw const user_fault,
            Program::Yield => &raw const user_yield,
            Program::Spin => &raw const user_spin,
        };
        CODE + (symbol as u64 - (&raw const user_programs) as u64)
    }
}

/// Starts `program` as a new task with argument `arg`; returns the task number.
pub fn spawn(program: Program, arg: u64) -> usize {
    let mut space = AddressSpace::new();
    let start = &raw const user_programs;
    let len = (&raw const user_programs_end) as usize - start as usize;
    assert!(
        len <= PAGE_SIZE as usize,
        "the user programs outgrew their page"
    );
    let code = frames::alloc_zeroed().expect("out of memory for a task");
    // SAFETY: copies the programs (kernel text, readable) into a fresh frame of ours, through
    // the identity map.
    unsafe { core::ptr::copy_nonoverlapping(start, code as *mut u8, len) };
    space.map_user(CODE, code, false);
    let stack = frames::alloc_zeroed().expect("out of memory for a task");
    space.map_user(STACK_TOP - PAGE_SIZE, stack, true);
    task::spawn(space, program.entry(), STACK_TOP, arg)
}
