// SPDX-License-Identifier: GPL-2.0
//! The Switcher's pages: allocated and filled once at module load, mapped into launchers.
//!
//! At load, lg.ko allocates the window's pages (`src/layout.rs` draws them), copies the
//! Switcher's text (`switcher/switcher.S`) into the text pages, writes the IDT that leads every
//! vector into it, and gives each host CPU its GDT and TSS. It also builds the host's view of
//! the window: one PUD, PMD and page table mapping every page, text read-only and executable,
//! the rest no-execute. That view is hooked into PGD slot 256 of each launcher's address space
//! while it has a guest (`install`), because the switch runs in the launcher's context and its
//! code must be mapped where it is about to change CR3.
//!
//! Guests see a narrower view, built per guest by `shadow_tables.rs`.

use crate::abi::data::SWITCHER_WINDOW_START;
use crate::abi::paging::{PTE_ACCESSED, PTE_DIRTY, PTE_NO_EXEC, PTE_PRESENT, PTE_WRITE};
use crate::descriptors;
use crate::fast_syscall::Armed;
use crate::host_cpu;
use crate::layout::*;
use crate::lg_bindings;
use core::sync::atomic::{AtomicU64, Ordering};
use kernel::{bindings, new_mutex, prelude::*, sync::Mutex};

/// One zeroed kernel page, freed on drop.
///
/// # Invariants
///
/// `addr` is the direct-map address of a page from `get_zeroed_page` that this value owns.
pub(crate) struct KernelPage {
    addr: usize,
}

impl KernelPage {
    /// A page of the module's own (the Switcher's), allocated at load.
    pub(crate) fn new() -> Result<KernelPage> {
        Self::with_flags(bindings::GFP_KERNEL)
    }

    /// A page spent on one guest's behalf (its shadow tables), charged to the launcher's memory
    /// cgroup as KVM charges its page tables: a guest in a container stays within its limits.
    pub(crate) fn for_guest() -> Result<KernelPage> {
        Self::with_flags(bindings::GFP_KERNEL_ACCOUNT)
    }

    fn with_flags(flags: bindings::gfp_t) -> Result<KernelPage> {
        // SAFETY: Any GFP_KERNEL(_ACCOUNT) allocation may be made from process context, where
        // lg.ko always allocates.
        let addr = unsafe { bindings::get_zeroed_page_noprof(flags) } as usize;
        if addr == 0 {
            return Err(ENOMEM);
        }
        // INVARIANT: a fresh page, ours until drop.
        Ok(KernelPage { addr })
    }

    /// Its direct-map address.
    pub(crate) fn addr(&self) -> usize {
        self.addr
    }

    /// Its physical address.
    pub(crate) fn phys(&self) -> u64 {
        // SAFETY: `addr` is a direct-map address (type invariant), which __pa translates.
        unsafe { lg_bindings::lg_pa(self.addr as *const core::ffi::c_void) as u64 }
    }

    /// The page as 512 entries (for page tables).
    pub(crate) fn entries(&mut self) -> &mut [u64; 512] {
        // SAFETY: The page is ours, 4 KiB, page-aligned, and `&mut self` makes this borrow
        // exclusive on the Rust side. (The CPU may read it as a page table, never write it:
        // every entry we write has accessed and dirty preset.)
        unsafe { &mut *(self.addr as *mut [u64; 512]) }
    }

    /// Copy `bytes` into the page at `offset`.
    pub(crate) fn write(&mut self, offset: u64, bytes: &[u8]) {
        let offset = offset as usize;
        assert!(offset + bytes.len() <= PAGE as usize);
        // SAFETY: In bounds (checked above) of a page we own; see `entries` for exclusivity.
        unsafe {
            core::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                (self.addr + offset) as *mut u8,
                bytes.len(),
            )
        };
    }
}

impl Drop for KernelPage {
    fn drop(&mut self) {
        // SAFETY: By the type invariant we own this order-0 page.
        unsafe { bindings::free_pages(self.addr as _, 0) };
    }
}

/// EOPNOTSUPP, which 6.12's `kernel::error::code` does not name.
fn not_supported() -> Error {
    Error::from_errno(-(bindings::EOPNOTSUPP as i32))
}

