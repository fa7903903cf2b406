//! A guest's file shared with a stranger while the guest runs.
//!
//! The launcher's `read()` runs the guest with the session locked, for as long as the guest
//! runs. Another task holding the same file (a forked child, a thread) may call `read()` or
//! `write()` meanwhile; it is refused (only the guest's owner may drive it), and it must be
//! refused at once, not after sleeping on the lock, unkillable, until the guest next stops.

use std::sync::mpsc;
use std::time::Duration;

use anyhow::{ensure, Context};
use lguest_abi::dev::{Refusal, Request};
use lguest_abi::exit::EXIT_MAX_BYTES;
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult, Pid};

use crate::kmod;
use crate::lguest::{Lguest, TestGuest, ENTRY};
use lguest_launcher::memory::{Bytes, GuestAddress};

/// `jmp .`: a guest that runs forever without a hypercall.
const SPIN: [u8; 2] = [0xeb, 0xfe];
/// How long the stranger's answer may take before the scenario calls it stuck: far longer than
/// an answer takes (it needs no guest to stop), even on a slow machine.
const STRANGER_PATIENCE: Duration = Duration::from_secs(60);

/// `abi-stranger-while-running`: a child process INITIALIZEs the guest and runs it; the parent,
/// which opened the file and shares it, asks for a register and reads while the guest runs, and
/// gets EPERM both times without waiting for the guest.
pub fn stranger_while_running() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let guest = TestGuest::new()?;
    guest
        .memory()
        .write_slice(&SPIN, GuestAddress(ENTRY))
        .context("writing the guest's loop")?;
    let dev = Lguest::open()?;
    // SAFETY: The process is single-threaded here (the scenario runs on the main thread and has
    // started none); the child runs only the code below and leaves by _exit.
    let owner = match unsafe { fork() }? {
        ForkResult::Child => {
            let running = dev.initialize(guest.valid()).is_ok() && dev.read(EXIT_MAX_BYTES).is_ok();
            // SAFETY: _exit ends the child without running the parent's atexit handlers.
            unsafe { libc::_exit(i32::from(!running)) }
        }
        ForkResult::Parent { child } => child,
    };
    let outcome = ask_as_stranger(&dev, owner);
    // The owner may be gone already (the watchdog's doing): only the wait matters.
    let _ = kill(owner, Signal::SIGKILL);
    waitpid(owner, None).context("waiting for the guest's owner")?;
    outcome
}

/// The parent's part: wait for the child to own the guest and run it, then ask twice. A
/// watchdog ends the owner if the answers have not all come within [`STRANGER_PATIENCE`]: then
/// the stranger's calls were waiting for the guest to stop, and they return once it has.
fn ask_as_stranger(dev: &Lguest, owner: Pid) -> anyhow::Result<()> {
    let (answered, wait) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let stuck = wait.recv_timeout(STRANGER_PATIENCE).is_err();
        if stuck {
            let _ = kill(owner, Signal::SIGKILL);
        }
        stuck
    });
    let asked = ask(dev);
    let _ = answered.send(());
    let stuck = watchdog.join().unwrap_or(true);
    ensure!(
        !stuck,
        "a stranger's calls still waited after {STRANGER_PATIENCE:?}, for the lock the running \
         guest holds"
    );
    asked
}

/// The stranger's calls: read() until the child's INITIALIZE has happened (before it, the
/// refusal is for want of a guest), a pause for the child to be inside read(), running the guest
/// with the lock held, then read() and GETREG, both refused EPERM.
fn ask(dev: &Lguest) -> anyhow::Result<()> {
    let not_yet = Err(Errno::from_raw(Refusal::NotInitialized.errno()));
    let mut polls = 0;
    while dev.read_len(8) == not_yet {
        polls += 1;
        ensure!(polls < 6000, "the child never initialised the guest");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_secs(1));
    let read = dev.read_len(8);
    let getreg = dev.request(Request::GetReg { offset: 0 });
    let eperm = Err(Errno::from_raw(Refusal::NotOwner.errno()));
    ensure!(
        read == eperm && getreg == eperm,
        "a stranger's read() and GETREG: expected EPERM, got {read:?} and {getreg:?}"
    );
    Ok(())
}
