//! Exit statistics as a person reads them: `--stats` at the guest's end, `lguest-stat` live.
//!
//! lg.ko counts every trip into the guest and every exit by its reason, the ones it handles
//! itself included, in buckets (lguest-abi's `stats` module, which lists them). They are read
//! from the fdinfo of an open `/dev/lguest`: [`StatsFile`] opens it (the launcher its own, before
//! it gives up its root directory; `lguest-stat` another process's, found by [`find_guests`]) and
//! reads it again at each look, without disturbing the guest. The rest of this file turns the
//! buckets into tables: [`summary`] for `--stats`, [`live_view`] for `lguest-stat`'s refresh.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use lguest_abi::hcall;
use lguest_abi::stats::{Bucket, Counter, Family, Stats};
use virtio_bindings::virtio_ids;

use crate::device::DEFAULT_PATH;

/// One guest's fdinfo, open, read afresh at each [`StatsFile::read`].
pub struct StatsFile {
    file: File,
    path: PathBuf,
}

impl StatsFile {
    /// The fdinfo of `device`, an open `/dev/lguest` of this process. Opened now, while the
    /// launcher can: after `--chroot` there may be no /proc, and the seccomp filter allows no
    /// open; reading the open file again needs only lseek and read, which it allows.
    pub fn own(device: &impl AsRawFd) -> anyhow::Result<StatsFile> {
        StatsFile::open(format!("/proc/self/fdinfo/{}", device.as_raw_fd()).into())
    }

    /// The fdinfo of a guest's file: `/proc/PID/fdinfo/FD`.
    pub fn of(guest: Guest) -> anyhow::Result<StatsFile> {
        StatsFile::open(guest.fdinfo())
    }

    fn open(path: PathBuf) -> anyhow::Result<StatsFile> {
        let file = File::open(&path).with_context(|| {
            format!(
                "cannot open {} for the exit statistics (is /proc mounted, and may this user \
                 read that process?)",
                path.display()
            )
        })?;
        Ok(StatsFile { file, path })
    }

    /// The buckets as they are now. The kernel writes the text afresh for a read from the start;
    /// it is read with plain reads (`read_to_end` would ask for the file's size first, a call
    /// the seccomp filter refuses).
    pub fn read(&mut self) -> anyhow::Result<Stats> {
        let text = self
            .read_text()
            .with_context(|| format!("cannot read {}", self.path.display()))?;
        Stats::parse(&text).map_err(|err| anyhow::anyhow!("{}: {err}", self.path.display()))
    }

    fn read_text(&mut self) -> io::Result<String> {
        self.file.seek(SeekFrom::Start(0))?;
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match self.file.read(&mut chunk)? {
                0 => break,
                n => bytes.extend_from_slice(&chunk[..n]),
            }
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// A running guest, as another process sees it: its launcher, and the launcher's descriptor of
/// its `/dev/lguest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Guest {
    pub pid: u32,
    pub fd: u32,
}

impl Guest {
    /// Where its statistics are: `/proc/PID/fdinfo/FD`.
    pub fn fdinfo(self) -> PathBuf {
        format!("/proc/{}/fdinfo/{}", self.pid, self.fd).into()
    }
}

/// Every open `/dev/lguest` under `proc` (a /proc), or only `pid`'s: the guests running now.
/// Processes that go away, or that this user may not look into, are passed over.
pub fn find_guests(proc: &Path, pid: Option<u32>) -> io::Result<Vec<Guest>> {
    let every_pid = || -> io::Result<Vec<u32>> {
        Ok(std::fs::read_dir(proc)?
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .collect())
    };
    let pids: Vec<u32> = match pid {
        // The launcher runs its guest in a child process (supervise.rs), so the PID a user
        // knows is the parent of the one holding the file: look at both.
        Some(pid) => std::iter::once(pid)
            .chain(
                every_pid()?
                    .into_iter()
                    .filter(|&child| parent_of(proc, child) == Some(pid)),
            )
            .collect(),
        None => every_pid()?,
    };
    let mut guests = Vec::new();
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(proc.join(pid.to_string()).join("fd")) else {
            continue;
        };
        for entry in fds.flatten() {
            let Some(fd) = entry.file_name().to_str().and_then(|fd| fd.parse().ok()) else {
                continue;
            };
            if std::fs::read_link(entry.path())
                .is_ok_and(|target| target == Path::new(DEFAULT_PATH))
            {
                guests.push(Guest { pid, fd });
            }
        }
    }
    guests.sort_by_key(|guest| (guest.pid, guest.fd));
    Ok(guests)
}

