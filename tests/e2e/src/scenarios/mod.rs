//! The scenarios, in the order `lguest-e2e all` runs them: the module comes and goes first and
//! last; in between, the ABI is tested request by request, then the launcher as a user runs it,
//! then guests run: friendly, hostile, many switches, two at once, with devices, under a
//! confined launcher, and one stopped by Ctrl-C.

use std::fs::File;
use std::io::{Read, Write};

use anyhow::{bail, ensure, Context};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, pipe, ForkResult};

mod abi;
mod confined;
mod devices;
mod guest;
mod hazards;
mod host_state;
mod hostile;
mod launcher;
pub(crate) mod linux;
mod linux_devices;
mod linux_load;
mod linux_selftests;
mod linux_soak;
mod module;
mod privileged;
mod resources;
mod session;
mod stats;
mod teaching_guest;

pub use linux_soak::SOAKS;

pub struct Scenario {
    pub name: &'static str,
    pub run: fn() -> anyhow::Result<()>,
}

pub static SCENARIOS: [Scenario; 85] = [
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
        name: "abi-irq",
        run: abi::irq,
    },
    Scenario {
        name: "abi-stranger-while-running",
        run: session::stranger_while_running,
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
        name: "launcher-terminal",
        run: launcher::terminal,
    },
    Scenario {
        name: "guest-hello",
        run: guest::hello,
    },
    Scenario {
        name: "guest-hostile-syscall",
        run: || hostile::dies_for("syscall"),
    },
    Scenario {
        name: "guest-hostile-sysenter",
        run: || hostile::dies_for("sysenter"),
    },
    Scenario {
        name: "guest-hostile-cli",
        run: || hostile::dies_for("cli"),
    },
    Scenario {
        name: "guest-hostile-hlt",
        run: || hostile::dies_for("hlt"),
    },
    Scenario {
        name: "guest-hostile-mov-cr3",
        run: || hostile::dies_for("mov-cr3"),
    },
    Scenario {
        name: "guest-hostile-mov-to-cr4",
        run: || hostile::dies_for("mov-to-cr4"),
    },
    Scenario {
        name: "guest-hostile-lgdt",
        run: || hostile::dies_for("lgdt"),
    },
    Scenario {
        name: "guest-hostile-wrmsr",
        run: || hostile::dies_for("wrmsr"),
    },
    Scenario {
        name: "guest-hostile-ins",
        run: || hostile::dies_for("ins"),
    },
    Scenario {
        name: "guest-hostile-outs",
        run: || hostile::dies_for("outs"),
    },
    Scenario {
        name: "guest-hostile-swapgs",
        run: || hostile::dies_for("swapgs"),
    },
    Scenario {
        name: "guest-hostile-write-switcher-text",
        run: || hostile::dies_for("write-switcher-text"),
    },
    Scenario {
        name: "guest-hostile-read-switcher-host",
        run: || hostile::dies_for("read-switcher-host"),
    },
    Scenario {
        name: "guest-hostile-hcall-wild-pointer",
        run: || hostile::dies_for("hcall-wild-pointer"),
    },
    Scenario {
        name: "guest-hostile-hcall-huge-len",
        run: || hostile::dies_for("hcall-huge-len"),
    },
    Scenario {
        name: "guest-hostile-hcall-wrap",
        run: || hostile::dies_for("hcall-wrap"),
    },
    Scenario {
        name: "guest-hostile-hcall-unknown",
        run: || hostile::dies_for("hcall-unknown"),
    },
    Scenario {
        name: "guest-hostile-iretq-cs-rpl0",
        run: || hostile::dies_for("iretq-cs-rpl0"),
    },
    Scenario {
        name: "guest-hostile-iretq-iopl3",
        run: || hostile::dies_for("iretq-iopl3"),
    },
    Scenario {
        name: "guest-hostile-iretq-noncanonical",
        run: || hostile::dies_for("iretq-noncanonical"),
    },
    Scenario {
        name: "guest-hostile-bad-stack",
        run: || hostile::dies_for("bad-stack"),
    },
    Scenario {
        name: "guest-hostile-int",
        run: hostile::int_every_vector,
    },
    Scenario {
        name: "guest-hostile-int3",
        run: || hostile::dies_for("int3"),
    },
    Scenario {
        name: "guest-hostile-icebp",
        run: || hostile::dies_for("icebp"),
    },
    Scenario {
        name: "guest-hostile-switcher-pages",
        run: hostile::switcher_pages,
    },
    Scenario {
        name: "guest-hostile-ldt-call-gate",
        run: hazards::ldt_call_gate,
    },
    Scenario {
        name: "guest-hostile-single-step",
        run: hazards::single_step,
    },
    Scenario {
        name: "guest-hostile-pkru",
        run: hazards::pkru,
    },
    Scenario {
        name: "guest-pins-released",
        run: guest::pins_released,
    },
    Scenario {
        name: "guest-memlock",
        run: resources::memlock,
    },
    Scenario {
        name: "guest-stale-tsc-aux",
        run: host_state::stale_tsc_aux,
    },
    Scenario {
        name: "guest-host-breakpoint",
        run: host_state::host_breakpoint,
    },
    Scenario {
        name: "guest-many-switches",
        run: guest::many_switches,
    },
    Scenario {
        name: "guest-two-at-once",
        run: guest::two_at_once,
    },
    Scenario {
        name: "guest-fpu",
        run: guest::fpu,
    },
    Scenario {
        name: "guest-traps",
        run: guest::traps,
    },
    Scenario {
        name: "guest-timer",
        run: guest::timer,
    },
    Scenario {
        name: "guest-user",
        run: guest::user,
    },
    Scenario {
        name: "guest-async",
        run: guest::async_ring,
    },
    Scenario {
        name: "guest-long-run",
        run: teaching_guest::long_run,
    },
    Scenario {
        name: "guest-cr4",
        run: privileged::cr4,
    },
    Scenario {
        name: "guest-xsetbv",
        run: privileged::xsetbv,
    },
    Scenario {
        name: "guest-hostile-xsetbv",
        run: privileged::hostile_xsetbv,
    },
    Scenario {
        name: "guest-ports",
        run: privileged::ports,
    },
    Scenario {
        name: "guest-user-page",
        run: privileged::user_page,
    },
    Scenario {
        name: "guest-hostile-smep",
        run: privileged::hostile_smep,
    },
    Scenario {
        name: "guest-pgtable-flush",
        run: privileged::pgtable_flush,
    },
    Scenario {
        name: "guest-wallclock",
        run: privileged::wallclock,
    },
    Scenario {
        name: "teaching-guest-lguest",
        run: teaching_guest::teaching_guest,
    },
    Scenario {
        name: "linux-boots",
        run: linux::boots,
    },
    Scenario {
        name: "linux-shell",
        run: linux::shell_runs_commands,
    },
    Scenario {
        name: "linux-reboot",
        run: linux::reboot_restarts,
    },
    Scenario {
        name: "linux-panic",
        run: linux::panic_ends_the_launcher,
    },
    Scenario {
        name: "linux-block",
        run: linux_devices::block,
    },
    Scenario {
        name: "linux-net",
        run: linux_devices::net,
    },
    Scenario {
        name: "linux-rng",
        run: linux_devices::rng,
    },
    Scenario {
        name: "linux-disk-root",
        run: linux_load::disk_root,
    },
    Scenario {
        name: "linux-mm-stress",
        run: linux_load::mm_stress,
    },
    Scenario {
        name: "linux-two-guests",
        run: linux_load::two_guests,
    },
    Scenario {
        name: "linux-selftests-x86",
        run: linux_selftests::x86,
    },
    Scenario {
        name: "hostile-idt-gdt",
        run: hostile::bad_gates,
    },
    Scenario {
        name: "hostile-pagetable",
        run: hostile::bad_page_tables,
    },
    Scenario {
        name: "launcher-mmio",
        run: devices::mmio,
    },
    Scenario {
        name: "launcher-mmio-refused",
        run: devices::mmio_refused,
    },
    Scenario {
        name: "hostile-virtqueue",
        run: devices::hostile_virtqueue,
    },
    Scenario {
        name: "devices-rng",
        run: devices::rng,
    },
    Scenario {
        name: "devices-console-echo",
        run: devices::console_echo,
    },
    Scenario {
        name: "devices-block",
        run: devices::block,
    },
    Scenario {
        name: "devices-net-ping",
        run: devices::net_ping,
    },
    Scenario {
        name: "launcher-confined",
        run: confined::confined,
    },
    Scenario {
        name: "launcher-reboot",
        run: confined::reboot,
    },
    Scenario {
        name: "launcher-seccomp",
        run: confined::seccomp,
    },
    Scenario {
        name: "launcher-stats",
        run: stats::stats,
    },
    Scenario {
        name: "guest-ctrl-c",
        run: guest::ctrl_c,
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

/// The hidden argument that makes `lguest-e2e` play the exec'd half of abi-owner's exec case.
pub const READ_AFTER_EXEC: &str = "--read-after-exec";

/// The guest's owner execs a new program (this one) that keeps the file and reads it: the same
/// task, but no longer the address space the guest lives in, so lg.ko must refuse (EPERM) rather
/// than switch into a guest whose memory and Switcher mapping are gone. Only returns on failure.
pub(super) fn exec_and_read(file: &crate::lguest::Lguest) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let fd = file.raw_fd();
    // Keep the file open across exec (Rust opens every file close-on-exec).
    // SAFETY: F_SETFD on a descriptor we own changes only its close-on-exec flag.
    let cleared = unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    nix::errno::Errno::result(cleared).context("clearing close-on-exec")?;
    let err = std::process::Command::new("/proc/self/exe")
        .args([READ_AFTER_EXEC, &fd.to_string()])
        .exec();
    Err(err).context("exec of lguest-e2e")
}

