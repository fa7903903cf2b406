//! The launcher as a user meets it: every mistake a user can make is one clear line on stderr
//! and a failing exit code (docs/design.md, D8), never a panic or a screenful of log; the code says
//! whose mistake it was (the command line's, the launcher's, the guest's).
//!
//! The mistakes are made with the host's own bzImage (a real kernel, which must be refused for
//! its missing note) and with a tiny hand-made ELF that carries the note (elf.rs), which gets the
//! launcher all the way to /dev/lguest and a guest that dies at its first instruction. Guests
//! that run properly are guest.rs's business; here only the terminal they run on is
//! (`launcher-terminal`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::check::Checks;
use crate::launch::{self, FAILURE, LAUNCHER_ERROR, QUIT, USAGE};
use crate::{elf, kmod};

/// The host kernel's own bzImage (xz-compressed): a real kernel, but not one built for lguest.
const BZIMAGE: &str = "/boot/bzImage";
/// The words of the launcher's error for a kernel without the lguest note.
const NO_NOTE: &str = "this kernel was not built to run under lguest";
/// The ring-1 guest, for the runs that need a guest that does something (tests/guests/ring1).
const RING1: &str = "/guests/ring1";
/// The teaching guest, whose console self-test echoes a line typed on the console.
const TEACHING: &str = "/guests/teaching-guest";
/// What the teaching guest says when it waits for that line.
const PROMPT: &str = "console-echo: type a line";
/// A tap device no one created.
const MISSING_TAP: &str = "lgnosuchtap";
/// No run here should take more than a moment; a launcher that hangs is killed and fails. The
/// slowest, unpacking the host's bzImage, took 1.5 s on 2 shared cores and 6 s with
/// LGUEST_SLOWDOWN=3 (docs/building.md): five times that.
const PATIENCE: Duration = Duration::from_secs(30);

/// `launcher-loads-bzimage`: the launcher unpacks a real bzImage and refuses it for the right
/// reason.
pub fn loads_bzimage() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let mut c = Checks::new();
    one_line_failure(
        &mut c,
        "64m bzImage",
        &["64m", BZIMAGE],
        LAUNCHER_ERROR,
        NO_NOTE,
    );

    // With -v, the log must show the payload was found and unpacked: the note is looked for in
    // the unpacked ELF, so a refusal without that would prove nothing. MEM is a bare number
    // here, which is MiB.
    match launch::launch(&["-v", "64", BZIMAGE], PATIENCE) {
        Err(e) => c.ok("-v 64 bzImage", Err::<(), _>(e)),
        Ok(run) => {
            c.that(run.code == Some(LAUNCHER_ERROR), || {
                format!("-v: expected exit {LAUNCHER_ERROR}, got {:?}", run.code)
            });
            let last = run.stderr.lines().last().unwrap_or_default();
            c.that(last.contains(NO_NOTE), || {
                format!("-v: last line {last:?} lacks {NO_NOTE:?}")
            });
            c.that(run.stderr.contains("guest RAM: 64 MiB "), || {
                format!("-v: MEM 64 is not 64 MiB; stderr: {}", run.shown())
            });
            c.that(run.stderr.to_lowercase().contains("xz"), || {
                format!(
                    "-v: no log line mentions the xz payload; stderr: {}",
                    run.shown()
                )
            });
        }
    }
    c.finish()
}

