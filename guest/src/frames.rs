//! 5. The memory map, and a page-frame allocator over it.
//!
//! Both boot paths hand [`init`] a [`MemoryMap`] of the RAM the loader reported (PVH's memmap,
//! or the launcher's e820 table). The allocator hands out 4 KiB frames from it, zeroed, bottom
//! up, skipping everything below the kernel's end: the first MiB holds the firmware's leftovers
//! natively and boot_params and the command line under lguest, and the kernel sits at 1 MiB.
//! Frames given back ([`free`]) go on a free list threaded through the frames themselves (each
//! holds the address of the next), and are handed out again first. A device's queues need
//! several frames in a row ([`alloc_contiguous`], for virtio/mod.rs): those come from the untouched
//! part of a region, never from the free list, whose frames lie anywhere.
//!
//! Frames are reached through the identity map (virtual == physical), which both worlds give
//! the kernel: the boot loader's page tables at first, then its own (paging.rs).

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

/// The allocator: the free part of each region, a cursor, and the frames given back.
struct Allocator {
    free: MemoryMap,
    /// The region the next frame comes from, and the frame.
    region: usize,
    next: u64,
    /// The first frame of the free list (0: empty), and how many it holds.
    freed: u64,
    freed_count: u64,
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
    freed: 0,
    freed_count: 0,
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
        if a.freed != 0 {
            let frame = a.freed;
            // SAFETY: a frame on the free list, identity-mapped, whose first word `free` wrote.
            a.freed = unsafe { (frame as *const u64).read() };
            a.freed_count -= 1;
            return Some(frame);
        }
        a.take(PAGE_SIZE)
    })?;
    // SAFETY: the frame is RAM, identity-mapped, and now ours alone.
    unsafe { core::ptr::write_bytes(frame as *mut u8, 0, PAGE_SIZE as usize) };
    Some(frame)
}

/// `pages` fresh zeroed frames in a row, physically contiguous: the first one's address, or
/// `None` when no region has that many left. Each may later be given back on its own.
pub fn alloc_contiguous(pages: usize) -> Option<u64> {
    if pages == 1 {
        return alloc_zeroed();
    }
    let bytes = pages as u64 * PAGE_SIZE;
    let start = with_allocator(|a| a.take(bytes))?;
    // SAFETY: the frames are RAM, identity-mapped, and now ours alone.
    unsafe { core::ptr::write_bytes(start as *mut u8, 0, bytes as usize) };
    Some(start)
}

impl Allocator {
    /// `bytes` (whole pages) from the untouched part of the regions, moving on to the next
    /// region when this one has not that much left (its tail is then never handed out).
    fn take(&mut self, bytes: u64) -> Option<u64> {
        while let Some(r) = self.free.regions().get(self.region).copied() {
            if self.next + bytes <= r.end {
                self.next += bytes;
                return Some(self.next - bytes);
            }
            self.region += 1;
            self.next = self.free.regions().get(self.region).map_or(0, |r| r.start);
        }
        None
    }
}

/// Gives `frame` back.
///
/// # Safety
///
/// `frame` came from [`alloc_zeroed`], and nothing uses it any more: no page-table entry maps it
/// (and no TLB, nor under lguest any shadow page table, remembers one that did).
pub unsafe fn free(frame: u64) {
    with_allocator(|a| {
        // SAFETY: the frame is ours again (the caller's promise), RAM, identity-mapped.
        unsafe { (frame as *mut u64).write(a.freed) };
        a.freed = frame;
        a.freed_count += 1;
    });
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
        (rest_of_current + later) / PAGE_SIZE + a.freed_count
    })
}
