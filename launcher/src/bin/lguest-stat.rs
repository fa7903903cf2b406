//! `lguest-stat [PID]`: a running guest's exits, live, in the manner of KVM's kvm_stat.
//!
//! lg.ko counts every exit of a guest by its reason, the ones it handles itself included, and
//! shows the counts in the fdinfo of the launcher's `/dev/lguest` (lguest-abi's `stats`
//! module). This program finds that file (the only guest running, or PID's), reads it once a
//! second and shows every bucket with a count, the busiest first, with how many came in the last
//! second: on a terminal redrawn in place, elsewhere one table after another. Reading fdinfo
//! takes none of the guest's locks, so watching never stops the guest. It ends with Ctrl-C, or
//! by itself when the guest's launcher does.
//!
//! Exit status: 0 when the guest ended or `--once` printed its table; 1 for a failure (no guest
//! running, /proc unreadable); 2 for a wrong command line.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use lguest_launcher::stats::{choose_guest, find_guests, live_view, StatsFile};

/// Show a running guest's exits, by reason, refreshed every second (as kvm_stat does for KVM)
#[derive(Parser)]
#[command(name = "lguest-stat", version, after_help = AFTER_HELP)]
struct Args {
    /// The launcher whose guest to watch; needed only when more than one guest runs
    #[arg(value_name = "PID")]
    pid: Option<u32>,
    /// Print the counts so far once, and exit
    #[arg(long)]
    once: bool,
    /// Seconds between two looks
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0, value_parser = positive_seconds)]
    interval: f64,
}

const AFTER_HELP: &str = "\
Each row is one bucket of lg.ko's: its key (switches, hypercall-N, queued-N, trap-V,
fault-fixed, fault-reflected, mmio-P, host-interrupt, died, irq-N), how many so far, how many
per second lately, the time lg.ko spent on them and its mean, and what they are. The book's
chapter 2 (docs/dev-lguest.md) lists the buckets; `lguest-launcher --stats` prints the same table
when its guest stops.

lguest-stat reads /proc/PID/fdinfo/FD of the launcher's /dev/lguest, which the kernel lets
only the launcher's user (or root) read.

Exit status: 0 the guest ended (or --once printed), 1 a failure, 2 a wrong command line.";

fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(seconds) if seconds > 0.0 && seconds.is_finite() => Ok(seconds),
        _ => Err(format!("'{text}' is not a positive number of seconds")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match watch(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("lguest-stat: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn watch(args: &Args) -> anyhow::Result<()> {
    let found = find_guests(Path::new("/proc"), args.pid).context("cannot look through /proc")?;
    let guest = choose_guest(&found, args.pid)?;
    let mut file = StatsFile::of(guest)?;
    let heading = format!(
        "lguest-stat: the guest of process {} (/dev/lguest on fd {})",
        guest.pid, guest.fd
    );
    let mut before = file.read()?;
    let mut then = Instant::now();
    if args.once {
        print!("{heading}\n{}", live_view(&before, None, Duration::ZERO));
        return Ok(());
    }
    let terminal = std::io::stdout().is_terminal();
    let interval = Duration::from_secs_f64(args.interval);
    loop {
        sleep(interval);
        let now = match file.read() {
            Ok(now) => now,
            // The launcher gone (or its /dev/lguest closed) is the guest gone, and its fdinfo
            // with it.
            Err(_) if !guest.fdinfo().exists() => {
                println!("lguest-stat: the guest of process {} has ended", guest.pid);
                return Ok(());
            }
            Err(err) => return Err(err),
        };
        let elapsed = then.elapsed();
        then = Instant::now();
        let table = live_view(&now, Some(&before), elapsed);
        // Home and clear on a terminal, as top does; a blank line between tables elsewhere.
        let start = if terminal { "\x1b[H\x1b[2J" } else { "\n" };
        let mut out = std::io::stdout().lock();
        write!(
            out,
            "{start}{heading}, every {:.1} s, Ctrl-C quits\n{table}",
            args.interval
        )
        .and_then(|()| out.flush())
        .context("cannot write to stdout")?;
        before = now;
    }
}