/// `launcher-bad-input`: each mistake gets its one line; and with the right kernel, the launcher
/// tells a missing lg.ko from a present one.
pub fn bad_input() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let dir = Scratch::new()?;
    let random = dir.file("random.bin", &random_bytes(64 * 1024))?;
    let bzimage = std::fs::read(BZIMAGE).with_context(|| format!("cannot read {BZIMAGE}"))?;
    let truncated = dir.file(
        "truncated-bzImage",
        &bzimage[..bzimage.len().min(100 * 1024)],
    )?;
    let tiny = dir.file("lguest-tiny.elf", &elf::lguest_kernel())?;

    let mut c = Checks::new();
    one_line_failure(
        &mut c,
        "missing kernel",
        &["64m", "/nonexistent"],
        LAUNCHER_ERROR,
        "No such file",
    );
    one_line_failure(
        &mut c,
        "random bytes",
        &["64m", &random],
        LAUNCHER_ERROR,
        "not a Linux kernel",
    );
    one_line_failure(
        &mut c,
        "first 100 KiB of a bzImage",
        &["64m", &truncated],
        LAUNCHER_ERROR,
        "truncated bzImage",
    );
    one_line_failure(&mut c, "zero memory", &["0", BZIMAGE], USAGE, "memory");
    one_line_failure(
        &mut c,
        "--net without tap=",
        &["--net", "lgtap0", "64m", &tiny],
        USAGE,
        "--net lgtap0: 'lgtap0' is not tap=NAME nor mac=MAC",
    );
    // TUNSETIFF would create a missing tap, which no one could reach and which would vanish
    // with the launcher: the launcher must refuse instead, and leave no interface behind.
    one_line_failure(
        &mut c,
        "a missing tap",
        &["--net", &format!("tap={MISSING_TAP}"), "64m", &tiny],
        LAUNCHER_ERROR,
        &format!("there is no network interface {MISSING_TAP}"),
    );
    let created = PathBuf::from("/sys/class/net").join(MISSING_TAP);
    c.that(!created.exists(), || {
        format!("the launcher created {}", created.display())
    });
    // clap's own usage errors take more lines, but the same code; --help is no error.
    match launch::launch(&["64m"], PATIENCE) {
        Err(e) => c.ok("no KERNEL", Err::<(), _>(e)),
        Ok(run) => c.that(run.code == Some(USAGE), || {
            format!("no KERNEL: expected exit {USAGE}, got {}", run.status())
        }),
    }
    match launch::launch(&["--help"], PATIENCE) {
        Err(e) => c.ok("--help", Err::<(), _>(e)),
        Ok(run) => c.that(
            run.code == Some(0)
                && run.stdout.contains("Options go before MEM")
                && run.stdout.contains("Exit status:"),
            || {
                format!(
                    "--help: expected exit 0 and where options go and the exit codes, got {}: {}",
                    run.status(),
                    run.shown_stdout()
                )
            },
        ),
    }
    // Typed after the kernel's first word, an option would be one more kernel word: the guest
    // would get no disk, and no one would say why.
    one_line_failure(
        &mut c,
        "an option among the kernel's words",
        &["64m", &tiny, "root=/dev/vda", "--block", &random],
        USAGE,
        "'--block' after KERNEL would be a kernel word",
    );

    kmod::ensure_unloaded()?;
    one_line_failure(
        &mut c,
        "lguest kernel without lg.ko",
        &["64m", &tiny],
        LAUNCHER_ERROR,
        "insmod lg.ko",
    );
    kmod::load()?;
    // Through INITIALIZE (so lg.ko accepted the launcher's memory, tables and entry point) to
    // the guest's first instruction: `hlt`, privileged at ring 1, so the host kills it.
    one_line_failure(
        &mut c,
        "lguest kernel with lg.ko",
        &["64m", &tiny],
        FAILURE,
        "guest died: ",
    );
    disk_locks(&mut c, &dir)?;
    c.finish()
}

/// Two guests writing one disk image would wreck it: while one guest writes an image, a second
/// launcher asking for it is refused, read-only or not; guests that only read it share it.
fn disk_locks(c: &mut Checks, dir: &Scratch) -> anyhow::Result<()> {
    let image = dir.file("disk.img", &vec![0; 1 << 20])?;
    let read_only = format!("{image},ro");
    let writer = wait_for_disk_lock(launch::spawn(&["--block", &image, "64m", RING1, "spin"])?)?;
    for (what, disk, words) in [
        ("a second writer", &image, "in use by another guest"),
        ("a reader", &read_only, "in use: another guest writes it"),
    ] {
        one_line_failure(
            c,
            &format!("{what} of a disk image a guest writes"),
            &["--block", disk, "64m", RING1, "hello"],
            LAUNCHER_ERROR,
            &format!("disk image {image} is {words}"),
        );
    }
    drop(writer);

    let reader = launch::spawn(&["--block", &read_only, "64m", RING1, "spin"])?;
    let reader = wait_for_disk_lock(reader)?;
    let run = launch::launch(&["--block", &read_only, "64m", RING1, "hello"], PATIENCE)?;
    c.that(run.code == Some(0), || {
        format!(
            "a second reader of a disk image: expected exit 0, got {}: {}",
            run.status(),
            run.shown()
        )
    });
    // Only now may the first reader go (dropping it kills it).
    drop(reader);
    Ok(())
}

