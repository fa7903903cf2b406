//! The user's terminal while the guest owns it.
//!
//! The guest's virtio console is the launcher's standard input and output. A terminal in its
//! usual (canonical) mode would hold keys back until Enter, echo them itself and turn Ctrl-C and
//! Ctrl-Z into signals for the launcher, so while a guest runs, a terminal on stdin is switched
//! to raw mode without signals: every key, Ctrl-C and Ctrl-Z included, goes to the guest at once
//! and the guest does its own echo and job control. The way out is an escape key, as QEMU's
//! `-serial mon:stdio` has it ([`Escape`]): Ctrl-A then x quits the launcher (exit status 5,
//! cli.rs's `QUIT`), Ctrl-A Ctrl-A sends the guest one Ctrl-A, and Ctrl-A then any other key
//! sends both. lguest's launcher instead passed Ctrl-C to the guest and quit on three in a row,
//! which takes a key a shell user types often.
//!
//! Whatever way the launcher ends, the terminal must come back as it was: [`RawTerminal`]
//! restores it when dropped (normal exit and errors), [`quit`] before it ends the launcher on the
//! escape key, and a handler on the signals that end a program (kill, a closed terminal) before
//! letting the signal do its usual work. When stdin is not a terminal (a pipe, a file: the tests)
//! nothing is changed, and its bytes reach the guest as they are: no escape key.

use std::sync::OnceLock;

use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::termios::{self, SetArg, Termios};

/// The terminal's settings before raw mode, for the signal handler. Set once, before the
/// handler is installed, and only read afterwards.
static SAVED: OnceLock<libc::termios> = OnceLock::new();

/// Signals whose default action ends the process: the terminal is restored before they do. With
/// ISIG off the terminal raises none of them itself, but `kill` still can. (The supervisor
/// passes the same ones on to the guest's process: supervise.rs.)
pub(crate) const ENDING_SIGNALS: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// Standard input in raw mode, until dropped.
pub struct RawTerminal {
    saved: Termios,
}

impl RawTerminal {
    /// Puts a terminal on stdin into raw mode; `None` (and nothing changed) if stdin is not a
    /// terminal.
    pub fn enter() -> anyhow::Result<Option<RawTerminal>> {
        let stdin = std::io::stdin();
        let Ok(saved) = termios::tcgetattr(&stdin) else {
            return Ok(None);
        };
        let _ = SAVED.set(saved.clone().into());
        for sig in ENDING_SIGNALS {
            let action = SigAction::new(
                SigHandler::Handler(restore_and_die),
                // SA_NODEFER: the signal is not blocked while the handler runs, so the raise
                // that ends the handler ends the launcher there and then; the handler never
                // returns, and the seccomp filter need not allow returning from one.
                SaFlags::SA_RESETHAND | SaFlags::SA_NODEFER,
                SigSet::empty(),
            );
            // SAFETY: restore_and_die only calls async-signal-safe functions (tcsetattr and
            // raise) on data that is fully written before the handler is installed.
            unsafe { signal::sigaction(sig, &action) }?;
        }
        // cfmakeraw clears ISIG too: Ctrl-C, Ctrl-Z and Ctrl-\ are bytes for the guest.
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        // Output stays cooked: the guest's "\n" still starts a new line at column 0.
        raw.output_flags = saved.output_flags;
        termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw)?;
        Ok(Some(RawTerminal { saved }))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
    }
}

/// On a signal that ends the launcher: put the terminal back, then end as the signal says (the
/// handler was installed with SA_RESETHAND and SA_NODEFER, so the raised signal takes its
/// default action at once).
extern "C" fn restore_and_die(sig: libc::c_int) {
    restore_from_handler();
    // SAFETY: raise is async-signal-safe.
    unsafe { libc::raise(sig) };
}

/// Puts the terminal back as [`RawTerminal::enter`] found it, if it changed it; safe to call
/// from a signal handler (this file's, and seccomp.rs's for a refused system call) and from
/// [`quit`] on another thread.
pub(crate) fn restore_from_handler() {
    if let Some(saved) = SAVED.get() {
        // SAFETY: tcsetattr is async-signal-safe and reads the settings saved before any
        // handler that calls this was installed.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, saved) };
    }
}

