//! The ring-1 guest: the first kernel lg.ko ever runs.
//!
//! It is as small as a kernel can be and still prove something. The launcher loads it like any
//! lguest kernel (the ELF note below names its entry point), lg.ko starts it at CPL 1 in 64-bit
//! long mode on page tables the launcher built, and from then on the only way out is a
//! hypercall. It has no IDT, no interrupts, no page tables of its own: whatever goes wrong is
//! the host's to catch, and whatever it is told to attack (src/attacks.rs) is the host's to
//! refuse. The story, in the order the CPU meets it:
//!
//! 1. the lguest note, which makes the launcher accept this file at all;
//! 2. `_start`, which makes a stack and calls Rust;
//! 3. `kernel_main`: LGUEST_INIT first (src/hcall.rs), then the command line picks a scenario;
//! 4. the friendly scenarios below (`hello`, `reboot`, `nop-loop`, `spin`, `fpu`), and the rest
//!    by subject: traps.rs (the guest's own IDT: exceptions, the timer, gates the host must
//!    refuse), user.rs (ring 3 and its system calls), page_tables.rs (tables of the guest's own,
//!    and tables the host must refuse), device_pages.rs (MMIO), async_ring.rs (queued
//!    hypercalls), gdt.rs (TLS segments, and descriptors the host must refuse), virtqueue.rs
//!    (descriptors for the launcher's devices), and the attacks of attacks.rs (instructions and
//!    hypercalls) and hazards.rs (the host's LDT, debug status and protection keys). Every one
//!    ends with SHUTDOWN, with the host killing the guest, or with the launcher refusing what it
//!    was asked. linux.rs has what a Linux guest needs of the host beyond hypercalls (privileged
//!    instructions it emulates).
//!
//! Output goes through CONSOLE_WRITE (src/console.rs), so `println!` works from step 3 on.
#![no_std]
#![no_main]

use core::arch::{asm, naked_asm};
use core::panic::PanicInfo;

use lguest_abi::boot::EntryNote;
use lguest_abi::data::{SWITCHER_WINDOW_END, SWITCHER_WINDOW_START};

mod async_ring;
mod attacks;
mod console;
mod device_pages;
mod gdt;
mod hazards;
mod hcall;
mod linux;
mod page_tables;
mod traps;
mod user;
mod virtqueue;

// ---- 1. The note ------------------------------------------------------------------------------

/// The lguest entry note (lguest-abi's `EntryNote`): the launcher refuses an image without it.
/// linker.ld keeps the section and gives it a PT_NOTE program header, where the launcher looks.
#[used]
#[link_section = ".note.lguest"]
static NOTE: EntryNote = EntryNote::new(_start);

// ---- 2. The entry point -----------------------------------------------------------------------

const STACK_SIZE: usize = 64 * 1024;

/// The kernel's one stack. RSP is 0 when the host starts us: nothing may be pushed before
/// `_start` points RSP here.
#[repr(C, align(16))]
struct Stack([u8; STACK_SIZE]);

static mut STACK: Stack = Stack([0; STACK_SIZE]);

/// The first instruction. The host starts us with RSI = the guest-physical address of
/// boot_params (Linux's 64-bit boot protocol) and no stack; `kernel_main` gets RSI as its
/// argument. RBP = 0 ends any backtrace here.
///
/// # Safety
///
/// Only the host may call this, once, as the guest's entry point.
#[unsafe(naked)]
#[no_mangle]
#[link_section = ".text._start"]
pub unsafe extern "C" fn _start() -> ! {
    naked_asm!(
        "lea rsp, [rip + {stack} + {size}]",
        "xor ebp, ebp",
        "mov rdi, rsi",
        "call {main}",
        "ud2",
        stack = sym STACK,
        size = const STACK_SIZE,
        main = sym kernel_main,
    )
}

// ---- 3. Main ----------------------------------------------------------------------------------

/// Where boot_params keeps the command line's guest-physical address (`hdr.cmd_line_ptr`, a
/// u32: Documentation/arch/x86/zero-page.rst). The launcher puts the line below 4 GiB, so the
/// high half (`ext_cmd_line_ptr`) stays zero and is not read.
const CMD_LINE_PTR: u64 = 0x228;
/// The launcher passes at most a page of command line, NUL not included.
const CMD_LINE_MAX: usize = 4095;

