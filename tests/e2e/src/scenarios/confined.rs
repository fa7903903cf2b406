//! The confined launcher: once the guest is set up, the process that runs it has no privilege
//! (`--user`, `--chroot`) and only the system calls its seccomp filter allows (launcher/src/
//! confine.rs and seccomp.rs). The scenarios look at a running launcher from outside, as an
//! administrator would: its IDs, groups, capabilities and seccomp mode in /proc/PID/status, its
//! root in /proc/PID/root, its open files in /proc/PID/fd. The guest runs in the launcher's
//! child (launcher/src/supervise.rs), which is what is confined; the launcher itself only waits.
//!
//! - `launcher-confined`: the teaching guest's device self-tests (entropy, a disk, console
//!   input), run by a process that became nobody in an empty root directory, with the filter
//!   on and its locked-memory limit raised to guest RAM, while the launcher above it holds no
//!   file of the guest's; and a UID the user database does not know, with its group given.
//! - `launcher-reboot`: a guest that reboots is started afresh, in a fresh process that
//!   confines itself again, until the launcher is stopped; under `--no-reboot` the launcher
//!   exits 4 instead. (`linux-reboot` reboots Linux under `--user nobody`: linux.rs.)
//! - `launcher-seccomp`: the filter is on by default, in every thread, and off with
//!   `--no-seccomp`; and a call it forbids, made from the console's input thread as a guest that
//!   took that thread over would make it, ends the launcher by SIGSYS with one line. The call is
//!   put there by ptrace: the thread sleeps in poll, so its RIP is just past a `syscall`
//!   instruction, which it is sent back to with another number in RAX.

use std::fs;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use nix::sys::ptrace;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

use super::devices::{passed, shown};
use super::guest::{hello_still_runs, GUEST, MEM};
use crate::check::Checks;
use crate::kmod;
use crate::launch::{self, Running};
use crate::procfs::{self, field};

const TEACHING: &str = "/guests/teaching-guest";
/// The teaching guest's device self-tests take about a second; its console test waits 20 s for
/// a line, which comes once the launcher has been looked at.
const PATIENCE: Duration = Duration::from_secs(60);
/// The root the confined launcher gets: an empty directory.
const JAIL: &str = "/tmp/lguest-jail";
/// Its disk, opened before the launcher leaves the real root.
const DISK: &str = "/tmp/lguest-confined.img";
/// nobody, and nobody's group, as the VM's /etc/passwd and /etc/group number them
/// (tests/harness/build-initramfs.sh), as Debian does.
const NOBODY: &str = "65534";
/// The console is virtio device type 3; its input thread is named after it (input.rs).
const CONSOLE_INPUT: &str = "virtio-3-input";
/// The launcher's line for a call its filter refused, up to the call's address.
const REFUSED: &str = "lguest-launcher: the seccomp filter refused system call";

