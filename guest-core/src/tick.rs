//! The periodic tick's deadlines (guest/src/timer.rs arms the timer with what this decides).
//!
//! Each tick has an absolute deadline on the clock, a period after the last one's. The handler
//! arms the one-shot timer for the time left until the next deadline, not for a whole period
//! from now, so a tick that arrives late does not push every later one back (Linux's
//! `hrtimer_forward`). A tick so late that whole deadlines went by unserved does not catch up
//! with a burst: the deadlines it missed are counted as lost, and the next is the first still
//! ahead.

use crate::clock;

/// What the tick handler does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextTick {
    /// The next deadline on the clock, in nanoseconds (modulo 2^64, see [`clock::reached`]).
    pub deadline: u64,
    /// How far away it is: what to arm the one-shot timer for. At least 1, as arming for 0
    /// disarms it.
    pub delay_ns: u64,
    /// Deadlines that went by without a tick of their own.
    pub lost: u64,
}

/// The tick due at `deadline` came, and is handled at `now`: the next one, a period of
/// `period_ns` on, or the first such deadline still ahead. `None` if the period is 0, which
/// means the tick is stopped.
pub fn next_tick(deadline: u64, period_ns: u64, now: u64) -> Option<NextTick> {
    if period_ns == 0 {
        return None;
    }
    let mut next = deadline.wrapping_add(period_ns);
    let mut lost = 0;
    if clock::reached(now, next) {
        lost = now.wrapping_sub(next) / period_ns + 1;
        next = next.wrapping_add(lost.wrapping_mul(period_ns));
    }
    Some(NextTick {
        deadline: next,
        delay_ns: next.wrapping_sub(now).max(1),
        lost,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_tick_on_time_arms_for_the_rest_of_the_period() {
        let tick = next_tick(10 * MS, MS, 10 * MS + 200_000).unwrap();
        assert_eq!(
            tick,
            NextTick {
                deadline: 11 * MS,
                delay_ns: 800_000,
                lost: 0
            }
        );
    }

    #[test]
    fn a_late_tick_does_not_push_the_next_one_back() {
        let tick = next_tick(10 * MS, MS, 10 * MS + 999_999).unwrap();
        assert_eq!((tick.deadline, tick.delay_ns, tick.lost), (11 * MS, 1, 0));
    }

    #[test]
    fn a_tick_at_the_next_deadline_exactly_loses_that_one() {
        let tick = next_tick(10 * MS, MS, 11 * MS).unwrap();
        assert_eq!((tick.deadline, tick.delay_ns, tick.lost), (12 * MS, MS, 1));
    }

    #[test]
    fn deadlines_missed_for_good_are_counted_not_caught_up() {
        let tick = next_tick(10 * MS, MS, 15 * MS + 300_000).unwrap();
        assert_eq!(tick.deadline, 16 * MS);
        assert_eq!(tick.delay_ns, 700_000);
        assert_eq!(tick.lost, 5, "11, 12, 13, 14 and 15 went by");
    }

    #[test]
    fn a_stopped_tick_has_no_next() {
        assert_eq!(next_tick(10 * MS, 0, 20 * MS), None);
    }

    #[test]
    fn a_handler_run_early_still_waits_for_the_next_deadline() {
        // A spurious interrupt before the deadline: the next one is still a period on.
        let tick = next_tick(10 * MS, MS, 9 * MS).unwrap();
        assert_eq!(
            (tick.deadline, tick.delay_ns, tick.lost),
            (11 * MS, 2 * MS, 0)
        );
    }

    #[test]
    fn a_deadline_that_wraps_past_the_top_of_the_clock() {
        let deadline = u64::MAX - MS / 2;
        let tick = next_tick(deadline, MS, deadline + 100).unwrap();
        assert_eq!(tick.deadline, MS / 2 - 1, "wrapped");
        assert_eq!(tick.delay_ns, MS - 100);
        assert_eq!(tick.lost, 0);
    }

    #[test]
    fn ticks_lost_across_the_wrap_are_counted() {
        let deadline = u64::MAX - MS / 2;
        let now = 3 * MS;
        let tick = next_tick(deadline, MS, now).unwrap();
        // Deadlines at MS/2 - 1, 3 MS/2 - 1 and 5 MS/2 - 1 went by; the next is 7 MS/2 - 1.
        assert_eq!(tick.lost, 3);
        assert_eq!(tick.deadline, 7 * MS / 2 - 1);
        assert_eq!(tick.delay_ns, MS / 2 - 1);
    }
}
