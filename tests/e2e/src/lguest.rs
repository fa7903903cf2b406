//! /dev/lguest as the tests drive it: one `write()` per request, byte for byte, and a small
//! guest whose INITIALIZE the host must accept.
//!
//! The launcher has its own, well-behaved wrapper for the device; the tests need the opposite,
//! a way to send any bytes at all (short, long, unknown, hostile) and see the errno the host
//! answers. So writes and reads here are single `libc::write`/`libc::read` calls: never retried
//! and never split, because to the host one write() is one request.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;

use anyhow::{bail, ensure, Context};
use lguest_abi::dev::{Initialize, Request};
use lguest_abi::paging::{PTE_ADDR_MASK, PTE_HUGE, PTE_PRESENT};
use lguest_abi::regs::Reg;
use lguest_launcher::memory::{Bytes, GuestAddress, GuestMemoryMmap, GuestRam};
use lguest_launcher::pagetables::{page_table_bytes, write_initial_page_tables, PageTables};
use nix::errno::Errno;

pub const DEV_PATH: &str = "/dev/lguest";

/// What a successful INITIALIZE, GETREG and SETREG return: the bytes of the request.
pub const INITIALIZE_LEN: usize = 7 * 8;
pub const GETREG_LEN: usize = 2 * 8;
pub const SETREG_LEN: usize = 3 * 8;

/// One open file of /dev/lguest: one (possible) guest.
pub struct Lguest {
    file: File,
}

