//! 16. Virtio over MMIO: finding devices, reaching their registers, lending them memory, waiting.
//!
//! A virtio device is a page of registers (the MMIO transport: a magic number, the device type,
//! feature bits, where its queues are, a doorbell) and an interrupt line. The kernel is told of
//! each on its command line, in Linux's syntax, `virtio_mmio.device=<size>@<base>:<irq>`:
//! natively QEMU's `microvm` machine appends one such word per device it has (e.g.
//! `virtio_mmio.device=512@0xfeb00e00:12`), under lguest the launcher does
//! (`virtio_mmio.device=4K@0x4000000:1`, right above guest RAM, IRQs from 1). The drivers are
//! the `virtio-drivers` crate's, which wants three things of a kernel, all here:
//!
//! - **registers**: [`probe`] maps each device's page into the I/O window (`paging::map_io`,
//!   uncached) and hands it to the crate's `MmioTransport`, which reads the device type;
//!   natively QEMU emulates every access, under lguest each one is an exit to the launcher;
//! - **memory** ([`VirtioHal`], the crate's `Hal`): frames for the queues from the frame
//!   allocator, physically contiguous, and the physical address of any buffer the kernel lends a
//!   device, which the identity map makes the buffer's own address;
//! - **interrupts**: IRQ n arrives at vector 32 + n in both worlds (natively through the 8259
//!   PIC, under lguest from the host), where [`interrupt`] counts it and ends it (`eoi`). The
//!   line is opened (the irq op `unmask_irq`) once the driver is ready. A driver that waits for
//!   its device ([`wait_for`]) first looks at the queue, which is often answer enough (under
//!   lguest the launcher finishes a request before the guest runs on); if not, it sleeps
//!   between interrupts (`safe_halt`), and before each look it acknowledges the device's
//!   interrupt (the transport's `ack_interrupt`, which lowers the line), so a completion that
//!   comes after the look raises the line anew and wakes the next sleep. The acknowledgement
//!   is two register accesses, two exits under lguest: the first look does without.
//!
//! Every wait is bounded, by the clock, with the tick on (timer.rs) so that a sleep ends even if
//! the device never speaks. A request that must complete and does not ([`Device::complete`])
//! resets the device, writing 0 to its status register: there is no taking one request back
//! from a device, and only a reset promises it will no longer write into memory it was given.
//! The driver then answers every later call with an error: a device that misbehaves fails its
//! self-test, and never panics the kernel.
//!
//! What the drivers are, each in a file of this folder: the crate's block and network drivers
//! (`VirtIOBlk`, `VirtIONetRaw`: block.rs, net.rs), with the non-blocking half of their
//! interfaces, because the blocking half spins without bound; and two of this kernel's own, on
//! the crate's queues, for the entropy source and the console (rng.rs, console.rs), whose
//! drivers in the crate can only spin, or need an allocator this kernel does not have.

pub mod block;
pub mod console;
pub mod net;
pub mod rng;

use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use guest_core::virtio_mmio::{Location, Locations, DEVICE_IRQS};
use lguest_abi::PAGE_SIZE;
use paravirt_ops::{irq, platform, time};
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::transport::{DeviceType, Transport};
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

use crate::{frames, paging, println, timer};
use block::Block;
use console::Console;
use net::Net;
use rng::Rng;

// ---- Probing ----------------------------------------------------------------------------------
//
// Where the devices are is the command line's word, read by guest-core
// (`guest-core/src/virtio_mmio.rs`, unit-tested on the host): `kernel_main` asks it for the
// `Locations` that `probe` takes.

/// The devices the kernel drives: the first of each kind it knows.
#[derive(Default)]
pub struct Devices {
    pub rng: Option<Rng>,
    pub console: Option<Console>,
    pub block: Option<Block>,
    pub net: Option<Net>,
}

impl Devices {
    /// Whether there is any device at all.
    pub fn any(&self) -> bool {
        self.rng.is_some() || self.console.is_some() || self.block.is_some() || self.net.is_some()
    }
}

