//! `/dev/lguest`: the requests the launcher writes, and how the host answers them.
//!
//! Each open file of `/dev/lguest` is one guest. Every `write()` is one request: a little-endian
//! `u64` request code followed by its arguments, each a `u64`, and nothing else: a write of any
//! other length is refused. A request that is refused changes nothing.
//!
//! | request          | words | arguments                                                    |
//! |------------------|-------|--------------------------------------------------------------|
//! | [`INITIALIZE`]   | 7     | [`Initialize`]: memory, entry point, page tables, boot_params |
//! | [`IRQ`]          | 2     | IRQ number, below [`crate::hcall::IRQS`]                     |
//! | [`GETREG`]       | 2     | register offset ([`crate::regs::Reg::offset`])               |
//! | [`SETREG`]       | 3     | register offset, new value                                   |
//! | [`FAST_PATHS`]   | 2     | 0 to turn the Switcher's fast paths off, 1 to turn them on   |
//!
//! `read()` after GETREG returns that register as 8 bytes; any other `read()` runs the guest
//! until it needs the launcher and returns an exit record ([`crate::exit`]). The request codes
//! are lguest's own, so a reader who knows
//! lguest's `enum lguest_req` finds them where they were (1, 3 and 4 were retired by lguest;
//! 7, TRAP, is not needed: the host delivers traps itself).
//!
//! IRQ is the one request any thread of the launcher may send, and the one that does not wait
//! for a running guest: device threads raise their interrupts while the main thread is inside
//! `read()` running the guest (a halted guest wakes up, a running one is kicked out to take it).
//!
//! Every refusal has its own errno, listed by [`Refusal`].

use super::PAGE_SIZE;

/// Set up the guest: its memory, entry point and first page tables. Once per open file.
pub const INITIALIZE: u64 = 0;
/// Raise an interrupt in the guest: a device has something for it.
pub const IRQ: u64 = 2;
/// Ask for one register; the next `read()` returns its value.
pub const GETREG: u64 = 5;
/// Change one register: a general register, RIP, RSP, or RFLAGS' six arithmetic flags
/// ([`crate::regs::Reg::writable_bits`]); the selectors and the rest of RFLAGS are the host's.
pub const SETREG: u64 = 6;
/// Turn the Switcher's fast paths (a user `syscall` delivered without leaving the guest's
/// address space: lg-module/src/fast_syscall.rs) off (0) or on (1, as every guest starts). For
/// comparing the two, and for showing that a hostile guest meets the same checks either way.
/// After INITIALIZE; takes effect at the guest's next trip in.
pub const FAST_PATHS: u64 = 9;

/// The most guest-physical memory (RAM plus device pages) one guest may have: 64 GiB.
///
/// The host walks and shadows the guest's page tables and pins its pages; bounding the size
/// keeps a hostile launcher from making those structures absurdly large, and 64 GiB is far more
/// than a teaching machine with 24 GiB of RAM will give a guest.
pub const MAX_GUEST_PAGES: u64 = (64 << 30) / PAGE_SIZE;

/// The arguments of INITIALIZE, in wire order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Initialize {
    /// The launcher's virtual address of guest-physical address 0; page-aligned. Guest memory
    /// is the launcher's own memory from `base` to `base + device_limit * PAGE_SIZE`.
    pub base: u64,
    /// Pages of guest RAM: guest-physical `0..pfn_limit * PAGE_SIZE`. Not zero.
    pub pfn_limit: u64,
    /// The guest-virtual address of the first instruction, mapped by the page tables at `cr3`
    /// to a page of RAM. The launcher takes it from the kernel's lguest ELF note.
    pub start_ip: u64,
    /// Pages `pfn_limit..device_limit` are device (MMIO) pages: guest accesses there go to the
    /// launcher. Equal to `pfn_limit` when the guest has no devices.
    pub device_limit: u64,
    /// Guest-physical address of the guest's first top-level page table (PML4), built by the
    /// launcher; page-aligned, inside RAM.
    pub cr3: u64,
    /// Guest-physical address of the `boot_params` page the launcher wrote; page-aligned, inside
    /// RAM. The guest starts with RSI pointing at it, as Linux's 64-bit boot protocol says.
    pub boot_params: u64,
}

