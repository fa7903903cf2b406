//! `linux-long-run`: the Linux guest under a mixed load for minutes, and the host afterwards.
//!
//! A hypervisor that passes every short test can still lose a timer after a few thousand ticks,
//! corrupt a disk block once in ten thousand, or leak a page per context switch. So the guest
//! runs, in rounds, everything it does at once: processes (fork and exec), its disk (a file
//! written and synced, the page cache dropped, the file read back from the disk and compared), its
//! network card (a ping to the host over the tap), and its timer (a sleep in every round). It
//! ends by searching its own kernel log for errors, warnings and oopses. The host's side is
//! what every scenario gets (the host's kernel log must stay free of warnings) and the leak
//! check of `leak::grows_in_every_round`: the whole soak is two runs, and nothing of the host's
//! may grow in both.
//!
//! It takes ten minutes, so it is not in `./lguest-dev test`: `./lguest-dev soak` runs it, and
//! `./lguest-dev soak MINUTES` runs it shorter or longer (the VM's `lguest.soak-minutes=`).

use std::fs;
use std::time::Duration;

use anyhow::Context;

use super::linux;
use super::linux_devices::{completed, make_ext2, script_word, value};
use super::Scenario;
use crate::check::Checks;
use crate::launch::{self, shorten, Run};
use crate::{kmod, leak, netns};

/// The scenarios that take too long for `./lguest-dev test`.
pub static SOAKS: [Scenario; 1] = [Scenario {
    name: "linux-long-run",
    run: long_run,
}];

/// The soak's length when the VM's command line does not say: ten minutes.
const DEFAULT_MINUTES: u64 = 10;
/// The disk the guest writes, in the VM's tmpfs.
const DISK: &str = "/tmp/lguest-soak-disk.img";
const DISK_BYTES: u64 = 16 << 20;
const TAP: &str = "lgsoak0";
const HOST_ADDRESS: [u8; 4] = [10, 0, 2, 2];
/// Slab objects that may grow in both runs: a leak of one per process, disk write or ping would
/// be hundreds; the kernel's own noise is tens.
const SLAB_SLACK: i64 = 64;

/// One run's script: rounds of processes, disk, network and timer until `SECONDS` have gone by,
/// then the count of rounds and of alarming lines in the guest's own kernel log.
const SCRIPT: &str = "\
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
mount -t ext2 /dev/vda /mnt
end=$(( $(date +%s) + SECONDS ))
rounds=0
while [ \"$(date +%s)\" -lt \"$end\" ]; do
    i=0
    while [ $i -lt 8 ]; do echo $i | md5sum >/dev/null; i=$((i + 1)); done
    dd if=/dev/urandom of=/mnt/round bs=64k count=8 2>/dev/null
    written=$(crc32 </mnt/round)
    sync
    echo 3 >/proc/sys/vm/drop_caches
    reread=$(crc32 </mnt/round)
    [ \"$written\" = \"$reread\" ] || { echo \"disk-mismatch $written $reread\"; exit 1; }
    ping -c 1 -W 10 -q 10.0.2.2 >/dev/null || { echo ping-lost; exit 1; }
    sleep 1
    rounds=$((rounds + 1))
done
umount /mnt
echo \"rounds $rounds\"
alarms=$(dmesg | grep -ciE 'error|warn|bug:|oops|call trace|stall' || true)
echo \"guest-alarms $alarms\"
dmesg | grep -iE 'error|warn|bug:|oops|call trace|stall' | head -n 3
";

/// `linux-long-run`: two runs of half the soak each; every round of each must pass its checks,
/// the guest's log must be clean, and the host must not grow in both.
pub fn long_run() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let minutes = soak_minutes()?;
    let seconds_per_run = minutes * 60 / 2;
    super::in_child(|| {
        netns::enter_new()?;
        netns::create_tap(TAP, HOST_ADDRESS)?;
        let mut c = Checks::new();
        let mut run_number = 0;
        let leaks = leak::grows_in_every_round("a soak run", 2, SLAB_SLACK, || {
            run_number += 1;
            let run = soak_run(seconds_per_run)?;
            judge(&mut c, run_number, &run);
            Ok(())
        });
        c.ok("the host afterwards", leaks);
        c.finish()
    })
}

/// The soak's length in minutes: the VM's `lguest.soak-minutes=`, or the default.
fn soak_minutes() -> anyhow::Result<u64> {
    let cmdline = fs::read_to_string("/proc/cmdline").context("read /proc/cmdline")?;
    match cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("lguest.soak-minutes="))
    {
        Some(m) => m
            .parse()
            .ok()
            .filter(|&m| m > 0)
            .with_context(|| format!("lguest.soak-minutes={m} is not a number of minutes")),
        None => Ok(DEFAULT_MINUTES),
    }
}

/// One run: a fresh ext2 disk, the network card on the tap, and the script for `seconds`.
fn soak_run(seconds: u64) -> anyhow::Result<Run> {
    make_ext2(DISK, DISK_BYTES)?;
    let script_word = script_word(&SCRIPT.replace("SECONDS", &seconds.to_string()));
    let net = format!("tap={TAP}");
    let args = linux::args(
        &["--block", DISK, "--net", &net],
        &["lguest.run=script", &script_word],
    );
    // The run's own length, and as long again for the boots and rounds of a machine three
    // times slower to finish.
    launch::launch(&args, Duration::from_secs(2 * seconds + 300))
}

/// The run ended well: the script to its end, at least one round, and no alarm in the guest's
/// kernel log.
fn judge(c: &mut Checks, run_number: u32, run: &Run) {
    completed(c, &format!("run {run_number}"), run);
    let rounds = value(run, "rounds").and_then(|r| r.parse::<u64>().ok());
    c.that(rounds.is_some_and(|r| r > 0), || {
        format!("run {run_number}: expected some rounds, got {rounds:?}")
    });
    println!("e2e-info linux-long-run: run {run_number}: {rounds:?} rounds");
    let alarms = value(run, "guest-alarms");
    c.that(alarms == Some("0"), || {
        format!(
            "run {run_number}: the guest's kernel log has {alarms:?} alarming lines: {}",
            shorten(launch::tail(&run.stdout, 400))
        )
    });
}
