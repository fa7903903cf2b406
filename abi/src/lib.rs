//! The lguest-rs ABI: everything two sides must agree on, written down once.
//!
//! This crate is the contract between the three parties of the story:
//! - the **launcher** (user space), which writes requests to `/dev/lguest` ([`dev`]) and reads
//!   and sets the guest's registers ([`regs`]);
//! - **lg.ko** (the host kernel module), which decodes the same requests; it compiles these very
//!   files into itself (see `lg-module/lguest.rs`), so the two can never drift apart;
//! - the **guest**, whose kernel image carries the note that says it was built for lguest and
//!   which starts on the segments and page tables described in [`boot`].
//!
//! It has no dependencies and no `unsafe`: plain constants, plain structs, and the byte
//! encodings that cross the user/kernel boundary.
// The kernel build compiles this file as a module of lg.ko, where `no_std` is already the rule
// and a crate-level attribute would be out of place; everywhere else it is a `no_std` crate.
#![cfg_attr(not(MODULE), no_std)]
#![forbid(unsafe_code)]

pub mod boot;
pub mod data;
pub mod dev;
pub mod exit;
pub mod hcall;
pub mod paging;
pub mod privileged;
pub mod regs;
pub mod stats;

/// Guests run on 4 KiB pages; every size and address in this ABI that names a page uses it.
pub const PAGE_SIZE: u64 = 4096;
