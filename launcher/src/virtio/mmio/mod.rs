//! The virtio-mmio transport: the register file in each device's page.
//!
//! Every guest access to a device page ends here as [`MmioTransport::read`] or
//! [`MmioTransport::write`] at an offset within the page. This is the modern (version 2) layout of
//! the virtio 1.2 specification, section 4.2.2: identification registers, feature negotiation
//! through 32-bit windows, one queue's set-up at a time through QueueSel, a doorbell
//! (QueueNotify), interrupt status and acknowledgement, the device status byte, and the
//! device-specific configuration space from offset 0x100.
//!
//! The transport touches guest memory only to check a queue the driver declares ready and,
//! through the device model, to serve a notified queue. A driver that breaks the protocol gets
//! its access ignored with a warning or the device marked DEVICE_NEEDS_RESET; it never stops the
//! launcher.
//!
//! This file is the register file and the device's life cycle: the status byte, feature
//! negotiation, reset. The queues (set up, served, and the input thread fed) are `queues.rs`.

mod queues;

use std::sync::Arc;

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::{IrqLine, VirtioDevice, QUEUE_SIZE};

/// The MagicValue register: "virt" in little-endian ASCII.
const MAGIC_VALUE: u32 = u32::from_le_bytes(*b"virt");
/// The Version register: 2 is virtio-mmio without the legacy (pre-1.0) registers.
const MMIO_VERSION: u32 = 2;
/// The VendorID register: "lgrs", for lguest-rs. Drivers do not look at it.
const VENDOR_ID: u32 = u32::from_le_bytes(*b"lgrs");

/// One device's virtio-mmio register file, and the device model behind it.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    irq: u32,
    irq_line: Arc<dyn IrqLine>,
    queues: Vec<Queue>,
    /// The device status byte (section 2.1) the driver builds up bit by bit.
    status: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    /// The driver accepted a feature in a window past bit 63, where nothing is offered.
    driver_features_unknown: bool,
    queue_select: u32,
    interrupt_status: u32,
    /// Written when the guest adds receive buffers while the input thread waits for them.
    receive_kick: Option<EventFd>,
    input_waiting: bool,
}

