//! `print!` and `println!` for a kernel whose only output device is a hypercall.
//!
//! Formatting goes into a small buffer on the stack, which is handed to the host with
//! CONSOLE_WRITE when it fills up and at the end of each `print!`: one hypercall per line, not
//! one per formatted piece, since each hypercall is a world switch.

use core::fmt::{self, Write};

use crate::hcall::console_write;

/// Collects output and writes it out when full and when dropped.
pub struct Console {
    buf: [u8; 256],
    len: usize,
}

impl Console {
    pub fn new() -> Console {
        Console {
            buf: [0; 256],
            len: 0,
        }
    }

    fn flush(&mut self) {
        if self.len > 0 {
            console_write(&self.buf[..self.len]);
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
    // Formatting into a Console cannot fail.
    let _ = Console::new().write_fmt(args);
}

#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => ($crate::console::print(format_args!($($arg)*)));
}

#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => ($crate::console::print(format_args!("{}\n", format_args!($($arg)*))));
}
