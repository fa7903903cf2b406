//! The Linux guest's devices: the launcher's virtio-mmio disk, network card and entropy source,
//! driven by Linux's own drivers (virtio_blk, virtio_net, virtio-rng) under lg.ko.
//!
//! Each scenario boots the Linux guest with `lguest.run=script` and a shell script for its init
//! (tests/harness/linux-guest/init) to run with `sh -e`: the commands a user would type, each
//! result printed as a line `KEY VALUE` for the scenario to find on the console. The host's half
//! (the disk image, the tap device, the other end of a TCP connection) is done here, in the VM.
//!
//! Files are compared by CRC-32, as busybox's `crc32` prints it in the guest (and crc32fast
//! computes it here, for what the host sent or received): enough to catch a lost, doubled or
//! reordered block.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use anyhow::{ensure, Context};

use super::linux::{self, INIT_RUNNING};
use crate::check::Checks;
use crate::kmod;
use crate::launch::{self, shorten, Run};
use crate::netns;

/// A boot, the script and a power-off. The slowest, linux-net's, took 10 to 16 s on 2 shared
/// cores, 38 s with other builds and VMs on them, and 79 s with LGUEST_SLOWDOWN=3, before the
/// Switcher's fast paths, when a process cost the guest up to half a second (every page fault
/// and context switch a trip to the host); the scripts still fork as little as they can.
const PATIENCE: Duration = Duration::from_secs(180);
/// What init prints once the script ran to its end.
const SCRIPT_DONE: &str = "lguest-linux: script exited with status 0";

/// The command-line word that hands init `script` to run. In hexadecimal the script takes
/// twice its size of the guest's 2047-byte command line; the launcher refuses a longer line,
/// and says so.
pub(super) fn script_word(script: &str) -> String {
    let hex: String = script.bytes().map(|b| format!("{b:02x}")).collect();
    format!("lguest.script={hex}")
}

/// Boots the Linux guest with launcher `options` (its devices) and has its init run `script`.
fn run_script(options: &[&str], script: &str) -> anyhow::Result<Run> {
    let script_word = script_word(script);
    launch::launch(
        &linux::args(options, &["lguest.run=script", &script_word]),
        PATIENCE,
    )
}

/// The value of the script's line `KEY VALUE` (the first), without the console's `\r`.
pub(super) fn value<'a>(run: &'a Run, key: &str) -> Option<&'a str> {
    run.stdout.lines().find_map(|line| {
        line.trim_end()
            .strip_prefix(key)
            .and_then(|rest| rest.strip_prefix(' '))
    })
}

/// What the guest said from init on (or, if init never ran, how its boot ended), and the
/// launcher's stderr, for a FAIL line.
pub(super) fn console(run: &Run) -> String {
    let said = match run.stdout.find(INIT_RUNNING) {
        Some(start) => shorten(&run.stdout[start..]),
        None => {
            let tail = (run.stdout.len().saturating_sub(400)..)
                .find(|&i| run.stdout.is_char_boundary(i))
                .unwrap_or(0);
            format!(
                "init never ran; the console ended: {}",
                shorten(&run.stdout[tail..])
            )
        }
    };
    format!("{}; console: {said}; stderr: {}", run.status(), run.shown())
}

/// The script ran to its end and the guest powered off.
pub(super) fn completed(c: &mut Checks, what: &str, run: &Run) {
    c.that(
        run.code == Some(0) && run.stdout.lines().any(|l| l.trim_end() == SCRIPT_DONE),
        || {
            format!(
                "{what}: expected the script to end well, got {}",
                console(run)
            )
        },
    );
}

/// `key`'s value in `run` must be `want`.
pub(super) fn said(c: &mut Checks, what: &str, run: &Run, key: &str, want: &str) {
    let got = value(run, key);
    c.that(got == Some(want), || {
        format!("{what}: expected \"{key} {want}\", got {got:?}")
    });
}

/// A CRC-32 as busybox's `crc32` prints it.
pub(super) fn crc32(bytes: &[u8]) -> String {
    format!("{:08x}", crc32fast::hash(bytes))
}

/// The disk image for `linux-block`, in the VM's tmpfs: 8 MiB, 16384 sectors.
const DISK: &str = "/tmp/lguest-linux-disk.img";
const DISK_BYTES: u64 = 8 << 20;

/// The first boot: mount the disk, write 1 MiB of the guest's own random bytes to a file,
/// unmount, mount again and read the file back from the disk.
const WRITE_AND_REREAD: &str = "\
read -r sectors </sys/block/vda/size
echo \"sectors $sectors\"
mount -t ext2 /dev/vda /mnt
dd if=/dev/urandom of=/mnt/random bs=64k count=16 2>/dev/null
written=$(crc32 </mnt/random)
echo \"written $written\"
umount /mnt
mount -t ext2 /dev/vda /mnt
reread=$(crc32 </mnt/random)
echo \"reread $reread\"
umount /mnt
";