impl MmioTransport {
    /// A transport for `device`, whose queues live in `mem` and whose interrupt is `irq`.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        irq: u32,
        irq_line: Arc<dyn IrqLine>,
    ) -> MmioTransport {
        let queues = (0..device.queue_count())
            .map(|_| Queue::new(QUEUE_SIZE).expect("QUEUE_SIZE is a valid queue size"))
            .collect();
        MmioTransport {
            device,
            mem,
            irq,
            irq_line,
            queues,
            status: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            driver_features_unknown: false,
            queue_select: 0,
            interrupt_status: 0,
            receive_kick: None,
            input_waiting: false,
        }
    }

    /// The virtio device type, as in the DeviceID register.
    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    /// The features the device offers: its own and `VIRTIO_F_VERSION_1`.
    fn device_features(&self) -> u64 {
        self.device.features() | 1 << VIRTIO_F_VERSION_1
    }

    /// The guest reads `data.len()` bytes at `offset` in the device page.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(config_offset) = offset.checked_sub(u64::from(VIRTIO_MMIO_CONFIG)) {
            self.read_config(config_offset, data);
            return;
        }
        let Some(register) = register_offset(offset, data.len()) else {
            return;
        };
        let features = self.device_features();
        let value = match register {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC_VALUE,
            VIRTIO_MMIO_VERSION => MMIO_VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_select {
                0 => features as u32,
                1 => (features >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| q.max_size().into()),
            VIRTIO_MMIO_QUEUE_READY => self.selected_queue().map_or(0, |q| q.ready().into()),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt_status,
            VIRTIO_MMIO_STATUS => self.status,
            // No shared memory regions: their length reads as all ones (section 4.2.2).
            VIRTIO_MMIO_SHM_LEN_LOW | VIRTIO_MMIO_SHM_LEN_HIGH => u32::MAX,
            // Configuration space never changes under the driver, so its generation never moves.
            VIRTIO_MMIO_CONFIG_GENERATION => 0,
            _ => {
                crate::guest_warn!(
                    "virtio-mmio: read of unknown or write-only register {offset:#x}"
                );
                0
            }
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.device.config();
        let bytes = usize::try_from(offset)
            .ok()
            .and_then(|start| config.get(start..start.checked_add(data.len())?));
        match bytes {
            Some(bytes) => data.copy_from_slice(bytes),
            None => crate::guest_warn!(
                "virtio-mmio: read of {} bytes at {offset:#x} is past the {}-byte config space",
                data.len(),
                config.len()
            ),
        }
    }

    /// The guest writes `data` at `offset` in the device page.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(config_offset) = offset.checked_sub(u64::from(VIRTIO_MMIO_CONFIG)) {
            self.device.write_config(config_offset, data);
            return;
        }
        let Some(register) = register_offset(offset, data.len()) else {
            return;
        };
        let value = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        match register {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_select = value,
            VIRTIO_MMIO_DRIVER_FEATURES => self.write_driver_features(value),
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_select = value,
            VIRTIO_MMIO_QUEUE_SEL => self.queue_select = value,
            VIRTIO_MMIO_QUEUE_NUM => self.configure_queue("QueueNum", |q| {
                q.try_set_size(u16::try_from(value).unwrap_or(0))
            }),
            VIRTIO_MMIO_QUEUE_READY => self.write_queue_ready(value),
            VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(value),
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt_status &= !value,
            VIRTIO_MMIO_STATUS => self.write_status(value),
            VIRTIO_MMIO_QUEUE_DESC_LOW => self.configure_queue("QueueDescLow", |q| {
                q.try_set_desc_table_address(with_low(q.desc_table(), value))
            }),
            VIRTIO_MMIO_QUEUE_DESC_HIGH => self.configure_queue("QueueDescHigh", |q| {
                q.try_set_desc_table_address(with_high(q.desc_table(), value))
            }),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => self.configure_queue("QueueDriverLow", |q| {
                q.try_set_avail_ring_address(with_low(q.avail_ring(), value))
            }),
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => self.configure_queue("QueueDriverHigh", |q| {
                q.try_set_avail_ring_address(with_high(q.avail_ring(), value))
            }),
            VIRTIO_MMIO_QUEUE_USED_LOW => self.configure_queue("QueueDeviceLow", |q| {
                q.try_set_used_ring_address(with_low(q.used_ring(), value))
            }),
            VIRTIO_MMIO_QUEUE_USED_HIGH => self.configure_queue("QueueDeviceHigh", |q| {
                q.try_set_used_ring_address(with_high(q.used_ring(), value))
            }),
            // There are no shared memory regions to select.
            VIRTIO_MMIO_SHM_SEL => {}
            _ => crate::guest_warn!(
                "virtio-mmio: write of {value:#x} to unknown or read-only register {offset:#x}"
            ),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            crate::guest_warn!(
                "virtio-mmio: the driver changed its features after FEATURES_OK; ignored"
            );
            return;
        }
        match self.driver_features_select {
            0 => self.driver_features = self.driver_features & !0xffff_ffff | u64::from(value),
            1 => self.driver_features = self.driver_features & 0xffff_ffff | u64::from(value) << 32,
            _ => self.driver_features_unknown |= value != 0,
        }
    }

    /// The device status register. Writing 0 resets the device; otherwise the driver adds bits
    /// one step at a time (ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK), and the device refuses
    /// a step it cannot take by leaving its bit clear for the driver to read back.
    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let driver_bits = self.status & !VIRTIO_CONFIG_S_NEEDS_RESET;
        let mut value = value & !VIRTIO_CONFIG_S_NEEDS_RESET;
        if value & driver_bits != driver_bits {
            crate::guest_warn!(
                "virtio-mmio: status {value:#x} clears bits of {driver_bits:#x}; ignored"
            );
            return;
        }
        let added = value & !driver_bits;
        if added & VIRTIO_CONFIG_S_FEATURES_OK != 0 && !self.features_acceptable() {
            crate::guest_warn!(
                "virtio-mmio: refusing driver features {:#x}: the device offers {:#x} and \
                 requires VIRTIO_F_VERSION_1",
                self.driver_features,
                self.device_features()
            );
            value &= !VIRTIO_CONFIG_S_FEATURES_OK;
        }
        if added & VIRTIO_CONFIG_S_DRIVER_OK != 0 && value & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
            crate::guest_warn!("virtio-mmio: DRIVER_OK without FEATURES_OK; refused");
            value &= !VIRTIO_CONFIG_S_DRIVER_OK;
        }
        self.status = value | self.status & VIRTIO_CONFIG_S_NEEDS_RESET;
        if value & added & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            // Buffers the driver added before DRIVER_OK were not announced (it may not notify
            // before then): look at every ready queue now.
            for index in 0..self.device.queue_count() {
                self.notify(u32::from(index));
            }
        }
    }

    fn features_acceptable(&self) -> bool {
        let offered = self.device_features();
        self.driver_features & !offered == 0
            && self.driver_features & 1 << VIRTIO_F_VERSION_1 != 0
            && !self.driver_features_unknown
    }

    fn reset(&mut self) {
        self.device.reset();
        self.queues.iter_mut().for_each(Queue::reset);
        self.status = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.driver_features_unknown = false;
        self.queue_select = 0;
        self.interrupt_status = 0;
    }

    /// The device can go on no longer: it says so in its status and, if the driver is running,
    /// with a configuration change interrupt (section 2.1.2). It then ignores its queues until
    /// the driver resets it.
    fn mark_needs_reset(&mut self) {
        if self.status & VIRTIO_CONFIG_S_NEEDS_RESET != 0 {
            return;
        }
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            self.interrupt(VIRTIO_MMIO_INT_CONFIG);
        }
    }

    fn interrupt(&mut self, reason: u32) {
        self.interrupt_status |= reason;
        self.irq_line.raise(self.irq);
    }

    /// Whether the driver is running and the device not broken: the only time queues are served.
    fn live(&self) -> bool {
        self.status & (VIRTIO_CONFIG_S_DRIVER_OK | VIRTIO_CONFIG_S_NEEDS_RESET)
            == VIRTIO_CONFIG_S_DRIVER_OK
    }
}

