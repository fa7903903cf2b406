//! The lguest backend: hypercalls and the shared `lguest_data` page.
//!
//! A kernel at ring 1 under lg.ko asks the host for what it may not do itself with `int $0x1f`
//! (lguest-abi's `hcall` module), and shares one page of its memory with the host (`data`
//! module). The page is what makes the common operations cheap: turning interrupts off or on is
//! a store to `irq_enabled`, no world switch at all; only when an interrupt came while they
//! were off (the host then sets `irq_pending`) does turning them back on cost a hypercall.
//!
//! Everything here follows Linux's arch/x86/lguest/boot.c, which did the same for 32-bit lguest
//! guests; the differences are lguest-rs's ABI, spelt out where they matter.

use core::arch::{asm, global_asm, x86_64::__cpuid_count};
use core::cell::UnsafeCell;
use core::mem::{offset_of, size_of};
use core::sync::atomic::{compiler_fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};

use lguest_abi::data::{
    AsyncHcall, LguestData, ASYNC_HCALLS, HCALL_DONE, HCALL_PENDING, IRQ_ENABLED,
};
use lguest_abi::hcall::{
    CONSOLE_WRITE, CONSOLE_WRITE_MAX, FLUSH_ASYNC, FLUSH_TLB, HALT, LGUEST_INIT, LOAD_IDT_ENTRY,
    NEW_PGTABLE, NOP, SEND_INTERRUPTS, SET_CLOCKEVENT, SET_PTE, SET_STACK, SHUTDOWN,
    SHUTDOWN_MESSAGE_MAX, SHUTDOWN_POWEROFF, TIMER_IRQ,
};

use crate::console::ConsoleOps;
use crate::cpu::{CpuOps, Cpuid, Gate, Idt};
use crate::irq::IrqOps;
use crate::mmu::MmuOps;
use crate::platform::PlatformOps;
use crate::time::TimeOps;
use crate::{Backend, PvInfo, PvOps};

/// The lguest table: what [`crate::init`] installs for [`Backend::Lguest`], as Linux's
/// `lguest_init` overwrote `pv_ops` member by member.
pub const OPS: PvOps = PvOps {
    info: PvInfo {
        name: "lguest",
        backend: Backend::Lguest,
        kernel_rpl: 1,
    },
    cpu: CpuOps {
        write_idt_entry,
        load_idt,
        load_sp0,
        syscall_init,
        cpuid,
        iret: lguest_iret,
    },
    irq: IrqOps {
        save_fl,
        restore_fl,
        irq_disable,
        irq_enable,
        safe_halt,
        unmask_irq,
    },
    mmu: MmuOps {
        read_cr2,
        write_cr3,
        flush_tlb_one_user,
        flush_tlb_user,
        enter_lazy_mmu_mode,
        leave_lazy_mmu_mode,
    },
    time: TimeOps {
        tsc_khz,
        set_next_event,
    },
    console: ConsoleOps { write },
    platform: PlatformOps { eoi, power_off },
};

/// LGUEST_INIT, then the fields the guest owns: the no-interrupt window of `lguest_iret`, and
/// every IRQ line but the timer's blocked, as the native backend masks the PIC, until a driver
/// opens its own with `unmask_irq`. (The host writes only its own fields at LGUEST_INIT, so the
/// order does not matter.)
pub(crate) fn init() {
    // SAFETY: the page is ours, page-aligned and one page long, as LGUEST_INIT requires; the
    // host writes only inside it.
    unsafe { hcall(LGUEST_INIT, [LGUEST_DATA.0.get() as u64, 0, 0, 0, 0]) };
    extern "C" {
        static lguest_noirq_start: u8;
        static lguest_noirq_end: u8;
    }
    set(
        offset_of!(LguestData, noirq_iret_start),
        (&raw const lguest_noirq_start) as u64,
    );
    set(
        offset_of!(LguestData, noirq_iret_end),
        (&raw const lguest_noirq_end) as u64,
    );
    set(BLOCKED_INTERRUPTS_AT, !(1 << TIMER_IRQ));
    if tsc_khz() == 0 {
        panic!("lguest: the host left lguest_data.tsc_khz at 0: no clock");
    }
}

