// SPDX-License-Identifier: GPL-2.0
//! What an open `/dev/lguest` does: the file operations, and the guest each file holds.
//!
//! This file is lg.ko's boundary with user space. Each `open()` of the device (registered by
//! `misc_device.rs`) gives the file a [`GuestFile`]: a [`Session`] behind a lock, the guest's
//! pending interrupts (`irqs.rs`) beside it, and its exit statistics. `write()` copies a request
//! in and `read()` copies a register value or an exit out, with the kernel's checked user-copy
//! helpers; between the two, the session decides (every decision is in `src/session.rs`), told
//! who is calling and how to read the launcher's memory by `owner.rs`, and `read()` runs the
//! guest through `run.rs`.
//!
//! Each file also keeps its guest's exit statistics (`src/stats.rs`), which the run loop counts
//! and the file's fdinfo shows ([`lguest_show_fdinfo`]) to anyone the kernel lets read it.

use crate::abi::dev::{Refusal, Request, MAX_REQUEST_BYTES};
use crate::abi::exit::EXIT_MAX_BYTES;
use crate::irqs::Interrupts;
use crate::lg_bindings;
use crate::misc_device::switcher_of;
use crate::owner::{task_ptr, CurrentTask, LauncherMemory, Owner};
use crate::run;
use crate::session::{check_irq, ReadAction, Session};
use crate::session_lock::{SessionGuard, SessionLock};
use crate::stats::ExitStats;
use crate::switcher::Switcher;
use core::sync::atomic::{AtomicPtr, Ordering};
use kernel::{
    bindings,
    ffi::{c_char, c_int},
    prelude::*,
    uaccess::UserSlice,
};

/// What `file->private_data` points to while `/dev/lguest` is open.
#[pin_data]
struct GuestFile {
    /// The module's Switcher: lives as long as the module, which an open file keeps loaded.
    switcher: &'static Switcher,
    /// Interrupts for the guest, raised from interrupt context without the session's lock.
    /// Dropped before the session, so the timer stops before the task it wakes can go.
    #[pin]
    irqs: Interrupts,
    /// The launcher's address space once INITIALIZE made a guest (null before): IRQ requests
    /// from its threads are taken without the session's lock. Only compared, never followed.
    launcher_mm: AtomicPtr<bindings::mm_struct>,
    #[pin]
    session: SessionLock<Session<Owner>>,
    /// What the guest's exits were: written by the task running it, read by fdinfo without the
    /// session's lock (which that task holds while the guest runs).
    stats: ExitStats,
}

// SAFETY: ExitStats is an array of pairs of AtomicU64, for which all zero bytes is a valid value
// (zero); so it may be initialised in place by zeroing, without a copy of its 3.6 KiB on the
// stack.
unsafe impl kernel::init::Zeroable for ExitStats {}

impl GuestFile {
    /// The session, locked for the calling task, or why not: once a guest exists only its
    /// launcher may drive it, and everyone else is refused here, before waiting for a lock the
    /// running guest may hold for hours (src/session.rs would refuse them after the wait). A
    /// task that got past this just before INITIALIZE waits killably.
    fn lock_session(&self) -> Result<SessionGuard<'_, Session<Owner>>, isize> {
        let owner = self.irqs.task();
        if !owner.is_null() && owner != task_ptr(current!()) {
            return Err(errno(Refusal::NotOwner));
        }
        self.session
            .lock_killable()
            .map_err(|e| e.to_errno() as isize)
    }
}

/// The session of an open file.
///
/// # Safety
///
/// `file` must be an open `/dev/lguest` file whose `open()` succeeded and whose `release()` has
/// not run: its private_data is then the `GuestFile` that `lguest_open` leaked.
unsafe fn guest_file<'a>(file: *mut bindings::file) -> &'a GuestFile {
    // SAFETY: By the function's contract private_data is a live `GuestFile`, freed only by
    // release(), which the VFS never runs concurrently with read() or write() on that file.
    unsafe { &*(*file).private_data.cast::<GuestFile>() }
}

/// A refusal as the negative errno a file operation returns.
fn errno(refusal: Refusal) -> isize {
    -(refusal.errno() as isize)
}

