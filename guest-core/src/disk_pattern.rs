//! The pattern devices mode writes over the block device and reads back (guest/src/devices.rs).
//!
//! Each 8-byte word of the disk holds its own byte offset XORed with a key ([`pattern`]), so a
//! fresh boot with `devices-verify` can check a disk the last `devices` run wrote, with nothing
//! remembered in between, and a device that drops a request, or puts it at the wrong sector,
//! leaves words that are not the pattern of where they are.

/// XORed with each 8-byte word's offset: "lguest-r" in ASCII, so the pattern is neither zeros
/// nor the offsets, which a device that drops or misplaces requests could produce.
const PATTERN_KEY: u64 = 0x6c67_7565_7374_2d72;

/// The 8-byte word at byte `offset` of the disk, little-endian.
pub fn pattern(offset: u64) -> u64 {
    offset ^ PATTERN_KEY
}

/// Fills `buffer`, which goes at byte `offset` of the disk, with the pattern.
pub fn fill(buffer: &mut [u8], offset: u64) {
    for (i, word) in buffer.chunks_exact_mut(8).enumerate() {
        word.copy_from_slice(&pattern(offset + 8 * i as u64).to_le_bytes());
    }
}

/// The first word of `buffer`, read from byte `offset` of the disk, that is not the pattern:
/// its offset and what it holds.
pub fn mismatch(buffer: &[u8], offset: u64) -> Option<(u64, u64)> {
    buffer
        .chunks_exact(8)
        .enumerate()
        .map(|(i, word)| {
            let at = offset + 8 * i as u64;
            (at, u64::from_le_bytes(word.try_into().unwrap_or_default()))
        })
        .find(|&(at, word)| word != pattern(at))
}

/// The requests that cover a disk of `capacity` sectors, at most `per_request` sectors each
/// (at least 1): (first sector, sectors).
pub fn requests(capacity: u64, per_request: u64) -> impl DoubleEndedIterator<Item = (u64, u64)> {
    let per_request = per_request.max(1);
    (0..capacity.div_ceil(per_request)).map(move |i| {
        let sector = i * per_request;
        (sector, (capacity - sector).min(per_request))
    })
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::vec;
    use std::vec::Vec;

    use super::*;

    #[test]
    fn a_filled_buffer_matches_where_it_was_written() {
        let mut buffer = vec![0u8; 4096];
        fill(&mut buffer, 0x10_0000);
        assert_eq!(mismatch(&buffer, 0x10_0000), None);
        assert_eq!(buffer[..8], (0x10_0000 ^ PATTERN_KEY).to_le_bytes());
    }

    #[test]
    fn a_misplaced_request_does_not_match() {
        let mut buffer = vec![0u8; 512];
        fill(&mut buffer, 0);
        assert_eq!(mismatch(&buffer, 512), Some((512, pattern(0))));
    }

    #[test]
    fn zeros_and_offsets_are_not_the_pattern() {
        assert_eq!(mismatch(&[0; 16], 0), Some((0, 0)));
        let offsets: Vec<u8> = [0u64, 8].iter().flat_map(|o| o.to_le_bytes()).collect();
        assert_eq!(mismatch(&offsets, 0), Some((0, 0)));
    }

    #[test]
    fn the_first_damaged_word_is_named() {
        let mut buffer = vec![0u8; 512];
        fill(&mut buffer, 4096);
        buffer[200] ^= 0x80;
        buffer[300] ^= 0x80;
        let (at, word) = mismatch(&buffer, 4096).unwrap();
        assert_eq!(at, 4096 + 200);
        assert_eq!(word, pattern(at) ^ 0x80);
    }

    #[test]
    fn requests_cover_the_disk_once() {
        let list: Vec<_> = requests(300, 128).collect();
        assert_eq!(list, [(0, 128), (128, 128), (256, 44)]);
        assert_eq!(requests(256, 128).count(), 2, "no empty request at the end");
        assert_eq!(requests(0, 128).count(), 0);
        assert_eq!(requests(3, 0).collect::<Vec<_>>(), [(0, 1), (1, 1), (2, 1)]);
    }

    #[test]
    fn requests_reach_the_last_sectors_of_the_largest_disk() {
        let last = requests(u64::MAX, 1 << 20).next_back().unwrap();
        assert_eq!(
            last,
            (u64::MAX - u64::MAX % (1 << 20), u64::MAX % (1 << 20))
        );
    }
}
