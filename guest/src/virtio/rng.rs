//! 17. The virtio entropy source: random bytes from the host.
//!
//! The simplest virtio device there is: one queue, into which the driver puts empty buffers
//! that the device fills with random bytes and hands back (virtio 1.2, 5.4). The crate's
//! `VirtIORng` spins on the queue until the device answers, for as long as that takes; this
//! driver is the same few steps on the crate's queue and transport, with the wait bounded
//! ([`Device::complete`]). The buffer is a page of the driver's own ([`DmaBuffer`]), and the
//! bytes are copied out of it once the device has handed it back.

use virtio_drivers::device::common::Feature;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::mmio::MmioTransport;
use virtio_drivers::transport::Transport;

use crate::virtio::{Acknowledge, Device, DmaBuffer, Error, VirtioHal};

/// The request queue, and how many requests it holds (one is ever outstanding).
const REQUESTQ: u16 = 0;
const QUEUE_SIZE: usize = 2;
/// The most bytes one request asks for: the driver's page.
const PAGE: usize = 4096;
/// How long a request may take: the host reads its own entropy source, which does not block.
const TIMEOUT_NS: u64 = 2_000_000_000;
/// How many requests one [`Rng::read`] makes at most: a device may hand back fewer bytes than
/// asked for, but one that keeps handing back none is broken.
const MAX_REQUESTS: usize = 16;

pub struct Rng {
    transport: MmioTransport<'static>,
    device: Device,
    queue: VirtQueue<VirtioHal, QUEUE_SIZE>,
    page: DmaBuffer,
}

impl Rng {
    /// Negotiates no feature but VERSION_1 (which a modern device insists on), sets up the
    /// queue, and says the driver is ready.
    pub fn new(mut transport: MmioTransport<'static>, device: Device) -> Result<Rng, Error> {
        transport.begin_init(Feature::VERSION_1);
        let queue = VirtQueue::new(&mut transport, REQUESTQ, false, false)?;
        transport.finish_init();
        Ok(Rng {
            transport,
            device,
            queue,
            page: DmaBuffer::new(PAGE)?,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Fills `out` with bytes from the device.
    pub fn read(&mut self, out: &mut [u8]) -> Result<(), Error> {
        let mut filled = 0;
        for _ in 0..MAX_REQUESTS {
            if filled == out.len() {
                return Ok(());
            }
            let got = self.request(out.len() - filled)?;
            out[filled..filled + got].copy_from_slice(&self.page.bytes()[..got]);
            filled += got;
        }
        Err(Error::Misbehaved(
            "the entropy source keeps handing back too few bytes",
        ))
    }

    /// One request for `len` bytes into the page: how many the device wrote.
    fn request(&mut self, len: usize) -> Result<usize, Error> {
        self.device.check()?;
        let buffer = &mut self.page.bytes_mut()[..len.min(PAGE)];
        // SAFETY: the page is not touched until `pop_used` gives it back below, or, if the
        // device never answers, ever again (the device is reset and the driver dead).
        let token = unsafe { self.queue.add(&[], &mut [&mut *buffer]) }?;
        if self.queue.should_notify() {
            self.transport.notify(REQUESTQ);
        }
        let (transport, queue) = (&mut self.transport, &mut self.queue);
        self.device
            .complete("an entropy request", TIMEOUT_NS, |ack| {
                if ack == Acknowledge::Yes {
                    transport.ack_interrupt();
                }
                (queue.peek_used() == Some(token)).then_some(())
            })?;
        // SAFETY: the same buffer `add` was given for this token.
        let written = unsafe { self.queue.pop_used(token, &[], &mut [buffer]) }?;
        Ok((written as usize).min(len))
    }
}
