//! `lguest-e2e bench`: the in-VM half of `./lguest-dev bench` (tests/harness/bench.sh).
//!
//! Figures, in TSC cycles, measured inside the test VM: lguest-rs's null hypercall round trip
//! as the ring-1 guest times it (its `nop-loop` scenario), a host null syscall for scale, and the
//! teaching guest's microbenchmarks under lg.ko (its `bench` mode, with a virtio disk and network
//! card, so its device figures in MB/s come too), and its `long-run` mode's counts of a 1 ms
//! tick (how many ticks a guest loses is a speed figure: the tests only check that the ticks keep
//! coming), to be set beside the same image's native figures; and the Linux guest's own
//! microbenchmarks (`lguest.run=bench`: tests/harness/linux-guest/lguest-bench.c) on a scratch
//! disk and over the tap to a TCP peer (src/tcp_peer.rs), with the time from the launcher's start
//! to its init. The floor they are set against
//! comes from a boot of its own (tests/guests/floor).
//! Output: `bench lguest nop-hypercall <cycles>`, `bench lguest mmio-read <cycles>` (a device
//! register read, an exit to the launcher), `bench host null-syscall <cycles>`,
//! `bench teaching-lguest <name> <figure>`, `bench teaching-lguest long-run-<ticks|ms|lost>
//! <count>` and `bench linux-lguest <name> <figure>`; a figure that cannot be had is one `lguest-e2e bench: <why>` line on stderr and exit
//! status 1.

use std::arch::x86_64::_rdtsc;
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};

use crate::kmod;
use crate::launch::{self, launch, Run, LAUNCHER};
use crate::scenarios::linux;
use crate::tcp_peer;

/// The guest, its memory and its scenario: tests/guests/ring1, as the initramfs holds it.
const GUEST_ARGS: [&str; 4] = ["64m", "/guests/ring1", "nop-loop", HYPERCALLS];
/// The ring-1 guest reading its console's magic register (the first device page, right above
/// 64 MiB of RAM) in a timed loop.
const MMIO_ARGS: [&str; 4] = ["64m", "/guests/ring1", "mmio-loop", "0x4000000"];
/// Enough hypercalls for a few seconds of switching under TCG, little enough to stay quick.
const HYPERCALLS: &str = "200000";
/// Syscalls per timing, and timings (median reported), as the floor probe times its figures.
const SYSCALLS: u64 = 20_000;
const REPETITIONS: usize = 5;