/// The second boot, on the same image read-only: the kernel knows the disk is read-only (the
/// device offers VIRTIO_BLK_F_RO) and refuses a write to it, and the file is there.
const READ_ONLY: &str = "\
read -r ro </sys/block/vda/ro
echo \"read-only $ro\"
if dd if=/dev/zero of=/dev/vda count=1 2>/dev/null; then echo \"wrote a read-only disk\"; exit 1; fi
mount -t ext2 -o ro /dev/vda /mnt
sum=$(crc32 </mnt/random)
echo \"read $sum\"
umount /mnt
";

/// A fresh ext2 image of `bytes` at `path`, labelled `lguest`, made with busybox's mke2fs in
/// the VM.
pub(super) fn make_ext2(path: &str, bytes: u64) -> anyhow::Result<()> {
    File::create(path)
        .and_then(|f| f.set_len(bytes))
        .with_context(|| format!("create {path}"))?;
    let mkfs = Command::new("/bin/mke2fs")
        .args(["-F", "-L", "lguest", path])
        .output()
        .context("run /bin/mke2fs")?;
    ensure!(
        mkfs.status.success(),
        "mke2fs {path} failed: {}",
        shorten(&String::from_utf8_lossy(&mkfs.stderr))
    );
    Ok(())
}

/// `linux-block`: an ext2 image the host made with mke2fs (busybox's, in the VM) is the guest's
/// /dev/vda. Linux mounts it through the ext4 driver, writes a file, unmounts it and reads the
/// same bytes back after mounting it again. A second guest, given the image read-only
/// (`--block FILE,ro`), sees a read-only disk, cannot write it, and finds the file with the same
/// checksum; the image is the same file after that boot as before.
pub fn block() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    make_ext2(DISK, DISK_BYTES)?;

    let mut c = Checks::new();
    let first = run_script(&["--block", DISK], WRITE_AND_REREAD)?;
    completed(&mut c, "the writing boot", &first);
    said(&mut c, "the writing boot", &first, "sectors", "16384");
    let written = value(&first, "written").unwrap_or("(none)");
    said(&mut c, "the writing boot", &first, "reread", written);

    let before = fs::read(DISK).with_context(|| format!("read {DISK}"))?;
    let read_only = format!("{DISK},ro");
    let second = run_script(&["--block", &read_only], READ_ONLY)?;
    let after = fs::read(DISK).with_context(|| format!("read {DISK}"))?;
    fs::remove_file(DISK).with_context(|| format!("remove {DISK}"))?;
    completed(&mut c, "the read-only boot", &second);
    said(&mut c, "the read-only boot", &second, "read-only", "1");
    said(&mut c, "the read-only boot", &second, "read", written);
    c.that(before == after, || {
        "the read-only boot changed the image".to_owned()
    });
    c.finish()
}

/// The tap `linux-net` gives the guest, the host's address on it, the guest's, and the port the
/// host serves its end of the transfers on.
const TAP: &str = "lgtap0";
const HOST_ADDRESS: [u8; 4] = [10, 0, 2, 2];
const PORT: u16 = 5000;
/// A locally administered MAC, so that the scenario can check the guest read it from the device.
const MAC: &str = "52:54:00:6c:67:01";
/// What busybox's ping says when every ping was answered.
const PINGED: &str = "3 packets transmitted, 3 packets received, 0% packet loss";
/// How many bytes go each way.
const TRANSFER_BYTES: usize = 1 << 20;
/// How long the scenario waits for the host's end once the guest has powered off: by then it
/// has finished, or never will.
const SERVER_PATIENCE: Duration = Duration::from_secs(5);

/// The guest's half: bring eth0 up with an address, ping the host, fetch a file from the host
/// and send one of its own random bytes to it, each over a TCP connection of its own.
const NET_SCRIPT: &str = "\
read -r mac </sys/class/net/eth0/address
echo \"mac $mac\"
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ping -c 3 -q 10.0.2.2
nc 10.0.2.2 5000 </dev/null >/tmp/from-host
from_host=$(crc32 </tmp/from-host)
echo \"from-host $from_host\"
dd if=/dev/urandom of=/tmp/to-host bs=64k count=16 2>/dev/null
to_host=$(crc32 </tmp/to-host)
echo \"to-host $to_host\"
nc 10.0.2.2 5000 </tmp/to-host
";

