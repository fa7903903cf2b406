//! Guest memory: one mapping in the launcher that *is* the guest's physical memory.
//!
//! This is the first thing the launcher builds: every later step (kernel, boot_params, page
//! tables) writes into it through vm-memory's bounds-checked accessors, and INITIALIZE hands its
//! address to lg.ko. This file owns the mapping and nothing else; it touches no guest contents.
//!
//! Guest-physical address `pa` lives at launcher address `base() + pa`, as in lguest: the host
//! reaches guest memory through the launcher's own address space, so it can never reach beyond
//! what the launcher itself could touch. The layout of the mapping is
//!
//! ```text
//!   | guard | RAM: gpa 0 .. ram_pages*4K | device pages | guard |
//!           ^ base()                                     ^ base() + device_limit()*4K
//! ```
//!
//! The guard pages are `PROT_NONE`: an off-by-one in the launcher (or a host bug that trusts a
//! guest address one page too far) faults at once instead of scribbling on whatever the
//! allocator put next to guest memory.

use std::ptr::NonNull;
use std::sync::Arc;

use anyhow::{bail, Context};
use lguest_abi::dev::MAX_GUEST_PAGES;
use lguest_abi::PAGE_SIZE;
use memmap2::{MmapMut, MmapOptions};
use nix::sys::mman::{mprotect, ProtFlags};
use vm_memory::{GuestRegionMmap, MmapRegion};

pub use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// The guest's physical memory, mapped in the launcher.
///
/// # Invariants
///
/// - `mapping` is `Some` until `drop`; it is `ram_pages + device_pages + 2` pages long, and its
///   first and last pages are `PROT_NONE`.
/// - `ram_region` describes the RAM part of `mapping` (from its second page, `ram_pages` pages
///   long); `memory` holds it as its only region, at guest address 0. Every clone of `memory`
///   (or of anything obtained from it) shares this `Arc`.
pub struct GuestRam {
    /// vm-memory's view of RAM. Declared first so that it is dropped first; `drop` also
    /// replaces it explicitly before deciding whether the mapping may go.
    memory: GuestMemoryMmap,
    ram_region: Arc<MmapRegion>,
    ram_pages: u64,
    device_pages: u64,
    /// The launcher address of guest-physical 0.
    base: u64,
    /// The whole mapping, guards included, kept only to be unmapped: it is never dereferenced
    /// after `new`, so guest memory is reached only through `memory` and `base`. `Option` only
    /// so `drop` can decide to leak it.
    mapping: Option<MmapMut>,
}

impl GuestRam {
    /// Maps `ram_bytes` of zeroed guest RAM followed by `device_pages` device pages.
    ///
    /// `ram_bytes` must be a non-zero multiple of the page size and, with the device pages, no
    /// more than the ABI's [`MAX_GUEST_PAGES`].
    pub fn new(ram_bytes: u64, device_pages: u64) -> anyhow::Result<GuestRam> {
        if ram_bytes == 0 || !ram_bytes.is_multiple_of(PAGE_SIZE) {
            bail!("guest RAM of {ram_bytes} bytes is not a non-zero multiple of {PAGE_SIZE}");
        }
        let ram_pages = ram_bytes / PAGE_SIZE;
        match ram_pages.checked_add(device_pages) {
            Some(pages) if pages <= MAX_GUEST_PAGES => {}
            _ => bail!(
                "{ram_pages} RAM pages and {device_pages} device pages exceed the \
                 {MAX_GUEST_PAGES} pages one guest may have"
            ),
        }
        let page = to_usize(PAGE_SIZE)?;
        let ram_len = to_usize(ram_bytes)?;
        let total_len = to_usize((ram_pages + device_pages + 2) * PAGE_SIZE)?;

        // MAP_NORESERVE: a guest's RAM is mostly never touched; asking the kernel to reserve swap
        // for all of it would make a large guest fail to start under strict overcommit.
        let mut mapping = MmapOptions::new()
            .len(total_len)
            .no_reserve_swap()
            .map_anon()
            .with_context(|| format!("cannot map {total_len} bytes of guest memory"))?;
        let start = NonNull::new(mapping.as_mut_ptr())
            .context("the kernel mapped guest memory at address 0")?;

        for guard_offset in [0, total_len - page] {
            // SAFETY: `guard_offset` is the first or the last page of the mapping we just
            // created and own, so the pointer stays inside it. No Rust reference to those pages
            // exists or will ever be made (only the RAM between them is handed out), so making
            // them inaccessible cannot invalidate one.
            unsafe {
                let guard = start.add(guard_offset).cast();
                mprotect(guard, page, ProtFlags::PROT_NONE).context("cannot protect guard page")?;
            }
        }

        // SAFETY: the second page of the mapping is inside it (the mapping has at least three
        // pages).
        let ram_start = unsafe { start.add(page) };
        // SAFETY: `ram_start .. ram_start + ram_len` lies inside our read-write anonymous mapping
        // (its pages 1..=ram_pages), and prot/flags are the ones memmap2 used to create it.
        // vm-memory does not unmap a raw region; the mapping outlives every user of the region
        // because `drop` unmaps it only once no clone of `ram_region` is left.
        let region = unsafe {
            MmapRegion::build_raw(
                ram_start.as_ptr(),
                ram_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            )
        }
        .context("cannot describe guest RAM to vm-memory")?;
        let ram_region = Arc::new(region);
        let guest_region = GuestRegionMmap::with_arc(Arc::clone(&ram_region), GuestAddress(0))
            .context("guest RAM does not fit in the guest address space")?;
        let memory = GuestMemoryMmap::from_regions(vec![guest_region])
            .context("cannot build the guest memory map")?;

        // INVARIANT: the mapping is `ram_pages + device_pages + 2` pages with guards at both
        // ends, and `memory`'s one region is `ram_region`, pages 1..=ram_pages of it, at gpa 0.
        Ok(GuestRam {
            memory,
            ram_region,
            ram_pages,
            device_pages,
            base: ram_start.as_ptr() as u64,
            mapping: Some(mapping),
        })
    }

