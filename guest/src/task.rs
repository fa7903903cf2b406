//! 10. Tasks at ring 3, and the scheduler that the timer drives.
//!
//! A task is what a process is in a bigger kernel, reduced to the mechanism: an address space
//! (paging.rs), a kernel stack, where its traps and system calls land, and the state its
//! registers were in when it last stopped running. Task 0 is the boot thread, `kernel_main`
//! itself, running on the boot stack and the kernel's page tables: the *idle task*, which runs
//! only when no user task can. The others are user tasks, made by [`spawn`].
//!
//! **Switching** ([`schedule`], Linux's `switch_mm` and `__switch_to`), always in the kernel and
//! with interrupts off: save the running task's SSE registers (`fxsave`); load the next task's
//! page tables (`paging::switch_to`, the mmu op `write_cr3`: under lguest NEW_PGTABLE, and the
//! host keeps the shadows of the last few page tables, so switching between two tasks rebuilds
//! nothing); make its kernel stack the one traps from user mode land on (`load_sp0`: TSS.RSP0,
//! or SET_STACK); put its SSE registers back (`fxrstor`); and last `switch_stacks`, which saves
//! the callee-saved registers and RSP and takes the next task's. Nothing else needs saving: a
//! task's other registers are in the trap frame on its kernel stack, and the interrupt flag
//! comes back with that frame's RFLAGS.
//!
//! **SSE registers** belong to whichever user task is running: the kernel is built soft-float,
//! so its own code never touches them. Under lguest the host keeps the guest's FPU state apart
//! from the launcher's across every world switch (lg-module/fpu.rs), but switching it between
//! the guest's own tasks is the guest's job, as on hardware. It is done eagerly at every switch,
//! as Linux does; the lazy way (CR0.TS and a #NM trap) needs CR0 writes that ring 1 cannot make.
//!
//! **A new task** starts on a kernel stack built to look like one that was switched away from
//! just before returning to user mode: a trap frame (the program's entry, the user code
//! segment, RFLAGS with IF, its stack, the user stack segment), under it the address of
//! `trap_return` (traps.rs) and six zero callee-saved registers. So the first `switch_stacks` to
//! it returns into the end of the trap path, whose `iretq` enters ring 3.
//!
//! **The scheduler** is round robin: each timer tick switches to the next runnable user task
//! ([`preempt`]); the `yield` and `exit` system calls switch too ([`yield_now`], [`exit`]); the
//! idle task hands the CPU to the user tasks until all have exited ([`wait_all`]).

use core::arch::{asm, naked_asm};
use core::cell::UnsafeCell;
use core::mem::size_of;
use core::sync::atomic::{AtomicU64, Ordering};

use paravirt_ops::cpu;
use paravirt_ops::irq::{self, IF};

use crate::gdt::{USER_CS, USER_SS};
use crate::paging::{self, AddressSpace};
use crate::traps::TrapFrame;

/// The idle task and two user tasks: as many as the self-tests run at once.
const MAX_TASKS: usize = 3;
const IDLE: usize = 0;
const KERNEL_STACK_SIZE: usize = 16 * 1024;

/// Where a task is in its life. The idle task is always `Runnable`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Free,
    Runnable,
    /// Gone, with its exit status; [`reap`] frees the slot.
    Exited(u64),
}

/// What the system calls observed about a task, for the self-tests.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// System calls made, and how many of them by `syscall` (the rest by `int $0x80`).
    pub calls: u64,
    pub by_syscall: u64,
    /// The last value the task reported (syscall.rs), and how many of its reports came right
    /// after another task's.
    pub report: u64,
    pub handovers: u64,
    /// How many times a timer tick took the CPU away from it.
    pub preemptions: u64,
    /// How many times it was switched to: its time slices.
    pub runs: u64,
}

/// The SSE and x87 registers as `fxsave` writes them: 512 bytes, 16-byte aligned.
#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct FpuState([u8; 512]);

/// The registers of a task that has not run yet: all zero, but the x87 control word (0x37f, all
/// exceptions masked) and MXCSR (0x1f80, likewise), as after `fninit` and a reset.
const FPU_INITIAL: FpuState = {
    let mut area = [0u8; 512];
    area[0] = 0x7f;
    area[1] = 0x03;
    area[24] = 0x80;
    area[25] = 0x1f;
    FpuState(area)
};

struct Task {
    state: State,
    /// The kernel stack pointer, saved by `switch_stacks` while the task is not running.
    rsp: u64,
    /// None for the idle task, which runs on the kernel's page tables.
    space: Option<AddressSpace>,
    fpu: FpuState,
    stats: Stats,
}