/// `launcher-confined`: see the module's documentation.
pub fn confined() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    fs::create_dir_all(JAIL).with_context(|| format!("create {JAIL}"))?;
    fs::File::create(DISK)
        .and_then(|disk| disk.set_len(8 << 20))
        .with_context(|| format!("create {DISK}"))?;
    let mut c = Checks::new();

    let (mut running, mut stdin) = launch::spawn_with_open_stdin(&[
        "--user", "nobody", "--chroot", JAIL, "--rng", "--block", DISK, MEM, TEACHING, "devices",
        "echo",
    ])?;
    let guest = running.guest_pid(PATIENCE)?;
    let all_nobody = [NOBODY; 4].join("\t");
    // The user changes after setup, and the filter comes last, right before the guest runs:
    // from then on the guest's process is confined.
    let status = wait_for_status(&mut running, guest, "become nobody under its filter", |s| {
        field(s, "Uid") == Some(all_nobody.as_str()) && field(s, "Seccomp") == Some("2")
    })?;
    for (key, want) in [
        ("Gid", all_nobody.as_str()),
        ("Groups", NOBODY),
        ("CapEff", "0000000000000000"),
        ("CapPrm", "0000000000000000"),
        ("NoNewPrivs", "1"),
        ("Seccomp", "2"),
    ] {
        let got = field(&status, key);
        c.that(got == Some(want), || {
            format!("the confined launcher's {key} is {got:?}, not {want:?}")
        });
    }
    // nobody cannot lock memory past its RLIMIT_MEMLOCK (the VM's is 8 MiB), so the launcher
    // raised it to guest RAM while it was root (memlock.rs).
    let limits = procfs::read(&format!("/proc/{guest}/limits"))?;
    let memlock = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max locked memory"))
        .map(|values| values.split_whitespace().take(2).collect::<Vec<_>>());
    let ram = (64u64 << 20).to_string();
    c.that(memlock == Some(vec![ram.as_str(); 2]), || {
        format!("the confined launcher's RLIMIT_MEMLOCK is {memlock:?}, not guest RAM ({ram})")
    });
    let root = fs::read_link(format!("/proc/{guest}/root"));
    c.that(
        root.as_ref()
            .is_ok_and(|root| root == std::path::Path::new(JAIL)),
        || format!("the confined launcher's root is {root:?}, not {JAIL}"),
    );
    // The launcher above it, unconfined, opened nothing: the kernel, /dev/lguest and the disk
    // are the child's.
    let files = open_files(running.pid())?;
    c.that(files == ["0", "1", "2"], || {
        format!("the launcher (the guest's supervisor) has open files {files:?}, not stdio alone")
    });
    stdin
        .write_all(b"hello lguest\n")
        .context("cannot write the launcher's stdin")?;
    drop(stdin);
    let run = running.finish(PATIENCE)?;
    passed(
        &mut c,
        &run,
        &["rng-entropy", "console-echo", "block-write-read-verify"],
    );
    fs::remove_file(DISK).with_context(|| format!("remove {DISK}"))?;

    // A UID no one has: the launcher takes it as given, with the group it is given.
    let (mut running, _stdin) =
        launch::spawn_with_open_stdin(&["--user", "4242:4343", MEM, GUEST, "spin", "2"])?;
    let guest = running.guest_pid(PATIENCE)?;
    let status = wait_for_status(&mut running, guest, "become 4242", |status| {
        field(status, "Uid") == Some("4242\t4242\t4242\t4242")
    })?;
    for (key, want) in [("Gid", "4343\t4343\t4343\t4343"), ("Groups", "4343")] {
        let got = field(&status, key);
        c.that(got == Some(want), || {
            format!("--user 4242:4343: the launcher's {key} is {got:?}, not {want:?}")
        });
    }
    let run = running.finish(PATIENCE)?;
    c.that(run.code == Some(0), || {
        format!("--user 4242:4343: {}", shown(&run))
    });
    c.finish()
}

/// The ring-1 guest's line before it asks to be restarted.
const REBOOTING: &str = "ring1: rebooting";

/// `launcher-reboot`: see the module's documentation.
pub fn reboot() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let mut c = Checks::new();

    let run = launch::launch(&["--no-reboot", MEM, GUEST, "reboot"], PATIENCE)?;
    let boots = run.stdout.matches(REBOOTING).count();
    c.that(
        run.code == Some(4) && boots == 1 && run.stderr.is_empty(),
        || {
            format!(
                "--no-reboot: expected one boot and exit 4, got {boots} boots and {}",
                shown(&run)
            )
        },
    );

    // With the filter on, as by default, and as nobody: each boot opens /dev/lguest and the
    // kernel again, which only the launcher's privilege allows, and gives it up again.
    let mut running = launch::spawn(&["--user", "nobody", MEM, GUEST, "reboot"])?;
    running.wait_for(REBOOTING, 3, PATIENCE)?;
    nix::sys::signal::kill(Pid::from_raw(running.pid()), Signal::SIGTERM)
        .context("kill -TERM the launcher")?;
    let run = running.finish(PATIENCE)?;
    c.that(
        run.signal == Some(Signal::SIGTERM as i32) && run.stderr.is_empty(),
        || {
            format!(
                "a guest rebooting for ever, then SIGTERM: expected death by SIGTERM and nothing \
                 on stderr, got {}",
                shown(&run)
            )
        },
    );
    c.finish()
}

