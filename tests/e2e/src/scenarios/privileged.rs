//! What a Linux guest needs of the host beyond hypercalls: the privileged instructions Linux
//! executes without a paravirt hook, which lg.ko emulates (lguest-abi's `privileged` module).
//! The guest's side is tests/guests/ring1/src/linux.rs.
//!
//! - `guest-cr4`: `mov %cr4` at ring 1 gives the virtual CR4, which this process works out from
//!   what Linux tells user space (CPUID's OSXSAVE, AT_HWCAP2's FSGSBASE);
//! - `guest-xsetbv`: `xsetbv` of the host's XCR0, and of x87|SSE alone, is accepted, and XCR0
//!   stays the host's (this process reads it with `xgetbv` too);
//! - `guest-hostile-xsetbv`: XCR1, XCR0 without SSE, and a feature the host has not enabled,
//!   each kills the guest;
//! - `guest-ports`: `in` reads all ones at its width and `out` is ignored, in every form but
//!   the string ones (`guest-hostile-ins` and `-outs` die of those);
//! - `guest-user-page`: the guest kernel writes and reads a user page with AC clear, which SMAP
//!   would refuse: the host turns SMAP off for the trip;
//! - `guest-hostile-smep`: it runs code in a user page, which SMEP refuses: the host leaves
//!   SMEP on, and the guest dies of the fault;
//! - `guest-pgtable-flush`: NEW_PGTABLE without NEW_PGTABLE_FLUSH keeps the host's shadow of
//!   the tables, stale entries and all, and with it drops the shadow; a flag the ABI does not
//!   define kills the guest;
//! - `guest-wallclock`: lguest_data's `wallclock_ns` is this machine's date.

use std::arch::asm;

use anyhow::{ensure, Context};

use lguest_abi::privileged::{CR4_FSGSBASE, CR4_OSFXSR, CR4_OSXMMEXCPT, CR4_OSXSAVE, CR4_PAE};

use super::guest::{died, guest, hello_still_runs, runs_to, PATIENCE};
use crate::check::Checks;
use crate::kmod;
use crate::launch::Run;

/// The hexadecimal number that follows `prefix` on a line of the guest's console.
fn hex_after(run: &Run, prefix: &str) -> Option<u64> {
    let rest = run.stdout.lines().find_map(|l| l.strip_prefix(prefix))?;
    let digits = rest.strip_prefix("0x")?;
    let end = digits
        .find(|c: char| !c.is_ascii_hexdigit())
        .unwrap_or(digits.len());
    u64::from_str_radix(&digits[..end], 16).ok()
}

/// CPUID.1:ECX.OSXSAVE: whether the host kernel turned XSAVE on (CR4.OSXSAVE).
fn osxsave() -> bool {
    std::arch::x86_64::__cpuid(1).ecx & (1 << 27) != 0
}

/// AT_HWCAP2's FSGSBASE bit: Linux sets it when it turned CR4.FSGSBASE on.
fn fsgsbase() -> bool {
    const HWCAP2_FSGSBASE: u64 = 1 << 1;
    // SAFETY: getauxval only reads the auxiliary vector.
    let hwcap2 = unsafe { libc::getauxval(libc::AT_HWCAP2) };
    hwcap2 & HWCAP2_FSGSBASE != 0
}

/// `guest-cr4`: the guest reads CR4 into two registers; it must see the bits the ABI lets
/// through, as this host has them.
pub fn cr4() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let run = guest(&["cr4"], PATIENCE)?;
    let expected = CR4_PAE
        | CR4_OSFXSR
        | CR4_OSXMMEXCPT
        | if osxsave() { CR4_OSXSAVE } else { 0 }
        | if fsgsbase() { CR4_FSGSBASE } else { 0 };
    let got = hex_after(&run, "cr4: ");
    println!("e2e-info guest-cr4: the guest read {got:#x?}, expected {expected:#x}");
    let mut c = Checks::new();
    c.that(run.code == Some(0) && got == Some(expected), || {
        format!(
            "expected exit 0 and cr4 {expected:#x}, got {} and {got:x?}; stdout: {}; stderr: {}",
            run.status(),
            run.shown_stdout(),
            run.shown()
        )
    });
    c.finish()
}

/// This process's XCR0, which is the host's (0 without XSAVE).
fn xcr0() -> u64 {
    if !osxsave() {
        return 0;
    }
    let (low, high): (u32, u32);
    // SAFETY: OSXSAVE is on, so xgetbv of XCR0 is defined at any ring; it only reads.
    unsafe { asm!("xgetbv", in("ecx") 0, out("eax") low, out("edx") high, options(nomem)) };
    u64::from(high) << 32 | u64::from(low)
}

