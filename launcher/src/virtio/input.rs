//! Input threads: host input (a key typed on stdin, a frame arriving on the tap) for the guest.
//!
//! The main thread spends its life inside `read()` of `/dev/lguest`, running the guest, so it
//! cannot also wait for input. Each device with an input gets a thread that sleeps in `poll(2)`
//! on the input fd and, when it becomes readable, locks the device's transport (shared with the
//! main thread, which serves the guest's MMIO accesses) and lets the device copy what fits into
//! the guest's receive buffers and raise its IRQ.
//!
//! When the guest has no free receive buffers the thread stops watching the input, or `poll`
//! would report the same waiting input again at once and the thread would spin. The transport
//! writes an eventfd (the "kick") when the guest adds receive buffers, and the thread watches
//! the input again. A thread ends when its input does (end of file on stdin); otherwise it lives
//! as long as the process, which exits when the guest stops, or when the console's thread reads
//! the escape key that quits (terminal.rs).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};

use log::error;
use vmm_sys_util::eventfd::EventFd;

use super::{lock, InputState, MmioTransport};

/// Starts the input thread for `transport`'s device; `None` if the device has no input.
pub fn spawn_input_thread(
    transport: Arc<Mutex<MmioTransport>>,
) -> io::Result<Option<JoinHandle<()>>> {
    let (input_fd, kick, device_type) = {
        let mut locked = lock(&transport);
        match locked.input_source()? {
            Some((input_fd, kick)) => (input_fd, kick, locked.device_type()),
            None => return Ok(None),
        }
    };
    // The thread says when it runs its own code, and this waits for that: by then the C library
    // and Rust have done everything they do to start a thread (its stack, its name, its signal
    // stack), so the seccomp filter installed next need not allow any of it (seccomp.rs).
    let (started, running) = mpsc::sync_channel(0);
    let thread = thread::Builder::new()
        .name(format!("virtio-{device_type}-input"))
        .spawn(move || {
            // The receiver waits below until it has this; it cannot be gone.
            let _ = started.send(());
            wait_for_input(&transport, input_fd, &kick)
        })?;
    // Fails only if the thread ended without a word, which its first statement rules out.
    let _ = running.recv();
    Ok(Some(thread))
}

fn wait_for_input(transport: &Mutex<MmioTransport>, input_fd: RawFd, kick: &EventFd) {
    let mut guest_full = false;
    loop {
        // poll ignores an entry whose fd is negative: that is how the input is left unwatched.
        let mut fds = [
            libc::pollfd {
                fd: if guest_full { -1 } else { input_fd },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: kick.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is an array of two initialized pollfd structures that lives across the
        // call, and the count passed is its length; poll writes only their `revents` fields.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if ready < 0 {
            let failure = io::Error::last_os_error();
            if failure.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            error!("virtio input thread: poll failed: {failure}; guest input stops");
            return;
        }
        if fds[1].revents != 0 {
            // Only clears the counter; the eventfd is non-blocking, so a spurious wake-up that
            // finds it already zero gets EAGAIN, which means the same thing.
            let _ = kick.read();
            guest_full = false;
        }
        if fds[0].revents != 0 {
            match lock(transport).receive_input() {
                InputState::Drained => {}
                InputState::GuestFull => guest_full = true,
                InputState::Closed => return,
                InputState::Quit => crate::terminal::quit(),
            }
        }
    }
}
