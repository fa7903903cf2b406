//! What a guest costs its launcher: the host memory lg.ko spends on a guest is charged to the
//! launcher that asked for it, as KVM and VFIO charge theirs.
//!
//! The pages lg.ko pins while a shadow page table maps them count as the launcher's locked
//! memory (VmLck in /proc/PID/status) and are held to its RLIMIT_MEMLOCK; a launcher with
//! CAP_IPC_LOCK is counted but never refused. Past the limit, the guest dies with a reason that
//! says how to raise it, and the launcher warns before it starts a guest that could get there.

use std::thread::sleep;
use std::time::Duration;

use anyhow::ensure;

use crate::check::Checks;
use crate::kmod;
use crate::launch::{self, Run, FAILURE};
use crate::procfs;

/// The ring-1 guest, and what it prints when all went well.
const GUEST: &str = "/guests/ring1";
const HELLO: &str = "hello from ring 1";
const MEM: &str = "64m";
/// Generous for a guest that says hello, even on a slow machine under TCG.
const PATIENCE: Duration = Duration::from_secs(60);

/// The locked memory of `pid` (the process that runs a guest) now, in KiB, if it is still there
/// to ask.
pub(super) fn locked_kib(pid: i32) -> Option<u64> {
    let status = procfs::read(&format!("/proc/{pid}/status")).ok()?;
    procfs::kib_field(&status, "VmLck").ok()
}

/// The ring-1 guest saying hello, launched from a child process that may lock at most
/// `memlock_bytes`: its RLIMIT_MEMLOCK (soft and hard) is that, and CAP_IPC_LOCK, which would
/// let it past, is gone from its capability bounding set, so even root's launcher loses it at
/// exec. Both pass to the launcher; `judge` looks at its run, in the child.
fn hello_with_memlock(
    memlock_bytes: u64,
    judge: impl FnOnce(&Run) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    super::in_child(|| {
        /// The capability's number (linux/capability.h), which the libc crate does not name.
        const CAP_IPC_LOCK: libc::c_ulong = 14;
        let limit = libc::rlimit {
            rlim_cur: memlock_bytes,
            rlim_max: memlock_bytes,
        };
        // SAFETY: setrlimit reads the struct we pass; prctl(PR_CAPBSET_DROP) takes a number.
        // Both change only this (child) process.
        let (limited, dropped) = unsafe {
            (
                libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit),
                libc::prctl(libc::PR_CAPBSET_DROP, CAP_IPC_LOCK, 0, 0, 0),
            )
        };
        ensure!(
            limited == 0 && dropped == 0,
            "cannot limit locked memory: {}",
            std::io::Error::last_os_error()
        );
        judge(&launch::launch(&[MEM, GUEST, "hello"], PATIENCE)?)
    })
}

/// `guest-memlock`: a running guest's pins show as its launcher's locked memory; a launcher
/// whose RLIMIT_MEMLOCK is 0 (and that lacks CAP_IPC_LOCK) is warned, and its guest dies at its
/// first pin with a reason naming the limit; one whose limit covers guest RAM runs as usual.
pub fn memlock() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let mut c = Checks::new();

    let mut running = launch::spawn(&[MEM, GUEST, "spin", "2"])?;
    let guest = running.guest_pid(PATIENCE)?;
    let mut most = 0;
    while running.alive()? {
        most = most.max(locked_kib(guest).unwrap_or(0));
        sleep(Duration::from_millis(20));
    }
    let run = running.finish(PATIENCE)?;
    c.that(run.code == Some(0), || {
        format!(
            "spin: expected exit 0, got {}: {}",
            run.status(),
            run.shown()
        )
    });
    c.that(most > 0 && most <= 64 * 1024, || {
        format!("while the guest ran, its launcher's VmLck was at most {most} KiB (expected some, within guest RAM)")
    });

    let none = hello_with_memlock(0, |run| {
        let died = run.stderr.lines().any(|l| {
            l.starts_with("lguest-launcher: guest died: ") && l.contains("RLIMIT_MEMLOCK")
        });
        let warned = run.stderr.lines().any(|l| l.contains("ulimit -l"));
        ensure!(
            run.code == Some(FAILURE) && died && warned,
            "expected a warning, then exit {FAILURE} with a death naming RLIMIT_MEMLOCK, got \
             {}: {}",
            run.status(),
            run.shown()
        );
        Ok(())
    });
    c.ok("RLIMIT_MEMLOCK 0", none);

    let enough = hello_with_memlock(64 << 20, |run| {
        ensure!(
            run.code == Some(0) && run.stdout.contains(HELLO) && run.stderr.is_empty(),
            "expected a quiet exit 0, got {}: {}",
            run.status(),
            run.shown()
        );
        Ok(())
    });
    c.ok("RLIMIT_MEMLOCK of guest RAM", enough);
    c.finish()
}