// ---- Hypercalls and the shared page -----------------------------------------------------------

/// Makes hypercall `nr` with arguments `args` (RBX, RCX, RDX, RSI, RDI) and returns RAX.
///
/// # Safety
///
/// The host reads and writes guest memory as the call says (CONSOLE_WRITE reads a buffer,
/// LGUEST_INIT writes a page, SET_STACK takes a stack): the caller answers for the addresses.
pub unsafe fn hcall(nr: u64, args: [u64; 5]) -> u64 {
    count(&MADE, nr);
    let ret;
    // SAFETY: the caller vouches for the call. LLVM keeps RBX for itself and will not hand it
    // out as an operand, so the first argument is swapped into it around the `int` and back.
    // Not `nomem`: the host may write guest memory, and may deliver an interrupt whose handler
    // does, before the `int` returns.
    unsafe {
        asm!(
            "xchg {a1}, rbx",
            "int 0x1f",
            "xchg {a1}, rbx",
            a1 = inout(reg) args[0] => _,
            inout("rax") nr => ret,
            in("rcx") args[1],
            in("rdx") args[2],
            in("rsi") args[3],
            in("rdi") args[4],
        );
    }
    ret
}

/// The NOP hypercall: into the host and straight back, the cheapest world switch there is. Not
/// an op (a kernel never needs it); a kernel's benchmarks time it against the native floor of a
/// switch. Only under lguest: natively there is no host to answer `int $0x1f`.
pub fn null_hypercall() {
    // SAFETY: NOP touches no guest memory.
    unsafe { hcall(NOP, [0; 5]) };
}

// ---- What this kernel asked of the host -------------------------------------------------------
//
// The host counts every exit it handles, hypercalls by number among them (lg.ko's exit
// statistics: `lguest-launcher --stats`, `lguest-stat`). The guest counts its own side here, so a
// kernel can print what it asked for and a test can hold the host's figures against it.

/// How many hypercalls of each number this kernel made (`int $0x1f`: `hcall`, and the one in
/// `lguest_iret`), below 32, as the host's buckets go.
static MADE: [AtomicU64; HCALL_NUMBERS] = [const { AtomicU64::new(0) }; HCALL_NUMBERS];
/// How many of each it queued in the asynchronous ring instead.
static QUEUED: [AtomicU64; HCALL_NUMBERS] = [const { AtomicU64::new(0) }; HCALL_NUMBERS];
/// Hypercall numbers counted: the ABI's are all below.
pub const HCALL_NUMBERS: usize = 32;