pub fn run() -> ExitCode {
    let figures = kmod::ensure_loaded().and_then(|()| {
        crate::netns::create_tap(BENCH_TAP, BENCH_HOST)?;
        Ok((
            hypercall()?,
            mmio_read()?,
            teaching_guest()?,
            long_run()?,
            linux()?,
        ))
    });
    match figures {
        Ok((cycles, mmio, teaching, long_run, linux)) => {
            println!("bench lguest nop-hypercall {cycles}");
            println!("bench lguest mmio-read {mmio}");
            println!("bench host null-syscall {}", null_syscall());
            for line in teaching.iter().chain(&long_run) {
                println!("bench teaching-lguest {line}");
            }
            for line in &linux {
                println!("bench linux-lguest {line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lguest-e2e bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The disk the teaching guest benchmarks its devices on, and the tap both guests' network cards
/// are backed by, one guest after the other, with the host's address on it (the address
/// linux-native.sh gives its tap). The VM is booted for the bench alone, so the tap lives in its
/// one network namespace.
const BENCH_DISK: &str = "/tmp/bench-disk.img";
const BENCH_DISK_BYTES: u64 = 32 << 20;
const BENCH_TAP: &str = "lgbench0";
const BENCH_HOST: [u8; 4] = [10, 0, 2, 2];

/// The teaching guest's `bench` lines under lg.ko (`<name> <figure>`), all of them or an error:
/// the guest ends its run with `bench done`.
fn teaching_guest() -> anyhow::Result<Vec<String>> {
    std::fs::File::create(BENCH_DISK)
        .and_then(|disk| disk.set_len(BENCH_DISK_BYTES))
        .with_context(|| format!("create {BENCH_DISK}"))?;
    let net = format!("tap={BENCH_TAP}");
    let args = [
        "64m",
        "--block",
        BENCH_DISK,
        "--net",
        &net,
        "/guests/teaching-guest",
        "bench",
    ];
    let run = launch(&args, Duration::from_secs(300))?;
    ensure!(
        run.code == Some(0) && run.stdout.lines().any(|l| l == "bench done"),
        "`{LAUNCHER} {}`: {}; stdout: {}; stderr: {}",
        args.join(" "),
        run.status(),
        run.shown_stdout(),
        run.shown()
    );
    Ok(run
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("bench "))
        .filter(|l| *l != "done")
        .map(str::to_owned)
        .collect())
}

/// The Linux guest's scratch disk: lguest-bench writes over its first 16 MiB.
const LINUX_BENCH_DISK: &str = "/tmp/linux-bench-disk.img";

/// The Linux guest's `bench` lines under lg.ko (`<name> <figure>`), after `boot-to-init-ms <ms>`:
/// from the launcher's start to the init's first line, as linux-native.sh times the native boot
/// from QEMU's start. Its TCP figures are against the peer (src/tcp_peer.rs), here a thread
/// listening on the tap's address, which lives as long as this process.
fn linux() -> anyhow::Result<Vec<String>> {
    std::fs::File::create(LINUX_BENCH_DISK)
        .and_then(|disk| disk.set_len(BENCH_DISK_BYTES))
        .with_context(|| format!("create {LINUX_BENCH_DISK}"))?;
    let peer = tcp_peer::listen(Ipv4Addr::from(BENCH_HOST))?;
    thread::spawn(move || tcp_peer::serve(peer));
    let net = format!("tap={BENCH_TAP}");
    let peer_word = format!("lguest.bench-peer={}", Ipv4Addr::from(BENCH_HOST));
    let args = linux::args(
        &["--block", LINUX_BENCH_DISK, "--net", &net],
        &["lguest.run=bench", "lguest.bench-disk=/dev/vda", &peer_word],
    );
    let start = Instant::now();
    let mut running = launch::spawn(&args)?;
    running.wait_for(linux::INIT_RUNNING, 1, Duration::from_secs(120))?;
    let boot = start.elapsed();
    let run = running.finish(Duration::from_secs(600))?;
    ensure!(
        run.code == Some(0) && run.stdout.lines().any(|l| l.trim_end() == "bench done"),
        "`{LAUNCHER} {}`: {}; stdout: {}; stderr: {}",
        args.join(" "),
        run.status(),
        run.shown_stdout(),
        run.shown()
    );
    // The guest's console is a terminal: its lines end in "\r\n".
    let figures = run
        .stdout
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix("bench "))
        .filter(|l| *l != "done")
        .map(str::to_owned);
    Ok(
        std::iter::once(format!("boot-to-init-ms {}", boot.as_millis()))
            .chain(figures)
            .collect(),
    )
}

/// How long the teaching guest runs its 1 ms tick for; bench.sh runs it natively as long.
const LONG_RUN_SECONDS: &str = "30";

/// The teaching guest's `long-run` counts under lg.ko, as `long-run-ticks <T>`,
/// `long-run-ms <M>` and `long-run-lost <L>` (bench.sh turns the native run's into the same).
fn long_run() -> anyhow::Result<Vec<String>> {
    let args = [
        "64m",
        "/guests/teaching-guest",
        "long-run",
        LONG_RUN_SECONDS,
    ];
    let (run, command) = powered_off(&args)?;
    // "long-run: T ticks in M ms, tasks ran A and B times, lost L"
    let counts = run
        .stdout
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix("long-run: ")?;
            let (ticks, rest) = rest.split_once(" ticks in ")?;
            let (ms, rest) = rest.split_once(" ms, ")?;
            let lost = rest.rsplit_once(", lost ")?.1;
            let count = |s: &str| s.parse::<u64>().ok();
            Some([
                ("ticks", count(ticks)?),
                ("ms", count(ms)?),
                ("lost", count(lost)?),
            ])
        })
        .with_context(|| {
            format!(
                "`{command}` printed no long-run line: {}",
                run.shown_stdout()
            )
        })?;
    Ok(counts
        .iter()
        .map(|(name, count)| format!("long-run-{name} {count}"))
        .collect())
}

/// Cycles per null hypercall, as the guest's own rdtsc loop reports them.
fn hypercall() -> anyhow::Result<u64> {
    ring1_figure(&GUEST_ARGS, &format!("nop-loop: {HYPERCALLS} hypercalls, "))
}

/// Cycles per read of a device register: an MMIO exit to the launcher, decoded, answered by the
/// console's transport, finished with SETREG.
fn mmio_read() -> anyhow::Result<u64> {
    ring1_figure(&MMIO_ARGS, "mmio-loop: 20000 device reads, ")
}

/// The figure the ring-1 guest run with `args` prints as `<prefix><cycles> cycles each`.
fn ring1_figure(args: &[&str], prefix: &str) -> anyhow::Result<u64> {
    let (run, command) = powered_off(args)?;
    run.stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix(prefix)?
                .strip_suffix(" cycles each")?
                .parse()
                .ok()
        })
        .with_context(|| format!("`{command}` printed no figure: {}", run.shown_stdout()))
}

/// Cycles per `getppid`, the cheapest syscall there is: entry, a field read, exit.
fn null_syscall() -> u64 {
    let mut timings = [0; REPETITIONS];
    for timing in &mut timings {
        // SAFETY: rdtsc only reads the counter.
        let start = unsafe { _rdtsc() };
        for _ in 0..SYSCALLS {
            // SAFETY: getppid takes no arguments, touches no memory of ours and cannot fail.
            unsafe { libc::syscall(libc::SYS_getppid) };
        }
        // SAFETY: as above.
        *timing = (unsafe { _rdtsc() } - start) / SYSCALLS;
    }
    timings.sort_unstable();
    timings[REPETITIONS / 2]
}

/// Runs the launcher with `args` to its end, which must be a power-off: the run, and the command
/// line as an error names it.
fn powered_off(args: &[&str]) -> anyhow::Result<(Run, String)> {
    let run = launch(args, Duration::from_secs(300))?;
    let command = format!("{LAUNCHER} {}", args.join(" "));
    ensure!(
        run.code == Some(0),
        "`{command}`: {}; stderr: {}",
        run.status(),
        run.shown()
    );
    Ok((run, command))
}
