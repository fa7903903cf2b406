//! Exit handling fed fake exits: a guest on 4 MiB of RAM in a byte vector, with page tables
//! built by hand, shadow tables that only record what they are asked, and a host whose
//! interrupts and timer are counters. Each test makes the trap a guest would have made and
//! checks what the host made of it: the guest's registers and memory, the shadow, the exit.

use super::*;
use crate::abi::boot::{GUEST_KERNEL_CS, GUEST_KERNEL_SS, GUEST_USER_CS, GUEST_USER_SS};
use crate::abi::data::{HCALL_DONE, HCALL_PENDING};
use crate::abi::dev::{Initialize, Refusal};
use crate::abi::exit::{ExitKind, MmioAccess, MMIO_INSN_MAX};
use crate::abi::hcall;
use crate::abi::regs::Regs;
use crate::abi::stats::Bucket;
use crate::address::{GuestPhys, GuestVirt, HostPhys, LauncherAddr};
use crate::interrupts::GuestGate;
use core::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::vec::Vec;

const RAM: u64 = 4 << 20;
/// The launcher's address of guest-physical 0.
const BASE: u64 = 0x7f00_0000_0000;
/// The guest's first page tables, and where the next table page comes from.
const CR3: u64 = 0x1000;
const FIRST_TABLE: u64 = 0x10_000;
const DATA: u64 = 0x8000;
/// The guest kernel's stack: one page, writable, supervisor-only.
const STACK_PAGE: u64 = 0xffff_c900_0000_0000;
const STACK_TOP: u64 = STACK_PAGE + 0x1000;
const STACK_GPA: u64 = 0x20_0000;
/// A user page of code, and a user page the tables map read-only.
const USER_CODE: u64 = 0x40_0000;
const USER_CODE_GPA: u64 = 0x30_0000;
const USER_READ_ONLY: u64 = 0x50_0000;
const HANDLER: u64 = 0xffff_ffff_8100_1000;
/// Device pages above RAM, as `device_limit` puts them.
const DEVICE_PAGES: u64 = 4;

const PRESENT: u64 = 1;
const WRITE: u64 = 2;
const USER: u64 = 4;

struct FakeHost {
    ram: RefCell<Vec<u8>>,
    pending: Cell<u64>,
    timer: Cell<Option<u64>>,
    halts: Cell<u32>,
}

impl GuestRam for FakeHost {
    fn ram_bytes(&self) -> u64 {
        RAM
    }
    fn read(&self, gpa: u64, out: &mut [u8]) -> Result<(), Refusal> {
        let at = gpa as usize;
        let ram = self.ram.borrow();
        let bytes = ram.get(at..at + out.len()).ok_or(Refusal::OutsideRam)?;
        out.copy_from_slice(bytes);
        Ok(())
    }
    fn write(&self, gpa: u64, bytes: &[u8]) -> Result<(), Refusal> {
        let at = gpa as usize;
        let mut ram = self.ram.borrow_mut();
        let to = ram
            .get_mut(at..at + bytes.len())
            .ok_or(Refusal::OutsideRam)?;
        to.copy_from_slice(bytes);
        Ok(())
    }
}

