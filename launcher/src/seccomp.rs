//! The seccomp filter: the last step before the guest runs, and the end of confinement.
//!
//! Once the guest is set up, its devices open, their input threads started and (confine.rs) the
//! launcher's root and user given up, the launcher does little: it reads and writes the files it
//! holds, allocates memory, and ends. [`install`] loads a filter (rust-vmm's seccompiler) that
//! allows exactly the system calls [`allowed`] lists, each with the code that makes it, into
//! every thread of the launcher at once (SECCOMP_FILTER_FLAG_TSYNC). There is one list for all
//! threads, not one per thread: the run loop and the input threads share one address space, so a
//! guest that took over one of them could make the others call whatever their lists allow; and
//! their lists differ by a poll. The input threads are past their own start (input.rs waits for
//! that), so nothing that starts a thread, opens a file or changes privilege is allowed.
//!
//! A call outside the list makes the kernel send the calling thread SIGSYS (SECCOMP_RET_TRAP).
//! SECCOMP_RET_KILL_PROCESS would end the launcher as surely, but in silence: a user would see
//! "Bad system call" from the shell and a terminal left raw, and the kernel logs nothing without
//! audit. So [`refused`] catches the SIGSYS, writes one line naming the call and where it was
//! made, puts the terminal back, and raises SIGSYS again with its default action, which ends
//! the whole launcher as KILL_PROCESS would have. The trap is as final as the kill: the filter
//! allows no rt_sigaction to replace the handler, and a SIGSYS that is blocked or ignored when
//! the filter raises it is delivered with its default action anyway. `--no-seccomp` runs
//! without the filter, for finding which call a new piece of code needs.

use std::collections::BTreeMap;
use std::ffi::c_void;

use anyhow::Context;
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};
use seccompiler::{
    apply_filter_all_threads, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp,
    SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

/// The system calls the running launcher makes, each with the conditions its arguments must
/// meet (none: any arguments), and the code that makes it.
fn allowed() -> anyhow::Result<Vec<(i64, Vec<SeccompRule>)>> {
    let any = Vec::new;
    let only = |conditions: Vec<SeccompCondition>| -> anyhow::Result<Vec<SeccompRule>> {
        Ok(vec![SeccompRule::new(conditions)?])
    };
    // mmap and mprotect: never executable memory. The allocator maps and grows its arenas
    // readable and writable; a guest that got code into the launcher must not be able to run it.
    let not_executable = || -> anyhow::Result<Vec<SeccompRule>> {
        only(vec![SeccompCondition::new(
            2,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
            0,
        )?])
    };
    let ioctl_request = |request: libc::c_ulong| -> anyhow::Result<SeccompRule> {
        Ok(SeccompRule::new(vec![SeccompCondition::new(
            1,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            request,
        )?])?)
    };
    Ok(vec![
        // run_guest's read() of /dev/lguest, which runs the guest; the input threads' reads of
        // stdin, a tap and their eventfd; the disks' reads (vm-memory's read_volatile); --stats
        // reading the fdinfo it opened before (stats.rs).
        (libc::SYS_read, any()),
        // SETREG and IRQ to /dev/lguest; the console's output; the log and the launcher's
        // messages on stderr; frames to a tap; the eventfd kick; the disks' writes.
        (libc::SYS_write, any()),
        // virtio-blk: the seek before each transfer, and FLUSH; --stats going back to the start
        // of its fdinfo.
        (libc::SYS_lseek, any()),
        (libc::SYS_fdatasync, any()),
        // virtio-rng's entropy.
        (libc::SYS_getrandom, any()),
        // The input threads wait in poll on their input and their eventfd (input.rs).
        (libc::SYS_poll, any()),
        // Locks shared by the run loop and the input threads (each device's transport, stderr).
        (libc::SYS_futex, any()),
        // The terminal: isatty (the log's colours), and tcsetattr putting it back at the end or
        // from a signal handler (terminal.rs). No other ioctl: TUNSETIFF and friends are done.
        (
            libc::SYS_ioctl,
            vec![ioctl_request(libc::TCGETS)?, ioctl_request(libc::TCSETS)?],
        ),
        // The allocator: its heap, its arenas (one per thread, grown with mprotect), buffers
        // given back, and a grown Vec moved.
        (libc::SYS_brk, any()),
        (libc::SYS_mmap, not_executable()?),
        (libc::SYS_mprotect, not_executable()?),
        (libc::SYS_munmap, any()),
        (libc::SYS_mremap, any()),
        (libc::SYS_madvise, any()),
        // The log's timestamps: clock_gettime, when the vDSO cannot read the clock itself (a
        // clocksource it does not know, as under QEMU's TCG).
        (libc::SYS_clock_gettime, any()),
        // raise(), which a signal handler ends the launcher with (terminal.rs, `refused` below):
        // it blocks signals (rt_sigprocmask), sends one to its own thread (tgkill), and unblocks
        // them. Only to this process: the launcher signals no other.
        (libc::SYS_rt_sigprocmask, any()),
        (libc::SYS_getpid, any()),
        (libc::SYS_gettid, any()),
        (
            libc::SYS_tgkill,
            only(vec![SeccompCondition::new(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                u64::from(std::process::id()),
            )?])?,
        ),
        // An input thread ends with its input (stdin at end of file): Rust takes down its
        // signal stack, and the thread exits.
        (libc::SYS_sigaltstack, any()),
        (libc::SYS_exit, any()),
        // The end: /dev/lguest, disks and taps closed, guest memory unmapped, and exit_group.
        (libc::SYS_close, any()),
        (libc::SYS_exit_group, any()),
    ])
}

/// The filter as a BPF program: [`allowed`] allowed, anything else trapped.
pub fn filter() -> anyhow::Result<BpfProgram> {
    let rules: BTreeMap<i64, Vec<SeccompRule>> = allowed()?.into_iter().collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )?;
    Ok(filter.try_into()?)
}

