//! Hypercalls: how a guest kernel asks the host for something.
//!
//! A guest kernel runs at ring 1 and may not execute privileged instructions; instead it
//! executes `int $0x1f` ([`VECTOR`]) with the call number in RAX and up to five arguments in RBX,
//! RCX, RDX, RSI and RDI. No call answers in a register: the host carries the call out and
//! resumes the guest after the `int`. A call the host does not know, or one whose arguments are
//! wrong, kills the guest with a reason the launcher prints: a guest has no business guessing.
//!
//! The numbers are lguest's where lguest had the call; calls lguest-rs adds start at 20.
//!
//! ## Traps and interrupts the host delivers
//!
//! Once a guest has installed handlers (LOAD_IDT_ENTRY), an exception it takes, or an interrupt
//! while its virtual interrupt flag is on, is delivered the way the CPU would: the host pushes
//! SS, RSP, RFLAGS, CS, RIP (and the error code for vectors 8, 10-14 and 17) on the guest
//! kernel's stack (the current one if the guest was in its kernel, the SET_STACK one if it was
//! in user mode), 16-byte aligned, and jumps to the handler at ring 1. Two differences, both so
//! that a Linux guest needs few changes (docs/design.md, D11):
//! - the pushed CS and SS show RPL 0 when the trap came from the guest kernel (Linux's
//!   `user_mode()` is `cs & 3`); the guest's return path sets RPL 1 again before its `iretq`;
//! - the pushed RFLAGS.IF is the virtual flag, and an interrupt gate clears the virtual flag.
//!
//! A page fault's address goes to `lguest_data.cr2`.

/// The interrupt vector of a hypercall: `int $0x1f`, as lguest's `LGUEST_TRAP_ENTRY`. Its IDT
/// gate is the only one a ring-1 guest may use with `int`.
pub const VECTOR: u8 = 0x1f;

/// Carry out the queued asynchronous hypercalls (`lguest_data.hcalls`) and nothing else: what
/// every synchronous hypercall does first anyway.
pub const FLUSH_ASYNC: u64 = 0;
/// The two quadwords LOAD_IDT_ENTRY takes (RCX, RDX): a present 64-bit gate to `handler` in
/// code segment `selector`, of `kind` (0xe interrupt gate, 0xf trap gate), reachable with
/// `int n` from rings up to `dpl`, with IST 0 (SDM 3A 6.14.1).
pub const fn idt_gate(handler: u64, selector: u64, kind: u64, dpl: u64) -> [u64; 2] {
    let attributes = 0x80 | (dpl & 3) << 5 | kind;
    let low =
        (handler & 0xffff) | selector << 16 | attributes << 40 | ((handler >> 16) & 0xffff) << 48;
    [low, handler >> 32]
}

