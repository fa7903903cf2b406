//! The hostile guest: one attack per run, chosen by the command line.
//!
//! Each attack is something a ring-1 kernel can try and a correct host must stop
//! (docs/design.md, D2; docs/hazards.md). The guest announces it (`attack: <name>`), does it
//! once, and if it is still alive afterwards says so (`attack <name>: survived (<what
//! happened>)`) and powers off. So the launcher's exit status tells the tests everything: 3 with
//! "guest died: <reason>" is the host doing its job; 0 with "survived" is a hole.
//!
//! The attacks, in the order of the hazards they probe:
//! - instructions that belong to ring 0: `syscall`, `sysenter`, `cli`, `hlt`, `mov-cr3`,
//!   `mov-to-cr4`, `lgdt`, `wrmsr`, `ins`, `outs`, `swapgs` (the host emulates a read of CR4 and
//!   plain `in` and `out` for a Linux guest, src/linux.rs, but nothing more);
//! - the Switcher window: `write-switcher-page K` (alias `write-switcher-text` for K = 0),
//!   `read-switcher-host` and `read-switcher-page K`;
//! - interrupt vectors: `int N`, for any N in 0..=255, and the one-byte `int3` and `icebp`;
//! - hypercalls with bad arguments: `hcall-wild-pointer`, `hcall-huge-len`, `hcall-wrap`,
//!   `hcall-unknown`;
//! - iretq frames a guest builds itself: `iretq-cs-rpl0`, `iretq-iopl3`, `iretq-noncanonical`;
//! - a trap with the stack pointer somewhere unmapped: `bad-stack`;
//! - the host's own state, which the Switcher must not leave to the guest or take back from it
//!   wrong (src/hazards.rs): `ldt-call-gate`, `single-step`, `pkru`.

use core::arch::{asm, global_asm};
use core::fmt;
use core::ptr;

use lguest_abi::boot::{GUEST_KERNEL_CS, GUEST_KERNEL_SS};
use lguest_abi::data::LguestData;
use lguest_abi::hcall::{CONSOLE_WRITE, NOP};
use lguest_abi::PAGE_SIZE;

use crate::hcall::{hcall, poweroff};
use crate::{cs, hazards, number, println};

/// What an attack knows: its name and argument, and the Switcher window the host reported.
pub(crate) struct Ctx<'a> {
    name: &'a str,
    arg: Option<&'a str>,
    data: &'a LguestData,
}

impl Ctx<'_> {
    /// The attack did not kill us: report it and leave through the front door.
    pub(crate) fn survived(&self, what: fmt::Arguments) -> ! {
        println!("attack {}: survived ({what})", self.name);
        poweroff("survived")
    }
}

/// An attack: it either kills the guest or reports that it survived.
type Attack = fn(&Ctx) -> !;

/// Every attack, by the name the command line gives it.
const ATTACKS: [(&str, Attack); 29] = [
    ("syscall", syscall),
    ("sysenter", sysenter),
    ("cli", cli),
    ("hlt", hlt),
    ("mov-cr3", mov_cr3),
    ("mov-to-cr4", mov_to_cr4),
    ("lgdt", lgdt),
    ("wrmsr", wrmsr),
    ("ins", port_ins),
    ("outs", port_outs),
    ("swapgs", swapgs),
    ("write-switcher-page", write_switcher_page),
    ("write-switcher-text", |c| write_page(c, 0)),
    ("read-switcher-host", read_switcher_host),
    ("read-switcher-page", read_switcher_page),
    ("int", int_n),
    ("int3", int3),
    ("icebp", icebp),
    ("hcall-wild-pointer", hcall_wild_pointer),
    ("hcall-huge-len", hcall_huge_len),
    ("hcall-wrap", hcall_wrap),
    ("hcall-unknown", hcall_unknown),
    ("iretq-cs-rpl0", iretq_cs_rpl0),
    ("iretq-iopl3", iretq_iopl3),
    ("iretq-noncanonical", iretq_noncanonical),
    ("bad-stack", bad_stack),
    ("ldt-call-gate", hazards::ldt_call_gate),
    ("single-step", hazards::single_step),
    ("pkru", hazards::pkru),
];

/// Runs the attack called `name`; panics (so the guest powers off saying "guest panic") if
/// there is none.
pub fn run(name: &str, arg: Option<&str>, data: &LguestData) -> ! {
    let Some((_, attack)) = ATTACKS.iter().find(|(n, _)| *n == name) else {
        panic!("unknown scenario {name:?}");
    };
    println!("attack: {name}");
    attack(&Ctx { name, arg, data })
}

