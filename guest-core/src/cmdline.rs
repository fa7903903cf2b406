//! The command line: what the teaching guest is asked to do, and with what.
//!
//! The command line is QEMU's `-append` natively, the launcher's arguments after the kernel
//! under lguest (guest/src/main.rs tells the modes). It is words: the mode's, such as
//! `long-run 60`, and parameters, `key=value` as Linux's, which only [`PARAMETERS`] may name.
//! The kernel copies it out of the boot loader's memory ([`CommandLine::from_bytes`]) and asks
//! this module the rest.

use core::fmt;

/// The most of the command line kept: QEMU's `microvm` alone appends some 37 bytes per device.
pub const CMDLINE_MAX: usize = 1024;

/// The parameters a command line may carry besides the mode's words, `key=value` as Linux's: the
/// virtio devices (guest/src/virtio/mod.rs), and the addresses `net-ping` uses
/// (guest/src/devices.rs).
pub const PARAMETERS: [&str; 3] = ["virtio_mmio.device", "ip", "ping"];

/// The command line the boot loader passed, copied out of its memory.
pub struct CommandLine {
    buf: [u8; CMDLINE_MAX],
    len: usize,
}

impl Default for CommandLine {
    fn default() -> CommandLine {
        CommandLine {
            buf: [0; CMDLINE_MAX],
            len: 0,
        }
    }
}

impl CommandLine {
    /// The command line made of `bytes`, of which it reads no more than [`CMDLINE_MAX`]: the
    /// kernel passes the bytes up to the string's NUL, read one by one as they are asked for.
    pub fn from_bytes(bytes: impl IntoIterator<Item = u8>) -> CommandLine {
        let mut line = CommandLine::default();
        for byte in bytes.into_iter().take(CMDLINE_MAX) {
            line.buf[line.len] = byte;
            line.len += 1;
        }
        line
    }

    /// The line as text; one that is not UTF-8 reads as empty.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }

    /// The values of parameter `key`, in order: `b` and `c` for `a key=b key=c`.
    pub fn values<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.as_str()
            .split_ascii_whitespace()
            .filter_map(move |word| word.strip_prefix(key)?.strip_prefix('='))
    }

    /// The first parameter whose key is not one of [`PARAMETERS`], if any.
    pub fn unknown_parameter(&self) -> Option<&str> {
        self.as_str().split_ascii_whitespace().find(|word| {
            word.split_once('=')
                .is_some_and(|(key, _)| !PARAMETERS.contains(&key))
        })
    }

    /// The words that are not parameters: the mode's.
    fn mode_words(&self) -> impl Iterator<Item = &str> {
        self.as_str()
            .split_ascii_whitespace()
            .filter(|word| !word.contains('='))
    }
}

/// What the kernel does once it is up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No words: run the self-tests (guest/src/selftest.rs).
    SelfTests,
    /// `bench`: the microbenchmarks (guest/src/bench.rs), and the devices' if there are any.
    Bench,
    /// `long-run SECONDS`: the scheduler for that long (guest/src/long_run.rs).
    LongRun(u64),
    /// `devices [echo]` or `devices-verify [echo]`: a self-test per virtio device
    /// (guest/src/devices.rs).
    Devices(Plan),
    /// `count`: a known workload and the kernel's tally of it (guest/src/count.rs).
    Count,
}

/// What devices mode tests, from its words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// `devices-verify` rather than `devices`: the block test only reads back.
    pub reread: bool,
    /// `echo`: the console's test too, which waits for a line typed on it. Without the word the
    /// console is driven but not tested: under lguest every guest has one, and nobody need be
    /// there to type.
    pub echo: bool,
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = if self.reread {
            "devices-verify"
        } else {
            "devices"
        };
        let echo = if self.echo { " echo" } else { "" };
        write!(f, "{mode}{echo}")
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::SelfTests => write!(f, "self-tests"),
            Mode::Bench => write!(f, "bench"),
            Mode::LongRun(seconds) => write!(f, "long-run {seconds} s"),
            Mode::Devices(plan) => write!(f, "{plan}"),
            Mode::Count => write!(f, "count"),
        }
    }
}

