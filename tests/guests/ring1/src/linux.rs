//! What a Linux kernel at ring 1 does without a paravirt hook, and the host must carry out.
//!
//! Linux reads CR4, sets XCR0 and probes legacy ports with the real instructions, each a #GP at
//! ring 1 that the host emulates (lguest-abi's `privileged` module). The scenarios run them as
//! Linux would and check what comes back; the `xsetbv-*` attacks give values the host must
//! refuse, each killing the guest. (`mov-to-cr4`, `ins` and `outs`, which stay forbidden, are in
//! attacks.rs with the other ring-0 instructions.) And Linux's kernel reads and writes user
//! pages (copy_to_user) without `stac`, which ring 1 cannot execute: the host runs it with SMAP
//! off, but SMEP on. And its CR3 writes flush, unless it says they need not: NEW_PGTABLE's
//! NEW_PGTABLE_FLUSH. And it wants to know the date: lguest_data's `wallclock_ns`.
//!
//! Scenarios: `cr4`, `xsetbv`, `ports`, `user-page`, `pgtable-flush`, `wallclock`; attacks
//! `xsetbv-xcr1`, `xsetbv-no-sse`, `xsetbv-beyond-host`, `smep`, `pgtable-bad-flag`.

use core::arch::asm;
use core::arch::x86_64::__cpuid;
use core::ptr;

use lguest_abi::data::LguestData;
use lguest_abi::hcall::{NEW_PGTABLE, NEW_PGTABLE_FLUSH};
use lguest_abi::privileged::{
    CR4_OSFXSR, CR4_OSXMMEXCPT, CR4_OSXSAVE, CR4_PAE, VIRTUAL_CR4_MASK, XCR0_SSE, XCR0_X87,
};

use crate::hcall::{hcall, poweroff};
use crate::page_tables::{load_own_tables, ram_identity_tables, Table, HUGE, HUGE_PAGE, P, U, W};
use crate::println;

/// CPUID.1:ECX.OSXSAVE: CR4.OSXSAVE as the CPU shows it to every ring.
fn cpuid_osxsave() -> bool {
    __cpuid(1).ecx & (1 << 27) != 0
}

/// `cr4`: `mov %cr4` into RAX and into R13 (a REX prefix), as Linux's `__read_cr4`. Both must
/// give the same value, with what long mode always has, nothing outside the ABI's mask, and
/// OSXSAVE as CPUID tells it; the test compares the printed value with the host's.
pub fn cr4() -> ! {
    let (rax, r13): (u64, u64);
    // SAFETY: reads CR4 (emulated by the host) into two registers; nothing else changes.
    unsafe { asm!("mov rax, cr4", "mov r13, cr4", out("rax") rax, out("r13") r13) };
    let always = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    let osxsave = rax & CR4_OSXSAVE != 0;
    if rax != r13 || rax & always != always || rax & !VIRTUAL_CR4_MASK != 0 {
        panic!("cr4: rax {rax:#x}, r13 {r13:#x} (mask {VIRTUAL_CR4_MASK:#x})");
    }
    if osxsave != cpuid_osxsave() {
        panic!("cr4: {rax:#x} says OSXSAVE {osxsave}, CPUID says the opposite");
    }
    println!("cr4: {rax:#x} in rax and r13");
    poweroff("cr4 done")
}

fn xgetbv() -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: xgetbv of XCR0 only reads it; callers checked OSXSAVE.
    unsafe { asm!("xgetbv", in("ecx") 0, out("eax") low, out("edx") high, options(nomem)) };
    u64::from(high) << 32 | u64::from(low)
}

/// `xsetbv` of `value` to XCR `index`.
fn xsetbv(index: u32, value: u64) {
    // SAFETY: the host emulates it (or kills us); it changes no memory.
    unsafe {
        asm!("xsetbv", in("ecx") index, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nomem))
    };
}

/// XCR0 as the host has it, after a check that XSAVE is on at all.
fn host_xcr0() -> u64 {
    if !cpuid_osxsave() {
        panic!("xsetbv: the host has XSAVE off (the test VM, QEMU -cpu max, has it on)");
    }
    xgetbv()
}