// ---- Ring-0 instructions ----------------------------------------------------------------------
//
// Each of these faults at CPL 1 (#GP, or #UD for syscall/sysenter with the host's MSR settings),
// and with no IDT of its own the guest's fault is the host's: it must kill the guest. If one ran,
// the guest would own the machine: syscall and sysenter enter ring 0 at an address the host's
// MSRs name, on a stack the guest chose.

fn syscall(c: &Ctx) -> ! {
    // SAFETY: this is the attack; if the host let it through, RCX and R11 are what the CPU
    // overwrites.
    unsafe { asm!("syscall", out("rcx") _, out("r11") _) };
    c.survived(format_args!("syscall returned"))
}

fn sysenter(c: &Ctx) -> ! {
    // SAFETY: as for syscall. sysenter never returns by itself: it jumps to SYSENTER_EIP.
    unsafe { asm!("sysenter", out("rcx") _, out("r11") _) };
    c.survived(format_args!("sysenter returned"))
}

fn cli(c: &Ctx) -> ! {
    // SAFETY: the attack: turning the real interrupt flag off would starve the host.
    unsafe { asm!("cli", "sti") };
    c.survived(format_args!("cli and sti ran at cpl {}", cs() & 3))
}

fn hlt(c: &Ctx) -> ! {
    // SAFETY: the attack: halting the host's CPU.
    unsafe { asm!("hlt") };
    c.survived(format_args!("hlt returned"))
}

/// An empty top-level page table: what the guest asks CR3 to become.
#[repr(C, align(4096))]
struct EmptyTable([u64; 512]);
static EMPTY_TABLE: EmptyTable = EmptyTable([0; 512]);

fn mov_cr3(c: &Ctx) -> ! {
    let table = ptr::addr_of!(EMPTY_TABLE) as u64;
    // SAFETY: the attack: page tables of the guest's choosing, unshadowed, would map anything.
    unsafe { asm!("mov cr3, {}", in(reg) table) };
    c.survived(format_args!("cr3 loaded with {table:#x}"))
}

/// A GDT of the guest's own making, with a ring-0 64-bit code segment (entry 1) and data segment.
static OWN_GDT: [u64; 3] = [0, 0x00af_9a00_0000_ffff, 0x00cf_9200_0000_ffff];

#[repr(C, packed)]
struct DescriptorPointer {
    limit: u16,
    base: u64,
}

fn lgdt(c: &Ctx) -> ! {
    let pointer = DescriptorPointer {
        limit: (core::mem::size_of_val(&OWN_GDT) - 1) as u16,
        base: OWN_GDT.as_ptr() as u64,
    };
    // SAFETY: the attack: with its own GDT the guest could name a ring-0 code segment.
    unsafe { asm!("lgdt [{}]", in(reg) &pointer) };
    c.survived(format_args!(
        "lgdt loaded a GDT at {:#x}",
        OWN_GDT.as_ptr() as u64
    ))
}

/// IA32_LSTAR: where `syscall` enters ring 0.
const MSR_LSTAR: u32 = 0xc000_0082;

fn wrmsr(c: &Ctx) -> ! {
    let target = wrmsr as *const () as u64;
    // SAFETY: the attack: pointing the host's syscall entry at guest code.
    unsafe {
        asm!("wrmsr", in("ecx") MSR_LSTAR, in("eax") target as u32, in("edx") (target >> 32) as u32)
    };
    c.survived(format_args!("wrmsr set LSTAR to {target:#x}"))
}

/// CR4.SMEP: supervisor mode may not run code in user pages.
const CR4_SMEP: u64 = 1 << 20;

fn mov_to_cr4(c: &Ctx) -> ! {
    let cr4: u64;
    // SAFETY: reading CR4 is emulated by the host (src/linux.rs); writing it is the attack:
    // without SMEP, ring 1 could run code in pages its user mode wrote.
    unsafe {
        asm!("mov {0}, cr4", "and {0}, {1}", "mov cr4, {0}", out(reg) cr4, in(reg) !CR4_SMEP)
    };
    c.survived(format_args!("cr4 loaded with {cr4:#x}"))
}

/// COM1, the host's serial console.
const COM1: u16 = 0x3f8;

fn port_ins(c: &Ctx) -> ! {
    let mut buf = [0u8; 1];
    // SAFETY: the attack: a string read from a host device (COM1's line status register) into
    // `buf`, which is ours. The host emulates `in`, never its string form.
    unsafe { asm!("insb", in("dx") COM1 + 5, inout("rdi") buf.as_mut_ptr() => _) };
    c.survived(format_args!(
        "insb from port {:#x} read {:#x}",
        COM1 + 5,
        buf[0]
    ))
}

