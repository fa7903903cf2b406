//! 5. The memory map, and a page-frame allocator over it.
//!
//! Both boot paths hand [`init`] a [`MemoryMap`] of the RAM the loader reported (PVH's memmap,
//! or the launcher's e820 table). The allocator hands out 4 KiB frames from it, zeroed, bottom
//! up, skipping everything below the kernel's end: the first MiB holds the firmware's leftovers
//! natively and boot_params and the command line under lguest, and the kernel sits at 1 MiB.
//! It never takes a frame back: nothing frees memory yet (user tasks will, issue #4, and a free
//! list threaded through the freed frames is all it will take).
//!
//! Frames are reached through the identity map (virtual == physical), which both worlds give
//! the kernel: its own page tables natively (paging.rs), the launcher's under lguest.

use core::cell::UnsafeCell;

use lguest_abi::PAGE_SIZE;
use paravirt_ops::irq;

/// One range of RAM, `start..end`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Region {
    pub start: u64,
    pub end: u64,
}

/// The most RAM ranges kept; QEMU and the launcher report two or three.
const MAX_REGIONS: usize = 32;

/// The RAM a boot loader reported.
pub struct MemoryMap {
    regions: [Region; MAX_REGIONS],
    len: usize,
}

impl MemoryMap {
    pub const fn new() -> MemoryMap {
        MemoryMap {
            regions: [Region { start: 0, end: 0 }; MAX_REGIONS],
            len: 0,
        }
    }

    /// Adds `len` bytes of RAM at `start`, trimmed to whole pages; beyond MAX_REGIONS, ignored.
    pub fn add(&mut self, start: u64, len: u64) {
        let region = Region {
            start: start.next_multiple_of(PAGE_SIZE),
            end: (start + len) & !(PAGE_SIZE - 1),
        };
        if region.start < region.end && self.len < MAX_REGIONS {
            self.regions[self.len] = region;
            self.len += 1;
        }
    }

    pub fn regions(&self) -> &[Region] {
        &self.regions[..self.len]
    }

    /// Bytes of RAM.
    pub fn total(&self) -> u64 {
        self.regions().iter().map(|r| r.end - r.start).sum()
    }

    /// The first address above all RAM.
    pub fn end(&self) -> u64 {
        self.regions().iter().map(|r| r.end).max().unwrap_or(0)
    }
}

/// The allocator: the free part of each region, and a cursor.
struct Allocator {
    free: MemoryMap,
    /// The region the next frame comes from, and the frame.
    region: usize,
    next: u64,
}

/// The allocator behind a cell that only [`with_allocator`] opens, with interrupts off.
struct AllocatorCell(UnsafeCell<Allocator>);

// SAFETY: one CPU, and the cell is opened only by `with_allocator`, with interrupts off, by code
// that does not call back into it: nothing can hold two references at once.
unsafe impl Sync for AllocatorCell {}

static ALLOCATOR: AllocatorCell = AllocatorCell(UnsafeCell::new(Allocator {
    free: MemoryMap::new(),
    region: 0,
    next: 0,
}));

/// Runs `f` on the allocator with interrupts off: Linux's `local_irq_save`/`restore` around a
/// structure an interrupt handler (the page-fault handler, here) may also use.
fn with_allocator<R>(f: impl FnOnce(&mut Allocator) -> R) -> R {
    let flags = irq::irq_save();
    // SAFETY: see AllocatorCell: interrupts are off and `f` does not reenter.
    let result = f(unsafe { &mut *ALLOCATOR.0.get() });
    irq::restore_fl(flags);
    result
}

extern "C" {
    /// The first page-aligned address after the kernel's image and its .bss (linker.ld).
    static __kernel_end: u8;
}

/// Starts the allocator on `map`, minus everything below the kernel's end.
pub fn init(map: &MemoryMap) {
    let floor = (&raw const __kernel_end) as u64;
    with_allocator(|a| {
        for r in map.regions() {
            a.free
                .add(r.start.max(floor), r.end.saturating_sub(r.start.max(floor)));
        }
        a.region = 0;
        a.next = a.free.regions().first().map_or(0, |r| r.start);
    });
}

/// A fresh zeroed 4 KiB frame's physical address, or `None` when RAM is used up.
pub fn alloc_zeroed() -> Option<u64> {
    let frame = with_allocator(|a| {
        while let Some(r) = a.free.regions().get(a.region).copied() {
            if a.next + PAGE_SIZE <= r.end {
                a.next += PAGE_SIZE;
                return Some(a.next - PAGE_SIZE);
            }
            a.region += 1;
            a.next = a.free.regions().get(a.region).map_or(0, |r| r.start);
        }
        None
    })?;
    // SAFETY: the frame is RAM, identity-mapped, and now ours alone.
    unsafe { core::ptr::write_bytes(frame as *mut u8, 0, PAGE_SIZE as usize) };
    Some(frame)
}

/// How many frames are still free.
pub fn free_frames() -> u64 {
    with_allocator(|a| {
        let regions = a.free.regions();
        let rest_of_current = regions.get(a.region).map_or(0, |r| r.end - a.next);
        let later: u64 = regions
            .iter()
            .skip(a.region + 1)
            .map(|r| r.end - r.start)
            .sum();
        (rest_of_current + later) / PAGE_SIZE
    })
}