/// `xsetbv`: Linux's FPU set-up writes XCR0 with the features it wants: the host's own value
/// and x87|SSE alone are accepted and skipped, and XCR0 stays the host's.
pub fn xsetbv_accepted() -> ! {
    let host = host_xcr0();
    xsetbv(0, host);
    xsetbv(0, XCR0_X87 | XCR0_SSE);
    let after = xgetbv();
    if after != host {
        panic!("xsetbv: XCR0 was {host:#x} and is {after:#x}");
    }
    println!("xsetbv: {host:#x} and 0x3 accepted, XCR0 still {after:#x}");
    poweroff("xsetbv done")
}

/// `xsetbv-*`: values the host must refuse, each killing the guest.
/// - `xsetbv-xcr1`: ECX = 1 (only XCR0 is there to set);
/// - `xsetbv-no-sse`: x87 alone;
/// - `xsetbv-beyond-host`: the host's XCR0 and the lowest feature it has not enabled.
pub fn xsetbv_refused(name: &str) -> ! {
    let host = host_xcr0();
    let (index, value) = match name {
        "xsetbv-xcr1" => (1, XCR0_X87 | XCR0_SSE),
        "xsetbv-no-sse" => (0, XCR0_X87),
        "xsetbv-beyond-host" => (0, host | 1 << (!host).trailing_zeros()),
        _ => panic!("unknown scenario {name:?}"),
    };
    println!("attack: {name}");
    xsetbv(index, value);
    println!("attack {name}: survived (xsetbv of {value:#x} to XCR{index})");
    poweroff("bad xsetbv taken")
}

/// What RAX holds before each `in`, so that what the host leaves of it shows.
const BEFORE: u64 = 0x1122_3344_5566_7788;

/// `ports`: every form of `in` and `out` Linux's legacy drivers use, on the ports they probe
/// (PIT 0x40, the speaker's 0x61, RTC 0x71, the delay port 0x80, COM1 0x3f8): `in` reads all
/// ones at its width (AL and AX keep the rest of RAX, EAX zero-extends), `out` does nothing.
pub fn ports() -> ! {
    let mut got = [BEFORE; 5];
    // SAFETY: port I/O, emulated by the host; each touches only RAX (and reads DX).
    unsafe {
        asm!("in al, dx", in("dx") 0x61u16, inout("rax") got[0]);
        asm!("in al, 0x71", inout("rax") got[1]);
        asm!("in ax, dx", in("dx") 0x3f8u16, inout("rax") got[2]);
        asm!("in eax, dx", in("dx") 0x3f8u16, inout("rax") got[3]);
        asm!("in eax, 0x40", inout("rax") got[4]);
    }
    let expected = [
        BEFORE | 0xff,
        BEFORE | 0xff,
        BEFORE | 0xffff,
        0xffff_ffff,
        0xffff_ffff,
    ];
    if got != expected {
        panic!("ports: in gave {got:#x?}, expected {expected:#x?}");
    }
    let mut rax = BEFORE;
    // SAFETY: as above; out changes no register.
    unsafe {
        asm!("out dx, al", in("dx") 0x3f8u16, inout("rax") rax);
        asm!("out 0x80, al", inout("rax") rax);
        asm!("out dx, ax", in("dx") 0x43u16, inout("rax") rax);
        asm!("out dx, eax", in("dx") 0x43u16, inout("rax") rax);
        asm!("out 0x43, eax", inout("rax") rax);
    }
    if rax != BEFORE {
        panic!("ports: out changed rax to {rax:#x}");
    }
    println!("ports: in read 0xff, 0xffff and 0xffffffff, keeping the rest of rax; out ignored");
    poweroff("ports done")
}

/// Where `user-page` and `smep` map a 2 MiB user page, and the RAM behind it (unused by this
/// guest, whose image and stacks lie in the first few MiB).
const USER_PAGE_VA: u64 = 48 * HUGE_PAGE;
const USER_PAGE_GPA: u64 = 24 * HUGE_PAGE;
/// RFLAGS.AC, which would let ring 1 past SMAP.
const RFLAGS_AC: u64 = 1 << 18;

