//! Why a guest died: one sentence, formatted without an allocator.
//!
//! When a guest breaks a rule the host kills it, and the reason is the launcher's last line
//! (`lguest-launcher: guest died: <reason>`). Only the first reason counts: once dead, a guest
//! never runs again, and later complaints would only hide the cause (lguest's `kill_guest`).

use core::fmt;

/// The longest reason kept, in bytes; longer ones are cut.
pub const REASON_MAX: usize = 200;

/// A reason, formatted into a fixed buffer.
#[derive(Clone, Copy)]
pub struct Death {
    buf: [u8; REASON_MAX],
    len: usize,
}

impl Death {
    /// Format a reason; use the [`crate::death!`] macro.
    pub fn new(args: fmt::Arguments<'_>) -> Death {
        let mut death = Death {
            buf: [0; REASON_MAX],
            len: 0,
        };
        // Writing into the buffer cannot fail: text past the end is dropped.
        let _ = fmt::write(&mut death, args);
        death
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl fmt::Write for Death {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let take = s.len().min(REASON_MAX - self.len);
        self.buf[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

impl fmt::Debug for Death {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Death({:?})",
            core::str::from_utf8(self.as_bytes()).unwrap_or("?")
        )
    }
}

impl PartialEq for Death {
    fn eq(&self, other: &Death) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

/// `death!("format", args...)`: a [`Death`] with that reason.
#[macro_export]
macro_rules! death {
    ($($arg:tt)*) => {
        $crate::death::Death::new(format_args!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_and_cuts() {
        let d = crate::death!("trap {} at {:#x}", 13, 0x200000);
        assert_eq!(d.as_bytes(), b"trap 13 at 0x200000");
        let long = crate::death!("{:>300}", "x");
        assert_eq!(long.as_bytes().len(), super::REASON_MAX);
    }
}
