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
//! attacks (gates the host must refuse); the handlers serve `user` (user.rs) too.

use core::arch::{asm, global_asm};
use core::ptr;
use core::sync::atomic::{AtomicU64, Ordering};

use lguest_abi::boot::GUEST_KERNEL_CS;
use lguest_abi::data::{offset, IRQ_ENABLED};
use lguest_abi::hcall::{
    FIRST_IRQ_VECTOR, HALT, LOAD_IDT_ENTRY, NEW_PGTABLE, SEND_INTERRUPTS, SET_CLOCKEVENT,
};

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
    fn trap_entry_6();
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
fn gate(handler: u64, kind: u64, dpl: u64, selector: u64) -> (u64, u64) {
    let [low, high] = lguest_abi::hcall::idt_gate(handler, selector, kind, dpl);
    (low, high)
}

fn load_idt_entry(vector: u64, (low, high): (u64, u64)) {
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

fn check(name: &str, expected: [u64; 3]) {
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

// ---- Ring 3 -----------------------------------------------------------------------------------

/// The guest's own page tables for `user`: RAM identity-mapped in 2 MiB pages, one of them
/// (USER_REGION) open to ring 3. The kernel's own pages stay supervisor-only: with SMEP on, ring 1
/// could not run code in a user page.
#[repr(C, align(4096))]
pub(crate) struct Table(pub(crate) [u64; 512]);
pub(crate) static mut PML4: Table = Table([0; 512]);
pub(crate) static mut PDPT: Table = Table([0; 512]);
pub(crate) static mut PD: Table = Table([0; 512]);
/// Page-table entry bits: present, writable, a 2 MiB page; and that page's size.
pub(crate) const P: u64 = 1;
pub(crate) const W: u64 = 2;
pub(crate) const U: u64 = 4;
pub(crate) const HUGE: u64 = 0x80;
pub(crate) const HUGE_PAGE: u64 = 0x20_0000;
// ---- Page tables the host must not trust ------------------------------------------------------

/// Fills the guest's own tables (PML4 -> PDPT -> PD) with the first 64 MiB of RAM
/// identity-mapped in 2 MiB pages, as the launcher's tables map it, so that switching to them
/// keeps this code and its stack mapped. Returns the PD and the PML4, for the caller to add
/// its own entries before it loads them (NEW_PGTABLE). The PML4 and PDPT entries allow ring 3
/// (x86 takes the most restrictive permission along the walk), so a PD entry with the user bit
/// is a user page; the identity map's are not.
///
/// # Safety
///
/// Single CPU, and nothing may hold a reference into PD, PDPT or PML4.
pub(crate) unsafe fn ram_identity_tables() -> (&'static mut [u64; 512], &'static mut [u64; 512]) {
    // SAFETY: by the function's contract, these are ours to write.
    unsafe {
        let pd = &mut (*ptr::addr_of_mut!(PD)).0;
        for (i, entry) in pd.iter_mut().take(32).enumerate() {
            *entry = (i as u64 * HUGE_PAGE) | P | W | HUGE;
        }
        (*ptr::addr_of_mut!(PDPT)).0[0] = ptr::addr_of!(PD) as u64 | P | W | U;
        let pml4 = &mut (*ptr::addr_of_mut!(PML4)).0;
        pml4[0] = ptr::addr_of!(PDPT) as u64 | P | W | U;
        (pd, pml4)
    }
}

/// Loads the guest's own tables (NEW_PGTABLE, RCX 0: the host may keep a shadow it has of them;
/// the callers tell it of what they change, or mean to test what it kept).
pub(crate) fn load_own_tables() {
    // SAFETY: the host only reads the table's address.
    unsafe { hcall(NEW_PGTABLE, [ptr::addr_of!(PML4) as u64, 0, 0, 0, 0]) };
}

/// `pt-*`: page tables of the guest's own that map what it must not have, each touched once:
/// the host must kill the guest with the reason, never map the page.
/// - `pt-beyond-ram`: a page beyond guest RAM (1 TiB up);
/// - `pt-switcher-window`: an entry in PML4 slot 256, over the Switcher's window (the host page
///   of CPU 0's block, which no guest view maps);
/// - `pt-rewritten`: the launcher's tables, written in place (they are in guest RAM, writable)
///   to point a mapped address beyond RAM, announced with FLUSH_TLB.
pub fn bad_page_tables(name: &str) -> ! {
    println!("attack: {name}");
    // SAFETY: single CPU; the tables are ours; the addresses touched are the attack.
    unsafe {
        let (pd, pml4) = ram_identity_tables();
        let target: u64 = match name {
            "pt-beyond-ram" => {
                pd[40] = 1 << 40 | P | W | HUGE;
                40 * HUGE_PAGE
            }
            "pt-switcher-window" => {
                pml4[256] = ptr::addr_of!(PDPT) as u64 | P | W;
                // Window page 16: CPU 0's host page (block 0 starts at page 2; +14).
                lguest_abi::data::SWITCHER_WINDOW_START + 16 * 4096
            }
            "pt-rewritten" => {
                // Map it first, and touch it, so that the host has a shadow of it...
                pd[40] = HUGE_PAGE | P | W | HUGE;
                load_own_tables();
                ptr::read_volatile((40 * HUGE_PAGE) as *const u64);
                // ...then point it beyond RAM behind the shadow's back, and own up (a change
                // above the last level wants FLUSH_TLB).
                ptr::write_volatile(&mut pd[40], 1 << 40 | P | W | HUGE);
                hcall(lguest_abi::hcall::FLUSH_TLB, [0, 0, 0, 0, 0]);
                40 * HUGE_PAGE
            }
            _ => panic!("unknown scenario {name:?}"),
        };
        load_own_tables();
        let value = ptr::read_volatile(target as *const u64);
        println!("attack {name}: survived (read {value:#x} at {target:#x})");
    }
    poweroff("bad page tables taken")
}

// ---- Device pages ------------------------------------------------------------------------------

/// `pin-churn N`: one virtual page mapped in turn to N different pages of RAM, each touched and
/// then announced gone (SET_PTE), then a few seconds of spinning before powering off. The host
/// pins a page while a shadow entry maps it: the test (`guest-pins-released`) watches the
/// host's pin count stay small during the spin, where pins kept until the guest's end would
/// have piled up to N.
pub fn pin_churn(pages: u64) -> ! {
    const CHURN_VA: u64 = 41 * HUGE_PAGE;
    const FIRST_GPA: u64 = 16 << 20;
    static mut PT: Table = Table([0; 512]);
    // SAFETY: single CPU; the tables are ours (ram_identity_tables); the churned pages are
    // unused RAM.
    unsafe {
        let (pd, _) = ram_identity_tables();
        pd[41] = ptr::addr_of!(PT) as u64 | P | W;
        load_own_tables();
        let pt = ptr::addr_of_mut!(PT.0[0]);
        for k in 0..pages {
            ptr::write_volatile(pt, (FIRST_GPA + k * 4096) | P | W);
            hcall(lguest_abi::hcall::SET_PTE, [CHURN_VA, 0, 0, 0, 0]);
            ptr::write_volatile(CHURN_VA as *mut u64, k);
        }
        ptr::write_volatile(pt, 0);
        hcall(lguest_abi::hcall::SET_PTE, [CHURN_VA, 0, 0, 0, 0]);
    }
    println!("pin-churn: {pages} pages mapped, touched and unmapped");
    let start = rdtsc();
    while rdtsc() - start < 3 * crate::tsc_khz() * 1000 {
        core::hint::spin_loop();
    }
    poweroff("pin-churn done")
}

/// Where [`map_device_page`] maps device pages: a 2 MiB page of the guest's own tables.
const DEVICE_WINDOW: u64 = 40 * HUGE_PAGE;

/// Switches to page tables of the guest's own: RAM identity-mapped as the launcher's were, and
/// the 2 MiB around guest-physical `gpa` at DEVICE_WINDOW. Returns where `gpa` is mapped.
///
/// Nothing at `gpa` is RAM (the launcher's first virtio device sits right above RAM): every
/// access through the returned address leaves the guest, and the launcher emulates it.
pub fn map_device_page(gpa: u64) -> u64 {
    // SAFETY: single CPU; the tables are ours (ram_identity_tables).
    let (pd, _) = unsafe { ram_identity_tables() };
    pd[40] = (gpa & !(HUGE_PAGE - 1)) | P | W | HUGE;
    load_own_tables();
    DEVICE_WINDOW + (gpa & (HUGE_PAGE - 1))
}

/// `mmio GPA` and `mmio-*`: the device page at guest-physical GPA, touched:
/// - `mmio GPA`: reads a virtio-blk device's magic and device id (32-bit registers), then its
///   capacity in config space (any width there) with the instruction forms drivers use: a
///   64-bit `mov`, a `movzx` of one byte, a 16-bit `mov` that must leave the rest of R9 alone,
///   and a `cmp` whose flags must come back; then writes the status register (a reset);
/// - `mmio-loop GPA`: reads the magic register over and over, timed: what an MMIO exit costs;
/// - `mmio-exec GPA`: jumps into the device page: the host must kill the guest;
/// - `mmio-rmw GPA`: `or [reg], eax` on a device register, which the launcher refuses to
///   emulate: it must stop with the instruction's text.
pub fn mmio(name: &str, gpa: u64) -> ! {
    if !matches!(name, "mmio" | "mmio-loop") {
        println!("attack: {name}");
    }
    let base = map_device_page(gpa);
    // SAFETY: `base` is the device page; the instructions below touch only its registers.
    unsafe {
        match name {
            "mmio" => {
                let (magic, device, capacity, byte, below): (u32, u32, u64, u32, u8);
                let mut r9: u64 = 0x1111_2222_3333_4444;
                asm!(
                    "mov {magic:e}, [{base}]",
                    "mov {device:e}, [{base} + 8]",
                    "mov {capacity}, [{base} + 0x100]",
                    "movzx {byte:e}, byte ptr [{base} + 0x101]",
                    "mov r9w, [{base} + 0x100]",
                    "cmp qword ptr [{base} + 0x100], 0x4001",
                    "setb {below}",
                    "mov dword ptr [{base} + 0x70], 0",
                    base = in(reg) base,
                    magic = out(reg) magic,
                    device = out(reg) device,
                    capacity = out(reg) capacity,
                    byte = out(reg) byte,
                    below = out(reg_byte) below,
                    inout("r9") r9,
                    options(nostack),
                );
                println!(
                    "mmio: magic={magic:#x} device={device} capacity={capacity:#x} byte={byte:#x} \
                     r9={r9:#x} below-0x4001={below}"
                );
                poweroff("mmio done")
            }
            "mmio-loop" => {
                // What one read costs: a full MMIO exit to the launcher and back.
                const READS: u64 = 20_000;
                let start = rdtsc();
                for _ in 0..READS {
                    ptr::read_volatile(base as *const u32);
                }
                let cycles = (rdtsc() - start) / READS;
                println!("mmio-loop: {READS} device reads, {cycles} cycles each");
                poweroff("mmio-loop done")
            }
            "mmio-exec" => {
                let device_code: extern "C" fn() = core::mem::transmute(base as *const ());
                device_code();
                println!("attack {name}: survived (ran code from a device page)");
            }
            "mmio-rmw" => {
                asm!("or dword ptr [{base} + 0x70], eax", base = in(reg) base, in("eax") 1,
                    options(nostack));
                println!("attack {name}: survived (the launcher emulated or)");
            }
            _ => panic!("unknown scenario {name:?}"),
        }
    }
    poweroff("device page attack done")
}

// ---- The asynchronous hypercall ring -----------------------------------------------------------

/// Queue hypercall `nr` with `args` in slot `slot` of lguest_data's ring.
fn queue(slot: usize, nr: u64, args: [u64; 5]) {
    let entry = data_word(offset::HCALLS + slot as u64 * 48);
    // SAFETY: our lguest_data page; the slot is written in full before its status says so.
    unsafe {
        ptr::write_volatile(entry, nr);
        for (i, arg) in args.into_iter().enumerate() {
            ptr::write_volatile(entry.add(1 + i), arg);
        }
        let status = data_word(offset::HCALL_STATUS).cast::<u8>().add(slot);
        ptr::write_volatile(status, lguest_abi::data::HCALL_PENDING);
    }
}

fn status(slot: usize) -> u8 {
    // SAFETY: our lguest_data page.
    unsafe { ptr::read_volatile(data_word(offset::HCALL_STATUS).cast::<u8>().add(slot)) }
}

/// `async`: calls queued in the ring are carried out, in order, before the next synchronous
/// call (here FLUSH_ASYNC), and their slots come back done: the #UD handler that a queued
/// LOAD_IDT_ENTRY installed catches a ud2.
pub fn async_ring() -> ! {
    install();
    let (low, high) = gate(trap_entry_6 as *const () as u64, 0xe, 0, GUEST_KERNEL_CS);
    load_idt_entry(6, (0, 0));
    queue(0, LOAD_IDT_ENTRY, [6, low, high, 0, 0]);
    queue(1, lguest_abi::hcall::NOP, [0; 5]);
    if status(0) != lguest_abi::data::HCALL_PENDING {
        panic!("async: the host ran slot 0 before any synchronous call");
    }
    // SAFETY: FLUSH_ASYNC only drains the ring.
    unsafe { hcall(lguest_abi::hcall::FLUSH_ASYNC, [0; 5]) };
    if status(0) != lguest_abi::data::HCALL_DONE || status(1) != lguest_abi::data::HCALL_DONE {
        panic!(
            "async: slots 0 and 1 are {} and {} after FLUSH_ASYNC",
            status(0),
            status(1)
        );
    }
    SKIP.store(2, Ordering::SeqCst);
    // SAFETY: ud2 faults; the queued handler skips it.
    unsafe { core::arch::asm!("ud2") };
    check("#UD", [6, 0, GUEST_KERNEL_CS & !3]);
    println!("async: queued calls ran in order at FLUSH_ASYNC");
    poweroff("async done")
}

/// `async-console`: a call whose point is its effect on the launcher (console output) may not
/// hide in the ring: the guest dies for it.
pub fn async_console() -> ! {
    println!("attack: async-console");
    let text = b"from the ring";
    queue(
        0,
        lguest_abi::hcall::CONSOLE_WRITE,
        [text.as_ptr() as u64, text.len() as u64, 0, 0, 0],
    );
    // SAFETY: drains the ring.
    unsafe { hcall(lguest_abi::hcall::FLUSH_ASYNC, [0; 5]) };
    println!("attack async-console: survived");
    poweroff("async console taken")
}

// ---- TLS segments -----------------------------------------------------------------------------

/// A data segment descriptor: base (32 bits), 4 GiB limit, writable, present, `dpl`, accessed
/// bit clear (the host must set it).
fn data_descriptor(base: u64, dpl: u64) -> u64 {
    0x00cf_9200_0000_ffff | (base & 0xff_ffff) << 16 | (base >> 24 & 0xff) << 56 | dpl << 45
}

fn load_gdt_entry(index: u64, descriptor: u64) {
    // SAFETY: the host only reads the registers.
    unsafe {
        hcall(
            lguest_abi::hcall::LOAD_GDT_ENTRY,
            [index, descriptor, 0, 0, 0],
        )
    };
}

/// `gdt-tls`: a TLS segment the guest sets is loadable, with its base; one given with DPL 0 is
/// raised to DPL 1 (so it never has the host's privilege) and still loads at ring 1.
pub fn tls() -> ! {
    const BASE: u64 = 0x12_3000;
    load_gdt_entry(12, data_descriptor(BASE, 3));
    load_gdt_entry(13, data_descriptor(0, 0));
    let (fs_base, rights): (u64, u64);
    // SAFETY: loads FS with our TLS segment (selector 0x63: entry 12, RPL 3) and reads its
    // base (FSGSBASE works at ring 1), then asks for entry 13's access rights (0x69: RPL 1).
    unsafe {
        core::arch::asm!(
            "mov ax, 0x63", "mov fs, ax", "rdfsbase {base}",
            "mov ax, 0x69", "mov gs, ax", "lar {rights}, ax",
            base = out(reg) fs_base, rights = out(reg) rights, out("rax") _,
        )
    };
    let dpl = rights >> 13 & 3;
    if fs_base != BASE || dpl != 1 {
        panic!(
            "gdt-tls: fs base {fs_base:#x} (expected {BASE:#x}), entry 13's DPL {dpl} (expected 1)"
        );
    }
    println!("gdt-tls: fs base {fs_base:#x}, a DPL 0 segment came back DPL {dpl}");
    poweroff("gdt-tls done")
}

/// `gdt-*`: descriptors the host must refuse.
pub fn bad_descriptor(name: &str) -> ! {
    let (index, descriptor) = match name {
        "gdt-system" => (12, 0x0000_8900_0000_0067), // an available 64-bit TSS
        "gdt-call-gate" => (12, 0x0000_ec00_0051_1000), // a call gate to the kernel's code
        "gdt-long" => (12, 0x00af_fa00_0000_ffff),   // 64-bit code, DPL 3
        "gdt-kernel-entry" => (10, data_descriptor(0, 3)), // the guest kernel's code segment
        "gdt-host-entry" => (2, data_descriptor(0, 3)), // the host's (and Switcher's) code segment
        _ => panic!("unknown scenario {name:?}"),
    };
    println!("attack: {name}");
    load_gdt_entry(index, descriptor);
    println!("attack {name}: survived (the host took the descriptor)");
    poweroff("bad descriptor taken")
}
