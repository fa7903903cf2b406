//! Exit statistics: what lg.ko counts of a guest's exits, and the lines user space reads them in.
//!
//! Most of what a guest does never reaches the launcher: hypercalls, page faults, traps and
//! interrupts are the host's business ([`crate::exit`]). lg.ko still counts every one, per
//! guest, in *buckets*: one per reason an exit can have, each holding how many there were and
//! the nanoseconds the host spent on them. Every trip into the guest ends in exactly one exit
//! bucket ([`Bucket::is_exit`]), so the exit buckets add up to [`Family::Switches`]; the queued
//! hypercalls and the interrupts delivered are counted beside them.
//!
//! Each bucket has a key, which names it in the fdinfo lines below; per family:
//!
//! - `switches` ([`Family::Switches`]): each trip into the guest and back. Time: the trip, the
//!   guest's own time and the switch both ways.
//! - `hypercall-N` ([`Family::Hypercall`]): each exit for hypercall N ([`crate::hcall`]). Time:
//!   carrying it out, the queued calls before it included; HALT's includes its sleep.
//! - `queued-N` ([`Family::Queued`]): each hypercall N carried out from the asynchronous ring.
//!   Time: carrying it out (a part of its exit's).
//! - `trap-V` ([`Family::Trap`]): each exit for exception V, #PF and the hypercall vector apart.
//!   Time: delivering it to the guest, or emulating the instruction.
//! - `fault-fixed` ([`Family::FaultFixed`]): each page fault the host fixed by filling the shadow
//!   page tables. Time: the walk of the guest's tables, the pin, the map.
//! - `fault-reflected` ([`Family::FaultReflected`]): each page fault the guest's own tables
//!   refuse, given to its handler. Time: the walk and the delivery.
//! - `mmio-P` ([`Family::Mmio`]): each page fault on device page P (counted from the first page
//!   above RAM; 63 counts every page from 63 on), an exit to the launcher. Time: deciding so;
//!   the launcher's own is not lg.ko's to see.
//! - `host-interrupt` ([`Family::HostInterrupt`]): each exit for an interrupt of the host's (its
//!   tick, another CPU's kick). Time: handing it to the host.
//! - `died` ([`Family::Died`]): the exit that ended the guest.
//! - `irq-N` ([`Family::Irq`]): each IRQ N delivered to the guest. Time: pushing its frame.
//!
//! The buckets are read through the `fdinfo` of the launcher's open `/dev/lguest`
//! (`/proc/PID/fdinfo/FD`), after the lines the kernel prints for every file, one line each:
//! `lguest-` and the key, a colon and a tab, then the count and the nanoseconds in decimal,
//! `lguest-hypercall-21:\t1000 2345678`. `lguest-switches` is always there; any other bucket
//! only once it is not zero. docs/dev-lguest.md argues for fdinfo over a request: a reader gets
//! the numbers without the lock the running guest holds, so watching never stops the guest, and
//! `cat` is enough to look. The host counts with a single writer and the reader takes each number
//! as it is, so a snapshot of a running guest may show a count without its time for a moment.
//!
//! [`write_line`] prints a bucket in this form (lg.ko uses it) and [`Stats::parse`] reads the
//! lines back (the launcher and `lguest-stat` do), so the two sides share one definition.

use core::fmt;

use super::hcall::IRQS;

/// A kind of bucket: one bucket, or one per number (hypercall, vector, device page, IRQ).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    Switches,
    Hypercall,
    Queued,
    Trap,
    FaultFixed,
    FaultReflected,
    Mmio,
    HostInterrupt,
    Died,
    Irq,
}

impl Family {
    /// Every family, in wire order.
    pub const ALL: [Family; 10] = [
        Family::Switches,
        Family::Hypercall,
        Family::Queued,
        Family::Trap,
        Family::FaultFixed,
        Family::FaultReflected,
        Family::Mmio,
        Family::HostInterrupt,
        Family::Died,
        Family::Irq,
    ];

