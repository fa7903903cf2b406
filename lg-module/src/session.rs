//! One open `/dev/lguest`: how the host answers each request, minus the hardware.
//!
//! This is the decision half of lg.ko's `write()` and `read()`: it decodes a request, checks
//! who is asking and whether every value makes sense, and changes the guest only when the whole
//! request is good (a refused request changes nothing). The kernel half (`lg-module/file_ops.rs`)
//! copies bytes from user space, holds the lock, and turns a [`Refusal`] into an errno.
//!
//! Two things the kernel provides are traits here, so the tests can play the kernel:
//! [`Caller`] (who is calling, and how to make them the guest's owner) and [`UserMemory`] (the
//! launcher's memory, where guest RAM lives).

use crate::abi::boot::{GUEST_INITIAL_RFLAGS, GUEST_KERNEL_CS, GUEST_KERNEL_SS};
use crate::abi::dev::{Initialize, Refusal, Request, MAX_GUEST_PAGES};
use crate::abi::exit::{ExitRecord, EXIT_MAX_BYTES};
use crate::abi::hcall::IRQS;
use crate::abi::regs::{Reg, Regs};
use crate::abi::PAGE_SIZE;
use crate::interrupts::GuestGate;
use crate::pagewalk::{self, GuestPhysRead};

/// The task calling `write()` or `read()`.
pub trait Caller {
    /// What the guest keeps of the task that initialised it. In lg.ko: references to that task
    /// and its mm, released when the guest is dropped.
    type Owner;

    /// Whether this caller is the task that initialised the guest.
    fn is(&self, owner: &Self::Owner) -> bool;

    /// Bind a new guest, whose INITIALIZE was `config` and passed every check, to this caller:
    /// the kernel takes its references and builds what the guest runs on here.
    fn become_owner(&self, config: &Initialize) -> Result<Self::Owner, Refusal>;
}

/// The caller's own (user-space) memory, where the launcher mapped guest RAM.
pub trait UserMemory {
    /// Read the little-endian u64 at user address `addr`; [`Refusal::Fault`] if unmapped.
    fn read_u64(&self, addr: u64) -> Result<u64, Refusal>;
}

/// The first address above user space on x86-64 with 4-level paging (the host kernel is built
/// without 5-level paging: docs/building.md). Guest memory must lie entirely below it.
pub const USER_SPACE_END: u64 = 0x7fff_ffff_f000;

/// Guest RAM as seen through the launcher's mapping: guest-physical `gpa` is user address
/// `base + gpa`, and nothing at or above `ram_bytes` is read.
struct GuestRamView<'a, M> {
    user: &'a M,
    base: u64,
    ram_bytes: u64,
}

impl<M: UserMemory> GuestPhysRead for GuestRamView<'_, M> {
    fn read_u64(&self, gpa: u64) -> Result<u64, Refusal> {
        // The walker already bounds its reads by RAM; checking again here keeps this view safe
        // for any future caller too.
        match gpa.checked_add(8) {
            Some(end) if end <= self.ram_bytes => self.user.read_u64(self.base + gpa),
            _ => Err(Refusal::OutsideRam),
        }
    }
}

/// Everything a guest is.
pub struct Guest<O> {
    /// What the kernel keeps for the guest: its launcher's task and mm, its shadow page tables.
    pub owner: O,
    /// Where its memory is, where it started, its first page tables.
    pub config: Initialize,
    /// Its registers while it is not running.
    pub regs: Regs,
    /// Its page tables (guest-physical PML4): INITIALIZE's, then NEW_PGTABLE's.
    pub cr3: u64,
    /// Its FS and GS bases while it is not running (it may change them with `mov` to a
    /// segment register, or `wrfsbase` where the host allows it).
    pub fs_base: u64,
    pub gs_base: u64,
    /// Its DS, ES, FS and GS selectors while it is not running, as it left them: a program may
    /// load its own (a TLS entry, say), and expects to find them there after any trap.
    pub selectors: [u16; 4],
    /// The guest-physical address of its lguest_data page, once LGUEST_INIT registered it.
    pub lguest_data: Option<u64>,
    /// Its handlers (LOAD_IDT_ENTRY), by vector.
    pub idt: [Option<GuestGate>; 256],
    /// Its kernel stack for traps from user mode (SET_STACK); 0 until set.
    pub kernel_stack: u64,
    /// The asynchronous ring slot the host looks at next.
    pub next_async: usize,
    /// Its TLS segments (GDT entries 12-14, LOAD_GDT_ENTRY), loaded into the GDT of whichever
    /// CPU it runs on.
    pub tls: [u64; 3],
    /// Whether the Switcher may take its fast paths for this guest (FAST_PATHS; on at first).
    pub fast_paths: bool,
    /// How it ended, once it has: every later `read()` returns this again.
    pub ended: Option<ExitRecord>,
    /// The register the next `read()` returns, set by GETREG.
    pending_read: Option<Reg>,
}

