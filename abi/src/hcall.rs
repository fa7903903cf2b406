//! Hypercalls: how a guest kernel asks the host for something.
//!
//! A guest kernel runs at ring 1 and may not execute privileged instructions; instead it
//! executes `int $0x1f` ([`VECTOR`]) with the call number in RAX and up to five arguments in RBX,
//! RCX, RDX, RSI and RDI. The host answers in RAX (where a call has an answer) and resumes the
//! guest after the `int`. A call the host does not know, or one whose arguments are wrong, kills
//! the guest with a reason the launcher prints: a guest has no business guessing.
//!
//! The numbers are lguest's where lguest had the call; calls lguest-rs adds start at 20.

/// The interrupt vector of a hypercall: `int $0x1f`, as lguest's `LGUEST_TRAP_ENTRY`. Its IDT
/// gate is the only one a ring-1 guest may use with `int`.
pub const VECTOR: u8 = 0x1f;

/// Register the guest's [`crate::data::LguestData`] page: RBX = its guest-physical address
/// (page-aligned, inside RAM). Must be the first hypercall; the host fills in the fields it owns.
pub const LGUEST_INIT: u64 = 1;
/// Stop the guest: RBX = guest-physical address of a NUL-terminated message (at most
/// [`SHUTDOWN_MESSAGE_MAX`] bytes are read), RCX = [`SHUTDOWN_POWEROFF`] or [`SHUTDOWN_RESTART`].
pub const SHUTDOWN: u64 = 2;
/// Sleep until something needs the guest (an interrupt, once there are any; a signal to the
/// launcher).
pub const HALT: u64 = 10;
/// Write early console output: RBX = guest-physical address, RCX = length (at most
/// [`CONSOLE_WRITE_MAX`]). The bytes go to the launcher, which prints them.
pub const CONSOLE_WRITE: u64 = 20;
/// Do nothing: the cheapest round trip through the host, for measuring the world switch.
pub const NOP: u64 = 21;

/// SHUTDOWN's RCX: power off; the launcher exits with status 0.
pub const SHUTDOWN_POWEROFF: u64 = 0;
/// SHUTDOWN's RCX: restart; the launcher starts the guest afresh.
pub const SHUTDOWN_RESTART: u64 = 1;

/// The longest SHUTDOWN message the host reads, NUL included.
pub const SHUTDOWN_MESSAGE_MAX: usize = 128;
/// The most bytes one CONSOLE_WRITE may carry.
pub const CONSOLE_WRITE_MAX: usize = 1024;
