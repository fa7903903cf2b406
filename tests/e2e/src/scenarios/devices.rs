//! Devices: the launcher's virtio-mmio devices under lg.ko, end to end.
//!
//! Two guests drive them. The ring-1 guest (tests/guests/ring1) touches device pages by hand:
//! the MMIO exit itself (`launcher-mmio*`) and virtqueues no honest driver would build
//! (`hostile-virtqueue`). The teaching guest drives them as a kernel would, with the
//! virtio-drivers crate, in its `devices` mode: one self-test per device, each printing
//! `selftest <name>: PASS`, then `devices: N passed, M failed`.
//!
//! Where the devices are: the launcher puts them right above RAM, one page each, the console
//! first and then block, net and rng in that order, with IRQs 1, 2, 3... (lguest-launcher's
//! `devices` module). With `64m` of RAM the console is at guest-physical 0x4000000, and with
//! `--rng` alone the entropy device follows at 0x4001000.

use std::fs;
use std::time::Duration;

use anyhow::Context;

use crate::check::Checks;
use crate::kmod;
use crate::launch::{self, launch, Run, FAILURE};
use crate::netns;

const MEM: &str = "64m";
const RING1: &str = "/guests/ring1";
const TEACHING: &str = "/guests/teaching-guest";
/// The first device page: right above 64 MiB of RAM.
const CONSOLE_GPA: &str = "0x4000000";
/// The entropy device's page when it is the only device besides the console.
const RNG_GPA: &str = "0x4001000";
/// How long one launcher run may take: the slowest, the teaching guest's block self-test, took
/// 0.4 s on 2 shared cores and 1 s with LGUEST_SLOWDOWN=3 (docs/building.md).
const PATIENCE: Duration = Duration::from_secs(60);
const DIED: &str = "lguest-launcher: guest died: ";

/// The launcher's exit code and both outputs, for a FAIL line.
pub(super) fn shown(run: &Run) -> String {
    format!(
        "{}; stdout: {}; stderr: {}",
        run.status(),
        run.shown_stdout(),
        run.shown()
    )
}

/// The disk `launcher-mmio` gives the ring-1 guest: 8 MiB, 0x4000 sectors.
const SMALL_DISK: &str = "/tmp/lguest-mmio.img";

/// `launcher-mmio`: the ring-1 guest reads a virtio-blk device's registers and config space
/// with `mov` of every width, `movzx`, a 16-bit `mov` (which must leave the rest of R9 alone)
/// and `cmp` (whose flags must come back), and writes one register; the launcher decodes each
/// access and finishes it with SETREG.
pub fn mmio() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    fs::File::create(SMALL_DISK)
        .and_then(|f| f.set_len(DISK_BYTES))
        .with_context(|| format!("create {SMALL_DISK}"))?;
    // The console is the first device page, the disk the second.
    let run = launch(
        &[MEM, "--block", SMALL_DISK, RING1, "mmio", "0x4001000"],
        PATIENCE,
    )?;
    fs::remove_file(SMALL_DISK).with_context(|| format!("remove {SMALL_DISK}"))?;
    let expected = "mmio: magic=0x74726976 device=2 capacity=0x4000 byte=0x40 \
                    r9=0x1111222233334000 below-0x4001=1";
    let mut c = Checks::new();
    c.that(
        run.code == Some(0) && run.stdout.lines().any(|l| l == expected) && run.stderr.is_empty(),
        || {
            format!(
                "expected exit 0, {expected:?} and a quiet stderr, got {}",
                shown(&run)
            )
        },
    );
    c.finish()
}

/// `launcher-mmio-refused`: running code from a device page kills the guest (the host's
/// rule), and an instruction the launcher does not emulate on device memory stops the guest
/// with that instruction's text (the launcher's rule). One stderr line each, the guest's death.
pub fn mmio_refused() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let mut c = Checks::new();
    let exec = launch(&[MEM, RING1, "mmio-exec", CONSOLE_GPA], PATIENCE)?;
    c.that(
        exec.code == Some(FAILURE)
            && exec.stderr.lines().count() == 1
            && exec.stderr.starts_with(DIED)
            && exec.stderr.contains("fetch from device memory"),
        || {
            format!(
                "mmio-exec: expected death for a fetch from device memory, got {}",
                shown(&exec)
            )
        },
    );
    let rmw = launch(&[MEM, RING1, "mmio-rmw", CONSOLE_GPA], PATIENCE)?;
    c.that(
        rmw.code == Some(FAILURE)
            && rmw.stderr.lines().count() == 1
            && rmw.stderr.contains("'or [")
            && rmw.stderr.contains("which the launcher does not emulate"),
        || {
            format!(
                "mmio-rmw: expected the launcher to refuse 'or', got {}",
                shown(&rmw)
            )
        },
    );
    c.finish()
}

/// The bad virtqueues of tests/guests/ring1/src/virtqueue.rs.
const BAD_QUEUES: [&str; 6] = [
    "virtqueue-loop",
    "virtqueue-wild",
    "virtqueue-zero",
    "virtqueue-huge",
    "virtqueue-rings-outside",
    "virtqueue-bad-size",
];

