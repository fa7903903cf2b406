//! Watching the host kernel's log while a scenario runs.
//!
//! A hypervisor bug rarely stops at a wrong errno: it WARNs, oopses or corrupts something the
//! kernel notices later. So every scenario runs between two looks at the kernel log, and a line
//! that says the host is hurt fails the scenario even when every assertion held.
//!
//! /dev/kmsg is the log with a reader position of its own: seeking to the end marks "now", and
//! each later `read()` returns one record, `"prio,seq,usec,flags;text\n"` followed by optional
//! `" KEY=value"` lines (Documentation/ABI/testing/dev-kmsg). Nothing is cleared, so the log
//! stays whole for whoever reads it after the tests.

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;

use anyhow::Context;

/// What the kernel prints when it is hurt: BUG() and WARN() headers, oopses, their register
/// dumps and back traces, #GP reports and panics. The "loading out-of-tree module taints kernel"
/// line that every insmod of lg.ko prints matches none of them.
const ALARMS: [&str; 8] = [
    "BUG:",
    "WARNING:",
    "Oops",
    "Call Trace",
    "general protection",
    "RIP:",
    "panic",
    // An NMI nobody claims: on the test VM, nothing sends one, so the host made it up.
    "NMI received for unknown reason",
];

/// A reader positioned at the end of the kernel log when it was created.
pub struct KmsgCursor {
    file: File,
}

impl KmsgCursor {
    /// Marks the current end of the log: [`KmsgCursor::new_lines`] returns what comes after.
    pub fn at_end() -> anyhow::Result<KmsgCursor> {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .context("cannot open /dev/kmsg")?;
        file.seek(SeekFrom::End(0))
            .context("cannot seek /dev/kmsg to its end")?;
        Ok(KmsgCursor { file })
    }

    /// The text of every record logged since the mark (or the last call).
    pub fn new_lines(&mut self) -> anyhow::Result<Vec<String>> {
        // A record is at most about 1 KiB of text plus its dictionary; /dev/kmsg refuses a
        // buffer too small for the next record with EINVAL, so be generous.
        let mut buf = vec![0u8; 16 * 1024];
        let mut lines = Vec::new();
        loop {
            match self.file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => lines.push(record_text(&String::from_utf8_lossy(&buf[..n])).to_owned()),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                // EPIPE: records we had not read yet were overwritten; the next read goes on
                // from the oldest one left. Say so, since what was lost may have mattered.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {
                    lines.push("(kernel log records lost: the ring buffer wrapped)".to_owned());
                }
                Err(e) => return Err(e).context("cannot read /dev/kmsg"),
            }
        }
        Ok(lines)
    }

    /// The first line since the mark that says the host kernel is hurt, if any.
    pub fn first_alarm(&mut self) -> anyhow::Result<Option<String>> {
        Ok(self.new_lines()?.into_iter().find(|line| is_alarm(line)))
    }
}

/// The message of one /dev/kmsg record: what follows the first `;`, up to the end of the line.
fn record_text(record: &str) -> &str {
    let text = record.split_once(';').map_or(record, |(_, text)| text);
    text.split('\n').next().unwrap_or(text)
}

/// Whether a log line reports a kernel bug, warning, oops or panic.
pub fn is_alarm(line: &str) -> bool {
    ALARMS.iter().any(|alarm| line.contains(alarm))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_text_drops_the_prefix_and_the_dictionary() {
        assert_eq!(record_text("6,1234,5678,-;lg: loaded\n"), "lg: loaded");
        assert_eq!(
            record_text("3,99,100,c;usb 1-1: reset\n SUBSYSTEM=usb\n DEVICE=c189:1\n"),
            "usb 1-1: reset"
        );
        assert_eq!(record_text("4,1,2,-;a;b\n"), "a;b");
    }

    #[test]
    fn alarms_are_told_from_ordinary_lines() {
        for bad in [
            "BUG: kernel NULL pointer dereference, address: 0000000000000000",
            "WARNING: CPU: 0 PID: 61 at lg-module/src/core.rs:42 lg_init+0x10/0x20 [lg]",
            "Oops: 0002 [#1] SMP NOPTI",
            "Call Trace:",
            "traps: lguest-launcher[70] general protection fault ip:4012a3",
            "RIP: 0010:switch_to_guest+0x12/0x80 [lg]",
            "Kernel panic - not syncing: Fatal exception",
            "Uhhuh. NMI received for unknown reason 00 on CPU 0.",
        ] {
            assert!(is_alarm(bad), "{bad}");
        }
        for fine in [
            "lg: loading out-of-tree module taints kernel.",
            "lguest: guest 1 started",
            "random: crng init done",
        ] {
            assert!(!is_alarm(fine), "{fine}");
        }
    }
}
