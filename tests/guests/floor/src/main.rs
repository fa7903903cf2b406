//! floor-probe: what a world switch costs at the very least, on the machine lguest-rs is tested on.
//!
//! lguest-rs's null hypercall is an `int` from the guest at ring 1 into the Switcher at ring 0,
//! a switch to the host's page tables and back, and an `iretq` home. Under QEMU's TCG those
//! pieces cost what an emulator makes them cost (a CR3 write flushes its whole software TLB), so
//! the hypercall's figure means little alone. This probe boots as the machine's own kernel, with
//! no Linux and no lg.ko, and times the pieces with rdtsc under the same QEMU settings:
//!
//! - `int-iretq`: `int` to a ring-0 gate whose handler only `iretq`s, from ring 0;
//! - `int-iretq-ring1`: the same from ring 1, through the TSS's RSP0: a real switch's shape;
//! - `cr3-write`: reloading CR3 with its own value;
//! - `floor`: from ring 1, `int`, two CR3 writes (another root and back), `iretq`: the least
//!   any world switch pays here.
//!
//! Each is timed over [`ITERATIONS`] round trips, [`REPETITIONS`] times; the median is printed as
//! `bench native <name> <cycles>` on the serial port, and the probe ends QEMU through its
//! isa-debug-exit device. src/boot.rs gets the CPU from QEMU's PVH entry to [`probe_main`].
#![no_std]
#![no_main]

use core::arch::{asm, global_asm};
use core::fmt::{self, Write};
use core::panic::PanicInfo;

mod boot;

use boot::{KERNEL_CS, KERNEL_DS, RING1_CS, RING1_DS, TSS_SEL, TSS_SLOT};

/// Round trips per timing: enough that rdtsc's own cost vanishes in the average.
const ITERATIONS: u64 = 20_000;
/// Timings per figure; the median is reported, as TCG's timings are noisy.
const REPETITIONS: usize = 5;

/// The gate both `int-iretq` figures raise. DPL 1 lets ring 1 raise it too; a gate's DPL is only a
/// permission check, so both rings time the same delivery.
const VEC_IRETQ: u8 = 0x80;
/// The floor: two CR3 writes, then `iretq`.
const VEC_FLOOR: u8 = 0x81;
/// Leaves ring 1 for good: back to `ring1_call`'s caller.
const VEC_EXIT: u8 = 0x82;

// ---- Stacks, TSS and IDT ----------------------------------------------------------------------

pub const STACK_SIZE: usize = 16 * 1024;

#[repr(C, align(16))]
pub struct Stack([u8; STACK_SIZE]);

/// Ring 0's stack, from boot on.
pub static mut BOOT_STACK: Stack = Stack([0; STACK_SIZE]);
/// Where an `int` from ring 1 pushes its frame (TSS.RSP0). It must not be BOOT_STACK, whose
/// live frames (the caller of `ring1_call`) it would overwrite.
static mut RING0_TRAP_STACK: Stack = Stack([0; STACK_SIZE]);
/// Ring 1's stack.
static mut RING1_STACK: Stack = Stack([0; STACK_SIZE]);

/// The 64-bit TSS (SDM 3A 8.7): only RSP0 matters here. The I/O map base past the end means
/// no I/O bitmap.
#[repr(C, packed(4))]
struct Tss {
    reserved0: u32,
    rsp: [u64; 3],
    reserved1: u64,
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    iomap_base: u16,
}

const TSS_SIZE: u16 = core::mem::size_of::<Tss>() as u16;

static mut TSS: Tss = Tss {
    reserved0: 0,
    rsp: [0; 3],
    reserved1: 0,
    ist: [0; 7],
    reserved2: 0,
    reserved3: 0,
    iomap_base: TSS_SIZE,
};

/// 256 interrupt gates of 16 bytes each, as two u64 apiece. Only the three above are present:
/// anything else that fires triple-faults, and with -no-reboot that ends QEMU, without figures.
#[repr(C, align(16))]
struct Idt([u64; 512]);

static mut IDT: Idt = Idt([0; 512]);

/// What `lgdt`/`lidt` load: limit, then base.
#[repr(C, packed)]
struct TablePointer {
    limit: u16,
    base: u64,
}

extern "C" {
    fn iretq_handler();
    fn floor_handler();
    fn ring1_exit();
    /// Runs `f` at ring 1 on RING1_STACK and returns what it returns, at ring 0.
    fn ring1_call(f: extern "C" fn() -> u64) -> u64;
}

