//! The virtio-mmio transport's queues: set up by the driver, served when it notifies.
//!
//! The driver sets a queue up one register at a time, for the queue QueueSel names: its size,
//! then the addresses of its three rings in 32-bit halves, then QueueReady, when the rings are
//! checked against guest memory. A write to QueueNotify hands the queue to the device model,
//! and buffers it used raise the device's interrupt. A device with input of its own (the
//! console's stdin, the net device's tap) is served from its input thread instead, which waits
//! on an eventfd this transport writes when the guest adds receive buffers.
//!
//! A queue that cannot work (a bad size, a misaligned or out-of-memory ring, a broken available
//! ring) marks the device DEVICE_NEEDS_RESET (`mark_needs_reset` in `mod.rs`, section 2.1.2).

use std::io;
use std::os::fd::RawFd;

use log::debug;
use virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::MmioTransport;
use crate::virtio::{InputState, RECEIVE_QUEUE};

impl MmioTransport {
    /// The queue QueueSel names, if the device has it.
    pub(super) fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_select as usize)
    }

    /// Applies one queue set-up register write to the selected queue. Changing a queue the
    /// device may be using is ignored; a value the queue refuses (a size that is not a power of
    /// two or is too large, a misaligned ring) breaks the device, since the driver would go on
    /// believing its value was taken.
    pub(super) fn configure_queue(
        &mut self,
        register: &str,
        apply: impl FnOnce(&mut Queue) -> Result<(), virtio_queue::Error>,
    ) {
        let select = self.queue_select;
        let Some(queue) = self.queues.get_mut(select as usize) else {
            crate::guest_warn!(
                "virtio-mmio: {register} written for queue {select}, which does not exist"
            );
            return;
        };
        if queue.ready() {
            crate::guest_warn!(
                "virtio-mmio: {register} written while queue {select} is ready; ignored"
            );
            return;
        }
        if let Err(error) = apply(queue) {
            crate::guest_warn!("virtio-mmio: bad {register} for queue {select}: {error}");
            self.mark_needs_reset();
        }
    }

    /// QueueReady: the driver starts (1) or stops using the selected queue.
    pub(super) fn write_queue_ready(&mut self, value: u32) {
        let select = self.queue_select;
        let Some(queue) = self.queues.get_mut(select as usize) else {
            crate::guest_warn!(
                "virtio-mmio: QueueReady written for queue {select}, which does not exist"
            );
            return;
        };
        queue.set_ready(value == 1);
        // is_valid checks that the three rings lie in guest memory; every later access through
        // virtio-queue is bounds-checked again, but a queue that cannot work is refused now.
        if value == 1 && !queue.is_valid(&self.mem) {
            queue.set_ready(false);
            crate::guest_warn!("virtio-mmio: queue {select} has rings outside guest memory");
            self.mark_needs_reset();
        }
    }

    /// QueueNotify: the driver made buffers available in queue `index`.
    pub(super) fn notify(&mut self, index: u32) {
        if !self.live() {
            debug!("virtio-mmio: notify of queue {index} while the device is not live; ignored");
            return;
        }
        let Some(queue) = self.queues.get_mut(index as usize) else {
            crate::guest_warn!("virtio-mmio: notify of queue {index}, which does not exist");
            return;
        };
        if !queue.ready() {
            return;
        }
        let used_before = queue.next_used();
        let result = self.device.process_queue(index as u16, queue, &self.mem);
        self.after_processing(index, used_before, result);
        if index == u32::from(RECEIVE_QUEUE) && self.input_waiting {
            self.wake_input_thread();
        }
    }

    /// Interrupts the guest if the device used buffers; breaks the device if its queue failed.
    fn after_processing<T>(
        &mut self,
        index: u32,
        used_before: u16,
        result: Result<T, virtio_queue::Error>,
    ) -> Option<T> {
        let used_now = self.queues.get(index as usize).map(Queue::next_used);
        if used_now != Some(used_before) {
            self.interrupt(VIRTIO_MMIO_INT_VRING);
        }
        result
            .map_err(|error| {
                crate::guest_warn!("virtio-mmio: queue {index} is broken: {error}");
                self.mark_needs_reset();
            })
            .ok()
    }

    /// The fds an input thread waits on: the device's input, and an eventfd this transport
    /// writes when the guest adds receive buffers after the thread found none. `None` if the
    /// device has no input.
    pub fn input_source(&mut self) -> io::Result<Option<(RawFd, EventFd)>> {
        let Some(input_fd) = self.device.input_fd() else {
            return Ok(None);
        };
        let kick = match &self.receive_kick {
            Some(kick) => kick.try_clone()?,
            None => {
                let kick = EventFd::new(EFD_NONBLOCK)?;
                let clone = kick.try_clone()?;
                self.receive_kick = Some(kick);
                clone
            }
        };
        Ok(Some((input_fd, kick)))
    }

    /// The device's input is readable (called by its input thread): move what fits into the
    /// guest's receive buffers.
    pub fn receive_input(&mut self) -> InputState {
        let live = self.live();
        let index = u32::from(RECEIVE_QUEUE);
        let state = match self.queues.get_mut(usize::from(RECEIVE_QUEUE)) {
            Some(queue) if live && queue.ready() => {
                let used_before = queue.next_used();
                let result = self.device.receive_input(queue, &self.mem);
                self.after_processing(index, used_before, result)
                    .unwrap_or(InputState::GuestFull)
            }
            _ => self.device.read_ahead(),
        };
        self.input_waiting = state == InputState::GuestFull;
        state
    }

    fn wake_input_thread(&mut self) {
        self.input_waiting = false;
        if let Some(kick) = &self.receive_kick {
            if let Err(error) = kick.write(1) {
                crate::guest_warn!("virtio-mmio: cannot wake the input thread: {error}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::virtio::testing::TestDriver;
    use crate::virtio::Rng;
    use virtio_bindings::virtio_config::{
        VIRTIO_CONFIG_S_DRIVER_OK as DRIVER_OK, VIRTIO_CONFIG_S_NEEDS_RESET as NEEDS_RESET,
    };
    use virtio_bindings::virtio_mmio::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn bad_queue_settings_break_the_device_until_reset() {
        for bad in [
            (VIRTIO_MMIO_QUEUE_NUM, 3),
            (VIRTIO_MMIO_QUEUE_NUM, 512),
            (VIRTIO_MMIO_QUEUE_NUM, 0),
            (VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1_0008),
            (VIRTIO_MMIO_QUEUE_USED_LOW, 0x3_0002),
        ] {
            let mut driver = TestDriver::new(Box::new(Rng));
            driver.negotiate(None);
            driver.set_up_queue(0);
            driver.write_reg(VIRTIO_MMIO_QUEUE_READY, 0);
            driver.write_reg(bad.0, bad.1);
            assert_ne!(driver.status() & NEEDS_RESET, 0, "{bad:x?}");
            driver.negotiate(None);
            assert_eq!(driver.status() & NEEDS_RESET, 0, "a reset repairs it");
        }
    }

    #[test]
    fn rings_outside_memory_are_refused() {
        let mut driver = TestDriver::new(Box::new(Rng));
        driver.negotiate(None);
        driver.set_up_queue(0);
        driver.write_reg(VIRTIO_MMIO_QUEUE_READY, 0);
        driver.write_reg(VIRTIO_MMIO_QUEUE_USED_HIGH, 1);
        driver.write_reg(VIRTIO_MMIO_QUEUE_READY, 1);
        assert_eq!(driver.read_reg(VIRTIO_MMIO_QUEUE_READY), 0);
        assert_ne!(driver.status() & NEEDS_RESET, 0);
    }

    #[test]
    fn a_ready_queue_cannot_be_moved() {
        let mut driver = TestDriver::start(Box::new(Rng));
        driver.write_reg(VIRTIO_MMIO_QUEUE_DESC_LOW, 0x8_0000);
        driver.write_reg(VIRTIO_MMIO_QUEUE_NUM, 2);
        let buffer = driver.alloc(4);
        driver.add_chain(0, &[(buffer, 4, true)]);
        driver.notify(0);
        assert_eq!(
            driver.used(0),
            vec![(0, 4)],
            "the queue kept its first settings"
        );
    }

    #[test]
    fn used_buffers_interrupt_until_acknowledged() {
        let mut driver = TestDriver::start(Box::new(Rng));
        driver.notify(0);
        assert_eq!(driver.interrupts(), 0, "nothing used, no interrupt");
        let buffer = driver.alloc(4);
        driver.add_chain(0, &[(buffer, 4, true)]);
        driver.notify(0);
        assert_eq!(driver.interrupts(), 1);
        assert_eq!(
            driver.read_reg(VIRTIO_MMIO_INTERRUPT_STATUS),
            VIRTIO_MMIO_INT_VRING
        );
        driver.write_reg(VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
        assert_eq!(driver.read_reg(VIRTIO_MMIO_INTERRUPT_STATUS), 0);
        driver.notify(7);
        assert_eq!(
            driver.status() & NEEDS_RESET,
            0,
            "a notify of no queue is ignored"
        );
    }

    #[test]
    fn buffers_made_available_before_driver_ok_are_served_then() {
        let mut driver = TestDriver::new(Box::new(Rng));
        driver.negotiate(None);
        driver.set_up_queue(0);
        let buffer = driver.alloc(4);
        driver.add_chain(0, &[(buffer, 4, true)]);
        driver.notify(0);
        assert!(driver.used(0).is_empty(), "not before DRIVER_OK");
        driver.add_status(DRIVER_OK);
        assert_eq!(driver.used(0), vec![(0, 4)]);
    }

    #[test]
    fn a_broken_available_ring_breaks_the_device() {
        for (avail_idx, head) in [(100u16, 0u16), (1, 200)] {
            let mut driver = TestDriver::start(Box::new(Rng));
            let avail = TestDriver::rings(0)[1];
            driver.mem.write_obj(head, GuestAddress(avail + 4)).unwrap();
            driver
                .mem
                .write_obj(avail_idx, GuestAddress(avail + 2))
                .unwrap();
            driver.notify(0);
            assert_ne!(
                driver.status() & NEEDS_RESET,
                0,
                "avail idx {avail_idx}, head {head}"
            );
            assert_eq!(
                driver.read_reg(VIRTIO_MMIO_INTERRUPT_STATUS),
                VIRTIO_MMIO_INT_CONFIG
            );
            // A broken device ignores its queues until it is reset.
            let buffer = driver.alloc(4);
            driver.add_chain(0, &[(buffer, 4, true)]);
            driver.notify(0);
            assert!(driver.used(0).is_empty());
        }
    }
}
