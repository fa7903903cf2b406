//! The module's life: it loads cleanly, registers its device where Linux says it should, cannot
//! be unloaded while a guest's file is open, and leaves nothing behind after a hundred guests
//! and fifty loads.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use anyhow::{ensure, Context};
use lguest_abi::regs::Reg;
use nix::errno::Errno;

use crate::check::Checks;
use crate::kmod;
use crate::leak::{self, Snapshot};
use crate::lguest::{Lguest, TestGuest, DEV_PATH, ENTRY, INITIALIZE_LEN};
use crate::procfs;

/// The misc character devices' major (include/uapi/linux/major.h).
const MISC_MAJOR: u32 = 10;
/// Minors up to this are the misc layer's static assignments (and 255 means "give me one");
/// Linux 6.12 hands out dynamic minors above it, up to MINORMASK
/// (drivers/char/misc.c:/misc_minor_alloc/).
const MISC_DYNAMIC_MINOR: u32 = 255;
const MINORMASK: u32 = (1 << 20) - 1;

/// `module-load`: from no lg.ko to a loaded one with a /dev/lguest that matches /proc/misc. (The
/// runner checks the kernel log from before the rmmod to after the insmod.)
pub fn load() -> anyhow::Result<()> {
    kmod::ensure_unloaded()?;
    ensure!(
        !Path::new(DEV_PATH).exists(),
        "{DEV_PATH} exists while lg is not loaded"
    );
    kmod::load()?;

    let mut c = Checks::new();
    let module = kmod::loaded()?.context("lg is not in /proc/modules after insmod")?;
    c.that(module.state == "Live" && module.refcount == 0, || {
        format!("/proc/modules: expected lg Live with refcount 0, got {module:?}")
    });

    let meta = fs::metadata(DEV_PATH).with_context(|| format!("no {DEV_PATH} after insmod"))?;
    c.that(meta.file_type().is_char_device(), || {
        format!("{DEV_PATH} is not a character device")
    });
    let (major, minor) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
    c.that(major == MISC_MAJOR, || {
        format!("{DEV_PATH}: expected major {MISC_MAJOR}, got {major}")
    });
    let listed = procfs::misc_minor(&procfs::read("/proc/misc")?, "lguest");
    c.that(listed == Some(minor), || {
        format!("{DEV_PATH} has minor {minor} but /proc/misc lists lguest as {listed:?}")
    });
    c.that(minor > MISC_DYNAMIC_MINOR && minor <= MINORMASK, || {
        format!(
            "minor {minor} is not a dynamic misc minor ({}..={MINORMASK})",
            MISC_DYNAMIC_MINOR + 1
        )
    });
    c.finish()
}

/// `module-unload`: open files pin the module; closing them lets it go, device and all; and a
/// hundred guests and fifty loads later the host has the memory it had.
pub fn unload() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let mut c = Checks::new();
    {
        let guest = TestGuest::new()?;
        let idle = Lguest::open()?;
        let busy = Lguest::open()?;
        c.returned("INITIALIZE", busy.initialize(guest.valid()), INITIALIZE_LEN);
        rmmod_refused(&mut c, "with two files open", 2);
        c.equal(
            "GETREG RIP after the refused rmmod",
            busy.get_reg(Reg::Rip),
            ENTRY,
        );
        // The module reference belongs to the open file, not to the guest: an uninitialized
        // file must hold the module too.
        drop(busy);
        rmmod_refused(&mut c, "with an uninitialized file open", 1);
        drop(idle);
    }
    let got = kmod::unload();
    c.that(got.is_ok(), || {
        format!("rmmod after every file was closed: expected Ok, got {got:?}")
    });
    let still = kmod::loaded()?;
    c.that(still.is_none(), || {
        format!("lg still in /proc/modules after rmmod: {still:?}")
    });
    c.that(!Path::new(DEV_PATH).exists(), || {
        format!("{DEV_PATH} still exists after rmmod")
    });
    let misc = procfs::read("/proc/misc")?;
    c.that(procfs::misc_minor(&misc, "lguest").is_none(), || {
        "/proc/misc still lists lguest after rmmod".to_owned()
    });
    c.ok("leak check", leak_check());
    c.finish()
}

/// rmmod must fail while `files` files of /dev/lguest are open, and the module must stay Live
/// with (at least) one reference per open file.
///
/// The errno is EAGAIN (EWOULDBLOCK): what delete_module returns for a module whose refcount
/// is not zero (kernel/module/main.c:/try_stop_module/). EBUSY would mean something else:
/// a module with no exit function, which can never be unloaded.
fn rmmod_refused(c: &mut Checks, when: &str, files: i64) {
    let got = kmod::unload();
    c.that(got == Err(Errno::EAGAIN), || {
        format!("rmmod {when}: expected EAGAIN, got {got:?}")
    });
    let module = kmod::loaded();
    c.that(
        matches!(&module, Ok(Some(m)) if m.state == "Live" && m.refcount >= files),
        || format!("rmmod {when}: expected lg Live with {files}+ references, got {module:?}"),
    );
}

const GUEST_CYCLES: usize = 100;
const MODULE_CYCLES: usize = 50;

fn leak_check() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    // One guest's memory for every cycle, created before the first picture: its pages are the
    // test's, not the host's.
    let guest = TestGuest::new()?;
    // Warm up: first use creates things that stay (caches, sysfs directories, the page cache of
    // lg.ko); they are not leaks.
    guest_cycle(&guest)?;
    module_cycle()?;
    // The measuring itself creates objects the first time (the inodes and sysfs attributes of
    // every slab cache's `shrink` file, one per cache): look once to let them exist.
    Snapshot::take()?;

    // Three rounds: each is small enough (a leak of one object a cycle is 50-100 objects) that
    // the kernel's own noise could look like one in two rounds, but not in three.
    leak::grows_in_every_round(
        &format!("{GUEST_CYCLES} guests and {MODULE_CYCLES} loads"),
        3,
        // Fifty loads or a hundred guests a round: a leak of one object each is 50 or more.
        50,
        || {
            for _ in 0..GUEST_CYCLES {
                guest_cycle(&guest)?;
            }
            for _ in 0..MODULE_CYCLES {
                module_cycle()?;
            }
            Ok(())
        },
    )
}

/// Open, INITIALIZE, close: one guest's whole life, short of running. It runs in a child
/// process of its own, so that a guest which kept its launcher's task or address space alive
/// after the launcher exited shows up as a task_struct or mm_struct that never goes away.
fn guest_cycle(guest: &TestGuest) -> anyhow::Result<()> {
    super::in_child(|| {
        Lguest::open_initialized(guest.valid()).context("in a leak cycle")?;
        Ok(())
    })
}

/// rmmod then insmod: the module's whole life.
fn module_cycle() -> anyhow::Result<()> {
    kmod::unload().map_err(|e| anyhow::anyhow!("rmmod lg in a leak cycle: {e:?}"))?;
    kmod::load()
}
