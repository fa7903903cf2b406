//! Counting exits: which bucket each one falls in, and the counters a guest keeps them in.
//!
//! `--trace` on the launcher shows the exits that reach it; everything else a guest does, the
//! hypercalls, page faults, traps and interrupts lg.ko deals with itself, would go unseen. So
//! the run loop (`lg-module/run.rs`) tells [`ExitStats`] about every trip into the guest, and
//! exit handling (src/exit/) about every exit and what became of it, every call it carries out
//! from the asynchronous ring and every interrupt it delivers, with the time it spent;
//! [`exit_bucket`] decides where an exit
//! belongs. The buckets, and the fdinfo lines user space reads them in, are the ABI's
//! (`abi/src/stats.rs`); [`ExitStats::show`] prints them, for `lguest-stat` and the launcher's
//! `--stats`.
//!
//! Time is counted in TSC cycles, read with one `rdtsc` at each end: the cheapest clock there
//! is, which matters on a path taken at every exit. They become nanoseconds only when someone
//! reads them, at the rate the host calibrated (`tsc_khz`, which guests are given as their clock
//! too). The kernel keeps the TSC in step across CPUs or says it is unstable; a task that moved
//! to another CPU in the middle of an exit reads another CPU's counter, and a difference that
//! would come out negative counts as zero.

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::abi::stats::{write_line, Bucket, Counter, BUCKETS};
use crate::abi::PAGE_SIZE;
use crate::traps::{self, Trap};

/// What the host made of a page fault it did not die of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The guest's tables allow the access: the shadow now maps the page, and the guest retries.
    Fixed,
    /// The guest's tables refuse it: the guest's own handler gets the fault.
    Reflected,
    /// An access to device page `page` (counted from the first page above RAM), for the launcher.
    Device { page: u64 },
}

impl Fault {
    /// The device access at guest-physical `gpa`, in a guest with `ram_bytes` of RAM.
    pub fn device(gpa: u64, ram_bytes: u64) -> Fault {
        Fault::Device {
            page: gpa.saturating_sub(ram_bytes) / PAGE_SIZE,
        }
    }
}

/// The bucket of one exit: `vector` is the trap that ended the trip, `rax` the guest's RAX at
/// that moment (a hypercall's number), `fault` what the host made of a page fault, and `died`
/// whether the exit ended the guest, whatever the reason (that is where it is counted).
pub fn exit_bucket(vector: u64, rax: u64, fault: Option<Fault>, died: bool) -> Bucket {
    if died {
        return Bucket::DIED;
    }
    match traps::classify(vector, 0) {
        Trap::Host { .. } => Bucket::HOST_INTERRUPT,
        // A hypercall the guest lived through has a number the host knows, below 32.
        Trap::Hypercall => Bucket::hypercall(rax).unwrap_or(Bucket::DIED),
        Trap::PageFault { .. } => match fault {
            Some(Fault::Reflected) => Bucket::FAULT_REFLECTED,
            Some(Fault::Device { page }) => Bucket::device_page(page),
            Some(Fault::Fixed) | None => Bucket::FAULT_FIXED,
        },
        // Below 32: the host's own vectors (32 and up) are Trap::Host.
        Trap::Fatal => Bucket::trap(vector).unwrap_or(Bucket::HOST_INTERRUPT),
    }
}

/// One bucket as the host keeps it: how many, and their TSC cycles, side by side so that an
/// exit touches one cache line.
struct Cell {
    count: AtomicU64,
    cycles: AtomicU64,
}

/// One guest's buckets: a count and a time for each.
///
/// One writer: the task running the guest, which holds the session's lock. So a count goes up
/// by a load and a store, not a locked instruction on every exit. Readers take no lock
/// (`lguest-stat` must not stop the guest it watches): each number they read is whole, but a
/// snapshot of a running guest may hold an exit's count without its time.
pub struct ExitStats {
    cells: [Cell; BUCKETS],
}

impl Default for ExitStats {
    fn default() -> ExitStats {
        ExitStats {
            cells: core::array::from_fn(|_| Cell {
                count: AtomicU64::new(0),
                cycles: AtomicU64::new(0),
            }),
        }
    }
}

impl ExitStats {
    /// One more in `bucket`, which took `cycles` TSC cycles. Only the guest's running task calls
    /// this (see the type's comment).
    pub fn add(&self, bucket: Bucket, cycles: u64) {
        let cell = &self.cells[bucket.index()];
        let bump =
            |word: &AtomicU64, by: u64| word.store(word.load(Relaxed).wrapping_add(by), Relaxed);
        bump(&cell.count, 1);
        bump(&cell.cycles, cycles);
    }

    /// What `bucket` holds, its time in nanoseconds at `tsc_khz`.
    pub fn get(&self, bucket: Bucket, tsc_khz: u64) -> Counter {
        let cell = &self.cells[bucket.index()];
        Counter {
            count: cell.count.load(Relaxed),
            ns: cycles_to_ns(cell.cycles.load(Relaxed), tsc_khz),
        }
    }

    /// The fdinfo lines, times at `tsc_khz`: `lguest-switches` always, every other bucket once
    /// it has a count.
    pub fn show(&self, tsc_khz: u64, out: &mut impl fmt::Write) -> fmt::Result {
        for bucket in Bucket::all() {
            let counter = self.get(bucket, tsc_khz);
            if counter.count != 0 || bucket == Bucket::SWITCHES {
                write_line(out, bucket, counter)?;
            }
        }
        Ok(())
    }
}

