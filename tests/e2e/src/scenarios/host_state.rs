//! Host state the Switcher borrows and must give back as it found it: TSC_AUX, and the debug
//! registers.
//!
//! The Switcher notes an NMI or machine check that interrupts it in two high bits of the CPU's
//! MSR_TSC_AUX (a register, because any memory it can write is the guest's to forge), and the
//! host acts on what it finds there after the trip: it re-raises the event. A bit left over from
//! before the trip would make the host re-raise an event that never happened: an NMI from
//! nowhere, or a machine check, which on a host with broadcast machine checks is a panic. So
//! lg.ko clears the bits before the trip, not only after. (The test host has no machine-check
//! support, so there the NMI bit is the one whose ghost would show: Linux logs an NMI "received
//! for unknown reason", which the runner counts as an alarm.)
//!
//! The debug registers hold the host's hardware breakpoints (perf's, or a debugger's on the
//! launcher), armed while the launcher's task runs, and so while its guest does: an address the
//! guest happens to use would trap in the guest or the Switcher. lg.ko disarms them for the trip
//! and re-arms them after.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use nix::sys::ptrace;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{execv, fork, ForkResult, Pid};

use crate::check::Checks;
use crate::kmod;
use crate::launch;
use crate::pinned::Pinned;

const MSR_TSC_AUX: u64 = 0xc000_0103;
/// The Switcher's "an NMI or a machine check arrived inside me" bits (lg-module/src/layout.rs).
const PENDING: u64 = lg_module::layout::AUX_NMI_PENDING | lg_module::layout::AUX_MC_PENDING;
/// The ring-1 guest, as the initramfs holds it.
const GUEST: &str = "/guests/ring1";
/// Generous for a guest that says hello, even on a slow machine under TCG.
const PATIENCE: Duration = Duration::from_secs(60);

/// MSR access through /dev/cpu/N/msr: the register number is the file offset.
struct Msr(File);

impl Msr {
    fn open(cpu: usize) -> anyhow::Result<Msr> {
        let path = format!("/dev/cpu/{cpu}/msr");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {path} (CONFIG_X86_MSR)"))?;
        Ok(Msr(file))
    }

    fn read(&self, msr: u64) -> anyhow::Result<u64> {
        let mut bytes = [0u8; 8];
        self.0
            .read_exact_at(&mut bytes, msr)
            .with_context(|| format!("rdmsr {msr:#x}"))?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn write(&self, msr: u64, value: u64) -> anyhow::Result<()> {
        self.0
            .write_all_at(&value.to_le_bytes(), msr)
            .with_context(|| format!("wrmsr {msr:#x}"))
    }
}

/// `guest-stale-tsc-aux`: with the Switcher's pending bits already set in TSC_AUX, a guest runs
/// on that CPU and says hello; the host must re-raise nothing (the runner checks its log), and
/// TSC_AUX afterwards is Linux's value, the stale bits gone.
pub fn stale_tsc_aux() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let pinned = Pinned::here()?;
    let msr = Msr::open(pinned.cpu)?;
    let linux = msr.read(MSR_TSC_AUX)?;
    ensure!(
        linux & PENDING == 0,
        "TSC_AUX is {linux:#x} before the test: a pending bit is already set"
    );
    msr.write(MSR_TSC_AUX, linux | PENDING)?;
    // The launcher inherits this task's CPU affinity: its guest runs on the pinned CPU too.
    let run = launch::launch(&["64m", GUEST, "hello"], PATIENCE);
    let after = msr.read(MSR_TSC_AUX);
    msr.write(MSR_TSC_AUX, linux)?;
    let (run, after) = (run?, after?);
    let mut c = Checks::new();
    c.that(run.code == Some(0), || {
        format!(
            "the guest: expected exit 0, got {}: {}",
            run.status(),
            run.shown()
        )
    });
    c.that(after == linux, || {
        format!("TSC_AUX afterwards: expected Linux's {linux:#x}, got {after:#x}")
    });
    c.finish()
}

