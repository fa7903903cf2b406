//! Traps and interrupts the host delivers: the guest's own handlers.
//!
//! The guest installs handlers with LOAD_IDT_ENTRY; the host delivers an exception, an `int n`
//! its gate allows, or the timer's interrupt through them, on the guest's own stack, the way the
//! ABI describes (abi/src/hcall.rs): CS shown with RPL 0, RFLAGS.IF the virtual flag, an
//! interrupt gate turning the virtual flag off. The return path below undoes both and `iretq`s
//! inside the window it registered in lguest_data, where the host delivers nothing.
//!
//! Scenarios: `traps` (each exception and `int n` reaches its handler with the right frame),
//! `timer` (interrupts arrive when on and only when on; HALT sleeps until one), and the `idt-*`
//! attacks (gates the host must refuse); the handlers serve `user` (user.rs), `async`
//! (async_ring.rs) and `ldt-call-gate` (hazards.rs) too.

use core::arch::global_asm;
use core::ptr;
use core::sync::atomic::{AtomicU64, Ordering};

use lguest_abi::boot::GUEST_KERNEL_CS;
use lguest_abi::data::{offset, IRQ_ENABLED};
use lguest_abi::hcall::{FIRST_IRQ_VECTOR, HALT, LOAD_IDT_ENTRY, SEND_INTERRUPTS, SET_CLOCKEVENT};

use crate::hcall::{data_word, hcall, poweroff};
use crate::{println, rdtsc};

/// What the entry stubs save: the general registers, then vector and error code, then the frame
/// the host pushed. `#[repr(C)]` in push order, lowest address first.
#[repr(C)]
pub struct TrapState {
    pub(crate) regs: [u64; 15],
    pub(crate) vector: u64,
    error: u64,
    pub(crate) rip: u64,
    pub(crate) cs: u64,
    rflags: u64,
    pub(crate) rsp: u64,
    pub(crate) ss: u64,
}

// One entry stub per vector this guest handles; each pushes a zero error code where the CPU
// pushes none, then the vector, and joins `trap_common`. After the Rust handler, the general
// registers come back and `trap_return` leaves the way the ABI says. The stubs are global
// symbols: code in another codegen unit (hazards.rs's, say) may point a gate at one.
global_asm!(
    ".macro TRAP_ENTRY vector, has_error",
    ".global trap_entry_\\vector",
    "trap_entry_\\vector:",
    ".if \\has_error == 0",
    "push 0",
    ".endif",
    "push \\vector",
    "jmp trap_common",
    ".endm",
    "TRAP_ENTRY 0, 0",
    "TRAP_ENTRY 3, 0",
    "TRAP_ENTRY 6, 0",
    "TRAP_ENTRY 13, 1",
    "TRAP_ENTRY 14, 1",
    "TRAP_ENTRY 32, 0",
    "TRAP_ENTRY 128, 0",
    "TRAP_ENTRY 129, 0",
    "trap_common:",
    "push rax", "push rbx", "push rcx", "push rdx", "push rsi", "push rdi", "push rbp",
    "push r8", "push r9", "push r10", "push r11", "push r12", "push r13", "push r14", "push r15",
    "mov rdi, rsp",
    "call {handler}",
    "pop r15", "pop r14", "pop r13", "pop r12", "pop r11", "pop r10", "pop r9", "pop r8",
    "pop rbp", "pop rdi", "pop rsi", "pop rdx", "pop rcx", "pop rbx", "pop rax",
    "add rsp, 16",
    // The frame: RIP, CS, RFLAGS, RSP, SS. Kernel-mode frames show RPL 0; we run at 1.
    "or qword ptr [rsp + 8], 1",
    "or qword ptr [rsp + 32], 1",
    // The virtual flag comes back from the frame's IF. From here to the iretq the host
    // delivers nothing (noirq_iret_start..noirq_iret_end), or interrupts could pile frames up.
    "push rax",
    "mov rax, [rsp + 24]",
    "and rax, 0x200",
    ".global noirq_iret_start",
    "noirq_iret_start:",
    "mov [{data} + {irq_enabled}], rax",
    "pop rax",
    "iretq",
    ".global noirq_iret_end",
    "noirq_iret_end:",
    handler = sym trap_handler,
    data = sym crate::hcall::LGUEST_DATA,
    irq_enabled = const offset::IRQ_ENABLED,
);

