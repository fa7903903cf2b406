//! The device pages: which guest-physical page is which device, and which IRQ it raises.
//!
//! The launcher places one 4 KiB page per device just above guest RAM and tells the guest where
//! they are on its command line, in the syntax Linux's virtio_mmio driver parses:
//! `virtio_mmio.device=4K@0x4000000:1`. When the guest touches one of those pages, the launcher
//! hands the access to [`DeviceManager::mmio_read`] or [`DeviceManager::mmio_write`], which pick
//! the page's transport. IRQ 0 is the guest's timer; devices get 1, 2, 3... in order.

use std::fmt;
use std::sync::{Arc, Mutex};

use anyhow::bail;
use lguest_abi::hcall::{IRQS, TIMER_IRQ};
use lguest_abi::PAGE_SIZE;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::{lock, spawn_input_thread, IrqLine, MmioTransport, VirtioDevice};

/// Every device of one guest.
pub struct DeviceManager {
    /// The guest-physical address of the first device page.
    first_page: GuestAddress,
    /// Device `i` lives at page `first_page + i * PAGE_SIZE` and raises IRQ `first_irq + i`.
    transports: Vec<Arc<Mutex<MmioTransport>>>,
}

/// The first IRQ a device gets: the one after the timer's.
const FIRST_IRQ: u32 = TIMER_IRQ + 1;

/// An access to a guest-physical address where no device page is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoDevice {
    pub gpa: u64,
}

impl fmt::Display for NoDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no device at guest-physical address {:#x}", self.gpa)
    }
}

impl std::error::Error for NoDevice {}

impl DeviceManager {
    /// Places `devices` at consecutive pages from `first_page` (page-aligned, just above RAM),
    /// with IRQs 1, 2, 3..., their queues in `mem`, their interrupts raised through `irq_line`.
    pub fn new(
        first_page: GuestAddress,
        mem: GuestMemoryMmap,
        irq_line: Arc<dyn IrqLine>,
        devices: Vec<Box<dyn VirtioDevice>>,
    ) -> anyhow::Result<DeviceManager> {
        if !first_page.0.is_multiple_of(PAGE_SIZE) {
            bail!("device pages must start on a page boundary, not at {first_page:#x?}");
        }
        if devices.len() > (IRQS - FIRST_IRQ) as usize {
            bail!(
                "{} devices need more IRQs than the {IRQS} a guest has",
                devices.len()
            );
        }
        let transports = devices
            .into_iter()
            .zip(FIRST_IRQ..)
            .map(|(device, irq)| {
                let transport = MmioTransport::new(device, mem.clone(), irq, Arc::clone(&irq_line));
                Arc::new(Mutex::new(transport))
            })
            .collect();
        Ok(DeviceManager {
            first_page,
            transports,
        })
    }

    /// How many device pages there are (one per device).
    pub fn page_count(&self) -> u64 {
        self.transports.len() as u64
    }

    /// The device page holding `gpa`, and the offset of `gpa` within it.
    fn route(&self, gpa: u64) -> Result<(&Mutex<MmioTransport>, u64), NoDevice> {
        let page = gpa
            .checked_sub(self.first_page.0)
            .map(|offset| offset / PAGE_SIZE)
            .and_then(|page| usize::try_from(page).ok())
            .and_then(|page| self.transports.get(page))
            .ok_or(NoDevice { gpa })?;
        Ok((page, gpa % PAGE_SIZE))
    }

    /// The guest reads `data.len()` bytes (1, 2, 4 or 8) at guest-physical `gpa`.
    pub fn mmio_read(&self, gpa: u64, data: &mut [u8]) -> Result<(), NoDevice> {
        let (transport, offset) = self.route(gpa)?;
        lock(transport).read(offset, data);
        Ok(())
    }

    /// The guest writes `data` at guest-physical `gpa`.
    pub fn mmio_write(&self, gpa: u64, data: &[u8]) -> Result<(), NoDevice> {
        let (transport, offset) = self.route(gpa)?;
        lock(transport).write(offset, data);
        Ok(())
    }

