//! The memory map, and which of its frames were never handed out.
//!
//! Both boot paths of the teaching guest fill a [`MemoryMap`] with the RAM the loader reported
//! (PVH's memmap, or the launcher's e820 table), trimmed to whole 4 KiB frames. The frame
//! allocator (guest/src/frames.rs) hands frames out bottom up from the part above the kernel
//! ([`MemoryMap::above`]), and [`UntouchedFrames`] is its record of that part: a cursor that
//! only goes up, region after region. What the allocator does besides needs the frames'
//! memory, so it stays in the kernel: zeroing what it hands out, and the list of frames given
//! back, threaded through the frames themselves.

use lguest_abi::PAGE_SIZE;

/// One range of RAM, `start..end`, both page-aligned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    pub end: u64,
}

/// The most RAM ranges kept; QEMU and the launcher report two or three.
pub const MAX_REGIONS: usize = 32;

/// The RAM a boot loader reported.
#[derive(Clone)]
pub struct MemoryMap {
    regions: [Region; MAX_REGIONS],
    len: usize,
}

impl Default for MemoryMap {
    fn default() -> MemoryMap {
        MemoryMap::new()
    }
}

impl MemoryMap {
    pub const fn new() -> MemoryMap {
        MemoryMap {
            regions: [Region { start: 0, end: 0 }; MAX_REGIONS],
            len: 0,
        }
    }