extern "C" {
    fn trap_entry_0();
    fn trap_entry_3();
    pub(crate) fn trap_entry_6();
    fn trap_entry_13();
    fn trap_entry_14();
    fn trap_entry_32();
    fn trap_entry_128();
    fn trap_entry_129();
    static noirq_iret_start: u8;
    static noirq_iret_end: u8;
}

/// How the handler finishes a fault: the length of the instruction to skip (the test sets it
/// before it faults, as the fault's RIP points at the instruction).
pub(crate) static SKIP: AtomicU64 = AtomicU64::new(0);
/// The last trap the handler saw, for the test to check: vector, error, CS, CR2, and the
/// virtual flag while the handler ran.
static SEEN: [AtomicU64; 5] = [const { AtomicU64::new(u64::MAX) }; 5];
static TICKS: AtomicU64 = AtomicU64::new(0);
/// Re-arm the timer from its handler this many more times.
static REARM: AtomicU64 = AtomicU64::new(0);
const TICK_NS: u64 = 1_000_000;

extern "C" fn trap_handler(state: &mut TrapState) {
    // SAFETY: lguest_data is registered; the host writes cr2 and irq_enabled there.
    let (cr2, irq) = unsafe {
        (
            ptr::read_volatile(data_word(offset::CR2)),
            ptr::read_volatile(data_word(offset::IRQ_ENABLED)),
        )
    };
    for (slot, value) in SEEN
        .iter()
        .zip([state.vector, state.error, state.cs, cr2, irq])
    {
        slot.store(value, Ordering::SeqCst);
    }
    match state.vector {
        128 | 129 if state.cs & 3 == 3 => crate::user::call(state),
        32 => {
            TICKS.fetch_add(1, Ordering::SeqCst);
            if REARM.load(Ordering::SeqCst) > 0 {
                REARM.fetch_sub(1, Ordering::SeqCst);
                set_clockevent(TICK_NS);
            }
        }
        // Traps (int3, int n) already point after the instruction; faults at it.
        3 | 128 => {}
        _ => state.rip += SKIP.load(Ordering::SeqCst),
    }
}

/// A gate to `handler` of `kind` (0xe interrupt, 0xf trap) into `selector`, for `int` from rings
/// up to `dpl` (lguest-abi's encoding).
pub(crate) fn gate(handler: u64, kind: u64, dpl: u64, selector: u64) -> (u64, u64) {
    let [low, high] = lguest_abi::hcall::idt_gate(handler, selector, kind, dpl);
    (low, high)
}

pub(crate) fn load_idt_entry(vector: u64, (low, high): (u64, u64)) {
    // SAFETY: the host only reads the registers.
    unsafe { hcall(LOAD_IDT_ENTRY, [vector, low, high, 0, 0]) };
}

fn set_clockevent(ns: u64) {
    // SAFETY: as above.
    unsafe { hcall(SET_CLOCKEVENT, [ns, 0, 0, 0, 0]) };
}

fn set_irqs(on: bool) {
    // SAFETY: our lguest_data word; the host reads it before each entry.
    unsafe {
        ptr::write_volatile(
            data_word(offset::IRQ_ENABLED),
            if on { IRQ_ENABLED } else { 0 },
        )
    };
}

/// Register the no-interrupt window around the handlers' iretq.
fn register_return_window() {
    // SAFETY: our lguest_data words; the host reads them before delivering anything.
    unsafe {
        ptr::write_volatile(
            data_word(offset::NOIRQ_IRET_START),
            ptr::addr_of!(noirq_iret_start) as u64,
        );
        ptr::write_volatile(
            data_word(offset::NOIRQ_IRET_END),
            ptr::addr_of!(noirq_iret_end) as u64,
        );
    }
}

