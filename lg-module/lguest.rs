// SPDX-License-Identifier: GPL-2.0
//! lg.ko: the host side of lguest-rs.
//!
//! This is where the journey crosses into the kernel. The launcher opens `/dev/lguest`, and
//! each open file becomes one guest: INITIALIZE tells us where the launcher mapped the guest's
//! memory, where its kernel starts and which page tables it starts on; GETREG and SETREG read
//! and change its registers. Running the guest (the Switcher, at ring 1) comes next, in issue #3.
//!
//! The module is split the way it is tested:
//! - `chardev.rs`: the only part that touches the kernel: the misc device, the file
//!   operations, user memory, and the references a guest holds on its launcher;
//! - `src/`: what the host decides without touching hardware (which requests to accept, how to
//!   walk a guest page table). Those files are also a workspace crate, unit-tested by
//!   `cargo test -p lg-module`; here they are included by path, unchanged.
//! - `../abi/src`: the ABI, the same files the launcher and guests compile.

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
#[allow(unreachable_pub)]
#[path = "src/pagewalk.rs"]
mod pagewalk;
#[allow(unreachable_pub)]
#[path = "src/session.rs"]
mod session;

struct Lguest {
    _dev: chardev::Registration,
}

impl kernel::Module for Lguest {
    fn init(module: &'static ThisModule) -> Result<Self> {
        Ok(Lguest { _dev: chardev::Registration::new(module)? })
    }
}
