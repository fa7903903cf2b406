//! Running the guest: the launcher's main loop.
//!
//! The last step of the journey. Each `read()` of /dev/lguest runs the guest until something
//! needs the launcher, and returns one exit record (lguest-abi's `exit` module): the guest wrote
//! to its early console, touched a device, powered off, asked to restart, or was killed by the
//! host. Everything else a guest does (hypercalls the host answers itself, page faults, the
//! host's interrupts) never reaches this loop. Console output is printed and a device access
//! emulated ([`crate::mmio_decode`] decodes it, the device models answer it, SETREG finishes
//! it), and the guest runs again; the other three end the loop, and main.rs turns them into an
//! exit status.
//!
//! The loop takes /dev/lguest and the devices as traits ([`Vcpu`], [`MmioBus`]), so the unit
//! tests below can play lg.ko with a list of records.

use std::io::{self, Write};

use anyhow::{anyhow, bail, Context};
use lguest_abi::exit::{ExitDecodeError, ExitKind, ExitRecord, MmioAccess, EXIT_MAX_BYTES};
use lguest_abi::regs::Reg;
use log::trace;

use crate::device::LguestDevice;
use crate::mmio_decode::{self, DeviceAccess};
use crate::virtio::DeviceManager;

/// What the loop needs of /dev/lguest: run the guest, and finish an instruction it emulated.
pub trait Vcpu {
    /// One `read()`: runs the guest until it needs the launcher; the exit record is in `buf`.
    fn run(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// SETREG.
    fn set_reg(&self, reg: Reg, value: u64) -> io::Result<()>;
}

impl Vcpu for LguestDevice {
    fn run(&self, buf: &mut [u8]) -> io::Result<usize> {
        LguestDevice::run(self, buf)
    }

    fn set_reg(&self, reg: Reg, value: u64) -> io::Result<()> {
        LguestDevice::set_reg(self, reg, value)
    }
}

/// The devices, by guest-physical address. Each method answers whether a device is there.
pub trait MmioBus {
    fn mmio_read(&mut self, gpa: u64, data: &mut [u8]) -> bool;
    fn mmio_write(&mut self, gpa: u64, data: &[u8]) -> bool;
}

impl MmioBus for DeviceManager {
    fn mmio_read(&mut self, gpa: u64, data: &mut [u8]) -> bool {
        DeviceManager::mmio_read(self, gpa, data).is_ok()
    }

    fn mmio_write(&mut self, gpa: u64, data: &[u8]) -> bool {
        DeviceManager::mmio_write(self, gpa, data).is_ok()
    }
}

/// Why the guest stopped for good.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// SHUTDOWN with "power off", and the guest's message.
    PowerOff(String),
    /// SHUTDOWN with "restart", and the guest's message.
    Restart(String),
    /// The guest died, for this reason: the host killed it, or it touched a device in a way the
    /// launcher cannot serve.
    Died(String),
}

/// Runs the guest until it stops, writing its early console output to `console` and sending
/// its device accesses to `devices`.
///
/// An interrupted read (a signal the launcher handles) is simply made again; a launcher killed
/// by a signal never gets here. A device access the launcher cannot serve (an instruction it
/// does not emulate, an address with no device register) ends the guest as the host's kill
/// does, as [`Stop::Died`]: it is the guest's doing, and the guest cannot go on without an
/// answer. Errors are the launcher's own failures: /dev/lguest or the console.
pub fn run_guest(
    vcpu: &impl Vcpu,
    devices: &mut impl MmioBus,
    console: &mut impl Write,
) -> anyhow::Result<Stop> {
    // Room for the largest exit record there is.
    let mut buf = [0u8; EXIT_MAX_BYTES];
    loop {
        let n = match vcpu.run(&mut buf) {
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err).context("read /dev/lguest"),
        };
        let record = match ExitRecord::decode(&buf[..n]) {
            Ok(record) => record,
            Err(err) => bail!(
                "/dev/lguest returned {n} bytes that are not an exit record: {}",
                why(err)
            ),
        };
        let text = || message(record.data());
        if record.kind() != ExitKind::Mmio {
            trace!("exit: {:?}, {} bytes", record.kind(), record.data().len());
        }
        match record.kind() {
            ExitKind::Console => {
                console
                    .write_all(record.data())
                    .and_then(|()| console.flush())
                    .context("cannot write the guest's console output")?;
            }
            ExitKind::Mmio => {
                let access = MmioAccess::from_bytes(record.data())
                    .ok_or_else(|| anyhow!("/dev/lguest returned a malformed MMIO exit"))?;
                if let Some(reason) = emulate(vcpu, devices, &access)? {
                    return Ok(Stop::Died(reason));
                }
            }
            ExitKind::PowerOff => return Ok(Stop::PowerOff(text())),
            ExitKind::Restart => return Ok(Stop::Restart(text())),
            ExitKind::Died => return Ok(Stop::Died(text())),
        }
    }
}

