//! INITIALIZE, GETREG, SETREG, IRQ and ownership, as `Session` decides them, fed by a fake
//! caller and a fake launcher memory.

use super::*;
use crate::pagewalk::tests::FakeRam;
use core::cell::Cell;

const BASE: u64 = 0x7f00_0000_0000;
const RAM_PAGES: u64 = 1024;

/// The launcher's address space: guest RAM (4 MiB) at BASE, nothing else mapped.
struct FakeUser(FakeRam);

impl UserMemory for FakeUser {
    fn read(&self, addr: u64, out: &mut [u8]) -> Result<(), Refusal> {
        let at = addr.checked_sub(BASE).ok_or(Refusal::Fault)? as usize;
        out.copy_from_slice(self.0 .0.get(at..at + out.len()).ok_or(Refusal::Fault)?);
        Ok(())
    }
    fn write(&self, _addr: u64, _bytes: &[u8]) -> Result<(), Refusal> {
        unreachable!("INITIALIZE's checks only read")
    }
}

/// A task, by pid; `owners` counts references taken, as the kernel's would be.
struct Task {
    pid: u32,
    owners: Cell<u32>,
}

impl Caller for Task {
    type Owner = u32;
    fn is(&self, owner: &u32) -> bool {
        self.pid == *owner
    }
    fn become_owner(&self, _config: &Initialize) -> Result<u32, Refusal> {
        self.owners.set(self.owners.get() + 1);
        Ok(self.pid)
    }
}

fn task(pid: u32) -> Task {
    Task {
        pid,
        owners: Cell::new(0),
    }
}

/// Identity map of the first 2 MiB: PML4 0x1000 -> PDPT 0x2000 -> PD 0x3000 (huge).
fn user() -> FakeUser {
    let mut ram = FakeRam::new((RAM_PAGES * PAGE_SIZE) as usize);
    ram.put(0x1000, 0x2000 | 3);
    ram.put(0x2000, 0x3000 | 3);
    ram.put(0x3000, 0x83);
    FakeUser(ram)
}

fn valid() -> Initialize {
    Initialize {
        base: BASE,
        pfn_limit: RAM_PAGES,
        start_ip: 0x10_0000,
        device_limit: RAM_PAGES + 16,
        cr3: 0x1000,
        boot_params: 0x7000,
    }
}

fn init_bytes(config: Initialize) -> std::vec::Vec<u8> {
    Request::Initialize(config).encode().as_bytes().to_vec()
}

/// What a read() gives, with "run the guest" as `None`.
fn read(s: &mut Session<u32>, t: &Task, len: usize) -> Result<Option<u64>, Refusal> {
    s.read(t, len).map(|action| match action {
        ReadAction::Register(value) => Some(value),
        ReadAction::Run(_) => None,
    })
}

fn initialized(owner: &Task) -> Session<u32> {
    let mut s = Session::default();
    assert_eq!(s.write(&init_bytes(valid()), owner, &user()), Ok(56));
    s
}

#[test]
fn initialize_sets_up_the_guest_once() {
    let t = task(1);
    let mut s = initialized(&t);
    assert!(s.owner().is_some());
    assert_eq!(t.owners.get(), 1);
    assert_eq!(
        s.write(&init_bytes(valid()), &t, &user()),
        Err(Refusal::AlreadyInitialized)
    );
    assert_eq!(t.owners.get(), 1, "a refused INITIALIZE takes no reference");
}

#[test]
fn fast_paths_start_on_and_the_owner_may_turn_them_off() {
    let t = task(1);
    let off = Request::FastPaths { on: false }.encode();
    let mut fresh = Session::<u32>::default();
    assert_eq!(
        fresh.write(off.as_bytes(), &t, &user()),
        Err(Refusal::NotInitialized)
    );
    let mut s = initialized(&t);
    assert!(s.guest.as_ref().unwrap().fast_paths);
    assert_eq!(
        s.write(off.as_bytes(), &task(2), &user()),
        Err(Refusal::NotOwner)
    );
    assert!(
        s.guest.as_ref().unwrap().fast_paths,
        "a stranger changes nothing"
    );
    assert_eq!(s.write(off.as_bytes(), &t, &user()), Ok(16));
    assert!(!s.guest.as_ref().unwrap().fast_paths);
    let on = Request::FastPaths { on: true }.encode();
    assert_eq!(s.write(on.as_bytes(), &t, &user()), Ok(16));
    assert!(s.guest.as_ref().unwrap().fast_paths);
}