/// `open()` of `/dev/lguest`: a fresh session, in the file's private_data.
///
/// # Safety
///
/// Only the VFS may call this, as the `open` of `/dev/lguest` (`misc_device.rs` registers it).
/// It then guarantees that `file` is a valid file being opened on that device, which no other
/// file operation can reach yet, and whose private_data misc_open set to the device's
/// `miscdevice`; and that the device stays registered meanwhile (the file holds the module).
pub(crate) unsafe extern "C" fn lguest_open(
    _inode: *mut bindings::inode,
    file: *mut bindings::file,
) -> c_int {
    // SAFETY: The VFS hands open() a valid file, in whose private_data misc_open put our
    // miscdevice; the device is registered while a file can be opened on it.
    let switcher = unsafe { switcher_of((*file).private_data.cast()) };
    let init = pin_init!(GuestFile {
        switcher,
        irqs <- Interrupts::new(),
        launcher_mm: AtomicPtr::new(core::ptr::null_mut()),
        session <- SessionLock::new(Session::<Owner>::default()),
        stats <- kernel::init::zeroed(),
    });
    let session = match KBox::pin_init(init, GFP_KERNEL) {
        Ok(session) => session,
        Err(e) => return e.to_errno(),
    };
    // SAFETY: The mutex is never moved out of its box: release() frees it where it lies.
    let session = unsafe { Pin::into_inner_unchecked(session) };
    // SAFETY: The VFS hands open() a valid file; misc_open put our miscdevice in private_data
    // and nothing else uses it, so it is ours to replace.
    unsafe { (*file).private_data = KBox::into_raw(session).cast() };
    0
}

/// `release()`: the last reference to the file is gone; the session and its guest go too.
///
/// # Safety
///
/// Only the VFS may call this, as the `release` of `/dev/lguest` (`misc_device.rs` registers
/// it). It then guarantees that `file` is a file whose `open()` succeeded, so its private_data
/// is what `lguest_open` stored there; that its last reference is gone, so no `read()`,
/// `write()` or fdinfo on it runs or will run; and that this is called once per such file.
pub(crate) unsafe extern "C" fn lguest_release(
    _inode: *mut bindings::inode,
    file: *mut bindings::file,
) -> c_int {
    // SAFETY: open() succeeded (else release is not called) and stored a leaked KBox here;
    // release runs once, after the last read() or write(). Dropping the session drops the
    // guest and with it the references it held on the launcher's task and mm.
    drop(unsafe { KBox::from_raw((*file).private_data.cast::<GuestFile>()) });
    0
}

/// `write()`: one request (INITIALIZE, SETREG, an IRQ...), decoded and checked by the session.
///
/// # Safety
///
/// Only the VFS may call this, as the `write` of `/dev/lguest` (`misc_device.rs` registers it).
/// It then guarantees that `file` is a file whose `open()` succeeded and whose `release()` will
/// not run before this returns (the caller holds a reference on it). It guarantees nothing of
/// `buf` and `len`, which user space chose: they are only read through `UserSlice`, which
/// checks them and turns a bad address into -EFAULT.
pub(crate) unsafe extern "C" fn lguest_write(
    file: *mut bindings::file,
    buf: *const c_char,
    len: usize,
    _pos: *mut bindings::loff_t,
) -> isize {
    // Enough for the largest request and then some, so that a long write is seen as long.
    let mut bytes = [0u8; MAX_REQUEST_BYTES + 8];
    let take = len.min(bytes.len());
    if UserSlice::new(buf as usize, take)
        .reader()
        .read_slice(&mut bytes[..take])
        .is_err()
    {
        return errno(Refusal::Fault);
    }
    // SAFETY: The VFS calls write() only on a file open() succeeded for, before release().
    let guest = unsafe { guest_file(file) };
    if let Ok(Request::Irq { irq }) = Request::decode(&bytes[..take]) {
        return raise_irq(guest, irq, take);
    }
    let caller = CurrentTask(guest.switcher);
    let mut session = match guest.lock_session() {
        Ok(session) => session,
        Err(errno) => return errno,
    };
    let result = session.write(&bytes[..take], &caller, &LauncherMemory);
    // From INITIALIZE on, interrupts know whom to wake and whose threads may raise them, and
    // lock_session knows whom to let wait.
    if let Some(owner) = session.owner() {
        // SAFETY: The owner holds a reference on its task, and is dropped with the session,
        // after `irqs` (GuestFile's fields drop in order).
        unsafe { guest.irqs.set_task(owner.launcher_task()) };
        guest
            .launcher_mm
            .store(owner.launcher_mm(), Ordering::Release);
    }
    match result {
        Ok(written) => written as isize,
        Err(refusal) => errno(refusal),
    }
}