    /// Adds `len` bytes of RAM at `start`, trimmed to whole pages. A range with no whole page
    /// in it is ignored, and so is every range beyond [`MAX_REGIONS`]. The loader's numbers are
    /// not trusted to stay below 2^64: a range running past the top ends at the last page.
    pub fn add(&mut self, start: u64, len: u64) {
        let Some(first) = start.checked_next_multiple_of(PAGE_SIZE) else {
            return;
        };
        let region = Region {
            start: first,
            end: start.saturating_add(len) & !(PAGE_SIZE - 1),
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

    /// The same RAM less everything below `floor` (the kernel's end: what lies below holds the
    /// firmware's or the launcher's boot data, and the kernel itself).
    pub fn above(&self, floor: u64) -> MemoryMap {
        let mut map = MemoryMap::new();
        for r in self.regions() {
            let start = r.start.max(floor);
            map.add(start, r.end.saturating_sub(start));
        }
        map
    }
}

/// The frames of a memory map not handed out yet: everything from a cursor up, the cursor in
/// one region, the regions after it whole. Frames are taken from the cursor, which only goes
/// up; frames given back are the allocator's business, not this cursor's.
pub struct UntouchedFrames {
    map: MemoryMap,
    /// The region the next frame comes from, and the frame.
    region: usize,
    next: u64,
}

impl UntouchedFrames {
    /// Every frame of `map`, the lowest first.
    pub const fn new(map: MemoryMap) -> UntouchedFrames {
        let next = if map.len > 0 { map.regions[0].start } else { 0 };
        UntouchedFrames {
            map,
            region: 0,
            next,
        }
    }

    /// `pages` frames in a row, physically contiguous: the first one's address. When the
    /// current region has not that many left, the cursor moves on to the next region and its
    /// rest is never handed out (a device's queues, the only run longer than a frame, are asked
    /// for early, when little is lost). `None` when no region has room, or for 0 pages.
    pub fn take(&mut self, pages: u64) -> Option<u64> {
        let bytes = pages.checked_mul(PAGE_SIZE).filter(|&b| b > 0)?;
        while let Some(r) = self.map.regions().get(self.region).copied() {
            if self.next.checked_add(bytes).is_some_and(|end| end <= r.end) {
                self.next += bytes;
                return Some(self.next - bytes);
            }
            self.region += 1;
            self.next = self.map.regions().get(self.region).map_or(0, |r| r.start);
        }
        None
    }

    /// How many frames are left.
    pub fn frames_left(&self) -> u64 {
        let regions = self.map.regions();
        let rest_of_current = regions.get(self.region).map_or(0, |r| r.end - self.next);
        let later: u64 = regions
            .iter()
            .skip(self.region + 1)
            .map(|r| r.end - r.start)
            .sum();
        (rest_of_current + later) / PAGE_SIZE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn map(ranges: &[(u64, u64)]) -> MemoryMap {
        let mut map = MemoryMap::new();
        for &(start, len) in ranges {
            map.add(start, len);
        }
        map
    }

    #[test]
    fn ranges_are_trimmed_to_whole_pages() {
        let map = map(&[(0x1001, 0x3000)]);
        assert_eq!(
            map.regions(),
            [Region {
                start: 0x2000,
                end: 0x4000
            }]
        );
        assert_eq!(map.total(), 0x2000);
        assert_eq!(map.end(), 0x4000);
    }

    #[test]
    fn a_range_without_a_whole_page_is_ignored() {
        let map = map(&[(0x1001, 0x1000), (0x5000, 0xfff), (0x9000, 0)]);
        assert!(map.regions().is_empty());
        assert_eq!(map.end(), 0);
    }

    #[test]
    fn a_range_past_the_top_of_the_address_space_ends_at_the_last_page() {
        let map = map(&[(u64::MAX - 0x2fff, 0x10_0000), (u64::MAX - 5, 100)]);
        assert_eq!(
            map.regions(),
            [Region {
                start: u64::MAX - 0x2fff,
                end: u64::MAX - 0xfff
            }]
        );
    }

    #[test]
    fn ranges_beyond_the_most_kept_are_ignored() {
        let mut map = MemoryMap::new();
        for i in 0..MAX_REGIONS as u64 + 3 {
            map.add(i * 2 * MIB, MIB);
        }
        assert_eq!(map.regions().len(), MAX_REGIONS);
        assert_eq!(map.total(), MAX_REGIONS as u64 * MIB);
    }

    #[test]
    fn above_drops_what_lies_below_the_floor() {
        let map = map(&[(0, 640 * 1024), (MIB, 63 * MIB)]).above(3 * MIB + 0x800);
        assert_eq!(
            map.regions(),
            [Region {
                start: 3 * MIB + 0x1000,
                end: 64 * MIB
            }]
        );
    }

    #[test]
    fn frames_come_bottom_up_and_run_out() {
        let mut frames = UntouchedFrames::new(map(&[(0x10000, 0x3000)]));
        assert_eq!(frames.frames_left(), 3);
        assert_eq!(frames.take(1), Some(0x10000));
        assert_eq!(frames.take(1), Some(0x11000));
        assert_eq!(frames.take(1), Some(0x12000));
        assert_eq!(frames.frames_left(), 0);
        assert_eq!(frames.take(1), None);
        assert_eq!(frames.take(1), None, "still none, and no panic");
    }

    #[test]
    fn an_empty_map_has_no_frames() {
        let mut frames = UntouchedFrames::new(MemoryMap::new());
        assert_eq!(frames.frames_left(), 0);
        assert_eq!(frames.take(1), None);
    }

    #[test]
    fn a_run_that_does_not_fit_moves_on_and_leaves_the_tail() {
        let mut frames = UntouchedFrames::new(map(&[(0x10000, 0x3000), (0x40000, 0x4000)]));
        assert_eq!(frames.take(1), Some(0x10000));
        assert_eq!(frames.frames_left(), 6);
        // Two frames are left below, but not three in a row: the next region gives them.
        assert_eq!(frames.take(3), Some(0x40000));
        assert_eq!(
            frames.frames_left(),
            1,
            "the first region's tail is gone for good"
        );
        assert_eq!(frames.take(1), Some(0x43000));
        assert_eq!(frames.take(1), None);
    }

    #[test]
    fn a_run_longer_than_any_region_is_refused_and_spends_them_all() {
        let mut frames = UntouchedFrames::new(map(&[(0x10000, 0x2000), (0x40000, 0x2000)]));
        assert_eq!(frames.take(3), None);
        assert_eq!(frames.frames_left(), 0);
    }

    #[test]
    fn absurd_requests_are_refused_without_overflow() {
        let mut frames = UntouchedFrames::new(map(&[(u64::MAX - 0x2fff, 0x2000)]));
        assert_eq!(frames.take(0), None, "no frames asked, none given");
        assert_eq!(frames.take(u64::MAX), None);
        let mut top = UntouchedFrames::new(map(&[(u64::MAX - 0x2fff, 0x2000)]));
        assert_eq!(top.take(3), None);
        let mut top = UntouchedFrames::new(map(&[(u64::MAX - 0x2fff, 0x2000)]));
        assert_eq!(top.take(2), Some(u64::MAX - 0x2fff));
    }
}