/// Register the handlers and the no-interrupt window.
pub(crate) fn install() {
    register_return_window();
    let cs = GUEST_KERNEL_CS;
    load_idt_entry(0, gate(trap_entry_0 as *const () as u64, 0xe, 0, cs));
    // int3 and int $0x80 must be reachable with `int` from ring 1: DPL 3 gates.
    load_idt_entry(3, gate(trap_entry_3 as *const () as u64, 0xf, 3, cs));
    load_idt_entry(6, gate(trap_entry_6 as *const () as u64, 0xe, 0, cs));
    load_idt_entry(13, gate(trap_entry_13 as *const () as u64, 0xe, 0, cs));
    load_idt_entry(14, gate(trap_entry_14 as *const () as u64, 0xe, 0, cs));
    load_idt_entry(
        FIRST_IRQ_VECTOR,
        gate(trap_entry_32 as *const () as u64, 0xe, 0, cs),
    );
    load_idt_entry(128, gate(trap_entry_128 as *const () as u64, 0xf, 3, cs));
    // A second system-call vector, for `user` to move syscall_vec to behind the host's back.
    load_idt_entry(129, gate(trap_entry_129 as *const () as u64, 0xe, 0, cs));
}

/// Register the page-fault handler alone, for an attack that must die of any other fault
/// (hazards.rs): a #PF comes back to the attack, skipping SKIP bytes, with its CR2 in `seen`.
pub(crate) fn install_page_fault_handler() {
    register_return_window();
    let handler = trap_entry_14 as *const () as u64;
    load_idt_entry(14, gate(handler, 0xe, 0, GUEST_KERNEL_CS));
}

/// The last trap the handler saw: vector, error, CS, CR2, and the virtual flag.
pub(crate) fn seen() -> [u64; 5] {
    SEEN.each_ref().map(|s| s.load(Ordering::SeqCst))
}

/// `traps`: each exception and software interrupt reaches the guest's own handler.
pub fn traps() -> ! {
    install();
    let kernel_cs = GUEST_KERNEL_CS & !3;
    // Each: name, the instruction's length, the expected vector and error code, and the deed.
    SKIP.store(2, Ordering::SeqCst);
    // SAFETY: ud2 faults; the handler skips it.
    unsafe { core::arch::asm!("ud2") };
    check("#UD", [6, 0, kernel_cs]);
    SKIP.store(3, Ordering::SeqCst);
    // SAFETY: dividing by zero faults; the handler skips the 3-byte div.
    unsafe {
        core::arch::asm!("xor ecx, ecx", "div rcx", out("rax") _, out("rdx") _, out("rcx") _)
    };
    check("#DE", [0, 0, kernel_cs]);
    SKIP.store(1, Ordering::SeqCst);
    // SAFETY: cli faults at ring 1 (#GP 0); the handler skips it.
    unsafe { core::arch::asm!("cli") };
    check("#GP", [13, 0, kernel_cs]);
    // SAFETY: int3 is a trap through our DPL 3 gate.
    unsafe { core::arch::asm!("int3") };
    check("int3", [3, 0, kernel_cs]);
    // SAFETY: as for int3.
    unsafe { core::arch::asm!("int 0x80") };
    // Gate 0x80 is a DPL 3 trap gate: on a host that gives the guest direct traps for it, the
    // CPU itself delivers this one and shows CS as it was, RPL 1 (docs/traps.md).
    let [_, _, cs, _, _] = seen();
    check(
        "int 0x80",
        [128, 0, if cs & 3 == 1 { cs } else { kernel_cs }],
    );
    SKIP.store(3, Ordering::SeqCst);
    let unmapped: u64 = 0x7000_0000_0000;
    // SAFETY: reads an address the launcher's page tables do not map; the handler skips it.
    unsafe { core::arch::asm!("mov rax, [rdx]", in("rdx") unmapped, out("rax") _) };
    check("#PF", [14, 0, kernel_cs]);
    let [.., cr2, _] = seen();
    if cr2 != unmapped {
        panic!("#PF: lguest_data.cr2 is {cr2:#x}, expected {unmapped:#x}");
    }
    println!("traps: #UD #DE #GP int3 int0x80 #PF reached their handlers");
    poweroff("traps done")
}