fn port_outs(c: &Ctx) -> ! {
    let bang = [b'!'];
    // SAFETY: the attack: a string write to a host device (a '!' on the host's serial console).
    unsafe { asm!("outsb", in("dx") COM1, inout("rsi") bang.as_ptr() => _) };
    c.survived(format_args!("outsb to port {COM1:#x} went through"))
}

fn swapgs(c: &Ctx) -> ! {
    // SAFETY: the attack: swapgs exchanges GS base with KERNEL_GS_BASE, a host secret.
    unsafe { asm!("swapgs", "swapgs") };
    c.survived(format_args!("swapgs ran"))
}

// ---- The Switcher window ----------------------------------------------------------------------
//
// The Switcher's pages are mapped in the guest's address space (they must be: the CPU jumps
// there on every trap), and paging cannot tell ring 1 from ring 0: every supervisor page is
// readable at CPL 1, and every writable one writable. The CPU itself writes a few of them while
// the guest runs (the trap frame lands in this CPU's register page), so those must be writable
// and must hold nothing the host trusts; a write to any other page must kill the guest, and no
// readable page may hold a host address.

/// `write-switcher-page K`: fill page K of the window with a pattern, one u64 at a time, so a
/// page that takes the first write takes them all.
fn write_switcher_page(c: &Ctx) -> ! {
    let k = number(c.arg, 0);
    write_page(c, k)
}

/// "lguest!!" in ASCII, easy to spot in a dump.
const PATTERN: u64 = u64::from_le_bytes(*b"lguest!!");

fn write_page(c: &Ctx, k: u64) -> ! {
    let page = c.data.switcher_window_start + k * PAGE_SIZE;
    println!("{}: writing page {k} at {page:#x}", c.name);
    for i in 0..PAGE_SIZE / 8 {
        // SAFETY: the attack: this page is the host's.
        unsafe { ((page + i * 8) as *mut u64).write_volatile(PATTERN) };
    }
    c.survived(format_args!("page {k} at {page:#x} took {PAGE_SIZE} bytes"))
}

/// How far `read-switcher-host` reads before it gives up looking for the window's end.
const READ_PAGES: u64 = 64;

/// Where the host kernel keeps things, from Linux's x86-64 memory map with 4-level paging
/// (Documentation/arch/x86/x86_64/mm.rst): direct map of physical memory, vmalloc/ioremap,
/// vmemmap (struct pages), kernel text and modules. A word in one of these ranges, in a page
/// the guest can read, is a host address the Switcher leaked (a KASLR leak, at least).
pub(crate) const HOST_RANGES: [(u64, u64); 4] = [
    (0xffff_8880_0000_0000, 0xffff_c880_0000_0000),
    (0xffff_c900_0000_0000, 0xffff_e900_0000_0000),
    (0xffff_ea00_0000_0000, 0xffff_eb00_0000_0000),
    (0xffff_ffff_8000_0000, 0xffff_ffff_ff00_0000),
];

/// `read-switcher-host`: read the window page by page, from its start until a read faults,
/// looking for host kernel addresses. What may be readable there is the Switcher's text and
/// tables, which hold only addresses inside the window.
fn read_switcher_host(c: &Ctx) -> ! {
    for k in 0..READ_PAGES {
        read_page(c, k);
    }
    c.survived(format_args!(
        "read {READ_PAGES} pages from {:#x}",
        c.data.switcher_window_start
    ))
}

/// `read-switcher-page K`: the same for page K alone, as a page past an unmapped one cannot be
/// reached by reading from the start.
fn read_switcher_page(c: &Ctx) -> ! {
    let k = number(c.arg, 0);
    read_page(c, k);
    c.survived(format_args!("read page {k}"))
}

/// Reads all of page K of the window, and says where it found host addresses (the tests look
/// for "host address").
fn read_page(c: &Ctx, k: u64) {
    let page = c.data.switcher_window_start + k * PAGE_SIZE;
    println!("{}: reading page {k} at {page:#x}", c.name);
    let mut leaks = 0;
    for i in 0..PAGE_SIZE / 8 {
        // SAFETY: the attack: the read faults unless the host mapped this page.
        let word = unsafe { ((page + i * 8) as *const u64).read_volatile() };
        if HOST_RANGES.iter().any(|&(lo, hi)| (lo..hi).contains(&word)) {
            if leaks == 0 {
                println!("{}: host address {word:#x} at {:#x}", c.name, page + i * 8);
            }
            leaks += 1;
        }
    }
    if leaks > 1 {
        println!("{}: {leaks} host addresses in page {k}", c.name);
    }
}

