//! Virtio devices: what the guest's drivers talk to once it has booted.
//!
//! This is the last stop of a guest's I/O journey. A guest driver puts buffers in a virtqueue (a
//! ring in its own RAM) and "kicks" the device by writing the queue's number to a register in the
//! device's page, a guest-physical page just above RAM. Nothing is mapped there, so the write
//! faults; lg.ko hands the launcher the address and instruction, the launcher decodes it, and
//! [`DeviceManager::mmio_write`] lands in the device's [`MmioTransport`], which runs the device
//! model. The device reads and writes the guest's buffers, puts them on the used ring and raises
//! the device's IRQ through an [`IrqLine`], which the launcher turns into an IRQ request to
//! `/dev/lguest`.
//!
//! What this module may touch: guest RAM, only through vm-memory's bounds-checked accessors; the
//! host files it was given (a disk image, a tap, stdin and stdout); nothing else. The guest is not
//! trusted: every ring, descriptor, address and length it gives is checked, and a guest that
//! breaks the rules gets an error status, an ignored request or a device marked broken, never a
//! panic in the launcher.
//!
//! The files, in the order a request meets them: [`manager`] (which page is which device),
//! [`mmio`] (the virtio-mmio register file), then one device model per file ([`rng`], [`block`],
//! [`console`], [`net`]), and [`input`], the threads that wait for host input (stdin, tap).

pub mod block;
pub mod console;
pub mod input;
pub mod manager;
pub mod mmio;
pub mod net;
pub mod rng;
#[cfg(test)]
mod testing;

use std::os::fd::RawFd;
use std::sync::{Mutex, MutexGuard, PoisonError};

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryMmap};

pub use block::Block;
pub use console::Console;
pub use input::spawn_input_thread;
pub use manager::{DeviceManager, NoDevice};
pub use mmio::MmioTransport;
pub use net::{open_tap, Mac, Net};
pub use rng::Rng;

/// How many buffers each queue holds at most (QueueNumMax). 256 is what most devices offer: a
/// driver may choose fewer.
pub const QUEUE_SIZE: u16 = 256;

/// The queue a device receives host input on: console's receiveq and net's receiveq1 are both
/// queue 0.
pub const RECEIVE_QUEUE: u16 = 0;

/// A device model: what makes a virtio-rng different from a virtio-blk. The transport
/// ([`MmioTransport`]) does everything the devices have in common: registers, feature
/// negotiation, queue setup, interrupts.
pub trait VirtioDevice: Send {
    /// The virtio device type (`virtio_ids::VIRTIO_ID_*`), read by the guest as DeviceID.
    fn device_type(&self) -> u32;

    /// The device-specific feature bits offered to the driver. The transport adds
    /// `VIRTIO_F_VERSION_1` itself: every device here is a virtio 1.x device.
    fn features(&self) -> u64;

    /// How many virtqueues the device has.
    fn queue_count(&self) -> u16;

    /// The device's configuration space, as the guest reads it at offset 0x100 of its page.
    fn config(&self) -> &[u8];

    /// The driver wrote `data` to configuration space at `offset`. None of the devices here has a
    /// writable field, so by default the write is ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        crate::guest_warn!(
            "virtio: the guest wrote {} bytes to read-only config space at {offset:#x}; ignored",
            data.len()
        );
    }

    /// The driver made buffers available in queue `index` (which is ready and valid): process
    /// them, putting each one on the used ring. A request the device cannot serve is answered in
    /// the device's own way (an error status, a used length of 0); an `Err` means the queue
    /// itself is unusable, and the transport marks the device broken.
    fn process_queue(
        &mut self,
        index: u16,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<(), virtio_queue::Error>;

    /// The host-side input an input thread should wait on (stdin, a tap), if any.
    fn input_fd(&self) -> Option<RawFd> {
        None
    }

    /// The input fd is readable: move what the guest has room for into [`RECEIVE_QUEUE`], which
    /// the transport has checked is ready. Must not block.
    fn receive_input(
        &mut self,
        _receive_queue: &mut Queue,
        _mem: &GuestMemoryMmap,
    ) -> Result<InputState, virtio_queue::Error> {
        Ok(InputState::Closed)
    }

    /// The input fd is readable, but the guest's driver is not running or has no receive queue:
    /// read it now if what comes must be seen at once (the console's escape key), or leave it
    /// waiting (`GuestFull`, which stops the input thread watching until the guest is ready).
    /// Must not block.
    fn read_ahead(&mut self) -> InputState {
        InputState::GuestFull
    }

    /// The driver reset the device: forget anything kept for it. The transport resets the
    /// queues and registers itself.
    fn reset(&mut self) {}
}

/// What became of host input after [`VirtioDevice::receive_input`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputState {
    /// Everything readable was taken; wait for more input.
    Drained,
    /// Input is waiting but the guest has no free receive buffers (or its driver is not running):
    /// stop watching the input until the guest adds some.
    GuestFull,
    /// The input is gone for good (end of file, an error).
    Closed,
    /// The user typed the escape key that quits (the console's, on a terminal): the input
    /// thread ends the launcher.
    Quit,
}

/// How a device interrupts the guest. The launcher implements it by writing an IRQ request to
/// `/dev/lguest`, which any thread may do; tests count the calls. Any `Fn(u32)` closure is one.
pub trait IrqLine: Send + Sync {
    /// Raises guest interrupt `irq`.
    fn raise(&self, irq: u32);
}

impl<F: Fn(u32) + Send + Sync> IrqLine for F {
    fn raise(&self, irq: u32) {
        self(irq)
    }
}

