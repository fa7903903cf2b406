//! The Linux guest under load: its memory filled and checked word by word, a storm
//! of processes checking their copy-on-write pages and protections, a guest with less RAM than
//! its working set, a root file system on a virtio disk across a reboot, and two guests at once
//! that cannot see each other's memory.
//!
//! The guest's half of each is busybox and `memwork` (tests/harness/linux-guest/memwork.c, in
//! the guest's initramfs), run by init's `lguest.run=script` as in linux_devices.rs; the host's
//! half is here: the disk images and e2fsck, the markers, and the host's own accounts of what a
//! guest held: its pins (exact, host-wide) and its shadow tables (in the host's free memory,
//! since lg.ko keeps no count of them).

use std::fs::{self, File};
use std::io::{Read, Write};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};

use super::linux::{self, INITRD, INIT_RUNNING};
use super::linux_devices::{completed, console, crc32, said, script_word, value};
use super::resources::locked_kib;
use crate::check::Checks;
use crate::kmod;
use crate::launch::{self, Run, Running};
use crate::leak::{self, Snapshot};

/// How long a guest of `linux-mm-stress` or `linux-two-guests` may take: a boot and work where
/// every new page and context switch is a trip to the host. The slowest, the storm, takes 7 to
/// 10 s on 2 shared cores with the Switcher's fast paths; before them it took 260 to 570 s (with
/// 256 processes doing more each than now), and three times that is still inside, so a host
/// that loses the fast paths shows up as slow, not as a timeout.
const PATIENCE: Duration = Duration::from_secs(1800);

/// What the 1 GiB guest fills: three quarters of its RAM, every word written and checked twice.
const FILL_MIB: u64 = 768;
/// Processes in the storm: a few hundred, each costing the guest some tens of milliseconds under
/// TCG (a fork, faults, checks, for every fourth an exec).
const STORM_PROCESSES: u32 = 200;

/// Slab objects and free memory the three guests of `linux-mm-stress` may cost the host, once:
/// between them they held over 800 MiB of pins and thousands of table pages, and the pins alone
/// are a slab object each in lg.ko's tree. The kernel's own noise over the scenario was 0 to
/// 475 objects and under 200 KiB in three runs.
const MM_SLAB_SLACK: i64 = 2000;
const MM_FREE_SLACK_KIB: i64 = 4096;

/// Boots the Linux guest with `mem` of RAM, from the usual initramfs, its init running
/// `script`; the launcher keeps running while the caller watches it.
fn spawn_script(mem: &str, script: &str) -> anyhow::Result<Running> {
    let word = script_word(script);
    launch::spawn(&linux::args_with(
        &[],
        mem,
        Some(INITRD),
        &["lguest.run=script", &word],
    ))
}

/// Waits for `running` to end, at most `patience`, and returns its run with the most locked
/// memory (VmLck, KiB) its guest's process had meanwhile: the guest pages lg.ko pinned for it.
/// That process is the launcher's child (supervise.rs), which holds /dev/lguest.
fn watch_locked(mut running: Running, patience: Duration) -> anyhow::Result<(Run, u64)> {
    let start = Instant::now();
    let guest = running.guest_pid(patience)?;
    let mut most = 0;
    while running.alive()? && start.elapsed() < patience {
        most = most.max(locked_kib(guest).unwrap_or(0));
        sleep(Duration::from_millis(100));
    }
    let run = running.finish(patience.saturating_sub(start.elapsed()))?;
    Ok((run, most))
}

/// No page pinned since `before` (host-wide) is still pinned: the guests are gone, and with
/// them every shadow entry.
fn pins_released(c: &mut Checks, what: &str, before: i64) -> anyhow::Result<()> {
    let left = leak::pinned_pages()? - before;
    c.that(left == 0, || {
        format!("{left} pages still pinned after {what} ended")
    });
    Ok(())
}