/// Panics unless the last trap was `expected` (vector, error code, CS) with the virtual flag
/// off, as an interrupt gate leaves it (int3 and int $0x80 come through trap gates).
pub(crate) fn check(name: &str, expected: [u64; 3]) {
    let [vector, error, cs, _, irq] = seen();
    if [vector, error, cs] != expected || irq != 0 && vector != 3 && vector != 128 {
        panic!("{name}: handler saw vector {vector} error {error:#x} cs {cs:#x} irq {irq:#x}, expected {expected:x?}");
    }
}

/// `timer`: the timer's interrupt arrives only while the virtual flag is on, HALT sleeps until
/// it comes, and ticks keep time.
pub fn timer() -> ! {
    install();
    // Off: the tick must wait, and the host must say one is waiting. It says so at the first
    // exit after the tick fired (the timer's own interrupt, or the host's next tick): wait for
    // that, however slow the machine, for up to 5 s.
    set_irqs(false);
    set_clockevent(TICK_NS);
    let start = rdtsc();
    let khz = crate::tsc_khz();
    // SAFETY: our lguest_data word, written by the host.
    let pending = || unsafe { ptr::read_volatile(data_word(offset::IRQ_PENDING)) };
    while pending() == 0 && rdtsc() - start < 5000 * khz {
        core::hint::spin_loop();
    }
    let pending = pending();
    if TICKS.load(Ordering::SeqCst) != 0 || pending == 0 {
        panic!(
            "timer: with interrupts off: {} ticks, irq_pending {pending}",
            TICKS.load(Ordering::SeqCst)
        );
    }
    // On, and tell the host: the waiting tick comes now.
    set_irqs(true);
    // SAFETY: only asks the host to deliver.
    unsafe { hcall(SEND_INTERRUPTS, [0; 5]) };
    if TICKS.load(Ordering::SeqCst) != 1 {
        panic!(
            "timer: SEND_INTERRUPTS delivered {} ticks, expected 1",
            TICKS.load(Ordering::SeqCst)
        );
    }
    // Twenty more, each re-armed by the handler, while we sleep in HALT between them.
    const MORE: u64 = 20;
    REARM.store(MORE - 1, Ordering::SeqCst);
    let start = rdtsc();
    set_clockevent(TICK_NS);
    while TICKS.load(Ordering::SeqCst) < 1 + MORE {
        // SAFETY: sleeps until an interrupt; the flag is on.
        unsafe { hcall(HALT, [0; 5]) };
    }
    let ms = (rdtsc() - start) / khz;
    if ms < MORE {
        panic!("timer: {MORE} ticks of 1 ms took {ms} ms");
    }
    println!(
        "timer: held while off, delivered on SEND_INTERRUPTS, {MORE} ticks in {ms} ms with HALT"
    );
    poweroff("timer done")
}

/// `idt-*`: gates the host must refuse, each one kills the guest with LOAD_IDT_ENTRY's reason.
pub fn bad_gate(name: &str) -> ! {
    let handler = trap_entry_6 as *const () as u64;
    let cs = GUEST_KERNEL_CS;
    let (vector, bad) = match name {
        "idt-call-gate" => (6, gate(handler, 0xc, 0, cs)),
        "idt-task-gate" => (6, gate(handler, 0x5, 0, cs)),
        "idt-ring0-selector" => (6, gate(handler, 0xe, 0, 0x10)),
        "idt-user-selector" => (6, gate(handler, 0xe, 3, 0x33)),
        "idt-ist" => {
            let (low, high) = gate(handler, 0xe, 0, cs);
            (6, (low | 1 << 32, high))
        }
        "idt-noncanonical" => (6, gate(0x8000_0000_0000, 0xe, 0, cs)),
        "idt-hypercall-vector" => (0x1f, gate(handler, 0xe, 1, cs)),
        _ => panic!("unknown scenario {name:?}"),
    };
    println!("attack: {name}");
    load_idt_entry(vector, bad);
    println!("attack {name}: survived (the host took the gate)");
    poweroff("bad gate taken")
}