/// The IRQ request: raise `irq` in the guest, for any thread of its launcher, without waiting
/// for the session's lock (held by the thread running the guest). `written` is the request's
/// length, what a successful write() returns.
fn raise_irq(guest: &GuestFile, irq: u64, written: usize) -> isize {
    let launcher_mm = guest.launcher_mm.load(Ordering::Acquire);
    // SAFETY: Reading current->mm has no side effects.
    let caller_mm = unsafe { lg_bindings::lg_current_mm() };
    let shares_mm = (!launcher_mm.is_null()).then(|| caller_mm == launcher_mm);
    match check_irq(irq, shares_mm) {
        Ok(irq) => {
            guest.irqs.raise(irq);
            written as isize
        }
        Err(refusal) => errno(refusal),
    }
}

/// `read()`: run the guest, or return the exit that stopped it.
///
/// # Safety
///
/// Only the VFS may call this, as the `read` of `/dev/lguest` (`misc_device.rs` registers it).
/// It then guarantees that `file` is a file whose `open()` succeeded and whose `release()` will
/// not run before this returns (the caller holds a reference on it), however long the guest
/// runs. It guarantees nothing of `buf` and `len`, which user space chose: they are only written
/// through `UserSlice`, which checks them and turns a bad address into -EFAULT.
pub(crate) unsafe extern "C" fn lguest_read(
    file: *mut bindings::file,
    buf: *mut c_char,
    len: usize,
    _pos: *mut bindings::loff_t,
) -> isize {
    // SAFETY: As in write().
    let guest = unsafe { guest_file(file) };
    let caller = CurrentTask(guest.switcher);
    let mut session = match guest.lock_session() {
        Ok(session) => session,
        Err(errno) => return errno,
    };
    let mut out = [0u8; EXIT_MAX_BYTES];
    let n = match session.read(&caller, len) {
        Err(refusal) => return errno(refusal),
        Ok(ReadAction::Register(value)) => {
            out[..8].copy_from_slice(&value.to_le_bytes());
            8
        }
        Ok(ReadAction::Run(running)) => {
            match run::run(running, guest.switcher, &guest.irqs, &guest.stats) {
                // Session::read checked the buffer holds any exit.
                Ok(exit) => exit.encode(&mut out).unwrap_or(0),
                Err(e) => return e.to_errno() as isize,
            }
        }
    };
    match UserSlice::new(buf as usize, n)
        .writer()
        .write_slice(&out[..n])
    {
        Ok(()) => n as isize,
        Err(_) => errno(Refusal::Fault),
    }
}

/// fdinfo of an open `/dev/lguest` (`/proc/PID/fdinfo/FD`): after the kernel's own lines, the
/// guest's exit statistics, one line per bucket (abi/src/stats.rs). Read by `lguest-stat` and by
/// the launcher's `--stats`. The kernel lets only a task that may read the launcher's memory
/// (ptrace's read access) open fdinfo, so this shows nothing to one that could not see more.
/// No lock: the counters are read as the running guest's task leaves them.
///
/// # Safety
///
/// Only the VFS may call this, as the `show_fdinfo` of `/dev/lguest` (`misc_device.rs` registers
/// it). It then guarantees that `file` is a file whose `open()` succeeded and whose `release()`
/// will not run before this returns (reading fdinfo holds a reference on the file), and that `m`
/// is a valid seq_file, being filled by this call alone.
pub(crate) unsafe extern "C" fn lguest_show_fdinfo(
    m: *mut bindings::seq_file,
    file: *mut bindings::file,
) {
    // SAFETY: As in write(): the file is open, and the reference fdinfo holds keeps release()
    // away.
    let guest = unsafe { guest_file(file) };
    // SAFETY: reads a kernel variable set once the TSC is calibrated.
    let tsc_khz = unsafe { lg_bindings::lg_tsc_khz() } as u64;
    // A seq_file that runs out of room says so itself and has the VFS call this again with a
    // bigger buffer: there is nothing to do about an error here.
    let _ = guest.stats.show(tsc_khz, &mut SeqFile(m));
}

/// A seq_file being filled, as a `fmt::Write`.
struct SeqFile(*mut bindings::seq_file);

impl core::fmt::Write for SeqFile {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        // SAFETY: The pointer is the seq_file the VFS handed show_fdinfo, valid for that call,
        // which is this value's whole life; seq_write copies `s.len()` bytes from `s`.
        unsafe { bindings::seq_write(self.0, s.as_ptr().cast(), s.len()) };
        Ok(())
    }
}
