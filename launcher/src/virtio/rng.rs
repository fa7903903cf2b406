//! virtio-rng: the guest asks for entropy and gets the host's.
//!
//! The simplest device there is, and so the one to read first: one queue, whose buffers the
//! driver offers empty and the device fills with random bytes from the host kernel
//! (`getrandom(2)`). It touches nothing but the guest's buffers.

use std::io;

use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::{Chain, VirtioDevice};

/// The most bytes given for one request: more than any driver asks for at a time, and a bound on
/// the work a guest can make the launcher do with one huge buffer.
const MAX_BYTES_PER_REQUEST: u64 = 4096;

/// The virtio entropy device.
pub struct Rng;

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn features(&self) -> u64 {
        0
    }

    fn queue_count(&self) -> u16 {
        1
    }

    fn config(&self) -> &[u8] {
        &[]
    }

    fn process_queue(
        &mut self,
        _index: u16,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<(), virtio_queue::Error> {
        Chain::serve_each(queue, mem, |chain| {
            let len = chain.writable_len().min(MAX_BYTES_PER_REQUEST) as usize;
            let mut random = vec![0; len];
            let written = match fill_random(&mut random) {
                Ok(()) => chain.scatter_writable(mem, &random).unwrap_or_else(|| {
                    crate::guest_warn!("virtio-rng: a buffer lies outside guest memory");
                    0
                }),
                Err(error) => {
                    crate::guest_warn!("virtio-rng: getrandom failed: {error}");
                    0
                }
            };
            written as u32
        })
    }
}

/// Fills `buffer` from the kernel's random number generator.
pub(crate) fn fill_random(buffer: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buffer.len() {
        let rest = &mut buffer[filled..];
        // SAFETY: `rest` is a live, exclusively borrowed byte buffer of `rest.len()` bytes, and
        // getrandom writes at most that many bytes into it; any byte value is a valid u8.
        let got = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        match usize::try_from(got) {
            Ok(got) => filled += got,
            Err(_) => {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testing::{TestDriver, NEXT, WRITE};
    use super::*;

    #[test]
    fn fills_buffers_with_random_bytes() {
        let mut driver = TestDriver::start(Box::new(Rng));
        let first = driver.alloc(64);
        let second = driver.alloc(64);
        let head = driver.add_chain(0, &[(first, 64, true), (second, 64, true)]);
        driver.notify(0);
        assert_eq!(driver.used(0), vec![(head.into(), 128)]);
        assert_eq!(driver.interrupts(), 1);
        let bytes = [driver.read_bytes(first, 64), driver.read_bytes(second, 64)].concat();
        // 128 random bytes are all zero with probability 2^-1024.
        assert!(bytes.iter().any(|&b| b != 0));
    }

    #[test]
    fn a_huge_buffer_gets_a_bounded_answer() {
        let mut driver = TestDriver::start(Box::new(Rng));
        let buffer = driver.alloc(8192);
        driver.add_chain(0, &[(buffer, 8192, true)]);
        driver.notify(0);
        assert_eq!(driver.used(0)[0].1, 4096);
    }

    #[test]
    fn a_descriptor_loop_ends_after_one_queue_of_descriptors() {
        let mut driver = TestDriver::start(Box::new(Rng));
        let buffer = driver.alloc(8);
        // Descriptor 0 leads to 1 and 1 back to 0: virtio-queue's chain iterator gives up after
        // QUEUE_SIZE descriptors, so the device sees 16 buffers of 8 bytes.
        driver.write_descriptor(0, 0, buffer.0, 8, WRITE | NEXT, 1);
        driver.write_descriptor(0, 1, buffer.0, 8, WRITE | NEXT, 0);
        driver.publish(0, 0);
        driver.notify(0);
        let expected = 8 * u32::from(TestDriver::QUEUE_SIZE);
        assert_eq!(driver.used(0), vec![(0, expected)]);
    }

    #[test]
    fn wild_zero_and_huge_buffers_are_returned_empty() {
        let mut driver = TestDriver::start(Box::new(Rng));
        let beyond_memory = vm_memory::GuestAddress(TestDriver::MEM_SIZE + 0x1000);
        let ok = driver.alloc(16);
        let wild = driver.add_chain(0, &[(beyond_memory, 16, true)]);
        let empty = driver.add_chain(0, &[(ok, 0, true)]);
        let huge = driver.add_chain(0, &[(ok, u32::MAX, true)]);
        let readable = driver.add_chain(0, &[(ok, 16, false)]);
        driver.notify(0);
        let used = driver.used(0);
        assert_eq!(
            used,
            vec![
                (wild.into(), 0),
                (empty.into(), 0),
                (huge.into(), 0),
                (readable.into(), 0)
            ]
        );
        assert_eq!(
            driver.status() & 0x40,
            0,
            "a bad buffer is not a broken queue"
        );
    }
}