impl Host for FakeHost {
    fn pending_irqs(&self) -> u64 {
        self.pending.get()
    }
    fn clear_irq(&self, irq: u32) {
        self.pending.set(self.pending.get() & !(1 << irq));
    }
    fn set_timer(&self, nanoseconds: u64) {
        self.timer.set(Some(nanoseconds));
    }
    fn halt(&self, ready: &dyn Fn() -> bool) {
        self.halts.set(self.halts.get() + 1);
        // What the timer does while the guest sleeps: IRQ 0 comes.
        if !ready() {
            self.pending.set(self.pending.get() | 1);
        }
        assert!(ready(), "woken with nothing to deliver");
    }
    fn cpu(&self) -> HostCpu {
        HostCpu { cr4: 0, xcr0: 0 }
    }
    fn tsc_khz(&self) -> u64 {
        2_000_000
    }
    fn wallclock_ns(&self) -> u64 {
        1_700_000_000_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

impl FakeHost {
    fn word(&self, gpa: u64) -> u64 {
        let mut bytes = [0u8; 8];
        self.read(gpa, &mut bytes).unwrap();
        u64::from_le_bytes(bytes)
    }
    fn put(&self, gpa: u64, value: u64) {
        self.write(gpa, &value.to_le_bytes()).unwrap();
    }
}

/// The shadow tables, as a record of what they were asked to do.
#[derive(Default)]
struct FakeShadow {
    pinned: Vec<(u64, u64)>,
    entries: BTreeMap<u64, u64>,
    switches: Vec<(u64, bool)>,
    flushes: Vec<bool>,
    invalidated: Vec<u64>,
    guest_data: Option<u64>,
}

/// Where the fake host "pins" guest-physical `gpa`: an address that is plainly not it.
fn host_phys(gpa: u64) -> u64 {
    0x1_0000_0000 + gpa
}

impl Shadow for FakeShadow {
    fn pin(
        &mut self,
        gpa_page: GuestPhys,
        launcher_addr: LauncherAddr,
    ) -> Result<HostPhys, PinFailure> {
        self.pinned.push((gpa_page.0, launcher_addr.0));
        Ok(HostPhys(host_phys(gpa_page.0)))
    }
    fn set_entry(&mut self, va: GuestVirt, pte: u64, _global: bool) -> Result<bool, OutOfMemory> {
        Ok(self.entries.insert(va.0, pte) != Some(pte))
    }
    fn switch_to(
        &mut self,
        cr3: u64,
        flush: bool,
        _now: &mut dyn FnMut(u64) -> Option<(u64, u64)>,
    ) -> Result<(), OutOfMemory> {
        self.switches.push((cr3, flush));
        Ok(())
    }
    fn flush(&mut self, all: bool, _now: &mut dyn FnMut(u64) -> Option<(u64, u64)>) {
        self.flushes.push(all);
    }
    fn invalidate(&mut self, va: GuestVirt) {
        self.invalidated.push(va.0);
    }
    fn map_guest_data(
        &mut self,
        gpa_page: GuestPhys,
        launcher_addr: LauncherAddr,
    ) -> Result<(), PinFailure> {
        assert_eq!(launcher_addr.0, BASE + gpa_page.0);
        self.guest_data = Some(gpa_page.0);
        Ok(())
    }
}

/// Map `va` to `gpa` with `flags` in the tables at CR3, taking table pages from `next`.
fn map(host: &FakeHost, next: &mut u64, va: u64, gpa: u64, flags: u64) {
    let mut table = CR3;
    for shift in [39, 30, 21] {
        let slot = table + ((va >> shift) & 0x1ff) * 8;
        let mut entry = host.word(slot);
        if entry & PRESENT == 0 {
            entry = *next | PRESENT | WRITE | USER;
            *next += 0x1000;
            host.put(slot, entry);
        }
        table = entry & 0x000f_ffff_ffff_f000;
    }
    host.put(table + ((va >> 12) & 0x1ff) * 8, gpa | flags);
}

/// A guest that has run for a while: lguest_data registered, a kernel stack, handlers for the
/// page fault, vector 0x80 (reachable from user mode) and IRQ 0, and user mode at USER_CODE.
fn machine() -> (Guest<FakeShadow>, FakeHost) {
    let host = FakeHost {
        ram: RefCell::new(std::vec![0; RAM as usize]),
        pending: Cell::new(0),
        timer: Cell::new(None),
        halts: Cell::new(0),
    };
    let mut next = FIRST_TABLE;
    map(&host, &mut next, STACK_PAGE, STACK_GPA, PRESENT | WRITE);
    map(&host, &mut next, USER_CODE, USER_CODE_GPA, PRESENT | USER);
    map(&host, &mut next, USER_READ_ONLY, 0x31_0000, PRESENT | USER);
    let config = Initialize {
        base: BASE,
        pfn_limit: RAM / 0x1000,
        start_ip: HANDLER,
        device_limit: RAM / 0x1000 + DEVICE_PAGES,
        cr3: CR3,
        boot_params: 0x7000,
    };
    let mut guest = Guest::new(FakeShadow::default(), config);
    guest.lguest_data = Some(DATA);
    guest.kernel_stack = STACK_TOP;
    let gate = |interrupt_gate, dpl| {
        Some(GuestGate {
            handler: HANDLER,
            interrupt_gate,
            dpl,
        })
    };
    guest.idt[traps::PAGE_FAULT as usize] = gate(true, 0);
    guest.idt[0x80] = gate(false, 3);
    guest.idt[hcall::FIRST_IRQ_VECTOR as usize] = gate(true, 0);
    host.put(DATA + offset::IRQ_ENABLED, crate::abi::data::IRQ_ENABLED);
    host.put(DATA + offset::SYSCALL_VEC, 0x80);
    (guest, host)
}

/// User mode at `rip`, running `code` there.
fn in_user_mode(guest: &mut Guest<FakeShadow>, host: &FakeHost, rip: u64, code: &[u8]) {
    let gpa = USER_CODE_GPA + (rip - USER_CODE);
    host.write(gpa, code).unwrap();
    let mut regs = Regs::default();
    regs.set(Reg::Rip, rip);
    regs.set(Reg::Cs, GUEST_USER_CS);
    regs.set(Reg::Ss, GUEST_USER_SS);
    regs.set(Reg::Rsp, 0x7ffe_0000_1000);
    regs.set(Reg::Rflags, 0x202);
    guest.regs = regs;
}

fn trap(vector: u64, error: u64, cr2: u64) -> Exit {
    Exit {
        vector,
        error,
        cr2,
        dr6: 0,
    }
}

fn hypercall(guest: &mut Guest<FakeShadow>, args: [u64; 4]) -> Exit {
    for (reg, value) in [Reg::Rax, Reg::Rbx, Reg::Rcx, Reg::Rdx]
        .into_iter()
        .zip(args)
    {
        guest.regs.set(reg, value);
    }
    trap(hcall::VECTOR as u64, 0, 0)
}

/// The five-word frame the host pushed for a trap from user mode: RIP, CS, RFLAGS, RSP, SS.
fn user_frame(host: &FakeHost) -> [u64; 5] {
    let frame_gpa = STACK_GPA + 0x1000 - 5 * 8;
    core::array::from_fn(|i| host.word(frame_gpa + i as u64 * 8))
}

fn count(stats: &ExitStats, bucket: Bucket) -> u64 {
    stats.get(bucket, 1).count
}

#[test]
fn a_hypercall_is_carried_out_and_counted() {
    let (mut guest, host) = machine();
    let stats = ExitStats::default();
    let exit = hypercall(&mut guest, [hcall::SET_STACK, 0xffff_c900_0000_8000, 0, 0]);
    assert_eq!(handle(&mut guest, &host, &stats, exit, 0), Ok(None));
    assert_eq!(guest.kernel_stack, 0xffff_c900_0000_8000);
    let exit = hypercall(&mut guest, [hcall::SET_CLOCKEVENT, 1_000_000, 0, 0]);
    assert_eq!(handle(&mut guest, &host, &stats, exit, 0), Ok(None));
    assert_eq!(host.timer.get(), Some(1_000_000));
    let exit = hypercall(&mut guest, [hcall::NEW_PGTABLE, 0x9000, 1, 0]);
    assert_eq!(handle(&mut guest, &host, &stats, exit, 0), Ok(None));
    assert_eq!(
        (guest.cr3, &guest.owner.switches[..]),
        (0x9000, &[(0x9000, true)][..])
    );
    let exit = hypercall(&mut guest, [hcall::SET_PTE, 0x1234_5000, 0, 0]);
    assert_eq!(handle(&mut guest, &host, &stats, exit, 0), Ok(None));
    assert_eq!(guest.owner.invalidated, [0x1234_5000]);
    assert_eq!(
        count(&stats, Bucket::hypercall(hcall::SET_STACK).unwrap()),
        1
    );
}

#[test]
fn lguest_init_tells_the_guest_about_the_host_and_maps_its_page() {
    let (mut guest, host) = machine();
    guest.lguest_data = None;
    let stats = ExitStats::default();
    let exit = hypercall(&mut guest, [hcall::NOP, 0, 0, 0]);
    let death = handle(&mut guest, &host, &stats, exit, 0).unwrap_err();
    assert!(death
        .as_bytes()
        .starts_with(b"hypercall 21 before LGUEST_INIT"));
    let exit = hypercall(&mut guest, [hcall::LGUEST_INIT, 0x6000, 0, 0]);
    assert_eq!(handle(&mut guest, &host, &stats, exit, 0), Ok(None));
    assert_eq!(guest.lguest_data, Some(0x6000));
    assert_eq!(guest.owner.guest_data, Some(0x6000));
    assert_eq!(host.word(0x6000 + offset::TSC_KHZ), 2_000_000);
    assert_eq!(
        host.word(0x6000 + offset::SWITCHER_WINDOW_START),
        crate::abi::data::SWITCHER_WINDOW_START
    );
}

#[test]
fn the_asynchronous_ring_goes_first_in_order() {
    let (mut guest, host) = machine();
    let stats = ExitStats::default();
    // Two queued calls in slots 0 and 1, and slot 2 empty: the ring stops there.
    let queue = |slot: u64, number: u64, arg: u64| {
        host.put(DATA + offset::HCALLS + slot * 48, number);
        host.put(DATA + offset::HCALLS + slot * 48 + 8, arg);
        host.write(DATA + offset::HCALL_STATUS + slot, &[HCALL_PENDING])
            .unwrap();
    };
    queue(0, hcall::SET_PTE, 0xa000);
    queue(1, hcall::SET_PTE, 0xb000);
    let exit = hypercall(&mut guest, [hcall::SET_PTE, 0xc000, 0, 0]);
    assert_eq!(handle(&mut guest, &host, &stats, exit, 0), Ok(None));
    assert_eq!(guest.owner.invalidated, [0xa000, 0xb000, 0xc000]);
    let mut status = [0u8; 3];
    host.read(DATA + offset::HCALL_STATUS, &mut status).unwrap();
    assert_eq!(status, [HCALL_DONE; 3]);
    assert_eq!(guest.next_async, 2);
    // A call that must not be queued kills.
    queue(2, hcall::HALT, 0);
    let exit = hypercall(&mut guest, [hcall::NOP, 0, 0, 0]);
    let death = handle(&mut guest, &host, &stats, exit, 0).unwrap_err();
    assert!(death.as_bytes().starts_with(b"hypercall 10 queued"));
}

#[test]
fn shutdown_and_console_write_go_to_the_launcher() {
    let (mut guest, host) = machine();
    let stats = ExitStats::default();
    host.write(0x5000, b"hello\0junk").unwrap();
    let exit = hypercall(&mut guest, [hcall::CONSOLE_WRITE, 0x5000, 5, 0]);
    let record = handle(&mut guest, &host, &stats, exit, 0).unwrap().unwrap();
    assert_eq!(record, ExitRecord::new(ExitKind::Console, b"hello"));
    let exit = hypercall(
        &mut guest,
        [hcall::SHUTDOWN, 0x5000, hcall::SHUTDOWN_CRASH, 0],
    );
    let record = handle(&mut guest, &host, &stats, exit, 0).unwrap().unwrap();
    assert_eq!(
        record,
        ExitRecord::new(ExitKind::Died, b"it crashed: hello")
    );
    assert_eq!(guest.ended, Some(record));
}

#[test]
fn halt_sleeps_until_an_interrupt_can_be_delivered() {
    let (mut guest, host) = machine();
    let stats = ExitStats::default();
    let exit = hypercall(&mut guest, [hcall::HALT, 0, 0, 0]);
    assert_eq!(handle(&mut guest, &host, &stats, exit, 0), Ok(None));
    assert_eq!((host.halts.get(), host.pending.get()), (1, 1));
}

#[test]
fn a_fault_the_guests_tables_allow_is_mapped_in_the_shadow() {
    let (mut guest, host) = machine();
    let stats = ExitStats::default();
    in_user_mode(&mut guest, &host, USER_CODE, &[0x90]);
    let before = guest.regs;
    // An instruction fetch from user mode: not present, user.
    let exit = trap(traps::PAGE_FAULT, 0x14, USER_CODE + 0x10);
    assert_eq!(handle(&mut guest, &host, &stats, exit, 0), Ok(None));
    assert_eq!(guest.owner.pinned, [(USER_CODE_GPA, BASE + USER_CODE_GPA)]);
    let pte = guest.owner.entries[&USER_CODE];
    assert_eq!(pte & 0x000f_ffff_ffff_f000, host_phys(USER_CODE_GPA));
    assert_eq!(pte & (PRESENT | WRITE | USER), PRESENT | USER);
    assert_eq!(guest.regs, before, "the guest retries the instruction");
    assert_eq!(count(&stats, Bucket::FAULT_FIXED), 1);
}

#[test]
fn a_fault_the_guests_tables_refuse_goes_to_its_handler() {
    let (mut guest, host) = machine();
    let stats = ExitStats::default();
    in_user_mode(&mut guest, &host, USER_CODE, &[0x90]);
    // A write from user mode to a read-only page: present, write, user.
    let exit = trap(traps::PAGE_FAULT, 0x7, USER_READ_ONLY);
    assert_eq!(handle(&mut guest, &host, &stats, exit, 0), Ok(None));
    assert!(guest.owner.entries.is_empty());
    assert_eq!(host.word(DATA + offset::CR2), USER_READ_ONLY);
    // The frame on the kernel stack has the error code first, then the user's state.
    let frame_gpa = STACK_GPA + 0x1000 - 6 * 8;
    assert_eq!(host.word(frame_gpa), 0x7);
    assert_eq!(host.word(frame_gpa + 8), USER_CODE);
    assert_eq!(host.word(frame_gpa + 16), GUEST_USER_CS);
    assert_eq!(guest.regs.get(Reg::Rip), HANDLER);
    assert_eq!(guest.regs.get(Reg::Rsp), STACK_TOP - 6 * 8);
    assert_eq!(guest.regs.get(Reg::Cs), GUEST_KERNEL_CS);
    assert_eq!(
        host.word(DATA + offset::IRQ_ENABLED),
        0,
        "an interrupt gate"
    );
    // Without a handler, the same fault kills.
    guest.idt[traps::PAGE_FAULT as usize] = None;
    in_user_mode(&mut guest, &host, USER_CODE, &[0x90]);
    assert!(handle(&mut guest, &host, &stats, exit, 0).is_err());
}

#[test]
fn a_device_page_is_the_launchers_with_the_instruction() {
    let (mut guest, host) = machine();
    let stats = ExitStats::default();
    let mut next = 0x18_0000;
    let device_va = 0xffff_c900_1000_0000;
    map(&host, &mut next, device_va, RAM, PRESENT | WRITE);
    // mov %eax, (%rdi) in the kernel.
    map(&host, &mut next, HANDLER, 0x32_0000, PRESENT);
    host.write(0x32_0000, &[0x89, 0x07]).unwrap();
    guest.regs.set(Reg::Rip, HANDLER);
    guest.regs.set(Reg::Cs, GUEST_KERNEL_CS);
    guest.regs.set(Reg::Ss, GUEST_KERNEL_SS);
    let exit = trap(traps::PAGE_FAULT, 0x2, device_va + 0x10);
    let record = handle(&mut guest, &host, &stats, exit, 0).unwrap().unwrap();
    let expected = mmio_access(RAM + 0x10, true, &[0x89, 0x07], guest.regs);
    assert_eq!(record, expected.to_record());
    assert!(guest.owner.pinned.is_empty(), "no device page is pinned");
}

/// An MMIO exit as the test expects it, with `code` at RIP and the rest of the instruction
/// buffer what the fetch found there (zeros in the fake's RAM).
fn mmio_access(gpa: u64, write: bool, code: &[u8], regs: Regs) -> MmioAccess {
    let mut insn = [0u8; MMIO_INSN_MAX];
    insn[..code.len()].copy_from_slice(code);
    MmioAccess {
        gpa,
        write,
        insn,
        insn_len: MMIO_INSN_MAX,
        regs,
    }
}

#[test]
fn int_0x80_from_user_mode_becomes_vector_0x80() {
    let (mut guest, host) = machine();
    let stats = ExitStats::default();
    in_user_mode(&mut guest, &host, USER_CODE + 0x100, &[0xcd, 0x80]);
    // The real IDT lets only the hypercall gate through: a #GP naming IDT entry 0x80.
    let exit = trap(traps::GENERAL_PROTECTION, 0x80 << 3 | 2, 0);
    assert_eq!(handle(&mut guest, &host, &stats, exit, 0), Ok(None));
    let frame = user_frame(&host);
    assert_eq!(frame[0], USER_CODE + 0x102, "resumes after the instruction");
    assert_eq!(frame[1], GUEST_USER_CS);
    assert_eq!(guest.regs.get(Reg::Rip), HANDLER);
    assert_eq!(
        host.word(DATA + offset::IRQ_ENABLED),
        crate::abi::data::IRQ_ENABLED,
        "a trap gate leaves the flag"
    );
}

#[test]
fn syscall_from_user_mode_is_delivered_as_syscall_would() {
    let (mut guest, host) = machine();
    let stats = ExitStats::default();
    in_user_mode(&mut guest, &host, USER_CODE + 0x200, &[0x0f, 0x05]);
    // DF, TF and RF (the #UD set it) in the user's flags.
    let flags = 0x202 | 1 << 10 | 1 << 8 | 1 << 16;
    guest.regs.set(Reg::Rflags, flags);
    let exit = trap(traps::INVALID_OPCODE, 0, 0);
    assert_eq!(handle(&mut guest, &host, &stats, exit, 0), Ok(None));
    assert_eq!(guest.regs.get(Reg::Rcx), USER_CODE + 0x202);
    assert_eq!(guest.regs.get(Reg::R11), flags & !(1 << 16));
    assert_eq!(guest.regs.get(Reg::Rip), HANDLER);
    assert_eq!(
        guest.regs.get(Reg::Rflags) & (1 << 10 | 1 << 8 | 1 << 16),
        0
    );
    assert_eq!(user_frame(&host)[0], USER_CODE + 0x202);
    // In compatibility mode the same bytes stay a #UD, which this guest has no handler for.
    in_user_mode(&mut guest, &host, USER_CODE + 0x200, &[0x0f, 0x05]);
    guest.regs.set(Reg::Cs, crate::abi::boot::GUEST_USER32_CS);
    let death = handle(&mut guest, &host, &stats, exit, 0).unwrap_err();
    assert!(death.as_bytes().starts_with(b"trap 6 (#UD)"));
}

#[test]
fn a_debug_trap_leaves_dr6_for_the_guest() {
    let (mut guest, host) = machine();
    let stats = ExitStats::default();
    guest.idt[traps::DEBUG as usize] = guest.idt[0x80];
    in_user_mode(&mut guest, &host, USER_CODE, &[0x90]);
    let exit = Exit {
        dr6: 0xffff_4ff0,
        ..trap(traps::DEBUG, 0, 0)
    };
    assert_eq!(handle(&mut guest, &host, &stats, exit, 0), Ok(None));
    assert_eq!(host.word(DATA + offset::DR6), 0xffff_4ff0);
    assert_eq!(guest.regs.get(Reg::Rip), HANDLER);
}

#[test]
fn an_interrupt_waits_for_the_virtual_flag() {
    let (mut guest, host) = machine();
    let stats = ExitStats::default();
    in_user_mode(&mut guest, &host, USER_CODE, &[0x90]);
    host.pending.set(1);
    host.put(DATA + offset::IRQ_ENABLED, 0);
    assert_eq!(deliver_interrupts(&mut guest, &host, &stats), Ok(()));
    assert_eq!(guest.regs.get(Reg::Rip), USER_CODE, "not delivered");
    assert_eq!(host.word(DATA + offset::IRQ_PENDING), 1);
    host.put(DATA + offset::IRQ_ENABLED, crate::abi::data::IRQ_ENABLED);
    assert_eq!(deliver_interrupts(&mut guest, &host, &stats), Ok(()));
    assert_eq!(guest.regs.get(Reg::Rip), HANDLER);
    assert_eq!(host.pending.get(), 0);
    assert_eq!(host.word(DATA + offset::IRQ_PENDING), 0);
    assert_eq!(user_frame(&host)[0], USER_CODE);
    // A masked IRQ stays pending.
    host.pending.set(1);
    host.put(DATA + offset::BLOCKED_INTERRUPTS, 1);
    host.put(DATA + offset::IRQ_ENABLED, crate::abi::data::IRQ_ENABLED);
    in_user_mode(&mut guest, &host, USER_CODE, &[0x90]);
    assert_eq!(deliver_interrupts(&mut guest, &host, &stats), Ok(()));
    assert_eq!(
        (guest.regs.get(Reg::Rip), host.pending.get()),
        (USER_CODE, 1)
    );
}

#[test]
fn a_trap_without_a_handler_kills_with_its_name() {
    let (mut guest, host) = machine();
    let stats = ExitStats::default();
    in_user_mode(&mut guest, &host, USER_CODE, &[0x90]);
    let death = handle(&mut guest, &host, &stats, trap(0, 0, 0), 0).unwrap_err();
    assert_eq!(
        core::str::from_utf8(death.as_bytes()).unwrap(),
        "trap 0 (#DE) at rip 0x400000, error 0x0"
    );
    assert_eq!(count(&stats, Bucket::DIED), 1);
}
