//! Assertions that collect, so one QEMU boot reports every broken case at once.
//!
//! Booting the VM is the slow part of a test run; a scenario that stopped at its first wrong
//! errno would make whoever fixes lg.ko boot once per bug. A [`Checks`] records each
//! expectation, keeps going, and at the end fails with all the misses on one line, each as
//! "what: expected X, got Y". Steps that later checks cannot do without (opening the device,
//! building guest memory) use `?` instead and end the scenario there.

use anyhow::bail;
use lguest_abi::dev::Refusal;
use nix::errno::Errno;

/// How many misses the FAIL line spells out; the rest are counted.
const SHOWN: usize = 4;

#[derive(Default)]
pub struct Checks {
    total: usize,
    misses: Vec<String>,
}

impl Checks {
    pub fn new() -> Checks {
        Checks::default()
    }

    /// `got` (a write or read) must have been refused with `want`'s errno.
    pub fn refused(&mut self, what: &str, got: Result<usize, Errno>, want: Refusal) {
        let errno = Errno::from_raw(want.errno());
        self.record(got == Err(errno), || {
            format!("{what}: expected {errno:?} ({want:?}), got {}", show(got))
        });
    }

    /// `got` (a write or read) must have succeeded with `want` bytes.
    pub fn returned(&mut self, what: &str, got: Result<usize, Errno>, want: usize) {
        self.record(got == Ok(want), || {
            format!("{what}: expected {want}, got {}", show(got))
        });
    }

    /// `got` (a register's value, say) must be `Ok(want)`; an `Err` is a miss that says why.
    pub fn equal(&mut self, what: &str, got: anyhow::Result<u64>, want: u64) {
        match got {
            Ok(got) => self.record(got == want, || {
                format!("{what}: expected {want:#x}, got {got:#x}")
            }),
            Err(e) => self.record(false, || {
                format!("{what}: expected {want:#x}, got error: {e:#}")
            }),
        }
    }

    /// `got` must be `Ok`; an `Err` is a miss.
    pub fn ok<T>(&mut self, what: &str, got: anyhow::Result<T>) {
        match got {
            Ok(_) => self.record(true, String::new),
            Err(e) => self.record(false, || format!("{what}: {e:#}")),
        }
    }

    /// A condition the caller judged, with the message to show if it is false.
    pub fn that(&mut self, holds: bool, miss: impl FnOnce() -> String) {
        self.record(holds, miss);
    }

    fn record(&mut self, holds: bool, miss: impl FnOnce() -> String) {
        self.total += 1;
        if !holds {
            self.misses.push(miss());
        }
    }

    /// Passes iff every check held; otherwise one line with the first few misses.
    pub fn finish(self) -> anyhow::Result<()> {
        if self.misses.is_empty() {
            return Ok(());
        }
        let mut line = format!("{} of {} checks failed: ", self.misses.len(), self.total);
        line += &self
            .misses
            .iter()
            .take(SHOWN)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ");
        if self.misses.len() > SHOWN {
            line += &format!("; and {} more", self.misses.len() - SHOWN);
        }
        bail!(line)
    }
}

/// A syscall's outcome as the FAIL line shows it: `EINVAL`, or `success (56)`.
pub fn show(got: Result<usize, Errno>) -> String {
    match got {
        Ok(n) => format!("success ({n})"),
        Err(e) => format!("{e:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_held_passes() {
        let mut c = Checks::new();
        c.refused("short", Err(Errno::EINVAL), Refusal::ShortWrite);
        c.returned("init", Ok(56), 56);
        c.equal("rip", Ok(0x10_0000u64), 0x10_0000);
        c.ok("open", Ok(()));
        c.that(true, || unreachable!());
        assert!(c.finish().is_ok());
    }

    #[test]
    fn misses_are_listed_on_one_line() {
        let mut c = Checks::new();
        c.refused("base unaligned", Ok(56), Refusal::Misaligned);
        c.refused("cr3 outside RAM", Err(Errno::EFAULT), Refusal::OutsideRam);
        c.returned("valid", Err(Errno::EBUSY), 56);
        c.equal("rip", Ok(1u64), 2);
        c.equal(
            "rsi",
            Err::<u64, _>(anyhow::anyhow!("GETREG refused")),
            0x7000,
        );
        c.ok("open", Err::<(), _>(anyhow::anyhow!("no such device")));
        let line = c.finish().unwrap_err().to_string();
        assert!(!line.contains('\n'));
        assert!(line.starts_with("6 of 6 checks failed: "), "{line}");
        assert!(line.contains("base unaligned: expected EINVAL (Misaligned), got success (56)"));
        assert!(line.contains("cr3 outside RAM: expected ERANGE (OutsideRam), got EFAULT"));
        assert!(line.contains("valid: expected 56, got EBUSY"));
        assert!(line.contains("rip: expected 0x2, got 0x1"));
        assert!(line.ends_with("; and 2 more"), "{line}");
    }
}