global_asm!(
    r#"
    .text
    // Vector 0x80: the null round trip; nothing to do but go back.
    .global iretq_handler
iretq_handler:
    iretq

    // Vector 0x81: the floor. Switch to the other root, which maps this code as well, and back:
    // the two CR3 writes a switch to a guest's page tables and home again must make.
    .global floor_handler
floor_handler:
    push rax
    lea rax, [rip + pml4_b]
    mov cr3, rax
    lea rax, [rip + pml4]
    mov cr3, rax
    pop rax
    iretq

    // u64 ring1_call(u64 (*f)(void)). Keep ring 0's callee-saved registers and stack pointer,
    // then iretq to ring 1 on a frame we built; ring 1 calls f and leaves through VEC_EXIT.
    .global ring1_call
ring1_call:
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    mov [rip + {ring0_rsp}], rsp
    push {ring1_ds}                 // SS
    lea rax, [rip + {ring1_stack} + {stack_size}]
    push rax                        // RSP
    push 0x2                        // RFLAGS: interrupts stay off, as they are now
    push {ring1_cs}                 // CS
    lea rax, [rip + ring1_entry]
    push rax                        // RIP
    iretq
ring1_entry:
    call rdi
    int {vec_exit}

    // Vector 0x82, at ring 0 on TSS.RSP0 with f's result in RAX: drop the frame and return from
    // ring1_call. The int left SS null; put back the ring-0 data segment.
    .global ring1_exit
ring1_exit:
    mov rsp, [rip + {ring0_rsp}]
    mov ecx, {kernel_ds}
    mov ss, ecx
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    ret
    "#,
    ring0_rsp = sym RING0_RSP,
    ring1_ds = const RING1_DS,
    ring1_cs = const RING1_CS,
    ring1_stack = sym RING1_STACK,
    stack_size = const STACK_SIZE,
    vec_exit = const VEC_EXIT,
    kernel_ds = const KERNEL_DS,
);

/// Ring 0's stack pointer while ring 1 runs, for `ring1_exit`.
static mut RING0_RSP: u64 = 0;

/// A present 64-bit interrupt gate to `handler` in the ring-0 code segment, raisable from `dpl`.
fn gate(handler: unsafe extern "C" fn(), dpl: u64) -> [u64; 2] {
    let offset = handler as usize as u64;
    let attributes = 0x80 | dpl << 5 | 0xe; // present, DPL, type 14: interrupt gate
    let low = (offset & 0xffff)
        | u64::from(KERNEL_CS) << 16
        | attributes << 40
        | (offset >> 16 & 0xffff) << 48;
    [low, offset >> 32]
}

/// Loads the TSS (its descriptor first, which needs its address) and the IDT.
fn init_cpu() {
    let base = (&raw const TSS) as u64;
    // Type 9 (available 64-bit TSS), present, DPL 0; base and limit in the descriptor's pieces.
    let tss_low =
        u64::from(TSS_SIZE - 1) | (base & 0xff_ffff) << 16 | 0x89 << 40 | (base >> 24 & 0xff) << 56;
    let gates = [
        (VEC_IRETQ, gate(iretq_handler, 1)),
        (VEC_FLOOR, gate(floor_handler, 1)),
        (VEC_EXIT, gate(ring1_exit, 1)),
    ];
    let idt = TablePointer {
        limit: core::mem::size_of::<Idt>() as u16 - 1,
        base: (&raw const IDT) as u64,
    };
    // SAFETY: one CPU, interrupts off, and nothing else touches these statics yet: the writes
    // cannot race. The TSS descriptor goes into the GDT's two spare slots, which no loaded
    // segment uses; the TSS and IDT then loaded are statics, valid forever, and the gates point
    // at handlers that keep every register and return with iretq (or, for ring1_exit, into
    // ring1_call's caller).
    unsafe {
        TSS.rsp[0] = (&raw const RING0_TRAP_STACK) as u64 + STACK_SIZE as u64;
        boot::gdt[TSS_SLOT] = tss_low;
        boot::gdt[TSS_SLOT + 1] = base >> 32;
        asm!("ltr {0:x}", in(reg) TSS_SEL, options(nostack));
        for (vector, [low, high]) in gates {
            let slot = usize::from(vector) * 2;
            IDT.0[slot] = low;
            IDT.0[slot + 1] = high;
        }
        asm!("lidt [{0}]", in(reg) &idt, options(readonly, nostack));
    }
}