    /// The key of its bucket, or the start of its buckets' keys (`hypercall` for `hypercall-21`).
    pub const fn key(self) -> &'static str {
        match self {
            Family::Switches => "switches",
            Family::Hypercall => "hypercall",
            Family::Queued => "queued",
            Family::Trap => "trap",
            Family::FaultFixed => "fault-fixed",
            Family::FaultReflected => "fault-reflected",
            Family::Mmio => "mmio",
            Family::HostInterrupt => "host-interrupt",
            Family::Died => "died",
            Family::Irq => "irq",
        }
    }

    /// How many buckets it has: the numbers run from 0 to one less. Hypercall numbers and
    /// exception vectors are below 32; IRQs below [`crate::hcall::IRQS`]; device pages as many
    /// as a launcher can give IRQs to, plus one for any page beyond.
    pub const fn buckets(self) -> u64 {
        match self {
            Family::Hypercall | Family::Queued | Family::Trap => 32,
            Family::Mmio => 64,
            Family::Irq => IRQS as u64,
            _ => 1,
        }
    }

    /// Whether its buckets are numbered (`hypercall-21`) rather than one (`switches`).
    pub const fn numbered(self) -> bool {
        self.buckets() > 1
    }

    /// The index of its first bucket.
    fn first(self) -> usize {
        Family::ALL
            .iter()
            .take_while(|family| **family != self)
            .map(|family| family.buckets() as usize)
            .sum()
    }
}

/// How many buckets there are, every family's together.
pub const BUCKETS: usize = {
    let mut total = 0;
    let mut i = 0;
    while i < Family::ALL.len() {
        total += Family::ALL[i].buckets() as usize;
        i += 1;
    }
    total
};

/// One bucket: a family, and its number within the family (0 for a family of one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bucket {
    family: Family,
    // Below `family.buckets()`: every constructor checks.
    number: u64,
}

impl Bucket {
    pub const SWITCHES: Bucket = Bucket::single(Family::Switches);
    pub const FAULT_FIXED: Bucket = Bucket::single(Family::FaultFixed);
    pub const FAULT_REFLECTED: Bucket = Bucket::single(Family::FaultReflected);
    pub const HOST_INTERRUPT: Bucket = Bucket::single(Family::HostInterrupt);
    pub const DIED: Bucket = Bucket::single(Family::Died);

    const fn single(family: Family) -> Bucket {
        Bucket { family, number: 0 }
    }

    /// Bucket `number` of `family`, if the family has one.
    pub fn new(family: Family, number: u64) -> Option<Bucket> {
        (number < family.buckets()).then_some(Bucket { family, number })
    }

    /// The exit for hypercall `number`.
    pub fn hypercall(number: u64) -> Option<Bucket> {
        Bucket::new(Family::Hypercall, number)
    }

    /// Hypercall `number`, carried out from the asynchronous ring.
    pub fn queued(number: u64) -> Option<Bucket> {
        Bucket::new(Family::Queued, number)
    }

    /// The exit for exception `vector`.
    pub fn trap(vector: u64) -> Option<Bucket> {
        Bucket::new(Family::Trap, vector)
    }

    /// An access to device page `page` (counted from the first page above RAM); the last
    /// bucket takes every page from it on.
    pub fn device_page(page: u64) -> Bucket {
        Bucket {
            family: Family::Mmio,
            number: page.min(Family::Mmio.buckets() - 1),
        }
    }

    /// IRQ `irq` delivered.
    pub fn irq(irq: u64) -> Option<Bucket> {
        Bucket::new(Family::Irq, irq)
    }

    pub fn family(self) -> Family {
        self.family
    }

    /// The hypercall, vector, device page or IRQ; 0 for a family of one.
    pub fn number(self) -> u64 {
        self.number
    }

    /// Whether this bucket counts exits: one of them per trip into the guest. Not the trips
    /// themselves, the queued hypercalls (carried out inside another exit) or the interrupts
    /// delivered (on the way in).
    pub fn is_exit(self) -> bool {
        !matches!(self.family, Family::Switches | Family::Queued | Family::Irq)
    }

    /// Its place among all [`BUCKETS`], in wire order.
    pub fn index(self) -> usize {
        self.family.first() + self.number as usize
    }

    /// The bucket at `index`.
    pub fn from_index(index: usize) -> Option<Bucket> {
        let mut first = 0;
        for family in Family::ALL {
            let len = family.buckets() as usize;
            if index < first + len {
                return Bucket::new(family, (index - first) as u64);
            }
            first += len;
        }
        None
    }

    /// Every bucket, in wire order.
    pub fn all() -> impl Iterator<Item = Bucket> {
        (0..BUCKETS).filter_map(Bucket::from_index)
    }

    /// The bucket a key names (`hypercall-21`, `switches`).
    pub fn from_key(key: &str) -> Option<Bucket> {
        Family::ALL.into_iter().find_map(|family| {
            let rest = key.strip_prefix(family.key())?;
            if !family.numbered() {
                return rest.is_empty().then(|| Bucket::single(family));
            }
            let digits = rest.strip_prefix('-')?;
            // One spelling per number: no sign, no leading zero.
            if digits.starts_with('+') || (digits.len() > 1 && digits.starts_with('0')) {
                return None;
            }
            Bucket::new(family, digits.parse().ok()?)
        })
    }
}