/// Ctrl-A: the escape key's first half.
const CTRL_A: u8 = 0x01;
/// What follows Ctrl-A to quit.
const QUIT_KEY: u8 = b'x';

/// The escape key in the bytes typed on a terminal: Ctrl-A then x asks to quit, Ctrl-A Ctrl-A
/// is one Ctrl-A for the guest, and Ctrl-A then any other byte is both bytes for the guest. A
/// Ctrl-A at the end of one read waits for the next read's first byte.
#[derive(Debug, Default)]
pub struct Escape {
    after_ctrl_a: bool,
}

/// What [`Escape::filter`] found in a read.
#[derive(Debug, PartialEq, Eq)]
pub enum Typed {
    /// Nothing but bytes for the guest.
    Keys,
    /// Ctrl-A x: the user asks the launcher to quit. Bytes after it are dropped.
    Quit,
}

impl Escape {
    /// Appends the bytes of `typed` meant for the guest to `guest`.
    pub fn filter(&mut self, typed: &[u8], guest: &mut impl Extend<u8>) -> Typed {
        for &byte in typed {
            if !self.after_ctrl_a {
                if byte == CTRL_A {
                    self.after_ctrl_a = true;
                } else {
                    guest.extend([byte]);
                }
                continue;
            }
            self.after_ctrl_a = false;
            match byte {
                QUIT_KEY => return Typed::Quit,
                CTRL_A => guest.extend([CTRL_A]),
                other => guest.extend([CTRL_A, other]),
            }
        }
        Typed::Keys
    }
}

/// Ends the launcher for the escape key: the terminal put back, one line on stderr, and exit
/// status [`QUIT`](crate::cli::QUIT). Called on the console's input thread while the run loop may
/// be inside the guest, so it cannot unwind to main: `_exit` ends every thread at once, as a
/// power cut ends a machine (the kernel closes /dev/lguest, the disks and taps). Only calls the
/// seccomp filter allows: TCSETS, write, exit_group.
pub fn quit() -> ! {
    restore_from_handler();
    eprintln!("lguest-launcher: Ctrl-A x typed: the launcher quits, the guest stops where it was");
    // SAFETY: _exit ends the process without running anything of this program's.
    unsafe { libc::_exit(i32::from(crate::cli::QUIT)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `reads` one after another and returns the bytes for the guest and whether the last
    /// read asked to quit.
    fn typed(reads: &[&[u8]]) -> (Vec<u8>, Typed) {
        let mut escape = Escape::default();
        let mut guest = Vec::new();
        let mut last = Typed::Keys;
        for read in reads {
            last = escape.filter(read, &mut guest);
        }
        (guest, last)
    }

    #[test]
    fn ordinary_keys_and_signal_keys_pass_through() {
        assert_eq!(
            typed(&[b"ls -l\r\x03\x1a\x1c"]),
            (b"ls -l\r\x03\x1a\x1c".to_vec(), Typed::Keys)
        );
    }

    #[test]
    fn ctrl_a_x_quits_after_what_came_before() {
        assert_eq!(typed(&[b"ab\x01xcd"]), (b"ab".to_vec(), Typed::Quit));
    }

    #[test]
    fn ctrl_a_ctrl_a_is_one_ctrl_a() {
        assert_eq!(typed(&[b"\x01\x01x"]), (b"\x01x".to_vec(), Typed::Keys));
    }

    #[test]
    fn ctrl_a_then_another_key_sends_both() {
        assert_eq!(
            typed(&[b"\x01a\x01X\x01\x03"]),
            (b"\x01a\x01X\x01\x03".to_vec(), Typed::Keys)
        );
    }

    #[test]
    fn ctrl_a_waits_across_reads() {
        assert_eq!(typed(&[b"a\x01", b"x"]), (b"a".to_vec(), Typed::Quit));
        assert_eq!(typed(&[b"\x01", b"\x01"]), (b"\x01".to_vec(), Typed::Keys));
        assert_eq!(typed(&[b"\x01", b"b"]), (b"\x01b".to_vec(), Typed::Keys));
        // A lone Ctrl-A is held, not lost: it goes with the next key.
        assert_eq!(typed(&[b"\x01"]), (Vec::new(), Typed::Keys));
    }
}
