//! Two processes: the launcher the user started, which only waits, and the guest's own.
//!
//! A guest that reboots must come back with fresh memory and a fresh /dev/lguest file, and
//! getting those means opening /dev/lguest, the kernel and the disk images again: exactly what
//! confinement (confine.rs, seccomp.rs) took away from the process that ran the guest. Exec'ing
//! the launcher afresh, as lguest's launcher did, needs execve, which the filter must not allow.
//! Keeping a spare /dev/lguest open would give one reboot, not every reboot.
//!
//! So the launcher does what a jailer does for a VMM, or an init for a service: [`supervise`]
//! forks a child that sets the guest up, confines itself and runs it, and waits. When the child
//! says the guest rebooted (its exit status is [`GUEST_REBOOTED`]), the launcher forks a fresh
//! child, which opens everything again from the privileges the launcher kept, and confines
//! itself again. Any other ending is the launcher's ending: the child's exit status becomes
//! the launcher's, and a child killed by a signal is reported as [`Ended::Signaled`], which
//! main.rs passes on by dying of the same signal ([`die_by`]), so whoever started the launcher
//! sees what they would have seen without the supervisor.
//!
//! The supervisor is the one part of the launcher that keeps its privilege and no seccomp
//! filter, so it is kept to almost nothing: it opens no file (the child reads the kernel and
//! opens the devices), it shares no memory with the guest's process, and all it takes from it
//! is an exit status. A guest that took over its launcher's device code holds the child, which
//! can neither signal nor trace its parent (a different user under `--user`, and the filter
//! allows no kill, ptrace or exec in any case). What the supervisor does besides waiting:
//! - a signal that ends a program (SIGINT, SIGTERM, SIGHUP, SIGQUIT) sent to it is passed on to
//!   the child, which puts the terminal back before dying of it (terminal.rs), and then ends the
//!   supervisor too: `kill PID` stops the guest as it always did;
//! - a child that dies of a signal it could not catch (SIGKILL) may leave the terminal raw: the
//!   supervisor puts it back as it found it;
//! - if the supervisor itself is killed, the child follows (confine.rs, [`end_with_supervisor`]
//!   there).
//!
//! Under `--no-reboot` there is nothing to restart, and main.rs runs the guest in the launcher's
//! own process, without a supervisor.
//!
//! [`end_with_supervisor`]: crate::confine::end_with_supervisor

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::{bail, Context};
use log::info;
use nix::errno::Errno;
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::{self, raise, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::termios::{self, SetArg};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};

use crate::cli::GUEST_REBOOTED;
use crate::terminal::ENDING_SIGNALS;

/// How the guest's process ended, for good.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this status (never [`GUEST_REBOOTED`]: that starts a fresh one).
    Exited(u8),
    /// A signal killed it, or ended the supervisor between two of them.
    Signaled(Signal),
}

/// The guest's process, while there is one (0 otherwise): where [`pass_on`] sends a signal.
static CHILD: AtomicI32 = AtomicI32::new(0);
/// The last ending signal the supervisor was sent (0: none).
static ENDING: AtomicI32 = AtomicI32::new(0);

/// The supervisor's handler for the signals that end a program: note it, and send it on.
extern "C" fn pass_on(signal: libc::c_int) {
    ENDING.store(signal, Ordering::SeqCst);
    let child = CHILD.load(Ordering::SeqCst);
    if child > 0 {
        // SAFETY: kill is async-signal-safe, and `child` is the supervisor's own child, not yet
        // reaped: CHILD is cleared, with these signals blocked, before it is waited for again.
        unsafe { libc::kill(child, signal) };
    }
}

