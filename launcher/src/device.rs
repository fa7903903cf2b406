//! `/dev/lguest`: the launcher's only line to lg.ko.
//!
//! The hand-off point of the journey: once guest memory is ready, the launcher opens
//! `/dev/lguest` (one open file is one guest), writes INITIALIZE, and from then on each `read()`
//! runs the guest until it needs the launcher. This file turns those system calls into methods;
//! every request's bytes come from `lguest_abi::dev::Request::encode`, the one encoding lg.ko
//! decodes, so the two sides cannot disagree. It touches nothing but the file.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};

use anyhow::anyhow;
use lguest_abi::dev::{Initialize, Request};
use lguest_abi::regs::Reg;

/// Where lg.ko's misc device appears.
pub const DEFAULT_PATH: &str = "/dev/lguest";

/// An open `/dev/lguest`: one guest, from INITIALIZE until the file is closed.
pub struct LguestDevice {
    file: File,
}

impl LguestDevice {
    /// Opens the device at `path`, explaining the usual reasons it cannot be opened.
    pub fn open(path: &str) -> anyhow::Result<LguestDevice> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|err| {
                match err.raw_os_error() {
                    Some(libc::ENOENT) => {
                        anyhow!("{path} not found: is lg.ko loaded? (insmod lg.ko)")
                    }
                    Some(libc::EACCES | libc::EPERM) => {
                        anyhow!("permission denied opening {path} (are you root?)")
                    }
                    // A device node left behind with no driver registered for it.
                    Some(libc::ENXIO | libc::ENODEV) => {
                        anyhow!("{path} has no driver behind it: is lg.ko loaded? (insmod lg.ko)")
                    }
                    _ => anyhow!(err).context(format!("cannot open {path}")),
                }
            })?;
        Ok(LguestDevice { file })
    }

    /// Sends INITIALIZE: guest memory, entry point, page tables and boot_params.
    pub fn initialize(&self, init: &Initialize) -> io::Result<()> {
        self.request(Request::Initialize(*init))
    }

    /// Turns the Switcher's fast paths for this guest on or off (FAST_PATHS).
    pub fn set_fast_paths(&self, on: bool) -> io::Result<()> {
        self.request(Request::FastPaths { on })
    }

    /// Raises interrupt `irq` in the guest (IRQ). Any thread may: the devices' input threads
    /// do, while the main thread runs the guest.
    pub fn raise_irq(&self, irq: u32) -> io::Result<()> {
        self.request(Request::Irq { irq: irq.into() })
    }

    /// Reads one of the guest's registers (GETREG, then an 8-byte read).
    pub fn get_reg(&self, reg: Reg) -> io::Result<u64> {
        self.request(Request::GetReg {
            offset: reg.offset(),
        })?;
        let mut value = [0u8; 8];
        let n = (&self.file).read(&mut value)?;
        if n != value.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("GETREG answered with {n} bytes, not 8"),
            ));
        }
        Ok(u64::from_le_bytes(value))
    }

    /// Changes one of the guest's registers (SETREG).
    pub fn set_reg(&self, reg: Reg, value: u64) -> io::Result<()> {
        self.request(Request::SetReg {
            offset: reg.offset(),
            value,
        })
    }

    /// Runs the guest: one `read()`, which returns when the guest needs the launcher, with
    /// what lg.ko has to say in `buf`.
    pub fn run(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Sends one request in one `write()`: lg.ko takes a write as a whole request or not at all.
    fn request(&self, request: Request) -> io::Result<()> {
        let encoded = request.encode();
        let bytes = encoded.as_bytes();
        let n = (&self.file).write(bytes)?;
        if n != bytes.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("/dev/lguest took {n} of a request's {} bytes", bytes.len()),
            ));
        }
        Ok(())
    }
}

/// The open file, for reading its fdinfo (the exit statistics: stats.rs).
impl AsRawFd for LguestDevice {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;

    /// A device whose other end is a socket the test plays lg.ko on.
    fn fake() -> (LguestDevice, UnixStream) {
        let (ours, host) = UnixStream::pair().unwrap();
        (
            LguestDevice {
                file: File::from(OwnedFd::from(ours)),
            },
            host,
        )
    }

    fn next_request(host: &mut UnixStream) -> Request {
        let mut buf = [0u8; 64];
        let n = host.read(&mut buf).unwrap();
        Request::decode(&buf[..n]).unwrap()
    }

    #[test]
    fn requests_go_out_in_the_abi_encoding() {
        let (dev, mut host) = fake();
        let init = Initialize {
            base: 0x7f00_0000_0000,
            pfn_limit: 16384,
            start_ip: 0xffff_ffff_8100_0000,
            device_limit: 16384,
            cr3: 0x3ff_d000,
            boot_params: 0x7000,
        };
        dev.initialize(&init).unwrap();
        assert_eq!(next_request(&mut host), Request::Initialize(init));
        dev.set_reg(Reg::Rsp, 0x1234).unwrap();
        assert_eq!(
            next_request(&mut host),
            Request::SetReg {
                offset: Reg::Rsp.offset(),
                value: 0x1234
            }
        );
    }

    #[test]
    fn get_reg_reads_the_answer() {
        let (dev, mut host) = fake();
        host.write_all(&0xdead_beefu64.to_le_bytes()).unwrap();
        assert_eq!(dev.get_reg(Reg::Rip).unwrap(), 0xdead_beef);
        assert_eq!(
            next_request(&mut host),
            Request::GetReg {
                offset: Reg::Rip.offset()
            }
        );
        host.write_all(&[1, 2, 3]).unwrap();
        assert!(dev
            .get_reg(Reg::Rax)
            .unwrap_err()
            .to_string()
            .contains("3 bytes, not 8"));
    }

    #[test]
    fn a_missing_device_says_what_to_do() {
        let err = LguestDevice::open("/nonexistent/lguest")
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            err,
            "/nonexistent/lguest not found: is lg.ko loaded? (insmod lg.ko)"
        );
    }
}
