//! What the host kernel says about itself in /proc, parsed.
//!
//! The scenarios judge the host by its own reports: /proc/misc says which minor lg.ko's device
//! got, /proc/modules whether the module is loaded and who holds it, /proc/slabinfo and
//! /proc/meminfo whether a thousand guests came and went without leaving anything behind. The
//! parsers take text, not paths, so the unit tests below can feed them the kernel's formats.

use std::collections::BTreeMap;

use anyhow::{bail, Context};

/// Reads a whole /proc (or /sys) file.
pub fn read(path: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))
}

/// The minor of the misc device called `name` in /proc/misc text.
///
/// Each line is `"%3i %s"`: the minor, right-aligned in three columns, then the device's name
/// (drivers/char/misc.c:/misc_seq_show/).
pub fn misc_minor(misc: &str, name: &str) -> Option<u32> {
    misc.lines().find_map(|line| {
        let (minor, dev) = line.trim_start().split_once(' ')?;
        (dev.trim() == name).then(|| minor.parse().ok()).flatten()
    })
}

/// One line of /proc/modules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    pub name: String,
    /// How many references hold the module: open files of its devices, dependent modules.
    /// -1 while it is being unloaded (kernel/module/main.c:/module_refcount/).
    pub refcount: i64,
    /// "Live", "Loading" or "Unloading".
    pub state: String,
}

/// The module called `name` in /proc/modules text, e.g.
/// `lg 16384 0 - Live 0xffffffffa0000000 (O)`: name, size, refcount, users, state, address,
/// taints (kernel/module/procfs.c:/m_show/).
pub fn module(modules: &str, name: &str) -> anyhow::Result<Option<Module>> {
    for line in modules.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.first() != Some(&name) {
            continue;
        }
        let [_, _, refcount, _, state, ..] = fields[..] else {
            bail!("unexpected /proc/modules line {line:?}");
        };
        let refcount = refcount
            .parse()
            .with_context(|| format!("bad refcount in /proc/modules: {line:?}"))?;
        return Ok(Some(Module {
            name: name.to_owned(),
            refcount,
            state: state.to_owned(),
        }));
    }
    Ok(None)
}

/// Active objects per slab cache, from /proc/slabinfo text (format 2.1: a version line, a
/// `#` header, then `name active_objs num_objs objsize ...` per cache).
pub fn slab_active_objects(slabinfo: &str) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut lines = slabinfo.lines();
    match lines.next() {
        Some(first) if first.starts_with("slabinfo - version: 2.") => {}
        first => bail!("unexpected /proc/slabinfo header {first:?}"),
    }
    let mut caches = BTreeMap::new();
    for line in lines.filter(|l| !l.starts_with('#')) {
        let mut fields = line.split_whitespace();
        let (Some(name), Some(active)) = (fields.next(), fields.next()) else {
            bail!("unexpected /proc/slabinfo line {line:?}");
        };
        let active: u64 = active
            .parse()
            .with_context(|| format!("bad /proc/slabinfo line {line:?}"))?;
        // Two caches of one name are possible (e.g. a module's cache created twice while an old
        // one lingers); count both.
        *caches.entry(name.to_owned()).or_insert(0) += active;
    }
    Ok(caches)
}

/// A `Key: value` field of /proc/meminfo or /proc/PID/status text, without the spaces and tabs
/// around the value, e.g. `field(status, "Uid")` is `"0\t0\t0\t0"`.
pub fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        let (k, value) = line.split_once(':')?;
        (k == key).then(|| value.trim())
    })
}

/// A `Key: N kB` field in KiB, of /proc/meminfo or /proc/PID/status text, e.g.
/// `kib_field(text, "MemFree")`.
pub fn kib_field(text: &str, key: &str) -> anyhow::Result<u64> {
    let Some(value) = field(text, key) else {
        bail!("no {key} field")
    };
    value
        .trim_end_matches(" kB")
        .parse()
        .with_context(|| format!("bad {key} field {value:?}"))
}

/// Free pages parked on the per-CPU lists, from /proc/zoneinfo text: the `count:` of every
/// CPU's pageset in every zone (mm/vmstat.c:/zoneinfo_show_print/). MemFree does not include
/// them, and which CPU list a freed page lands on is chance, so a before/after comparison of
/// free memory must add them back.
pub fn pcp_pages(zoneinfo: &str) -> anyhow::Result<u64> {
    let mut pages = 0;
    for line in zoneinfo.lines() {
        if let Some(count) = line.trim_start().strip_prefix("count:") {
            pages += count
                .trim()
                .parse::<u64>()
                .with_context(|| format!("bad /proc/zoneinfo line {line:?}"))?;
        }
    }
    Ok(pages)
}

