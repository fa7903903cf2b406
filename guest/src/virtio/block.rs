//! 19. The virtio block device: sectors read and written.
//!
//! A block device is one queue of requests (virtio 1.2, 5.2): each is a header the device reads
//! (read or write, and the first 512-byte sector), the data (which the device reads for a write
//! and writes for a read), and a status byte the device writes last. The driver is the crate's
//! `VirtIOBlk`, through the non-blocking half of its interface (`read_blocks_nb` and
//! `complete_read_blocks`, and their write twins), so that this kernel does the waiting, bounded
//! ([`Device::complete`]); its blocking `read_blocks` would spin for as long as the device takes.
//!
//! The data goes through one buffer of the driver's, [`CHUNK`] bytes of frames, so that a
//! request may be long without the kernel's stack being large: callers fill [`Block::buffer`]
//! before a write and read it after a read. One request is outstanding at a time. Natively
//! QEMU carries requests out in its own threads and raises the interrupt when done; under
//! lguest the launcher has done it by the time the notify's exit returns.

use virtio_drivers::device::blk::{BlkReq, BlkResp, VirtIOBlk, SECTOR_SIZE};
use virtio_drivers::transport::mmio::MmioTransport;

use crate::virtio::{Acknowledge, Device, DmaBuffer, Error, VirtioHal};

/// The most one request carries: 64 KiB, 128 sectors.
pub const CHUNK: usize = 64 * 1024;
pub const SECTOR: usize = SECTOR_SIZE;
/// How long a request may take.
const TIMEOUT_NS: u64 = 5_000_000_000;

pub struct Block {
    driver: VirtIOBlk<VirtioHal, MmioTransport<'static>>,
    device: Device,
    data: DmaBuffer,
}

impl Block {
    pub fn new(transport: MmioTransport<'static>, device: Device) -> Result<Block, Error> {
        Ok(Block {
            driver: VirtIOBlk::new(transport)?,
            device,
            data: DmaBuffer::new(CHUNK)?,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The disk's size in sectors.
    pub fn capacity(&self) -> u64 {
        self.driver.capacity()
    }

    /// Whether the device refuses writes.
    pub fn read_only(&self) -> bool {
        self.driver.readonly()
    }

    /// The data buffer: what a write sends, what a read brought.
    pub fn buffer(&mut self) -> &mut [u8] {
        self.data.bytes_mut()
    }

    /// Reads `sectors` sectors (at most a [`CHUNK`]'s) from `sector` into the buffer.
    pub fn read(&mut self, sector: u64, sectors: usize) -> Result<(), Error> {
        self.request(false, sector, sectors)
    }

    /// Writes the buffer's first `sectors` sectors at `sector`.
    pub fn write(&mut self, sector: u64, sectors: usize) -> Result<(), Error> {
        self.request(true, sector, sectors)
    }

    /// One request, waited for. The header and the status byte live on this stack frame: if
    /// the device does not answer in time it is reset, and writes no status byte afterwards.
    fn request(&mut self, write: bool, sector: u64, sectors: usize) -> Result<(), Error> {
        self.device.check()?;
        let data = &mut self.data.bytes_mut()[..(sectors * SECTOR).min(CHUNK)];
        let sector = usize::try_from(sector).map_err(|_| virtio_drivers::Error::InvalidParam)?;
        let (mut header, mut status) = (BlkReq::default(), BlkResp::default());
        // SAFETY: the header, the data and the status byte are not touched until the request
        // completes below, or, if it never does, ever again by the device (it is reset).
        let token = unsafe {
            if write {
                self.driver
                    .write_blocks_nb(sector, &mut header, data, &mut status)
            } else {
                self.driver
                    .read_blocks_nb(sector, &mut header, data, &mut status)
            }
        }?;
        let driver = &mut self.driver;
        self.device.complete("a block request", TIMEOUT_NS, |ack| {
            if ack == Acknowledge::Yes {
                driver.ack_interrupt();
            }
            (driver.peek_used() == Some(token)).then_some(())
        })?;
        // SAFETY: the same header, data and status the request was made with.
        unsafe {
            if write {
                self.driver
                    .complete_write_blocks(token, &header, data, &mut status)
            } else {
                self.driver
                    .complete_read_blocks(token, &header, data, &mut status)
            }
        }?;
        Ok(())
    }
}
