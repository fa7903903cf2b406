//! The teaching guest's decisions that touch no hardware, where the host can test them.
//!
//! A kernel is mostly hardware access, but not all of it: which frame to hand out next, when the
//! next tick is due, what a command line asks for, whether a frame off the wire is the echo
//! reply we wait for. Those are plain computations on plain values, and this crate holds them,
//! so that `cargo test --workspace` runs them on the host (the kernels themselves are built for
//! bare x86-64, where no test harness runs). The teaching guest (`guest/`) and its paravirt-ops
//! crate (`paravirt-ops/`) build it for `x86_64-unknown-none` and wrap it in what needs the
//! machine: a lock with interrupts off, the frames' memory, the clock, the ports. lg.ko keeps
//! its own decisions in `lg-module/src` for the same reason.
//!
//! - [`frames`]: the memory map a boot loader reports, and which of its frames were never
//!   handed out (guest/src/frames.rs adds the zeroing and the free list).
//! - [`tick`]: the periodic tick's absolute deadlines, late and lost ticks (guest/src/timer.rs).
//! - [`clock`]: the TSC's cycles as nanoseconds, and the PIT's counts (paravirt-ops' time ops).
//! - [`cmdline`]: the command line, its mode and its parameters (guest/src/main.rs).
//! - [`virtio_mmio`]: the `virtio_mmio.device=` words that say where the devices are
//!   (guest/src/virtio/mod.rs).
//! - [`ping`]: the Ethernet, ARP, IPv4 and ICMP frames of devices mode's ping.
//! - [`disk_pattern`]: the pattern the block device's test writes and reads back.
#![no_std]
#![forbid(unsafe_code)]

pub mod clock;
pub mod cmdline;
pub mod disk_pattern;
pub mod frames;
pub mod ping;
pub mod tick;
pub mod virtio_mmio;