impl<O> Guest<O> {
    /// The guest INITIALIZE made, with `config` (already checked) and `owner`: at its entry
    /// point, on the launcher's page tables, with no handlers, no stack and no lguest_data yet.
    pub fn new(owner: O, config: Initialize) -> Guest<O> {
        Guest {
            owner,
            config,
            regs: initial_regs(&config),
            cr3: config.cr3,
            fs_base: 0,
            gs_base: 0,
            selectors: [0; 4],
            lguest_data: None,
            idt: [None; 256],
            kernel_stack: 0,
            next_async: 0,
            tls: [0; 3],
            fast_paths: true,
            ended: None,
            pending_read: None,
        }
    }

    /// Guest RAM in bytes.
    pub fn ram_bytes(&self) -> u64 {
        self.config.pfn_limit * PAGE_SIZE
    }

    /// End the guest for good with `record`; only the first ending counts.
    pub fn end(&mut self, record: ExitRecord) {
        if self.ended.is_none() {
            self.ended = Some(record);
        }
    }
}

/// What a `read()` should do.
pub enum ReadAction<'a, O> {
    /// Return this register value (GETREG was pending).
    Register(u64),
    /// Run the guest until it needs the launcher.
    Run(&'a mut Guest<O>),
}

/// The state of one open `/dev/lguest`.
pub struct Session<O> {
    guest: Option<Guest<O>>,
}

/// Whether an IRQ request may raise `irq`. `caller_shares_guest_mm` is `None` before
/// INITIALIZE, else whether the caller runs in the launcher's address space: any thread of the
/// launcher may raise interrupts (its device threads do), nobody else may.
pub fn check_irq(irq: u64, caller_shares_guest_mm: Option<bool>) -> Result<u32, Refusal> {
    match caller_shares_guest_mm {
        None => Err(Refusal::NotInitialized),
        Some(false) => Err(Refusal::NotOwner),
        Some(true) => u32::try_from(irq)
            .ok()
            .filter(|irq| *irq < IRQS)
            .ok_or(Refusal::NoSuchIrq),
    }
}

impl<O> Default for Session<O> {
    fn default() -> Self {
        Session { guest: None }
    }
}

impl<O> Session<O> {
    /// Answer one `write()`: `bytes` is what user space wrote (at most
    /// [`crate::abi::dev::MAX_REQUEST_BYTES`] + 8 of it, enough to tell a long write). Returns
    /// the byte count to report as written.
    pub fn write<C, M>(&mut self, bytes: &[u8], caller: &C, user: &M) -> Result<usize, Refusal>
    where
        C: Caller<Owner = O>,
        M: UserMemory,
    {
        // A stranger learns nothing about this guest, not even whether its request parses.
        if let Some(guest) = &self.guest {
            if !caller.is(&guest.owner) {
                return Err(Refusal::NotOwner);
            }
        }
        let request = Request::decode(bytes)?;
        match request {
            Request::Initialize(config) => {
                if self.guest.is_some() {
                    return Err(Refusal::AlreadyInitialized);
                }
                check_initialize(&config, user)?;
                // Only now, with everything checked, does the guest come to exist.
                self.guest = Some(Guest::new(caller.become_owner(&config)?, config));
            }
            // file_ops.rs answers IRQ with `check_irq` before it takes the session's lock (which
            // the launcher's main thread holds while the guest runs): a session never sees one.
            Request::Irq { .. } => return Err(Refusal::UnknownRequest),
            Request::GetReg { offset } => {
                let guest = self.guest.as_mut().ok_or(Refusal::NotInitialized)?;
                guest.pending_read = Some(Reg::from_offset(offset).ok_or(Refusal::NoSuchRegister)?);
            }
            Request::SetReg { offset, value } => {
                let guest = self.guest.as_mut().ok_or(Refusal::NotInitialized)?;
                let reg = Reg::from_offset(offset).ok_or(Refusal::NoSuchRegister)?;
                if !reg.is_writable() {
                    return Err(Refusal::ReadOnlyRegister);
                }
                let bits = reg.writable_bits();
                guest
                    .regs
                    .set(reg, guest.regs.get(reg) & !bits | value & bits);
            }
            Request::FastPaths { on } => {
                self.guest
                    .as_mut()
                    .ok_or(Refusal::NotInitialized)?
                    .fast_paths = on;
            }
        }
        Ok(bytes.len())
    }

