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
