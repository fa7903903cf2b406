// SPDX-License-Identifier: GPL-2.0
//! The lock around a guest's session, whose waiters can be killed.
//!
//! A guest runs inside `read()` with its session locked, for as long as it runs: hours, for a
//! long-lived guest. 6.12's `kernel::sync::Mutex` waits uninterruptibly, so another task that
//! shares the file (a forked child, a thread of the launcher) and calls read() or write() at the
//! wrong moment would sleep in D state until the guest stopped, deaf even to SIGKILL. This is
//! the same kernel mutex, waited for with `mutex_lock_killable`: a fatal signal ends the wait.
//! (file_ops.rs also turns such strangers away before they wait at all, once a guest exists.)

use crate::lg_bindings;
use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use kernel::{bindings, prelude::*, types::Opaque};

/// `T` behind a kernel mutex whose waiters can be killed.
///
/// # Invariants
///
/// `mutex` is initialised (by `new`) and never moves (the value is pinned); `data` is reached
/// only through a [`SessionGuard`], which exists only while its task holds `mutex`.
#[pin_data]
pub(crate) struct SessionLock<T> {
    #[pin]
    mutex: Opaque<bindings::mutex>,
    data: UnsafeCell<T>,
}

// SAFETY: `data` is reached only by the task holding the mutex, one at a time, and `T: Send`
// lets it be reached from whichever task that is.
unsafe impl<T: Send> Send for SessionLock<T> {}
// SAFETY: As for Send: sharing the lock shares only the right to wait for it.
unsafe impl<T: Send> Sync for SessionLock<T> {}

impl<T> SessionLock<T> {
    pub(crate) fn new(data: T) -> impl PinInit<Self> {
        pin_init!(SessionLock {
            // SAFETY: lg_mutex_init (mutex_init) initialises the whole mutex in place, with a
            // lock class of its own; the mutex is pinned from here on.
            mutex <- unsafe {
                kernel::init::pin_init_from_closure(|slot: *mut Opaque<bindings::mutex>| {
                    lg_bindings::lg_mutex_init(Opaque::raw_get(slot));
                    Ok::<(), core::convert::Infallible>(())
                })
            },
            data: UnsafeCell::new(data),
        })
    }

    /// Wait for the lock, unless a fatal signal comes first (EINTR).
    pub(crate) fn lock_killable(&self) -> Result<SessionGuard<'_, T>> {
        // SAFETY: The mutex is initialised (type invariant).
        let ret = unsafe { lg_bindings::lg_mutex_lock_killable(self.mutex.get()) };
        if ret != 0 {
            return Err(Error::from_errno(ret));
        }
        // INVARIANT: this task holds the mutex until the guard drops.
        Ok(SessionGuard { lock: self })
    }
}

/// The locked session; dropping it unlocks.
pub(crate) struct SessionGuard<'a, T> {
    lock: &'a SessionLock<T>,
}

impl<T> Deref for SessionGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: We hold the mutex, so no other reference to `data` exists (type invariant).
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for SessionGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: As for deref; `&mut self` makes this borrow the only one through the guard.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for SessionGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: This task took the mutex in lock_killable and has not released it.
        unsafe { bindings::mutex_unlock(self.lock.mutex.get()) };
    }
}
