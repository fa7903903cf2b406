//! The Linux guest: Debian's Linux 6.12 with guest-patches/ applied, under lg.ko.
//!
//! The VM's initramfs holds the guest kernel as /guests/linux/bzImage and its own initramfs
//! (busybox and tests/harness/linux-guest/init) as /guests/linux/initramfs.cpio.gz. Every
//! scenario here runs `lguest-launcher --initrd ... 64m /guests/linux/bzImage ...` and judges
//! the run by what a user sees: the exit status and the guest's console.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;

use crate::check::Checks;
use crate::launch::{self, Run, FAILURE};
use crate::{kmod, procfs};

pub(super) const KERNEL: &str = "/guests/linux/bzImage";
pub(super) const INITRD: &str = "/guests/linux/initramfs.cpio.gz";
/// What the guest's init prints once it runs: the kernel booted all the way to user space.
pub(crate) const INIT_RUNNING: &str = "lguest-linux: init running on Linux 6.12";
/// A boot to init and a power-off: about 10 s under TCG on 2 shared cores; six times that
/// leaves room for a machine three times slower.
const PATIENCE: Duration = Duration::from_secs(60);

/// A shell session under TCG at ring 1, where every new page and context switch is a trip to
/// the host. Before the Switcher's fast paths a hundred fork+execs took 21 s on 2 shared cores
/// and the whole session 90 s. With them, the session with a thousand took 37 s (the cores
/// shared with two builds). Allow a machine three times slower than the slow case, and more.
const SHELL_PATIENCE: Duration = Duration::from_secs(600);

/// The launcher's arguments for the Linux guest with `words` added to its command line (and
/// `options` before the memory size).
pub(crate) fn args<'a>(options: &[&'a str], words: &[&'a str]) -> Vec<&'a str> {
    args_with(options, "64m", Some(INITRD), words)
}

/// As [`args`], with `mem` of RAM and `initrd` (if any) for its initramfs.
pub(super) fn args_with<'a>(
    options: &[&'a str],
    mem: &'a str,
    initrd: Option<&'a str>,
    words: &[&'a str],
) -> Vec<&'a str> {
    let mut args = options.to_vec();
    if let Some(initrd) = initrd {
        args.extend_from_slice(&["--initrd", initrd]);
    }
    args.extend_from_slice(&[mem, KERNEL, "console=hvc0"]);
    args.extend_from_slice(words);
    args
}

/// Boots the Linux guest with `words` added to its command line.
fn boot(words: &[&str]) -> anyhow::Result<Run> {
    launch::launch(&args(&[], words), PATIENCE)
}

/// Boots the Linux guest to a shell on its console and types `commands` into it once init
/// runs (typed earlier, they would reach a console nobody has opened yet, and be lost).
fn shell(commands: &str, patience: Duration) -> anyhow::Result<Run> {
    let (mut running, mut stdin) =
        launch::spawn_with_open_stdin(&args(&[], &["lguest.run=shell"]))?;
    running.wait_for(INIT_RUNNING, 1, PATIENCE)?;
    stdin
        .write_all(commands.as_bytes())
        .context("cannot type on the console")?;
    running.finish(patience)
}

/// `linux-boots`: the kernel prints its banner, the memory map the launcher wrote, and that it
/// runs on lguest; its init runs and powers the guest off.
pub fn boots() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let run = boot(&[])?;
    let mut c = Checks::new();
    let said = |what: &str| run.stdout.contains(what);
    c.that(run.code == Some(0), || {
        format!(
            "expected a power-off (exit 0), got {}: {}",
            run.status(),
            run.shown()
        )
    });
    c.that(said("Linux version 6.12"), || {
        format!("no banner on the console: {}", run.shown_stdout())
    });
    c.that(said("BIOS-e820: [mem 0x0000000000000000-"), || {
        format!("no e820 map on the console: {}", run.shown_stdout())
    });
    c.that(said("Booting paravirtualized kernel on lguest"), || {
        format!(
            "the kernel did not name the lguest platform: {}",
            run.shown_stdout()
        )
    });
    c.that(said(INIT_RUNNING), || {
        format!("init never ran: {}", run.shown_stdout())
    });
    c.finish()
}

/// What `linux-shell` types: each answer is echoed after a tag (`@uname 6.12...`), so the
/// console's echo of the command itself, with `$(...)` unexpanded, never matches a check.
const SHELL_COMMANDS: &str = "\
echo \"@uname $(uname -r)\"
echo \"@cpus $(grep -c ^processor /proc/cpuinfo)\"
echo \"@sorted $(seq 10000 | sort -n | tail -n 1)\"
i=0; while [ $i -lt 1000 ]; do /bin/true; i=$((i + 1)); done; echo \"@forked $i\"
echo \"@mounted $(mount | grep -c -e ' /proc ' -e ' /sys ')\"
echo \"@lguest-lines $(dmesg | grep -c lguest)\"
poweroff -f
";