// ---- Interrupt vectors ------------------------------------------------------------------------

// `int` takes its vector as an immediate, so reaching all 256 from one command line needs 256
// instructions: a table of `int n; ret` entries, 4 bytes apart. The `int` is spelled out as its
// bytes (0xcd, n) because assemblers turn `int 3` into the one-byte `int3`, a different
// instruction (tried on its own below).
global_asm!(
    ".pushsection .text.int_table, \"ax\"",
    ".balign 4",
    ".global ring1_int_table",
    "ring1_int_table:",
    ".set vector, 0",
    ".rept 256",
    ".balign 4",
    ".byte 0xcd, vector",
    "ret",
    ".set vector, vector + 1",
    ".endr",
    ".popsection",
);

extern "C" {
    static ring1_int_table: [u32; 256];
}

/// `int N`: raise vector N from ring 1. Only 0x1f is a hypercall, and RAX holds a number no
/// hypercall has, so every vector must end the guest. The host's IDT gates must not let ring 1
/// in (DPL 0: #GP) or must treat whatever arrives as the guest's fault.
fn int_n(c: &Ctx) -> ! {
    let n = number(c.arg, 0);
    if n > 255 {
        panic!("int: vector {n} is not in 0..=255");
    }
    let entry = ptr::addr_of!(ring1_int_table) as u64 + n * 4;
    // SAFETY: the attack. The entry is `int n; ret`; the call is an ordinary C call as far as
    // the registers go, RAX aside.
    unsafe { asm!("call {}", in(reg) entry, inout("rax") 999u64 => _, clobber_abi("C")) };
    c.survived(format_args!("int {n:#x} returned"))
}

/// `int3`: the one-byte breakpoint, which, like `int n`, may only use a gate whose DPL allows it.
fn int3(c: &Ctx) -> ! {
    // SAFETY: the attack; RAX as for `int n`, in case the host takes this for a hypercall.
    unsafe { asm!("int3", inout("rax") 999u64 => _) };
    c.survived(format_args!("int3 returned"))
}

/// `icebp`: the undocumented one-byte `int1` (0xf1), which raises a debug exception through
/// vector 1 *without* the gate's DPL check: whatever the host's IDT says, ring 1 gets in.
fn icebp(c: &Ctx) -> ! {
    // SAFETY: the attack; see above.
    unsafe { asm!(".byte 0xf1", inout("rax") 999u64 => _) };
    c.survived(format_args!("icebp returned"))
}

// ---- Hypercalls with bad arguments ------------------------------------------------------------
//
// The host reads guest memory on the guest's word: every address and length must be checked
// against guest RAM, overflow included, before a byte is copied.

fn hcall_wild_pointer(c: &Ctx) -> ! {
    let gpa = 1u64 << 40;
    // SAFETY: the attack: a buffer 1 TiB into guest-physical space, far beyond RAM.
    let ret = unsafe { hcall(CONSOLE_WRITE, [gpa, 16, 0, 0, 0]) };
    c.survived(format_args!("CONSOLE_WRITE of {gpa:#x} returned {ret:#x}"))
}

static MESSAGE: [u8; 16] = *b"console message\n";

fn hcall_huge_len(c: &Ctx) -> ! {
    // SAFETY: the attack: a real buffer with a length that covers the whole address space.
    let ret = unsafe { hcall(CONSOLE_WRITE, [MESSAGE.as_ptr() as u64, u64::MAX, 0, 0, 0]) };
    c.survived(format_args!(
        "CONSOLE_WRITE of {} bytes returned {ret:#x}",
        u64::MAX
    ))
}

fn hcall_wrap(c: &Ctx) -> ! {
    // SAFETY: the attack: address + length wraps around to 4, which is inside RAM.
    let ret = unsafe { hcall(CONSOLE_WRITE, [u64::MAX - 3, 8, 0, 0, 0]) };
    c.survived(format_args!("CONSOLE_WRITE that wraps returned {ret:#x}"))
}

fn hcall_unknown(c: &Ctx) -> ! {
    // SAFETY: the attack: a number no hypercall has.
    let ret = unsafe { hcall(999, [0; 5]) };
    c.survived(format_args!("hypercall 999 returned {ret:#x}"))
}

