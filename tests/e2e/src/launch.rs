//! Running the launcher as a user does, and keeping what it said.
//!
//! The scenarios judge the launcher (and through it lg.ko) by what a user sees: the exit status,
//! or the signal that ended it, stdout (the guest's console) and stderr (the launcher's own
//! lines). [`spawn`] starts one and [`Running::finish`] waits for it, killing it after a time
//! limit so a hung guest fails its scenario instead of the whole run; [`launch`] does both.
//! Two threads drain the pipes while the launcher runs, so a chatty guest cannot fill a pipe and
//! stall.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, sleep, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub const LAUNCHER: &str = "/bin/lguest-launcher";
/// The launcher's exit code for a guest that died: the host killed it, or the launcher stopped
/// it for a device access it cannot serve. The name is from when every failure exited alike;
/// the scenarios that use it all mean the guest's death. A panic would exit with 101.
pub const FAILURE: i32 = 3;
/// The launcher's exit code for its own failures: a file, /dev/lguest, a device.
pub const LAUNCHER_ERROR: i32 = 1;
/// The launcher's exit code for a command line it refuses (clap's too).
pub const USAGE: i32 = 2;
/// The launcher's exit code when the user typed Ctrl-A x on its terminal.
pub const QUIT: i32 = 5;

/// What a finished launcher left behind.
pub struct Run {
    /// The exit code; `None` if a signal ended it.
    pub code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// stderr for a FAIL line.
    pub fn shown(&self) -> String {
        shorten(&self.stderr)
    }

    /// stdout for a FAIL line.
    pub fn shown_stdout(&self) -> String {
        shorten(&self.stdout)
    }

    /// Exit code or signal, as a FAIL line says it.
    pub fn status(&self) -> String {
        match (self.code, self.signal) {
            (Some(code), _) => format!("exit {code}"),
            (None, Some(signal)) => format!("signal {signal}"),
            (None, None) => "no status".to_owned(),
        }
    }
}

/// Output on one line, and not too long to read.
pub fn shorten(text: &str) -> String {
    let joined = text.trim_end().replace('\n', " | ");
    match joined.char_indices().nth(400) {
        Some((cut, _)) => format!("{}...", &joined[..cut]),
        None => joined,
    }
}

/// The last `chars` characters of `text` (where it stopped is what a hang needs shown).
pub fn tail(text: &str, chars: usize) -> &str {
    let start = text.char_indices().rev().nth(chars).map_or(0, |(at, _)| at);
    &text[start..]
}

/// A launcher that is still running. Dropping it kills the launcher, so an early return from a
/// scenario leaves no guest spinning behind it.
pub struct Running {
    child: Option<Child>,
    args: String,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
    /// What stdout has said so far, for [`Running::wait_for`].
    seen: Arc<Mutex<String>>,
}

/// Starts the launcher with `args`, with a clean log setting and its output captured.
pub fn spawn(args: &[&str]) -> anyhow::Result<Running> {
    spawn_with_input(args, None)
}

/// Starts the launcher as [`spawn`] does, with `input` (if any) on its stdin: the guest's
/// virtio console reads it. The pipe is closed after it, as a file's end would be.
pub fn spawn_with_input(args: &[&str], input: Option<&[u8]>) -> anyhow::Result<Running> {
    let stdin = if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    };
    spawn_on(args, stdin, input)
}

/// Starts the launcher as [`spawn`] does, with a pipe on its stdin that stays open until the
/// returned end is dropped: until then the guest's console sees no end of input, and its input
/// thread lives.
pub fn spawn_with_open_stdin(args: &[&str]) -> anyhow::Result<(Running, ChildStdin)> {
    let mut running = spawn_on(args, Stdio::piped(), None)?;
    let stdin = running
        .child
        .as_mut()
        .and_then(|child| child.stdin.take())
        .context("the launcher's stdin is not a pipe")?;
    Ok((running, stdin))
}