/// `guest-xsetbv`: values the host accepts, and XCR0 unchanged after them.
pub fn xsetbv() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let run = guest(&["xsetbv"], PATIENCE)?;
    let host = xcr0();
    let seen = hex_after(&run, "xsetbv: ").zip(
        run.stdout
            .lines()
            .find_map(|l| l.split_once("XCR0 still 0x"))
            .and_then(|(_, hex)| u64::from_str_radix(hex, 16).ok()),
    );
    println!("e2e-info guest-xsetbv: this host's XCR0 is {host:#x}");
    let mut c = Checks::new();
    c.that(run.code == Some(0) && seen == Some((host, host)), || {
        format!(
            "expected exit 0, and the guest to set and keep this host's XCR0 {host:#x}; got {} \
             and {seen:x?}; stdout: {}; stderr: {}",
            run.status(),
            run.shown_stdout(),
            run.shown()
        )
    });
    c.finish()
}

/// `guest-hostile-xsetbv`: each value the host must refuse kills the guest with xsetbv's reason.
pub fn hostile_xsetbv() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let mut c = Checks::new();
    for attack in ["xsetbv-xcr1", "xsetbv-no-sse", "xsetbv-beyond-host"] {
        let run = guest(&[attack], PATIENCE)?;
        died(&mut c, &[attack], &run);
        c.that(run.stderr.contains("xsetbv of "), || {
            format!("{attack}: expected xsetbv's reason, got: {}", run.shown())
        });
    }
    c.ok("after the attacks", hello_still_runs());
    c.finish()
}

/// `guest-ports`: the legacy probes of Linux's drivers find nothing, and cost the guest nothing.
pub fn ports() -> anyhow::Result<()> {
    runs_to(
        &["ports"],
        "ports: in read 0xff, 0xffff and 0xffffffff, keeping the rest of rax; out ignored",
    )
}

/// Whether this host's kernel has CPU feature `flag` on (a word of /proc/cpuinfo's flags line).
fn cpu_flag(flag: &str) -> anyhow::Result<bool> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").context("reading /proc/cpuinfo")?;
    let flags = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("flags"))
        .context("no flags line in /proc/cpuinfo")?;
    Ok(flags.split_whitespace().any(|word| word == flag))
}

/// `guest-user-page`: with SMAP on in the host, the guest kernel still reaches a user page.
pub fn user_page() -> anyhow::Result<()> {
    ensure!(
        cpu_flag("smap")?,
        "this host has no SMAP, so the test shows nothing (the test VM, QEMU -cpu max, has it)"
    );
    runs_to(
        &["user-page"],
        "user-page: ring 1 wrote and read a user page with AC clear",
    )
}

/// `guest-hostile-smep`: the guest kernel runs code in a user page, and dies of SMEP's fault.
pub fn hostile_smep() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    ensure!(
        cpu_flag("smep")?,
        "this host has no SMEP, so the test shows nothing (the test VM, QEMU -cpu max, has it)"
    );
    let run = guest(&["smep"], PATIENCE)?;
    let mut c = Checks::new();
    died(&mut c, &["smep"], &run);
    c.that(run.stderr.contains("SMEP"), || {
        format!(
            "expected SMEP's page fault to kill the guest, got: {}",
            run.shown()
        )
    });
    c.ok("after the attack", hello_still_runs());
    c.finish()
}

/// `guest-pgtable-flush`: what NEW_PGTABLE keeps and what NEW_PGTABLE_FLUSH drops, and a bad
/// flag.
pub fn pgtable_flush() -> anyhow::Result<()> {
    runs_to(
        &["pgtable-flush"],
        "pgtable-flush: without FLUSH the old page (0x1111111111111111), with FLUSH the new one \
         (0x2222222222222222), also for the loaded tables (0x1111111111111111)",
    )?;
    let run = guest(&["pgtable-bad-flag"], PATIENCE)?;
    let mut c = Checks::new();
    died(&mut c, &["pgtable-bad-flag"], &run);
    c.that(run.stderr.contains("NEW_PGTABLE with flags 0x2"), || {
        format!("expected NEW_PGTABLE's reason, got: {}", run.shown())
    });
    c.finish()
}

/// How far the guest's wall clock may be from this process's: the guest is started and read
/// within seconds, so minutes mean a wrong clock or a wrong unit.
const WALLCLOCK_SLACK_NS: u128 = 180 * 1_000_000_000;

/// `guest-wallclock`: the time the host wrote at LGUEST_INIT is the VM's own date, give or take
/// [`WALLCLOCK_SLACK_NS`].
pub fn wallclock() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let run = guest(&["wallclock"], PATIENCE)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the VM's clock is before 1970")?
        .as_nanos();
    let guest_ns = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("wallclock: "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|ns| ns.parse::<u128>().ok());
    println!("e2e-info guest-wallclock: the guest read {guest_ns:?} ns, this process {now} ns");
    let mut c = Checks::new();
    c.that(
        run.code == Some(0) && guest_ns.is_some_and(|ns| ns.abs_diff(now) < WALLCLOCK_SLACK_NS),
        || {
            format!(
                "expected exit 0 and a wall clock within {} s of {now} ns, got {} and {guest_ns:?}; \
                 stdout: {}; stderr: {}",
                WALLCLOCK_SLACK_NS / 1_000_000_000,
                run.status(),
                run.shown_stdout(),
                run.shown()
            )
        },
    );
    c.finish()
}