fn count(counters: &[AtomicU64; HCALL_NUMBERS], nr: u64) {
    if let Some(counter) = counters.get(nr as usize) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// How many hypercalls number `nr` this kernel has made so far, each a trip to the host.
pub fn hypercalls_made(nr: u64) -> u64 {
    MADE.get(nr as usize)
        .map_or(0, |c| c.load(Ordering::Relaxed))
}

/// How many calls number `nr` this kernel has queued in the asynchronous ring so far.
pub fn hypercalls_queued(nr: u64) -> u64 {
    QUEUED
        .get(nr as usize)
        .map_or(0, |c| c.load(Ordering::Relaxed))
}

/// The page shared with the host. A whole page: the host is told its address and may write
/// anywhere in it. `repr(C)` puts the structure at the page's start, where `lguest_iret` finds
/// `irq_enabled` by symbol and offset.
#[repr(C, align(4096))]
struct DataPage(UnsafeCell<LguestData>);

// SAFETY: one CPU. The host writes its fields while the guest is not running; the guest's
// interrupt handlers and its other code take turns on the same CPU; every access is volatile
// (below), so none is cached or torn (8-byte aligned words).
unsafe impl Sync for DataPage {}

static LGUEST_DATA: DataPage = DataPage(UnsafeCell::new(
    // SAFETY: LguestData is integers all the way down, for which zero is a valid value; zeroed
    // rather than spelt out, so that fields the ABI adds start at 0 too (the asynchronous ring
    // starts empty: every slot HCALL_DONE).
    unsafe { core::mem::zeroed() },
));

/// Where the `lguest_data` field at byte `offset` (an `offset_of!(LguestData, ...)`) is.
fn field<T>(offset: usize) -> *mut T {
    LGUEST_DATA
        .0
        .get()
        .cast::<u8>()
        .wrapping_add(offset)
        .cast::<T>()
}

/// Reads the `lguest_data` word at byte `offset`. Volatile: the host writes it behind the
/// compiler's back.
fn get(offset: usize) -> u64 {
    // SAFETY: `offset` names a u64 field inside the page, which lives forever (see DataPage).
    unsafe { field::<u64>(offset).read_volatile() }
}

/// Writes the `lguest_data` word at byte `offset`.
fn set(offset: usize, value: u64) {
    // SAFETY: as for `get`.
    unsafe { field::<u64>(offset).write_volatile(value) }
}

// ---- irq: the virtual interrupt flag ----------------------------------------------------------

const IRQ_ENABLED_AT: usize = offset_of!(LguestData, irq_enabled);

fn save_fl() -> u64 {
    get(IRQ_ENABLED_AT)
}

/// Stores the flag; if that turned interrupts on and the host has one waiting, asks for it now
/// with SEND_INTERRUPTS (else it would wait for the next exit: lguest measured TCP 7x slower
/// without this). An interrupt the host delivers between the store and the check is fine: the
/// flag is on, and a SEND_INTERRUPTS with nothing left to send costs a round trip, no more.
fn restore_fl(flags: u64) {
    // The fences keep the compiler from moving memory accesses across the change, as the
    // native `cli`/`sti` asm (a compiler barrier) does.
    compiler_fence(Ordering::SeqCst);
    set(IRQ_ENABLED_AT, flags & IRQ_ENABLED);
    if flags & IRQ_ENABLED != 0 && get(offset_of!(LguestData, irq_pending)) != 0 {
        // SAFETY: SEND_INTERRUPTS touches no guest memory (the handler it may run is ours).
        unsafe { hcall(SEND_INTERRUPTS, [0; 5]) };
    }
    compiler_fence(Ordering::SeqCst);
}

fn irq_disable() {
    restore_fl(0);
}

fn irq_enable() {
    restore_fl(IRQ_ENABLED);
}

/// The flag on, then HALT: the host sleeps only while no interrupt is pending, and delivers the
/// one that wakes it on the way back, so nothing is slept through. (SEND_INTERRUPTS is not
/// made first: that would take the waiting interrupt now and then sleep until the next one.)
fn safe_halt() {
    compiler_fence(Ordering::SeqCst);
    set(IRQ_ENABLED_AT, IRQ_ENABLED);
    // SAFETY: HALT touches no guest memory.
    unsafe { hcall(HALT, [0; 5]) };
    compiler_fence(Ordering::SeqCst);
}

const BLOCKED_INTERRUPTS_AT: usize = offset_of!(LguestData, blocked_interrupts);

/// Clears the line's bit in `blocked_interrupts`: Linux's `enable_lguest_irq`. The host reads
/// the mask before it delivers anything, so an interrupt already pending on the line comes at
/// the next exit (a HALT, or the next hypercall) once the flag allows.
fn unmask_irq(irq: u32) {
    set(
        BLOCKED_INTERRUPTS_AT,
        get(BLOCKED_INTERRUPTS_AT) & !(1u64 << irq),
    );
}

// ---- cpu --------------------------------------------------------------------------------------

/// Keeps the gate in the guest's own table too (it is the guest's record of its handlers), and
/// tells the host, which checks it and keeps it in the guest's virtual IDT.
fn write_idt_entry(idt: &'static Idt, vector: u8, gate: Gate) {
    idt.store(vector, gate);
    // SAFETY: LOAD_IDT_ENTRY reads only its register arguments.
    unsafe {
        hcall(
            LOAD_IDT_ENTRY,
            [u64::from(vector), gate.low, gate.high, 0, 0],
        )
    };
}

/// Nothing to do: the host got every entry from `write_idt_entry`, and the real IDT is the
/// Switcher's. (lguest's `lguest_load_idt` sent every entry here instead, because Linux fills
/// its table before it loads it; this crate's callers write entries through the op.)
fn load_idt(_idt: &'static Idt) {}

fn load_sp0(sp0: u64) {
    // SAFETY: SET_STACK records the address; the host writes trap frames below it only when a
    // trap comes from user mode, onto the stack the caller set aside for exactly that.
    unsafe { hcall(SET_STACK, [sp0, 0, 0, 0, 0]) };
}

/// The host turns `syscall` in guest user mode (an invalid opcode while the guest runs: the
/// host keeps EFER.SCE off) into `int vector`; the entry point is for native kernels.
fn syscall_init(_entry: unsafe extern "C" fn(), vector: u8) {
    set(offset_of!(LguestData, syscall_vec), u64::from(vector));
}

/// `cpuid` works at ring 1 (the host does not make it fault), so the guest filters it itself,
/// as lguest did: leaf 1 stops advertising what a ring-1 kernel cannot use (features reached
/// through MSRs or CR4, MONITOR/MWAIT, VMX/SMX, the local APIC's modes) and says "hypervisor".
fn cpuid(leaf: u32, subleaf: u32) -> Cpuid {
    let r = __cpuid_count(leaf, subleaf);
    let mut out = Cpuid {
        eax: r.eax,
        ebx: r.ebx,
        ecx: r.ecx,
        edx: r.edx,
    };
    if leaf == 1 {
        // ECX: MONITOR 3, VMX 5, SMX 6, EST 7, TM2 8, PDCM 15, x2APIC 21, TSC-deadline 24.
        out.ecx &= !(1 << 3 | 1 << 5 | 1 << 6 | 1 << 7 | 1 << 8 | 1 << 15 | 1 << 21 | 1 << 24);
        out.ecx |= 1 << 31; // hypervisor present
                            // EDX: MCE 7, APIC 9, MTRR 12, MCA 14, ACPI 22, TM 29.
        out.edx &= !(1 << 7 | 1 << 9 | 1 << 12 | 1 << 14 | 1 << 22 | 1 << 29);
    }
    out
}

extern "C" {
    /// The lguest return from a trap, in the `global_asm!` below.
    fn lguest_iret();
}

// The lguest return from a trap. The host's frame differs from the CPU's in two ways (lguest-abi,
// `hcall` module docs): a trap from the guest kernel shows CS and SS with RPL 0, and RFLAGS.IF is
// the virtual flag. So: put RPL 1 back (iretq to ring 1 needs it), then restore the virtual flag
// from the frame and iretq. Between that store and the iretq an interrupt must not come: it
// would push a second frame on this stack, and the flag would be on while this handler still
// runs. The host promises not to deliver while RIP is in [lguest_noirq_start, lguest_noirq_end),
// which init() tells it. The real IF is always on at ring 1 (iretq at CPL 1 cannot change it),
// so the frame's IF bit changes nothing in hardware.
//
// One more step comes first. An interrupt that fell due while the handler ran (with the flag
// off) is waiting, and the host has said so in `irq_pending`. Natively the CPU would take it
// right after an `iretq` that turns IF back on. Here nothing would: `iretq` to the frame does
// not exit to the host, and a task computing at ring 3 may not exit again until the host's own
// tick, milliseconds later (a 1 ms guest tick loses most of its ticks that way, whenever the
// tasks spend time in system calls). So when the frame turns interrupts back on and one is
// pending, the flag goes on and SEND_INTERRUPTS takes the interrupt now, on this stack, below
// the frame, as if it had come just before the `iretq` (Xen's `iret` hypercall does the same
// for a PV guest's pending events). Its handler returns here with the flag on, and this return
// goes on. Only RAX is the hypercall's to change, and it is saved. The call is counted in MADE
// as `hcall` counts its own: one `inc`, which no interrupt can split on this one CPU.
global_asm!(
    r#"
    .text
    .global lguest_iret, lguest_noirq_start, lguest_noirq_end
lguest_iret:
    test byte ptr [rsp + 8], 3          // CS RPL 0: a trap from the guest kernel
    jnz 1f
    or qword ptr [rsp + 8], 1           // CS: ring 1
    or qword ptr [rsp + 32], 1          // SS: ring 1 (or the null selector 0x0001)
1:
    push rax
    mov rax, [rsp + 24]                 // the frame's RFLAGS, one push further up
    and eax, {if_bit}
    jz 2f                               // the frame keeps interrupts off
    cmp qword ptr [rip + {data} + {irq_pending}], 0
    je 2f
    mov [rip + {data} + {irq_enabled}], rax
    inc qword ptr [rip + {made} + {send_interrupts} * 8]
    mov eax, {send_interrupts}
    int {hcall_vector}
    mov eax, {if_bit}
2:
lguest_noirq_start:
    mov [rip + {data} + {irq_enabled}], rax
    pop rax
    iretq
lguest_noirq_end:
    "#,
    if_bit = const IRQ_ENABLED,
    data = sym LGUEST_DATA,
    made = sym MADE,
    irq_enabled = const IRQ_ENABLED_AT,
    irq_pending = const offset_of!(LguestData, irq_pending),
    send_interrupts = const SEND_INTERRUPTS,
    hcall_vector = const lguest_abi::hcall::VECTOR,
);

// ---- mmu --------------------------------------------------------------------------------------

fn read_cr2() -> u64 {
    get(offset_of!(LguestData, cr2))
}

/// NEW_PGTABLE, always at once: the kernel's next access goes through the new tables. (A
/// batch queued before it is carried out first, like before any synchronous hypercall.)
///
/// # Safety
///
/// See [`MmuOps::write_cr3`]. `root` is taken as guest-physical (see the crate docs).
unsafe fn write_cr3(root: u64) {
    // RCX 0, not NEW_PGTABLE_FLUSH: the host may keep its shadow of these tables. This kernel
    // tells it of every change it makes (SET_PTE, FLUSH_TLB), so a kept shadow is never stale.
    // SAFETY: the host only reads the tables at `root`, which the caller vouches for.
    unsafe { hcall(NEW_PGTABLE, [root, 0, 0, 0, 0]) };
}

/// SET_PTE: the guest has written the entry; the host drops its shadow of the page (lguest's
/// `lguest_flush_tlb_single` made the same call).
fn flush_tlb_one_user(va: u64) {
    lazy_hcall(SET_PTE, [va, 0, 0, 0, 0]);
}

/// FLUSH_TLB 0: the host forgets its shadow of the current page tables.
fn flush_tlb_user() {
    lazy_hcall(FLUSH_TLB, [0; 5]);
}

// ---- Lazy mode: the asynchronous hypercall ring -----------------------------------------------
//
// lguest_data holds a ring of ASYNC_HCALLS slots. The guest fills slot `NEXT_SLOT` and then marks
// it HCALL_PENDING; the host, before every synchronous hypercall, carries out the pending slots
// in ring order from where it last stopped and marks each HCALL_DONE. So a batch costs one
// world switch, at the leave, instead of one per call (lguest's `async_hcall`).

/// Whether flushes are being batched.
static LAZY: AtomicBool = AtomicBool::new(false);
/// The slot the next queued call goes in: the host reads the ring in the same order.
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

fn enter_lazy_mmu_mode() {
    LAZY.store(true, Ordering::Relaxed);
}

/// FLUSH_ASYNC if anything is still queued: the host carries out the batch before it returns.
fn leave_lazy_mmu_mode() {
    LAZY.store(false, Ordering::Relaxed);
    if pending_async_hcalls() > 0 {
        // SAFETY: FLUSH_ASYNC carries out calls this backend queued, nothing else.
        unsafe { hcall(FLUSH_ASYNC, [0; 5]) };
    }
}

/// Makes page-table hypercall `nr` now, or queues it in lazy mode.
fn lazy_hcall(nr: u64, args: [u64; 5]) {
    if !LAZY.load(Ordering::Relaxed) {
        // SAFETY: the page-table calls that come here (SET_PTE, FLUSH_TLB) only make the host
        // forget shadow entries.
        unsafe { hcall(nr, args) };
        return;
    }
    let slot = NEXT_SLOT.load(Ordering::Relaxed);
    if status(slot) != HCALL_DONE {
        // The ring is full of calls the host has not seen: a synchronous call makes it carry
        // them out first, then this one, which keeps the order.
        // SAFETY: as above.
        unsafe { hcall(nr, args) };
        return;
    }
    let at = offset_of!(LguestData, hcalls) + slot * size_of::<AsyncHcall>();
    set(at + offset_of!(AsyncHcall, nr), nr);
    for (i, &arg) in args.iter().enumerate() {
        set(at + offset_of!(AsyncHcall, args) + 8 * i, arg);
    }
    // Marked pending only once complete. Volatile stores keep their order, and the host reads
    // the ring only while the guest is stopped, so program order is all the ordering it takes.
    set_status(slot, HCALL_PENDING);
    NEXT_SLOT.store((slot + 1) % ASYNC_HCALLS, Ordering::Relaxed);
    count(&QUEUED, nr);
}

fn status(slot: usize) -> u8 {
    // SAFETY: slot < ASYNC_HCALLS, a byte of the status array in the page; volatile, as the
    // host writes it.
    unsafe { field::<u8>(offset_of!(LguestData, hcall_status) + slot).read_volatile() }
}

fn set_status(slot: usize, value: u8) {
    // SAFETY: as in `status`.
    unsafe { field::<u8>(offset_of!(LguestData, hcall_status) + slot).write_volatile(value) }
}

/// How many queued calls the host has not carried out yet (a kernel's self-tests look). Only
/// under lguest: natively the ring was never set up.
pub fn pending_async_hcalls() -> usize {
    (0..ASYNC_HCALLS)
        .filter(|&slot| status(slot) == HCALL_PENDING)
        .count()
}

// ---- time -------------------------------------------------------------------------------------

fn tsc_khz() -> u64 {
    get(offset_of!(LguestData, tsc_khz))
}

fn set_next_event(ns: u64) {
    // SAFETY: SET_CLOCKEVENT reads only its register argument.
    unsafe { hcall(SET_CLOCKEVENT, [ns, 0, 0, 0, 0]) };
}

// ---- console and platform ---------------------------------------------------------------------

/// CONSOLE_WRITE, in pieces the host accepts. The buffer's address is passed as guest-physical:
/// the kernels using this crate run on an identity map (see the crate docs).
fn write(bytes: &[u8]) {
    for piece in bytes.chunks(CONSOLE_WRITE_MAX) {
        // SAFETY: the host reads `piece`, which is ours.
        unsafe {
            hcall(
                CONSOLE_WRITE,
                [piece.as_ptr() as u64, piece.len() as u64, 0, 0, 0],
            )
        };
    }
}

/// The host needs no end-of-interrupt: it delivers the next one when the flag allows.
fn eoi(_irq: u32) {}

/// SHUTDOWN with "power off". The host has no failure status to pass on, so `message` says it.
fn power_off(message: &str, _failed: bool) -> ! {
    let mut buf = [0u8; SHUTDOWN_MESSAGE_MAX];
    let len = message.len().min(SHUTDOWN_MESSAGE_MAX - 1);
    buf[..len].copy_from_slice(&message.as_bytes()[..len]);
    // SAFETY: the host reads the NUL-terminated `buf`, which is ours; the call does not return.
    unsafe { hcall(SHUTDOWN, [buf.as_ptr() as u64, SHUTDOWN_POWEROFF, 0, 0, 0]) };
    // A host that let us go on has broken the ABI; all we can do is wait.
    loop {
        // SAFETY: HALT touches no guest memory.
        unsafe { hcall(HALT, [0; 5]) };
    }
}
