//! The hostile driver: virtqueues no honest driver would build, handed to the launcher's devices.
//!
//! A virtio device reads descriptors the guest wrote, so every address, length and link in them
//! is the guest's choice. `virtqueue-<kind> GPA` drives the virtio-mmio device at guest-physical
//! GPA (an entropy device, `--rng`: it writes whatever buffer it is given) by hand through its
//! registers, the way virtio 1.x section 4.2.3 says, and then offers it one bad request:
//!
//! - `virtqueue-loop`: two descriptors chained to each other, forever;
//! - `virtqueue-wild`: a buffer at 1 TiB, far outside guest memory;
//! - `virtqueue-zero`: a buffer of length 0;
//! - `virtqueue-huge`: a 4 GiB buffer starting in RAM and running past its end;
//! - `virtqueue-rings-outside`: the descriptor table itself placed beyond RAM;
//! - `virtqueue-bad-size`: a queue of 3 entries (sizes must be powers of two).
//!
//! Whatever the device does about it (an error, nothing, "needs reset"), the launcher must not
//! crash or touch memory outside the guest. The guest prints what it saw, then resets the device
//! and makes one honest request: `virtqueue-<kind>: the device still works` if it is filled in.

use core::ptr;

use crate::device_pages::map_device_page;
use crate::hcall::poweroff;
use crate::println;

// The virtio-mmio registers (virtio 1.2, section 4.2.2), as byte offsets.
const MAGIC: u64 = 0x000;
const DEVICE_ID: u64 = 0x008;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
const QUEUE_NOTIFY: u64 = 0x050;
const INTERRUPT_STATUS: u64 = 0x060;
const INTERRUPT_ACK: u64 = 0x064;
const STATUS: u64 = 0x070;
const QUEUE_DESC: u64 = 0x080;
const QUEUE_DRIVER: u64 = 0x090;
const QUEUE_DEVICE: u64 = 0x0a0;

// Device status bits (section 2.1).
const ACKNOWLEDGE: u32 = 1;
const DRIVER: u32 = 2;
const DRIVER_OK: u32 = 4;
const FEATURES_OK: u32 = 8;
/// VIRTIO_F_VERSION_1 is feature bit 32: bit 0 of the second feature word.
const VERSION_1_HIGH_BIT: u32 = 1;
const ENTROPY_DEVICE_ID: u32 = 4;
const VIRTIO_MAGIC: u32 = 0x7472_6976;

// Descriptor flags (section 2.7.5).
const NEXT: u16 = 1;
const WRITE: u16 = 2;

const QUEUE_SIZE: usize = 8;

/// One split virtqueue's three parts, and a buffer for the device to fill.
#[repr(C, align(4096))]
struct Rings {
    descriptors: [Descriptor; QUEUE_SIZE],
    /// flags, idx, ring[QUEUE_SIZE]
    avail: [u16; 2 + QUEUE_SIZE],
    _pad: [u8; 4096 - 16 * QUEUE_SIZE - 2 * (2 + QUEUE_SIZE)],
    /// flags, idx, then (id: u32, len: u32) per entry: as u32 words.
    used: [u32; 1 + 2 * QUEUE_SIZE],
    buffer: [u8; 64],
}

#[derive(Clone, Copy)]
#[repr(C)]
struct Descriptor {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

static mut RINGS: Rings = Rings {
    descriptors: [Descriptor {
        addr: 0,
        len: 0,
        flags: 0,
        next: 0,
    }; QUEUE_SIZE],
    avail: [0; 2 + QUEUE_SIZE],
    _pad: [0; 4096 - 16 * QUEUE_SIZE - 2 * (2 + QUEUE_SIZE)],
    used: [0; 1 + 2 * QUEUE_SIZE],
    buffer: [0; 64],
};

/// The device's registers, at the address the device page is mapped.
struct Device(u64);

impl Device {
    fn read(&self, register: u64) -> u32 {
        // SAFETY: `self.0` is the mapped device page and every register offset is inside it.
        unsafe { ptr::read_volatile((self.0 + register) as *const u32) }
    }

    fn write(&self, register: u64, value: u32) {
        // SAFETY: as for read.
        unsafe { ptr::write_volatile((self.0 + register) as *mut u32, value) }
    }

    fn write_address(&self, register: u64, address: u64) {
        self.write(register, address as u32);
        self.write(register + 4, (address >> 32) as u32);
    }

    /// Reset, then the initialisation steps of section 3.1.1 up to (not including) the queue.
    fn negotiate(&self) -> Result<(), &'static str> {
        self.write(STATUS, 0);
        self.write(STATUS, ACKNOWLEDGE);
        self.write(STATUS, ACKNOWLEDGE | DRIVER);
        self.write(DEVICE_FEATURES_SEL, 1);
        if self.read(DEVICE_FEATURES) & VERSION_1_HIGH_BIT == 0 {
            return Err("the device does not offer VIRTIO_F_VERSION_1");
        }
        self.write(DRIVER_FEATURES_SEL, 0);
        self.write(DRIVER_FEATURES, 0);
        self.write(DRIVER_FEATURES_SEL, 1);
        self.write(DRIVER_FEATURES, VERSION_1_HIGH_BIT);
        self.write(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        if self.read(STATUS) & FEATURES_OK == 0 {
            return Err("the device refused FEATURES_OK");
        }
        Ok(())
    }

