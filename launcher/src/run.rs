//! Running the guest: the launcher's main loop.
//!
//! The last step of the journey. Each `read()` of /dev/lguest runs the guest until something
//! needs the launcher, and returns one exit record (lguest-abi's `exit` module): the guest wrote
//! to its early console, powered off, asked to restart, or was killed by the host. Everything
//! else a guest does (hypercalls the host answers itself, page faults, the host's interrupts) never
//! reaches this loop. Console output is printed and the guest run again; the other three end the
//! loop, and main.rs turns them into an exit status.
//!
//! The loop takes the device as a closure ("run the guest once into this buffer"), so the unit
//! tests below can play lg.ko with a list of records.

use std::io::{self, Write};

use anyhow::{bail, Context};
use lguest_abi::exit::{ExitDecodeError, ExitKind, ExitRecord, EXIT_MAX_BYTES};

/// Why the guest stopped for good.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// SHUTDOWN with "power off", and the guest's message.
    PowerOff(String),
    /// SHUTDOWN with "restart", and the guest's message.
    Restart(String),
    /// The host killed the guest, for this reason.
    Died(String),
}

/// Runs the guest until it stops, writing its console output to `console`.
///
/// `run` is one `read()` of /dev/lguest (`LguestDevice::run`). An interrupted read (a signal the
/// launcher handles) is simply made again; a launcher killed by a signal never gets here.
pub fn run_guest(
    mut run: impl FnMut(&mut [u8]) -> io::Result<usize>,
    console: &mut impl Write,
) -> anyhow::Result<Stop> {
    // Room for the largest exit record there is.
    let mut buf = [0u8; EXIT_MAX_BYTES];
    loop {
        let n = match run(&mut buf) {
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
        match record.kind() {
            ExitKind::Console => {
                console
                    .write_all(record.data())
                    .and_then(|()| console.flush())
                    .context("cannot write the guest's console output")?;
            }
            ExitKind::PowerOff => return Ok(Stop::PowerOff(text())),
            ExitKind::Restart => return Ok(Stop::Restart(text())),
            ExitKind::Died => return Ok(Stop::Died(text())),
        }
    }
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

    /// A fake lg.ko: each read returns the next of `replies`, encoded as the host would.
    fn host(replies: Vec<io::Result<Vec<u8>>>) -> impl FnMut(&mut [u8]) -> io::Result<usize> {
        let mut replies = replies.into_iter();
        move |buf| {
            let bytes = replies
                .next()
                .expect("the loop read past the guest's end")?;
            buf[..bytes.len()].copy_from_slice(&bytes);
            Ok(bytes.len())
        }
    }

    fn record(kind: ExitKind, data: &[u8]) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; EXIT_MAX_BYTES];
        let n = ExitRecord::new(kind, data).encode(&mut buf).unwrap();
        buf.truncate(n);
        Ok(buf)
    }

    #[test]
    fn console_output_is_printed_until_the_guest_powers_off() {
        let mut out = Vec::new();
        let stop = run_guest(
            host(vec![
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
    fn restart_and_death_end_the_loop_with_their_message() {
        let mut out = Vec::new();
        let stop = run_guest(host(vec![record(ExitKind::Restart, b"again")]), &mut out);
        assert_eq!(stop.unwrap(), Stop::Restart("again".into()));
        let reason = b"trap 13 (#GP) at rip 0x200123 error 0x0\n";
        let stop = run_guest(host(vec![record(ExitKind::Died, reason)]), &mut out);
        assert_eq!(
            stop.unwrap(),
            Stop::Died("trap 13 (#GP) at rip 0x200123 error 0x0".into())
        );
        assert!(out.is_empty());
    }

    #[test]
    fn bad_records_and_read_errors_are_one_clear_error() {
        let mut out = Vec::new();
        let err = run_guest(
            host(vec![Ok(vec![
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
        let err = run_guest(host(vec![Ok(vec![1, 0, 0])]), &mut out).unwrap_err();
        assert!(
            format!("{err:#}").ends_with("the record is cut short"),
            "{err:#}"
        );
        let err = run_guest(
            host(vec![Err(io::Error::from_raw_os_error(libc::EBADFD))]),
            &mut out,
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").starts_with("read /dev/lguest: "),
            "{err:#}"
        );
    }
}