/// Switches to the guest's own tables with a user page at USER_PAGE_VA, and AC clear.
fn map_user_page() {
    // SAFETY: single CPU; the tables are ours (ram_identity_tables).
    let (pd, _) = unsafe { ram_identity_tables() };
    pd[(USER_PAGE_VA / HUGE_PAGE) as usize] = USER_PAGE_GPA | P | W | HUGE | U;
    load_own_tables();
    let flags: u64;
    // SAFETY: clears AC in RFLAGS (popf may at ring 1) and reads the flags back.
    unsafe {
        asm!("pushfq", "and qword ptr [rsp], {mask}", "popfq", "pushfq", "pop {flags}",
             mask = in(reg) !RFLAGS_AC, flags = out(reg) flags)
    };
    if flags & RFLAGS_AC != 0 {
        panic!("user-page: AC is still set");
    }
}

/// `user-page`: the kernel writes and reads a user page from ring 1 with AC clear, as Linux's
/// copy_to_user and copy_from_user do without `stac`. With SMAP on, the write would fault.
pub fn user_page() -> ! {
    map_user_page();
    const PATTERN: u64 = 0x5ca1_ab1e_0ddb_a115;
    // SAFETY: USER_PAGE_VA is our user mapping of USER_PAGE_GPA, unused RAM, also reachable
    // through the identity map.
    let (read, behind) = unsafe {
        ptr::write_volatile(USER_PAGE_VA as *mut u64, PATTERN);
        (
            ptr::read_volatile(USER_PAGE_VA as *const u64),
            ptr::read_volatile(USER_PAGE_GPA as *const u64),
        )
    };
    if read != PATTERN || behind != PATTERN {
        panic!("user-page: wrote {PATTERN:#x}, read {read:#x} and {behind:#x} behind it");
    }
    println!("user-page: ring 1 wrote and read a user page with AC clear");
    poweroff("user-page done")
}

/// `smep`: the kernel calls code in a user page, which SMEP forbids at ring 1 as at ring 0:
/// the host keeps SMEP on, and the guest, with no #PF handler, must die of the fault.
pub fn smep() -> ! {
    println!("attack: smep");
    map_user_page();
    // SAFETY: writes a `ret` through the identity map; then the attack: running it through
    // the user mapping. Were it allowed, the call would simply return.
    unsafe {
        ptr::write_volatile(USER_PAGE_GPA as *mut u8, 0xc3);
        let code: extern "C" fn() = core::mem::transmute(USER_PAGE_VA as *const ());
        code();
    }
    println!("attack smep: survived (ring 1 ran code in a user page)");
    poweroff("smep taken")
}

/// A second address space for `pgtable-flush`: the first's identity map in PML4 slot 0, and one
/// 4 KiB page of its own at [`SECOND_VA`], through tables of its own.
static mut SECOND_PML4: Table = Table([0; 512]);
static mut SECOND_PDPT: Table = Table([0; 512]);
static mut SECOND_PD: Table = Table([0; 512]);
static mut SECOND_PT: Table = Table([0; 512]);
/// PML4 slot 1: mapped in the second address space only.
const SECOND_VA: u64 = 1 << 39;
/// Two pages of RAM this guest does not otherwise use, with a marker each.
const PAGE_ONE: u64 = 50 << 20;
const PAGE_TWO: u64 = PAGE_ONE + 4096;
const MARK_ONE: u64 = 0x1111_1111_1111_1111;
const MARK_TWO: u64 = 0x2222_2222_2222_2222;

/// NEW_PGTABLE to the tables at `root` with `flags` in RCX.
fn new_pgtable(root: u64, flags: u64) {
    // SAFETY: the host only reads the tables at `root`; every table here maps this code and
    // stack as the launcher's tables did.
    unsafe { hcall(NEW_PGTABLE, [root, flags, 0, 0, 0]) };
}