impl Task {
    const FREE: Task = Task {
        state: State::Free,
        rsp: 0,
        space: None,
        fpu: FPU_INITIAL,
        stats: Stats {
            calls: 0,
            by_syscall: 0,
            report: 0,
            handovers: 0,
            preemptions: 0,
            runs: 0,
        },
    };
}

struct Tasks {
    tasks: [Task; MAX_TASKS],
    /// The running task.
    current: usize,
}

/// The task table behind a cell that only [`with_tasks`] opens, with interrupts off.
struct TaskTable(UnsafeCell<Tasks>);

// SAFETY: one CPU; the table is opened by `with_tasks` with interrupts off, by closures that do
// not reenter it, and by `schedule` through raw pointers while no reference is live.
unsafe impl Sync for TaskTable {}

static TASKS: TaskTable = TaskTable(UnsafeCell::new(Tasks {
    tasks: {
        let mut tasks = [Task::FREE; MAX_TASKS];
        tasks[IDLE].state = State::Runnable;
        tasks
    },
    current: IDLE,
}));

/// Runs `f` on the task table with interrupts off.
fn with_tasks<R>(f: impl FnOnce(&mut Tasks) -> R) -> R {
    let flags = irq::irq_save();
    // SAFETY: see TaskTable: interrupts are off, `f` does not reenter, and `schedule` holds no
    // reference while it runs.
    let result = f(unsafe { &mut *TASKS.0.get() });
    irq::restore_fl(flags);
    result
}

/// The user tasks' kernel stacks (the idle task runs on the boot stack).
#[repr(C, align(16))]
struct KernelStack([u8; KERNEL_STACK_SIZE]);

static mut KERNEL_STACKS: [KernelStack; MAX_TASKS - 1] =
    [const { KernelStack([0; KERNEL_STACK_SIZE]) }; MAX_TASKS - 1];

/// The top of user task `task`'s kernel stack (task >= 1).
fn kernel_stack_top(task: usize) -> u64 {
    let stacks = (&raw const KERNEL_STACKS).cast::<KernelStack>();
    stacks.wrapping_add(task - 1) as u64 + KERNEL_STACK_SIZE as u64
}

/// The running user task's kernel stack top: what `load_sp0` was told, and where the native
/// `syscall` entry switches to (syscall.rs), since `syscall` does not switch stacks itself.
pub static KERNEL_STACK_TOP: AtomicU64 = AtomicU64::new(0);

/// Makes a user task that will start at `entry` in `space`, at ring 3, with RSP = `stack_top`,
/// RDI = its task number and RSI = `arg`. Returns the task number.
pub fn spawn(space: AddressSpace, entry: u64, stack_top: u64, arg: u64) -> usize {
    with_tasks(|t| {
        let task = (1..MAX_TASKS)
            .find(|&i| t.tasks[i].state == State::Free)
            .expect("spawn: no free task slot");
        let frame = TrapFrame {
            rdi: task as u64,
            rsi: arg,
            rip: entry,
            cs: USER_CS.into(),
            rflags: IF | 1 << 1,
            rsp: stack_top,
            ss: USER_SS.into(),
            ..TrapFrame::default()
        };
        let top = kernel_stack_top(task);
        let frame_at = top - size_of::<TrapFrame>() as u64;
        let rsp = frame_at - 7 * 8;
        // SAFETY: the slot is free, so its kernel stack is unused; what we write stays inside
        // it: the frame at its top, below it `trap_return` and the six registers that
        // `switch_stacks` pops (zero).
        unsafe {
            (frame_at as *mut TrapFrame).write(frame);
            ((frame_at - 8) as *mut u64).write(trap_return as *const () as u64);
            core::ptr::write_bytes(rsp as *mut u64, 0, 6);
        }
        t.tasks[task] = Task {
            state: State::Runnable,
            rsp,
            space: Some(space),
            ..Task::FREE
        };
        task
    })
}

extern "C" {
    /// The end of the trap path (traps.rs): pops a TrapFrame's registers and returns from it.
    fn trap_return();
}

/// The idle task's part: lets the user tasks run until every one has exited.
pub fn wait_all() {
    let flags = irq::irq_save();
    while with_tasks(|t| (1..MAX_TASKS).any(|i| t.tasks[i].state == State::Runnable)) {
        schedule();
    }
    irq::restore_fl(flags);
}