/// Installs `program` in every thread of the launcher, after the handler that reports a refused
/// call. Also sets no_new_privs, which an unprivileged filter needs (seccompiler does it).
pub fn install(program: &BpfProgram) -> anyhow::Result<()> {
    let action = SigAction::new(
        SigHandler::SigAction(refused),
        // SA_RESETHAND and SA_NODEFER: the handler runs once, and its raise meets SIGSYS's
        // default action at once, unblocked: the handler never returns (rt_sigreturn, which
        // would let a forged frame set every register, is not allowed).
        SaFlags::SA_SIGINFO | SaFlags::SA_RESETHAND | SaFlags::SA_NODEFER,
        SigSet::empty(),
    );
    // SAFETY: `refused` calls only async-signal-safe functions (write, tcsetattr, raise) and
    // touches no data but its own stack and the terminal settings saved before it was
    // installed.
    unsafe { signal::sigaction(Signal::SIGSYS, &action) }
        .context("cannot install the SIGSYS handler")?;
    apply_filter_all_threads(program).context(
        "cannot install the seccomp filter (a kernel without CONFIG_SECCOMP_FILTER? \
         --no-seccomp runs without it)",
    )
}

/// The start of a SIGSYS's `siginfo_t`, which the libc crate does not lay out: the three ints
/// every siginfo starts with (signal, errno, code), then the kernel's `_sigsys`, aligned for its
/// pointer: where the call was made and its number (then the architecture, not needed here).
#[repr(C)]
struct SigsysInfo {
    _signo_errno_code: [libc::c_int; 3],
    call_addr: *const c_void,
    syscall: libc::c_int,
}