// ---- The figures ------------------------------------------------------------------------------

fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc only reads the counter (CR4.TSD is clear, so at ring 1 too).
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    u64::from(hi) << 32 | u64::from(lo)
}

/// Cycles per call of `op`, averaged over ITERATIONS calls.
fn per_iteration(op: impl Fn()) -> u64 {
    let start = rdtsc();
    for _ in 0..ITERATIONS {
        op();
    }
    (rdtsc() - start) / ITERATIONS
}

/// The median of REPETITIONS timings. The first one also pays for QEMU translating the code.
fn median(timing: impl Fn() -> u64) -> u64 {
    let mut runs = [0; REPETITIONS];
    for run in &mut runs {
        *run = timing();
    }
    runs.sort_unstable();
    runs[REPETITIONS / 2]
}

fn int_iretq() {
    // SAFETY: the gate's handler only returns, keeping every register and flag.
    unsafe { asm!("int {v}", v = const VEC_IRETQ) };
}

fn int_floor() {
    // SAFETY: the handler keeps every register; the CR3 values it loads map all of memory the
    // same way, so nothing the compiler knows about moves.
    unsafe { asm!("int {v}", v = const VEC_FLOOR) };
}

fn cr3_write() {
    // SAFETY: writing CR3's own value back changes no mapping; it only flushes the TLB.
    unsafe { asm!("mov {0}, cr3", "mov cr3, {0}", out(reg) _, options(nostack)) };
}

/// Run at ring 1 by `ring1_call`.
extern "C" fn ring1_int_iretq() -> u64 {
    per_iteration(int_iretq)
}

/// Run at ring 1 by `ring1_call`.
extern "C" fn ring1_floor() -> u64 {
    per_iteration(int_floor)
}

fn at_ring1(f: extern "C" fn() -> u64) -> u64 {
    // SAFETY: init_cpu loaded the TSS (RSP0) and the gates ring1_call and f rely on; f does
    // nothing privileged: it only raises those gates and reads the TSC.
    unsafe { ring1_call(f) }
}

/// Where boot.rs lands: set up the CPU, time each figure, print them, end QEMU.
pub extern "C" fn probe_main() -> ! {
    init_cpu();
    let figures = [
        ("int-iretq", median(|| per_iteration(int_iretq))),
        ("int-iretq-ring1", median(|| at_ring1(ring1_int_iretq))),
        ("cr3-write", median(|| per_iteration(cr3_write))),
        ("floor", median(|| at_ring1(ring1_floor))),
    ];
    for (name, cycles) in figures {
        println!("bench native {name} {cycles}");
    }
    exit(0)
}

// ---- Serial port and exit ---------------------------------------------------------------------

/// COM1: QEMU's -nographic puts it on stdout.
const COM1: u16 = 0x3f8;
/// isa-debug-exit's port (bench.sh adds the device): QEMU exits with status 2 * value + 1.
const DEBUG_EXIT: u16 = 0xf4;

struct Serial;

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for byte in s.bytes() {
            // SAFETY: COM1's line status and data registers; polling then writing has no
            // effect beyond sending the byte.
            unsafe {
                while {
                    let status: u8;
                    asm!("in al, dx", out("al") status, in("dx") COM1 + 5, options(nomem, nostack));
                    status & 0x20 == 0 // transmitter holding register not empty yet
                } {}
                asm!("out dx, al", in("dx") COM1, in("al") byte, options(nomem, nostack));
            }
        }
        Ok(())
    }
}

#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        // Writing to the serial port cannot fail.
        let _ = writeln!(Serial, $($arg)*);
    }};
}

/// Ends QEMU: status 1 when `value` is 0 (done), 3 when it is 1 (panic).
fn exit(value: u8) -> ! {
    // SAFETY: the isa-debug-exit port; writing it stops the machine.
    unsafe { asm!("out dx, al", in("dx") DEBUG_EXIT, in("al") value, options(nomem, nostack)) };
    // Without the device the write does nothing: stop here.
    loop {
        // SAFETY: hlt with interrupts off just stops this CPU.
        unsafe { asm!("hlt", options(nomem, nostack)) };
    }
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    println!("floor-probe: panic: {info}");
    exit(1)
}