/// A task's state letter (`R` running, `S` sleeping...) and the CPU it is on or last ran on,
/// from /proc/<pid>/stat text: fields 3 and 39 of proc_pid_stat(5). The command name (field 2)
/// is in parentheses and may itself hold spaces and parentheses, so fields are counted from the
/// last `)`.
pub fn stat_state_cpu(stat: &str) -> anyhow::Result<(char, u32)> {
    let rest = stat
        .rsplit_once(')')
        .with_context(|| format!("no command name in /proc/<pid>/stat {stat:?}"))?
        .1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `fields[0]` is field 3.
    let (Some(state), Some(cpu)) = (fields.first(), fields.get(39 - 3)) else {
        bail!("short /proc/<pid>/stat {stat:?}");
    };
    let state = state.chars().next().context("empty state field")?;
    let cpu = cpu
        .parse()
        .with_context(|| format!("bad processor field in /proc/<pid>/stat {stat:?}"))?;
    Ok((state, cpu))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misc_minors_are_found_by_exact_name() {
        let misc = "258 lguest\n 60 lguest-old\n183 hw_random\n  1 psaux\n";
        assert_eq!(misc_minor(misc, "lguest"), Some(258));
        assert_eq!(misc_minor(misc, "psaux"), Some(1));
        assert_eq!(misc_minor(misc, "lgues"), None);
        assert_eq!(misc_minor("", "lguest"), None);
    }

    #[test]
    fn modules_lines_give_refcount_and_state() {
        let modules = "lguest_other 8192 0 - Live 0xffffffffa0100000\n\
                       lg 16384 1 - Live 0xffffffffa0000000 (O)\n";
        let lg = module(modules, "lg").unwrap().unwrap();
        assert_eq!(
            lg,
            Module {
                name: "lg".into(),
                refcount: 1,
                state: "Live".into()
            }
        );
        assert_eq!(module(modules, "l").unwrap(), None);
        assert!(module("lg 16384\n", "lg").is_err());
        let going = module("lg 16384 -1 - Unloading 0x0 (O)\n", "lg")
            .unwrap()
            .unwrap();
        assert_eq!(going.refcount, -1);
    }

    #[test]
    fn slabinfo_is_summed_per_cache() {
        // The kernel's own spacing, shortened; the `#` header lists the columns.
        let text = "slabinfo - version: 2.1\n\
            # name <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : tunables ...\n\
            kmalloc-64  1200  1280  64  64  1 : tunables  0  0  0 : slabdata  20  20  0\n\
            dentry       512   546 192  21  1 : tunables  0  0  0 : slabdata  26  26  0\n\
            dentry         3    21 192  21  1 : tunables  0  0  0 : slabdata   1   1  0\n";
        let caches = slab_active_objects(text).unwrap();
        assert_eq!(caches.len(), 2);
        assert_eq!(caches["kmalloc-64"], 1200);
        assert_eq!(caches["dentry"], 515);
        assert!(slab_active_objects("no header\n").is_err());
        assert!(slab_active_objects("slabinfo - version: 2.1\nbroken\n").is_err());
    }

    #[test]
    fn kib_fields_are_read_from_meminfo_and_status() {
        let text =
            "MemTotal:        2013956 kB\nMemFree:         1893512 kB\nHugePages_Total:       0\n";
        assert_eq!(kib_field(text, "MemFree").unwrap(), 1_893_512);
        assert_eq!(kib_field(text, "HugePages_Total").unwrap(), 0);
        assert!(kib_field(text, "MemAvailable").is_err());
        let status = "Name:\tlguest-launcher\nVmLck:\t    1024 kB\nVmPin:\t       0 kB\n";
        assert_eq!(kib_field(status, "VmLck").unwrap(), 1024);
    }

    #[test]
    fn status_fields_are_found_by_exact_name() {
        let status = "Uid:\t65534\t65534\t65534\t65534\nGroups:\t65534 \nSeccomp:\t2\n\
                      Seccomp_filters:\t1\n";
        assert_eq!(field(status, "Uid"), Some("65534\t65534\t65534\t65534"));
        assert_eq!(field(status, "Groups"), Some("65534"));
        assert_eq!(field(status, "Seccomp"), Some("2"));
        assert_eq!(field(status, "Seccomp_filters"), Some("1"));
        assert_eq!(field(status, "Gid"), None);
    }

    #[test]
    fn pcp_pages_add_up_every_cpu_of_every_zone() {
        let text = "Node 0, zone    DMA32\n  pages free     480000\n  pagesets\n    cpu: 0\n\
                    \x20             count: 120\n              high:  500\n    cpu: 1\n\
                    \x20             count: 7\n  vm stats threshold: 24\n\
                    Node 0, zone   Normal\n  pagesets\n    cpu: 0\n              count: 3\n";
        assert_eq!(pcp_pages(text).unwrap(), 130);
        assert_eq!(pcp_pages("Node 0, zone DMA\n").unwrap(), 0);
    }

    #[test]
    fn stat_gives_state_and_processor() {
        // A real line from Linux 6.12, with an awkward command name.
        let stat = "4242 (lguest (x) 1) R 1 4242 1 1088 4242 4194560 120 0 0 0 50 3 0 0 20 0 1 0 \
                    3051 70000000 1000 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 \
                    0 0 0 0 0 0 0 0 0";
        assert_eq!(stat_state_cpu(stat).unwrap(), ('R', 1));
        assert!(stat_state_cpu("4242 (x) S 1 2").is_err());
        assert!(stat_state_cpu("garbage").is_err());
    }
}
