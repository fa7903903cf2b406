//! The kernel's own x86 selftests, run by the Linux guest under lg.ko: `linux-selftests-x86`.
//!
//! Programs nobody here wrote, written to break x86 entry code: single steps over system calls,
//! sigreturns to frames the CPU refuses, TLS selectors in SS, FS and GS bases under ptrace, the
//! vDSO and the vsyscall page. tests/harness/build-x86-selftests.sh builds them from the guest's
//! own source tree and adds them to its initramfs (`/guests/linux/initramfs-selftests.cpio.gz` in
//! the VM); the guest's init runs `/selftests/run` (tests/harness/linux-guest/run-selftests),
//! which judges each against tests/harness/linux-guest/x86-selftests.list and prints one verdict
//! line per test. The same image and list run natively in `linux-selftests-x86-native`
//! (linux-native.sh --selftests); what differs between the two worlds is what the list says ring 1
//! cannot do (docs/linux-guest.md, "What a ring-1 Linux cannot do").

use std::time::Duration;

use super::linux::{INIT_RUNNING, KERNEL};
use crate::check::Checks;
use crate::kmod;
use crate::launch::{self, shorten};

const INITRD: &str = "/guests/linux/initramfs-selftests.cpio.gz";
/// A boot, 18 tests and a power-off: 23 to 29 s on 2 shared cores (the tests themselves about 15 s,
/// `sysret_ss_attrs` the longest at 5 s), 125 s with LGUEST_SLOWDOWN=3. Ten times the first
/// leaves room for a slower machine, busy besides; the runner gives up on a single test after
/// 120 s, well within it.
const PATIENCE: Duration = Duration::from_secs(300);
/// What the runner prints last, before init says how the script ended.
const SUMMARY: &str = "selftests (lguest): ";

/// `linux-selftests-x86`: every selftest passes under lg.ko, or does what the list says it does
/// there; and the guest powers off at the end, alive.
pub fn x86() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let script: String = b"sh /selftests/run\n"
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let script_word = format!("lguest.script={script}");
    let args = [
        "--initrd",
        INITRD,
        "64m",
        KERNEL,
        "console=hvc0",
        "lguest.run=script",
        &script_word,
    ];
    let run = launch::launch(&args, PATIENCE)?;
    let lines: Vec<&str> = run.stdout.lines().map(str::trim_end).collect();
    let failures: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("selftest ") && l.contains(": FAIL"))
        .collect();
    let summary = lines.iter().find(|l| l.starts_with(SUMMARY));
    let mut c = Checks::new();
    c.that(run.stdout.contains(INIT_RUNNING), || {
        format!("init never ran: {}", run.shown())
    });
    c.that(summary.is_some(), || {
        format!(
            "the selftests never ended ({}); the console ended: {}",
            run.status(),
            shorten(launch::tail(&run.stdout, 600))
        )
    });
    c.that(failures.is_empty(), || {
        format!(
            "{}; {}",
            failures.join("; "),
            summary.unwrap_or(&"no summary")
        )
    });
    c.that(run.code == Some(0), || {
        format!(
            "expected a power-off (exit 0) after the selftests, got {}: {}",
            run.status(),
            run.shown()
        )
    });
    for verdict in lines
        .iter()
        .filter(|l| l.starts_with("selftest") || l.starts_with("    "))
    {
        println!("e2e-info linux-selftests-x86: {verdict}");
    }
    c.finish()
}