/// `hostile-virtqueue`: descriptor loops, wild addresses, zero and huge lengths, rings outside
/// memory and a queue size that is not a power of two, each offered to the entropy device. The
/// launcher must neither crash nor hang, and after a reset the device must serve an honest
/// request again.
pub fn hostile_virtqueue() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let mut c = Checks::new();
    for attack in BAD_QUEUES {
        let run = launch(&[MEM, "--rng", RING1, attack, RNG_GPA], PATIENCE)?;
        let works = format!("{attack}: the device still works");
        c.that(
            run.code == Some(0)
                && run.stdout.lines().any(|l| l == works)
                && !run.stderr.contains("panicked"),
            || {
                format!(
                    "{attack}: expected exit 0 and {works:?}, got {}",
                    shown(&run)
                )
            },
        );
    }
    c.finish()
}

/// Runs the teaching guest with launcher `options` and guest `words`, feeding `input` to its
/// console.
fn teaching(options: &[&str], words: &[&str], input: Option<&[u8]>) -> anyhow::Result<Run> {
    let mut args = vec![MEM];
    args.extend_from_slice(options);
    args.push(TEACHING);
    args.extend_from_slice(words);
    launch::spawn_with_input(&args, input)?.finish(PATIENCE)
}

/// Checks that `run` passed the device self-tests `names` and ended well.
pub(super) fn passed(c: &mut Checks, run: &Run, names: &[&str]) {
    for name in names {
        let line = format!("selftest {name}: PASS");
        c.that(run.stdout.lines().any(|l| l == line), || {
            format!("expected {line:?}, got {}", shown(run))
        });
    }
    let summary = format!("devices: {} passed, 0 failed", names.len());
    c.that(
        run.code == Some(0) && run.stdout.lines().any(|l| l == summary),
        || format!("expected exit 0 and {summary:?}, got {}", shown(run)),
    );
}

/// `devices-rng`: two reads of the entropy device differ.
pub fn rng() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let run = teaching(&["--rng"], &["devices"], None)?;
    let mut c = Checks::new();
    passed(&mut c, &run, &["rng-entropy"]);
    c.finish()
}

/// `devices-console-echo`: a line on the launcher's stdin reaches the guest through the virtio
/// console's receive queue (and an interrupt), and comes back on stdout. (Every guest has a
/// console; only the word `echo` makes the guest wait for a line on it.)
pub fn console_echo() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let run = teaching(&[], &["devices", "echo"], Some(b"hello lguest\n"))?;
    let mut c = Checks::new();
    passed(&mut c, &run, &["console-echo"]);
    c.that(run.stdout.contains("echo: hello lguest"), || {
        format!("expected the echo on stdout, got {}", shown(&run))
    });
    c.finish()
}

/// The disk for `devices-block`: 8 MiB, in the VM's tmpfs.
const DISK: &str = "/tmp/lguest-disk.img";
const DISK_BYTES: u64 = 8 << 20;

/// `devices-block`: the guest writes a pattern over the whole disk and reads it back; a second
/// boot (a fresh launcher and guest) reads it again; and the file on the host holds it.
pub fn block() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let file = fs::File::create(DISK).with_context(|| format!("create {DISK}"))?;
    file.set_len(DISK_BYTES)
        .with_context(|| format!("size {DISK}"))?;
    drop(file);
    let mut c = Checks::new();
    let first = teaching(&["--block", DISK], &["devices"], None)?;
    passed(&mut c, &first, &["block-write-read-verify"]);
    let second = teaching(&["--block", DISK], &["devices-verify"], None)?;
    passed(&mut c, &second, &["block-reread-verify"]);
    let bytes = fs::read(DISK).with_context(|| format!("read {DISK}"))?;
    let wrong = bytes
        .chunks_exact(8)
        .enumerate()
        .position(|(i, word)| word != disk_pattern(i as u64 * 8).to_le_bytes());
    c.that(bytes.len() as u64 == DISK_BYTES && wrong.is_none(), || {
        format!(
            "the disk file after the guest wrote it: {} bytes, first wrong word at {:?}",
            bytes.len(),
            wrong.map(|w| w * 8)
        )
    });
    fs::remove_file(DISK).with_context(|| format!("remove {DISK}"))?;
    c.finish()
}

/// The teaching guest's block pattern: the word at byte `offset` of the disk
/// (`pattern` in guest/src/devices.rs).
fn disk_pattern(offset: u64) -> u64 {
    offset ^ 0x6c67_7565_7374_2d72
}

/// The tap device `devices-net-ping` gives the guest, and the address that answers the ping.
const TAP: &str = "lgtap0";
const TAP_ADDRESS: [u8; 4] = [10, 0, 2, 2];

/// `devices-net-ping`: in a network namespace of its own, a tap device with 10.0.2.2/24; the
/// guest (10.0.2.15) resolves it by ARP and pings it through virtio-net, and the host's own
/// network stack answers.
pub fn net_ping() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    super::in_child(|| {
        netns::enter_new()?;
        netns::create_tap(TAP, TAP_ADDRESS)?;
        let net = format!("tap={TAP}");
        let run = teaching(
            &["--net", &net],
            &["devices", "ip=10.0.2.15", "ping=10.0.2.2"],
            None,
        )?;
        let mut c = Checks::new();
        passed(&mut c, &run, &["net-ping"]);
        c.finish()
    })
}