/// Maps each device's registers, reads its type, starts a driver for the first entropy source,
/// console, block device and network card, and opens their interrupt lines. One line per device
/// says what became of it.
pub fn probe(locations: &Locations) -> Devices {
    let mut devices = Devices::default();
    for &location in locations.iter() {
        let registers = Registers(paging::map_io(location.base, location.size));
        let header =
            NonNull::new(registers.0 as *mut VirtIOHeader).expect("the I/O window is not at 0");
        // SAFETY: `map_io` mapped the whole `location.size` bytes at `registers`, for good, to
        // the device's registers and nothing else; no other transport is made for them.
        let transport = match unsafe { MmioTransport::new(header, location.size as usize) } {
            Ok(transport) => transport,
            Err(error) => {
                println!("virtio: {location}: no device: {error}");
                continue;
            }
        };
        let (kind, version) = (transport.device_type(), transport.version());
        let device = Device {
            location,
            registers,
            dead: false,
        };
        let started = match kind {
            DeviceType::EntropySource if devices.rng.is_none() => {
                Rng::new(transport, device).map(|d| devices.rng = Some(d))
            }
            DeviceType::Console if devices.console.is_none() => {
                Console::new(transport, device).map(|d| devices.console = Some(d))
            }
            DeviceType::Block if devices.block.is_none() => {
                Block::new(transport, device).map(|d| devices.block = Some(d))
            }
            DeviceType::Network if devices.net.is_none() => {
                Net::new(transport, device).map(|d| devices.net = Some(d))
            }
            _ => {
                println!("virtio: {location}: a {kind:?} device, not driven");
                continue;
            }
        };
        match started {
            Ok(()) => {
                irq::unmask_irq(location.irq);
                println!("virtio: {location}: {kind:?}, {version:?} MMIO transport");
            }
            Err(error) => {
                // A driver that failed half-way may have shown the device queues in memory
                // it has given back since: the device must forget them.
                registers.reset();
                println!("virtio: {location}: {kind:?}, but its driver failed: {error}");
            }
        }
    }
    devices
}

// ---- A device as its driver holds it ----------------------------------------------------------

/// What a driver keeps of its device besides the crate's driver: where it is, and whether it
/// still answers.
pub struct Device {
    location: Location,
    registers: Registers,
    /// A request timed out, and the device was reset.
    dead: bool,
}

/// The MMIO transport's status register (the same in its legacy and modern layouts); writing 0
/// resets the device.
const STATUS_REGISTER: u64 = 0x70;

/// Where `probe` mapped a device's registers (only `probe` makes one).
#[derive(Clone, Copy)]
struct Registers(u64);

impl Registers {
    /// Resets the device: it forgets its queues, and every buffer in them (virtio 1.2, 2.1:
    /// after a reset it uses none of them).
    fn reset(self) {
        // SAFETY: a 32-bit write to the status register of a device's page, which `probe`
        // mapped for good and which is no memory of the kernel's.
        unsafe { ((self.0 + STATUS_REGISTER) as *mut u32).write_volatile(0) };
    }
}

impl Device {
    pub fn location(&self) -> Location {
        self.location
    }

    /// How many interrupts its line has brought so far.
    pub fn interrupts(&self) -> u64 {
        INTERRUPTS[self.location.irq as usize].load(Ordering::Relaxed)
    }

    /// Ok while the device answers; [`Error::Dead`] once one of its requests timed out.
    pub fn check(&self) -> Result<(), Error> {
        if self.dead {
            return Err(Error::Dead);
        }
        Ok(())
    }

    /// Waits up to `timeout_ns` for a request that must complete, with [`wait_for`]; if `poll`
    /// never has an answer, resets the device (see the module docs) and says [`Error::Timeout`].
    pub fn complete<T>(
        &mut self,
        what: &'static str,
        timeout_ns: u64,
        poll: impl FnMut(Acknowledge) -> Option<T>,
    ) -> Result<T, Error> {
        if let Some(answer) = wait_for(timeout_ns, poll) {
            return Ok(answer);
        }
        self.registers.reset();
        self.dead = true;
        Err(Error::Timeout {
            what,
            ms: timeout_ns / 1_000_000,
        })
    }
}

