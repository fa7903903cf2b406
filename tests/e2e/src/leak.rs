//! Did the host get all its memory back? A before-and-after picture of the kernel's memory.
//!
//! A hypervisor that leaks a page per guest, or a slab object per world switch, works fine in
//! every functional test and takes the machine down in a week. So the scenarios that run many
//! guests, many loads or many switches look at the host's memory ([`Snapshot`]: slab objects
//! and free memory) before, between and after two rounds of the same work
//! ([`grows_in_every_round`]): a leak grows in every round, the kernel's own background noise
//! (a cache filling, a daemon waking) seldom does. Work too long to run twice is judged once
//! ([`gives_back`]), with a slack that tells a guest's worth of lost memory from that noise.
//!
//! Pins are counted exactly ([`pinned_pages`]): every page lg.ko maps for a guest is pinned, so
//! none may stay pinned once the guest is gone.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::thread::sleep;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::procfs;

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
        let mem_free = procfs::kib_field(&procfs::read("/proc/meminfo")?, "MemFree")?;
        let pcp = procfs::pcp_pages(&procfs::read("/proc/zoneinfo")?)?;
        Ok(Snapshot {
            slabs,
            free_kib: mem_free + pcp * 4,
        })
    }
}

/// Run `work` `rounds` times, looking at the host before, between and after. What grew in
/// every round (per slab cache, the smallest of its growths; for free memory, the smallest
/// loss) must stay under `slab_slack` objects and [`FREE_SLACK_KIB`]: a leak grows in every
/// round, the kernel's own background noise seldom does. The slack should be well under the
/// number of times `work` does the thing that could leak (a leak of one object per guest in a
/// hundred guests is 100), and well over the kernel's noise (tens of objects).
pub fn grows_in_every_round(
    what: &str,
    rounds: usize,
    slab_slack: i64,
    mut work: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut looks = vec![Snapshot::take()?];
    for _ in 0..rounds {
        work()?;
        looks.push(Snapshot::take()?);
    }
    judge(
        &format!("{what}, {rounds} times"),
        " in every round",
        &looks,
        slab_slack,
        FREE_SLACK_KIB,
    )
}

/// Run `work` once, looking at the host before and after: slab objects may grow by less than
/// `slab_slack`, free memory shrink by less than `free_slack_kib`. For work that holds far more
/// than the slack while it runs (a guest of hundreds of MiB, its shadow tables and pins), so
/// that losing what it held cannot hide in the kernel's noise.
pub fn gives_back(
    what: &str,
    slab_slack: i64,
    free_slack_kib: i64,
    work: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let before = Snapshot::take()?;
    work()?;
    judge(
        what,
        "",
        &[before, Snapshot::take()?],
        slab_slack,
        free_slack_kib,
    )
}

/// What grew between every two of `looks` (per slab cache, the smallest of its growths; for
/// free memory, the smallest loss), against the slacks. `when` says over what, for the error
/// (" in every round").
fn judge(
    what: &str,
    when: &str,
    looks: &[Snapshot],
    slab_slack: i64,
    free_slack_kib: i64,
) -> anyhow::Result<()> {
    let count = |s: &Snapshot, k: &str| i64::try_from(s.slabs.get(k).copied().unwrap_or(0));
    let names: BTreeSet<&String> = looks.iter().flat_map(|s| s.slabs.keys()).collect();
    let mut growth: Vec<(i64, &str)> = Vec::new();
    for name in names {
        let mut least = i64::MAX;
        for pair in looks.windows(2) {
            least = least.min(count(&pair[1], name)? - count(&pair[0], name)?);
        }
        growth.push((least.max(0), name));
    }
    growth.sort_unstable_by(|a, b| b.cmp(a));
    let total: i64 = growth.iter().map(|(g, _)| g).sum();
    let mut free_lost = i64::MAX;
    for pair in looks.windows(2) {
        free_lost =
            free_lost.min(i64::try_from(pair[0].free_kib)? - i64::try_from(pair[1].free_kib)?);
    }
    println!("e2e-info {what}: slab objects grew by {total}, free memory lost {free_lost} KiB");
    if total < slab_slack && free_lost < free_slack_kib {
        return Ok(());
    }
    let top: Vec<String> = growth
        .iter()
        .take(3)
        .map(|(g, name)| format!("{name} +{g}"))
        .collect();
    bail!(
        "{what}: slab objects grew by {total}{when} (limit <{slab_slack}; most: {}), free \
         memory lost{when} {free_lost} KiB (limit <{free_slack_kib})",
        top.join(", ")
    )
}

/// Pages pinned by `pin_user_pages` and not yet released, host-wide (/proc/vmstat).
pub fn pinned_pages() -> anyhow::Result<i64> {
    // The counters are per CPU and folded into /proc/vmstat now and then: fold them now, or a
    // few pins show up as pinned long after their release.
    fs::write("/proc/sys/vm/stat_refresh", "1").context("write /proc/sys/vm/stat_refresh")?;
    let vmstat = procfs::read("/proc/vmstat")?;
    let counter = |name: &str| -> anyhow::Result<i64> {
        vmstat
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("no {name} in /proc/vmstat"))
    };
    Ok(counter("nr_foll_pin_acquired")? - counter("nr_foll_pin_released")?)
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