/// `linux-mm-stress`: three guests, after each of which no page is left pinned, and after all
/// of which the host has its memory back (shadow tables included):
/// - a 1 GiB guest fills 768 MiB and checks every word, twice; its launcher's locked memory
///   shows lg.ko pinned at least that much meanwhile;
/// - a 64 MiB guest runs 200 processes, four at a time, each checking its copy-on-write copy of
///   its parent's buffer while the parent writes its own, and mapping, protecting and
///   unmapping pages of its own (a write to a read-only page and a read of an unmapped one
///   must fault); every fourth execs first;
/// - a 64 MiB guest runs a process that takes memory until the OOM killer ends it, and lives
///   on: it fills and checks 16 MiB and runs a small storm afterwards, and powers off.
pub fn mm_stress() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    // The first look creates what every later one reads (module.rs's leak check says why).
    Snapshot::take()?;
    let mut c = Checks::new();
    let host = leak::gives_back(
        "linux-mm-stress's three guests",
        MM_SLAB_SLACK,
        MM_FREE_SLACK_KIB,
        || {
            fill(&mut c)?;
            storm(&mut c)?;
            out_of_memory(&mut c)
        },
    );
    c.ok("the host's memory after the guests", host);
    c.finish()
}

/// For the reader of the log, and for sizing [`PATIENCE`]: how long one guest took.
fn took(what: &str, start: Instant) {
    println!(
        "e2e-info linux-mm-stress: {what} took {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

fn fill(c: &mut Checks) -> anyhow::Result<()> {
    let pins = leak::pinned_pages()?;
    let start = Instant::now();
    let running = spawn_script("1g", &format!("memwork fill {FILL_MIB}\n"))?;
    let (run, most_locked) = watch_locked(running, PATIENCE)?;
    took("the 1 GiB guest", start);
    println!("e2e-info linux-mm-stress: its launcher had at most {most_locked} KiB locked");
    completed(c, "the 1 GiB guest", &run);
    said(
        c,
        "the 1 GiB guest",
        &run,
        "fill",
        &format!("{FILL_MIB} MiB verified"),
    );
    c.that((FILL_MIB << 10..=1 << 20).contains(&most_locked), || {
        format!(
            "the 1 GiB guest's launcher had at most {most_locked} KiB locked: expected the \
             {FILL_MIB} MiB it filled, and no more than its RAM"
        )
    });
    pins_released(c, "the 1 GiB guest", pins)
}

fn storm(c: &mut Checks) -> anyhow::Result<()> {
    let pins = leak::pinned_pages()?;
    let script = format!("memwork storm {STORM_PROCESSES} 4\n");
    let start = Instant::now();
    let run = spawn_script("64m", &script)?.finish(PATIENCE)?;
    took("the storm", start);
    completed(c, "the storm", &run);
    said(
        c,
        "the storm",
        &run,
        "storm",
        &format!(
            "{STORM_PROCESSES} processes, {} exec'd: copy-on-write, mprotect and munmap checked",
            STORM_PROCESSES / 4
        ),
    );
    pins_released(c, "the storm", pins)
}

/// The hog must not survive; the kernel log must name it as the OOM killer's victim; the guest
/// goes on with a fill and a storm that check their memory as before.
const OOM_SCRIPT: &str = "\
if memwork hog; then exit 1; fi
echo \"oom-kills $(dmesg | grep -c 'Out of memory: Killed process [0-9]* (memwork)')\"
memwork fill 16
memwork storm 16 4
";

fn out_of_memory(c: &mut Checks) -> anyhow::Result<()> {
    let pins = leak::pinned_pages()?;
    let start = Instant::now();
    let run = spawn_script("64m", OOM_SCRIPT)?.finish(PATIENCE)?;
    took("the guest out of memory", start);
    let what = "the guest out of memory";
    completed(c, what, &run);
    said(c, what, &run, "oom-kills", "1");
    said(c, what, &run, "fill", "16 MiB verified");
    said(
        c,
        what,
        &run,
        "storm",
        "16 processes, 4 exec'd: copy-on-write, mprotect and munmap checked",
    );
    pins_released(c, what, pins)
}

/// linux-disk-root's image, gzipped in the VM's initramfs (build-linux-diskroot.sh), and where
/// the scenario unpacks it.
const ROOT_IMAGE: &str = "/guests/linux/root.ext4.gz";
const ROOT_DISK: &str = "/tmp/lguest-linux-root.ext4";
/// A boot, files written, a reboot, a boot and a check: about twice linux-block's time.
const DISK_ROOT_PATIENCE: Duration = Duration::from_secs(300);

/// Both boots run this. The first finds no /data/written: it writes 2 MiB of random bytes and
/// a hundred small files, then reboots; the second finds them and sums them. Each leaves its
/// root read-only before it ends, as a shutdown would, so that the file system is clean.
const DISK_ROOT_SCRIPT: &str = "\
set -- $(grep ' / ' /proc/mounts | tail -n 1)
echo \"root $1 $3 ${4%%,*}\"
if [ -f /data/written ]; then
  echo \"found $(crc32 </data/random) $(cat /data/written)\"
  n=0; sum=0
  for f in /data/small/*; do read -r i <$f; n=$((n + 1)); sum=$((sum + i)); done
  echo \"small $n files summing to $sum\"
  mount -o remount,ro /
else
  mkdir -p /data/small
  dd if=/dev/urandom of=/data/random bs=64k count=32 2>/dev/null
  echo \"written $(crc32 </data/random)\"
  crc32 </data/random >/data/written
  i=0; while [ $i -lt 100 ]; do echo $i >/data/small/$i; i=$((i + 1)); done
  sync
  mount -o remount,ro /
  reboot -f
fi
";

/// `linux-disk-root`: the Linux guest boots without an initramfs from an ext4 image the host
/// made (mke2fs -d from a busybox tree), `root=/dev/vda`. It writes files, reboots, and the
/// second boot finds them as written; e2fsck on the host finds the file system clean after.
/// The launcher's supervisor restarts the guest in a fresh, confined process, so the seccomp
/// filter stays on across the reboot.
pub fn disk_root() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let disk = File::create(ROOT_DISK).with_context(|| format!("create {ROOT_DISK}"))?;
    let gunzip = Command::new("/bin/gunzip")
        .args(["-c", ROOT_IMAGE])
        .stdout(disk)
        .status()
        .context("run /bin/gunzip")?;
    ensure!(gunzip.success(), "gunzip -c {ROOT_IMAGE} failed: {gunzip}");

    let word = script_word(DISK_ROOT_SCRIPT);
    let words = [
        "root=/dev/vda",
        "rootfstype=ext4",
        "rw",
        "init=/init",
        "lguest.run=script",
        &word,
    ];
    let options = ["--block", ROOT_DISK];
    let run = launch::launch(
        &linux::args_with(&options, "64m", None, &words),
        DISK_ROOT_PATIENCE,
    )?;
    let fsck = Command::new("/bin/e2fsck")
        .args(["-f", "-n", ROOT_DISK])
        .output()
        .context("run /bin/e2fsck")?;
    fs::remove_file(ROOT_DISK).with_context(|| format!("remove {ROOT_DISK}"))?;

    let mut c = Checks::new();
    completed(&mut c, "the second boot", &run);
    let boots = run.stdout.matches(INIT_RUNNING).count();
    c.that(boots == 2, || {
        format!("expected two boots to init, saw {boots}: {}", console(&run))
    });
    let roots = run
        .stdout
        .lines()
        .filter(|l| l.trim_end() == "root /dev/root ext4 rw")
        .count();
    c.that(roots == 2, || {
        format!(
            "expected both boots on a writable ext4 root (\"root /dev/root ext4 rw\"), got {:?}",
            value(&run, "root")
        )
    });
    let written = value(&run, "written");
    let found = value(&run, "found");
    c.that(
        written.is_some() && found == written.map(|w| format!("{w} {w}")).as_deref(),
        || {
            format!(
                "the second boot should find the 2 MiB file and its checksum as the first wrote \
                 them ({written:?}), found {found:?}"
            )
        },
    );
    said(
        &mut c,
        "the second boot",
        &run,
        "small",
        "100 files summing to 4950",
    );
    let report = String::from_utf8_lossy(&fsck.stdout);
    c.that(fsck.status.success(), || {
        format!(
            "e2fsck -f -n afterwards: {}: {}",
            fsck.status,
            launch::shorten(&report)
        )
    });
    c.finish()
}

/// Each of linux-two-guests' guests, by name: its disk, and the marker it writes.
struct TwoGuest {
    name: &'static str,
    disk: &'static str,
    marker: [u8; 16],
}

/// How big each guest's disk is, and where its data starts (its label is in the first sector).
const TWO_DISK_BYTES: u64 = 4 << 20;
const TWO_DATA_AT: usize = 64 << 10;
const TWO_DATA_BYTES: usize = 1 << 20;
/// Pages each guest marks, and the least of its RAM (64 MiB) its scan must cover.
const MARKED_PAGES: u64 = 2048;
const SCANNED_MIB: u64 = 56;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `marker` as memwork takes it: masked with fresh random bytes, and the mask; the marker
/// itself appears in neither word, nor anywhere in the guest that is given them.
fn masked(marker: &[u8; 16]) -> anyhow::Result<(String, String)> {
    let mut mask = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut mask))
        .context("read /dev/urandom")?;
    let masked: Vec<u8> = marker.iter().zip(&mask).map(|(m, k)| m ^ k).collect();
    Ok((hex(&masked), hex(&mask)))
}

/// One guest's script: its name on its console, a label and 1 MiB of random bytes on its disk
/// (the host checks both afterwards), a storm of processes, then its marker in 8 MiB of its
/// RAM, and once the scenario says so (a line on the console), the search of all of its RAM.
fn two_script(me: &TwoGuest, other: &TwoGuest) -> anyhow::Result<String> {
    let (mine, my_mask) = masked(&me.marker)?;
    let (theirs, their_mask) = masked(&other.marker)?;
    let name = me.name;
    Ok(format!(
        "\
echo \"i-am {name}\"
echo \"disk of guest {name}\" | dd of=/dev/vda bs=512 count=1 conv=sync 2>/dev/null
dd if=/dev/urandom of=/tmp/data bs=64k count=16 2>/dev/null
echo \"data $(crc32 </tmp/data)\"
dd if=/tmp/data of=/dev/vda bs=64k seek=1 2>/dev/null
sync
memwork storm 32 4
memwork isolate {mine} {my_mask} {theirs} {their_mask} 8
"
    ))
}

/// What the search found: MiB scanned, the guest's own marker, the other's.
fn isolation(run: &Run) -> Option<(u64, u64, u64)> {
    let rest = run
        .stdout
        .lines()
        .find_map(|l| l.trim_end().strip_prefix("isolate: scanned "))?;
    let (scanned, rest) = rest.split_once(" MiB, own marker ")?;
    let (own, rest) = rest.split_once(" times, the other's ")?;
    let other = rest.strip_suffix(" times")?;
    Some((
        scanned.parse().ok()?,
        own.parse().ok()?,
        other.parse().ok()?,
    ))
}

/// `linux-two-guests`: two Linux guests at once, one on each of the VM's CPUs, each with its
/// own console and disk, each running a workload (a disk write, a storm of 32 processes). Each
/// marks 8 MiB of its RAM with a random marker, and once both have, searches all of its RAM
/// (/proc/kcore) for both markers: it finds its own in every page it marked, and the other's
/// nowhere. Afterwards each disk holds its own guest's label and bytes, each console only its
/// own guest's name, and no page is left pinned.
pub fn two_guests() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let mut markers = [[0u8; 16]; 2];
    let mut random = File::open("/dev/urandom").context("open /dev/urandom")?;
    for marker in &mut markers {
        random.read_exact(marker).context("read /dev/urandom")?;
    }
    let guests = [
        TwoGuest {
            name: "a",
            disk: "/tmp/lguest-linux-a.img",
            marker: markers[0],
        },
        TwoGuest {
            name: "b",
            disk: "/tmp/lguest-linux-b.img",
            marker: markers[1],
        },
    ];
    let pins = leak::pinned_pages()?;
    let mut running = Vec::new();
    for (me, other) in [(&guests[0], &guests[1]), (&guests[1], &guests[0])] {
        File::create(me.disk)
            .and_then(|f| f.set_len(TWO_DISK_BYTES))
            .with_context(|| format!("create {}", me.disk))?;
        let word = script_word(&two_script(me, other)?);
        let args = linux::args_with(
            &["--block", me.disk],
            "64m",
            Some(INITRD),
            &["lguest.run=script", &word],
        );
        running.push(launch::spawn_with_open_stdin(&args)?);
    }
    // Both marked before either searches: the two ran at once, and each search happens while
    // the other guest's marker is in its RAM.
    for (guest, _) in &mut running {
        guest.wait_for("isolate: marked", 1, PATIENCE)?;
    }
    for (_, stdin) in &mut running {
        stdin
            .write_all(b"go\n")
            .context("cannot type on a guest's console")?;
    }
    let mut runs = Vec::new();
    for (guest, _stdin) in running {
        runs.push(guest.finish(PATIENCE)?);
    }
    for (guest, run) in guests.iter().zip(&runs) {
        if let Some((scanned, own, theirs)) = isolation(run) {
            println!(
                "e2e-info linux-two-guests: guest {} searched {scanned} MiB: its own marker \
                 {own} times, the other's {theirs}",
                guest.name
            );
        }
    }

    let mut c = Checks::new();
    for ((me, other), run) in [(&guests[0], &guests[1]), (&guests[1], &guests[0])]
        .into_iter()
        .zip(&runs)
    {
        let what = format!("guest {}", me.name);
        completed(&mut c, &what, run);
        let others_name = format!("i-am {}", other.name);
        c.that(
            value(run, "i-am") == Some(me.name) && !run.stdout.contains(&others_name),
            || {
                format!(
                    "{what}'s console should name it and only it: {}",
                    console(run)
                )
            },
        );
        said(
            &mut c,
            &what,
            run,
            "storm",
            "32 processes, 8 exec'd: copy-on-write, mprotect and munmap checked",
        );
        match isolation(run) {
            Some((scanned, own, theirs)) => c.that(
                scanned >= SCANNED_MIB && own >= MARKED_PAGES && theirs == 0,
                || {
                    format!(
                        "{what} searched {scanned} MiB of its RAM and found its own marker \
                         {own} times, the other guest's {theirs} times: expected at least \
                         {SCANNED_MIB} MiB, {MARKED_PAGES} and none"
                    )
                },
            ),
            None => c.that(false, || {
                format!("{what} never said what its search found: {}", console(run))
            }),
        }
        let image = fs::read(me.disk).with_context(|| format!("read {}", me.disk))?;
        fs::remove_file(me.disk).with_context(|| format!("remove {}", me.disk))?;
        let label = format!("disk of guest {}\n", me.name);
        let data = &image[TWO_DATA_AT..TWO_DATA_AT + TWO_DATA_BYTES];
        c.that(
            image.starts_with(label.as_bytes()) && Some(crc32(data).as_str()) == value(run, "data"),
            || {
                format!(
                    "{what}'s disk should start with {label:?} and hold the bytes it wrote \
                     (checksum {:?}), it starts with {:?} and holds {}",
                    value(run, "data"),
                    String::from_utf8_lossy(&image[..label.len()]),
                    crc32(data)
                )
            },
        );
    }
    pins_released(&mut c, "the two guests", pins)?;
    c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_saying(stdout: &str) -> Run {
        Run {
            code: Some(0),
            signal: None,
            stdout: stdout.to_owned(),
            stderr: String::new(),
        }
    }

    #[test]
    fn isolation_reads_the_search_line() {
        let run = run_saying(
            "isolate: marked 2048 pages\r\n\
             isolate: scanned 63 MiB, own marker 2050 times, the other's 0 times\r\n",
        );
        assert_eq!(isolation(&run), Some((63, 2050, 0)));
    }

    #[test]
    fn isolation_without_a_search_is_none() {
        let run = run_saying("isolate: marked 2048 pages\r\nmemwork: isolate: stdin ended\r\n");
        assert_eq!(isolation(&run), None);
    }
}
