// SPDX-License-Identifier: GPL-2.0
//! `/dev/lguest` itself: the misc device lg.ko registers at load and removes at unload.
//!
//! This is where the kernel learns that lg.ko exists. [`Registration`] hands the misc subsystem
//! a device named `lguest` and the table of file operations behind it (`file_ops.rs`), and keeps
//! both, with the module's Switcher, in one heap block the kernel points into: each file opened
//! on the device finds its Switcher there ([`switcher_of`]). The operations name lg.ko as their
//! owner, so the kernel holds a module reference for each open file: `rmmod lg` is refused
//! while a guest exists.

use crate::file_ops::{lguest_open, lguest_read, lguest_release, lguest_show_fdinfo, lguest_write};
use crate::lg_bindings;
use crate::switcher::Switcher;
use kernel::{bindings, c_str, error::to_result, prelude::*, types::Opaque};

/// The registered misc device and the tables it points to.
///
/// # Invariants
///
/// `misc` is registered with the misc subsystem from `new` until `drop`, and points to `fops`;
/// both live in one heap block that never moves, so the pointers the kernel holds stay valid.
pub(crate) struct Registration {
    tables: KBox<Tables>,
}

struct Tables {
    fops: bindings::file_operations,
    misc: Opaque<lg_bindings::miscdevice>,
    /// Handed to each file at open().
    switcher: &'static Switcher,
}

// SAFETY: After `new`, Rust code never touches the tables again except to pass `misc` to
// misc_deregister; the C side synchronises its own accesses with misc_mtx. The raw pointers
// inside (module, name, fops) point to data that is valid from any thread.
unsafe impl Send for Registration {}
// SAFETY: As for Send: `&Registration` offers no access to the tables at all.
unsafe impl Sync for Registration {}

impl Registration {
    /// Register `/dev/lguest`, whose files run guests on `switcher`.
    pub(crate) fn new(module: &'static ThisModule, switcher: &'static Switcher) -> Result<Self> {
        let tables = KBox::new(
            Tables {
                fops: bindings::file_operations {
                    // Holding the module while a file is open is what makes `rmmod lg` refuse
                    // while any guest exists.
                    owner: module.as_ptr(),
                    open: Some(lguest_open),
                    release: Some(lguest_release),
                    read: Some(lguest_read),
                    write: Some(lguest_write),
                    show_fdinfo: Some(lguest_show_fdinfo),
                    llseek: Some(bindings::noop_llseek),
                    ..Default::default()
                },
                misc: Opaque::uninit(),
                switcher,
            },
            GFP_KERNEL,
        )?;
        let misc = tables.misc.get();
        // SAFETY: `misc` points to memory we own and nobody else has seen yet. The name is a
        // static string and `fops` lives as long as the registration (same heap block).
        unsafe {
            misc.write(lg_bindings::miscdevice {
                minor: lg_bindings::MISC_DYNAMIC_MINOR as i32,
                name: c_str!("lguest").as_char_ptr(),
                fops: &tables.fops,
                ..Default::default()
            })
        };
        // SAFETY: `misc` is a fully initialised miscdevice that outlives its registration (it
        // is deregistered in drop before the block is freed).
        to_result(unsafe { lg_bindings::misc_register(misc) })?;
        // SAFETY: misc_register succeeded, so the minor it chose is written.
        let minor = unsafe { (*misc).minor };
        pr_info!("/dev/lguest ready (misc minor {})\n", minor);
        // INVARIANT: registered above, pointing at `fops` in the same block.
        Ok(Registration { tables })
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // SAFETY: By the type invariant the device is registered. No file can be open (each
        // holds a module reference), so no file operation is running or will run.
        unsafe { lg_bindings::misc_deregister(self.tables.misc.get()) };
    }
}

/// The Switcher of the device `misc` is, for a file being opened on it.
///
/// # Safety
///
/// `misc` must be the `miscdevice` of a live [`Registration`]: what misc_open leaves in the
/// private_data of a file it opens on `/dev/lguest`, while the device is registered.
pub(crate) unsafe fn switcher_of(misc: *const lg_bindings::miscdevice) -> &'static Switcher {
    // SAFETY: By the function's contract `misc` is the `misc` field of the `Tables` of a live
    // registration, which keeps them until it deregisters the device.
    unsafe {
        let tables = misc
            .cast::<u8>()
            .sub(core::mem::offset_of!(Tables, misc))
            .cast::<Tables>();
        (*tables).switcher
    }
}
