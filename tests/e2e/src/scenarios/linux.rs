//! The Linux guest: Debian's Linux 6.12 with guest-patches/ applied, under lg.ko.
//!
//! The VM's initramfs holds the guest kernel as /guests/linux/bzImage and its own initramfs
//! (busybox and tests/harness/linux-guest/init) as /guests/linux/initramfs.cpio.gz. Every
//! scenario here runs `lguest-launcher --initrd ... 64m /guests/linux/bzImage ...` and judges
//! the run by what a user sees: the exit status and the guest's console.

use std::time::Duration;

use crate::check::Checks;
use crate::kmod;
use crate::launch::{self, Run};

const KERNEL: &str = "/guests/linux/bzImage";
const INITRD: &str = "/guests/linux/initramfs.cpio.gz";
/// What the guest's init prints once it runs: the kernel booted all the way to user space.
const INIT_RUNNING: &str = "lguest-linux: init running on Linux 6.12";
/// A boot to init and a power-off: about 10 s under TCG on 2 shared cores; six times that
/// leaves room for a machine three times slower.
const PATIENCE: Duration = Duration::from_secs(60);

/// Boots the Linux guest with `words` added to its command line.
fn boot(words: &[&str]) -> anyhow::Result<Run> {
    let mut args = vec!["--initrd", INITRD, "64m", KERNEL, "console=hvc0"];
    args.extend_from_slice(words);
    launch::launch(&args, PATIENCE)
}

/// `linux-boots`: the kernel prints its banner, the memory map the launcher wrote, and that it
/// runs on lguest; its init runs and powers the guest off.
pub fn boots() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let run = boot(&[])?;
    let mut c = Checks::new();
    let said = |what: &str| run.stdout.contains(what);
    c.that(run.code == Some(0), || {
        format!(
            "expected a power-off (exit 0), got {}: {}",
            run.status(),
            run.shown()
        )
    });
    c.that(said("Linux version 6.12"), || {
        format!("no banner on the console: {}", run.shown_stdout())
    });
    c.that(said("BIOS-e820: [mem 0x0000000000000000-"), || {
        format!("no e820 map on the console: {}", run.shown_stdout())
    });
    c.that(said("Booting paravirtualized kernel on lguest"), || {
        format!(
            "the kernel did not name the lguest platform: {}",
            run.shown_stdout()
        )
    });
    c.that(said(INIT_RUNNING), || {
        format!("init never ran: {}", run.shown_stdout())
    });
    c.finish()
}