#[test]
fn every_bad_initialize_field_has_its_refusal_and_changes_nothing() {
    type Spoil = fn(&mut Initialize);
    let bad: [(&str, Spoil, Refusal); 14] = [
        ("base unaligned", |c| c.base += 8, Refusal::Misaligned),
        ("no RAM", |c| c.pfn_limit = 0, Refusal::Misaligned),
        ("cr3 unaligned", |c| c.cr3 += 1, Refusal::Misaligned),
        (
            "boot_params unaligned",
            |c| c.boot_params += 4,
            Refusal::Misaligned,
        ),
        (
            "too much RAM",
            |c| c.pfn_limit = MAX_GUEST_PAGES + 1,
            Refusal::Overflow,
        ),
        (
            "devices below RAM",
            |c| c.device_limit = RAM_PAGES - 1,
            Refusal::Overflow,
        ),
        (
            "devices too many",
            |c| c.device_limit = u64::MAX,
            Refusal::Overflow,
        ),
        ("wraps around", |c| c.base = !0xfff, Refusal::Overflow),
        (
            "beyond user space",
            |c| c.base = USER_SPACE_END - PAGE_SIZE,
            Refusal::Overflow,
        ),
        (
            "cr3 outside RAM",
            |c| c.cr3 = RAM_PAGES * PAGE_SIZE,
            Refusal::OutsideRam,
        ),
        (
            "boot_params outside RAM",
            |c| c.boot_params = 1 << 40,
            Refusal::OutsideRam,
        ),
        (
            "entry unmapped",
            |c| c.start_ip = 0x4000_0000,
            Refusal::OutsideRam,
        ),
        (
            "entry noncanonical",
            |c| c.start_ip = 1 << 63,
            Refusal::OutsideRam,
        ),
        (
            "memory unreadable",
            |c| c.base -= PAGE_SIZE * 4096,
            Refusal::Fault,
        ),
    ];
    for (what, spoil, refusal) in bad {
        let t = task(1);
        let mut s = Session::default();
        let mut config = valid();
        spoil(&mut config);
        assert_eq!(
            s.write(&init_bytes(config), &t, &user()),
            Err(refusal),
            "{what}"
        );
        assert!(s.owner().is_none(), "{what}: refused, yet a guest exists");
        assert_eq!(
            t.owners.get(),
            0,
            "{what}: refused, yet a reference was taken"
        );
        assert_eq!(
            s.write(&init_bytes(valid()), &t, &user()),
            Ok(56),
            "{what}: then valid"
        );
    }
}

#[test]
fn entry_mapped_outside_ram_is_refused() {
    let mut u = user();
    // A second 2 MiB page whose frame lies beyond the 4 MiB of RAM.
    u.0.put(0x3000 + 8, 0x4000_0000 | 0x83);
    let mut config = valid();
    config.start_ip = 0x20_0000;
    assert_eq!(
        Session::default().write(&init_bytes(config), &task(1), &u),
        Err(Refusal::OutsideRam)
    );
}

