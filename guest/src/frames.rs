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
//!
//! The map, and the count of which frames were never handed out, are bookkeeping that needs no
//! memory but their own: they are guest-core's (`guest-core/src/frames.rs`), unit-tested on the
//! host, where running out of RAM or a loader's range past the top of the address space is a
//! test away. What is here needs the frames themselves: zeroing them, the free list in them,
//! and a lock with interrupts off.

use core::cell::UnsafeCell;

pub use guest_core::frames::MemoryMap;
use guest_core::frames::UntouchedFrames;
use lguest_abi::PAGE_SIZE;
use paravirt_ops::irq;

/// The allocator: the frames never handed out (guest-core keeps that count), and the frames
/// given back.
struct Allocator {
    untouched: UntouchedFrames,
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
    untouched: UntouchedFrames::new(MemoryMap::new()),
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
    let untouched = UntouchedFrames::new(map.above(floor));
    with_allocator(|a| a.untouched = untouched);
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
        a.untouched.take(1)
    })?;
    // SAFETY: the frame is RAM, identity-mapped, and now ours alone.
    unsafe { core::ptr::write_bytes(frame as *mut u8, 0, PAGE_SIZE as usize) };
    Some(frame)
}

/// `pages` fresh zeroed frames in a row, physically contiguous: the first one's address, or
/// `None` when no region has that many left (or for 0 pages). Each may later be given back on
/// its own.
pub fn alloc_contiguous(pages: usize) -> Option<u64> {
    if pages == 1 {
        return alloc_zeroed();
    }
    let start = with_allocator(|a| a.untouched.take(pages as u64))?;
    let bytes = pages as u64 * PAGE_SIZE;
    // SAFETY: the frames are RAM, identity-mapped, and now ours alone.
    unsafe { core::ptr::write_bytes(start as *mut u8, 0, bytes as usize) };
    Some(start)
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
    with_allocator(|a| a.untouched.frames_left() + a.freed_count)
}
