//! 20. The virtio network card: Ethernet frames out and in.
//!
//! A network card is two queues (virtio 1.2, 5.1): frames to send go on the transmit queue,
//! empty buffers wait on the receive queue for frames to arrive, each behind a small header
//! (`virtio_net_hdr`: offloads, none of which this driver asks for). The driver is the crate's
//! `VirtIONetRaw`, which leaves the buffers to the kernel: [`RX_BUFFERS`] pages of the driver's
//! own stay on the receive queue, each handed back by the device with a frame in it, copied
//! out, and put back at once; one page holds what is being sent. Sending waits for the device
//! to have taken the frame, bounded ([`Device::complete`]); receiving only looks
//! ([`Net::poll_receive`]), and a caller that waits for a frame sleeps between interrupts
//! (`virtio::wait_for`). Natively the frames go to QEMU's user-mode network (slirp), which plays
//! a gateway at 10.0.2.2; under lguest, to the launcher's tap device.

use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::mmio::MmioTransport;

use crate::virtio::{Acknowledge, Device, DmaBuffer, Error, VirtioHal};
use guest_core::ping::Mac;

/// Buffers per queue: a power of two, as the crate's queues want.
const QUEUE_SIZE: usize = 16;
/// Receive buffers kept on the queue.
const RX_BUFFERS: usize = 4;
/// A buffer's size: a page, more than a frame (1514 bytes) and its header need.
const PAGE: usize = 4096;
/// How long sending a frame may take.
const TX_TIMEOUT_NS: u64 = 2_000_000_000;
/// Frames in flight at once in [`Net::send_many`].
const IN_FLIGHT: usize = 8;

pub struct Net {
    driver: VirtIONetRaw<VirtioHal, MmioTransport<'static>, QUEUE_SIZE>,
    device: Device,
    /// The receive buffers, each the device's while its slot in `receiving` holds a token.
    rx: [DmaBuffer; RX_BUFFERS],
    receiving: [Option<u16>; RX_BUFFERS],
    /// What is being sent: the header, then the frame.
    tx: DmaBuffer,
}

impl Net {
    pub fn new(transport: MmioTransport<'static>, device: Device) -> Result<Net, Error> {
        let mut net = Net {
            driver: VirtIONetRaw::new(transport)?,
            device,
            rx: [
                DmaBuffer::new(PAGE)?,
                DmaBuffer::new(PAGE)?,
                DmaBuffer::new(PAGE)?,
                DmaBuffer::new(PAGE)?,
            ],
            receiving: [None; RX_BUFFERS],
            tx: DmaBuffer::new(PAGE)?,
        };
        for slot in 0..RX_BUFFERS {
            net.receive(slot)?;
        }
        Ok(net)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The card's MAC address, from its configuration space.
    pub fn mac(&self) -> Mac {
        self.driver.mac_address()
    }

    /// Puts receive buffer `slot` on the receive queue.
    fn receive(&mut self, slot: usize) -> Result<(), Error> {
        // SAFETY: the buffer is not touched until `receive_complete` gives it back
        // (`poll_receive`); the driver never gives it up, so the device may keep it.
        let token = unsafe { self.driver.receive_begin(self.rx[slot].bytes_mut()) }?;
        self.receiving[slot] = Some(token);
        Ok(())
    }

    /// If a frame has arrived, copies it into `frame` (cut to its length) and returns its
    /// length, after putting its buffer back on the queue; first acknowledges the interrupt if
    /// `ack` says so ([`virtio::wait_for`]).
    pub fn poll_receive(
        &mut self,
        frame: &mut [u8],
        ack: Acknowledge,
    ) -> Option<Result<usize, Error>> {
        if ack == Acknowledge::Yes {
            self.driver.ack_interrupt();
        }
        let token = self.driver.poll_receive()?;
        let Some(slot) = self.receiving.iter().position(|t| *t == Some(token)) else {
            return Some(Err(Error::Misbehaved(
                "the card used a receive buffer it was never given",
            )));
        };
        self.receiving[slot] = None;
        // SAFETY: the same buffer `receive_begin` was given for this token.
        let received = unsafe {
            self.driver
                .receive_complete(token, self.rx[slot].bytes_mut())
        };
        let (header, len) = match received {
            Ok(lengths) => lengths,
            Err(error) => return Some(Err(error.into())),
        };
        let len = len.min(frame.len()).min(PAGE - header);
        frame[..len].copy_from_slice(&self.rx[slot].bytes()[header..header + len]);
        Some(self.receive(slot).map(|()| len))
    }

    /// Sends `frame`, and waits until the card has taken it.
    pub fn send(&mut self, frame: &[u8]) -> Result<(), Error> {
        self.send_many(frame, 1)
    }

    /// Sends `frame` `count` times, up to [`IN_FLIGHT`] at once, and waits until the card has
    /// taken every one. The device only reads the buffer, so one copy serves every send.
    pub fn send_many(&mut self, frame: &[u8], count: usize) -> Result<(), Error> {
        self.device.check()?;
        let header = self.driver.fill_buffer_header(self.tx.bytes_mut())?;
        let len = header + frame.len().min(PAGE - header);
        self.tx.bytes_mut()[header..len].copy_from_slice(&frame[..len - header]);
        let buffer = &self.tx.bytes()[..len];
        let (mut sent, mut done) = (0, 0);
        while done < count {
            while sent < count && sent - done < IN_FLIGHT {
                // SAFETY: the buffer is not written until every send of it has completed, below
                // (or the device has been reset); the device only reads it.
                unsafe { self.driver.transmit_begin(buffer) }?;
                sent += 1;
            }
            let driver = &mut self.driver;
            let token = self
                .device
                .complete("a transmission", TX_TIMEOUT_NS, |ack| {
                    if ack == Acknowledge::Yes {
                        driver.ack_interrupt();
                    }
                    driver.poll_transmit()
                })?;
            // SAFETY: the buffer every outstanding send was given, this token's among them.
            unsafe { self.driver.transmit_complete(token, buffer) }?;
            done += 1;
        }
        Ok(())
    }
}