    /// The Linux command-line fragment naming every device for the virtio_mmio driver:
    /// `virtio_mmio.device=<size>@<base>:<irq>` for each, separated by spaces.
    pub fn kernel_cmdline(&self) -> String {
        (0..self.page_count())
            .zip(FIRST_IRQ..)
            .map(|(page, irq)| {
                let base = self.first_page.0 + page * PAGE_SIZE;
                format!("virtio_mmio.device=4K@{base:#x}:{irq}")
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Starts one input thread for each device with host input (the console's stdin, a tap).
    /// The threads run until their input ends or the process exits.
    pub fn start_input_threads(&self) -> std::io::Result<()> {
        for transport in &self.transports {
            spawn_input_thread(Arc::clone(transport))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Rng;
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use virtio_bindings::virtio_config::{
        VIRTIO_CONFIG_S_ACKNOWLEDGE as ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER as DRIVER,
        VIRTIO_CONFIG_S_DRIVER_OK as DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK as FEATURES_OK,
        VIRTIO_F_VERSION_1,
    };
    use virtio_bindings::virtio_mmio::*;

    fn manager(devices: usize, irq_seen: Arc<AtomicU32>) -> DeviceManager {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let irq_line = Arc::new(move |irq: u32| irq_seen.store(irq, Ordering::SeqCst));
        let devices = (0..devices)
            .map(|_| Box::new(Rng) as Box<dyn VirtioDevice>)
            .collect();
        DeviceManager::new(GuestAddress(0x10_0000), mem, irq_line, devices).unwrap()
    }

    #[test]
    fn pages_follow_ram_and_irqs_follow_the_timer() {
        let devices = manager(3, Arc::default());
        assert_eq!(devices.page_count(), 3);
        assert_eq!(
            devices.kernel_cmdline(),
            "virtio_mmio.device=4K@0x100000:1 virtio_mmio.device=4K@0x101000:2 \
             virtio_mmio.device=4K@0x102000:3"
        );
    }

    #[test]
    fn accesses_are_routed_by_page() {
        let devices = manager(2, Arc::default());
        let mut data = [0; 4];
        let second = 0x10_1000;
        devices
            .mmio_read(second + u64::from(VIRTIO_MMIO_MAGIC_VALUE), &mut data)
            .unwrap();
        assert_eq!(&data, b"virt");
        devices
            .mmio_read(second + u64::from(VIRTIO_MMIO_DEVICE_ID), &mut data)
            .unwrap();
        assert_eq!(u32::from_le_bytes(data), 4);
        for gpa in [0, 0xf_ffff, 0x10_2000, u64::MAX] {
            assert_eq!(devices.mmio_read(gpa, &mut data), Err(NoDevice { gpa }));
            assert_eq!(devices.mmio_write(gpa, &data), Err(NoDevice { gpa }));
        }
    }

    #[test]
    fn each_device_raises_its_own_irq() {
        let irq_seen = Arc::new(AtomicU32::new(0));
        let devices = manager(2, Arc::clone(&irq_seen));
        // A queue of size 3 breaks the second device, which tells the driver with a
        // configuration interrupt once DRIVER_OK is set.
        let second = 0x10_1000;
        let write = |offset: u32, value: u32| {
            devices
                .mmio_write(second + u64::from(offset), &value.to_le_bytes())
                .unwrap();
        };
        write(VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER);
        write(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        write(VIRTIO_MMIO_DRIVER_FEATURES, 1 << (VIRTIO_F_VERSION_1 - 32));
        write(VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        write(
            VIRTIO_MMIO_STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
        );
        write(VIRTIO_MMIO_QUEUE_NUM, 3);
        assert_eq!(irq_seen.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn misplaced_pages_and_too_many_devices_are_refused() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let line: Arc<dyn IrqLine> = Arc::new(|_irq: u32| {});
        assert!(
            DeviceManager::new(GuestAddress(0x1800), mem.clone(), line.clone(), vec![]).is_err()
        );
        let many = (0..IRQS - FIRST_IRQ + 1)
            .map(|_| Box::new(Rng) as Box<dyn VirtioDevice>)
            .collect();
        assert!(DeviceManager::new(GuestAddress(0x1000), mem, line, many).is_err());
    }
}