impl Mode {
    /// The mode a command line's words name, if they name one (parameters aside).
    pub fn parse(line: &CommandLine) -> Option<Mode> {
        let mut words = line.mode_words();
        let mode = match words.next() {
            None => Mode::SelfTests,
            Some("bench") => Mode::Bench,
            Some("count") => Mode::Count,
            Some("long-run") => {
                Mode::LongRun(words.next()?.parse::<u64>().ok().filter(|&s| s > 0)?)
            }
            Some(word @ ("devices" | "devices-verify")) => Mode::Devices(Plan {
                reread: word == "devices-verify",
                echo: match words.next() {
                    None => false,
                    Some("echo") => true,
                    Some(_) => return None,
                },
            }),
            Some(_) => return None,
        };
        words.next().is_none().then_some(mode)
    }

    /// Whether the mode uses the virtio devices, which are then probed.
    pub fn uses_devices(self) -> bool {
        matches!(self, Mode::Bench | Mode::Devices(_))
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::string::ToString;
    use std::vec::Vec;

    use super::*;

    fn line(text: &str) -> CommandLine {
        CommandLine::from_bytes(text.bytes())
    }

    fn mode(text: &str) -> Option<Mode> {
        Mode::parse(&line(text))
    }

    #[test]
    fn each_mode_from_its_words() {
        assert_eq!(mode(""), Some(Mode::SelfTests));
        assert_eq!(mode("  "), Some(Mode::SelfTests));
        assert_eq!(mode("bench"), Some(Mode::Bench));
        assert_eq!(mode("count"), Some(Mode::Count));
        assert_eq!(mode("long-run 60"), Some(Mode::LongRun(60)));
        let plan = |reread, echo| Some(Mode::Devices(Plan { reread, echo }));
        assert_eq!(mode("devices"), plan(false, false));
        assert_eq!(mode("devices echo"), plan(false, true));
        assert_eq!(mode("devices-verify"), plan(true, false));
        assert_eq!(mode("devices-verify echo"), plan(true, true));
    }

    #[test]
    fn parameters_are_not_the_modes_words() {
        let text = "virtio_mmio.device=4K@0x4000000:1 long-run 5 ip=10.0.0.2";
        assert_eq!(mode(text), Some(Mode::LongRun(5)));
        assert_eq!(line(text).unknown_parameter(), None);
    }

    #[test]
    fn words_no_mode_takes_are_refused() {
        for text in [
            "benchmark",
            "bench now",
            "long-run",
            "long-run 0",
            "long-run -1",
            "long-run soon",
            "long-run 5 6",
            "devices loud",
            "devices echo echo",
            "count bench",
        ] {
            assert_eq!(mode(text), None, "{text:?}");
        }
    }

    #[test]
    fn an_unknown_parameter_is_named() {
        let cmdline = line("bench ip=1.2.3.4 console=ttyS0 quiet=1");
        assert_eq!(cmdline.unknown_parameter(), Some("console=ttyS0"));
        // A key that merely starts like a known one is not it.
        assert_eq!(line("ipv6=::1").unknown_parameter(), Some("ipv6=::1"));
    }

    #[test]
    fn values_in_order_by_whole_key() {
        let cmdline = line("ping=1.1.1.1 ip=2.2.2.2 pingx=3 ping=4.4.4.4 ping");
        let values: Vec<&str> = cmdline.values("ping").collect();
        assert_eq!(values, ["1.1.1.1", "4.4.4.4"]);
        assert_eq!(cmdline.values("absent").count(), 0);
    }

    #[test]
    fn a_long_line_is_cut_and_no_more_of_it_read() {
        let mut read = 0;
        let cmdline = CommandLine::from_bytes(core::iter::repeat(b'a').inspect(|_| read += 1));
        assert_eq!(cmdline.as_str().len(), CMDLINE_MAX);
        assert_eq!(read, CMDLINE_MAX, "not a byte past what is kept");
    }

    #[test]
    fn a_line_that_is_not_utf8_reads_as_empty() {
        let cmdline = CommandLine::from_bytes([b'b', 0xff, b'x']);
        assert_eq!(cmdline.as_str(), "");
    }

    #[test]
    fn modes_say_what_they_are() {
        assert_eq!(mode("long-run 60").unwrap().to_string(), "long-run 60 s");
        assert_eq!(
            mode("devices-verify echo").unwrap().to_string(),
            "devices-verify echo"
        );
        assert!(mode("bench").unwrap().uses_devices());
        assert!(!mode("count").unwrap().uses_devices());
    }
}
