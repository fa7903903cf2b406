//! Host state the Switcher borrows and must give back as it found it.
//!
//! The Switcher notes an NMI or machine check that interrupts it in two high bits of the CPU's
//! MSR_TSC_AUX (a register, because any memory it can write is the guest's to forge), and the
//! host acts on what it finds there after the trip: it re-raises the event. A bit left over from
//! before the trip would make the host re-raise an event that never happened: an NMI from
//! nowhere, or a machine check, which on a host with broadcast machine checks is a panic. So
//! lg.ko clears the bits before the trip, not only after. (The test host has no machine-check
//! support, so there the NMI bit is the one whose ghost would show: Linux logs an NMI "received
//! for unknown reason", which the runner counts as an alarm.)

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::time::Duration;

use anyhow::{ensure, Context};
use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

use crate::check::Checks;
use crate::kmod;
use crate::launch;

const MSR_TSC_AUX: u64 = 0xc000_0103;
/// The Switcher's "an NMI or a machine check arrived inside me" bits (lg-module/src/layout.rs).
const PENDING: u64 = lg_module::layout::AUX_NMI_PENDING | lg_module::layout::AUX_MC_PENDING;
/// The CPU the scenario and its launcher are bound to.
const CPU: usize = 0;
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
    let before = sched_getaffinity(Pid::from_raw(0)).context("sched_getaffinity")?;
    let mut here = CpuSet::new();
    here.set(CPU).context("CpuSet::set")?;
    sched_setaffinity(Pid::from_raw(0), &here).context("sched_setaffinity")?;
    let outcome = run_with_stale_bit();
    sched_setaffinity(Pid::from_raw(0), &before).context("restoring the CPU affinity")?;
    outcome
}

/// The body of [`stale_tsc_aux`], on `CPU`; TSC_AUX is Linux's value again when it returns.
fn run_with_stale_bit() -> anyhow::Result<()> {
    let msr = Msr::open(CPU)?;
    let linux = msr.read(MSR_TSC_AUX)?;
    ensure!(
        linux & PENDING == 0,
        "TSC_AUX is {linux:#x} before the test: a pending bit is already set"
    );
    msr.write(MSR_TSC_AUX, linux | PENDING)?;
    // The launcher inherits this task's CPU affinity: its guest runs on `CPU` too.
    let run = launch::launch(&["64m", "/guests/ring1", "hello"], PATIENCE);
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