/// The register an access of `len` bytes at `offset` names, if it is a whole 32-bit register:
/// every register below the config space is exactly 32 bits wide (section 4.2.2.2).
fn register_offset(offset: u64, len: usize) -> Option<u32> {
    if len != 4 || !offset.is_multiple_of(4) {
        crate::guest_warn!(
            "virtio-mmio: {len}-byte access at {offset:#x}; registers are 32-bit; ignored"
        );
        return None;
    }
    u32::try_from(offset).ok()
}

fn with_low(address: u64, low: u32) -> GuestAddress {
    GuestAddress(address & !0xffff_ffff | u64::from(low))
}

fn with_high(address: u64, high: u32) -> GuestAddress {
    GuestAddress(address & 0xffff_ffff | u64::from(high) << 32)
}

#[cfg(test)]
mod tests {
    use super::super::testing::TestDriver;
    use super::super::Rng;
    use super::*;
    use virtio_bindings::virtio_config::{
        VIRTIO_CONFIG_S_ACKNOWLEDGE as ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER as DRIVER,
        VIRTIO_CONFIG_S_DRIVER_OK as DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK as FEATURES_OK,
    };

    const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;

    #[test]
    fn identifies_itself_and_completes_the_handshake() {
        let mut driver = TestDriver::new(Box::new(Rng));
        assert_eq!(driver.read_reg(VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
        assert_eq!(driver.read_reg(VIRTIO_MMIO_VERSION), 2);
        assert_eq!(driver.read_reg(VIRTIO_MMIO_DEVICE_ID), 4);
        assert_eq!(driver.read_reg(VIRTIO_MMIO_VENDOR_ID), VENDOR_ID);
        assert_eq!(driver.device_features(), VERSION_1);
        assert!(driver.negotiate(Some(VERSION_1)));
        driver.write_reg(VIRTIO_MMIO_QUEUE_SEL, 1);
        assert_eq!(
            driver.read_reg(VIRTIO_MMIO_QUEUE_NUM_MAX),
            0,
            "rng has one queue"
        );
        driver.write_reg(VIRTIO_MMIO_QUEUE_SEL, 0);
        assert_eq!(driver.read_reg(VIRTIO_MMIO_QUEUE_NUM_MAX), 256);
        driver.set_up_queue(0);
        assert_eq!(driver.read_reg(VIRTIO_MMIO_QUEUE_READY), 1);
        driver.add_status(DRIVER_OK);
        assert_eq!(
            driver.status(),
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK
        );
        // Writing 0 resets everything.
        driver.write_reg(VIRTIO_MMIO_STATUS, 0);
        assert_eq!(driver.status(), 0);
        assert_eq!(driver.read_reg(VIRTIO_MMIO_QUEUE_READY), 0);
    }

    #[test]
    fn refuses_features_it_did_not_offer() {
        let mut driver = TestDriver::new(Box::new(Rng));
        assert!(
            !driver.negotiate(Some(VERSION_1 | 1 << 5)),
            "an unoffered feature"
        );
        assert!(
            !driver.negotiate(Some(0)),
            "a legacy driver without VERSION_1"
        );
        driver.negotiate(None);
        driver.write_reg(VIRTIO_MMIO_STATUS, 0);
        driver.add_status(ACKNOWLEDGE | DRIVER);
        driver.write_reg(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        driver.write_reg(VIRTIO_MMIO_DRIVER_FEATURES, 1);
        driver.write_reg(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 2);
        driver.write_reg(VIRTIO_MMIO_DRIVER_FEATURES, 1);
        driver.add_status(FEATURES_OK);
        assert_eq!(driver.status() & FEATURES_OK, 0, "a feature past bit 63");
        // DRIVER_OK without FEATURES_OK, and clearing a bit without a reset, are refused.
        driver.add_status(DRIVER_OK);
        assert_eq!(driver.status(), ACKNOWLEDGE | DRIVER);
        driver.write_reg(VIRTIO_MMIO_STATUS, ACKNOWLEDGE);
        assert_eq!(driver.status(), ACKNOWLEDGE | DRIVER);
    }

    #[test]
    fn odd_accesses_read_zero_and_write_nothing() {
        let driver = TestDriver::start(Box::new(Rng));
        let mut wide = [0xff; 8];
        driver
            .transport()
            .read(u64::from(VIRTIO_MMIO_MAGIC_VALUE), &mut wide);
        assert_eq!(wide, [0; 8]);
        let mut narrow = [0xff; 2];
        driver
            .transport()
            .read(u64::from(VIRTIO_MMIO_MAGIC_VALUE), &mut narrow);
        assert_eq!(narrow, [0; 2]);
        let mut config = [0xff; 4];
        driver.transport().read(0x100, &mut config);
        assert_eq!(config, [0; 4], "rng has no config space");
        for offset in [0x2, 0x3c, 0x40, 0xfff, u64::MAX - 3] {
            let mut data = [0xff; 4];
            driver.transport().read(offset, &mut data);
            assert_eq!(data, [0; 4], "offset {offset:#x}");
        }
        let status = driver.status();
        driver
            .transport()
            .write(u64::from(VIRTIO_MMIO_STATUS), &[0]);
        driver
            .transport()
            .write(u64::from(VIRTIO_MMIO_STATUS), &0u64.to_le_bytes());
        driver
            .transport()
            .write(u64::from(VIRTIO_MMIO_STATUS) + 1, &[0; 4]);
        driver.transport().write(0x104, &[1, 2, 3, 4]);
        assert_eq!(driver.status(), status, "no write reached the status");
    }
}