/// Page-table flags of the host's view: kernel-only, never global (a global entry would
/// outlive the launcher's CR3), accessed and dirty preset.
const HOST_TEXT: u64 = PTE_PRESENT | PTE_ACCESSED | PTE_DIRTY;
const HOST_DATA: u64 = PTE_PRESENT | PTE_WRITE | PTE_ACCESSED | PTE_DIRTY | PTE_NO_EXEC;
/// A table entry pointing to a lower table.
pub(crate) const TABLE: u64 = PTE_PRESENT | PTE_WRITE | PTE_ACCESSED | PTE_DIRTY;

/// Which PGD slot the window is.
pub(crate) const WINDOW_PGD_SLOT: usize = 256;

/// The Switcher's pages and the host's view of them.
#[pin_data]
pub(crate) struct Switcher {
    /// Every page of the window, by page index; `None` for guard pages and absent CPUs.
    pages: KVec<Option<KernelPage>>,
    host_pud: KernelPage,
    host_pmd: KernelPage,
    host_pt: KernelPage,
    /// Offset of `switch_to_guest` in the text.
    entry_offset: u64,
    /// Address spaces the window is installed in, and how many guests each has.
    #[pin]
    installs: Mutex<KVec<(usize, usize)>>,
    /// Numbers guests, so a CPU's block knows when another guest takes it over.
    next_guest_id: AtomicU64,
    /// The guest that last ran on each CPU (0: none yet).
    last_guest: [AtomicU64; MAX_CPUS as usize],
    /// The window address of the trap stubs (256 of them, 16 bytes apart).
    stubs: u64,
    /// Whether guests may have direct traps for `int $0x80`: only if the host reserves that
    /// vector from its device interrupts (docs/traps.md).
    direct_traps: bool,
}

// SAFETY: After construction the pages are only written by the CPU that runs a guest on its
// own block (with interrupts off) or under `installs`' lock; the raw pointers inside
// `KernelPage` are direct-map addresses, valid on every CPU.
unsafe impl Send for Switcher {}
// SAFETY: As for Send.
unsafe impl Sync for Switcher {}