/// Frees an exited task's slot and returns its exit status and what it did.
pub fn reap(task: usize) -> (u64, Stats) {
    with_tasks(|t| {
        let State::Exited(status) = t.tasks[task].state else {
            panic!("reap: task {task} has not exited");
        };
        let stats = t.tasks[task].stats;
        // Dropping the address space frees its PML4: it is not loaded (an exited task never
        // runs again) and its user half went at exit.
        t.tasks[task] = Task::FREE;
        (status, stats)
    })
}

/// The running task's number.
pub fn current() -> usize {
    with_tasks(|t| t.current)
}

/// Lets `f` update the running task's statistics.
pub fn account(f: impl FnOnce(&mut Stats)) {
    with_tasks(|t| f(&mut t.tasks[t.current].stats))
}

/// From the timer tick: the running user task gives the CPU to the next, if there is one.
pub fn preempt() {
    let switch = with_tasks(|t| {
        let switch = t.current != IDLE && pick(t) != t.current;
        if switch {
            t.tasks[t.current].stats.preemptions += 1;
        }
        switch
    });
    if switch {
        schedule();
    }
}

/// From the `yield` system call.
pub fn yield_now() {
    schedule();
}

/// From the `exit` system call: the running task's user half goes (it is the current address
/// space, as `unmap_user` wants), and it never runs again.
pub fn exit(status: u64) -> ! {
    with_tasks(|t| {
        let task = &mut t.tasks[t.current];
        task.state = State::Exited(status);
        task.space
            .as_mut()
            .expect("exit: the idle task has nowhere to go")
            .unmap_user();
    });
    schedule();
    unreachable!("an exited task ran again");
}

/// The task to run next: the first runnable user task after the current one, round robin (the
/// current one again if it is the only one), or else the idle task.
fn pick(t: &Tasks) -> usize {
    (1..=MAX_TASKS)
        .map(|k| (t.current + k) % MAX_TASKS)
        .find(|&i| i != IDLE && t.tasks[i].state == State::Runnable)
        .unwrap_or(IDLE)
}

/// Switches to the next task; returns when this one is picked again. Interrupts are off (every
/// caller is a trap handler or holds them off).
fn schedule() {
    let (prev, next) = with_tasks(|t| {
        let prev = t.current;
        t.current = pick(t);
        if t.current != prev {
            t.tasks[t.current].stats.runs += 1;
        }
        (prev, t.current)
    });
    if prev == next {
        return;
    }
    let root = |t: *const Task| {
        // SAFETY: a slot of the table; see below for why nothing else holds a reference.
        unsafe { (*t).space.as_ref() }.map_or(paging::kernel_root(), AddressSpace::root)
    };
    // SAFETY: interrupts are off and `with_tasks` is done, so nothing holds a reference into
    // the table; `prev` and `next` differ, so the two raw pointers do not alias.
    unsafe {
        let tasks = &raw mut (*TASKS.0.get()).tasks;
        let prev_task = &raw mut (*tasks)[prev];
        let next_task = &raw mut (*tasks)[next];
        let (prev_fpu, next_fpu) = (&raw mut (*prev_task).fpu, &raw const (*next_task).fpu);
        asm!("fxsave64 [{}]", in(reg) prev_fpu, options(nostack, preserves_flags));
        if root(prev_task) != root(next_task) {
            // The kernel half, where this code and both stacks are, is the same in both.
            paging::switch_to(root(next_task));
        }
        if next != IDLE {
            KERNEL_STACK_TOP.store(kernel_stack_top(next), Ordering::Relaxed);
            cpu::load_sp0(kernel_stack_top(next));
        }
        asm!("fxrstor64 [{}]", in(reg) next_fpu, options(nostack, preserves_flags, readonly));
        switch_stacks(&raw mut (*prev_task).rsp, (*next_task).rsp);
    }
}

/// Saves the callee-saved registers on this stack and its RSP in `*save`, then takes the stack
/// at `next` and returns along it: into the `schedule` that left it, or for a new task into
/// `trap_return`.
///
/// # Safety
///
/// `next` is a stack left by `switch_stacks` (or built by `spawn` to look like one), and `save`
/// outlives this task's time off the CPU.
#[unsafe(naked)]
unsafe extern "C" fn switch_stacks(save: *mut u64, next: u64) {
    naked_asm!(
        "push rbp",
        "push rbx",
        "push r12",
        "push r13",
        "push r14",
        "push r15",
        "mov [rdi], rsp",
        "mov rsp, rsi",
        "pop r15",
        "pop r14",
        "pop r13",
        "pop r12",
        "pop rbx",
        "pop rbp",
        "ret",
    )
}
