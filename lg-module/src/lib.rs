//! The hardware-free half of lg.ko.
//!
//! lg.ko is built by Kbuild (see `lg-module/Kbuild`), which compiles `lg-module/lguest.rs` as the
//! crate root; that file includes the modules below by path, the very same files this crate
//! compiles for the unit tests. So every decision the host makes without touching hardware
//! (which requests to accept, how a guest page table is walked) is tested here with plain
//! `cargo test`, and runs unchanged in the kernel.
//!
//! Files included into the module must not use `std` outside `#[cfg(test)]`, and reach the ABI
//! as `crate::abi`, which both crate roots provide.
#![no_std]
// A guest's death reason is a fixed buffer (there is no allocator in the module's shared code);
// it is returned only on the way to killing a guest, never in a loop.
#![allow(clippy::result_large_err)]

#[cfg(test)]
extern crate std;

pub use lguest_abi as abi;

pub mod address;
pub mod death;
pub mod descriptors;
pub mod emulate;
pub mod exit;
pub mod fast_syscall;
pub mod guest_ram;
pub mod host_cpu;
pub mod hypercall;
pub mod interrupts;
pub mod layout;
pub mod layout_header;
pub mod pagewalk;
pub mod session;
pub mod shadow;
pub mod stats;
pub mod traps;