/// Carry out one device access: decode the instruction, let the device answer, and set the
/// registers the instruction would have changed. Returns why the access cannot be served, if it
/// cannot.
fn emulate(
    vcpu: &impl Vcpu,
    devices: &mut impl MmioBus,
    access: &MmioAccess,
) -> anyhow::Result<Option<String>> {
    let emulation = match mmio_decode::decode(access) {
        Ok(emulation) => emulation,
        Err(unemulated) => return Ok(Some(unemulated.to_string())),
    };
    let mut bytes = [0u8; 8];
    let answered = match emulation.access {
        DeviceAccess::Read { gpa, width } => devices.mmio_read(gpa, &mut bytes[..width]),
        DeviceAccess::Write { gpa, width, value } => {
            devices.mmio_write(gpa, &value.to_le_bytes()[..width])
        }
    };
    trace!(
        "exit: mmio at rip {:#x}: {} -> {:?}, device value {:#x}",
        access.regs.get(Reg::Rip),
        emulation.text(),
        emulation.access,
        u64::from_le_bytes(bytes)
    );
    if !answered {
        return Ok(Some(format!(
            "the guest touched guest-physical {:#x} at rip {:#x}, where there is no device \
             register",
            access.gpa,
            access.regs.get(Reg::Rip)
        )));
    }
    for (reg, value) in emulation.completion(access, u64::from_le_bytes(bytes)) {
        vcpu.set_reg(reg, value)
            .with_context(|| format!("SETREG {reg:?} after a device access"))?;
    }
    Ok(None)
}

/// A guest's message as one line of text: what it wrote, up to a NUL, without a final newline.
/// The guest is not trusted to write UTF-8.
fn message(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).trim_end().to_owned()
}

