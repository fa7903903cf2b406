//! 14. Bench mode: what each mechanism costs, in each world.
//!
//! With `bench` on its command line the kernel times its mechanisms instead of testing them,
//! and prints one line per microbenchmark, `bench <name> <cycles>`: TSC cycles per operation,
//! the median of [`RUNS`] timings of many operations each (the first timing also pays for QEMU
//! translating the code, which the median leaves out). Then `bench done`, and power-off. The
//! same image prints the same names natively and under lg.ko, so the two runs side by side give
//! the price of running at ring 1 under a host, mechanism by mechanism. In the book's order:
//!
//! | name | one operation | native | lguest |
//! |------|---------------|--------|--------|
//! | `null-hypercall` | the cheapest world switch | ring-0 `int`, two CR3 writes, `iretq` | the NOP hypercall |
//! | `timer-interrupt` | a 1 ms tick, as a spinning task loses it | PIT, PIC, `iretq` | hrtimer, delivery, SET_CLOCKEVENT |
//! | `syscall-int80` | a null system call by `int $0x80` | the IDT gate | a #GP the host reflects |
//! | `syscall-syscall` | a null system call by `syscall` | LSTAR | a #UD the host reflects |
//! | `page-fault` | a user page's first touch, mapped by the fault handler | one #PF | two: reflected, then the shadow filled |
//! | `context-switch` | one task yielding to another | `mov cr3`, TSS.RSP0 | NEW_PGTABLE, SET_STACK |
//!
//! `null-hypercall` natively is not a hypercall, as there is no host: it is the *floor* of one,
//! what any switch from one world to another must pay at least on this machine (an `int` into a
//! handler that switches page tables and back, then `iretq`), which the NOP hypercall pays and
//! more. The user-mode benchmarks time themselves in ring 3 with `rdtsc` (user.rs), everything
//! else is timed here. The timer is off but in `timer-interrupt`, so that nothing else
//! interrupts a timing; under lguest the host's own interrupts still may, which is part of the
//! price.
//!
//! **`timer-interrupt`** is measured as a task sees it: `user_spin` reads the TSC in a loop for
//! [`SPIN_MS`] and adds up every gap in its readings longer than a loop's turn could be (the time
//! the CPU was elsewhere), once with the tick off and once with a 1 ms tick on. The difference,
//! divided by the ticks that came, is what one tick costs: the interrupt's delivery, the handler
//! (which re-arms the one-shot timer and finds no other task to switch to) and the return.
//!
//! **The devices.** When the command line names virtio devices, three more lines follow, in
//! megabytes per second rather than cycles: `blk-read-mbps`, `blk-write-mbps` and `net-tx-mbps`
//! (devices.rs has them).
//!
//! Under QEMU's TCG these are the emulator's prices (a CR3 write flushes its whole software TLB,
//! a port write leaves the translated code): compare the two worlds with each other, not with
//! hardware.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU64, Ordering};

use paravirt_ops::{info, irq, lguest, platform, time, Backend};

use crate::paging::{self, AddressSpace};
use crate::user::{self, Program};
use crate::virtio::Devices;
use crate::{println, task, timer, traps};

/// Timings per benchmark; the median is printed.
const RUNS: usize = 5;
/// Operations per timing: enough that `rdtsc` vanishes, few enough that the dearest, under
/// lguest, take a second or two.
const HYPERCALLS: u64 = 20_000;
const SYSCALLS: u64 = 10_000;
const FAULTS: u64 = 2_000;
const YIELDS: u64 = 2_000;
/// How long `user_spin` spins per timing, and the tick it is interrupted by.
const SPIN_MS: u64 = 100;
const TICK_NS: u64 = 1_000_000;

