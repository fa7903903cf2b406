//! 4. `print!` and `println!` over the console op.
//!
//! Formatting goes into a small buffer on the stack, handed to the console op when it fills up
//! and at the end of each `print!`. Natively that costs nothing; under lguest each write is a
//! hypercall, a world switch, so one per line rather than one per formatted piece matters.

use core::fmt::{self, Write};

/// Collects output and writes it out when full and when dropped.
struct Console {
    buf: [u8; 256],
    len: usize,
}

impl Console {
    fn flush(&mut self) {
        if self.len > 0 {
            paravirt_ops::console::write(&self.buf[..self.len]);
            self.len = 0;
        }
    }
}

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &byte in s.as_bytes() {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = byte;
            self.len += 1;
        }
        Ok(())
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.flush();
    }
}

/// What the macros call.
pub fn print(args: fmt::Arguments) {
    let mut console = Console {
        buf: [0; 256],
        len: 0,
    };
    // Formatting into a Console cannot fail.
    let _ = console.write_fmt(args);
}

#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => ($crate::console::print(format_args!($($arg)*)));
}

#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => ($crate::console::print(format_args!("{}\n", format_args!($($arg)*))));
}