/// Register the guest's [`crate::data::LguestData`] page: RBX = its guest-physical address
/// (page-aligned, inside RAM). Must be the first hypercall; the host fills in the fields it owns.
pub const LGUEST_INIT: u64 = 1;
/// Stop the guest: RBX = guest-physical address of a NUL-terminated message (at most
/// [`SHUTDOWN_MESSAGE_MAX`] bytes are read), RCX = [`SHUTDOWN_POWEROFF`], [`SHUTDOWN_RESTART`]
/// or [`SHUTDOWN_CRASH`].
pub const SHUTDOWN: u64 = 2;
/// Switch page tables (the guest's `mov %cr3`): RBX = guest-physical address of the new PML4
/// (page-aligned, in RAM), RCX = flags: 0 or [`NEW_PGTABLE_FLUSH`]; any other bit kills the
/// guest. The host keeps the shadows of the last few page tables by that address, so switching
/// back to a recent one with RCX = 0 costs nothing, and keeps whatever the shadow held, even
/// where the guest has since rewritten its tables without telling the host (SET_PTE,
/// FLUSH_TLB). The kernel half (from PML4 slot 257 up) is one shadow for every page table: what
/// it maps from global entries ([`crate::paging::PTE_GLOBAL`]) survives every switch, as global
/// TLB entries survive a CR3 load; what it maps from other entries goes at a switch to another
/// page table. A guest that frees a page table and later uses its frame for another must flush
/// the old one's mappings first (FLUSH_TLB, or NEW_PGTABLE_FLUSH when it switches to the new
/// one), or the new one inherits its shadow.
pub const NEW_PGTABLE: u64 = 4;
/// NEW_PGTABLE's RCX: the guest flushed, as a Linux CR3 write without CR3_NOFLUSH does. The host
/// keeps of its shadow of the new tables only what the guest's tables, as they are now, still
/// say exactly (and global kernel-half entries), so the guest sees its tables as they are now.
pub const NEW_PGTABLE_FLUSH: u64 = 1 << 0;
/// Forget cached translations (the guest's TLB flush): RBX = 0 for the current page tables but
/// global kernel-half entries (a CR3 reload: as for NEW_PGTABLE_FLUSH, what the tables still say
/// exactly may stay), 1 for everything (a global flush). Needed after changing anything above the last level of a page table.
pub const FLUSH_TLB: u64 = 5;
/// A page-table entry changed (the guest has already written it): RBX = the virtual address it
/// maps; the host drops its shadow of that 4 KiB page from every page table it keeps. A change
/// to an entry that maps more (a 2 MiB page, a table) needs FLUSH_TLB.
pub const SET_PTE: u64 = 14;
/// Install the guest's handler for one vector: RBX = vector, RCX and RDX = the low and high
/// quadwords of a 64-bit IDT gate (offset, selector [`crate::boot::GUEST_KERNEL_CS`], type
/// 0xE interrupt gate or 0xF trap gate, DPL, present; IST 0). A gate of any other shape, or to
/// any other selector, kills the guest. A gate whose P bit is clear removes the handler. The
/// gate's DPL matters as on hardware: `int n` (and `int3`) reach the handler only from rings at
/// or below it, so a gate for int3, or for a system call from user mode, needs DPL 3.
pub const LOAD_IDT_ENTRY: u64 = 6;
/// The guest kernel's stack for traps and interrupts that arrive while the guest is in user
/// mode (its TSS.RSP0): RBX = the stack's top (guest-virtual, canonical).
pub const SET_STACK: u64 = 7;
/// Arm the one-shot timer: RBX = nanoseconds from now (0 disarms it). When it fires, IRQ
/// [`TIMER_IRQ`] becomes pending.
pub const SET_CLOCKEVENT: u64 = 9;
/// Set one of the guest's thread-local-storage segments (Linux's TLS entries): RBX = GDT index
/// ([`crate::boot::GUEST_TLS_ENTRIES`]), RCX = the 8-byte code or data descriptor. The host
/// sanitises before it loads it (DPL 0 becomes 1, the accessed bit is set) and refuses what a
/// guest may not have: a system descriptor or gate, a 64-bit (L) segment, another index.
pub const LOAD_GDT_ENTRY: u64 = 18;
/// Sleep until an interrupt the guest can take is pending (not masked, with a handler), or the
/// launcher gets a signal. The guest turns its virtual interrupt flag on first: with it off, the
/// guest wakes for the interrupt but is not given it.
pub const HALT: u64 = 10;
/// Deliver pending interrupts now: made after turning the virtual interrupt flag back on when
/// `irq_pending` was set.
pub const SEND_INTERRUPTS: u64 = 19;
/// Write early console output: RBX = guest-physical address, RCX = length (at most
/// [`CONSOLE_WRITE_MAX`]). The bytes go to the launcher, which prints them.
pub const CONSOLE_WRITE: u64 = 20;
/// Do nothing: the cheapest round trip through the host, for measuring the world switch.
pub const NOP: u64 = 21;

/// The IRQ the timer raises.
pub const TIMER_IRQ: u32 = 0;
/// IRQ n arrives at the guest as vector `FIRST_IRQ_VECTOR + n`, as on a PC.
pub const FIRST_IRQ_VECTOR: u64 = 32;
/// How many IRQs a guest has (a bit each in `blocked_interrupts`).
pub const IRQS: u32 = 64;

/// SHUTDOWN's RCX: power off; the launcher exits with status 0.
pub const SHUTDOWN_POWEROFF: u64 = 0;
/// SHUTDOWN's RCX: restart; the launcher starts the guest afresh.
pub const SHUTDOWN_RESTART: u64 = 1;
/// SHUTDOWN's RCX: the guest crashed (a Linux guest's kernel panic); its message says why. The
/// launcher reports it as it reports a guest the host killed, with that message.
pub const SHUTDOWN_CRASH: u64 = 2;

/// The longest SHUTDOWN message the host reads, NUL included.
pub const SHUTDOWN_MESSAGE_MAX: usize = 128;
/// The most bytes one CONSOLE_WRITE may carry.
pub const CONSOLE_WRITE_MAX: usize = 1024;
