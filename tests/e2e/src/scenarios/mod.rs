//! The scenarios, in the order `lguest-e2e all` runs them: the module comes and goes first and
//! last, the ABI is tested request by request in between, then the launcher as a user runs it.

use std::fs::File;
use std::io::{Read, Write};

use anyhow::{bail, ensure, Context};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, pipe, ForkResult};

mod abi;
mod launcher;
mod module;

pub struct Scenario {
    pub name: &'static str,
    pub run: fn() -> anyhow::Result<()>,
}

pub static SCENARIOS: [Scenario; 7] = [
    Scenario {
        name: "module-load",
        run: module::load,
    },
    Scenario {
        name: "abi-initialize",
        run: abi::initialize,
    },
    Scenario {
        name: "abi-regs",
        run: abi::regs,
    },
    Scenario {
        name: "abi-owner",
        run: abi::owner,
    },
    Scenario {
        name: "launcher-loads-bzimage",
        run: launcher::loads_bzimage,
    },
    Scenario {
        name: "launcher-bad-input",
        run: launcher::bad_input,
    },
    Scenario {
        name: "module-unload",
        run: module::unload,
    },
];

/// Runs `body` in a forked child and returns its verdict. The child sends its error message
/// (nothing if it passed) back through a pipe, since after the fork it shares nothing else with
/// us, and leaves by `_exit` so that it never runs the parent's code.
pub(super) fn in_child(body: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let (rx, tx) = pipe()?;
    // SAFETY: the process is single-threaded here (the scenario's thread was joined), so the
    // child may run any code; it never returns from this function, see below.
    match unsafe { fork() }? {
        ForkResult::Child => {
            drop(rx);
            let message = match crate::catch_panic(body) {
                Ok(Ok(())) => String::new(),
                Ok(Err(e)) => format!("{e:#}"),
                Err(panic) => panic,
            };
            let sent = File::from(tx).write_all(message.as_bytes());
            // SAFETY: _exit ends the child at once. It skips atexit handlers and the flushing of
            // stdio buffers, which are the parent's to run: the child must not print its copy.
            unsafe { libc::_exit(i32::from(sent.is_err())) }
        }
        ForkResult::Parent { child } => {
            drop(tx);
            let mut message = String::new();
            File::from(rx)
                .read_to_string(&mut message)
                .context("reading the child's verdict")?;
            match waitpid(child, None)? {
                WaitStatus::Exited(_, 0) => {}
                status => bail!("child ended with {status:?}"),
            }
            ensure!(message.is_empty(), "{message}");
            Ok(())
        }
    }
}
