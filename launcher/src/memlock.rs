//! Locked memory: room in RLIMIT_MEMLOCK for the guest pages lg.ko pins.
//!
//! While a shadow page table maps a guest page, lg.ko keeps it pinned in the launcher's memory,
//! and it charges those pins to the launcher's RLIMIT_MEMLOCK as VFIO charges the pages it pins
//! (a process with CAP_IPC_LOCK is charged but never refused). A guest that needs a page past
//! the limit dies, with lg.ko's reason. So before INITIALIZE the launcher raises its own soft
//! limit as far as the hard limit allows, and warns when that still leaves less room than the
//! guest has RAM: the guest would run until it had touched that much, then die.
//!
//! A launcher that drops root for `--user` (confine.rs) loses CAP_IPC_LOCK with it, after the
//! limit is set and before the guest pins anything. While it is still root it may raise its
//! own hard limit, so it makes that cover guest RAM.

use anyhow::Context;
use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// What the limit leaves short of `ram_bytes`, in bytes: `None` if the guest can pin all of
/// its RAM (the limit is large enough, or the launcher is never refused).
pub fn shortfall(limit_bytes: u64, ram_bytes: u64, can_lock_freely: bool) -> Option<u64> {
    (!can_lock_freely && limit_bytes < ram_bytes).then(|| ram_bytes - limit_bytes)
}

/// Raise the soft RLIMIT_MEMLOCK to the hard one, and say what it leaves short of `ram_bytes`
/// (see [`shortfall`]), as a warning for the user. A launcher `dropping_root` first tries to
/// raise both to `ram_bytes`, which root may.
pub fn prepare(ram_bytes: u64, dropping_root: bool) -> anyhow::Result<Option<String>> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_MEMLOCK).context("getrlimit(RLIMIT_MEMLOCK)")?;
    let hard = if dropping_root
        && hard < ram_bytes
        && setrlimit(Resource::RLIMIT_MEMLOCK, ram_bytes, ram_bytes).is_ok()
    {
        ram_bytes
    } else {
        if soft < hard {
            setrlimit(Resource::RLIMIT_MEMLOCK, hard, hard)
                .context("cannot raise RLIMIT_MEMLOCK to its hard limit")?;
        }
        hard
    };
    let short = shortfall(hard, ram_bytes, !dropping_root && has_cap_ipc_lock());
    Ok(short.map(|short| {
        format!(
            "RLIMIT_MEMLOCK allows {} KiB of locked memory, {} KiB less than guest RAM: the \
             guest dies if it touches more (raise it with `ulimit -l`, or run with CAP_IPC_LOCK)",
            hard / 1024,
            short / 1024
        )
    }))
}

/// Whether this process has CAP_IPC_LOCK in its effective set (bit 14 of `CapEff` in
/// /proc/self/status). If that cannot be read, it is taken to be absent: the warning is then
/// given when it may not have been needed, never withheld when it was.
fn has_cap_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|caps| u64::from_str_radix(caps.trim(), 16).ok())
        .is_some_and(|caps| caps & 1 << CAP_IPC_LOCK != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_below_ram_falls_short_unless_the_launcher_locks_freely() {
        const MIB: u64 = 1 << 20;
        assert_eq!(shortfall(8 * MIB, 64 * MIB, false), Some(56 * MIB));
        assert_eq!(shortfall(8 * MIB, 64 * MIB, true), None);
        assert_eq!(shortfall(64 * MIB, 64 * MIB, false), None);
        assert_eq!(shortfall(u64::MAX, 64 * MIB, false), None);
    }
}
