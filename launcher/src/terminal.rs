//! The user's terminal while the guest owns it.
//!
//! The guest's virtio console is the launcher's standard input and output. A terminal in its
//! usual (canonical) mode would hold keys back until Enter and echo them itself, so while a guest
//! runs, a terminal on stdin is switched to raw mode: every key goes to the guest at once and the
//! guest does its own echo. Ctrl-C is left as a signal (ISIG stays on): it ends the launcher, as
//! it ends any foreground program; lguest's launcher instead passed it to the guest and quit on
//! three in a row.
//!
//! Whatever way the launcher ends, the terminal must come back as it was: [`RawTerminal`]
//! restores it when dropped (normal exit and errors), and a handler restores it on the signals
//! that end a program (Ctrl-C, kill, a closed terminal) before letting the signal do its usual
//! work. When stdin is not a terminal (a pipe, a file: the tests) nothing is changed.

use std::sync::OnceLock;

use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::termios::{self, LocalFlags, SetArg, Termios};

/// The terminal's settings before raw mode, for the signal handler. Set once, before the
/// handler is installed, and only read afterwards.
static SAVED: OnceLock<libc::termios> = OnceLock::new();

/// Signals whose default action ends the process: the terminal is restored before they do.
const ENDING_SIGNALS: [Signal; 4] = [
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
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        raw.local_flags |= LocalFlags::ISIG;
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
/// from a signal handler (this file's, and seccomp.rs's for a refused system call).
pub(crate) fn restore_from_handler() {
    if let Some(saved) = SAVED.get() {
        // SAFETY: tcsetattr is async-signal-safe and reads the settings saved before any
        // handler that calls this was installed.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, saved) };
    }
}
