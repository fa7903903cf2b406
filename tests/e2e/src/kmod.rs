//! Loading and unloading lg.ko.
//!
//! The tests call finit_module and delete_module themselves instead of running busybox's
//! insmod and rmmod: the syscalls' errnos are the facts to assert (an rmmod refused because
//! the module is in use, not because it does not exist), and no applet's wording can blur them.

use std::ffi::CStr;
use std::fs::File;

use anyhow::{bail, Context};
use nix::errno::Errno;
use nix::kmod::{delete_module, finit_module, DeleteModuleFlags, ModuleInitFlags};

use crate::procfs::{self, Module};

/// Where the initramfs keeps the module.
pub const MODULE_PATH: &str = "/lib/modules/lg.ko";
/// The module's name, as /proc/modules and delete_module know it.
const NAME: &CStr = c"lg";

/// lg.ko's line in /proc/modules, if it is loaded.
pub fn loaded() -> anyhow::Result<Option<Module>> {
    let name = NAME.to_str().expect("the module name is ASCII");
    procfs::module(&procfs::read("/proc/modules")?, name)
}

/// insmod lg.ko.
pub fn load() -> anyhow::Result<()> {
    let file = File::open(MODULE_PATH).with_context(|| format!("cannot open {MODULE_PATH}"))?;
    finit_module(&file, c"", ModuleInitFlags::empty())
        .with_context(|| format!("insmod {MODULE_PATH} failed"))
}

/// rmmod lg, returning the kernel's errno if it refuses.
pub fn unload() -> Result<(), Errno> {
    // O_NONBLOCK is what rmmod passes: fail at once if the module is in use. (Since Linux 3.13
    // the kernel never waits anyway; see kernel/module/main.c:/try_stop_module/.)
    delete_module(NAME, DeleteModuleFlags::O_NONBLOCK)
}

/// Loads lg.ko unless it already is: scenarios start from "the module is loaded".
pub fn ensure_loaded() -> anyhow::Result<()> {
    if loaded()?.is_none() {
        load()?;
    }
    Ok(())
}

/// Unloads lg.ko if it is loaded, and checks it is gone.
pub fn ensure_unloaded() -> anyhow::Result<()> {
    if loaded()?.is_some() {
        unload().map_err(|e| anyhow::anyhow!("rmmod lg failed: {e:?}"))?;
    }
    if let Some(module) = loaded()? {
        bail!(
            "lg is still in /proc/modules after rmmod (state {})",
            module.state
        );
    }
    Ok(())
}