// ---- iretq frames -----------------------------------------------------------------------------
//
// iretq is not privileged: a ring-1 guest can build any frame and return through it. The CPU
// itself refuses a return to a more privileged CS, keeps IOPL at CPL > 0, and faults on a
// non-canonical RIP; the host must survive each fault and must never iretq such a frame itself.

/// iretq through a frame of SS = the guest's, RSP = the current one, then `rflags`, `cs` and
/// `rip`; `rip` = 0 means "the instruction after the iretq".
///
/// # Safety
///
/// The frame decides where and at what privilege execution goes on.
unsafe fn iretq(cs: u64, rflags: u64, rip: u64) {
    // SAFETY: the caller's; the five pushes are undone by the iretq itself.
    unsafe {
        asm!(
            "mov {tmp}, rsp",
            "push {ss}",
            "push {tmp}",
            "push {rflags}",
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "test {rip}, {rip}",
            "cmovnz {tmp}, {rip}",
            "push {tmp}",
            "iretq",
            "2:",
            ss = in(reg) GUEST_KERNEL_SS,
            rflags = in(reg) rflags,
            cs = in(reg) cs,
            rip = in(reg) rip,
            tmp = out(reg) _,
        );
    }
}

fn rflags() -> u64 {
    let flags;
    // SAFETY: pushf and pop read the flags and leave the stack as it was.
    unsafe { asm!("pushfq", "pop {}", out(reg) flags, options(nomem, preserves_flags)) };
    flags
}

const IOPL_MASK: u64 = 3 << 12;

fn iretq_cs_rpl0(c: &Ctx) -> ! {
    // SAFETY: the attack: a return to our own code segment with RPL 0 would be ring 0.
    unsafe { iretq(GUEST_KERNEL_CS & !3, rflags(), 0) };
    c.survived(format_args!(
        "iretq to cs {:#x} landed with cs={:#x}",
        GUEST_KERNEL_CS & !3,
        cs()
    ))
}

fn iretq_iopl3(c: &Ctx) -> ! {
    // SAFETY: the attack: IOPL 3 would make cli, sti, in and out legal at ring 1. The CPU
    // changes IOPL only at CPL 0, so it should come back as it was.
    unsafe { iretq(GUEST_KERNEL_CS, rflags() | IOPL_MASK, 0) };
    let iopl = (rflags() & IOPL_MASK) >> 12;
    println!("iopl={iopl}");
    // And if the flags lie, cli tells the truth.
    // SAFETY: as for the `cli` attack.
    unsafe { asm!("cli", "sti") };
    c.survived(format_args!(
        "cli ran after an iretq with IOPL 3; iopl={iopl}"
    ))
}

fn iretq_noncanonical(c: &Ctx) -> ! {
    let rip = 0x8000_0000_0000;
    // SAFETY: the attack: the first address past the lower canonical half.
    unsafe { iretq(GUEST_KERNEL_CS, rflags(), rip) };
    c.survived(format_args!("iretq to {rip:#x} returned"))
}

// ---- A trap on a bad stack --------------------------------------------------------------------

/// An address nothing maps: the launcher maps only RAM, far below.
const BAD_STACK: u64 = 0x7000_0000_0000;

/// `bad-stack`: a hypercall with RSP pointing at nothing. A trap from ring 1 switches to the
/// host's stack (TSS.RSP0), so the host must take it and come back as usual; only when the
/// guest itself pushes does the unmapped stack fault, and the guest dies.
fn bad_stack(c: &Ctx) -> ! {
    let (ret, rsp): (u64, u64);
    // SAFETY: RSP is put back before the block ends, and nothing uses the stack in between
    // (the `int` pushes onto the host's stack, not ours).
    unsafe {
        asm!(
            "mov r12, rsp",
            "mov rsp, {bad}",
            "int 0x1f",
            "mov r13, rsp",
            "mov rsp, r12",
            bad = in(reg) BAD_STACK,
            inout("rax") NOP => ret,
            out("r12") _,
            out("r13") rsp,
        );
    }
    println!("bad-stack: the hypercall returned {ret:#x} with rsp={rsp:#x}");
    println!("bad-stack: now pushing onto it");
    // SAFETY: the attack: the push must fault. Were the page somehow there, RSP is restored.
    unsafe {
        asm!(
            "mov r12, rsp",
            "mov rsp, {bad}",
            "push rax",
            "pop rax",
            "mov rsp, r12",
            bad = in(reg) BAD_STACK,
            out("r12") _,
        );
    }
    c.survived(format_args!("a push at {BAD_STACK:#x} went through"))
}