/// Where `_start` lands: LGUEST_INIT, a check that the host filled in `lguest_data`, then the
/// scenario the command line's first word names (`hello` if there is none), with its second word
/// as the argument. The devices' words, which the launcher puts first, are skipped.
extern "C" fn kernel_main(boot_params: u64) -> ! {
    let data = hcall::lguest_init();
    let window = (data.switcher_window_start, data.switcher_window_end);
    if window != (SWITCHER_WINDOW_START, SWITCHER_WINDOW_END) {
        panic!("LGUEST_INIT: the host wrote the Switcher window as {window:x?}");
    }

    let cmdline = command_line(boot_params);
    // The launcher names its devices first (`virtio_mmio.device=...`); the scenario follows.
    let mut words = cmdline
        .split_ascii_whitespace()
        .filter(|word| !word.starts_with("virtio_mmio."));
    let scenario = words.next().unwrap_or("hello");
    let arg = words.next();
    match scenario {
        "hello" => hello(),
        "reboot" => reboot(),
        "nop-loop" => nop_loop(number(arg, 1_000_000)),
        "spin" => spin(arg.map(|s| number(Some(s), 0))),
        "fpu" => fpu(number(arg, 1)),
        "traps" => traps::traps(),
        "timer" => traps::timer(),
        "user" => user::user(),
        "async" => async_ring::async_ring(),
        "async-console" => async_ring::async_console(),
        name if name.starts_with("idt-") => traps::bad_gate(name),
        name if name.starts_with("pt-") => page_tables::bad_page_tables(name),
        name if name.starts_with("mmio") => device_pages::mmio(name, number(arg, 0)),
        "pin-churn" => page_tables::pin_churn(number(arg, 4000)),
        name if name.starts_with("virtqueue-") => virtqueue::attack(name, number(arg, 0)),
        "gdt-tls" => gdt::tls(),
        "cr4" => linux::cr4(),
        "xsetbv" => linux::xsetbv_accepted(),
        name if name.starts_with("xsetbv-") => linux::xsetbv_refused(name),
        "ports" => linux::ports(),
        "user-page" => linux::user_page(),
        "smep" => linux::smep(),
        "pgtable-flush" => linux::pgtable_flush(),
        "pgtable-bad-flag" => linux::pgtable_bad_flag(),
        "wallclock" => linux::wallclock(&data),
        name if name.starts_with("gdt-") => gdt::bad_descriptor(name),
        name => attacks::run(name, arg, &data),
    }
}

/// The command line the launcher wrote, from boot_params (identity-mapped, like all RAM).
fn command_line(boot_params: u64) -> &'static str {
    // SAFETY: the launcher wrote boot_params at this address, inside RAM.
    let ptr = unsafe { ((boot_params + CMD_LINE_PTR) as *const u32).read_volatile() };
    let start = u64::from(ptr) as *const u8;
    let mut len = 0;
    // SAFETY: the launcher wrote a NUL-terminated line of at most CMD_LINE_MAX bytes there.
    while len < CMD_LINE_MAX && unsafe { start.add(len).read_volatile() } != 0 {
        len += 1;
    }
    // SAFETY: `len` bytes from `start` were just read; nothing writes them afterwards.
    let bytes = unsafe { core::slice::from_raw_parts(start, len) };
    core::str::from_utf8(bytes).unwrap_or_else(|_| panic!("the command line is not UTF-8"))
}

/// A number from the command line, decimal or 0x-hexadecimal; `default` if there is none.
fn number(word: Option<&str>, default: u64) -> u64 {
    let Some(word) = word else { return default };
    let parsed = match word.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => word.parse(),
    };
    parsed.unwrap_or_else(|_| panic!("{word:?} is not a number"))
}