#[test]
fn registers_start_at_the_entry_and_round_trip() {
    let t = task(1);
    let mut s = initialized(&t);
    let get = |s: &mut Session<u32>, reg: Reg| {
        let req = Request::GetReg {
            offset: reg.offset(),
        }
        .encode();
        assert_eq!(s.write(req.as_bytes(), &t, &user()), Ok(16));
        read(s, &t, 8)
    };
    assert_eq!(get(&mut s, Reg::Rip), Ok(Some(0x10_0000)));
    assert_eq!(get(&mut s, Reg::Rsi), Ok(Some(0x7000)));
    assert_eq!(get(&mut s, Reg::Cs), Ok(Some(GUEST_KERNEL_CS)));
    assert_eq!(get(&mut s, Reg::Rflags), Ok(Some(GUEST_INITIAL_RFLAGS)));
    for (i, reg) in Reg::ALL.into_iter().enumerate() {
        let value = 0x1111_0000 + i as u64;
        let req = Request::SetReg {
            offset: reg.offset(),
            value,
        }
        .encode();
        let before = get(&mut s, reg);
        if reg.is_writable() {
            let bits = reg.writable_bits();
            let kept = before.unwrap().unwrap() & !bits;
            assert_eq!(s.write(req.as_bytes(), &t, &user()), Ok(24));
            assert_eq!(get(&mut s, reg), Ok(Some(kept | value & bits)), "{reg:?}");
        } else {
            assert_eq!(
                s.write(req.as_bytes(), &t, &user()),
                Err(Refusal::ReadOnlyRegister)
            );
            assert_eq!(get(&mut s, reg), before, "{reg:?} changed");
        }
    }
}

#[test]
fn read_needs_a_guest_a_pending_getreg_and_room() {
    let t = task(1);
    let mut fresh: Session<u32> = Session::default();
    assert_eq!(read(&mut fresh, &t, 8), Err(Refusal::NotInitialized));
    let getreg = Request::GetReg { offset: 0 }.encode();
    assert_eq!(
        fresh.write(getreg.as_bytes(), &t, &user()),
        Err(Refusal::NotInitialized)
    );
    let mut s = initialized(&t);
    assert_eq!(
        read(&mut s, &t, 8),
        Err(Refusal::ShortRead),
        "no room for an exit"
    );
    assert_eq!(read(&mut s, &t, EXIT_MAX_BYTES), Ok(None), "runs the guest");
    s.write(getreg.as_bytes(), &t, &user()).unwrap();
    assert_eq!(read(&mut s, &t, 4), Err(Refusal::ShortRead));
    assert_eq!(
        read(&mut s, &t, 8),
        Ok(Some(0)),
        "a short read leaves the GETREG pending"
    );
    let bad = Request::GetReg { offset: 4 }.encode();
    assert_eq!(
        s.write(bad.as_bytes(), &t, &user()),
        Err(Refusal::NoSuchRegister)
    );
}

#[test]
fn only_the_owner_may_touch_an_initialized_guest() {
    let owner = task(1);
    let stranger = task(2);
    let mut s = initialized(&owner);
    let getreg = Request::GetReg { offset: 0 }.encode();
    assert_eq!(
        s.write(getreg.as_bytes(), &stranger, &user()),
        Err(Refusal::NotOwner)
    );
    assert_eq!(
        s.write(&init_bytes(valid()), &stranger, &user()),
        Err(Refusal::NotOwner)
    );
    assert_eq!(s.write(&[0; 3], &stranger, &user()), Err(Refusal::NotOwner));
    assert_eq!(
        read(&mut s, &stranger, EXIT_MAX_BYTES),
        Err(Refusal::NotOwner)
    );
    assert_eq!(s.write(getreg.as_bytes(), &owner, &user()), Ok(16));
}

#[test]
fn irqs_come_only_from_the_launchers_threads_and_within_range() {
    assert_eq!(check_irq(1, None), Err(Refusal::NotInitialized));
    assert_eq!(check_irq(1, Some(false)), Err(Refusal::NotOwner));
    assert_eq!(check_irq(1, Some(true)), Ok(1));
    assert_eq!(check_irq(63, Some(true)), Ok(63));
    assert_eq!(check_irq(64, Some(true)), Err(Refusal::NoSuchIrq));
    assert_eq!(check_irq(u64::MAX, Some(true)), Err(Refusal::NoSuchIrq));
    let owner = task(7);
    let mut session = initialized(&owner);
    let irq = Request::Irq { irq: 1 }.encode();
    assert_eq!(
        session.write(irq.as_bytes(), &owner, &user()),
        Err(Refusal::UnknownRequest)
    );
}
