//! The launcher as a user meets it: every mistake a user can make is one clear line on stderr
//! and a failing exit code (design.md D8), never a panic or a screenful of log.
//!
//! There is no kernel built for lguest yet, so the happy path is walked with the one kernel the
//! VM has (the host's own bzImage, which must be refused for its missing note) and with a tiny
//! hand-made ELF that carries the note (elf.rs), which gets the launcher all the way to
//! /dev/lguest.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::check::Checks;
use crate::{elf, kmod};

const LAUNCHER: &str = "/bin/lguest-launcher";
/// The host kernel's own bzImage (xz-compressed): a real kernel, but not one built for lguest.
const BZIMAGE: &str = "/boot/bzImage";
/// The words of the launcher's error for a kernel without the lguest note.
const NO_NOTE: &str = "this kernel was not built to run under lguest";
/// The launcher's exit code for any failure; a panic would exit with 101, a usage error with 2.
const FAILURE: i32 = 1;
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
    match launch(&["-v", "64m", BZIMAGE]) {
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
    // the first read(), which this lg.ko answers with "nothing to run yet".
    one_line_failure(
        &mut c,
        "lguest kernel with lg.ko",
        &["64m", &tiny],
        "cannot run guests yet",
    );
    c.finish()
}

/// The launcher, run with `args`, must exit with [`FAILURE`] and exactly one line on stderr
/// containing `words`.
fn one_line_failure(c: &mut Checks, what: &str, args: &[&str], words: &str) {
    match launch(args) {
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

/// What a launcher run left behind.
struct Run {
    /// The exit code; `None` if a signal ended it.
    code: Option<i32>,
    stderr: String,
}

impl Run {
    /// stderr for a FAIL line: on one line, and not too long to read.
    fn shown(&self) -> String {
        let joined = self.stderr.trim_end().replace('\n', " | ");
        match joined.char_indices().nth(400) {
            Some((cut, _)) => format!("{}...", &joined[..cut]),
            None => joined,
        }
    }
}

/// Runs the launcher to its end (killing it after [`PATIENCE`]) with a clean log setting.
fn launch(args: &[&str]) -> anyhow::Result<Run> {
    let mut child = Command::new(LAUNCHER)
        .args(args)
        // RUST_LOG would override -v and could add lines of its own.
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {LAUNCHER}"))?;
    // The launcher writes a few lines at most, far less than a pipe holds, so waiting before
    // reading cannot deadlock.
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() > PATIENCE {
            child.kill()?;
            child.wait()?;
            bail!(
                "`{LAUNCHER} {}` still ran after {PATIENCE:?}",
                args.join(" ")
            );
        }
        sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .context("no stderr pipe")?
        .read_to_string(&mut stderr)?;
    Ok(Run {
        code: status.code(),
        stderr,
    })
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
