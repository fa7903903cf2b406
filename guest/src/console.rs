//! 4. `print!` and `println!` over the console op.
//!
//! Formatting goes into a small buffer on the stack (`paravirt_ops::console::BufferedWriter`),
//! handed to the console op when it fills up and at the end of each `print!`. Natively that costs
//! nothing; under lguest each write is a hypercall, a world switch, so one per line rather than
//! one per formatted piece matters.

use core::fmt::{self, Write};

use paravirt_ops::console::BufferedWriter;

/// What the macros call.
pub fn print(args: fmt::Arguments) {
    // Formatting into a BufferedWriter cannot fail.
    let _ = BufferedWriter::new(paravirt_ops::console::write).write_fmt(args);
}

#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => ($crate::console::print(format_args!($($arg)*)));
}

#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => ($crate::console::print(format_args!("{}\n", format_args!($($arg)*))));
}