/// Waits until the launcher `running` holds a lock on a file (its disk image, which it locks as
/// it opens it, before the guest starts); returns the launcher, still running.
fn wait_for_disk_lock(mut running: launch::Running) -> anyhow::Result<launch::Running> {
    let pid = running.guest_pid(PATIENCE)?.to_string();
    let start = std::time::Instant::now();
    loop {
        let locks = std::fs::read_to_string("/proc/locks").context("cannot read /proc/locks")?;
        // `1: FLOCK  ADVISORY  WRITE 1234 00:1a:5678 0 EOF`: the fifth field is the holder.
        if locks
            .lines()
            .any(|line| line.split_whitespace().nth(4) == Some(pid.as_str()))
        {
            return Ok(running);
        }
        if !running.alive()? {
            let run = running.finish(PATIENCE)?;
            bail!(
                "the launcher holding the disk image ended ({}): {}",
                run.status(),
                run.shown()
            );
        }
        ensure!(
            start.elapsed() < PATIENCE,
            "the launcher never locked its disk image"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The launcher, run with `args`, must exit with `code` and exactly one line on stderr
/// containing `words`.
fn one_line_failure(c: &mut Checks, what: &str, args: &[&str], code: i32, words: &str) {
    match launch::launch(args, PATIENCE) {
        Err(e) => c.ok(what, Err::<(), _>(e)),
        Ok(run) => {
            let lines = run.stderr.lines().count();
            let holds = run.code == Some(code) && lines == 1 && run.stderr.contains(words);
            c.that(holds, || {
                format!(
                    "{what}: expected exit {code} and one stderr line containing {words:?}, \
                     got exit {:?} and {lines} lines: {}",
                    run.code,
                    run.shown()
                )
            });
        }
    }
}

/// Reproducible noise (xorshift64): no ELF magic, no boot sector signature, nothing a loader
/// could mistake for a kernel.
fn random_bytes(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

/// A directory in /tmp for the files these runs need, removed when the scenario ends: the
/// initramfs keeps /tmp in RAM.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> anyhow::Result<Scratch> {
        let dir = std::env::temp_dir().join("lguest-e2e");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Scratch(dir))
    }

    /// Writes `bytes` to a file called `name` in the directory; returns its path.
    fn file(&self, name: &str, bytes: &[u8]) -> anyhow::Result<String> {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path.to_string_lossy().into_owned())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Leftovers only cost RAM until the VM powers off; nothing to report.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A new pseudo-terminal: its controlling side (kept open, or the other side hangs up) and the
/// terminal side, which the launcher gets as stdin.
fn pseudo_terminal() -> anyhow::Result<(std::fs::File, std::fs::File)> {
    use std::os::fd::FromRawFd;
    // SAFETY: posix_openpt returns a new descriptor (or -1), which the File below owns.
    let raw = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY) };
    nix::errno::Errno::result(raw).context("posix_openpt")?;
    // SAFETY: `raw` is ours alone.
    let controller = unsafe { std::fs::File::from_raw_fd(raw) };
    let mut name = [0 as libc::c_char; 64];
    // SAFETY: grantpt and unlockpt take the descriptor; ptsname_r writes at most `name.len()`
    // bytes, NUL included, into `name`.
    unsafe {
        nix::errno::Errno::result(libc::grantpt(raw)).context("grantpt")?;
        nix::errno::Errno::result(libc::unlockpt(raw)).context("unlockpt")?;
        let failed = libc::ptsname_r(raw, name.as_mut_ptr(), name.len());
        anyhow::ensure!(failed == 0, "ptsname_r: error {failed}");
    }
    // SAFETY: ptsname_r wrote a NUL-terminated path into `name`.
    let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    let terminal = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("open {path}"))?;
    Ok((controller, terminal))
}

/// Whether the terminal is in its usual, canonical mode (line by line, echoing).
fn canonical(terminal: &std::fs::File) -> anyhow::Result<bool> {
    let settings = nix::sys::termios::tcgetattr(terminal).context("tcgetattr")?;
    Ok(settings
        .local_flags
        .contains(nix::sys::termios::LocalFlags::ICANON))
}