/// Starts the launcher as [`spawn`] does, with `terminal` (a pseudo-terminal's other end) as
/// its stdin, as a user at a terminal would.
pub fn spawn_on_terminal(args: &[&str], terminal: std::fs::File) -> anyhow::Result<Running> {
    spawn_on(args, Stdio::from(terminal), None)
}

fn spawn_on(args: &[&str], stdin: Stdio, input: Option<&[u8]>) -> anyhow::Result<Running> {
    let mut child = Command::new(LAUNCHER)
        .args(args)
        // RUST_LOG would override -v and could add lines of its own.
        .env_remove("RUST_LOG")
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {LAUNCHER}"))?;
    // The pipe is closed after `input`, and left to the caller without it.
    if let Some(bytes) = input {
        use std::io::Write;
        let mut stdin = child
            .stdin
            .take()
            .context("the launcher's stdin is not a pipe")?;
        stdin
            .write_all(bytes)
            .context("cannot write the launcher's stdin")?;
    }
    let stdout: Option<ChildStdout> = child.stdout.take();
    let stderr: Option<ChildStderr> = child.stderr.take();
    let seen = Arc::new(Mutex::new(String::new()));
    Ok(Running {
        child: Some(child),
        args: args.join(" "),
        stdout: stdout.map(|pipe| drain(pipe, Some(seen.clone()))),
        stderr: stderr.map(|pipe| drain(pipe, None)),
        seen,
    })
}

/// Reads a pipe to its end on a thread of its own, and shows what it read so far in `seen`.
fn drain(
    mut pipe: impl Read + Send + 'static,
    seen: Option<Arc<Mutex<String>>>,
) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 4096];
        // A read error ends the output: what came before it is all there is to show.
        while let Ok(n @ 1..) = pipe.read(&mut chunk) {
            bytes.extend_from_slice(&chunk[..n]);
            if let Some(seen) = &seen {
                let mut seen = seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                seen.push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

impl Running {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> anyhow::Result<bool> {
        match self.child.as_mut() {
            Some(child) => Ok(child.try_wait()?.is_none()),
            None => Ok(false),
        }
    }

    /// Waits until stdout has said `text` `times` times (a guest's console line, say), for at
    /// most `patience`; fails if the launcher ends or the time runs out first.
    pub fn wait_for(&mut self, text: &str, times: usize, patience: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let said = {
                let seen = self
                    .seen
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                seen.matches(text).count()
            };
            if said >= times {
                return Ok(());
            }
            if !self.alive()? {
                bail!("the launcher ended before its output said {text:?} {times} times");
            }
            if start.elapsed() > patience {
                bail!("its output did not say {text:?} {times} times within {patience:?}");
            }
            sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the launcher to end; after `patience` it is killed and the run fails.
    pub fn finish(mut self, patience: Duration) -> anyhow::Result<Run> {
        let mut child = self.child.take().context("finished twice")?;
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if start.elapsed() > patience {
                child.kill()?;
                child.wait()?;
                let stdout = self.collect_stdout();
                bail!(
                    "`{LAUNCHER} {}` still ran after {patience:?}; its output ended: {}",
                    self.args,
                    shorten(tail(&stdout, 400))
                );
            }
            sleep(Duration::from_millis(10));
        };
        Ok(Run {
            code: status.code(),
            signal: status.signal(),
            stdout: self.collect_stdout(),
            stderr: join(self.stderr.take()),
        })
    }

    fn collect_stdout(&mut self) -> String {
        join(self.stdout.take())
    }
}

fn join(reader: Option<JoinHandle<String>>) -> String {
    reader
        .map(|r| r.join().unwrap_or_else(|_| "(reader panicked)".to_owned()))
        .unwrap_or_default()
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Best effort: the scenario is failing already.
            let _ = child.kill();
            let _ = child.wait();
        }
        join(self.stdout.take());
        join(self.stderr.take());
    }
}

/// Runs the launcher with `args` to its end, or for at most `patience`.
pub fn launch(args: &[&str], patience: Duration) -> anyhow::Result<Run> {
    spawn(args)?.finish(patience)
}
