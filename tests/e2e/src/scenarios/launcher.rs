//! The launcher as a user meets it: every mistake a user can make is one clear line on stderr
//! and a failing exit code (design.md D8), never a panic or a screenful of log.
//!
//! The mistakes are made with the host's own bzImage (a real kernel, which must be refused for
//! its missing note) and with a tiny hand-made ELF that carries the note (elf.rs), which gets the
//! launcher all the way to /dev/lguest and a guest that dies at its first instruction. Guests
//! that run properly are guest.rs's business.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::check::Checks;
use crate::launch::{self, FAILURE};
use crate::{elf, kmod};

/// The host kernel's own bzImage (xz-compressed): a real kernel, but not one built for lguest.
const BZIMAGE: &str = "/boot/bzImage";
/// The words of the launcher's error for a kernel without the lguest note.
const NO_NOTE: &str = "this kernel was not built to run under lguest";
/// No run here should take more than a moment; a launcher that hangs is killed and fails.
const PATIENCE: Duration = Duration::from_secs(30);

/// `launcher-loads-bzimage`: the launcher unpacks a real bzImage and refuses it for the right
/// reason.
pub fn loads_bzimage() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let mut c = Checks::new();
    one_line_failure(&mut c, "64m bzImage", &["64m", BZIMAGE], NO_NOTE);

    // With -v, the log must show the payload was found and unpacked: the note is looked for in
    // the unpacked ELF, so a refusal without that would prove nothing.
    match launch::launch(&["-v", "64m", BZIMAGE], PATIENCE) {
        Err(e) => c.ok("-v 64m bzImage", Err::<(), _>(e)),
        Ok(run) => {
            c.that(run.code == Some(FAILURE), || {
                format!("-v: expected exit {FAILURE}, got {:?}", run.code)
            });
            let last = run.stderr.lines().last().unwrap_or_default();
            c.that(last.contains(NO_NOTE), || {
                format!("-v: last line {last:?} lacks {NO_NOTE:?}")
            });
            c.that(run.stderr.to_lowercase().contains("xz"), || {
                format!(
                    "-v: no log line mentions the xz payload; stderr: {}",
                    run.shown()
                )
            });
        }
    }
    c.finish()
}

/// `launcher-bad-input`: each mistake gets its one line; and with the right kernel, the launcher
/// tells a missing lg.ko from a present one.
pub fn bad_input() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let dir = Scratch::new()?;
    let random = dir.file("random.bin", &random_bytes(64 * 1024))?;
    let bzimage = std::fs::read(BZIMAGE).with_context(|| format!("cannot read {BZIMAGE}"))?;
    let truncated = dir.file(
        "truncated-bzImage",
        &bzimage[..bzimage.len().min(100 * 1024)],
    )?;
    let tiny = dir.file("lguest-tiny.elf", &elf::lguest_kernel())?;

    let mut c = Checks::new();
    one_line_failure(
        &mut c,
        "missing kernel",
        &["64m", "/nonexistent"],
        "No such file",
    );
    one_line_failure(
        &mut c,
        "random bytes",
        &["64m", &random],
        "not a Linux kernel",
    );
    one_line_failure(
        &mut c,
        "first 100 KiB of a bzImage",
        &["64m", &truncated],
        "truncated bzImage",
    );
    one_line_failure(&mut c, "zero memory", &["0", BZIMAGE], "memory");

    kmod::ensure_unloaded()?;
    one_line_failure(
        &mut c,
        "lguest kernel without lg.ko",
        &["64m", &tiny],
        "insmod lg.ko",
    );
    kmod::load()?;
    // Through INITIALIZE (so lg.ko accepted the launcher's memory, tables and entry point) to
    // the guest's first instruction: `hlt`, privileged at ring 1, so the host kills it.
    one_line_failure(
        &mut c,
        "lguest kernel with lg.ko",
        &["64m", &tiny],
        "guest died: ",
    );
    c.finish()
}

/// The launcher, run with `args`, must exit with [`FAILURE`] and exactly one line on stderr
/// containing `words`.
fn one_line_failure(c: &mut Checks, what: &str, args: &[&str], words: &str) {
    match launch::launch(args, PATIENCE) {
        Err(e) => c.ok(what, Err::<(), _>(e)),
        Ok(run) => {
            let lines = run.stderr.lines().count();
            let holds = run.code == Some(FAILURE) && lines == 1 && run.stderr.contains(words);
            c.that(holds, || {
                format!(
                    "{what}: expected exit {FAILURE} and one stderr line containing {words:?}, \
                     got exit {:?} and {lines} lines: {}",
                    run.code,
                    run.shown()
                )
            });
        }
    }
}

/// Reproducible noise (xorshift64): no ELF magic, no boot sector signature, nothing a loader
/// could mistake for a kernel.
fn random_bytes(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

/// A directory in /tmp for the files these runs need, removed when the scenario ends: the
/// initramfs keeps /tmp in RAM.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> anyhow::Result<Scratch> {
        let dir = std::env::temp_dir().join("lguest-e2e");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Scratch(dir))
    }

    /// Writes `bytes` to a file called `name` in the directory; returns its path.
    fn file(&self, name: &str, bytes: &[u8]) -> anyhow::Result<String> {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path.to_string_lossy().into_owned())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Leftovers only cost RAM until the VM powers off; nothing to report.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