/// One decoded request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Initialize(Initialize),
    /// IRQ: the interrupt to raise.
    Irq {
        irq: u64,
    },
    /// GETREG: the register's byte offset.
    GetReg {
        offset: u64,
    },
    /// SETREG: the register's byte offset and its new value.
    SetReg {
        offset: u64,
        value: u64,
    },
    /// FAST_PATHS: whether the Switcher's fast paths are on.
    FastPaths {
        on: bool,
    },
}

/// The largest request on the wire, in bytes (INITIALIZE).
pub const MAX_REQUEST_BYTES: usize = 7 * 8;

/// Why the host refused a request. Each refusal is one errno, returned by `write()` or `read()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// EINVAL: shorter than its request code, or than the request's arguments.
    ShortWrite,
    /// E2BIG: longer than the request's arguments.
    LongWrite,
    /// EOPNOTSUPP: not a request code this host knows.
    UnknownRequest,
    /// EBADFD: GETREG, SETREG, FAST_PATHS or read() before INITIALIZE.
    NotInitialized,
    /// EBUSY: INITIALIZE on a file that already has a guest.
    AlreadyInitialized,
    /// EPERM: the caller is not the task that sent INITIALIZE.
    NotOwner,
    /// EINVAL: a size of zero, or an address or size that is not page-aligned.
    Misaligned,
    /// EOVERFLOW: a range that wraps around, lies beyond user space, or exceeds
    /// [`MAX_GUEST_PAGES`]; or `device_limit < pfn_limit`.
    Overflow,
    /// ERANGE: the entry point, page tables or boot_params do not lie in guest RAM.
    OutsideRam,
    /// EFAULT: the launcher's memory could not be read.
    Fault,
    /// EINVAL: GETREG or SETREG of an offset that is not a register.
    NoSuchRegister,
    /// EACCES: SETREG of a register only the host may set.
    ReadOnlyRegister,
    /// EINVAL: read() with a buffer smaller than the answer (8 bytes after GETREG, else
    /// [`crate::exit::EXIT_MAX_BYTES`]).
    ShortRead,
    /// ENOMEM: the host could not allocate what the guest needs.
    NoMemory,
    /// EINVAL: IRQ of an interrupt number the guest does not have.
    NoSuchIrq,
    /// EINVAL: FAST_PATHS with a word other than 0 or 1.
    NotABoolean,
}

impl Refusal {
    /// The (positive) Linux errno for this refusal; `write()` returns its negation.
    pub const fn errno(self) -> i32 {
        const EPERM: i32 = 1;
        const ENOMEM: i32 = 12;
        const E2BIG: i32 = 7;
        const EACCES: i32 = 13;
        const EFAULT: i32 = 14;
        const EBUSY: i32 = 16;
        const EINVAL: i32 = 22;
        const ERANGE: i32 = 34;
        const EOVERFLOW: i32 = 75;
        const EBADFD: i32 = 77;
        const EOPNOTSUPP: i32 = 95;
        match self {
            Refusal::ShortWrite | Refusal::Misaligned | Refusal::NoSuchRegister => EINVAL,
            Refusal::ShortRead | Refusal::NoSuchIrq | Refusal::NotABoolean => EINVAL,
            Refusal::LongWrite => E2BIG,
            Refusal::UnknownRequest => EOPNOTSUPP,
            Refusal::NoMemory => ENOMEM,
            Refusal::NotInitialized => EBADFD,
            Refusal::AlreadyInitialized => EBUSY,
            Refusal::NotOwner => EPERM,
            Refusal::Overflow => EOVERFLOW,
            Refusal::OutsideRam => ERANGE,
            Refusal::Fault => EFAULT,
            Refusal::ReadOnlyRegister => EACCES,
        }
    }
}

/// A request in its wire form, ready for one `write()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Encoded {
    bytes: [u8; MAX_REQUEST_BYTES],
    len: usize,
}