/// Builds the second address space, its page mapped to PAGE_ONE; loads the first. Returns the
/// second's root and its page's entry.
fn two_address_spaces() -> (u64, *mut u64) {
    // SAFETY: single CPU; every table is ours, and RAM is identity-mapped (PAGE_ONE and PAGE_TWO
    // included).
    unsafe {
        ptr::write_volatile(PAGE_ONE as *mut u64, MARK_ONE);
        ptr::write_volatile(PAGE_TWO as *mut u64, MARK_TWO);
        let (_, pml4) = ram_identity_tables();
        let second = &mut (*ptr::addr_of_mut!(SECOND_PML4)).0;
        second[0] = pml4[0];
        second[1] = ptr::addr_of!(SECOND_PDPT) as u64 | P | W;
        (*ptr::addr_of_mut!(SECOND_PDPT)).0[0] = ptr::addr_of!(SECOND_PD) as u64 | P | W;
        (*ptr::addr_of_mut!(SECOND_PD)).0[0] = ptr::addr_of!(SECOND_PT) as u64 | P | W;
        let entry = ptr::addr_of_mut!(SECOND_PT.0[0]);
        ptr::write_volatile(entry, PAGE_ONE | P | W);
        load_own_tables();
        (ptr::addr_of!(SECOND_PML4) as u64, entry)
    }
}

fn read_second_va() -> u64 {
    // SAFETY: called with the second address space loaded, where SECOND_VA is mapped.
    unsafe { ptr::read_volatile(SECOND_VA as *const u64) }
}

/// `pgtable-flush`: the host keeps a shadow per page table, and NEW_PGTABLE_FLUSH drops it. The
/// guest maps a page in a second address space and reads it there; back in the first, it points
/// that page's entry at another page without a word to the host. Switching back without FLUSH
/// still reaches the old page (the shadow the host kept: what a guest that does not flush gets);
/// with FLUSH, the new one; and FLUSH to the tables already loaded drops their shadow too.
pub fn pgtable_flush() -> ! {
    let (second, entry) = two_address_spaces();
    new_pgtable(second, 0);
    let first = read_second_va();
    load_own_tables();
    // SAFETY: our own page table's entry, not in use while the first address space is loaded.
    unsafe { ptr::write_volatile(entry, PAGE_TWO | P | W) };
    new_pgtable(second, 0);
    let kept = read_second_va();
    load_own_tables();
    new_pgtable(second, NEW_PGTABLE_FLUSH);
    let flushed = read_second_va();
    // SAFETY: as above; the host is told below, by a flush of the loaded tables.
    unsafe { ptr::write_volatile(entry, PAGE_ONE | P | W) };
    new_pgtable(second, NEW_PGTABLE_FLUSH);
    let again = read_second_va();
    if [first, kept, flushed, again] != [MARK_ONE, MARK_ONE, MARK_TWO, MARK_ONE] {
        panic!(
            "pgtable-flush: read {first:#x}, then {kept:#x} without FLUSH, {flushed:#x} with it, \
             {again:#x} with it on the loaded tables"
        );
    }
    println!(
        "pgtable-flush: without FLUSH the old page ({kept:#x}), with FLUSH the new one \
         ({flushed:#x}), also for the loaded tables ({again:#x})"
    );
    poweroff("pgtable-flush done")
}

/// `pgtable-bad-flag`: NEW_PGTABLE with a flag the ABI does not define, which kills the guest.
pub fn pgtable_bad_flag() -> ! {
    println!("attack: pgtable-bad-flag");
    let (second, _) = two_address_spaces();
    new_pgtable(second, 2);
    println!("attack pgtable-bad-flag: survived (NEW_PGTABLE took flags 0x2)");
    poweroff("bad flag taken")
}

/// `wallclock`: the time the host wrote at LGUEST_INIT, which the test compares with the date
/// of the machine it runs on.
pub fn wallclock(data: &LguestData) -> ! {
    let ns = data.wallclock_ns;
    if ns == 0 {
        panic!("wallclock: the host left lguest_data.wallclock_ns at 0");
    }
    println!(
        "wallclock: {ns} ns since the epoch ({} s)",
        ns / 1_000_000_000
    );
    poweroff("wallclock done")
}
