//! Warnings a guest can cause as often as it likes, kept to a few lines.
//!
//! Serving the guest's devices, the launcher warns when the guest breaks the rules: a register
//! that does not exist, a descriptor outside its memory, a request no device can serve. Each is
//! worth a line the first few times, to whoever debugs a driver; but a guest that repeats one
//! in a loop must not fill the host's disk with its log, nor spend the launcher's time on
//! writing it. So [`guest_warn!`](crate::guest_warn) counts each kind (each place that warns)
//! and logs the first [`SHOWN_IN_FULL`] in full, then only the 16th, 32nd, 64th... with the
//! count: a few dozen lines over the life of any launcher, and still a sign of how many.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// How many warnings of a kind are logged before only powers of two are.
pub const SHOWN_IN_FULL: u64 = 10;

/// Logs a warning, as `log::warn!` does, unless its kind was seen too often already (see the
/// module's documentation). Each place the macro is written is a kind of its own.
#[macro_export]
macro_rules! guest_warn {
    ($($arg:tt)+) => {{
        static SEEN: $crate::ratelimit::Seen = $crate::ratelimit::Seen::new();
        if let Some(note) = SEEN.record() {
            ::log::warn!("{}{}", format_args!($($arg)+), note);
        }
    }};
}

/// How many times one kind of warning was given.
#[derive(Default)]
pub struct Seen(AtomicU64);

impl Seen {
    /// No warning yet; `const`, for the macro's `static`.
    pub const fn new() -> Seen {
        Seen(AtomicU64::new(0))
    }

    /// Counts one more; says what to add to the warning if it is to be logged.
    pub fn record(&self) -> Option<Note> {
        let seen = self.0.fetch_add(1, Ordering::Relaxed) + 1;
        match seen {
            SHOWN_IN_FULL => Some(Note::LastInFull),
            ..SHOWN_IN_FULL => Some(Note::None),
            _ if seen.is_power_of_two() => Some(Note::Count(seen)),
            _ => None,
        }
    }
}

/// What a logged warning says of its count.
#[derive(Debug, PartialEq, Eq)]
pub enum Note {
    None,
    /// The last one logged in full.
    LastInFull,
    /// Logged because its count is a power of two.
    Count(u64),
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Note::None => Ok(()),
            Note::LastInFull => write!(
                f,
                " ({SHOWN_IN_FULL} times: from now on only the 16th, 32nd, 64th... are shown)"
            ),
            Note::Count(seen) => write!(f, " ({seen} times)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_ten_then_powers_of_two_are_logged() {
        let seen = Seen::new();
        let logged: Vec<(u64, String)> = (1..=1000)
            .filter_map(|n| seen.record().map(|note| (n, note.to_string())))
            .collect();
        let numbers: Vec<u64> = logged.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            numbers,
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 16, 32, 64, 128, 256, 512]
        );
        assert_eq!(logged[0].1, "");
        assert_eq!(
            logged[9].1,
            " (10 times: from now on only the 16th, 32nd, 64th... are shown)"
        );
        assert_eq!(logged[10].1, " (16 times)");
    }
}
