//! The scenarios, in the order `lguest-e2e all` runs them: the module comes and goes first and
//! last; in between, the ABI is tested request by request, then the launcher as a user runs it,
//! then guests run: friendly, hostile, many switches, two at once, with devices, under a
//! confined launcher, and one stopped by Ctrl-C.

use std::fs::File;
use std::io::{Read, Write};

use anyhow::{bail, ensure, Context};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, pipe, ForkResult};

mod abi_initialize;
mod abi_owner;
mod abi_regs;
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

/// `guest_hostile!("ATTACK")` is the scenario `guest-hostile-ATTACK`: the ring-1 guest makes its
/// attack ATTACK (tests/guests/ring1/src/attacks.rs) and must die for it, with the fast paths
/// and without ([`hostile::dies_for`]). `guest_hostile!("NAME", RUN)` is `guest-hostile-NAME`
/// judged by RUN instead: an attack made with many arguments, or judged by more than the
/// guest's death. Each is one line, from which the harness reads the name (see the tests below).
macro_rules! guest_hostile {
    ($attack:literal) => {
        Scenario {
            name: concat!("guest-hostile-", $attack),
            run: || hostile::dies_for($attack),
        }
    };
    ($name:literal, $run:path) => {
        Scenario {
            name: concat!("guest-hostile-", $name),
            run: $run,
        }
    };
}

pub static SCENARIOS: [Scenario; 85] = [
    Scenario {
        name: "module-load",
        run: module::load,
    },
    Scenario {
        name: "abi-initialize",
        run: abi_initialize::initialize,
    },
    Scenario {
        name: "abi-regs",
        run: abi_regs::regs,
    },
    Scenario {
        name: "abi-owner",
        run: abi_owner::owner,
    },
    Scenario {
        name: "abi-irq",
        run: abi_owner::irq,
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
    guest_hostile!("syscall"),
    guest_hostile!("sysenter"),
    guest_hostile!("cli"),
    guest_hostile!("hlt"),
    guest_hostile!("mov-cr3"),
    guest_hostile!("mov-to-cr4"),
    guest_hostile!("lgdt"),
    guest_hostile!("wrmsr"),
    guest_hostile!("ins"),
    guest_hostile!("outs"),
    guest_hostile!("swapgs"),
    guest_hostile!("write-switcher-text"),
    guest_hostile!("read-switcher-host"),
    guest_hostile!("hcall-wild-pointer"),
    guest_hostile!("hcall-huge-len"),
    guest_hostile!("hcall-wrap"),
    guest_hostile!("hcall-unknown"),
    guest_hostile!("iretq-cs-rpl0"),
    guest_hostile!("iretq-iopl3"),
    guest_hostile!("iretq-noncanonical"),
    guest_hostile!("bad-stack"),
    guest_hostile!("int", hostile::int_every_vector),
    guest_hostile!("int3"),
    guest_hostile!("icebp"),
    guest_hostile!("switcher-pages", hostile::switcher_pages),
    guest_hostile!("ldt-call-gate", hazards::ldt_call_gate),
    guest_hostile!("single-step", hazards::single_step),
    guest_hostile!("pkru", hazards::pkru),
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
    guest_hostile!("xsetbv", privileged::hostile_xsetbv),
    Scenario {
        name: "guest-ports",
        run: privileged::ports,
    },
    Scenario {
        name: "guest-user-page",
        run: privileged::user_page,
    },
    guest_hostile!("smep", privileged::hostile_smep),
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
    use super::hostile::SWITCHER_PAGE_ATTACKS;
    use super::SCENARIOS;

    /// A `guest_hostile!` line, as the harness reads it: `guest_hostile!("ATTACK"),` gives
    /// `ATTACK`, and `guest_hostile!("NAME", RUN),` gives `NAME` and `Some(RUN)`.
    fn guest_hostile(line: &str) -> Option<(&str, Option<&str>)> {
        let (name, rest) = line
            .trim_start_matches(' ')
            .strip_prefix("guest_hostile!(\"")?
            .strip_suffix("),")?
            .split_once('"')?;
        let run = rest.strip_prefix(", ");
        (!rest.contains('"') && (rest.is_empty() || run.is_some())).then_some((name, run))
    }

    /// `./lguest-dev list` (and its check of the names given to `./lguest-dev scenario`) reads
    /// the names from this file's text, without building anything: `scenario_names` in
    /// tests/harness/common.sh takes each line that is only `name: "..."`, or only
    /// `guest_hostile!("...")` with or without a second argument, after spaces. This reads them
    /// the same way: a name written otherwise would be missing from the list.
    #[test]
    fn the_harness_reads_every_name_from_this_file() {
        let read: Vec<String> = include_str!("mod.rs")
            .lines()
            .filter_map(|line| {
                if let Some((name, _)) = guest_hostile(line) {
                    return Some(format!("guest-hostile-{name}"));
                }
                let name = line
                    .trim_start_matches(' ')
                    .strip_prefix("name: \"")?
                    .strip_suffix("\",")?;
                (!name.contains('"')).then(|| name.to_owned())
            })
            .collect();
        let table: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
        assert_eq!(read, table);
    }

    /// The attacks the ring-1 guest knows: the names in its ATTACKS table.
    fn ring1_attacks() -> Vec<&'static str> {
        let source = include_str!("../../../guests/ring1/src/attacks.rs");
        let table = source
            .split_once("const ATTACKS")
            .and_then(|(_, rest)| rest.split_once("\n];"))
            .expect("attacks.rs has an ATTACKS table")
            .0;
        table
            .lines()
            .filter_map(|line| line.trim_start().strip_prefix("(\"")?.split_once('"'))
            .map(|(name, _)| name)
            .collect()
    }

    /// The guest's list of attacks is the one list: each is a `guest-hostile-<attack>` scenario
    /// (or one of those `guest-hostile-switcher-pages` makes on every page), and every
    /// `guest_hostile!` of one attack names an attack the guest knows.
    #[test]
    fn every_attack_of_the_ring1_guest_is_a_scenario() {
        let known = ring1_attacks();
        assert!(known.len() > 20, "read only {known:?} from attacks.rs");
        for (attack, run) in include_str!("mod.rs").lines().filter_map(guest_hostile) {
            assert!(
                run.is_some() || known.contains(&attack),
                "guest_hostile!(\"{attack}\"): the ring-1 guest has no such attack"
            );
        }
        for attack in known {
            let name = format!("guest-hostile-{attack}");
            assert!(
                SCENARIOS.iter().any(|s| s.name == name) || SWITCHER_PAGE_ATTACKS.contains(&attack),
                "the ring-1 guest's attack {attack:?} has no scenario"
            );
        }
    }
}