/// The key: the family's, and the number after a dash if the family is numbered.
impl fmt::Display for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.family.numbered() {
            write!(f, "{}-{}", self.family.key(), self.number)
        } else {
            f.write_str(self.family.key())
        }
    }
}

/// What a bucket holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub count: u64,
    /// Nanoseconds the host spent, all of them together.
    pub ns: u64,
}

/// What every fdinfo line of lg.ko's starts with, before the bucket's key.
pub const LINE_PREFIX: &str = "lguest-";

/// Prints one bucket's fdinfo line, newline included.
pub fn write_line(out: &mut impl fmt::Write, bucket: Bucket, counter: Counter) -> fmt::Result {
    writeln!(
        out,
        "{LINE_PREFIX}{bucket}:\t{} {}",
        counter.count, counter.ns
    )
}

/// Every bucket of one guest, as one read of its fdinfo found them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    counters: [Counter; BUCKETS],
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            counters: [Counter::default(); BUCKETS],
        }
    }
}

/// Why a text is not lg.ko's fdinfo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsError {
    /// No `lguest-switches` line: not a `/dev/lguest` file, or an lg.ko that counts nothing.
    NotLguest,
    /// Line `line` (from 1) starts with [`LINE_PREFIX`] but names no bucket this side knows.
    UnknownBucket { line: usize },
    /// Line `line` names a bucket but is not `KEY:\tCOUNT NS`, or names it a second time.
    Malformed { line: usize },
}

impl fmt::Display for StatsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatsError::NotLguest => f.write_str(
                "no lguest-switches line: not a /dev/lguest file, or an lg.ko without exit \
                 statistics",
            ),
            StatsError::UnknownBucket { line } => write!(
                f,
                "line {line} names a bucket this program does not know (is lg.ko newer?)"
            ),
            StatsError::Malformed { line } => {
                write!(f, "line {line} is not `lguest-KEY:<tab>COUNT NS`, once")
            }
        }
    }
}

impl Stats {
    pub fn get(&self, bucket: Bucket) -> Counter {
        self.counters[bucket.index()]
    }

    pub fn set(&mut self, bucket: Bucket, counter: Counter) {
        self.counters[bucket.index()] = counter;
    }

