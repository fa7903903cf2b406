//! Did the host get all its memory back? A before-and-after picture of the kernel's memory.
//!
//! A hypervisor that leaks a page per guest, or a slab object per world switch, works fine in
//! every functional test and takes the machine down in a week. So the scenarios that run many
//! guests, many loads or many switches look at the host's memory ([`Snapshot`]: slab objects
//! and free memory) before, between and after two rounds of the same work
//! ([`grows_in_both_rounds`]): a leak grows in both rounds, the kernel's own background noise
//! (a cache filling, a daemon waking) in one.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::thread::sleep;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::procfs;

/// Slab objects the measured work may leave, in total: a leak of one object per guest or per
/// load in a hundred shows as 100.
const SLAB_SLACK: i64 = 50;
/// Free memory it may cost, in KiB.
const FREE_SLACK_KIB: i64 = 256;

/// What the host has in use: active objects per slab cache, and free memory.
pub struct Snapshot {
    slabs: BTreeMap<String, u64>,
    free_kib: u64,
}

impl Snapshot {
    /// Settles the host's caches, then looks.
    pub fn take() -> anyhow::Result<Snapshot> {
        // Objects freed through RCU go back to their caches only after a grace period.
        sleep(Duration::from_millis(200));
        // Drop the page cache, dentries and inodes: they come and go with every open and path
        // lookup and would drown a leak.
        fs::write("/proc/sys/vm/drop_caches", "3").context("cannot drop caches")?;
        shrink_slabs()?;
        // Fold every CPU's pending counter deltas into the global counters MemFree reads.
        fs::write("/proc/sys/vm/stat_refresh", "1").context("cannot refresh vm stats")?;
        let slabs = procfs::slab_active_objects(&procfs::read("/proc/slabinfo")?)?;
        let mem_free = procfs::meminfo_kib(&procfs::read("/proc/meminfo")?, "MemFree")?;
        let pcp = procfs::pcp_pages(&procfs::read("/proc/zoneinfo")?)?;
        Ok(Snapshot {
            slabs,
            free_kib: mem_free + pcp * 4,
        })
    }
}

/// Run `work` twice, looking at the host before, between and after. What grew in both rounds
/// (per slab cache, the smaller of the two growths; for free memory, the smaller loss) must stay
/// within the slacks.
pub fn grows_in_both_rounds(
    what: &str,
    mut work: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let first = Snapshot::take()?;
    work()?;
    let between = Snapshot::take()?;
    work()?;
    let last = Snapshot::take()?;
    let count = |s: &Snapshot, k: &str| i64::try_from(s.slabs.get(k).copied().unwrap_or(0));
    let names: BTreeSet<&String> = first.slabs.keys().chain(last.slabs.keys()).collect();
    let mut growth: Vec<(i64, &str)> = Vec::new();
    for name in names {
        let one = count(&between, name)? - count(&first, name)?;
        let two = count(&last, name)? - count(&between, name)?;
        growth.push((one.min(two).max(0), name));
    }
    growth.sort_unstable_by(|a, b| b.cmp(a));
    let total: i64 = growth.iter().map(|(g, _)| g).sum();
    let lost = |a: &Snapshot, b: &Snapshot| -> anyhow::Result<i64> {
        Ok(i64::try_from(a.free_kib)? - i64::try_from(b.free_kib)?)
    };
    let free_lost = lost(&first, &between)?.min(lost(&between, &last)?);
    if total < SLAB_SLACK && free_lost < FREE_SLACK_KIB {
        return Ok(());
    }
    let top: Vec<String> = growth
        .iter()
        .take(3)
        .map(|(g, name)| format!("{name} +{g}"))
        .collect();
    bail!(
        "{what}, twice: slab objects grew by {total} in both rounds (limit <{SLAB_SLACK}; most: \
         {}), free memory lost in both rounds {free_lost} KiB (limit <{FREE_SLACK_KIB})",
        top.join(", ")
    )
}

/// Empties every slab cache's per-CPU slabs back onto its lists, so /proc/slabinfo's
/// active_objs counts objects in use and not objects that happen to sit in a CPU's current
/// slab (which SLUB reports as all active). Needs sysfs at /sys; without it, skip.
fn shrink_slabs() -> anyhow::Result<()> {
    let Ok(caches) = fs::read_dir("/sys/kernel/slab") else {
        return Ok(());
    };
    for cache in caches {
        let cache = cache.context("cannot list /sys/kernel/slab")?;
        // Merged caches appear once as a directory and again as symlinks to it.
        if cache.file_type()?.is_dir() {
            fs::write(cache.path().join("shrink"), "1")
                .with_context(|| format!("cannot shrink {}", cache.path().display()))?;
        }
    }
    Ok(())
}