/// The code segment selector we run on; its low two bits are the CPL.
pub fn cs() -> u64 {
    let cs: u16;
    // SAFETY: reading CS is allowed at every privilege level and changes nothing.
    unsafe { asm!("mov {:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags)) };
    u64::from(cs)
}

/// The TSC's rate in kHz, as the host wrote it into lguest_data.
pub fn tsc_khz() -> u64 {
    // SAFETY: lguest_data is registered (the first thing kernel_main does).
    let khz =
        unsafe { core::ptr::read_volatile(hcall::data_word(lguest_abi::data::offset::TSC_KHZ)) };
    if khz == 0 {
        TSC_HZ / 1000
    } else {
        khz
    }
}

/// The time-stamp counter. At CPL 1 `rdtsc` works unless the host sets CR4.TSD.
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc only reads the counter.
    unsafe {
        asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    u64::from(hi) << 32 | u64::from(lo)
}

// ---- 4. The friendly scenarios ----------------------------------------------------------------

/// `hello`: the line the end-to-end test `guest-hello` looks for, with the CS we really run on.
fn hello() -> ! {
    let cs = cs();
    println!("hello from ring 1: cs={cs:#x} cpl={}", cs & 3);
    hcall::poweroff("bye")
}

/// `reboot`: says so, and asks to be restarted, as `reboot -f` does in Linux. Each boot is a
/// fresh guest with the same command line, so without `--no-reboot` it reboots until stopped.
fn reboot() -> ! {
    println!("ring1: rebooting");
    hcall::restart("reboot")
}

/// `nop-loop [N]`: N null hypercalls, timed. Each is a full world switch there and back, so
/// this is the figure the Switcher is judged by.
fn nop_loop(n: u64) -> ! {
    let start = rdtsc();
    for _ in 0..n {
        hcall::nop();
    }
    let cycles = rdtsc() - start;
    println!(
        "nop-loop: {n} hypercalls, {} cycles each",
        cycles / n.max(1)
    );
    hcall::poweroff("nop-loop done")
}

/// The TSC rate `spin` assumes; the test machines' TSCs run at about 2.1 GHz.
const TSC_HZ: u64 = 2_000_000_000;

/// `spin [SECONDS]`: burn the CPU in guest mode without a single hypercall, forever or for
/// about SECONDS. Only the host's own interrupts can take the CPU back, which is the point:
/// two such guests must share the machine, and Ctrl-C must still end one.
fn spin(seconds: Option<u64>) -> ! {
    let start = rdtsc();
    loop {
        core::hint::spin_loop();
        if let Some(s) = seconds {
            if rdtsc() - start >= s * TSC_HZ {
                println!("spin: {s} s done");
                hcall::poweroff("spin done");
            }
        }
    }
}

/// The sixteen SSE registers and MXCSR, as a guest sees them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(C, align(16))]
struct VectorRegs {
    xmm: [[u64; 2]; 16],
    mxcsr: u32,
}

impl VectorRegs {
    fn read() -> VectorRegs {
        let mut v = VectorRegs {
            xmm: [[0; 2]; 16],
            mxcsr: 0,
        };
        let p = v.xmm.as_mut_ptr();
        // SAFETY: stores the registers into `v`, which is ours and 16-byte aligned. The guest
        // is built soft-float, so the compiler keeps nothing in these registers.
        unsafe {
            asm!(
                "movdqa [{p}], xmm0", "movdqa [{p} + 16], xmm1", "movdqa [{p} + 32], xmm2",
                "movdqa [{p} + 48], xmm3", "movdqa [{p} + 64], xmm4", "movdqa [{p} + 80], xmm5",
                "movdqa [{p} + 96], xmm6", "movdqa [{p} + 112], xmm7", "movdqa [{p} + 128], xmm8",
                "movdqa [{p} + 144], xmm9", "movdqa [{p} + 160], xmm10",
                "movdqa [{p} + 176], xmm11", "movdqa [{p} + 192], xmm12",
                "movdqa [{p} + 208], xmm13", "movdqa [{p} + 224], xmm14",
                "movdqa [{p} + 240], xmm15", "stmxcsr [{p} + 256]",
                p = in(reg) p, options(nostack),
            )
        };
        v
    }

    fn write(&self) {
        let p = self.xmm.as_ptr();
        // SAFETY: loads the registers from `self`; see `read`.
        unsafe {
            asm!(
                "movdqa xmm0, [{p}]", "movdqa xmm1, [{p} + 16]", "movdqa xmm2, [{p} + 32]",
                "movdqa xmm3, [{p} + 48]", "movdqa xmm4, [{p} + 64]", "movdqa xmm5, [{p} + 80]",
                "movdqa xmm6, [{p} + 96]", "movdqa xmm7, [{p} + 112]", "movdqa xmm8, [{p} + 128]",
                "movdqa xmm9, [{p} + 144]", "movdqa xmm10, [{p} + 160]",
                "movdqa xmm11, [{p} + 176]", "movdqa xmm12, [{p} + 192]",
                "movdqa xmm13, [{p} + 208]", "movdqa xmm14, [{p} + 224]",
                "movdqa xmm15, [{p} + 240]", "ldmxcsr [{p} + 256]",
                p = in(reg) p, options(nostack),
            )
        };
    }
}

/// `fpu SEED`: the vector registers are the guest's alone. A fresh guest finds them in their
/// reset state (not another task's leftovers); values it puts there survive world switches,
/// the host's interrupts and other guests using theirs on the same CPUs.
fn fpu(seed: u64) -> ! {
    let fresh = VectorRegs::read();
    let reset = VectorRegs {
        xmm: [[0; 2]; 16],
        mxcsr: 0x1f80,
    };
    if fresh != reset {
        panic!("fpu: a fresh guest found {fresh:x?}");
    }
    let mut mine = reset;
    for (i, reg) in mine.xmm.iter_mut().enumerate() {
        *reg = [
            seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i as u64,
            !seed ^ (i as u64) << 32,
        ];
    }
    // Round toward zero, flush to zero: a MXCSR nobody else would have.
    mine.mxcsr = 0x1f80 | 3 << 13 | 1 << 15;
    mine.write();
    const ROUNDS: u64 = 2000;
    let start = rdtsc();
    for round in 0..ROUNDS {
        for _ in 0..50 {
            hcall::nop();
        }
        // Spin a little too, so the host's timer and other guests get their turns mid-run.
        while rdtsc() - start < (round + 1) * TSC_HZ / 1000 {
            core::hint::spin_loop();
        }
        let now = VectorRegs::read();
        if now != mine {
            panic!("fpu: after {round} rounds the registers were {now:x?}");
        }
    }
    println!(
        "fpu: seed {seed}: clean at start, kept across {} switches",
        ROUNDS * 50
    );
    hcall::poweroff("fpu done")
}

/// A panic is the guest's own bug: say so, and power off with a message that says so too.
#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    println!("guest panic: {info}");
    hcall::poweroff("guest panic")
}