/// `cycles` of a TSC counting `tsc_khz` thousand times a second, in nanoseconds; 0 for a rate
/// of 0 (a TSC the kernel could not calibrate). In two parts, so that nothing overflows 64 bits
/// short of 584 years (the kernel has no 128-bit division).
pub fn cycles_to_ns(cycles: u64, tsc_khz: u64) -> u64 {
    if tsc_khz == 0 {
        return 0;
    }
    let whole_ms = cycles / tsc_khz;
    let rest = cycles % tsc_khz;
    whole_ms
        .wrapping_mul(1_000_000)
        .wrapping_add(rest * 1_000_000 / tsc_khz)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::hcall;
    use crate::abi::stats::Stats;
    use std::string::String;

    #[test]
    fn each_exit_falls_in_its_bucket() {
        let hypercall = hcall::VECTOR as u64;
        let nop = Bucket::hypercall(hcall::NOP);
        assert_eq!(Some(exit_bucket(hypercall, hcall::NOP, None, false)), nop);
        let pf = traps::PAGE_FAULT;
        let fixed = exit_bucket(pf, 0, Some(Fault::Fixed), false);
        assert_eq!(fixed, Bucket::FAULT_FIXED);
        let reflected = exit_bucket(pf, 0, Some(Fault::Reflected), false);
        assert_eq!(reflected, Bucket::FAULT_REFLECTED);
        let device = Fault::device(64 << 20 | 2 << 12 | 0x70, 64 << 20);
        assert_eq!(device, Fault::Device { page: 2 });
        assert_eq!(
            exit_bucket(pf, 0, Some(device), false),
            Bucket::device_page(2)
        );
        assert_eq!(
            Some(exit_bucket(traps::INVALID_OPCODE, 0, None, false)),
            Bucket::trap(6)
        );
        assert_eq!(
            Some(exit_bucket(traps::GENERAL_PROTECTION, 0, None, false)),
            Bucket::trap(13)
        );
        for host in [traps::NMI, traps::MACHINE_CHECK, 0x20, 0xec] {
            assert_eq!(exit_bucket(host, 0, None, false), Bucket::HOST_INTERRUPT);
        }
    }

    #[test]
    fn an_exit_that_ended_the_guest_counts_as_a_death_only() {
        for (vector, rax, fault) in [
            (hcall::VECTOR as u64, hcall::SHUTDOWN, None),
            (traps::PAGE_FAULT, 0, Some(Fault::Reflected)),
            (traps::INVALID_OPCODE, 0, None),
        ] {
            assert_eq!(exit_bucket(vector, rax, fault, true), Bucket::DIED);
        }
        // A power-off is the guest's own end, not a death: it is its hypercall.
        assert_eq!(
            Some(exit_bucket(
                hcall::VECTOR as u64,
                hcall::SHUTDOWN,
                None,
                false
            )),
            Bucket::hypercall(hcall::SHUTDOWN)
        );
    }

    /// A TSC at 1 GHz, one cycle a nanosecond.
    const GHZ: u64 = 1_000_000;

    #[test]
    fn counts_and_times_add_up_per_bucket() {
        let stats = ExitStats::default();
        let nop = Bucket::hypercall(hcall::NOP).unwrap();
        stats.add(Bucket::SWITCHES, 700);
        stats.add(nop, 30);
        stats.add(nop, 12);
        assert_eq!(stats.get(nop, GHZ), Counter { count: 2, ns: 42 });
        assert_eq!(stats.get(Bucket::DIED, GHZ), Counter::default());
        stats.add(Bucket::DIED, u64::MAX);
        stats.add(Bucket::DIED, 2);
        assert_eq!(stats.get(Bucket::DIED, GHZ), Counter { count: 2, ns: 1 });
    }

    #[test]
    fn cycles_become_nanoseconds_at_the_tscs_rate() {
        assert_eq!(cycles_to_ns(2_600_000, 2_600_000), 1_000_000);
        assert_eq!(cycles_to_ns(2_599_999, 2_600_000), 999_999);
        assert_eq!(cycles_to_ns(1, 3_000_000), 0);
        assert_eq!(cycles_to_ns(7, 1_000), 7_000);
        assert_eq!(cycles_to_ns(12_345, 0), 0);
        // A day at 5 GHz: no overflow on the way.
        let day = 86_400 * 5_000_000_000;
        assert_eq!(cycles_to_ns(day, 5_000_000), 86_400 * 1_000_000_000);
        assert_eq!(cycles_to_ns(u64::MAX, GHZ), u64::MAX);
    }

    #[test]
    fn show_prints_what_the_abi_reads_back() {
        let stats = ExitStats::default();
        let mut empty = String::new();
        stats.show(GHZ, &mut empty).unwrap();
        assert_eq!(empty, "lguest-switches:\t0 0\n");
        let irq = Bucket::irq(0).unwrap();
        stats.add(Bucket::SWITCHES, 1000);
        stats.add(Bucket::FAULT_REFLECTED, 40);
        stats.add(irq, 5);
        let mut text = String::from("pos:\t0\nflags:\t02\n");
        stats.show(2 * GHZ, &mut text).unwrap();
        let read = Stats::parse(&text).unwrap();
        for bucket in Bucket::all() {
            assert_eq!(read.get(bucket), stats.get(bucket, 2 * GHZ), "{bucket}");
        }
        assert_eq!(read.get(Bucket::SWITCHES).ns, 500);
        assert_eq!(text.lines().count(), 2 + 3);
    }
}