/// The handler for a call the filter refused: one line on stderr, the terminal back, and the
/// launcher ended by SIGSYS. Runs in the thread that made the call.
extern "C" fn refused(_signal: libc::c_int, info: *mut libc::siginfo_t, _context: *mut c_void) {
    // SAFETY: the kernel passes a valid siginfo for a handler installed with SA_SIGINFO, and
    // for a SIGSYS from a seccomp filter it fills in the `_sigsys` fields SigsysInfo lays out.
    let info = unsafe { &*info.cast::<SigsysInfo>() };
    let mut line = Line::default();
    line.text(b"lguest-launcher: the seccomp filter refused system call ");
    line.decimal(info.syscall as u64);
    line.text(b" (x86-64) at ");
    line.hex(info.call_addr as u64);
    line.text(
        b": a launcher bug or a guest that took over its devices; the launcher stops \
          (--no-seccomp runs without the filter)\n",
    );
    // SAFETY: write is async-signal-safe; `line` holds `line.len` initialised bytes.
    unsafe { libc::write(libc::STDERR_FILENO, line.bytes.as_ptr().cast(), line.len) };
    crate::terminal::restore_from_handler();
    // SAFETY: raise is async-signal-safe. SA_RESETHAND made SIGSYS's action the default, which
    // ends the process.
    unsafe { libc::raise(libc::SIGSYS) };
}

/// A line built without allocating, as a signal handler must.
struct Line {
    bytes: [u8; 256],
    len: usize,
}

impl Default for Line {
    fn default() -> Line {
        Line {
            bytes: [0; 256],
            len: 0,
        }
    }
}

impl Line {
    /// Appends `text`, or as much of it as fits.
    fn text(&mut self, text: &[u8]) {
        let n = text.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&text[..n]);
        self.len += n;
    }

    fn decimal(&mut self, mut value: u64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (value % 10) as u8;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        self.text(&digits[at..]);
    }

    fn hex(&mut self, mut value: u64) {
        let mut digits = [0u8; 16];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b"0123456789abcdef"[(value & 0xf) as usize];
            value >>= 4;
            if value == 0 {
                break;
            }
        }
        self.text(b"0x");
        self.text(&digits[at..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Read;
    use std::os::fd::AsRawFd;

    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, pipe, ForkResult};

    #[test]
    fn lines_hold_numbers_in_both_bases() {
        let mut line = Line::default();
        line.decimal(0);
        line.text(b" ");
        line.decimal(u64::MAX);
        line.text(b" ");
        line.hex(0x7f12_3456_789a);
        assert_eq!(
            &line.bytes[..line.len],
            b"0 18446744073709551615 0x7f123456789a"
        );
        let mut full = Line::default();
        full.text(&[b'x'; 300]);
        assert_eq!(full.len, 256);
    }

    /// In a child process: the filter installed, an allowed call works, and a refused one ends
    /// the process by SIGSYS with the line, raise() included (its tgkill is allowed only to the
    /// process that built the filter, so a wrong condition there would show).
    #[test]
    fn a_refused_call_ends_the_process_with_one_line() {
        let (rx, tx) = pipe().unwrap();
        // SAFETY: the child calls only what glibc keeps usable after a fork (its allocator is
        // fork-safe) and never returns from this block: it ends by SIGSYS or _exit.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                // SAFETY: dup2 onto stderr, from a descriptor the child owns.
                unsafe { libc::dup2(tx.as_raw_fd(), libc::STDERR_FILENO) };
                let installed = filter().and_then(|program| install(&program));
                if installed.is_err() {
                    // SAFETY: ends the child at once.
                    unsafe { libc::_exit(2) };
                }
                // SAFETY: getpid and getppid take no arguments; getppid is not allowed.
                unsafe {
                    libc::syscall(libc::SYS_getpid);
                    libc::syscall(libc::SYS_getppid);
                    libc::_exit(3)
                };
            }
            ForkResult::Parent { child } => {
                drop(tx);
                let mut said = String::new();
                File::from(rx).read_to_string(&mut said).unwrap();
                let status = waitpid(child, None).unwrap();
                assert!(
                    matches!(status, WaitStatus::Signaled(_, Signal::SIGSYS, _)),
                    "{status:?}: {said}"
                );
                let expected = format!(
                    "lguest-launcher: the seccomp filter refused system call {} (x86-64) at 0x",
                    libc::SYS_getppid
                );
                assert!(said.starts_with(&expected), "{said}");
                assert_eq!(said.lines().count(), 1, "{said}");
            }
        }
    }
}