/// Why a driver could not do what it was asked.
#[derive(Debug)]
pub enum Error {
    /// The crate refused, or the device answered with an error status.
    Virtio(virtio_drivers::Error),
    /// The device did not answer in time, and was reset.
    Timeout { what: &'static str, ms: u64 },
    /// An earlier request timed out: the device was reset, and is not used again.
    Dead,
    /// No memory for the driver's buffers.
    NoMemory,
    /// The device answered, but not as a device of its kind may.
    Misbehaved(&'static str),
}

impl From<virtio_drivers::Error> for Error {
    fn from(error: virtio_drivers::Error) -> Error {
        Error::Virtio(error)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Virtio(error) => write!(f, "{error}"),
            Error::Timeout { what, ms } => write!(f, "{what} did not complete in {ms} ms"),
            Error::Dead => write!(f, "the device was reset after a request timed out"),
            Error::NoMemory => write!(f, "no memory for the driver's buffers"),
            Error::Misbehaved(what) => write!(f, "{what}"),
        }
    }
}

// ---- Interrupts and waits ---------------------------------------------------------------------

/// Interrupts taken, per IRQ.
static INTERRUPTS: [AtomicU64; DEVICE_IRQS.end as usize] =
    [const { AtomicU64::new(0) }; DEVICE_IRQS.end as usize];

/// The handler for vectors 33 to 47: count, and end the interrupt at the controller. The device
/// is acknowledged by the driver that wakes up (module docs): an edge-triggered PIC line, or
/// the host's pending bit, brings the next interrupt only when the device raises its line anew.
pub fn interrupt(irq: u32) {
    INTERRUPTS[irq as usize].fetch_add(1, Ordering::Relaxed);
    platform::eoi(irq);
}

/// Whether a [`wait_for`] poll must acknowledge the device's interrupt before it looks.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Acknowledge {
    /// The first look: nothing slept yet, so nothing to acknowledge before it.
    No,
    /// Every look after that: the next sleep must be woken by a completion after this look.
    Yes,
}

/// Asks `poll` until it has an answer, sleeping between interrupts, for at most `timeout_ns`.
/// Called, and returns, with interrupts off: `poll` looks with them off, and `safe_halt` turns
/// them on and sleeps in one step, so an interrupt that comes after the look wakes the sleep
/// instead of slipping in before it. The tick must be on: it ends a sleep no device ends.
pub fn wait_for<T>(timeout_ns: u64, mut poll: impl FnMut(Acknowledge) -> Option<T>) -> Option<T> {
    assert!(timer::running(), "a device wait without the tick");
    let deadline = time::sched_clock() + timeout_ns;
    if let Some(answer) = poll(Acknowledge::No) {
        return Some(answer);
    }
    loop {
        if let Some(answer) = poll(Acknowledge::Yes) {
            return Some(answer);
        }
        if time::sched_clock() >= deadline {
            return None;
        }
        irq::safe_halt();
        irq::irq_disable();
    }
}

// ---- Memory -----------------------------------------------------------------------------------

/// Memory a driver lends its device for as long as the kernel runs: whole frames, physically
/// contiguous, zeroed at first. Never given back, so the device may keep writing into it after
/// any wait of the driver's gave up. The driver reads and writes it only while the device does
/// not own it (no request of the driver's names it).
pub struct DmaBuffer {
    start: u64,
    len: usize,
}

impl DmaBuffer {
    /// `len` bytes, rounded up to whole frames; [`Error::NoMemory`] if RAM is short.
    pub fn new(len: usize) -> Result<DmaBuffer, Error> {
        let pages = len.div_ceil(PAGE_SIZE as usize);
        let start = frames::alloc_contiguous(pages).ok_or(Error::NoMemory)?;
        Ok(DmaBuffer { start, len })
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: frames of ours alone (never freed), identity-mapped; shared only with the
        // device, which writes them only while a request names them, when the driver does not
        // look (the type's contract).
        unsafe { core::slice::from_raw_parts(self.start as *const u8, self.len) }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes this the only reference.
        unsafe { core::slice::from_raw_parts_mut(self.start as *mut u8, self.len) }
    }
}

/// The crate's `Hal`: memory for the queues, and device addresses of buffers.
pub struct VirtioHal;

// SAFETY: `dma_alloc` returns frames nobody else owns until `dma_dealloc` gives them back,
// zeroed, page-aligned and identity-mapped, so the pointer is valid for them; `share` returns
// the physical address of memory that stays where it is (the kernel never moves a page).
unsafe impl Hal for VirtioHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        // The crate takes a physical address of 0 as "no memory" (frame 0 is never handed out).
        frames::alloc_contiguous(pages)
            .and_then(|pa| Some((pa, NonNull::new(pa as *mut u8)?)))
            .unwrap_or((0, NonNull::dangling()))
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        for page in 0..pages as u64 {
            // SAFETY: the caller gives back frames `dma_alloc` gave it, unused by then.
            unsafe { frames::free(paddr + page * PAGE_SIZE) };
        }
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        let va = paging::map_io(paddr, size as u64);
        NonNull::new(va as *mut u8).expect("the I/O window is not at 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        let va = buffer.as_ptr().cast::<u8>() as u64;
        paging::phys_addr(va, buffer.len() as u64)
            .expect("a buffer for a device outside the identity map of RAM")
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}