/// `linux-shell`: commands typed on the guest's console run in its shell: the kernel's
/// version, its one CPU, a pipeline sorting ten thousand lines, a thousand processes forked and
/// exec'd (copy-on-write and the shadow page tables at work), the mounts init made, the kernel
/// log; `poweroff -f` ends the launcher with status 0.
pub fn shell_runs_commands() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let run = shell(SHELL_COMMANDS, SHELL_PATIENCE)?;
    let mut c = Checks::new();
    c.that(run.code == Some(0), || {
        format!(
            "expected a power-off (exit 0), got {}: {}",
            run.status(),
            run.shown()
        )
    });
    let answer = |tag: &str| {
        run.stdout
            .lines()
            .find_map(|l| l.trim_end().strip_prefix(tag))
            .map(str::to_owned)
    };
    for (tag, want) in [
        ("@uname ", "6.12.118"),
        ("@cpus ", "1"),
        ("@sorted ", "10000"),
        ("@forked ", "1000"),
        ("@mounted ", "2"),
    ] {
        let got = answer(tag);
        c.that(got.as_deref() == Some(want), || {
            format!("{tag}should be {want}, got {got:?}: {}", run.shown_stdout())
        });
    }
    let lines = answer("@lguest-lines ").and_then(|n| n.parse::<u32>().ok());
    c.that(lines.is_some_and(|n| n > 0), || {
        format!("the kernel log should name lguest, got {lines:?}")
    });
    c.finish()
}

/// `linux-panic`: a kernel panic (sysrq's crash) ends the launcher as a guest's death does,
/// exit 3, with the panic's words on stderr; and the host runs a fresh guest afterwards.
pub fn panic_ends_the_launcher() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let run = shell("echo c > /proc/sysrq-trigger\n", PATIENCE)?;
    let mut c = Checks::new();
    c.that(run.code == Some(FAILURE), || {
        format!(
            "expected exit {FAILURE}, got {}: {}",
            run.status(),
            run.shown()
        )
    });
    c.that(
        run.stderr
            .contains("guest died: it crashed: sysrq triggered crash"),
        || format!("stderr should give the panic's reason: {}", run.shown()),
    );
    let again = boot(&[])?;
    c.that(
        again.code == Some(0) && again.stdout.contains(INIT_RUNNING),
        || {
            format!(
                "a fresh guest afterwards: {}, {}",
                again.status(),
                again.shown()
            )
        },
    );
    c.finish()
}

/// `linux-reboot`: `reboot -f` in the guest restarts it: the launcher starts it afresh and it
/// boots to init again, where `poweroff -f` ends it with status 0. As a user would run it, with
/// the seccomp filter on, and as nobody: each boot runs in a fresh process (the launcher forks
/// one per boot, launcher/src/supervise.rs), which opens everything and confines itself again.
pub fn reboot_restarts() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let (mut running, mut stdin) =
        launch::spawn_with_open_stdin(&args(&["--user", "nobody"], &["lguest.run=shell"]))?;
    running.wait_for(INIT_RUNNING, 1, PATIENCE)?;
    let first = running.guest_pid(PATIENCE)?;
    stdin
        .write_all(b"reboot -f\n")
        .context("cannot type on the console")?;
    running.wait_for(INIT_RUNNING, 2, PATIENCE)?;
    let second = running.guest_pid(PATIENCE)?;
    let status = procfs::read(&format!("/proc/{second}/status"))?;
    stdin
        .write_all(b"poweroff -f\n")
        .context("cannot type on the console")?;
    let run = running.finish(PATIENCE)?;
    let mut c = Checks::new();
    c.that(run.code == Some(0), || {
        format!(
            "expected a power-off after the reboot (exit 0), got {}: {}",
            run.status(),
            run.shown()
        )
    });
    let banners = run.stdout.matches("Linux version 6.12").count();
    c.that(banners == 2, || {
        format!(
            "expected two boots, saw {banners} banners: {}",
            run.shown_stdout()
        )
    });
    c.that(second != first, || {
        format!("both boots ran in process {first}: the second is not a fresh one")
    });
    for (key, want) in [("Uid", "65534\t65534\t65534\t65534"), ("Seccomp", "2")] {
        let got = procfs::field(&status, key);
        c.that(got == Some(want), || {
            format!("the second boot's process has {key} {got:?}, not {want:?}")
        });
    }
    c.finish()
}
