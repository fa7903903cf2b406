//! One open `/dev/lguest`: how the host answers each request, minus the hardware.
//!
//! This is the decision half of lg.ko's `write()` and `read()`: it decodes a request, checks
//! who is asking and whether every value makes sense, and changes the guest only when the whole
//! request is good (a refused request changes nothing). The kernel half (`lg-module/file_ops.rs`)
//! copies bytes from user space, holds the lock, and turns a [`Refusal`] into an errno.
//!
//! Two things the kernel provides are traits here, so the tests can play the kernel:
//! [`Caller`] (who is calling, and how to make them the guest's owner) and [`UserMemory`] (the
//! launcher's memory, where guest RAM lives, reached through src/guest_ram.rs).

use crate::abi::boot::{GUEST_INITIAL_RFLAGS, GUEST_KERNEL_CS, GUEST_KERNEL_SS};
use crate::abi::dev::{Initialize, Refusal, Request, MAX_GUEST_PAGES};
use crate::abi::exit::{ExitRecord, EXIT_MAX_BYTES};
use crate::abi::hcall::IRQS;
use crate::abi::regs::{Reg, Regs};
use crate::abi::PAGE_SIZE;
use crate::address::{GuestPhys, LauncherAddr};
pub use crate::guest_ram::UserMemory;
use crate::guest_ram::{LauncherRam, Phys};
use crate::interrupts::GuestGate;
use crate::pagewalk;

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

/// The first address above user space on x86-64 with 4-level paging (the host kernel is built
/// without 5-level paging: docs/building.md). Guest memory must lie entirely below it.
pub const USER_SPACE_END: u64 = 0x7fff_ffff_f000;

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

    /// Where the launcher mapped guest-physical `gpa`.
    pub fn launcher_addr(&self, gpa: GuestPhys) -> LauncherAddr {
        LauncherAddr(self.config.base + gpa.0)
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
    let ram = LauncherRam {
        user,
        base: config.base,
        ram_bytes,
    };
    match pagewalk::translate(&Phys(&ram), ram_bytes, config.cr3, config.start_ip)? {
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

// By path: lg.ko includes this file by path, and rustfmt then looks for its modules beside it.
#[cfg(test)]
#[path = "session/tests.rs"]
mod tests;
