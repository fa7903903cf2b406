//! `print!` and `println!` for a kernel whose only output device is a hypercall.
//!
//! Formatting goes into a small buffer on the stack (`paravirt_ops::console::BufferedWriter`),
//! which is handed to the host with CONSOLE_WRITE when it fills up and at the end of each
//! `print!`: one hypercall per line, not one per formatted piece, since each hypercall is a world
//! switch.

use core::fmt::{self, Write};

use paravirt_ops::console::BufferedWriter;

use crate::hcall::console_write;

/// What the macros call.
pub fn print(args: fmt::Arguments) {
    // Formatting into a BufferedWriter cannot fail.
    let _ = BufferedWriter::new(console_write).write_fmt(args);
}

#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => ($crate::console::print(format_args!($($arg)*)));
}

#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => ($crate::console::print(format_args!("{}\n", format_args!($($arg)*))));
}
