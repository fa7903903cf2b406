//! 8. Traps: the IDT, the way in, the way out, and the handlers.
//!
//! **The way in.** Every vector the kernel handles has a 16-byte stub (the `global_asm!`
//! below). The CPU, or under lguest the host, has pushed SS, RSP, RFLAGS, CS, RIP, and for some
//! exceptions an error code; the stub pushes a zero error code where there is none and then the
//! vector, so that every frame has one shape, and jumps to `trap_common`, which pushes the
//! general registers and calls [`trap_dispatch`] with the whole [`TrapFrame`].
//!
//! **The way out** is the one place the two worlds differ: `trap_return` (the tail of
//! `trap_common`, and where a new task starts: task.rs) pops the registers and jumps to the
//! paravirt-ops `interrupt_return`. Natively that is `iretq`. Under lguest the frame is the
//! host's, which shows a trap from the kernel with RPL 0 and carries the *virtual* interrupt
//! flag; the lguest backend's return puts RPL 1 back and restores the flag inside the window
//! where the host promises not to interrupt (paravirt-ops, lguest.rs).
//!
//! **The IDT** is built the same way in both worlds, gate by gate through the cpu op
//! `write_idt_entry` (natively a store into [`IDT`], under lguest also LOAD_IDT_ENTRY), then
//! `load_idt` (natively `lidt`, under lguest nothing more). Gates name [`gdt::kernel_cs`], so
//! their RPL says which ring the kernel runs in. Not handled: NMI, double fault and machine
//! check, which under lguest are the host's, and natively end the run (a triple fault, which
//! `-no-reboot` turns into QEMU's exit) in a kernel this small.
//!
//! **The handlers** report what they caught (the self-tests read it with [`last_trap`]) and
//! then either let the kernel go on or panic. An exception in the kernel goes on only where it
//! was expected: an instruction listed in the exception table (`.ex_table`, a pair of addresses
//! per entry, Linux's `_ASM_EXTABLE`) resumes at its fixup address; a page fault the page
//! tables can fix (a page of the demand window, a write to a page read-only until written:
//! paging.rs) is fixed and retried; `int3` is a trap, so it resumes after itself. A trap from
//! user mode arrives on the running task's kernel stack, which the scheduler gives `load_sp0`
//! (task.rs); system calls go to syscall.rs and the timer also drives the scheduler. IRQs 1 to 15,
//! the devices' (vectors 33 to 47), have gates from the start and go to virtio/mod.rs; each line
//! stays masked until a driver opens it (the irq op `unmask_irq`).

use core::arch::global_asm;
use core::sync::atomic::{AtomicU64, Ordering};

use guest_core::virtio_mmio::DEVICE_IRQS;
use lguest_abi::hcall::{FIRST_IRQ_VECTOR, TIMER_IRQ};
use paravirt_ops::cpu::{self, Gate, GateKind, Idt};
use paravirt_ops::mmu;

use crate::{gdt, paging, syscall, task, timer, virtio};

pub const DIVIDE_ERROR: u64 = 0;
pub const BREAKPOINT: u64 = 3;
pub const INVALID_OPCODE: u64 = 6;
pub const GENERAL_PROTECTION: u64 = 13;
pub const PAGE_FAULT: u64 = 14;
const TIMER_VECTOR: u64 = FIRST_IRQ_VECTOR + TIMER_IRQ as u64;
/// The devices' vectors: IRQs 1 to 15 (virtio/mod.rs).
const FIRST_DEVICE_VECTOR: u64 = FIRST_IRQ_VECTOR + DEVICE_IRQS.start as u64;
const LAST_DEVICE_VECTOR: u64 = FIRST_IRQ_VECTOR + DEVICE_IRQS.end as u64 - 1;

/// What the kernel installs besides the devices' vectors: (vector, DPL). Every exception the
/// CPU can raise in this kernel but NMI (2), double fault (8) and machine check (18), plus the
/// timer. Interrupt gates
/// throughout, so a handler starts with interrupts off (the host clears the virtual flag for
/// them too); `int3` has DPL 3, as in Linux, so that `int3` may be raised from any ring (from
/// ring 1 under lguest the host checks exactly that before it delivers it).
const HANDLED: [(u64, u8); 17] = [
    (DIVIDE_ERROR, 0),
    (1, 0),
    (BREAKPOINT, 3),
    (4, 0),
    (5, 0),
    (INVALID_OPCODE, 0),
    (7, 0),
    (10, 0),
    (11, 0),
    (12, 0),
    (GENERAL_PROTECTION, 0),
    (PAGE_FAULT, 0),
    (16, 0),
    (17, 0),
    (19, 0),
    (20, 0),
    (TIMER_VECTOR, 0),
];

