//! The clock's arithmetic: the TSC's cycles as nanoseconds, the PIT's counts, and deadlines.
//!
//! paravirt-ops' time ops read the hardware (`rdtsc`, the PIT's ports, lguest_data's `tsc_khz`)
//! and do their sums here: the overflows a clock meets only after hours, or with a wait longer
//! than the PIT can count, are the kind a test finds and a boot does not.

/// The PIT's input clock, in Hz (a 14.31818 MHz crystal divided by 12, since the IBM PC).
pub const PIT_HZ: u64 = 1_193_182;

/// The longest one-shot delay every backend honours: the PIT's 16-bit counter at [`PIT_HZ`].
pub const MAX_DELTA_NS: u64 = 54_925_000;

const NS_PER_SECOND: u64 = 1_000_000_000;

/// Nanoseconds for `cycles` of a TSC running at `tsc_khz` kHz (a rate of 0, which no CPU has,
/// is taken as 1 kHz rather than divided by). The product takes 128 bits: cycles × 10^6 in 64
/// would overflow after a few hours of a 3 GHz TSC.
pub fn cycles_to_ns(cycles: u64, tsc_khz: u64) -> u64 {
    let ns = u128::from(cycles) * 1_000_000 / u128::from(tsc_khz.max(1));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// The TSC's rate in kHz, from `cycles` counted while the PIT counted `pit_ticks` (both
/// nonzero after a calibration; a count of 0 is taken as 1).
pub fn tsc_khz(cycles: u64, pit_ticks: u64) -> u64 {
    let khz = u128::from(cycles) * u128::from(PIT_HZ) / (u128::from(pit_ticks.max(1)) * 1000);
    u64::try_from(khz).unwrap_or(u64::MAX)
}

/// The PIT count that raises its interrupt `ns` nanoseconds from now: at least 1 (a count of 0
/// would mean 65536), at most the counter's 0xffff, so a longer wait ends early, after
/// [`MAX_DELTA_NS`], and whoever asked re-arms for the rest.
pub fn pit_count(ns: u64) -> u16 {
    let count = u128::from(ns) * u128::from(PIT_HZ) / u128::from(NS_PER_SECOND);
    u16::try_from(count).unwrap_or(u16::MAX).max(1)
}

/// How many PIT ticks went by between two readings of a counter that counts down and, in mode
/// 0, goes on from 0xffff after 0: fewer than 65536 must have passed.
pub fn pit_ticks_between(earlier: u16, later: u16) -> u64 {
    u64::from(earlier.wrapping_sub(later))
}

/// Whether clock time `now` is at or past `deadline`. Both are nanoseconds modulo 2^64 and
/// compared as Linux's `time_after_eq` compares jiffies, so a deadline computed past the top
/// wraps and is still reached in order, as long as the two are within 2^63 ns (292 years).
pub fn reached(now: u64, deadline: u64) -> bool {
    now.wrapping_sub(deadline) < 1 << 63
}

#[cfg(test)]
mod tests {
    use super::*;

    const GHZ_3: u64 = 3_000_000;

    #[test]
    fn cycles_become_nanoseconds_at_the_rate() {
        assert_eq!(cycles_to_ns(3_000, GHZ_3), 1_000);
        assert_eq!(cycles_to_ns(2_700_000_000, 2_700_000), NS_PER_SECOND);
        assert_eq!(cycles_to_ns(0, GHZ_3), 0);
    }

    #[test]
    fn a_day_of_tsc_does_not_overflow() {
        let day = 86_400;
        assert_eq!(
            cycles_to_ns(day * 3_000_000_000, GHZ_3),
            day * NS_PER_SECOND
        );
    }

    #[test]
    fn nonsense_rates_neither_divide_by_zero_nor_wrap() {
        assert_eq!(cycles_to_ns(5, 0), 5_000_000);
        assert_eq!(cycles_to_ns(u64::MAX, 1), u64::MAX);
    }

    #[test]
    fn calibration_gives_the_rate_back() {
        // 50 ms of PIT ticks, and the cycles a 2.7 GHz TSC counts meanwhile.
        let ticks = PIT_HZ * 50 / 1000;
        let cycles = 2_700_000_000 * ticks / PIT_HZ;
        let khz = tsc_khz(cycles, ticks);
        assert!((2_699_990..=2_700_010).contains(&khz), "{khz} kHz");
        assert_eq!(tsc_khz(1000, 0), 1000 * PIT_HZ / 1000);
    }

    #[test]
    fn pit_counts_are_the_delay_at_its_rate() {
        assert_eq!(pit_count(NS_PER_SECOND / 1000), 1193);
        assert_eq!(pit_count(1), 1, "never 0, which the PIT reads as 65536");
        assert_eq!(pit_count(0), 1);
    }

    #[test]
    fn the_longest_delay_is_the_whole_counter() {
        // MAX_DELTA_NS fills the counter, and one PIT tick less does not: it is the longest
        // wait the PIT counts, neither cut short nor shorter than it need be.
        let pit_tick_ns = NS_PER_SECOND / PIT_HZ + 1;
        assert_eq!(pit_count(MAX_DELTA_NS), u16::MAX);
        assert!(pit_count(MAX_DELTA_NS - pit_tick_ns) < u16::MAX);
    }

    #[test]
    fn a_wait_of_hours_is_cut_to_the_counter_and_does_not_wrap() {
        // ns × PIT_HZ passes 2^64 after about 4 hours: in 64 bits the count would be garbage.
        assert_eq!(pit_count(5 * 3600 * NS_PER_SECOND), u16::MAX);
        assert_eq!(pit_count(u64::MAX), u16::MAX);
    }

    #[test]
    fn pit_readings_across_the_wrap_count_the_ticks_between() {
        assert_eq!(pit_ticks_between(0x1000, 0x0f00), 0x100);
        assert_eq!(pit_ticks_between(0x0010, 0xfff0), 0x20);
        assert_eq!(pit_ticks_between(0x1234, 0x1234), 0);
    }

    #[test]
    fn deadlines_are_reached_at_and_after_them() {
        assert!(!reached(99, 100));
        assert!(reached(100, 100));
        assert!(reached(101, 100));
    }

    #[test]
    fn a_deadline_past_the_top_of_the_clock_wraps() {
        let now = u64::MAX - 10;
        let deadline = now.wrapping_add(20);
        assert!(deadline < now, "the deadline wrapped");
        assert!(!reached(now, deadline));
        assert!(!reached(u64::MAX, deadline));
        assert!(reached(deadline, deadline));
        assert!(reached(deadline + 5, deadline));
    }
}