impl Switcher {
    /// Allocate and fill the window. Refuses hosts lg.ko cannot protect itself on, or whose
    /// CPU lacks what guests need (src/host_cpu.rs).
    pub(crate) fn new() -> Result<Pin<KBox<Switcher>>> {
        // SAFETY: reading CR4 has no side effects.
        let cr4 = unsafe { lg_bindings::lg_read_cr4() } as u64;
        if let Some(why) = host_cpu::cr4_refusal(cr4) {
            pr_err!("cannot run guests on a host {}\n", why);
            return Err(not_supported());
        }
        // SAFETY: each reads a CPU feature or platform attribute fixed at boot.
        let (pti, encrypted, lam) = unsafe {
            (
                lg_bindings::lg_host_has_pti(),
                lg_bindings::lg_host_encrypts_memory(),
                lg_bindings::lg_host_has_lam(),
            )
        };
        for (refused, what) in [
            (
                pti,
                "page-table isolation (PTI): the Switcher is mapped in one page table per address space",
            ),
            (
                encrypted,
                "memory encryption (SME, SEV or TDX): lg.ko's physical addresses would lack the encryption bit, and the host's CR3 has it",
            ),
            (
                lam,
                "linear address masking (LAM): a launcher's CR3 could carry bits the Switcher cannot park",
            ),
        ] {
            if refused {
                pr_err!("cannot run guests on a host with {}\n", what);
                return Err(not_supported());
            }
        }
        // The Switcher notes NMIs that interrupt it in MSR_TSC_AUX, which exists when the CPU
        // has RDTSCP (CPUID 0x80000001, EDX bit 27).
        let rdtscp = core::arch::x86_64::__cpuid(0x8000_0001).edx & (1 << 27) != 0;
        if !rdtscp {
            pr_err!("cannot run guests on a CPU without RDTSCP (its TSC_AUX register is needed)\n");
            return Err(not_supported());
        }
        // SAFETY: reads a kernel variable fixed at boot.
        let cpus = unsafe { lg_bindings::lg_nr_cpu_ids() } as u64;
        if cpus > MAX_CPUS {
            pr_err!(
                "cannot run guests on more than {} CPUs (this host has {})\n",
                MAX_CPUS,
                cpus
            );
            return Err(not_supported());
        }
        // SAFETY: lg_switcher_offsets is a constant table in switcher.S, and lg_switcher_start
        // and lg_switcher_end bound the Switcher's text there, in lg.ko's read-only data.
        let (offsets, text) = unsafe {
            let start = lg_bindings::lg_switcher_start.as_ptr();
            let end = lg_bindings::lg_switcher_end.as_ptr();
            let text = core::slice::from_raw_parts(start, end.offset_from(start) as usize);
            (&lg_bindings::lg_switcher_offsets, text)
        };
        // The layout's numbers cannot disagree (switcher.S includes them from switcher/layout.h,
        // generated from src/layout.rs: src/layout_header.rs), but the text's size is known only
        // once it is assembled, and the assembler cannot check it: its jumps are sized last.
        if text.len() as u64 > TEXT_PAGES * PAGE {
            pr_err!(
                "the Switcher's text does not fit its {} pages\n",
                TEXT_PAGES
            );
            return Err(EINVAL);
        }

        let mut pages = KVec::with_capacity(WINDOW_PAGES as usize, GFP_KERNEL)?;
        for _ in 0..WINDOW_PAGES {
            pages.push(None, GFP_KERNEL)?;
        }
        for page in 0..TEXT_PAGES {
            let mut p = KernelPage::new()?;
            let from = (page * PAGE) as usize;
            let to = text.len().min(from + PAGE as usize);
            if from < to {
                p.write(0, &text[from..to]);
            }
            pages[page as usize] = Some(p);
        }
        let window = SWITCHER_WINDOW_START;
        let stubs = window + offsets[1] as u64;
        let gates = descriptors::guest_idt(stubs);
        // SAFETY: lg_idt_base returns this CPU's IDT (the same table on every CPU: Linux has
        // one idt_table), 256 readable 16-byte gates.
        let host_int80_gate = unsafe {
            let idt = lg_bindings::lg_idt_base() as *const u64;
            idt.add(2 * descriptors::DIRECT_TRAP_VECTOR).read_volatile()
        };
        let direct_traps = descriptors::is_user_system_gate(host_int80_gate);
        if !direct_traps {
            pr_info!("int $0x80 from guest user mode exits to the host: this host may use vector 0x80 for a device (CONFIG_IA32_EMULATION is off)\n");
        }
        for cpu in 0..cpus {
            let block = window + block_offset(cpu);
            let first = (block_offset(cpu) / PAGE) as usize;
            for n in 1..=IST_STACKS {
                for page in ist_pages(n) {
                    pages[first + page as usize] = Some(KernelPage::new()?);
                }
            }
            for offset in [BLOCK_REGS, BLOCK_STATE, BLOCK_HOST] {
                pages[first + (offset / PAGE) as usize] = Some(KernelPage::new()?);
            }
            let mut idt = KernelPage::new()?;
            for (vector, gate) in gates.iter().enumerate() {
                idt.write(vector as u64 * 16, &gate[0].to_le_bytes());
                idt.write(vector as u64 * 16 + 8, &gate[1].to_le_bytes());
            }
            pages[first + (BLOCK_IDT / PAGE) as usize] = Some(idt);
            let state = pages[first + (BLOCK_STATE / PAGE) as usize]
                .as_mut()
                .ok_or(EINVAL)?;
            let tss_addr = block + BLOCK_STATE + STATE_TSS;
            for (i, entry) in descriptors::guest_gdt(tss_addr).iter().enumerate() {
                state.write(STATE_GDT + i as u64 * 8, &entry.to_le_bytes());
            }
            // A stack starts at the end of its last page.
            let ist_top = |n: u8| block + ist_pages(n).end * PAGE;
            let rsp0 = block + BLOCK_REGS + PAGE;
            let ist = [1, 2, 3, 4, 5, 6, 7].map(ist_top);
            state.write(STATE_TSS, &descriptors::tss(rsp0, ist));
            let gdt_bytes = crate::abi::boot::GUEST_GDT_ENTRIES * 8;
            state.write(
                STATE_GDTR,
                &descriptors::pseudo_descriptor(block + BLOCK_STATE + STATE_GDT, gdt_bytes),
            );
            state.write(
                STATE_IDTR,
                &descriptors::pseudo_descriptor(block + BLOCK_IDT, 4096),
            );
        }

        let (mut host_pud, mut host_pmd, mut host_pt) =
            (KernelPage::new()?, KernelPage::new()?, KernelPage::new()?);
        for (index, page) in pages.iter().enumerate() {
            if let Some(page) = page {
                let flags = if (index as u64) < TEXT_PAGES {
                    HOST_TEXT
                } else {
                    HOST_DATA
                };
                host_pt.entries()[index] = page.phys() | flags;
            }
        }
        host_pmd.entries()[0] = host_pt.phys() | TABLE;
        host_pud.entries()[0] = host_pmd.phys() | TABLE;

        KBox::pin_init(
            pin_init!(Switcher {
                pages,
                host_pud,
                host_pmd,
                host_pt,
                entry_offset: offsets[0] as u64,
                installs <- new_mutex!(KVec::new()),
                next_guest_id: AtomicU64::new(1),
                last_guest: [const { AtomicU64::new(0) }; MAX_CPUS as usize],
                stubs,
                direct_traps,
            }),
            GFP_KERNEL,
        )
    }

