//! 13. The self-tests: each mechanism, exercised and checked, in both worlds.
//!
//! Each test prints exactly one line, `selftest <name>: PASS` or `selftest <name>: FAIL: <why>`,
//! which the end-to-end harness reads. They run in the order of this file, with interrupts off
//! between them (as at boot): first the kernel's own mechanisms (the interrupt flag, the timer,
//! exceptions, page faults, TLB flushes alone and batched), then user tasks at ring 3 (system
//! calls both ways, preemption, SSE registers across switches).

use core::arch::asm;
use core::fmt::{self, Write};

use paravirt_ops::irq::{self, IF};
use paravirt_ops::{info, lguest, mmu, time, Backend};

use crate::traps::{self, Trap};
use crate::user::{self, Program};
use crate::{frames, paging, println, task, timer, with_fixup};

/// A test's verdict.
pub enum Outcome {
    Pass,
    Fail(Why),
}

/// Why a test failed: a short formatted message, without an allocator.
pub struct Why {
    buf: [u8; 160],
    len: usize,
}

impl Default for Why {
    fn default() -> Why {
        Why {
            buf: [0; 160],
            len: 0,
        }
    }
}

impl Write for Why {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
        Ok(())
    }
}

/// `return Outcome::Fail` with a `format!`-style message (devices.rs uses it too).
macro_rules! fail {
    ($($arg:tt)*) => {{
        let mut why = $crate::selftest::Why::default();
        let _ = core::fmt::Write::write_fmt(&mut why, format_args!($($arg)*));
        return $crate::selftest::Outcome::Fail(why)
    }};
}
pub(crate) use fail;

