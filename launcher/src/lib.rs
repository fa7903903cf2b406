//! The lguest-rs launcher: the user-space half of a guest.
//!
//! `lguest-launcher 64m bzImage console=hvc0` turns a kernel file into a running guest. The
//! launcher is an ordinary process; the guest's "physical" memory is part of its own address
//! space, and lg.ko runs the guest inside that memory when the launcher asks. The journey of a
//! kernel image, one module per step:
//!
//! 1. [`cli`]: the command line is read and checked before anything is opened; [`size`] turns
//!    `64m` (or `64`: MiB) into a byte count, refused early if lg.ko would refuse it later.
//! 2. [`memory`]: one anonymous mapping becomes guest RAM, guest-physical 0 at [`GuestRam::base`],
//!    with a guard page on either side; everything below writes it through vm-memory's
//!    bounds-checked accessors.
//! 3. [`kernel`]: the file is opened as a bzImage (its compressed payload found and unpacked)
//!    or as an ELF vmlinux; its segments are copied to the physical addresses they name, and its
//!    lguest ELF note gives the entry point. A kernel without that note was not built for lguest
//!    and would run privileged instructions at once, so it is refused.
//! 4. [`boot_params`]: the rest of memory is laid out around the kernel (initrd, page tables at
//!    the top of RAM) and described in boot_params, with the command line, an e820 map and
//!    `hardware_subarch` saying "lguest".
//! 5. [`pagetables`]: the guest starts in long mode with paging on, so the launcher builds its
//!    first page tables: RAM identity-mapped and at the kernel's link address.
//! 6. [`device`]: `/dev/lguest` is opened and told, in one INITIALIZE, where memory, entry point,
//!    page tables and boot_params are. From then on each `read()` runs the guest until it needs
//!    the launcher. The guest pages lg.ko pins count against the launcher's locked-memory limit,
//!    which [`memlock`] raises (or warns about) first.
//! 7. [`virtio`]: the devices (console, disks, network, entropy) get one page each above RAM,
//!    named on the guest's command line; their input threads raise IRQs through `/dev/lguest`.
//!    [`terminal`] puts a terminal on stdin in raw mode for the console, and always back.
//! 8. [`confine`] and [`seccomp`]: with everything open, the launcher gives up what it no longer
//!    needs: its root directory (`--chroot`), root itself (`--user`), and every system call but
//!    the few the run loop and the devices make (a seccomp filter, unless `--no-seccomp`).
//! 9. [`run`]: the loop around those reads: early console output printed, device accesses
//!    decoded ([`mmio_decode`]) and handed to the devices, and the guest's end (power off,
//!    restart, death with the host's reason) handed back to main.rs. A guest breaking the
//!    devices' rules gets a warning, a few of each kind ([`ratelimit`]).
//! 10. [`supervise`]: all of the above happens in a child process, which the launcher forks
//!     and waits for; a guest that reboots gets a fresh one, which sets it up and confines
//!     itself again (under `--no-reboot`, the launcher's own process runs the guest).
//!
//! [`GuestRam::base`]: memory::GuestRam::base

pub mod boot_params;
pub mod cli;
pub mod confine;
pub mod device;
pub mod kernel;
pub mod memlock;
pub mod memory;
pub mod mmio_decode;
pub mod pagetables;
pub mod ratelimit;
pub mod run;
pub mod seccomp;
pub mod size;
pub mod stats;
pub mod supervise;
pub mod terminal;
pub mod virtio;