/// `guest-host-breakpoint`: a debugger (this process, through ptrace) sets an instruction
/// breakpoint in the launcher at the address where the ring-1 guest's code starts, which in the
/// launcher's own address space is nothing at all. The guest must run as if it were not there:
/// the host's breakpoints are not the guest's.
pub fn host_breakpoint() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let image = std::fs::read(GUEST).with_context(|| format!("reading {GUEST}"))?;
    // e_entry: the ELF64 header's word at byte 24.
    let entry = image
        .get(24..32)
        .and_then(|bytes| bytes.try_into().ok())
        .map(u64::from_le_bytes)
        .context("the guest is not an ELF64 file")?;
    let output = "/tmp/guest-host-breakpoint.out";
    let out = File::create(output).with_context(|| format!("creating {output}"))?;
    // SAFETY: The scenario runs on the main thread and has started no other, so the child may
    // run anything; it only redirects its output, asks to be traced and execs.
    let launcher = match unsafe { fork() }? {
        ForkResult::Child => {
            // SAFETY: dup2 onto stdout and stderr of this (child) process, from a file it owns.
            unsafe {
                libc::dup2(out.as_raw_fd(), 1);
                libc::dup2(out.as_raw_fd(), 2);
            }
            let _ = ptrace::traceme();
            // --no-reboot: the launcher runs the guest in its own process, the one traced
            // here, rather than in a child (which would not inherit the breakpoint).
            let args = ["lguest-launcher", "--no-reboot", "64m", GUEST, "hello"].map(CString::new);
            if let Ok(args) = args.into_iter().collect::<Result<Vec<_>, _>>() {
                let _ = execv(&CString::new(launch::LAUNCHER).unwrap_or_default(), &args);
            }
            // SAFETY: _exit ends the child without running the parent's atexit handlers.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => child,
    };
    let verdict = debug(launcher, entry);
    // Whatever happened, the launcher must be gone before the next scenario.
    let _ = kill(launcher, Signal::SIGKILL);
    let _ = waitpid(launcher, None);
    let status = verdict?;
    let said = std::fs::read_to_string(output).unwrap_or_default();
    ensure!(
        status == WaitStatus::Exited(launcher, 0) && said.contains("hello from ring 1"),
        "with a host breakpoint at the guest's entry {entry:#x}: expected a hello and exit 0, \
         got {status:?}: {}",
        said.trim().replace('\n', " | ")
    );
    Ok(())
}

/// The debugger's part: at the launcher's exec stop, set DR0 to `entry` as an instruction
/// breakpoint (DR7 bit 0, length and type 0), then let it run to its end, passing on any signal
/// it stops for; kill it after [`PATIENCE`].
fn debug(launcher: Pid, entry: u64) -> anyhow::Result<WaitStatus> {
    let stopped = waitpid(launcher, None).context("waiting for the launcher's exec")?;
    ensure!(
        matches!(stopped, WaitStatus::Stopped(_, Signal::SIGTRAP)),
        "the launcher did not stop at its exec: {stopped:?}"
    );
    let debugreg =
        |n: usize| (std::mem::offset_of!(libc::user, u_debugreg) + n * 8) as ptrace::AddressType;
    ptrace::write_user(launcher, debugreg(0), entry as i64).context("setting DR0")?;
    ptrace::write_user(launcher, debugreg(7), 1).context("enabling DR0 in DR7")?;
    ptrace::cont(launcher, None).context("continuing the launcher")?;
    let start = Instant::now();
    loop {
        match waitpid(launcher, Some(WaitPidFlag::WNOHANG)).context("waiting for the launcher")? {
            WaitStatus::StillAlive => {
                ensure!(
                    start.elapsed() < PATIENCE,
                    "the launcher still ran after {PATIENCE:?}"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            WaitStatus::Stopped(_, signal) => {
                ptrace::cont(launcher, signal).context("continuing the launcher")?;
            }
            done => return Ok(done),
        }
    }
}
