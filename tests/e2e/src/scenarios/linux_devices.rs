//! The Linux guest's devices: the launcher's virtio-mmio disk, network card and entropy source,
//! driven by Linux's own drivers (virtio_blk, virtio_net, virtio-rng) under lg.ko.
//!
//! Each scenario boots the Linux guest with `lguest.run=script` and a shell script for its init
//! (tests/harness/linux-guest/init) to run with `sh -e`: the commands a user would type, each
//! result printed as a line `KEY VALUE` for the scenario to find on the console.

use std::time::Duration;

use super::linux::{self, INIT_RUNNING};
use crate::check::Checks;
use crate::kmod;
use crate::launch::{self, shorten, Run};

/// A boot, the script and a power-off. The slowest, linux-net's, took 10 to 16 s on 2 shared
/// cores, 38 s with other builds and VMs on them, and 79 s with LGUEST_SLOWDOWN=3. A process
/// costs the guest up to half a second here (issue 12: every page fault and context switch is a
/// trip to the host), so the scripts fork as little as they can.
const PATIENCE: Duration = Duration::from_secs(180);
/// What init prints once the script ran to its end.
const SCRIPT_DONE: &str = "lguest-linux: script exited with status 0";

/// Boots the Linux guest with launcher `options` (its devices) and has its init run `script`.
/// In hexadecimal the script takes twice its size of the guest's 2047-byte command line; the
/// launcher refuses a longer line, and says so.
fn run_script(options: &[&str], script: &str) -> anyhow::Result<Run> {
    let hex: String = script.bytes().map(|b| format!("{b:02x}")).collect();
    let script_word = format!("lguest.script={hex}");
    launch::launch(
        &linux::args(options, &["lguest.run=script", &script_word]),
        PATIENCE,
    )
}

/// The value of the script's line `KEY VALUE` (the first), without the console's `\r`.
fn value<'a>(run: &'a Run, key: &str) -> Option<&'a str> {
    run.stdout.lines().find_map(|line| {
        line.trim_end()
            .strip_prefix(key)
            .and_then(|rest| rest.strip_prefix(' '))
    })
}

/// What the guest said from init on (or, if init never ran, how its boot ended), and the
/// launcher's stderr, for a FAIL line.
fn console(run: &Run) -> String {
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
fn completed(c: &mut Checks, what: &str, run: &Run) {
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
fn said(c: &mut Checks, what: &str, run: &Run, key: &str, want: &str) {
    let got = value(run, key);
    c.that(got == Some(want), || {
        format!("{what}: expected \"{key} {want}\", got {got:?}")
    });
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