    /// The launcher (host) virtual address of guest-physical address 0.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Guest RAM, for bounds-checked reads and writes at guest-physical addresses.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// Pages of RAM: guest-physical `0 .. ram_pages() * PAGE_SIZE`.
    pub fn ram_pages(&self) -> u64 {
        self.ram_pages
    }

    /// The first page frame number past the device pages (INITIALIZE's `device_limit`).
    pub fn device_limit(&self) -> u64 {
        self.ram_pages + self.device_pages
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // Let go of our own view of RAM first.
        self.memory = GuestMemoryMmap::default();
        let mapping = self.mapping.take();
        // `memory()` hands out a `GuestMemoryMmap`, which is `Clone`; a clone kept past this
        // point still points into the mapping. If any is left (`get_mut` fails while another
        // `Arc` or `Weak` exists), leak the mapping rather than unmap memory still in use.
        // The devices' input threads hold such a view until the process ends, so this is the
        // usual case when a launcher with devices returns, not a sign of trouble.
        if Arc::get_mut(&mut self.ram_region).is_none() {
            log::debug!("guest memory is still referenced; leaving it mapped");
            std::mem::forget(mapping);
        }
    }
}

fn to_usize(bytes: u64) -> anyhow::Result<usize> {
    usize::try_from(bytes)
        .with_context(|| format!("{bytes} bytes do not fit in this address space"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryBackend;

    #[test]
    fn ram_is_zeroed_and_addressed_from_zero() {
        let ram = GuestRam::new(16 * PAGE_SIZE, 2).unwrap();
        assert_eq!(ram.ram_pages(), 16);
        assert_eq!(ram.device_limit(), 18);
        assert_eq!(ram.base() % PAGE_SIZE, 0);
        let mem = ram.memory();
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(mem.last_addr(), GuestAddress(16 * PAGE_SIZE - 1));
        assert_eq!(mem.read_obj::<u64>(GuestAddress(0)).unwrap(), 0);
        mem.write_obj(0x1234_5678u32, GuestAddress(0x10)).unwrap();
        // The launcher address of a guest address is base + gpa.
        // SAFETY: base() + 0x10 is inside RAM, which lives as long as `ram`, and is aligned.
        let seen = unsafe { std::ptr::read((ram.base() + 0x10) as *const u32) };
        assert_eq!(seen, 0x1234_5678);
    }

    #[test]
    fn accesses_past_ram_are_refused() {
        let ram = GuestRam::new(4 * PAGE_SIZE, 1).unwrap();
        assert!(ram
            .memory()
            .write_obj(0u64, GuestAddress(4 * PAGE_SIZE - 4))
            .is_err());
        assert!(ram
            .memory()
            .read_obj::<u8>(GuestAddress(4 * PAGE_SIZE))
            .is_err());
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(GuestRam::new(0, 0).is_err());
        assert!(GuestRam::new(PAGE_SIZE + 1, 0).is_err());
        assert!(GuestRam::new(MAX_GUEST_PAGES * PAGE_SIZE, 1).is_err());
        assert!(GuestRam::new(PAGE_SIZE, u64::MAX).is_err());
    }

    #[test]
    fn guard_pages_are_inaccessible() {
        let ram = GuestRam::new(2 * PAGE_SIZE, 1).unwrap();
        let below = ram.base() - PAGE_SIZE;
        let above = ram.base() + ram.device_limit() * PAGE_SIZE;
        for addr in [below, above] {
            // /proc/self/maps lists each guard page as a mapping with no permissions ("---p").
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
            let line = maps
                .lines()
                .find(|l| {
                    let range = l.split(' ').next().unwrap();
                    let (lo, hi) = range.split_once('-').unwrap();
                    let lo = u64::from_str_radix(lo, 16).unwrap();
                    let hi = u64::from_str_radix(hi, 16).unwrap();
                    lo <= addr && addr + PAGE_SIZE <= hi
                })
                .unwrap();
            assert!(line.split(' ').nth(1).unwrap().starts_with("---"), "{line}");
        }
    }

    #[test]
    fn a_clone_outliving_the_ram_keeps_it_mapped() {
        let ram = GuestRam::new(PAGE_SIZE, 0).unwrap();
        let clone = ram.memory().clone();
        drop(ram);
        clone.write_obj(7u8, GuestAddress(0)).unwrap();
        assert_eq!(clone.read_obj::<u8>(GuestAddress(0)).unwrap(), 7);
    }
}