/// A benchmark: its name, and one timing of it in cycles per operation.
type Bench = (&'static str, fn() -> u64);

/// Runs every benchmark, prints its figure, then the devices' figures if there are devices
/// (devices.rs), and powers off.
pub fn run(devices: &mut Devices) -> ! {
    let benches: [Bench; 6] = [
        ("null-hypercall", null_hypercall),
        ("timer-interrupt", timer_interrupt),
        ("syscall-int80", syscall_int80),
        ("syscall-syscall", syscall_syscall),
        ("page-fault", page_fault),
        ("context-switch", context_switch),
    ];
    for (name, bench) in benches {
        let mut timings = [0; RUNS];
        for timing in &mut timings {
            *timing = bench();
        }
        timings.sort_unstable();
        println!("bench {name} {}", timings[RUNS / 2]);
    }
    let devices_ok = !devices.any() || crate::devices::bench(devices);
    println!("bench done");
    if devices_ok {
        platform::power_off("teaching-guest: bench done", false)
    } else {
        platform::power_off("teaching-guest: a device benchmark failed", true)
    }
}

/// Cycles per call of `op`, over `n` calls, here in the kernel with interrupts off.
fn per_op(n: u64, op: impl Fn()) -> u64 {
    let start = time::rdtsc();
    for _ in 0..n {
        op();
    }
    (time::rdtsc() - start) / n
}

/// Runs `program` as a task with argument `arg` until it exits, and returns what it reported.
fn run_task(program: Program, arg: u64) -> u64 {
    let id = user::spawn(program, arg);
    task::wait_all();
    let (status, stats) = task::reap(id);
    assert!(
        status == 0,
        "bench: the {program:?} task exited with {status}"
    );
    stats.report
}

/// A user program that times `n` operations itself: cycles per operation.
fn user_loop(program: Program, n: u64) -> u64 {
    run_task(program, n) / n
}

// ---- null-hypercall ---------------------------------------------------------------------------

/// The vector of the native floor's gate: free, as no other code uses it.
const FLOOR_VECTOR: u8 = 0x81;

/// The two page tables the floor's handler switches between: the ones loaded, and another.
static FLOOR_HOME: AtomicU64 = AtomicU64::new(0);
static FLOOR_AWAY: AtomicU64 = AtomicU64::new(0);

// The floor's handler, native only: to the other page tables and back, and home. No trap frame
// and no `interrupt_return`: a bare `iretq` is the point, and only runs at ring 0.
global_asm!(
    r#"
    .text
    .global bench_floor_entry
bench_floor_entry:
    push rax
    mov rax, [rip + {away}]
    mov cr3, rax
    mov rax, [rip + {home}]
    mov cr3, rax
    pop rax
    iretq
    "#,
    away = sym FLOOR_AWAY,
    home = sym FLOOR_HOME,
);

extern "C" {
    fn bench_floor_entry();
}

/// Under lguest the NOP hypercall's round trip; natively the floor that any world switch pays.
fn null_hypercall() -> u64 {
    if info().backend == Backend::Lguest {
        return per_op(HYPERCALLS, lguest::null_hypercall);
    }
    // Page tables with the kernel half, where the handler and its stack are, and nothing else.
    let away = AddressSpace::new();
    FLOOR_HOME.store(paging::current_root(), Ordering::Relaxed);
    FLOOR_AWAY.store(away.root(), Ordering::Relaxed);
    traps::set_gate(FLOOR_VECTOR, bench_floor_entry as *const () as u64, 0);
    per_op(HYPERCALLS, || {
        // SAFETY: the handler switches to page tables that map it and back, keeps every
        // register, and returns.
        unsafe { asm!("int {v}", v = const FLOOR_VECTOR) }
    })
    // `away` goes: it was loaded only inside the handler.
}

// ---- timer-interrupt --------------------------------------------------------------------------

/// Cycles one tick takes from a spinning task: see the module docs.
fn timer_interrupt() -> u64 {
    let cycles = time::tsc_khz() * SPIN_MS;
    let quiet = run_task(Program::Spin, cycles);
    timer::start(TICK_NS);
    let before = timer::ticks();
    let noisy = run_task(Program::Spin, cycles);
    let ticks = timer::ticks() - before;
    timer::stop();
    // A tick raised before the stop but not yet taken is taken now, not in the next timing.
    irq::irq_enable();
    irq::irq_disable();
    noisy.saturating_sub(quiet) / ticks.max(1)
}

// ---- syscall-int80, syscall-syscall, page-fault -----------------------------------------------

/// A null system call by `int $0x80`: natively through the IDT gate, with DPL 3; under lguest a
/// #GP at the Switcher's gate, which the host turns into vector 0x80 (chapter 6).
fn syscall_int80() -> u64 {
    user_loop(Program::NullInt80, SYSCALLS)
}

/// A null system call by `syscall`: natively through LSTAR; under lguest a #UD the host turns
/// into the guest's syscall vector (chapter 6).
fn syscall_syscall() -> u64 {
    user_loop(Program::NullSyscall, SYSCALLS)
}

/// A user page's first touch, which the fault handler fixes by mapping a fresh zeroed frame:
/// natively one #PF; under lguest two exits, the first reflected to the guest (its page tables
/// say "not present"), the second filling the host's shadow entry from them (chapter 7). The
/// UNMAP between touches (SET_PTE under lguest) is not timed.
fn page_fault() -> u64 {
    user_loop(Program::Fault, FAULTS)
}

// ---- context-switch ---------------------------------------------------------------------------

/// Two tasks yield to each other: while the first makes its YIELDS calls, the CPU goes to the
/// other and back YIELDS times. Cycles per switch, a system call's way in and out included.
fn context_switch() -> u64 {
    let first = user::spawn(Program::Yield, YIELDS);
    let second = user::spawn(Program::Yield, YIELDS);
    task::wait_all();
    let (status, stats) = task::reap(first);
    let (second_status, _) = task::reap(second);
    assert!(
        status == 0 && second_status == 0,
        "bench: a yielding task exited with {status} or {second_status}"
    );
    stats.report / (2 * YIELDS)
}
