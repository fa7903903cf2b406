// SPDX-License-Identifier: GPL-2.0
//! A guest's launcher, as the kernel holds it.
//!
//! INITIALIZE makes the calling task a guest's launcher: from then on the guest holds that task
//! and its address space ([`Owner`]), and only that task, in that address space, may drive it.
//! This file supplies the two things the hardware-free session logic (`src/session.rs`) cannot
//! know for itself: who the calling task is ([`CurrentTask`], which also makes the `Owner` when
//! the session accepts INITIALIZE) and how to read the launcher's memory ([`LauncherMemory`]).
//! The file operations (`file_ops.rs`) hand both to the session; the run loop (`run.rs`) finds
//! the guest's shadow page tables and FPU state in the `Owner`.

use crate::abi::dev::{Initialize, Refusal};
use crate::fpu::GuestFpu;
use crate::lg_bindings;
use crate::session::{Caller, UserMemory};
use crate::shadow_tables::ShadowTables;
use crate::switcher::Switcher;
use core::ptr::NonNull;
use kernel::{bindings, prelude::*, task::Task, types::ARef, uaccess::UserSlice};

/// What the kernel keeps for a guest: its launcher, and what it runs on.
///
/// The task identifies the only caller allowed to drive the guest. The mm reference keeps the
/// launcher's address space (where guest memory lives) alive as long as the guest exists, even
/// while its task exits: `do_exit` drops the mm before it closes files, and a guest must never
/// outlive the memory it runs in. lguest held the mm the same way. The Switcher is installed in
/// that address space while the guest exists; the shadow page tables pin guest pages in it.
pub(crate) struct Owner {
    /// Declared (so dropped) before `mm`, to which it charges its pins.
    pub(crate) shadow: ShadowTables,
    pub(crate) fpu: GuestFpu,
    switcher: &'static Switcher,
    mm: MmRef,
    task: ARef<Task>,
}

impl Owner {
    /// The launcher's task, as C knows it: whom interrupts wake, and who may drive the guest.
    pub(crate) fn launcher_task(&self) -> *mut bindings::task_struct {
        task_ptr(&self.task)
    }

    /// The launcher's address space: only to compare with another task's, never followed.
    pub(crate) fn launcher_mm(&self) -> *mut bindings::mm_struct {
        self.mm.0.as_ptr()
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        // SAFETY: The mm is live (we still hold `mm`, dropped after this) and was installed
        // when this owner was made.
        unsafe { self.switcher.uninstall(self.mm.0.as_ptr()) };
    }
}

/// A counted reference to an `mm_struct` (`mm_users`), dropped with `mmput`.
///
/// # Invariants
///
/// The pointer came from `get_task_mm`, which took one `mm_users` reference that this value owns.
struct MmRef(NonNull<bindings::mm_struct>);

impl Drop for MmRef {
    fn drop(&mut self) {
        // SAFETY: By the type invariant we own one mm_users reference; this gives it back. Drop
        // runs in process context (release() or a failed write()), where mmput may sleep.
        unsafe { bindings::mmput(self.0.as_ptr()) };
    }
}

// SAFETY: An mm_users reference may be dropped by any task; mmput does its own locking.
unsafe impl Send for MmRef {}

/// The task making the current `write()` or `read()` call, on a file of this Switcher.
pub(crate) struct CurrentTask(pub(crate) &'static Switcher);

impl Caller for CurrentTask {
    type Owner = Owner;

    fn is(&self, owner: &Owner) -> bool {
        // The same task, still in the same address space: a launcher that exec'd another
        // program after INITIALIZE keeps its task but not the memory the guest lives in, nor
        // the Switcher mapping the switch needs.
        // SAFETY: Reading current->mm has no side effects.
        let mm = unsafe { lg_bindings::lg_current_mm() };
        core::ptr::eq(&*owner.task, current!()) && mm == owner.mm.0.as_ptr()
    }

    fn become_owner(&self, config: &Initialize) -> Result<Owner, Refusal> {
        let task: ARef<Task> = current!().into();
        // SAFETY: The task is live: we hold a reference on it.
        let mm = unsafe { bindings::get_task_mm(task_ptr(&task)) };
        // A kernel thread has no mm; user space always has one.
        let mm = NonNull::new(mm).ok_or(Refusal::Fault)?;
        // INVARIANT: get_task_mm took the reference MmRef now owns.
        let mm = MmRef(mm);
        // SAFETY: `mm` is the launcher's, and the Owner below keeps it live longer than the
        // tables (its `mm` field drops after `shadow`).
        let shadow = unsafe { ShadowTables::new(self.0, config.cr3, mm.0.as_ptr()) }
            .map_err(|_| Refusal::NoMemory)?;
        let fpu = GuestFpu::new().map_err(|_| Refusal::NoMemory)?;
        // SAFETY: `mm` is live: we hold a reference until Owner::drop has uninstalled.
        unsafe { self.0.install(mm.0.as_ptr()) }.map_err(|_| Refusal::NoMemory)?;
        Ok(Owner {
            shadow,
            fpu,
            switcher: self.0,
            mm,
            task,
        })
    }
}

/// The caller's address space, read with the kernel's fault-checked user copy.
pub(crate) struct LauncherMemory;

impl UserMemory for LauncherMemory {
    fn read(&self, addr: u64, out: &mut [u8]) -> Result<(), Refusal> {
        let addr = usize::try_from(addr).map_err(|_| Refusal::Fault)?;
        UserSlice::new(addr, out.len())
            .reader()
            .read_slice(out)
            .map_err(|_| Refusal::Fault)
    }

    fn write(&self, addr: u64, bytes: &[u8]) -> Result<(), Refusal> {
        let addr = usize::try_from(addr).map_err(|_| Refusal::Fault)?;
        UserSlice::new(addr, bytes.len())
            .writer()
            .write_slice(bytes)
            .map_err(|_| Refusal::Fault)
    }
}

/// The C task behind a `Task`, to compare and to hand to C.
pub(crate) fn task_ptr(task: &Task) -> *mut bindings::task_struct {
    // `Task` is a transparent wrapper of `task_struct`.
    (task as *const Task).cast_mut().cast()
}