/// The kernel's IDT: natively the CPU's, under lguest the kernel's record of what it told the
/// host.
static IDT: Idt = Idt::new();

/// The registers as `trap_common` leaves them, lowest address first: what it pushed, what the
/// stub pushed, what the CPU (or the host) pushed.
#[repr(C)]
#[derive(Debug, Default)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

// The stubs, one per vector 0..=47, 16 bytes apart from `trap_stubs` so that Rust finds stub n
// at trap_stubs + 16 * n. The CPU pushes an error code for vectors 8, 10-14 and 17 (the host
// does the same); the others get a zero. AT&T syntax, where `$vector` is plainly an immediate.
global_asm!(
    r#"
    .text
    .balign 16
    .global trap_stubs
trap_stubs:
    .set vector, 0
    .rept 48
    .balign 16
    .if vector == 8 || (vector >= 10 && vector <= 14) || vector == 17
    pushq $vector
    .else
    pushq $0
    pushq $vector
    .endif
    jmp trap_common
    .set vector, vector + 1
    .endr
    "#,
    options(att_syntax)
);

// The common part, which syscall.rs's entry stubs join too. On entry the frame is 7 words (CPU
// or host frame 5, error code, vector) below a 16-byte boundary (both the CPU and the host align
// RSP before pushing), so after 15 more pushes RSP is 16-byte aligned again, as the call wants.
// `cld`: the ABI expects the direction flag clear, and the interrupted code may have set it.
global_asm!(
    r#"
    .text
    .global trap_common
trap_common:
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
    push rdi
    push rbp
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    mov rdi, rsp
    cld
    call {dispatch}
    .global trap_return
trap_return:
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rbp
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rbx
    pop rax
    add rsp, 16                     // the vector and the error code
    jmp {interrupt_return}
    "#,
    dispatch = sym trap_dispatch,
    interrupt_return = sym cpu::interrupt_return,
);

extern "C" {
    static trap_stubs: u8;
}

/// Installs the handlers.
pub fn init() {
    let stubs = (&raw const trap_stubs) as u64;
    for (vector, dpl) in HANDLED {
        set_gate(vector as u8, stubs + 16 * vector, dpl);
    }
    for vector in FIRST_DEVICE_VECTOR..=LAST_DEVICE_VECTOR {
        set_gate(vector as u8, stubs + 16 * vector, 0);
    }
    cpu::load_idt(&IDT);
}

/// Installs an interrupt gate for `vector` to `handler`, reachable with `int` from rings up to
/// `dpl`.
pub fn set_gate(vector: u8, handler: u64, dpl: u8) {
    let gate = Gate::new(handler, gdt::kernel_cs(), GateKind::Interrupt, dpl);
    cpu::write_idt_entry(&IDT, vector, gate);
}

/// Installs a trap gate: like [`set_gate`], but entering leaves the interrupt flag as it was.
/// The system-call gate is one (syscall.rs): under lguest a trap gate from ring 3 is what the
/// host can hand to the CPU itself (a direct trap, no exit at all), since only an interrupt
/// gate needs the host to turn the virtual flag off.
pub fn set_trap_gate(vector: u8, handler: u64, dpl: u8) {
    let gate = Gate::new(handler, gdt::kernel_cs(), GateKind::Trap, dpl);
    cpu::write_idt_entry(&IDT, vector, gate);
}

/// Where every trap arrives, with interrupts off (the system-call vector's handler turns them
/// off first: its gate is a trap gate).
extern "C" fn trap_dispatch(frame: &mut TrapFrame) {
    if let Some(taken) = TAKEN.get(frame.vector as usize) {
        taken.fetch_add(1, Ordering::Relaxed);
    }
    match frame.vector {
        TIMER_VECTOR => {
            timer::interrupt();
            task::preempt();
        }
        FIRST_DEVICE_VECTOR..=LAST_DEVICE_VECTOR => {
            virtio::interrupt((frame.vector - FIRST_IRQ_VECTOR) as u32)
        }
        PAGE_FAULT => page_fault(frame),
        syscall::VECTOR => syscall::dispatch(frame),
        _ => exception(frame),
    }
}

