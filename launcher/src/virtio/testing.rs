//! A virtio driver in miniature, for the device tests: it lays out split queues by hand in a
//! small guest memory and drives a transport through its registers, as Linux's virtio_mmio
//! driver does.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{lock, MmioTransport, VirtioDevice};

/// Descriptor flags: a device-writable buffer, and one followed by another.
pub const WRITE: u16 = VRING_DESC_F_WRITE as u16;
pub const NEXT: u16 = VRING_DESC_F_NEXT as u16;

/// The IRQ the test transports raise.
const IRQ: u32 = 5;

pub struct TestDriver {
    pub mem: GuestMemoryMmap,
    pub transport: Arc<Mutex<MmioTransport>>,
    interrupts: Arc<AtomicU32>,
    /// Per queue: the next free descriptor and the driver's avail index.
    next_descriptor: Vec<u16>,
    avail_idx: Vec<u16>,
    /// Where the next data buffer goes.
    next_buffer: u64,
}

impl TestDriver {
    pub const MEM_SIZE: u64 = 0x10_0000;
    /// The queue size the driver chooses: smaller than the device's maximum, as drivers may.
    pub const QUEUE_SIZE: u16 = 16;

    /// A driver that has not yet touched the device.
    pub fn new(device: Box<dyn VirtioDevice>) -> TestDriver {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), Self::MEM_SIZE as usize)])
            .unwrap();
        let interrupts = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&interrupts);
        let irq_line = Arc::new(move |irq: u32| {
            assert_eq!(irq, IRQ);
            counter.fetch_add(1, Ordering::SeqCst);
        });
        let queues = usize::from(device.queue_count());
        let transport = MmioTransport::new(device, mem.clone(), IRQ, irq_line);
        TestDriver {
            mem,
            transport: Arc::new(Mutex::new(transport)),
            interrupts,
            next_descriptor: vec![0; queues],
            avail_idx: vec![0; queues],
            next_buffer: 0x8_0000,
        }
    }

    /// A driver that has negotiated every offered feature, set up every queue and set
    /// DRIVER_OK, as Linux's probe does.
    pub fn start(device: Box<dyn VirtioDevice>) -> TestDriver {
        let mut driver = TestDriver::new(device);
        driver.negotiate(None);
        for queue in 0..driver.next_descriptor.len() as u32 {
            driver.set_up_queue(queue);
        }
        driver.add_status(VIRTIO_CONFIG_S_DRIVER_OK);
        assert_eq!(
            driver.read_reg(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_DRIVER_OK,
            4
        );
        driver
    }

    /// ACKNOWLEDGE, DRIVER, then accepts `features` (all offered ones if `None`) and sets
    /// FEATURES_OK. Returns whether the device kept FEATURES_OK.
    pub fn negotiate(&mut self, features: Option<u64>) -> bool {
        self.write_reg(VIRTIO_MMIO_STATUS, 0);
        self.add_status(VIRTIO_CONFIG_S_ACKNOWLEDGE);
        self.add_status(VIRTIO_CONFIG_S_DRIVER);
        let offered = self.device_features();
        let accepted = features.unwrap_or(offered);
        self.write_reg(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        self.write_reg(VIRTIO_MMIO_DRIVER_FEATURES, accepted as u32);
        self.write_reg(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        self.write_reg(VIRTIO_MMIO_DRIVER_FEATURES, (accepted >> 32) as u32);
        self.add_status(VIRTIO_CONFIG_S_FEATURES_OK);
        self.read_reg(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK != 0
    }

    pub fn device_features(&mut self) -> u64 {
        self.write_reg(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        let low = self.read_reg(VIRTIO_MMIO_DEVICE_FEATURES);
        self.write_reg(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        let high = self.read_reg(VIRTIO_MMIO_DEVICE_FEATURES);
        u64::from(high) << 32 | u64::from(low)
    }

    pub fn add_status(&mut self, bit: u32) {
        let status = self.read_reg(VIRTIO_MMIO_STATUS);
        self.write_reg(VIRTIO_MMIO_STATUS, status | bit);
    }

    /// Queue `q`'s rings: descriptor table, available ring, used ring.
    pub fn rings(queue: u32) -> [u64; 3] {
        let base = 0x1_0000 * (u64::from(queue) + 1);
        [base, base + 0x1000, base + 0x2000]
    }

    pub fn set_up_queue(&mut self, queue: u32) {
        let [desc, avail, used] = Self::rings(queue);
        self.write_reg(VIRTIO_MMIO_QUEUE_SEL, queue);
        assert!(self.read_reg(VIRTIO_MMIO_QUEUE_NUM_MAX) >= u32::from(Self::QUEUE_SIZE));
        self.write_reg(VIRTIO_MMIO_QUEUE_NUM, u32::from(Self::QUEUE_SIZE));
        for (low, address) in [
            (VIRTIO_MMIO_QUEUE_DESC_LOW, desc),
            (VIRTIO_MMIO_QUEUE_AVAIL_LOW, avail),
            (VIRTIO_MMIO_QUEUE_USED_LOW, used),
        ] {
            self.write_reg(low, address as u32);
            self.write_reg(low + 4, (address >> 32) as u32);
        }
        self.write_reg(VIRTIO_MMIO_QUEUE_READY, 1);
    }

    pub fn read_reg(&self, offset: u32) -> u32 {
        let mut data = [0; 4];
        lock(&self.transport).read(offset.into(), &mut data);
        u32::from_le_bytes(data)
    }

    pub fn write_reg(&mut self, offset: u32, value: u32) {
        lock(&self.transport).write(offset.into(), &value.to_le_bytes());
    }

    pub fn status(&self) -> u32 {
        self.read_reg(VIRTIO_MMIO_STATUS)
    }

    pub fn interrupts(&self) -> u32 {
        self.interrupts.load(Ordering::SeqCst)
    }

    /// A fresh, zeroed data buffer of `len` bytes in guest memory.
    pub fn alloc(&mut self, len: u64) -> GuestAddress {
        let address = self.next_buffer;
        self.next_buffer = (address + len + 15) & !15;
        assert!(self.next_buffer <= Self::MEM_SIZE);
        GuestAddress(address)
    }

    /// A buffer holding `bytes`.
    pub fn alloc_with(&mut self, bytes: &[u8]) -> GuestAddress {
        let address = self.alloc(bytes.len() as u64);
        self.mem.write_slice(bytes, address).unwrap();
        address
    }

    pub fn write_descriptor(
        &self,
        queue: u32,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let at = Self::rings(queue)[0] + 16 * u64::from(index);
        let mut raw = [0; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&raw, GuestAddress(at)).unwrap();
    }

    /// Makes the chain starting at descriptor `head` available.
    pub fn publish(&mut self, queue: u32, head: u16) {
        let avail = Self::rings(queue)[1];
        let idx = &mut self.avail_idx[queue as usize];
        let slot = avail + 4 + 2 * u64::from(*idx % Self::QUEUE_SIZE);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        *idx = idx.wrapping_add(1);
        self.mem.write_obj(*idx, GuestAddress(avail + 2)).unwrap();
    }

    /// Puts a chain of `(buffer, length, device-writable)` in queue `queue` and makes it
    /// available; returns its head.
    pub fn add_chain(&mut self, queue: u32, buffers: &[(GuestAddress, u32, bool)]) -> u16 {
        let first = self.next_descriptor[queue as usize];
        for (i, &(addr, len, writable)) in buffers.iter().enumerate() {
            let index = (first + i as u16) % Self::QUEUE_SIZE;
            let last = i + 1 == buffers.len();
            let flags = if writable { WRITE } else { 0 } | if last { 0 } else { NEXT };
            let next = (index + 1) % Self::QUEUE_SIZE;
            self.write_descriptor(queue, index, addr.0, len, flags, next);
        }
        self.next_descriptor[queue as usize] = (first + buffers.len() as u16) % Self::QUEUE_SIZE;
        self.publish(queue, first);
        first
    }

    pub fn notify(&mut self, queue: u32) {
        self.write_reg(VIRTIO_MMIO_QUEUE_NOTIFY, queue);
    }

    /// The used ring's entries so far: (head, length written).
    pub fn used(&self, queue: u32) -> Vec<(u32, u32)> {
        let used = Self::rings(queue)[2];
        let idx: u16 = self.mem.read_obj(GuestAddress(used + 2)).unwrap();
        (0..idx)
            .map(|i| {
                let slot = used + 4 + 8 * u64::from(i % Self::QUEUE_SIZE);
                let id: u32 = self.mem.read_obj(GuestAddress(slot)).unwrap();
                let len: u32 = self.mem.read_obj(GuestAddress(slot + 4)).unwrap();
                (id, len)
            })
            .collect()
    }

    pub fn read_bytes(&self, address: GuestAddress, len: usize) -> Vec<u8> {
        let mut bytes = vec![0; len];
        self.mem.read_slice(&mut bytes, address).unwrap();
        bytes
    }

    pub fn transport(&self) -> MutexGuard<'_, MmioTransport> {
        lock(&self.transport)
    }
}