/// Runs `guest` in a child process until the guest's end, and a fresh child each time it exits
/// with [`GUEST_REBOOTED`]. `guest` runs only in the children, and its return value is the
/// child's exit status. Must be called while the process has one thread (it forks).
pub fn supervise(mut guest: impl FnMut() -> u8) -> anyhow::Result<Ended> {
    // The terminal as the user had it, for a child that dies before it can put it back.
    let terminal = termios::tcgetattr(std::io::stdin()).ok();
    let ending: SigSet = ENDING_SIGNALS.into_iter().collect();
    // The mask keeps the handler from running inside itself for another of the signals.
    let passing_on = SigAction::new(SigHandler::Handler(pass_on), SaFlags::empty(), ending);
    let mut passed_on = Vec::new();
    for signal in ENDING_SIGNALS {
        // SAFETY: pass_on only touches atomics and calls kill, which is async-signal-safe.
        let before = unsafe { signal::sigaction(signal, &passing_on) }
            .with_context(|| format!("cannot handle {signal}"))?;
        if matches!(before.handler(), SigHandler::SigIgn) {
            // Ignored by whoever started the launcher (nohup's SIGHUP): it stays ignored, in
            // the guest's process too.
            // SAFETY: puts back the action that was there, which involves no handler.
            unsafe { signal::sigaction(signal, &before) }
                .with_context(|| format!("cannot ignore {signal} again"))?;
        } else {
            passed_on.push(signal);
        }
    }
    // Blocked, except while a child runs: a signal between two children, or between a fork and
    // CHILD's store, waits until the check at the top of the loop or the unblock after it.
    ending.thread_block().context("cannot block signals")?;
    let mut boots = 0u32;
    loop {
        if let Ok(signal) = Signal::try_from(ENDING.load(Ordering::SeqCst)) {
            return Ok(Ended::Signaled(signal));
        }
        boots += 1;
        // SAFETY: the caller promises a single thread, so the child may run anything; it never
        // returns from this match arm (it exits).
        let child = match unsafe { fork() }.context("cannot fork the guest's process")? {
            ForkResult::Child => run_child(&passed_on, &mut guest),
            ForkResult::Parent { child } => child,
        };
        CHILD.store(child.as_raw(), Ordering::SeqCst);
        ending.thread_unblock().context("cannot unblock signals")?;
        let status = loop {
            match waitpid(child, None) {
                Err(Errno::EINTR) => continue,
                other => break other,
            }
        }
        .context("cannot wait for the guest's process")?;
        ending.thread_block().context("cannot block signals")?;
        CHILD.store(0, Ordering::SeqCst);
        match status {
            WaitStatus::Exited(_, code) if code == i32::from(GUEST_REBOOTED) => {
                info!(
                    "the guest rebooted: starting it afresh (boot {})",
                    boots + 1
                );
            }
            WaitStatus::Exited(_, code) => return Ok(Ended::Exited(code as u8)),
            WaitStatus::Signaled(_, signal, _) => {
                if let Some(terminal) = &terminal {
                    let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, terminal);
                }
                return Ok(Ended::Signaled(signal));
            }
            other => bail!("the guest's process ended oddly: {other:?}"),
        }
    }
}

/// The child's side of the fork: the signals the supervisor passes on back to their default
/// action, all of them unblocked, then the guest, then exit with its status. A panic ends the
/// child as it would have ended the launcher (status 101), rather than unwinding into the
/// supervisor's loop.
fn run_child(passed_on: &[Signal], guest: &mut impl FnMut() -> u8) -> ! {
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for &signal in passed_on {
        // SAFETY: the default action involves no handler.
        let _ = unsafe { signal::sigaction(signal, &default) };
    }
    let _ = ENDING_SIGNALS
        .into_iter()
        .collect::<SigSet>()
        .thread_unblock();
    let status = panic::catch_unwind(AssertUnwindSafe(guest)).unwrap_or(101);
    std::process::exit(i32::from(status))
}

