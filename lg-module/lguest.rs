// SPDX-License-Identifier: GPL-2.0
//! lg.ko: the host side of lguest-rs.
//!
//! This is where the journey crosses into the kernel. The launcher opens `/dev/lguest`, and
//! each open file becomes one guest: INITIALIZE tells us where the launcher mapped the guest's
//! memory, where its kernel starts and which page tables it starts on; GETREG and SETREG read
//! and change its registers; `read()` runs it at ring 1 through the Switcher until it needs
//! the launcher.
//!
//! The module is split the way it is tested:
//! - kernel-facing files: `chardev.rs` (the misc device, file operations, what a guest holds on
//!   its launcher), `switcher.rs` (the Switcher's pages), `shadow_tables.rs` (a guest's page
//!   tables), `run.rs` (the run loop), `cpu.rs` (privileged instructions), `session_lock.rs`
//!   (a lock whose waiters can be killed), `helpers.c`;
//! - `../switcher/switcher.S`: the world switch itself;
//! - `src/`: what the host decides without touching hardware (which requests to accept, how to
//!   walk a guest page table, which bucket an exit is counted in). Those files are also a
//!   workspace crate, unit-tested by `cargo test -p lg-module`; here they are included by path,
//!   unchanged.
//! - `../abi/src`: the ABI, the same files the launcher and guests compile.

// As in src/lib.rs: a guest's death reason is a fixed buffer (there is no allocator in the
// shared code), returned only on the way to killing a guest, never in a loop; the kernel-facing
// files pass it on the same way.
#![allow(clippy::result_large_err)]

use kernel::prelude::*;

module! {
    type: Lguest,
    name: "lg",
    author: "lguest-rs developers",
    description: "lguest-rs: paravirtualized 64-bit guests at ring 1",
    license: "GPL",
}

// The shared files are public APIs of workspace crates, hence `pub` items the kernel's
// -Wunreachable-pub would flag here. The module uses the decoding half of the ABI; the encoding
// half and the guest-side constants belong to the launcher and guests.
#[allow(unreachable_pub, dead_code)]
#[path = "../abi/src/lib.rs"]
mod abi;
mod chardev;
mod cpu;
#[allow(unreachable_pub)]
#[path = "src/death.rs"]
mod death;
#[allow(unreachable_pub)]
#[path = "src/descriptors.rs"]
mod descriptors;
#[allow(unreachable_pub)]
#[path = "src/emulate.rs"]
mod emulate;
#[allow(unreachable_pub)]
#[path = "src/exit/mod.rs"]
mod exit;
#[allow(unreachable_pub)]
#[path = "src/fast_syscall.rs"]
mod fast_syscall;
mod fpu;
#[allow(unreachable_pub)]
#[path = "src/host_cpu.rs"]
mod host_cpu;
#[allow(unreachable_pub)]
#[path = "src/hypercall.rs"]
mod hypercall;
#[allow(unreachable_pub)]
#[path = "src/interrupts.rs"]
mod interrupts;
#[allow(unreachable_pub, dead_code)]
#[path = "src/layout.rs"]
mod layout;
#[allow(unreachable_pub)]
#[path = "src/pagewalk.rs"]
mod pagewalk;
mod run;
#[allow(unreachable_pub)]
#[path = "src/session.rs"]
mod session;
mod session_lock;
#[allow(unreachable_pub)]
#[path = "src/shadow.rs"]
mod shadow;
mod shadow_tables;
#[allow(unreachable_pub)]
#[path = "src/stats.rs"]
mod stats;
mod switcher;
#[allow(unreachable_pub)]
#[path = "src/traps.rs"]
mod traps;

struct Lguest {
    // Fields drop in order: the device goes (no file is open: each holds the module) before
    // the Switcher it hands to files.
    _dev: chardev::Registration,
    _switcher: Pin<KBox<switcher::Switcher>>,
}

impl kernel::Module for Lguest {
    fn init(module: &'static ThisModule) -> Result<Self> {
        let switcher = switcher::Switcher::new()?;
        // SAFETY: The Switcher is pinned in a box that lives in the module struct, so until
        // the module is unloaded; the device (and every file, which holds the module) is gone
        // before then.
        let shared: &'static switcher::Switcher = unsafe { &*(&*switcher as *const _) };
        Ok(Lguest {
            _dev: chardev::Registration::new(module, shared)?,
            _switcher: switcher,
        })
    }
}