impl Lguest {
    pub fn open() -> anyhow::Result<Lguest> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(DEV_PATH)
            .with_context(|| format!("cannot open {DEV_PATH}"))?;
        Ok(Lguest { file })
    }

    /// Opens a file and INITIALIZEs a guest in it, checking INITIALIZE returns what the ABI says:
    /// the start of every scenario that needs a guest but does not test INITIALIZE itself.
    pub fn open_initialized(init: Initialize) -> anyhow::Result<Lguest> {
        let dev = Lguest::open()?;
        let got = dev.initialize(init);
        ensure!(
            got == Ok(INITIALIZE_LEN),
            "INITIALIZE: expected {INITIALIZE_LEN}, got {got:?}"
        );
        Ok(dev)
    }

    /// The file descriptor.
    pub fn raw_fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    /// Exactly one write(2) of `bytes`: what the host returns, or its errno.
    pub fn write(&self, bytes: &[u8]) -> Result<usize, Errno> {
        // SAFETY: the pointer and length describe `bytes`, which stays borrowed for the call;
        // the kernel only reads from it.
        let n = unsafe { libc::write(self.file.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        Errno::result(n).map(|n| n.unsigned_abs())
    }

    /// Exactly one read(2) into a buffer of `len` bytes: the bytes returned, or the errno.
    pub fn read(&self, len: usize) -> Result<Vec<u8>, Errno> {
        let mut buf = vec![0u8; len];
        // SAFETY: the pointer and length describe `buf`, which we own and which stays alive and
        // unaliased for the call.
        let n = unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        let n = Errno::result(n)?.unsigned_abs();
        buf.truncate(n);
        Ok(buf)
    }

    /// One read(2) whose bytes do not matter, only how many came back (or the errno).
    pub fn read_len(&self, len: usize) -> Result<usize, Errno> {
        self.read(len).map(|bytes| bytes.len())
    }

    /// Sends a well-formed request.
    pub fn request(&self, req: Request) -> Result<usize, Errno> {
        self.write(req.encode().as_bytes())
    }

    pub fn initialize(&self, init: Initialize) -> Result<usize, Errno> {
        self.request(Request::Initialize(init))
    }

    /// GETREG then read(): the register's value, checking both steps return what the ABI says.
    pub fn get_reg(&self, reg: Reg) -> anyhow::Result<u64> {
        let sent = self.request(Request::GetReg {
            offset: reg.offset(),
        });
        ensure!(
            sent == Ok(GETREG_LEN),
            "GETREG {reg:?}: expected {GETREG_LEN}, got {sent:?}"
        );
        let bytes = self
            .read(8)
            .map_err(|e| anyhow::anyhow!("read after GETREG {reg:?}: {e:?}"))?;
        let Ok(bytes) = <[u8; 8]>::try_from(bytes.as_slice()) else {
            bail!(
                "read after GETREG {reg:?}: expected 8 bytes, got {}",
                bytes.len()
            );
        };
        Ok(u64::from_le_bytes(bytes))
    }

    pub fn set_reg(&self, reg: Reg, value: u64) -> anyhow::Result<()> {
        let sent = self.request(Request::SetReg {
            offset: reg.offset(),
            value,
        });
        ensure!(
            sent == Ok(SETREG_LEN),
            "SETREG {reg:?}: expected {SETREG_LEN}, got {sent:?}"
        );
        Ok(())
    }
}

/// Guest RAM for the ABI tests: 4 MiB, enough for 2 MiB pages to matter and small enough to
/// set up a hundred times; a few device pages so "inside guest memory but not RAM" exists.
pub const RAM_BYTES: u64 = 4 << 20;
pub const DEVICE_PAGES: u64 = 4;
/// Where the guest would start: 1 MiB, where Linux's kernel is loaded.
pub const ENTRY: u64 = 0x10_0000;
/// Where boot_params would be, as in lguest's launcher (the zero page at 0x7000 is free).
pub const BOOT_PARAMS: u64 = 0x7000;

/// A guest the host must accept: RAM mapped in this process, identity page tables at the top of
/// RAM built by the launcher's own code. Nothing is loaded: INITIALIZE only checks that the
/// entry point is mapped, it does not run it.
pub struct TestGuest {
    ram: GuestRam,
    tables: PageTables,
}

impl TestGuest {
    pub fn new() -> anyhow::Result<TestGuest> {
        let ram = GuestRam::new(RAM_BYTES, DEVICE_PAGES)?;
        let area = RAM_BYTES - page_table_bytes(RAM_BYTES, 0);
        let tables = write_initial_page_tables(ram.memory(), area, RAM_BYTES, 0)?;
        Ok(TestGuest { ram, tables })
    }

    /// INITIALIZE arguments the host must accept for this guest.
    pub fn valid(&self) -> Initialize {
        Initialize {
            base: self.ram.base(),
            pfn_limit: self.ram.ram_pages(),
            start_ip: ENTRY,
            device_limit: self.ram.device_limit(),
            cr3: self.tables.cr3,
            boot_params: BOOT_PARAMS,
        }
    }

    pub fn memory(&self) -> &GuestMemoryMmap {
        self.ram.memory()
    }

    /// The guest-physical address of the page-directory entry that maps `va`, found by walking
    /// the launcher's tables (PML4 -> PDPT -> PD); the scenarios edit it to point elsewhere.
    pub fn pde_address(&self, va: u64) -> anyhow::Result<u64> {
        let mut table = self.tables.cr3;
        for (level, shift) in [("PML4", 39), ("PDPT", 30)] {
            let slot = table + ((va >> shift) & 511) * 8;
            let entry: u64 = self.memory().read_obj(GuestAddress(slot))?;
            ensure!(
                entry & PTE_PRESENT != 0,
                "{level} entry for {va:#x} is not present"
            );
            ensure!(
                entry & PTE_HUGE == 0,
                "{level} entry for {va:#x} maps a huge page"
            );
            table = entry & PTE_ADDR_MASK;
        }
        Ok(table + ((va >> 21) & 511) * 8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixture meets the rules the scenarios assume the host checks: everything aligned,
    /// tables and boot_params inside RAM, the entry point mapped by a 2 MiB page onto itself.
    #[test]
    fn the_test_guest_is_valid() {
        let guest = TestGuest::new().unwrap();
        let init = guest.valid();
        assert_eq!(init.base % 4096, 0);
        assert_eq!((init.pfn_limit, init.device_limit), (1024, 1028));
        assert_eq!(init.cr3 % 4096, 0);
        assert!(init.cr3 < RAM_BYTES && BOOT_PARAMS < RAM_BYTES);
        let pde = guest.pde_address(ENTRY).unwrap();
        assert!(pde >= init.cr3 && pde < RAM_BYTES);
        let entry: u64 = guest.memory().read_obj(GuestAddress(pde)).unwrap();
        assert_eq!(
            entry & (PTE_PRESENT | PTE_HUGE),
            PTE_PRESENT | PTE_HUGE,
            "2 MiB page"
        );
        assert_eq!(entry & PTE_ADDR_MASK, 0, "maps physical 0..2 MiB");
        let next = guest.pde_address(0x20_0000).unwrap();
        assert_eq!(next, pde + 8);
    }
}
