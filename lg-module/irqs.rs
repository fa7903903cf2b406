// SPDX-License-Identifier: GPL-2.0
//! A guest's pending interrupts and its timer: the half of interrupt delivery that runs in any
//! context.
//!
//! An interrupt for the guest can come from anywhere: the guest's own timer (an hrtimer, whose
//! callback runs in hard-interrupt context), or an IRQ request that any thread of its launcher
//! writes while another thread is running the guest (`raise_irq` in `file_ops.rs`). Neither can
//! wait for the session's lock, which the running guest holds, so [`Interrupts`] sits beside the
//! session, not inside it: a bitmap of pending IRQs set atomically, and the launcher's task to
//! wake (if it sleeps in HALT) or kick out of the guest (if it runs on another CPU). Before each
//! trip in, exit handling (`deliver_interrupts` in src/exit/interrupts_and_traps.rs, through
//! `KernelHost` in run.rs) takes the pending bits from here and delivers them through the
//! guest's IDT, as `src/interrupts.rs` decides.

use crate::abi::hcall::TIMER_IRQ;
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use kernel::{bindings, prelude::*, types::Opaque};

/// A guest's pending interrupts and its timer.
///
/// # Invariants
///
/// `timer` is initialised (hrtimer_init) and its callback is `timer_fired`, which finds this
/// struct from it; it is cancelled before the struct goes (PinnedDrop).
#[pin_data(PinnedDrop)]
pub(crate) struct Interrupts {
    /// Bit n: IRQ n is pending.
    pub(crate) pending: AtomicU64,
    /// The task to wake or kick when an interrupt arrives: the guest's launcher, once it has
    /// sent INITIALIZE (its Owner keeps the task alive longer than this struct: `set_task`).
    task: AtomicPtr<bindings::task_struct>,
    #[pin]
    timer: Opaque<bindings::hrtimer>,
}

impl Interrupts {
    /// Nothing pending, nobody to wake, the timer stopped.
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Interrupts {
            pending: AtomicU64::new(0),
            task: AtomicPtr::new(core::ptr::null_mut()),
            // SAFETY: hrtimer_init initialises the whole timer in place; the callback is set
            // before anyone can start it.
            timer <- unsafe {
                kernel::init::pin_init_from_closure(|slot: *mut Opaque<bindings::hrtimer>| {
                    let timer = Opaque::raw_get(slot);
                    bindings::hrtimer_init(timer, bindings::CLOCK_MONOTONIC as _,
                        bindings::hrtimer_mode_HRTIMER_MODE_REL);
                    (*timer).function = Some(timer_fired);
                    Ok::<(), core::convert::Infallible>(())
                })
            },
        })
    }

    /// The task interrupts wake: null until INITIALIZE. Only compared, never followed.
    pub(crate) fn task(&self) -> *mut bindings::task_struct {
        self.task.load(Ordering::Acquire)
    }

    /// From now on, wake and kick `task` when an interrupt arrives.
    ///
    /// # Safety
    ///
    /// `task` must be a live task that stays alive as long as this struct: the guest's launcher,
    /// whose `Owner` holds a reference on it and is dropped after this struct.
    pub(crate) unsafe fn set_task(&self, task: *mut bindings::task_struct) {
        self.task.store(task, Ordering::Release);
    }

    /// Make IRQ `irq` pending and get the guest's task to notice: woken if it sleeps in HALT,
    /// kicked out of the guest (an IPI makes it exit) if it runs on another CPU.
    pub(crate) fn raise(&self, irq: u32) {
        self.pending.fetch_or(1 << irq, Ordering::SeqCst);
        let task = self.task.load(Ordering::Acquire);
        if !task.is_null() {
            // SAFETY: The task outlives this struct (see `task`); both calls are safe from any
            // context, interrupt handlers included.
            unsafe {
                bindings::wake_up_process(task);
                bindings::kick_process(task);
            }
        }
    }

    /// Arm the timer `nanoseconds` from now, or stop it (0).
    pub(crate) fn set_timer(&self, nanoseconds: u64) {
        // SAFETY: The timer is initialised (type invariant); start and cancel may be called in
        // process context at any time.
        unsafe {
            if nanoseconds == 0 {
                bindings::hrtimer_cancel(self.timer.get());
            } else {
                let at = nanoseconds.min(i64::MAX as u64) as i64;
                bindings::hrtimer_start_range_ns(
                    self.timer.get(),
                    at,
                    0,
                    bindings::hrtimer_mode_HRTIMER_MODE_REL,
                );
            }
        }
    }
}

#[pinned_drop]
impl PinnedDrop for Interrupts {
    fn drop(self: Pin<&mut Self>) {
        // SAFETY: Initialised (type invariant); after hrtimer_cancel it is not running or
        // queued, so nothing will use this struct again.
        unsafe { bindings::hrtimer_cancel(self.timer.get()) };
    }
}

/// The guest's timer went off: IRQ 0.
///
/// # Safety
///
/// Only the hrtimer core may call this, as the callback `Interrupts::new` installed: `timer` is
/// then the `timer` field of a pinned `Interrupts` that lives until the timer is cancelled.
unsafe extern "C" fn timer_fired(timer: *mut bindings::hrtimer) -> bindings::hrtimer_restart {
    // SAFETY: Only Interrupts::new installs this callback, on the `timer` field of a pinned
    // Interrupts that lives until the timer is cancelled.
    let irqs = unsafe {
        &*(timer as *const u8)
            .sub(core::mem::offset_of!(Interrupts, timer))
            .cast::<Interrupts>()
    };
    irqs.raise(TIMER_IRQ);
    bindings::hrtimer_restart_HRTIMER_NORESTART
}