/// A test: its name and its body.
type Test = (&'static str, fn() -> Outcome);

/// Runs every test; returns (passed, failed).
pub fn run_all() -> (u32, u32) {
    let tests: [Test; 13] = [
        ("irq-flag", irq_flag),
        ("timer-ticks", timer_ticks),
        ("guest-#UD", guest_ud),
        ("guest-#GP", guest_gp),
        ("guest-#DE", guest_de),
        ("guest-int3", guest_int3),
        ("page-fault-demand", page_fault_demand),
        ("write-protect", write_protect),
        ("lazy-mmu-batch", lazy_mmu_batch),
        ("user-syscall-int80", user_syscall_int80),
        ("user-syscall-syscall", user_syscall_syscall),
        ("context-switch", context_switch),
        ("fpu-state", fpu_state),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, test) in tests {
        if report(name, test()) {
            passed += 1;
        } else {
            failed += 1;
        }
        irq::irq_disable();
    }
    (passed, failed)
}

/// Prints a test's line, `selftest <name>: PASS` or `selftest <name>: FAIL: <why>`; whether it
/// passed.
pub fn report(name: &str, outcome: Outcome) -> bool {
    match outcome {
        Outcome::Pass => {
            println!("selftest {name}: PASS");
            true
        }
        Outcome::Fail(why) => {
            let why = core::str::from_utf8(&why.buf[..why.len]).unwrap_or("?");
            println!("selftest {name}: FAIL: {why}");
            false
        }
    }
}

// ---- irq-flag ---------------------------------------------------------------------------------

/// The interrupt flag's semantics, whatever holds it: `irq_disable` and `irq_enable` show in
/// `save_fl`, and `restore_fl` puts back either state. Natively the flag is RFLAGS.IF; under
/// lguest it is `lguest_data.irq_enabled`, while the real IF stays on.
fn irq_flag() -> Outcome {
    irq::irq_disable();
    if irq::save_fl() & IF != 0 {
        fail!("save_fl shows interrupts on after irq_disable");
    }
    irq::irq_enable();
    if irq::save_fl() & IF == 0 {
        fail!("save_fl shows interrupts off after irq_enable");
    }
    let saved = irq::irq_save();
    if saved & IF == 0 || irq::save_fl() & IF != 0 {
        fail!("irq_save returned {saved:#x} (wanted IF, as before it) or left interrupts on");
    }
    irq::restore_fl(saved);
    if irq::save_fl() & IF == 0 {
        fail!("restore_fl of a flags word with IF left interrupts off");
    }
    irq::restore_fl(0);
    if irq::save_fl() & IF != 0 {
        fail!("restore_fl(0) left interrupts on");
    }
    Outcome::Pass
}

// ---- timer-ticks ------------------------------------------------------------------------------

/// The tick's period in the test: 2 ms, 500 Hz.
const TICK_NS: u64 = 2_000_000;
const MS: u64 = 1_000_000;

/// Ticks arrive while interrupts are on and not while they are off; the one that fell due while
/// they were off arrives as soon as they are back on (natively the PIC held it; under lguest
/// `irq_pending` made `irq_enable` ask for it with SEND_INTERRUPTS); and `safe_halt` sleeps
/// until a tick wakes it.
fn timer_ticks() -> Outcome {
    timer::start(TICK_NS);
    let outcome = tick_checks();
    irq::irq_disable();
    timer::stop();
    outcome
}

/// Ticks that must come while interrupts are on: more than one, so that the tick re-arms itself.
const TICKS_ON: u64 = 5;
/// How long they may take: far longer than their 10 ms, as how many ticks come in a given time is
/// a speed figure (TCG's timing is loose, and a host may be busy or slow), not a verdict.
const TICKS_ON_PATIENCE_NS: u64 = 5000 * MS;

fn tick_checks() -> Outcome {
    irq::irq_enable();
    let before = timer::ticks();
    let give_up = time::sched_clock() + TICKS_ON_PATIENCE_NS;
    while timer::ticks() - before < TICKS_ON && time::sched_clock() < give_up {
        core::hint::spin_loop();
    }
    let during = timer::ticks() - before;
    if during < TICKS_ON {
        fail!("{during} ticks in 5 s with interrupts on ({TICKS_ON} wanted, one every 2 ms)");
    }

    irq::irq_disable();
    let off = timer::ticks();
    timer::spin_for(20 * MS);
    let late = timer::ticks() - off;
    if late != 0 {
        fail!("{late} ticks arrived in 20 ms with interrupts off");
    }
    irq::irq_enable();
    if timer::ticks() == off {
        fail!("the tick held back while interrupts were off did not arrive at irq_enable");
    }

    irq::irq_disable();
    let asleep = timer::ticks();
    irq::safe_halt();
    if timer::ticks() == asleep {
        fail!("safe_halt returned without a tick");
    }
    if irq::save_fl() & IF == 0 {
        fail!("safe_halt returned with interrupts off");
    }
    Outcome::Pass
}

// ---- guest-#UD, guest-#GP, guest-#DE, guest-int3 ----------------------------------------------

/// Runs `raise`, which must cause exactly one exception `vector`, checks the kernel's own
/// handler caught it (under lguest: that the host reflected it to the guest's handler rather
/// than dealing with it, or killing the guest), and lets `check` look at the details.
fn expect_trap(vector: u64, raise: fn(), check: fn(&Trap) -> Outcome) -> Outcome {
    let before = traps::last_trap().count;
    raise();
    let trap = traps::last_trap();
    let taken = trap.count - before;
    if taken != 1 || trap.vector != vector {
        fail!(
            "{taken} exceptions caught, the last vector {} (wanted one, vector {vector})",
            trap.vector
        );
    }
    check(&trap)
}

/// `ud2`, the instruction defined to be undefined.
fn guest_ud() -> Outcome {
    fn raise() {
        // SAFETY: ud2 raises #UD; the exception table resumes after it; no register changes.
        unsafe { asm!(with_fixup!("ud2"), options(nostack)) };
    }
    expect_trap(traps::INVALID_OPCODE, raise, |_| Outcome::Pass)
}

/// A load from a non-canonical address: #GP(0), at any ring. (A privileged instruction would
/// not do: under lguest the host may emulate it or hand it to the launcher.)
fn guest_gp() -> Outcome {
    fn raise() {
        // SAFETY: the load raises #GP before it reads anything; the exception table resumes
        // after it, with RAX unchanged (declared clobbered anyway).
        unsafe {
            asm!(
                with_fixup!("mov rax, [rcx]"),
                in("rcx") 0x8000_0000_0000_0000u64,
                out("rax") _,
                options(nostack, readonly)
            )
        };
    }
    expect_trap(traps::GENERAL_PROTECTION, raise, |trap| {
        if trap.error_code != 0 {
            fail!("#GP error code {:#x}, not 0", trap.error_code);
        }
        Outcome::Pass
    })
}

/// `div` by zero.
fn guest_de() -> Outcome {
    fn raise() {
        // SAFETY: the div raises #DE before it writes RAX or RDX; the exception table resumes
        // after it.
        unsafe {
            asm!(
                with_fixup!("div rcx"),
                in("rcx") 0u64,
                inout("rax") 1u64 => _,
                inout("rdx") 0u64 => _,
                options(nomem, nostack)
            )
        };
    }
    expect_trap(traps::DIVIDE_ERROR, raise, |_| Outcome::Pass)
}

/// `int3`, the debugger's breakpoint: a trap, so the handler returns to the next instruction.
/// Under lguest it reaches the host as a #GP (the Switcher's gate 3 has DPL 0), which the host
/// turns into vector 3 because the guest's own gate has DPL 3.
fn guest_int3() -> Outcome {
    fn raise() {
        // SAFETY: int3 traps to our handler, which returns right after it.
        unsafe { asm!("int3", options(nomem, nostack)) };
    }
    expect_trap(traps::BREAKPOINT, raise, |_| Outcome::Pass)
}

// ---- page-fault-demand ------------------------------------------------------------------------

/// The pages of the demand window each test uses: the address of page `i` of them.
fn demand_page(first: u64, i: u64) -> u64 {
    paging::DEMAND_START + (first + i) * 4096
}

/// Unmaps a test's page and frees its frame.
fn release(va: u64) {
    if let Some(frame) = paging::unmap(va) {
        // SAFETY: `unmap` flushed the only mapping of a frame that only the test used.
        unsafe { frames::free(frame) };
    }
}

/// Pages of the demand window that the test touches.
const DEMAND_PAGES: u64 = 4;

/// Four pages of the demand window, untouched so far, each fault once on first write and keep
/// what was written; CR2 (through the mmu op) named the address; a page unmapped (and flushed:
/// natively from the TLB, under lguest from the host's shadow, by SET_PTE) faults again and
/// comes back as a fresh zeroed frame.
fn page_fault_demand() -> Outcome {
    let page = |i| demand_page(0, i);
    let before = paging::demand_faults();
    for i in 0..DEMAND_PAGES {
        // SAFETY: a page of the demand window: its first touch faults and the handler maps a
        // fresh frame there, which only this test uses.
        unsafe { ((page(i) + 8) as *mut u64).write_volatile(0x5eed_0000 + i) };
    }
    let faults = paging::demand_faults() - before;
    if faults != DEMAND_PAGES {
        fail!("{faults} demand faults for {DEMAND_PAGES} new pages");
    }
    let last = traps::last_trap();
    if last.vector != traps::PAGE_FAULT || last.address != page(DEMAND_PAGES - 1) + 8 {
        fail!(
            "the last fault was vector {} at {:#x}",
            last.vector,
            last.address
        );
    }
    for i in 0..DEMAND_PAGES {
        // SAFETY: mapped above.
        let value = unsafe { ((page(i) + 8) as *const u64).read_volatile() };
        if value != 0x5eed_0000 + i {
            fail!("page {i} reads {value:#x} back");
        }
    }
    // Not freed until the end: reused at once, the frame would come back zeroed and hide a
    // stale mapping.
    let Some(old) = paging::unmap(page(0)) else {
        fail!("page 0 was not mapped");
    };
    // SAFETY: page 0 is unmapped again, so this faults and gets a new zeroed frame.
    let fresh = unsafe { ((page(0) + 8) as *const u64).read_volatile() };
    if fresh != 0 || paging::demand_faults() - before != DEMAND_PAGES + 1 {
        fail!("after unmapping, page 0 read {fresh:#x} (a stale TLB or shadow entry?)");
    }
    // SAFETY: unmapped and flushed above; nothing else had it.
    unsafe { frames::free(old) };
    for i in 0..DEMAND_PAGES {
        release(page(i));
    }
    Outcome::Pass
}

// ---- write-protect ----------------------------------------------------------------------------

/// A page written once, then write-protected until its next write: that write faults (a stale
/// writable entry in the TLB, or under lguest in the host's shadow, would let it through
/// silently), the handler makes the page writable, the write runs again and lands, and the
/// write after it does not fault.
fn write_protect() -> Outcome {
    let page = demand_page(DEMAND_PAGES, 0);
    let word = page as *mut u64;
    // SAFETY: a page of the demand window that only this test uses; the first write maps it.
    unsafe { word.write_volatile(1) };
    paging::write_protect(page);
    let before = paging::write_faults();
    // SAFETY: mapped; read-only until this write, which the fault handler lets through.
    unsafe { word.write_volatile(2) };
    let faults = paging::write_faults() - before;
    if faults != 1 {
        fail!("{faults} write faults for the first write to a write-protected page (1 due)");
    }
    let trap = traps::last_trap();
    if trap.vector != traps::PAGE_FAULT || trap.address != page || trap.error_code & 3 != 3 {
        fail!(
            "the fault was vector {} at {:#x}, error {:#x} (a write to a present page due)",
            trap.vector,
            trap.address,
            trap.error_code
        );
    }
    // SAFETY: mapped and writable now.
    let value = unsafe {
        word.write_volatile(word.read_volatile() + 1);
        word.read_volatile()
    };
    if value != 3 || paging::write_faults() - before != 1 {
        fail!("after the fault the page held {value} (3 due) and took more faults");
    }
    release(page);
    Outcome::Pass
}

// ---- lazy-mmu-batch ---------------------------------------------------------------------------

/// Pages changed in one batch: fewer than the asynchronous ring's 64 slots.
const BATCH: u64 = 16;

/// Sixteen pages write-protected in one lazy-MMU batch, as Linux's mprotect does it: under
/// lguest the sixteen SET_PTEs wait in the asynchronous ring (nothing was sent on its own) until
/// the leave, after which the host has carried out every one (all slots back to HCALL_DONE);
/// then each page's next write must fault, once, which it would not if its flush had been lost.
fn lazy_mmu_batch() -> Outcome {
    let page = |i| demand_page(DEMAND_PAGES + 1, i);
    for i in 0..BATCH {
        // SAFETY: pages of the demand window that only this test uses; mapped by the write.
        unsafe { (page(i) as *mut u64).write_volatile(i) };
    }
    let lguest = info().backend == Backend::Lguest;
    // The ring is lguest's; natively there is nothing to look at.
    let pending = || lguest.then(lguest::pending_async_hcalls).unwrap_or(0);
    let before = paging::write_faults();
    mmu::enter_lazy_mmu_mode();
    for i in 0..BATCH {
        paging::write_protect(page(i));
    }
    let queued = pending();
    mmu::leave_lazy_mmu_mode();
    let left = pending();
    if lguest && (queued as u64 != BATCH || left != 0) {
        fail!("{queued} calls queued in the batch ({BATCH} due), {left} still pending after it");
    }
    for i in 0..BATCH {
        // SAFETY: mapped, read-only until this write, which the fault handler lets through.
        unsafe { (page(i) as *mut u64).write_volatile(i + 100) };
    }
    let faults = paging::write_faults() - before;
    if faults != BATCH {
        fail!("{faults} write faults after protecting {BATCH} pages in a batch");
    }
    for i in 0..BATCH {
        // SAFETY: mapped above.
        let value = unsafe { (page(i) as *const u64).read_volatile() };
        if value != i + 100 {
            fail!("page {i} reads {value} ({} due)", i + 100);
        }
        release(page(i));
    }
    Outcome::Pass
}

// ---- user-syscall-int80, user-syscall-syscall -------------------------------------------------

/// A task at ring 3 makes three system calls, all by `int $0x80`: GETID's answer reaches it
/// (it exits with 0 only if right), REPORT's argument reaches the kernel, and its exit status
/// and every frame of its memory come back.
fn user_syscall_int80() -> Outcome {
    calls_from_ring3(Program::Int80, user::INT80_TAG, 0)
}

/// The same by `syscall`, whose frames show its mark: RCX and R11 are the return address and
/// flags (natively the CPU put them there, under lguest the host that reflected it).
fn user_syscall_syscall() -> Outcome {
    calls_from_ring3(Program::Syscall, user::SYSCALL_TAG, 3)
}

fn calls_from_ring3(program: Program, tag: u64, by_syscall: u64) -> Outcome {
    let free_before = frames::free_frames();
    let id = user::spawn(program, 0);
    task::wait_all();
    let (status, stats) = task::reap(id);
    if status != 0 {
        fail!("the task exited with {status}: GETID did not answer its number");
    }
    if stats.calls != 3 || stats.by_syscall != by_syscall {
        fail!(
            "{} calls, {} of them by syscall (3 and {by_syscall} due)",
            stats.calls,
            stats.by_syscall
        );
    }
    if stats.report != id as u64 + tag {
        fail!(
            "REPORT brought {:#x} ({:#x} due)",
            stats.report,
            id as u64 + tag
        );
    }
    let leaked = free_before.saturating_sub(frames::free_frames());
    if leaked != 0 {
        fail!("{leaked} frames not freed after the task exited");
    }
    Outcome::Pass
}

// ---- context-switch ---------------------------------------------------------------------------

/// How long, in ticks, each task of the scheduler tests runs.
const RUN_TICKS: u64 = 25;

/// Two tasks that count and never yield, under the 500 Hz tick: both must progress, each must
/// be preempted, and their reports must interleave, each taking over from the other at least
/// twice; both exit cleanly, and their memory comes back.
fn context_switch() -> Outcome {
    let free_before = frames::free_frames();
    for (task, status, stats) in run_two(Program::Count, RUN_TICKS) {
        if status != 0 || stats.report == 0 {
            fail!(
                "task {task} exited with {status} after counting to {}",
                stats.report
            );
        }
        if stats.preemptions == 0 || stats.handovers < 2 {
            fail!(
                "task {task} was preempted {} times and took over {} times (1 and 2 at least)",
                stats.preemptions,
                stats.handovers
            );
        }
    }
    let leaked = free_before.saturating_sub(frames::free_frames());
    if leaked != 0 {
        fail!("{leaked} frames not freed after the tasks exited");
    }
    Outcome::Pass
}

/// Runs two tasks of `program` with argument `arg` under the tick until both exit; returns
/// each one's number, exit status and statistics.
fn run_two(program: Program, arg: u64) -> [(usize, u64, task::Stats); 2] {
    timer::start(TICK_NS);
    let tasks = [user::spawn(program, arg), user::spawn(program, arg)];
    task::wait_all();
    timer::stop();
    tasks.map(|id| {
        let (status, stats) = task::reap(id);
        (id, status, stats)
    })
}

// ---- fpu-state --------------------------------------------------------------------------------

/// Two tasks fill XMM0-15 with values of their own, yield (by `int $0x80` and by `syscall`) and
/// spin through preemptions, world switches under lguest included, then check every register:
/// each must exit with 0 (its values intact) and have been preempted while they were live.
fn fpu_state() -> Outcome {
    for (task, status, stats) in run_two(Program::Fpu, RUN_TICKS / 2) {
        if status != 0 {
            fail!("task {task} found its XMM registers changed");
        }
        if stats.preemptions == 0 {
            fail!("task {task} was never preempted while its registers were live");
        }
    }
    Outcome::Pass
}