/// Ends the launcher by `signal`, as the guest's process ended: its default action, which for
/// every signal a process dies of ends this one too. Without a core file: the supervisor's
/// memory says nothing about why the guest's process died.
pub fn die_by(signal: Signal) -> ! {
    let _ = setrlimit(Resource::RLIMIT_CORE, 0, 0);
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: the default action involves no handler.
    let _ = unsafe { signal::sigaction(signal, &default) };
    let _ = SigSet::from(signal).thread_unblock();
    let _ = raise(signal);
    // Only for a signal whose default is not to end a process, which no process dies of.
    std::process::exit(128 + signal as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    use nix::sys::signal::kill;
    use nix::sys::wait::WaitPidFlag;
    use nix::unistd::{pipe, Pid};

    /// Runs `body` in a forked process (the supervisor installs handlers and forks, which the
    /// test harness's threads must not see), and returns how that process ended.
    fn in_process(body: impl FnOnce() -> i32) -> WaitStatus {
        // SAFETY: the child runs `body`, which only supervises and forks, and then `_exit`s.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                let status = body();
                // SAFETY: ends the child at once, running nothing of the parent's.
                unsafe { libc::_exit(status) }
            }
            ForkResult::Parent { child } => waitpid(child, None).unwrap(),
        }
    }

    /// What a supervisor ended with, as the exit status of its test process: the code, or 100
    /// plus the signal.
    fn as_status(ended: anyhow::Result<Ended>) -> i32 {
        match ended {
            Ok(Ended::Exited(code)) => i32::from(code),
            Ok(Ended::Signaled(signal)) => 100 + signal as i32,
            Err(_) => 99,
        }
    }

    /// A supervisor whose guest reboots `reboots` times and then exits with `last`; returns
    /// the supervisor's ending and how many boots there were.
    fn boots_until(reboots: usize, last: u8) -> (WaitStatus, usize) {
        let (rx, tx) = pipe().unwrap();
        let (count_rx, count_tx) = pipe().unwrap();
        // The boots so far live in a pipe the children share: each reads how many came before
        // and writes one more.
        File::from(count_tx.try_clone().unwrap())
            .write_all(&[0])
            .unwrap();
        let status = in_process(|| {
            as_status(supervise(|| {
                let mut before = [0u8];
                let _ = File::from(count_rx.try_clone().unwrap()).read_exact(&mut before);
                let _ = File::from(count_tx.try_clone().unwrap()).write_all(&[before[0] + 1]);
                let _ = File::from(tx.try_clone().unwrap()).write_all(b"boot\n");
                if usize::from(before[0]) < reboots {
                    GUEST_REBOOTED
                } else {
                    last
                }
            }))
        });
        drop(tx);
        let mut said = String::new();
        File::from(rx).read_to_string(&mut said).unwrap();
        (status, said.lines().count())
    }

    #[test]
    fn reboots_start_the_guest_afresh_and_its_last_status_is_the_launchers() {
        let (status, boots) = boots_until(2, 0);
        assert!(matches!(status, WaitStatus::Exited(_, 0)), "{status:?}");
        assert_eq!(boots, 3);
        let (status, boots) = boots_until(0, 3);
        assert!(matches!(status, WaitStatus::Exited(_, 3)), "{status:?}");
        assert_eq!(boots, 1);
    }

    #[test]
    fn a_child_killed_by_a_signal_is_reported_as_such() {
        let status = in_process(|| {
            as_status(supervise(|| {
                // SIGUSR1: it ends a process, as SIGSYS does, but leaves no core file behind.
                let _ = raise(Signal::SIGUSR1);
                0
            }))
        });
        assert!(
            matches!(status, WaitStatus::Exited(_, code) if code == 100 + Signal::SIGUSR1 as i32),
            "{status:?}"
        );
    }

    /// As under `nohup`: a SIGHUP ignored when the launcher starts stays ignored in the guest's
    /// process.
    #[test]
    fn an_ignored_signal_stays_ignored() {
        let status = in_process(|| {
            let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
            // SAFETY: ignoring involves no handler.
            let _ = unsafe { signal::sigaction(Signal::SIGHUP, &ignore) };
            as_status(supervise(|| {
                let _ = raise(Signal::SIGHUP);
                0
            }))
        });
        assert!(matches!(status, WaitStatus::Exited(_, 0)), "{status:?}");
    }

    #[test]
    fn a_panic_ends_the_child_not_the_supervisor() {
        let status = in_process(|| as_status(supervise(|| panic!("in the guest's process"))));
        assert!(matches!(status, WaitStatus::Exited(_, 101)), "{status:?}");
    }

    /// SIGTERM to the supervisor reaches the child (which here waits for nothing else), and
    /// the supervisor ends by it too, as main.rs has it.
    #[test]
    fn an_ending_signal_is_passed_on_and_ends_both() {
        let (rx, tx) = pipe().unwrap();
        // SAFETY: the child supervises and dies; it returns to none of the test's code.
        let supervisor = match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                drop(rx);
                let ended = supervise(|| {
                    let _ = File::from(tx.try_clone().unwrap())
                        .write_all(format!("{}\n", std::process::id()).as_bytes());
                    loop {
                        std::thread::sleep(Duration::from_secs(1));
                    }
                });
                match ended {
                    Ok(Ended::Signaled(signal)) => die_by(signal),
                    // SAFETY: ends the child at once.
                    _ => unsafe { libc::_exit(99) },
                }
            }
            ForkResult::Parent { child } => child,
        };
        drop(tx);
        let mut line = String::new();
        let mut rx = File::from(rx);
        let mut byte = [0u8];
        while rx.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
            line.push(char::from(byte[0]));
        }
        let guest = Pid::from_raw(line.parse().unwrap());
        kill(supervisor, Signal::SIGTERM).unwrap();
        // A supervisor that kept the signal to itself would wait for its child for ever.
        let start = Instant::now();
        let status = loop {
            match waitpid(supervisor, Some(WaitPidFlag::WNOHANG)).unwrap() {
                WaitStatus::StillAlive if start.elapsed() < Duration::from_secs(60) => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                WaitStatus::StillAlive => {
                    let _ = kill(guest, Signal::SIGKILL);
                    panic!("the supervisor still waits a minute after SIGTERM");
                }
                status => break status,
            }
        };
        assert!(
            matches!(status, WaitStatus::Signaled(_, Signal::SIGTERM, false)),
            "{status:?}"
        );
        // The supervisor reaped its child before it died: the guest's process is gone.
        assert_eq!(kill(guest, None), Err(Errno::ESRCH));
    }
}