/// The parent of process `pid`, from /proc/PID/stat: after the command name in parentheses
/// (which may hold any character, parentheses too), the state, then the parent's PID.
fn parent_of(proc: &Path, pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(proc.join(pid.to_string()).join("stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

/// The one guest `lguest-stat` is to watch: `pid`'s, or the only one running.
pub fn choose_guest(found: &[Guest], pid: Option<u32>) -> anyhow::Result<Guest> {
    match (found, pid) {
        ([guest], _) => Ok(*guest),
        ([], Some(pid)) => bail!(
            "process {pid} has no {DEFAULT_PATH} open (or may not be looked into by this user)"
        ),
        ([], None) => bail!(
            "no guest is running: no process has {DEFAULT_PATH} open that this user may look into"
        ),
        (many, _) => {
            let list: Vec<String> = many
                .iter()
                .map(|g| format!("{} (fd {})", g.pid, g.fd))
                .collect();
            bail!(
                "{} guests are running, in processes {}: name one with its PID",
                many.len(),
                list.join(", ")
            )
        }
    }
}

/// What the launcher's devices are, for naming their pages and IRQs: device `i` has device page
/// `i` and IRQ `i + 1` (virtio/manager.rs). Empty for `lguest-stat`, which cannot know.
#[derive(Clone, Debug, Default)]
pub struct Devices(pub Vec<String>);

impl Devices {
    /// Names for devices of these virtio types, in page order: `console`, `block`...
    pub fn from_types(types: impl IntoIterator<Item = u32>) -> Devices {
        Devices(
            types
                .into_iter()
                .map(|kind| {
                    match kind {
                        virtio_ids::VIRTIO_ID_NET => "net",
                        virtio_ids::VIRTIO_ID_BLOCK => "block",
                        virtio_ids::VIRTIO_ID_CONSOLE => "console",
                        virtio_ids::VIRTIO_ID_RNG => "rng",
                        _ => "device",
                    }
                    .to_owned()
                })
                .collect(),
        )
    }

    fn page(&self, page: u64) -> Option<&str> {
        self.0.get(usize::try_from(page).ok()?).map(String::as_str)
    }
}

/// What a bucket counts, in a few words.
pub fn describe(bucket: Bucket, devices: &Devices) -> String {
    let number = bucket.number();
    let device = |page: u64| {
        devices
            .page(page)
            .map(|name| format!(" ({name})"))
            .unwrap_or_default()
    };
    match bucket.family() {
        Family::Switches => "trips into the guest and back (time: in the guest)".to_owned(),
        Family::Hypercall if number == hcall::HALT => "HALT (time: asleep)".to_owned(),
        Family::Hypercall => hypercall_name(number),
        Family::Queued => format!("{}, from the asynchronous ring", hypercall_name(number)),
        Family::Trap => format!("exception {}", trap_name(number)),
        Family::FaultFixed => "page fault, fixed by the host (shadow filled)".to_owned(),
        Family::FaultReflected => "page fault, reflected to the guest".to_owned(),
        Family::Mmio if number == Family::Mmio.buckets() - 1 => {
            format!("MMIO exit, device page {number} or above")
        }
        Family::Mmio => format!("MMIO exit, device page {number}{}", device(number)),
        Family::HostInterrupt => "the host's own interrupt".to_owned(),
        Family::Died => "the exit that killed the guest".to_owned(),
        Family::Irq if number == u64::from(hcall::TIMER_IRQ) => {
            "interrupt delivered (timer)".to_owned()
        }
        Family::Irq => format!("interrupt delivered{}", device(number - 1)),
    }
}

/// A hypercall's name in the ABI (lguest-abi's `hcall`).
fn hypercall_name(number: u64) -> String {
    const NAMES: [(u64, &str); 14] = [
        (hcall::FLUSH_ASYNC, "FLUSH_ASYNC"),
        (hcall::LGUEST_INIT, "LGUEST_INIT"),
        (hcall::SHUTDOWN, "SHUTDOWN"),
        (hcall::NEW_PGTABLE, "NEW_PGTABLE"),
        (hcall::FLUSH_TLB, "FLUSH_TLB"),
        (hcall::LOAD_IDT_ENTRY, "LOAD_IDT_ENTRY"),
        (hcall::SET_STACK, "SET_STACK"),
        (hcall::SET_CLOCKEVENT, "SET_CLOCKEVENT"),
        (hcall::HALT, "HALT"),
        (hcall::SET_PTE, "SET_PTE"),
        (hcall::LOAD_GDT_ENTRY, "LOAD_GDT_ENTRY"),
        (hcall::SEND_INTERRUPTS, "SEND_INTERRUPTS"),
        (hcall::CONSOLE_WRITE, "CONSOLE_WRITE"),
        (hcall::NOP, "NOP"),
    ];
    NAMES.iter().find(|(n, _)| *n == number).map_or_else(
        || format!("hypercall {number}"),
        |(_, name)| (*name).to_owned(),
    )
}

/// An exception vector's mnemonic and name.
fn trap_name(vector: u64) -> String {
    const NAMES: [&str; 32] = [
        "#DE divide error",
        "#DB debug",
        "NMI",
        "#BP breakpoint",
        "#OF overflow",
        "#BR bound range",
        "#UD invalid opcode",
        "#NM device not available",
        "#DF double fault",
        "9",
        "#TS invalid TSS",
        "#NP segment not present",
        "#SS stack fault",
        "#GP general protection",
        "#PF page fault",
        "15",
        "#MF x87 error",
        "#AC alignment check",
        "#MC machine check",
        "#XM SIMD error",
        "#VE virtualization",
        "#CP control protection",
        "22",
        "23",
        "24",
        "25",
        "26",
        "27",
        "#HV hypervisor injection",
        "#VC VMM communication",
        "#SX security",
        "31",
    ];
    NAMES
        .get(vector as usize)
        .map_or_else(|| vector.to_string(), |name| (*name).to_owned())
}

/// A duration for a person: three figures or so, in the unit that suits it.
pub fn human_ns(ns: u64) -> String {
    let ns = ns as f64;
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.1} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// One row of a table: a bucket, and what it holds.
struct Row {
    bucket: Bucket,
    counter: Counter,
    /// Counted per second since the last look (the live view only).
    per_second: Option<f64>,
}

/// The table's text: a header, then a row per bucket, each with its key first and its count
/// second (the scenarios read them so), then the total time, the mean, and what it counts.
fn table(rows: &[Row], devices: &Devices, rates: bool) -> String {
    let mut out = String::new();
    let rate_header = if rates { "  per second" } else { "" };
    let _ = writeln!(
        out,
        "  {:<18} {:>10}{rate_header} {:>11} {:>11}  what",
        "bucket", "count", "total time", "mean"
    );
    for row in rows {
        let Counter { count, ns } = row.counter;
        let mean = ns.checked_div(count).unwrap_or(0);
        let rate = match row.per_second {
            Some(rate) if rates => format!("  {rate:>10.0}"),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "  {:<18} {count:>10}{rate} {:>11} {:>11}  {}",
            row.bucket.to_string(),
            human_ns(ns),
            human_ns(mean),
            describe(row.bucket, devices)
        );
    }
    out
}

/// The buckets a table shows: the trips always (a guest that has not run yet has none), every
/// other bucket once it has a count.
fn shown(stats: &Stats) -> impl Iterator<Item = (Bucket, Counter)> + '_ {
    Bucket::all()
        .map(|bucket| (bucket, stats.get(bucket)))
        .filter(|(bucket, counter)| counter.count != 0 || *bucket == Bucket::SWITCHES)
}

/// `--stats`: every bucket with a count, in the ABI's order (the trips, the hypercalls, the
/// ring, traps, faults, devices, interrupts).
pub fn summary(stats: &Stats, devices: &Devices) -> String {
    let rows: Vec<Row> = shown(stats)
        .map(|(bucket, counter)| Row {
            bucket,
            counter,
            per_second: None,
        })
        .collect();
    let mut out = String::from("exits and events lg.ko counted (lguest-stat shows them live):\n");
    out.push_str(&table(&rows, devices, false));
    let _ = writeln!(out, "  {} exits in all, one per trip", stats.exits());
    out
}

/// One refresh of `lguest-stat`: every bucket with a count, the busiest since the last look
/// first (as kvm_stat sorts), with how many per second; `before` is that last look, `elapsed`
/// the time since. With no `before`, totals only, in the ABI's order.
pub fn live_view(now: &Stats, before: Option<&Stats>, elapsed: Duration) -> String {
    let seconds = elapsed.as_secs_f64().max(1e-3);
    let mut rows: Vec<Row> = shown(now)
        .map(|(bucket, counter)| Row {
            bucket,
            counter,
            per_second: before.map(|before| {
                counter.count.saturating_sub(before.get(bucket).count) as f64 / seconds
            }),
        })
        .collect();
    if before.is_some() {
        rows.sort_by(|a, b| {
            let rate = |row: &Row| row.per_second.unwrap_or(0.0);
            rate(b)
                .total_cmp(&rate(a))
                .then(b.counter.count.cmp(&a.counter.count))
        });
    }
    table(&rows, &Devices::default(), before.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Stats {
        let mut stats = Stats::default();
        let set = |stats: &mut Stats, bucket: Option<Bucket>, count, ns| {
            stats.set(bucket.unwrap(), Counter { count, ns })
        };
        set(&mut stats, Some(Bucket::SWITCHES), 1102, 90_000_000);
        set(&mut stats, Bucket::hypercall(hcall::NOP), 1000, 2_000_000);
        set(&mut stats, Bucket::hypercall(hcall::SHUTDOWN), 1, 5_000);
        set(&mut stats, Bucket::trap(6), 100, 1_500_000);
        set(&mut stats, Some(Bucket::device_page(1)), 1, 800);
        set(&mut stats, Bucket::queued(hcall::SET_PTE), 16, 4_000);
        set(&mut stats, Bucket::irq(2), 3, 900);
        stats
    }

    #[test]
    fn the_summary_has_a_row_per_bucket_key_and_count_first() {
        let devices =
            Devices::from_types([virtio_ids::VIRTIO_ID_CONSOLE, virtio_ids::VIRTIO_ID_BLOCK]);
        let text = summary(&sample(), &devices);
        let rows: Vec<Vec<&str>> = text
            .lines()
            .skip(2)
            .map(|line| line.split_whitespace().collect())
            .collect();
        let keys: Vec<&str> = rows.iter().map(|row| row[0]).collect();
        assert_eq!(
            keys,
            [
                "switches",
                "hypercall-2",
                "hypercall-21",
                "queued-14",
                "trap-6",
                "mmio-1",
                "irq-2",
                "1102"
            ],
            "{text}"
        );
        assert_eq!(rows[2][1], "1000");
        assert!(text.contains("NOP"), "{text}");
        assert!(
            text.contains("SET_PTE, from the asynchronous ring"),
            "{text}"
        );
        assert!(text.contains("#UD invalid opcode"), "{text}");
        assert!(text.contains("MMIO exit, device page 1 (block)"), "{text}");
        assert!(text.contains("interrupt delivered (block)"), "{text}");
        assert!(text.contains("1102 exits in all"), "{text}");
        // 2 ms over 1000 NOPs.
        assert!(rows[2].join(" ").contains("2.0 ms 2.0 µs"), "{text}");
    }

    #[test]
    fn the_live_view_puts_the_busiest_first() {
        let before = sample();
        let mut now = sample();
        now.set(
            Bucket::trap(6).unwrap(),
            Counter {
                count: 400,
                ns: 6_000_000,
            },
        );
        let text = live_view(&now, Some(&before), Duration::from_secs(2));
        let first = text.lines().nth(1).unwrap();
        assert!(first.trim_start().starts_with("trap-6"), "{text}");
        assert!(first.split_whitespace().nth(2) == Some("150"), "{text}");
        let fresh = live_view(&Stats::default(), None, Duration::ZERO);
        assert_eq!(fresh.lines().count(), 2, "{fresh}");
        let row: Vec<&str> = fresh.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(row[..2], ["switches", "0"], "{fresh}");
        let once = live_view(&now, None, Duration::ZERO);
        assert!(!once.contains("per second"), "{once}");
        assert!(
            once.lines()
                .nth(1)
                .unwrap()
                .trim_start()
                .starts_with("switches"),
            "{once}"
        );
    }

    #[test]
    fn durations_read_as_a_person_would_say_them() {
        assert_eq!(human_ns(0), "0 ns");
        assert_eq!(human_ns(999), "999 ns");
        assert_eq!(human_ns(12_345), "12.3 µs");
        assert_eq!(human_ns(2_000_000), "2.0 ms");
        assert_eq!(human_ns(61_500_000_000), "61.50 s");
    }

    #[test]
    fn the_guest_to_watch_is_named_or_alone() {
        let one = [Guest { pid: 7, fd: 3 }];
        assert_eq!(choose_guest(&one, None).unwrap(), one[0]);
        let none = choose_guest(&[], None).unwrap_err().to_string();
        assert!(none.starts_with("no guest is running"), "{none}");
        let two = [Guest { pid: 7, fd: 3 }, Guest { pid: 9, fd: 4 }];
        let many = choose_guest(&two, None).unwrap_err().to_string();
        assert!(
            many.contains("2 guests are running, in processes 7 (fd 3), 9 (fd 4)"),
            "{many}"
        );
        let absent = choose_guest(&[], Some(12)).unwrap_err().to_string();
        assert!(
            absent.starts_with("process 12 has no /dev/lguest open"),
            "{absent}"
        );
    }

    #[test]
    fn guests_are_found_by_their_open_dev_lguest() {
        let proc = std::env::temp_dir().join(format!("lguest-stat-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&proc);
        for (pid, fd, target) in [
            (10, 3, "/dev/lguest"),
            (10, 4, "/dev/null"),
            (11, 5, "/dev/lguest"),
        ] {
            let dir = proc.join(pid.to_string()).join("fd");
            std::fs::create_dir_all(&dir).unwrap();
            std::os::unix::fs::symlink(target, dir.join(fd.to_string())).unwrap();
        }
        std::fs::create_dir_all(proc.join("self")).unwrap();
        let all = find_guests(&proc, None).unwrap();
        assert_eq!(all, [Guest { pid: 10, fd: 3 }, Guest { pid: 11, fd: 5 }]);
        assert_eq!(
            find_guests(&proc, Some(11)).unwrap(),
            [Guest { pid: 11, fd: 5 }]
        );
        assert_eq!(find_guests(&proc, Some(12)).unwrap(), []);
        // A supervising launcher (12) whose child (11) holds the file: 12 finds 11's guest.
        std::fs::write(
            proc.join("11").join("stat"),
            "11 (lguest (launch)) S 12 11 1",
        )
        .unwrap();
        std::fs::create_dir_all(proc.join("12")).unwrap();
        assert_eq!(
            find_guests(&proc, Some(12)).unwrap(),
            [Guest { pid: 11, fd: 5 }]
        );
        std::fs::remove_dir_all(&proc).unwrap();
    }

    #[test]
    fn a_file_that_is_not_lguests_is_one_clear_error() {
        let mut file = StatsFile::open("/proc/self/stat".into()).unwrap();
        let err = format!("{:#}", file.read().unwrap_err());
        assert_eq!(
            err,
            "/proc/self/stat: no lguest-switches line: not a /dev/lguest file, or an lg.ko \
             without exit statistics"
        );
        let err = format!(
            "{:#}",
            StatsFile::open("/nonexistent/fdinfo/3".into())
                .err()
                .unwrap()
        );
        assert!(
            err.starts_with("cannot open /nonexistent/fdinfo/3 for the exit statistics"),
            "{err}"
        );
    }
}