    /// Answer one `read()` into a buffer of `buf_len` bytes: the register GETREG asked for, or
    /// else permission to run the guest.
    pub fn read<C: Caller<Owner = O>>(
        &mut self,
        caller: &C,
        buf_len: usize,
    ) -> Result<ReadAction<'_, O>, Refusal> {
        let guest = self.guest.as_mut().ok_or(Refusal::NotInitialized)?;
        if !caller.is(&guest.owner) {
            return Err(Refusal::NotOwner);
        }
        if let Some(reg) = guest.pending_read {
            if buf_len < 8 {
                return Err(Refusal::ShortRead);
            }
            guest.pending_read = None;
            return Ok(ReadAction::Register(guest.regs.get(reg)));
        }
        // Any exit must fit: a record the launcher cannot take would be lost.
        if buf_len < EXIT_MAX_BYTES {
            return Err(Refusal::ShortRead);
        }
        Ok(ReadAction::Run(guest))
    }

    /// The guest's owner, once INITIALIZE has succeeded.
    pub fn owner(&self) -> Option<&O> {
        self.guest.as_ref().map(|g| &g.owner)
    }
}

/// Check every field of INITIALIZE; see [`Initialize`] for what each means.
///
/// The launcher is trusted no more than the guest: these checks are what stands between a
/// bogus INITIALIZE and the host walking, mapping and pinning memory that is not guest RAM.
fn check_initialize(config: &Initialize, user: &impl UserMemory) -> Result<(), Refusal> {
    let page_aligned = |x: u64| x % PAGE_SIZE == 0;
    if config.pfn_limit == 0
        || !page_aligned(config.base)
        || !page_aligned(config.cr3)
        || !page_aligned(config.boot_params)
    {
        return Err(Refusal::Misaligned);
    }
    if config.pfn_limit > MAX_GUEST_PAGES
        || config.device_limit > MAX_GUEST_PAGES
        || config.device_limit < config.pfn_limit
    {
        return Err(Refusal::Overflow);
    }
    // device_limit <= MAX_GUEST_PAGES, so the size cannot overflow; the end can.
    let guest_end = config.base.checked_add(config.device_limit * PAGE_SIZE);
    if !matches!(guest_end, Some(end) if end <= USER_SPACE_END) {
        return Err(Refusal::Overflow);
    }
    let ram_bytes = config.pfn_limit * PAGE_SIZE;
    if config.cr3 >= ram_bytes || config.boot_params >= ram_bytes {
        return Err(Refusal::OutsideRam);
    }
    let ram = GuestRamView {
        user,
        base: config.base,
        ram_bytes,
    };
    match pagewalk::translate(&ram, ram_bytes, config.cr3, config.start_ip)? {
        Some(gpa) if gpa < ram_bytes => Ok(()),
        _ => Err(Refusal::OutsideRam),
    }
}

/// The registers a guest starts with: at its entry point, at CPL 1 (the selectors' RPL), with
/// RSI pointing at boot_params as Linux's 64-bit boot protocol expects.
fn initial_regs(config: &Initialize) -> Regs {
    let mut regs = Regs::default();
    regs.set(Reg::Rip, config.start_ip);
    regs.set(Reg::Rsi, config.boot_params);
    regs.set(Reg::Cs, GUEST_KERNEL_CS);
    regs.set(Reg::Ss, GUEST_KERNEL_SS);
    regs.set(Reg::Rflags, GUEST_INITIAL_RFLAGS);
    regs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pagewalk::tests::FakeRam;
    use core::cell::Cell;

    const BASE: u64 = 0x7f00_0000_0000;
    const RAM_PAGES: u64 = 1024;

    /// The launcher's address space: guest RAM (4 MiB) at BASE, nothing else mapped.
    struct FakeUser(FakeRam);

    impl UserMemory for FakeUser {
        fn read_u64(&self, addr: u64) -> Result<u64, Refusal> {
            let gpa = addr.checked_sub(BASE).ok_or(Refusal::Fault)?;
            self.0.read_u64(gpa)
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
}
