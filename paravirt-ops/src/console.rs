//! `console`: somewhere to print, from the first instruction on.
//!
//! Natively that is the first serial port, which QEMU's `-nographic` puts on its standard
//! output; under lguest the CONSOLE_WRITE hypercall, whose bytes the launcher prints. Linux has
//! no `pv_ops` member for this: an early console driver per platform (lguest's was `hvc`).

use crate::ops;

/// The `console` group.
pub struct ConsoleOps {
    /// Writes `bytes` out, all of them, before returning.
    pub write: fn(bytes: &[u8]),
}

/// Writes `bytes` to the console.
pub fn write(bytes: &[u8]) {
    (ops().console.write)(bytes)
}

/// Collects formatted output and hands it to a write function when full and when dropped.
///
/// Natively that costs nothing; under lguest each write is a hypercall, a world switch, so
/// one per `print!` rather than one per formatted piece matters. The write function is a
/// parameter because a guest that has not installed the ops table (the ring-1 test guest) makes
/// the hypercall itself.
pub struct BufferedWriter {
    write: fn(bytes: &[u8]),
    buf: [u8; 256],
    len: usize,
}

impl BufferedWriter {
    /// An empty buffer in front of `write`.
    pub fn new(write: fn(bytes: &[u8])) -> BufferedWriter {
        BufferedWriter {
            write,
            buf: [0; 256],
            len: 0,
        }
    }

    fn flush(&mut self) {
        if self.len > 0 {
            (self.write)(&self.buf[..self.len]);
            self.len = 0;
        }
    }
}

impl core::fmt::Write for BufferedWriter {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
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

impl Drop for BufferedWriter {
    fn drop(&mut self) {
        self.flush();
    }
}