/// `launcher-seccomp`: see the module's documentation.
pub fn seccomp() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let mut c = Checks::new();

    // The input thread starts right before the filter would be installed: once it is there,
    // a launcher without the filter has none for good.
    let (mut running, _stdin) =
        launch::spawn_with_open_stdin(&["--no-seccomp", MEM, GUEST, "spin"])?;
    let guest = running.guest_pid(PATIENCE)?;
    let thread = wait_for_input_thread(&mut running, guest)?;
    let status = procfs::read(&format!("/proc/{guest}/status"))?;
    c.that(field(&status, "Seccomp") == Some("0"), || {
        format!(
            "--no-seccomp: the launcher's Seccomp is {:?}, not \"0\" (input thread {thread})",
            field(&status, "Seccomp")
        )
    });
    drop(running);

    let (mut running, _stdin) = launch::spawn_with_open_stdin(&[MEM, GUEST, "spin"])?;
    let guest = running.guest_pid(PATIENCE)?;
    let status = wait_for_status(
        &mut running,
        guest,
        "install its seccomp filter",
        |status| field(status, "Seccomp") == Some("2"),
    )?;
    for (key, want) in [("NoNewPrivs", "1"), ("Seccomp_filters", "1")] {
        let got = field(&status, key);
        c.that(got == Some(want), || {
            format!("the launcher's {key} is {got:?}, not {want:?}")
        });
    }
    let thread = wait_for_input_thread(&mut running, guest)?;
    // SECCOMP_FILTER_FLAG_TSYNC: the input thread, started before the filter, has it too.
    let thread_status = procfs::read(&format!("/proc/{guest}/task/{thread}/status"))?;
    c.that(field(&thread_status, "Seccomp") == Some("2"), || {
        format!(
            "the input thread's Seccomp is {:?}, not \"2\"",
            field(&thread_status, "Seccomp")
        )
    });
    make_socket_call(thread).context("cannot make the input thread call socket()")?;
    let run = running.finish(PATIENCE)?;
    let expected = format!("{REFUSED} {} (x86-64) at 0x", libc::SYS_socket);
    c.that(
        run.signal == Some(Signal::SIGSYS as i32)
            && run.stderr.lines().count() == 1
            && run.stderr.starts_with(&expected),
        || {
            format!(
                "socket() from the input thread: expected death by SIGSYS and one line \
                 {expected:?}..., got {}",
                shown(&run)
            )
        },
    );
    c.ok("afterwards", hello_still_runs());
    c.finish()
}

/// Polls /proc/PID/status of `guest`, the process that runs the guest of `running`, until
/// `ready` holds for it; returns that text. Fails if the launcher ends first, or after
/// [`PATIENCE`].
pub(super) fn wait_for_status(
    running: &mut Running,
    guest: i32,
    what: &str,
    ready: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    let start = Instant::now();
    loop {
        // A process that has just ended has no status to read; `alive` below says so.
        if let Ok(status) = procfs::read(&format!("/proc/{guest}/status")) {
            if ready(&status) {
                return Ok(status);
            }
        }
        ensure!(
            running.alive()?,
            "the launcher ended before it could {what}"
        );
        ensure!(
            start.elapsed() < PATIENCE,
            "the launcher did not {what} within {PATIENCE:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for the console input thread of `guest`, the process that runs the guest of
/// `running`, to start; returns its thread ID.
fn wait_for_input_thread(running: &mut Running, guest: i32) -> anyhow::Result<i32> {
    let start = Instant::now();
    let tasks = format!("/proc/{guest}/task");
    loop {
        for task in fs::read_dir(&tasks).into_iter().flatten().flatten() {
            let comm = fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim_end() == CONSOLE_INPUT {
                if let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) {
                    return Ok(tid);
                }
            }
        }
        ensure!(
            running.alive()?,
            "the launcher ended before its {CONSOLE_INPUT} thread started"
        );
        ensure!(
            start.elapsed() < PATIENCE,
            "no {CONSOLE_INPUT} thread within {PATIENCE:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The names of the open files of process `pid`: their descriptors, in order.
pub(super) fn open_files(pid: i32) -> anyhow::Result<Vec<String>> {
    let dir = format!("/proc/{pid}/fd");
    let mut fds: Vec<u32> = fs::read_dir(&dir)
        .with_context(|| format!("cannot list {dir}"))?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    Ok(fds.into_iter().map(|fd| fd.to_string()).collect())
}

/// Makes thread `tid`, asleep in poll, call socket(AF_INET, SOCK_STREAM, 0) when it wakes: a
/// call no part of the launcher makes, so its filter refuses it.
fn make_socket_call(tid: i32) -> anyhow::Result<()> {
    let tid = Pid::from_raw(tid);
    ptrace::seize(tid, ptrace::Options::empty()).context("PTRACE_SEIZE")?;
    ptrace::interrupt(tid).context("PTRACE_INTERRUPT")?;
    waitpid(tid, Some(WaitPidFlag::__WALL)).context("waiting for the thread to stop")?;
    let mut regs = ptrace::getregs(tid).context("PTRACE_GETREGS")?;
    let before = regs.rip - 2;
    let code = ptrace::read(tid, before as ptrace::AddressType).context("PTRACE_PEEKTEXT")?;
    if code & 0xffff != 0x050f {
        let _ = ptrace::detach(tid, None);
        bail!("the thread is not just past a syscall instruction: {code:#018x} at {before:#x}");
    }
    regs.rip = before;
    regs.rax = libc::SYS_socket as u64;
    regs.rdi = libc::AF_INET as u64;
    regs.rsi = libc::SOCK_STREAM as u64;
    regs.rdx = 0;
    // No system call of its own to restart: the kernel leaves RIP and RAX as set here.
    regs.orig_rax = u64::MAX;
    ptrace::setregs(tid, regs).context("PTRACE_SETREGS")?;
    ptrace::detach(tid, None).context("PTRACE_DETACH")
}
