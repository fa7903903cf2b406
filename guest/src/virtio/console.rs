//! 18. The virtio console: bytes out, a line in.
//!
//! A console is two queues (virtio 1.2, 5.3): the driver puts what it writes on the transmit
//! queue, and keeps an empty buffer on the receive queue, which the device fills with whatever
//! was typed and hands back. Only port 0 is used (the MULTIPORT feature is not negotiated), and
//! it is the console: natively a QEMU `virtconsole`, under lguest the launcher's.
//!
//! The crate's `VirtIOConsole` needs an allocator for its receive buffer and waits for each
//! transmission without bound; this driver is the same steps on the crate's queues and
//! transport, with a page of its own for input ([`DmaBuffer`], always on the receive queue but
//! while the driver copies out of it) and bounded waits. Waiting for input is the normal case
//! for a console, and [`Console::read_line`] sleeps between interrupts until a line is there or
//! its time is up; a transmission, though, must complete ([`Device::complete`]).

use virtio_drivers::device::common::Feature;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::mmio::MmioTransport;
use virtio_drivers::transport::Transport;

use crate::virtio::{self, Acknowledge, Device, DmaBuffer, Error, VirtioHal};

/// Port 0's two queues, and how many buffers each holds.
const RECEIVEQ: u16 = 0;
const TRANSMITQ: u16 = 1;
const QUEUE_SIZE: usize = 2;
/// The input page's size.
const PAGE: usize = 4096;
/// How long a transmission may take: the host writes to a file or a terminal.
const TRANSMIT_TIMEOUT_NS: u64 = 2_000_000_000;

pub struct Console {
    transport: MmioTransport<'static>,
    device: Device,
    receiveq: VirtQueue<VirtioHal, QUEUE_SIZE>,
    transmitq: VirtQueue<VirtioHal, QUEUE_SIZE>,
    /// The page input arrives in: the device's while `receiving` holds its token.
    input: DmaBuffer,
    receiving: Option<u16>,
}

impl Console {
    /// Negotiates no feature but VERSION_1, sets up both queues, says the driver is ready, and
    /// puts the input page on the receive queue.
    pub fn new(mut transport: MmioTransport<'static>, device: Device) -> Result<Console, Error> {
        transport.begin_init(Feature::VERSION_1);
        let receiveq = VirtQueue::new(&mut transport, RECEIVEQ, false, false)?;
        let transmitq = VirtQueue::new(&mut transport, TRANSMITQ, false, false)?;
        transport.finish_init();
        let mut console = Console {
            transport,
            device,
            receiveq,
            transmitq,
            input: DmaBuffer::new(PAGE)?,
            receiving: None,
        };
        console.receive()?;
        Ok(console)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Puts the input page on the receive queue.
    fn receive(&mut self) -> Result<(), Error> {
        // SAFETY: the page is not touched until `pop_used` gives it back (`take_input`); the
        // driver never gives it up, so the device may keep it for as long as it likes.
        let token = unsafe { self.receiveq.add(&[], &mut [self.input.bytes_mut()]) }?;
        if self.receiveq.should_notify() {
            self.transport.notify(RECEIVEQ);
        }
        self.receiving = Some(token);
        Ok(())
    }

    /// Writes `bytes` to the console, and waits until the device has taken them.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.device.check()?;
        // SAFETY: `bytes` is not written until `pop_used` gives it back, and the device only
        // reads it; if it never answers it is reset, and stops reading.
        let token = unsafe { self.transmitq.add(&[bytes], &mut []) }?;
        if self.transmitq.should_notify() {
            self.transport.notify(TRANSMITQ);
        }
        let (transport, transmitq) = (&mut self.transport, &mut self.transmitq);
        self.device
            .complete("a console write", TRANSMIT_TIMEOUT_NS, |ack| {
                if ack == Acknowledge::Yes {
                    transport.ack_interrupt();
                }
                (transmitq.peek_used() == Some(token)).then_some(())
            })?;
        // SAFETY: the same buffer `add` was given for this token.
        unsafe { self.transmitq.pop_used(token, &[bytes], &mut []) }?;
        Ok(())
    }

    /// Reads one line of input into `line`, up to a `\n` or `\r` (not kept), sleeping between
    /// interrupts for at most `timeout_ns`: its length, or `None` if no end of line came in
    /// time (what came so far stays in `line`). A line longer than `line` ends where it fills.
    pub fn read_line(&mut self, line: &mut [u8], timeout_ns: u64) -> Result<Option<usize>, Error> {
        self.device.check()?;
        let mut len = 0;
        let answer = virtio::wait_for(timeout_ns, |ack| {
            if ack == Acknowledge::Yes {
                self.transport.ack_interrupt();
            }
            match self.take_input(line, &mut len) {
                Ok(true) => Some(Ok(len)),
                Ok(false) => None,
                Err(error) => Some(Err(error)),
            }
        });
        answer.transpose()
    }

    /// If the device has handed the input page back, copies what it holds onto `line` at
    /// `*len`, and puts the page back on the queue. Whether the line is complete.
    fn take_input(&mut self, line: &mut [u8], len: &mut usize) -> Result<bool, Error> {
        let Some(token) = self.receiving else {
            return self.receive().map(|()| false);
        };
        if self.receiveq.peek_used() != Some(token) {
            return Ok(false);
        }
        // SAFETY: the same buffer `add` was given for this token.
        let written = unsafe {
            self.receiveq
                .pop_used(token, &[], &mut [self.input.bytes_mut()])
        }?;
        self.receiving = None;
        let mut complete = false;
        for &byte in &self.input.bytes()[..(written as usize).min(PAGE)] {
            if byte == b'\n' || byte == b'\r' || *len == line.len() {
                complete = true;
                break;
            }
            line[*len] = byte;
            *len += 1;
        }
        self.receive()?;
        Ok(complete)
    }
}