/// The host's end of the transfers: on the first connection it sends `payload` and closes; from
/// the second it reads until the guest closes, and returns what it read.
fn serve(listener: &TcpListener, payload: &[u8]) -> anyhow::Result<Vec<u8>> {
    let (mut to_guest, _) = listener.accept().context("accept the guest's fetch")?;
    to_guest
        .write_all(payload)
        .context("send the file to the guest")?;
    // Closing is the end of the file: busybox's nc stops reading there.
    drop(to_guest);
    let (mut from_guest, _) = listener.accept().context("accept the guest's upload")?;
    let mut got = Vec::new();
    from_guest
        .read_to_end(&mut got)
        .context("read the guest's file")?;
    Ok(got)
}

/// `linux-net`: in a network namespace of its own, a tap with 10.0.2.2/24 backs the guest's
/// virtio NIC. The guest sees the MAC the launcher was given, sets 10.0.2.15/24 with busybox
/// `ip`, pings the host three times and gets three answers, then moves 1 MiB each way over TCP
/// with busybox `nc`: the checksum the guest prints of the file it fetched is that of the
/// bytes the host sent, and the bytes the host received are those whose checksum the guest
/// printed before sending them.
pub fn net() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    super::in_child(|| {
        netns::enter_new()?;
        netns::create_tap(TAP, HOST_ADDRESS)?;
        let address = SocketAddr::from((Ipv4Addr::from(HOST_ADDRESS), PORT));
        let listener = TcpListener::bind(address).with_context(|| format!("bind {address}"))?;
        let mut payload = vec![0; TRANSFER_BYTES];
        File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut payload))
            .context("read /dev/urandom")?;
        let sent = crc32(&payload);
        // The guest's side runs to its end first; the host's end reports on a channel rather
        // than being joined, as it would wait forever for a guest that never connected.
        let (done, result) = mpsc::channel();
        thread::spawn(move || {
            // The receiver is gone only if the scenario already failed.
            let _ = done.send(serve(&listener, &payload));
        });
        let net = format!("tap={TAP},mac={MAC}");
        let run = run_script(&["--net", &net], NET_SCRIPT)?;

        let mut c = Checks::new();
        completed(&mut c, "the guest", &run);
        said(&mut c, "the guest", &run, "mac", MAC);
        c.that(run.stdout.lines().any(|l| l.trim_end() == PINGED), || {
            format!("the guest's ping: expected {PINGED:?} on the console")
        });
        said(&mut c, "the guest", &run, "from-host", &sent);
        match result.recv_timeout(SERVER_PATIENCE) {
            Ok(Ok(received)) => {
                let guest_sent = value(&run, "to-host");
                c.that(
                    received.len() == TRANSFER_BYTES
                        && Some(crc32(&received).as_str()) == guest_sent,
                    || {
                        format!(
                            "the host received {} bytes with checksum {}, the guest sent {} with \
                             checksum {guest_sent:?}",
                            received.len(),
                            crc32(&received),
                            TRANSFER_BYTES
                        )
                    },
                );
            }
            Ok(Err(e)) => c.that(false, || format!("the host's end: {e:#}")),
            Err(_) => c.that(false, || {
                "the host's end never finished: the guest did not fetch and send".to_owned()
            }),
        }
        c.finish()
    })
}

/// The guest reads 64 bytes from /dev/hwrng twice, as hexadecimal.
const RNG_SCRIPT: &str = "\
read -r rng </sys/class/misc/hw_random/rng_current
echo \"rng $rng\"
first=$(xxd -p -c 64 -l 64 /dev/hwrng)
echo \"first $first\"
second=$(xxd -p -c 64 -l 64 /dev/hwrng)
echo \"second $second\"
";

/// `linux-rng`: with `--rng`, Linux's hw_random core picks the virtio entropy device, and two
/// reads of 64 bytes from /dev/hwrng give 64 bytes each, not all zeros, and not the same.
pub fn rng() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let run = run_script(&["--rng"], RNG_SCRIPT)?;
    let mut c = Checks::new();
    completed(&mut c, "the guest", &run);
    said(&mut c, "the guest", &run, "rng", "virtio_rng.0");
    let first = value(&run, "first").unwrap_or("");
    let second = value(&run, "second").unwrap_or("");
    for (name, bytes) in [("first", first), ("second", second)] {
        c.that(
            bytes.len() == 128
                && bytes.bytes().all(|b| b.is_ascii_hexdigit())
                && bytes.bytes().any(|b| b != b'0'),
            || format!("the {name} read: expected 64 bytes, not all zeros, got {bytes:?}"),
        );
    }
    c.that(first != second, || {
        format!("two reads gave the same bytes: {first}")
    });
    c.finish()
}