fn why(err: ExitDecodeError) -> String {
    match err {
        ExitDecodeError::Truncated => "the record is cut short".to_owned(),
        ExitDecodeError::UnknownKind(kind) => {
            format!("unknown exit kind {kind} (is lg.ko newer than this launcher?)")
        }
        ExitDecodeError::TooLong(len) => format!("a length of {len} bytes is too long"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lguest_abi::exit::MMIO_INSN_MAX;
    use lguest_abi::regs::Regs;
    use std::cell::RefCell;

    /// A fake lg.ko: each read returns the next of `replies`, encoded as the host would; SETREGs
    /// are recorded.
    struct Host {
        replies: RefCell<std::vec::IntoIter<io::Result<Vec<u8>>>>,
        set: RefCell<Vec<(Reg, u64)>>,
    }

    fn host(replies: Vec<io::Result<Vec<u8>>>) -> Host {
        Host {
            replies: RefCell::new(replies.into_iter()),
            set: RefCell::new(Vec::new()),
        }
    }

    impl Vcpu for Host {
        fn run(&self, buf: &mut [u8]) -> io::Result<usize> {
            let bytes = self
                .replies
                .borrow_mut()
                .next()
                .expect("the loop read past the guest's end")?;
            buf[..bytes.len()].copy_from_slice(&bytes);
            Ok(bytes.len())
        }

        fn set_reg(&self, reg: Reg, value: u64) -> io::Result<()> {
            self.set.borrow_mut().push((reg, value));
            Ok(())
        }
    }

    /// One device register at 0x1000_0000 that reads 0x74726976 and records writes.
    #[derive(Default)]
    struct OneRegister {
        written: Vec<Vec<u8>>,
    }

    impl MmioBus for OneRegister {
        fn mmio_read(&mut self, gpa: u64, data: &mut [u8]) -> bool {
            data.copy_from_slice(&0x7472_6976u32.to_le_bytes()[..data.len()]);
            gpa == 0x1000_0000
        }

        fn mmio_write(&mut self, gpa: u64, data: &[u8]) -> bool {
            self.written.push(data.to_vec());
            gpa == 0x1000_0000
        }
    }

    fn record(kind: ExitKind, data: &[u8]) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; EXIT_MAX_BYTES];
        let n = ExitRecord::new(kind, data).encode(&mut buf).unwrap();
        buf.truncate(n);
        Ok(buf)
    }

    fn mmio(gpa: u64, write: bool, bytes: &[u8], rax: u64) -> io::Result<Vec<u8>> {
        let mut insn = [0u8; MMIO_INSN_MAX];
        insn[..bytes.len()].copy_from_slice(bytes);
        let mut regs = Regs::default();
        regs.set(Reg::Rip, 0x20_0000);
        regs.set(Reg::Rax, rax);
        let access = MmioAccess {
            gpa,
            write,
            insn,
            insn_len: bytes.len(),
            regs,
        };
        record(ExitKind::Mmio, access.to_record().data())
    }

    fn run(host: &Host, out: &mut Vec<u8>) -> anyhow::Result<Stop> {
        run_guest(host, &mut OneRegister::default(), out)
    }

    #[test]
    fn console_output_is_printed_until_the_guest_powers_off() {
        let mut out = Vec::new();
        let stop = run(
            &host(vec![
                record(ExitKind::Console, b"hello from ring 1: "),
                Err(io::Error::from(io::ErrorKind::Interrupted)),
                record(ExitKind::Console, b"cs=0x51 cpl=1\n"),
                record(ExitKind::PowerOff, b"bye\0garbage"),
            ]),
            &mut out,
        )
        .unwrap();
        assert_eq!(out, b"hello from ring 1: cs=0x51 cpl=1\n");
        assert_eq!(stop, Stop::PowerOff("bye".into()));
    }

    #[test]
    fn device_accesses_are_emulated_and_finished_with_setreg() {
        let vcpu = host(vec![
            // mov eax, [rdi]; then mov [rdi], eax
            mmio(0x1000_0000, false, &[0x8b, 0x07], u64::MAX),
            mmio(0x1000_0000, true, &[0x89, 0x07], 0x1_0000_0002),
            record(ExitKind::PowerOff, b""),
        ]);
        let mut devices = OneRegister::default();
        let stop = run_guest(&vcpu, &mut devices, &mut Vec::new()).unwrap();
        assert_eq!(stop, Stop::PowerOff(String::new()));
        assert_eq!(
            *vcpu.set.borrow(),
            vec![
                (Reg::Rax, 0x7472_6976),
                (Reg::Rip, 0x20_0002),
                (Reg::Rip, 0x20_0002)
            ]
        );
        assert_eq!(devices.written, vec![vec![2, 0, 0, 0]]);
    }

    #[test]
    fn an_access_the_launcher_cannot_serve_kills_the_guest() {
        let stop = run(
            &host(vec![mmio(0x2000_0000, false, &[0x8b, 0x07], 0)]),
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!(
            stop,
            Stop::Died(
                "the guest touched guest-physical 0x20000000 at rip 0x200000, where there is no \
                 device register"
                    .into()
            )
        );
        let stop = run(
            &host(vec![mmio(0x1000_0000, true, &[0x09, 0x07], 0)]),
            &mut Vec::new(),
        )
        .unwrap();
        assert!(
            matches!(&stop, Stop::Died(reason) if reason.contains("'or [rdi],eax'")),
            "{stop:?}"
        );
    }

    #[test]
    fn restart_and_death_end_the_loop_with_their_message() {
        let mut out = Vec::new();
        let stop = run(&host(vec![record(ExitKind::Restart, b"again")]), &mut out);
        assert_eq!(stop.unwrap(), Stop::Restart("again".into()));
        let reason = b"trap 13 (#GP) at rip 0x200123 error 0x0\n";
        let stop = run(&host(vec![record(ExitKind::Died, reason)]), &mut out);
        assert_eq!(
            stop.unwrap(),
            Stop::Died("trap 13 (#GP) at rip 0x200123 error 0x0".into())
        );
        assert!(out.is_empty());
    }

    #[test]
    fn bad_records_and_read_errors_are_one_clear_error() {
        let mut out = Vec::new();
        let err = run(
            &host(vec![Ok(vec![
                9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ])]),
            &mut out,
        )
        .unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "/dev/lguest returned 16 bytes that are not an exit record: unknown exit kind 9 (is \
             lg.ko newer than this launcher?)"
        );
        let err = run(&host(vec![Ok(vec![1, 0, 0])]), &mut out).unwrap_err();
        assert!(
            format!("{err:#}").ends_with("the record is cut short"),
            "{err:#}"
        );
        let err = run(
            &host(vec![Err(io::Error::from_raw_os_error(libc::EBADFD))]),
            &mut out,
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").starts_with("read /dev/lguest: "),
            "{err:#}"
        );
    }
}