/// Locks a transport shared between the main thread and an input thread. A thread that panicked
/// while holding the lock left registers that are still plain values, so the lock is taken anyway
/// rather than turning one failure into two.
pub(crate) fn lock(transport: &Mutex<MmioTransport>) -> MutexGuard<'_, MmioTransport> {
    transport.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A descriptor chain taken from a queue, its descriptors copied out of the guest's table.
///
/// virtio-queue's iterator follows the `next` links with a time-to-live of one queue's worth of
/// descriptors, so a chain that loops ends there instead of looping forever; a descriptor table
/// entry outside guest memory ends the chain early.
pub(crate) struct Chain {
    /// The head's index, which the used ring gives back to the driver.
    pub head: u16,
    pub descriptors: Vec<Descriptor>,
}

impl Chain {
    /// Takes the next chain the driver made available, if any. An available ring whose index runs
    /// more than a queue's worth ahead of the device is an `Err`.
    ///
    /// Devices take at most `queue.size()` chains per call: a guest that keeps adding buffers
    /// cannot keep the launcher busy forever, and its next notify brings the device back.
    pub fn pop(
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<Option<Chain>, virtio_queue::Error> {
        Ok(queue.iter(mem)?.next().map(|chain| Chain {
            head: chain.head_index(),
            descriptors: chain.collect(),
        }))
    }

    /// Serves the chains the driver made available, at most a queue's worth (see [`Chain::pop`]):
    /// `serve` does the work and says how many bytes it wrote into the chain, which goes back to
    /// the driver on the used ring.
    pub fn serve_each(
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        mut serve: impl FnMut(&Chain) -> u32,
    ) -> Result<(), virtio_queue::Error> {
        for _ in 0..queue.size() {
            let Some(chain) = Chain::pop(queue, mem)? else {
                break;
            };
            let used_len = serve(&chain);
            queue.add_used(mem, chain.head, used_len)?;
        }
        Ok(())
    }

    /// The device-readable buffers, in order.
    pub fn readable(&self) -> impl Iterator<Item = &Descriptor> {
        self.descriptors.iter().filter(|d| !d.is_write_only())
    }

    /// The device-writable buffers, in order.
    pub fn writable(&self) -> impl Iterator<Item = &Descriptor> {
        self.descriptors.iter().filter(|d| d.is_write_only())
    }

    /// How many bytes the device-writable buffers hold together.
    pub fn writable_len(&self) -> u64 {
        self.writable().map(|d| u64::from(d.len())).sum()
    }

    /// Copies the device-readable buffers into one `Vec`. `None` if they add up to more than
    /// `limit` bytes or one lies outside guest memory, both checked before anything is allocated.
    pub fn gather_readable(&self, mem: &GuestMemoryMmap, limit: usize) -> Option<Vec<u8>> {
        let total: u64 = self.readable().map(|d| u64::from(d.len())).sum();
        let total = usize::try_from(total).ok().filter(|&t| t <= limit)?;
        if !in_memory(self.readable(), mem) {
            return None;
        }
        let mut bytes = vec![0; total];
        let mut at = 0;
        for descriptor in self.readable() {
            let end = at + buffer_len(descriptor);
            mem.read_slice(&mut bytes[at..end], descriptor.addr())
                .ok()?;
            at = end;
        }
        Some(bytes)
    }

    /// Copies `bytes` into the device-writable buffers, in order, as far as they hold. Returns how
    /// many bytes were written; `None`, with nothing written, if a buffer lies (even partly)
    /// outside guest memory.
    pub fn scatter_writable(&self, mem: &GuestMemoryMmap, bytes: &[u8]) -> Option<usize> {
        if !in_memory(self.writable(), mem) {
            return None;
        }
        let mut written = 0;
        for descriptor in self.writable() {
            let rest = &bytes[written..];
            if rest.is_empty() {
                break;
            }
            let len = rest.len().min(buffer_len(descriptor));
            mem.write_slice(&rest[..len], descriptor.addr()).ok()?;
            written += len;
        }
        Some(written)
    }
}

/// Whether every one of `buffers` lies wholly inside guest memory.
pub(crate) fn in_memory<'a>(
    buffers: impl IntoIterator<Item = &'a Descriptor>,
    mem: &GuestMemoryMmap,
) -> bool {
    buffers
        .into_iter()
        .all(|d| mem.check_range(d.addr(), buffer_len(d)))
}

/// A descriptor's length as a `usize`: a `u32` always fits on the 64-bit hosts lguest-rs runs on.
pub(crate) fn buffer_len(descriptor: &Descriptor) -> usize {
    descriptor.len() as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    fn chain(addr: u64, len: u32) -> Chain {
        Chain {
            head: 0,
            descriptors: vec![Descriptor::new(addr, len, 0, 0)],
        }
    }

    #[test]
    fn gather_refuses_too_much_and_addresses_outside_memory() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        mem.write_slice(b"0123456789abcdef", GuestAddress(0x100))
            .unwrap();
        let good = chain(0x100, 16);
        assert_eq!(good.gather_readable(&mem, 16).unwrap(), b"0123456789abcdef");
        assert!(good.gather_readable(&mem, 15).is_none());
        assert!(chain(0xff8, 16).gather_readable(&mem, 64).is_none());
        assert!(chain(0x100, u32::MAX)
            .gather_readable(&mem, usize::MAX)
            .is_none());
        assert!(chain(u64::MAX - 4, 16).gather_readable(&mem, 64).is_none());
    }
}