    /// The window address of `switch_to_guest`.
    pub(crate) fn entry(&self) -> u64 {
        SWITCHER_WINDOW_START + self.entry_offset
    }

    /// The page at window page index `index`, if it exists.
    pub(crate) fn page(&self, index: u64) -> Option<&KernelPage> {
        self.pages.get(index as usize)?.as_ref()
    }

    /// A number no other guest of this module has.
    pub(crate) fn new_guest_id(&self) -> u64 {
        self.next_guest_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Give CPU `cpu`'s block to guest `guest_id`. The regs page and the Switcher's IST stacks
    /// are the guest's to read and write, so when they pass from one guest to another they are
    /// wiped first: no guest sees what another left there (registers, fault addresses).
    /// Called with interrupts off, on `cpu`.
    pub(crate) fn take_block(&self, cpu: u64, guest_id: u64) {
        if self.last_guest[cpu as usize].swap(guest_id, Ordering::Relaxed) == guest_id {
            return;
        }
        let first = (block_offset(cpu) / PAGE) as usize;
        let stacks = (FIRST_SWITCHER_IST..=IST_STACKS).flat_map(ist_pages);
        let pages = Iterator::chain(stacks, [BLOCK_REGS / PAGE]).map(|page| first + page as usize);
        for index in pages {
            if let Some(page) = self.pages.get(index).and_then(Option::as_ref) {
                // SAFETY: A page of this CPU's block, which only this CPU uses, with interrupts
                // off; 4096 bytes at its direct-map address.
                unsafe { core::ptr::write_bytes(page.addr() as *mut u8, 0, PAGE as usize) };
            }
        }
    }

    /// Aim CPU `cpu`'s gate for the system-call vector at `direct` (the guest handler of a
    /// direct trap, with `kernel_stack` for TSS.RSP1), or back at the Switcher's stub. Called
    /// with interrupts off, on `cpu`, before every entry: the gate is only ever the running
    /// guest's.
    pub(crate) fn set_syscall_gate(&self, cpu: u64, direct: Option<u64>, kernel_stack: u64) {
        let gate = match direct.filter(|_| self.direct_traps) {
            Some(handler) => descriptors::direct_trap_gate(handler),
            None => descriptors::stub_gate(self.stubs, descriptors::DIRECT_TRAP_VECTOR),
        };
        let idt = self.block_page(cpu, BLOCK_IDT) as *mut [u64; 2];
        let rsp1 = self.block_page(cpu, BLOCK_STATE) + (STATE_TSS + descriptors::TSS_RSP1) as usize;
        // SAFETY: This CPU's IDT and state pages, allocated at load for every possible CPU;
        // with interrupts off nothing else on this CPU uses them, and other CPUs use their own.
        // RSP1 is not 8-byte aligned in the TSS (offset 12).
        unsafe {
            idt.add(descriptors::DIRECT_TRAP_VECTOR).write(gate);
            (rsp1 as *mut u64).write_unaligned(kernel_stack);
        }
    }

    /// Arm the Switcher's fast path for a user `syscall` on CPU `cpu` for the coming trip, or
    /// disarm it (src/fast_syscall.rs).
    pub(crate) fn set_fast_syscall(&self, cpu: u64, armed: Option<Armed>) {
        let words = match armed {
            Some(a) => [a.vector, a.handler, a.frame_at, a.clears_if as u64],
            None => [0; 4],
        };
        let state = self.block_page(cpu, BLOCK_STATE) + STATE_FAST_VECTOR as usize;
        // SAFETY: This CPU's state page, allocated at load for every possible CPU, with room
        // for the four words (src/layout.rs checks); with interrupts off nothing else on this
        // CPU uses it, and other CPUs use their own.
        unsafe { core::ptr::copy_nonoverlapping(words.as_ptr(), state as *mut u64, words.len()) };
    }

    /// The direct-map address of a page of CPU `cpu`'s block (`offset` is a `BLOCK_*`).
    pub(crate) fn block_page(&self, cpu: u64, offset: u64) -> usize {
        let index = (block_offset(cpu) + offset) / PAGE;
        self.page(index).map(KernelPage::addr).unwrap_or(0)
    }

    /// Hook the host's view of the window into `mm`'s PGD (slot 256), for one more guest.
    ///
    /// # Safety
    ///
    /// `mm` must be a live mm (its owner holds an mm_users reference) until the matching
    /// `uninstall`.
    pub(crate) unsafe fn install(&self, mm: *mut bindings::mm_struct) -> Result {
        let mut installs = self.installs.lock();
        if let Some(entry) = installs
            .iter_mut()
            .find(|(m, users)| *m == mm as usize && *users > 0)
        {
            entry.1 += 1;
            return Ok(());
        }
        // A slot of an address space that has no guests left is reused, so the list stays as
        // long as the most address spaces that ever had guests at once.
        match installs.iter_mut().find(|(_, users)| *users == 0) {
            Some(free) => *free = (mm as usize, 1),
            None => installs.push((mm as usize, 1), GFP_KERNEL)?,
        }
        // SAFETY: `mm` is live (caller's contract) and so is its PGD page. Slot 256 is below
        // PAGE_OFFSET's slot, so the kernel never fills or copies it (pgd_ctor copies the slots
        // from pgd_index(PAGE_OFFSET) up): it is ours. A 64-bit store is atomic on x86.
        unsafe { set_window_slot(mm, self.host_pud.phys() | TABLE) };
        Ok(())
    }

    /// Undo one `install`; the last one clears the PGD slot.
    ///
    /// # Safety
    ///
    /// `mm` must be live and have been passed to a successful `install`.
    pub(crate) unsafe fn uninstall(&self, mm: *mut bindings::mm_struct) {
        let mut installs = self.installs.lock();
        let Some(entry) = installs
            .iter_mut()
            .find(|(m, users)| *m == mm as usize && *users > 0)
        else {
            return;
        };
        entry.1 -= 1;
        if entry.1 == 0 {
            // SAFETY: As in install. Stale TLB entries for the window may remain on CPUs that
            // ran this mm; they point at pages that live until the module unloads, and nothing
            // but the Switcher ever uses those addresses.
            unsafe { set_window_slot(mm, 0) };
        }
    }
}

/// Write PGD slot 256 of `mm`.
///
/// # Safety
///
/// `mm` must be live.
unsafe fn set_window_slot(mm: *mut bindings::mm_struct, value: u64) {
    // SAFETY: `mm` is live, so its PGD (a full page of 512 entries) is too.
    unsafe { (*lg_bindings::lg_mm_pgd(mm).add(WINDOW_PGD_SLOT)).pgd = value as _ };
}