/// `launcher-terminal`: with a terminal on stdin, the launcher puts it in raw mode for the
/// guest's console while the guest runs, and gives it back as it was on every way out: the
/// guest powering off, the launcher killed by a signal, the guest's process killed outright, and
/// the escape key Ctrl-A x. Keys that would be signals (Ctrl-C, Ctrl-Z) reach the guest as
/// bytes, and so does Ctrl-A doubled; from a pipe, Ctrl-A x is two bytes like any others.
pub fn terminal() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let (controller, terminal) = pseudo_terminal()?;
    ensure!(
        canonical(&terminal)?,
        "a fresh pseudo-terminal is not canonical"
    );
    let mut c = Checks::new();

    let run = launch::spawn_on_terminal(&["64m", RING1, "hello"], terminal.try_clone()?)?
        .finish(PATIENCE)?;
    c.that(run.code == Some(0), || {
        format!(
            "hello on a terminal: {}, stderr: {}",
            run.status(),
            run.shown()
        )
    });
    c.that(canonical(&terminal)?, || {
        "the terminal was left in raw mode after the guest powered off".to_owned()
    });

    // SIGTERM to the launcher, which passes it on to the guest's process; and SIGKILL to the
    // guest's process, which cannot put the terminal back, so the launcher does.
    for (whom, signal) in [
        ("the launcher", Signal::SIGTERM),
        ("the guest's process", Signal::SIGKILL),
    ] {
        let mut spinner =
            launch::spawn_on_terminal(&["64m", RING1, "spin"], terminal.try_clone()?)?;
        let start = std::time::Instant::now();
        while canonical(&terminal)? && start.elapsed() < PATIENCE {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        c.that(!canonical(&terminal)?, || {
            "the terminal never went raw while the guest ran".to_owned()
        });
        let pid = match signal {
            Signal::SIGTERM => spinner.pid(),
            _ => spinner.guest_pid(PATIENCE)?,
        };
        kill(Pid::from_raw(pid), signal).context("kill")?;
        let run = spinner.finish(PATIENCE)?;
        c.that(run.signal == Some(signal as i32), || {
            format!(
                "{signal} to {whom}: the launcher should have ended by it: {}",
                run.status()
            )
        });
        c.that(canonical(&terminal)?, || {
            format!("the terminal was left in raw mode after {signal} to {whom}")
        });
    }

    typed_keys_reach_the_guest(&mut c, &controller, &terminal)?;
    ctrl_a_x_quits(&mut c, &controller, &terminal)?;

    let run = launch::spawn_with_input(&["64m", TEACHING, "devices", "echo"], Some(b"a\x01xb\n"))?
        .finish(PATIENCE)?;
    c.that(
        run.code == Some(0) && run.stdout.contains("echo: a\x01xb\n"),
        || {
            format!(
                "from a pipe, Ctrl-A x should reach the guest as it is: {}, stdout: {}",
                run.status(),
                run.shown_stdout()
            )
        },
    );
    c.finish()
}

/// Types Ctrl-C, Ctrl-Z, Ctrl-A Ctrl-A and Ctrl-A then a letter into the teaching guest's
/// console test on the terminal: the guest reads them all, as the bytes the escape key makes of
/// them, and powers off as usual.
fn typed_keys_reach_the_guest(
    c: &mut Checks,
    controller: &std::fs::File,
    terminal: &std::fs::File,
) -> anyhow::Result<()> {
    use std::io::Write;
    let mut echo =
        launch::spawn_on_terminal(&["64m", TEACHING, "devices", "echo"], terminal.try_clone()?)?;
    echo.wait_for(PROMPT, 1, PATIENCE)?;
    // Enter on a raw terminal is a carriage return, which ends the guest's line too.
    (&*controller)
        .write_all(b"c\x03z\x1a\x01\x01a\x01b\r")
        .context("typing on the terminal")?;
    let run = echo.finish(PATIENCE)?;
    c.that(
        run.code == Some(0) && run.stdout.contains(r#"read "c\u{3}z\u{1a}\u{1}a\u{1}b""#),
        || {
            format!(
                "Ctrl-C, Ctrl-Z and Ctrl-A should reach the guest as bytes: {}, stdout: {}",
                run.status(),
                run.shown_stdout()
            )
        },
    );
    c.that(canonical(terminal)?, || {
        "the terminal was left in raw mode after the console test".to_owned()
    });
    Ok(())
}

/// Ctrl-A x typed to a guest that spins ends the launcher with exit status QUIT, a line on
/// stderr, and the terminal as it was.
fn ctrl_a_x_quits(
    c: &mut Checks,
    controller: &std::fs::File,
    terminal: &std::fs::File,
) -> anyhow::Result<()> {
    use std::io::Write;
    let mut spinner = launch::spawn_on_terminal(&["64m", RING1, "spin"], terminal.try_clone()?)?;
    let start = std::time::Instant::now();
    while canonical(terminal)? && start.elapsed() < PATIENCE {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // A Ctrl-C first: the launcher must live through it.
    (&*controller)
        .write_all(b"\x03")
        .context("typing on the terminal")?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    c.that(spinner.alive()?, || {
        "Ctrl-C on the terminal ended the launcher".to_owned()
    });
    (&*controller)
        .write_all(b"\x01x")
        .context("typing on the terminal")?;
    let run = spinner.finish(PATIENCE)?;
    c.that(
        run.code == Some(QUIT) && run.stderr.contains("Ctrl-A x"),
        || {
            format!(
                "Ctrl-A x should end the launcher with exit {QUIT} and say why: {}, stderr: {}",
                run.status(),
                run.shown()
            )
        },
    );
    c.that(canonical(terminal)?, || {
        "the terminal was left in raw mode after Ctrl-A x".to_owned()
    });
    Ok(())
}