    /// Queue 0 of `size` entries with its descriptor table at `descriptors`, then DRIVER_OK.
    fn set_up_queue(&self, size: u32, descriptors: u64) {
        clear_rings();
        self.write(QUEUE_SEL, 0);
        self.write(QUEUE_NUM, size);
        self.write_address(QUEUE_DESC, descriptors);
        // SAFETY: only the fields' addresses are taken.
        let (avail, used) = unsafe {
            (
                ptr::addr_of!(RINGS.avail) as u64,
                ptr::addr_of!(RINGS.used) as u64,
            )
        };
        self.write_address(QUEUE_DRIVER, avail);
        self.write_address(QUEUE_DEVICE, used);
        self.write(QUEUE_READY, 1);
        self.write(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    }
}

/// Empties the rings: no descriptors, nothing available, nothing used. Done before the queue is
/// made ready, as the device may look at the rings from then on.
fn clear_rings() {
    // SAFETY: single CPU; the queue is not ready, so the device does not look at the rings.
    unsafe {
        let rings = &mut *ptr::addr_of_mut!(RINGS);
        rings.descriptors = [Descriptor {
            addr: 0,
            len: 0,
            flags: 0,
            next: 0,
        }; QUEUE_SIZE];
        rings.avail = [0; 2 + QUEUE_SIZE];
        rings.used = [0; 1 + 2 * QUEUE_SIZE];
        rings.buffer = [0; 64];
    }
}

/// Puts `chain` in the descriptor table, makes descriptor 0 available (the first and only
/// request since the queue was set up) and notifies the device. Returns the used ring's index
/// and first length afterwards.
fn offer(device: &Device, chain: &[Descriptor]) -> (u32, u32) {
    // SAFETY: single CPU; the device reads these only once notified, and is done with them
    // before the guest runs again (the launcher handles the notify before it resumes us).
    unsafe {
        let rings = &mut *ptr::addr_of_mut!(RINGS);
        rings.descriptors[..chain.len()].copy_from_slice(chain);
        ptr::write_volatile(ptr::addr_of_mut!(rings.avail[1]), 1);
    }
    device.write(QUEUE_NOTIFY, 0);
    // SAFETY: as above.
    unsafe {
        let used = ptr::addr_of!(RINGS.used);
        let index = ptr::read_volatile(used.cast::<u32>()) >> 16;
        let len = ptr::read_volatile(used.cast::<u32>().add(2));
        (index, len)
    }
}

/// `virtqueue-<kind> GPA`: see the file's header.
pub fn attack(name: &str, gpa: u64) -> ! {
    println!("attack: {name}");
    let device = Device(map_device_page(gpa));
    let (magic, id) = (device.read(MAGIC), device.read(DEVICE_ID));
    if magic != VIRTIO_MAGIC || id != ENTROPY_DEVICE_ID {
        panic!("{gpa:#x} is not a virtio entropy device: magic {magic:#x}, device id {id}");
    }
    if let Err(why) = device.negotiate() {
        panic!("{name}: {why}");
    }
    // SAFETY: addresses of the static's fields only.
    let (table, buffer) = unsafe {
        (
            ptr::addr_of!(RINGS.descriptors) as u64,
            ptr::addr_of!(RINGS.buffer) as u64,
        )
    };
    let max = device.read(QUEUE_NUM_MAX);
    let (size, table_at) = match name {
        "virtqueue-rings-outside" => (QUEUE_SIZE as u32, 1 << 40),
        "virtqueue-bad-size" => (3, table),
        _ => (QUEUE_SIZE as u32, table),
    };
    device.set_up_queue(size, table_at);
    let writable = |addr: u64, len: u32| Descriptor {
        addr,
        len,
        flags: WRITE,
        next: 0,
    };
    let chain: &[Descriptor] = match name {
        "virtqueue-loop" => &[
            Descriptor {
                flags: WRITE | NEXT,
                next: 1,
                ..writable(buffer, 16)
            },
            Descriptor {
                flags: WRITE | NEXT,
                next: 0,
                ..writable(buffer + 16, 16)
            },
        ],
        "virtqueue-wild" => &[writable(1 << 40, 64)],
        "virtqueue-zero" => &[writable(buffer, 0)],
        "virtqueue-huge" => &[writable(buffer, u32::MAX)],
        "virtqueue-rings-outside" | "virtqueue-bad-size" => &[writable(buffer, 64)],
        _ => panic!("unknown scenario {name:?}"),
    };
    let (index, len) = offer(&device, chain);
    let interrupt = device.read(INTERRUPT_STATUS);
    device.write(INTERRUPT_ACK, interrupt);
    println!(
        "{name}: queue max {max}, used index {index}, used length {len}, interrupt {interrupt:#x}, \
         status {:#x}",
        device.read(STATUS)
    );

    if let Err(why) = device.negotiate() {
        panic!("{name}: after the attack: {why}");
    }
    device.set_up_queue(QUEUE_SIZE as u32, table);
    let (index, len) = offer(&device, &[writable(buffer, 64)]);
    // SAFETY: the device has returned the buffer (or not); it no longer writes it.
    let filled = unsafe { (*ptr::addr_of!(RINGS.buffer)).iter().any(|b| *b != 0) };
    if index == 1 && len == 64 && filled {
        println!("{name}: the device still works");
    } else {
        println!("{name}: the device no longer works (used index {index}, length {len})");
    }
    poweroff("virtqueue attack done")
}