// ---- What the handlers caught -----------------------------------------------------------------

/// How many traps of each vector have arrived, interrupts included (count mode prints them).
static TAKEN: [AtomicU64; 256] = [const { AtomicU64::new(0) }; 256];

/// How many traps of `vector` have arrived so far.
pub fn taken(vector: u64) -> u64 {
    TAKEN
        .get(vector as usize)
        .map_or(0, |taken| taken.load(Ordering::Relaxed))
}

static TRAPS_TAKEN: AtomicU64 = AtomicU64::new(0);
static LAST_VECTOR: AtomicU64 = AtomicU64::new(0);
static LAST_ERROR: AtomicU64 = AtomicU64::new(0);
static LAST_RIP: AtomicU64 = AtomicU64::new(0);
static LAST_ADDRESS: AtomicU64 = AtomicU64::new(0);

/// An exception a handler caught.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trap {
    /// How many exceptions have been caught so far, this one included.
    pub count: u64,
    pub vector: u64,
    pub error_code: u64,
    /// Where it happened (for a trap such as `int3`: after it).
    pub rip: u64,
    /// A page fault's address (the mmu op `read_cr2`).
    pub address: u64,
}

fn record(frame: &TrapFrame, address: u64) {
    LAST_VECTOR.store(frame.vector, Ordering::Relaxed);
    LAST_ERROR.store(frame.error_code, Ordering::Relaxed);
    LAST_RIP.store(frame.rip, Ordering::Relaxed);
    LAST_ADDRESS.store(address, Ordering::Relaxed);
    TRAPS_TAKEN.fetch_add(1, Ordering::Release);
}

/// The last exception caught.
pub fn last_trap() -> Trap {
    Trap {
        count: TRAPS_TAKEN.load(Ordering::Acquire),
        vector: LAST_VECTOR.load(Ordering::Relaxed),
        error_code: LAST_ERROR.load(Ordering::Relaxed),
        rip: LAST_RIP.load(Ordering::Relaxed),
        address: LAST_ADDRESS.load(Ordering::Relaxed),
    }
}

// ---- The handlers -----------------------------------------------------------------------------

fn page_fault(frame: &mut TrapFrame) {
    let address = mmu::read_cr2();
    record(frame, address);
    if paging::demand_fault(address, frame.error_code)
        || paging::write_fault(address, frame.error_code)
    {
        return;
    }
    if let Some(fixup) = fixup(frame.rip) {
        frame.rip = fixup;
        return;
    }
    panic!(
        "page fault at {address:#x}, error {:#x}, rip {:#x}",
        frame.error_code, frame.rip
    );
}

fn exception(frame: &mut TrapFrame) {
    record(frame, 0);
    if frame.vector == BREAKPOINT {
        return;
    }
    if let Some(fixup) = fixup(frame.rip) {
        frame.rip = fixup;
        return;
    }
    let from = if frame.cs & 3 == 0 { "kernel" } else { "user" };
    panic!(
        "exception {} in {from} mode at rip {:#x}, error {:#x}",
        frame.vector, frame.rip, frame.error_code
    );
}

/// One exception-table entry: if `insn` faults, resume at `fixup`.
#[repr(C)]
struct ExTableEntry {
    insn: u64,
    fixup: u64,
}

extern "C" {
    static __ex_table_start: ExTableEntry;
    static __ex_table_end: ExTableEntry;
}

/// Where to resume after a fault at `rip`, if the exception table says.
fn fixup(rip: u64) -> Option<u64> {
    let start = &raw const __ex_table_start;
    let end = &raw const __ex_table_end;
    // SAFETY: the linker put the .ex_table entries between the two symbols (linker.ld), each
    // two quadwords, 8-aligned, in read-only memory that lives forever.
    let table = unsafe { core::slice::from_raw_parts(start, end.offset_from(start) as usize) };
    table.iter().find(|e| e.insn == rip).map(|e| e.fixup)
}

/// Assembly for `$insn` with an exception-table entry: should it fault, execution resumes right
/// after it. (Labels 2 and 3: LLVM reads `1b` as a binary number in Intel syntax.)
#[macro_export]
macro_rules! with_fixup {
    ($insn:literal) => {
        concat!(
            "2: ",
            $insn,
            "\n3:\n",
            ".pushsection .ex_table, \"a\"\n",
            ".balign 8\n",
            ".quad 2b, 3b\n",
            ".popsection"
        )
    };
}