/// In the exec'd program: read the inherited file; exit 0 iff lg.ko said EPERM.
pub fn read_after_exec(fd: &str) -> std::process::ExitCode {
    let Ok(fd) = fd.parse::<i32>() else {
        eprintln!("lguest-e2e: {READ_AFTER_EXEC} wants a file descriptor");
        return std::process::ExitCode::from(2);
    };
    let mut buf = [0u8; lguest_abi::exit::EXIT_MAX_BYTES];
    // SAFETY: `fd` is the descriptor our exec'ing self kept open for us; `buf` is ours.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    match nix::errno::Errno::result(n) {
        Err(nix::errno::Errno::EPERM) => std::process::ExitCode::SUCCESS,
        other => {
            eprintln!("lguest-e2e: read after exec: expected EPERM, got {other:?}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SCENARIOS;

    /// `./lguest-dev list` (and its check of the names given to `./lguest-dev scenario`) reads
    /// the names from this file's text, without building anything: `scenario_names` in
    /// tests/harness/common.sh takes each line that is only `name: "..."`, after spaces. This
    /// reads them the same way: a name written otherwise would be missing from the list.
    #[test]
    fn the_harness_reads_every_name_from_this_file() {
        let read: Vec<&str> = include_str!("mod.rs")
            .lines()
            .filter_map(|line| {
                line.trim_start_matches(' ')
                    .strip_prefix("name: \"")?
                    .strip_suffix("\",")
                    .filter(|name| !name.contains('"'))
            })
            .collect();
        let table: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
        assert_eq!(read, table);
    }
}
