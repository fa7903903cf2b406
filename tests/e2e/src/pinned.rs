//! Binding this process to one CPU for a while: some holes live in per-CPU state (debug
//! registers, MSRs) that a guest leaves on the CPU it ran on, so the scenario, its launcher
//! (which inherits the binding) and whatever looks at that state afterwards must share the CPU.

use anyhow::Context;
use nix::sched::{sched_getaffinity, sched_getcpu, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// This thread pinned to the CPU it is on, until dropped; what it spawns meanwhile (a launcher)
/// is pinned there too.
pub struct Pinned {
    pub cpu: usize,
    before: CpuSet,
}

impl Pinned {
    pub fn here() -> anyhow::Result<Pinned> {
        let me = Pid::from_raw(0);
        let before = sched_getaffinity(me).context("sched_getaffinity")?;
        let cpu = sched_getcpu().context("sched_getcpu")?;
        let mut only = CpuSet::new();
        only.set(cpu)?;
        sched_setaffinity(me, &only).context("sched_setaffinity")?;
        Ok(Pinned { cpu, before })
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // Best effort: the CPUs allowed before are still there.
        let _ = sched_setaffinity(Pid::from_raw(0), &self.before);
    }
}