impl Encoded {
    fn from_words(words: &[u64]) -> Encoded {
        let mut bytes = [0u8; MAX_REQUEST_BYTES];
        for (chunk, word) in bytes.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        Encoded {
            bytes,
            len: words.len() * 8,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl Request {
    /// The wire form of this request.
    pub fn encode(&self) -> Encoded {
        match *self {
            Request::Initialize(i) => Encoded::from_words(&[
                INITIALIZE,
                i.base,
                i.pfn_limit,
                i.start_ip,
                i.device_limit,
                i.cr3,
                i.boot_params,
            ]),
            Request::Irq { irq } => Encoded::from_words(&[IRQ, irq]),
            Request::GetReg { offset } => Encoded::from_words(&[GETREG, offset]),
            Request::SetReg { offset, value } => Encoded::from_words(&[SETREG, offset, value]),
            Request::FastPaths { on } => Encoded::from_words(&[FAST_PATHS, on as u64]),
        }
    }

    /// Decode one `write()`'s bytes. Only the framing is checked here: whether the values make
    /// sense is the host's business (lg-module/src/validate.rs).
    pub fn decode(bytes: &[u8]) -> Result<Request, Refusal> {
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            u64::from_le_bytes(w)
        };
        if bytes.len() < 8 {
            return Err(Refusal::ShortWrite);
        }
        let words = match word(0) {
            INITIALIZE => 7,
            IRQ | GETREG | FAST_PATHS => 2,
            SETREG => 3,
            _ => return Err(Refusal::UnknownRequest),
        };
        if bytes.len() < words * 8 {
            return Err(Refusal::ShortWrite);
        }
        if bytes.len() > words * 8 {
            return Err(Refusal::LongWrite);
        }
        Ok(match word(0) {
            INITIALIZE => Request::Initialize(Initialize {
                base: word(1),
                pfn_limit: word(2),
                start_ip: word(3),
                device_limit: word(4),
                cr3: word(5),
                boot_params: word(6),
            }),
            IRQ => Request::Irq { irq: word(1) },
            GETREG => Request::GetReg { offset: word(1) },
            FAST_PATHS => match word(1) {
                0 => Request::FastPaths { on: false },
                1 => Request::FastPaths { on: true },
                _ => return Err(Refusal::NotABoolean),
            },
            _ => Request::SetReg {
                offset: word(1),
                value: word(2),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_init() -> Initialize {
        Initialize {
            base: 0x7f00_0000_0000,
            pfn_limit: 16384,
            start_ip: 0x20_0000,
            device_limit: 16384,
            cr3: 0x3ff_f000,
            boot_params: 0x7000,
        }
    }

    #[test]
    fn every_request_round_trips() {
        for req in [
            Request::Initialize(sample_init()),
            Request::Irq { irq: 3 },
            Request::GetReg { offset: 8 },
            Request::SetReg {
                offset: 16,
                value: u64::MAX,
            },
            Request::FastPaths { on: false },
            Request::FastPaths { on: true },
        ] {
            assert_eq!(Request::decode(req.encode().as_bytes()), Ok(req));
        }
    }

    #[test]
    fn wire_form_is_little_endian_words() {
        let enc = Request::SetReg {
            offset: 0x10,
            value: 0x0102,
        }
        .encode();
        assert_eq!(
            enc.as_bytes(),
            &[6, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 2, 1, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn framing_errors_are_told_apart() {
        let init = Request::Initialize(sample_init()).encode();
        let bytes = init.as_bytes();
        assert_eq!(Request::decode(&bytes[..7]), Err(Refusal::ShortWrite));
        assert_eq!(Request::decode(&bytes[..55]), Err(Refusal::ShortWrite));
        let mut long = [0u8; 64];
        long[..56].copy_from_slice(bytes);
        assert_eq!(Request::decode(&long), Err(Refusal::LongWrite));
        assert_eq!(
            Request::decode(&3u64.to_le_bytes()),
            Err(Refusal::UnknownRequest)
        );
        assert_eq!(
            Request::decode(&u64::MAX.to_le_bytes()),
            Err(Refusal::UnknownRequest)
        );
        let two = |a: u64, b: u64| [a.to_le_bytes(), b.to_le_bytes()].concat();
        assert_eq!(
            Request::decode(&two(FAST_PATHS, 2)),
            Err(Refusal::NotABoolean)
        );
    }

    #[test]
    fn errnos_are_linux_x86_64_values() {
        assert_eq!(Refusal::AlreadyInitialized.errno(), 16);
        assert_eq!(Refusal::NotOwner.errno(), 1);
        assert_eq!(Refusal::NotInitialized.errno(), 77);
        assert_eq!(Refusal::Overflow.errno(), 75);
    }
}