    /// The buckets with a count, in wire order.
    pub fn nonzero(&self) -> impl Iterator<Item = (Bucket, Counter)> + '_ {
        Bucket::all()
            .map(|bucket| (bucket, self.get(bucket)))
            .filter(|(_, counter)| counter.count != 0)
    }

    /// Exits of every kind together: as many as [`Bucket::SWITCHES`] counts, once the guest has
    /// stopped.
    pub fn exits(&self) -> u64 {
        Bucket::all()
            .filter(|bucket| bucket.is_exit())
            .map(|bucket| self.get(bucket).count)
            .fold(0, u64::wrapping_add)
    }

    /// Reads the buckets from a file's fdinfo text: lines that do not start with
    /// [`LINE_PREFIX`] are the kernel's own (`pos:`, `flags:`...) and are passed over; a
    /// bucket without a line is zero.
    pub fn parse(fdinfo: &str) -> Result<Stats, StatsError> {
        let mut stats = Stats::default();
        let mut seen_switches = false;
        let mut seen = [false; BUCKETS];
        for (at, text) in fdinfo.lines().enumerate() {
            let line = at + 1;
            let Some(rest) = text.strip_prefix(LINE_PREFIX) else {
                continue;
            };
            let Some((key, values)) = rest.split_once(":\t") else {
                return Err(StatsError::Malformed { line });
            };
            let bucket = Bucket::from_key(key).ok_or(StatsError::UnknownBucket { line })?;
            let mut numbers = values.split(' ').map(str::parse::<u64>);
            let (Some(Ok(count)), Some(Ok(ns)), None) =
                (numbers.next(), numbers.next(), numbers.next())
            else {
                return Err(StatsError::Malformed { line });
            };
            if core::mem::replace(&mut seen[bucket.index()], true) {
                return Err(StatsError::Malformed { line });
            }
            seen_switches |= bucket == Bucket::SWITCHES;
            stats.set(bucket, Counter { count, ns });
        }
        if !seen_switches {
            return Err(StatsError::NotLguest);
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::String;

    #[test]
    fn every_bucket_has_one_index_and_one_key() {
        assert_eq!(BUCKETS, 1 + 32 + 32 + 32 + 1 + 1 + 64 + 1 + 1 + 64);
        let all: std::vec::Vec<Bucket> = Bucket::all().collect();
        assert_eq!(all.len(), BUCKETS);
        for (index, bucket) in all.iter().enumerate() {
            assert_eq!(bucket.index(), index);
            let key = std::format!("{bucket}");
            assert_eq!(Bucket::from_key(&key), Some(*bucket), "{key}");
        }
        assert_eq!(Bucket::from_index(BUCKETS), None);
    }

    #[test]
    fn keys_are_the_documented_ones() {
        let key = |bucket: Option<Bucket>| std::format!("{}", bucket.unwrap());
        assert_eq!(key(Some(Bucket::SWITCHES)), "switches");
        assert_eq!(key(Bucket::hypercall(21)), "hypercall-21");
        assert_eq!(key(Bucket::queued(14)), "queued-14");
        assert_eq!(key(Bucket::trap(6)), "trap-6");
        assert_eq!(key(Some(Bucket::FAULT_FIXED)), "fault-fixed");
        assert_eq!(key(Some(Bucket::FAULT_REFLECTED)), "fault-reflected");
        assert_eq!(key(Some(Bucket::device_page(2))), "mmio-2");
        assert_eq!(key(Some(Bucket::HOST_INTERRUPT)), "host-interrupt");
        assert_eq!(key(Some(Bucket::DIED)), "died");
        assert_eq!(key(Bucket::irq(63)), "irq-63");
    }

    #[test]
    fn numbers_outside_a_family_are_no_bucket() {
        assert_eq!(Bucket::hypercall(32), None);
        assert_eq!(Bucket::trap(u64::MAX), None);
        assert_eq!(Bucket::irq(64), None);
        assert_eq!(Bucket::device_page(1 << 40), Bucket::device_page(63));
        for bad in [
            "hypercall-32",
            "hypercall-",
            "hypercall",
            "hypercall-021",
            "hypercall-+1",
            "switches-0",
            "fault",
            "irq--1",
            "",
        ] {
            assert_eq!(Bucket::from_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_exits_add_up_to_the_switches() {
        assert!(Bucket::hypercall(2).unwrap().is_exit());
        assert!(Bucket::device_page(0).is_exit());
        assert!(Bucket::DIED.is_exit());
        assert!(!Bucket::SWITCHES.is_exit());
        assert!(!Bucket::queued(14).unwrap().is_exit());
        assert!(!Bucket::irq(0).unwrap().is_exit());
    }

    #[test]
    fn lines_round_trip_among_the_kernels_own() {
        let mut text = String::from("pos:\t0\nflags:\t02\nmnt_id:\t15\nino:\t5\n");
        let mut expected = Stats::default();
        let counters = [
            (Bucket::SWITCHES, 1013, 99_000_000),
            (Bucket::hypercall(21).unwrap(), 1000, 2_345_678),
            (Bucket::FAULT_REFLECTED, 32, u64::MAX),
            (Bucket::irq(0).unwrap(), 50, 7),
        ];
        for (bucket, count, ns) in counters {
            let counter = Counter { count, ns };
            write_line(&mut text, bucket, counter).unwrap();
            expected.set(bucket, counter);
        }
        assert!(
            text.contains("\nlguest-hypercall-21:\t1000 2345678\n"),
            "{text}"
        );
        let stats = Stats::parse(&text).unwrap();
        assert_eq!(stats, expected);
        assert_eq!(stats.exits(), 1032);
        assert_eq!(stats.nonzero().count(), 4);
        assert_eq!(stats.get(Bucket::DIED), Counter::default());
    }

    #[test]
    fn what_is_not_lg_kos_is_refused_with_its_line() {
        assert_eq!(Stats::parse("pos:\t0\n"), Err(StatsError::NotLguest));
        let base = "pos:\t0\nlguest-switches:\t1 2\n";
        for (extra, error) in [
            (
                "lguest-hypercall-99:\t1 2",
                StatsError::UnknownBucket { line: 3 },
            ),
            (
                "lguest-nonsense:\t1 2",
                StatsError::UnknownBucket { line: 3 },
            ),
            ("lguest-died: 1 2", StatsError::Malformed { line: 3 }),
            ("lguest-died:\t1", StatsError::Malformed { line: 3 }),
            ("lguest-died:\t1 2 3", StatsError::Malformed { line: 3 }),
            ("lguest-died:\t-1 2", StatsError::Malformed { line: 3 }),
            ("lguest-switches:\t1 2", StatsError::Malformed { line: 3 }),
        ] {
            assert_eq!(
                Stats::parse(&std::format!("{base}{extra}\n")),
                Err(error),
                "{extra}"
            );
        }
    }
}
