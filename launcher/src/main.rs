//! `lguest-launcher [OPTIONS] <MEM> <KERNEL> [CMDLINE]...`: the command a user types.
//!
//! This file walks the steps the library provides, in the order lib.rs tells them, logs what
//! it did, and turns any failure into one line on stderr and an exit code (cli.rs lists them):
//! 2 for a command line it refuses, 1 for everything else that fails. How the guest ends decides
//! how the launcher ends: power off is exit 0, a restart starts the guest afresh (or, with
//! --no-reboot, exits 4), and death is the reason on stderr and exit 3. The user can end it too,
//! with Ctrl-A x on its terminal: exit 5 (terminal.rs).
//!
//! The guest runs in a child process, which the launcher forks, waits for, and forks again when
//! the guest reboots (supervise.rs); under --no-reboot, in the launcher's own. Between setting
//! the guest up and running it, that process confines itself (confine.rs, seccomp.rs): a new
//! root, a user without privilege, and the seccomp filter. With `--stats` it prints what lg.ko
//! counted of the guest's exits once the guest stops (stats.rs).

use std::ffi::OsString;
use std::fs::File;
use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use lguest_abi::dev::Initialize;
use lguest_abi::PAGE_SIZE;
use log::{info, warn};
use nix::unistd::{getpid, Pid};

use lguest_launcher::boot_params::{
    fixed_reserved, write_boot_params, Layout, BOOT_PARAMS_GPA, CMDLINE_GPA,
};
use lguest_launcher::cli::{self, Args, Request};
use lguest_launcher::confine::{self, Credentials};
use lguest_launcher::device::{LguestDevice, DEFAULT_PATH};
use lguest_launcher::kernel::load_kernel;
use lguest_launcher::memlock;
use lguest_launcher::memory::{Bytes, GuestAddress, GuestRam};
use lguest_launcher::pagetables::write_initial_page_tables;
use lguest_launcher::run::{run_guest, Stop};
use lguest_launcher::seccomp;
use lguest_launcher::size::format_size;
use lguest_launcher::stats::{self, StatsFile};
use lguest_launcher::supervise::{self, Ended};
use lguest_launcher::terminal::RawTerminal;
use lguest_launcher::virtio::{open_tap, Block, Console, DeviceManager, Net, Rng, VirtioDevice};

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    // clap prints its own errors (and --help) and exits, with USAGE for an error.
    let parsed = Args::try_parse_from(&argv).unwrap_or_else(|err| err.exit());
    let mut args = match parsed.check(&argv) {
        Ok(args) => args,
        Err(err) => {
            eprintln!("lguest-launcher: {err:#}");
            return ExitCode::from(cli::USAGE);
        }
    };
    // Looked up now, while the user database is still at hand: an unknown user is a mistake in
    // the command line, found before anything is set up.
    let user = match args.user.as_deref().map(Credentials::resolve).transpose() {
        Ok(user) => user,
        Err(err) => {
            eprintln!("lguest-launcher: {err:#}");
            return ExitCode::from(cli::USAGE);
        }
    };
    let level = match args.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = if args.trace {
        format!("{level},lguest_launcher::run=trace")
    } else {
        level.to_owned()
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(filter)).init();
    // Chosen once, so that a guest that reboots comes back with the same network cards.
    if let Err(err) = args.choose_macs() {
        eprintln!("lguest-launcher: cannot choose a MAC address for a network card: {err}");
        return ExitCode::from(cli::LAUNCHER_ERROR);
    }
    if args.no_reboot {
        return ExitCode::from(run_once(&args, user.as_ref(), None));
    }
    let supervisor = getpid();
    match supervise::supervise(|| run_once(&args, user.as_ref(), Some(supervisor))) {
        Ok(Ended::Exited(code)) => ExitCode::from(code),
        Ok(Ended::Signaled(signal)) => supervise::die_by(signal),
        Err(err) => {
            eprintln!("lguest-launcher: {err:#}");
            ExitCode::from(cli::LAUNCHER_ERROR)
        }
    }
}

/// Sets the guest up, runs it to its end and returns the exit status that end deserves (cli.rs):
/// one boot of the guest, in the process `supervisor` forked for it, if there is one.
fn run_once(args: &Request, user: Option<&Credentials>, supervisor: Option<Pid>) -> u8 {
    match launch(args, user, supervisor) {
        Ok(Stop::PowerOff(message)) => {
            info!("the guest powered off: {message}");
            cli::POWERED_OFF
        }
        Ok(Stop::Restart(message)) => {
            info!("the guest asked to restart: {message}");
            cli::GUEST_REBOOTED
        }
        Ok(Stop::Died(reason)) => {
            eprintln!("lguest-launcher: guest died: {reason}");
            cli::GUEST_DIED
        }
        Err(err) => {
            // `{:#}` prints the whole chain of contexts on one line, joined with ": ".
            eprintln!("lguest-launcher: {err:#}");
            cli::LAUNCHER_ERROR
        }
    }
}

/// Sets the guest up as `args` asks, confines the launcher (as `user`, if given; bound to its
/// `supervisor`, if it has one), and runs the guest to its end.
fn launch(
    args: &Request,
    user: Option<&Credentials>,
    supervisor: Option<Pid>,
) -> anyhow::Result<Stop> {
    let ram_bytes = args.ram_bytes;
    let image = read(&args.kernel, "kernel")?;
    let initrd = args
        .initrd
        .as_deref()
        .map(|path| read(path, "initrd"))
        .transpose()?;
    let devices = devices(args)?;

    let ram = GuestRam::new(ram_bytes, devices.len() as u64)?;
    let mem = ram.memory();
    info!(
        "guest RAM: {} at launcher address {:#x}",
        format_size(ram_bytes),
        ram.base()
    );

    let kernel = load_kernel(mem, &image, &fixed_reserved())
        .with_context(|| args.kernel.display().to_string())?;
    info!(
        "kernel: {}, entry {:#x}, physical {:#x}..{:#x}, virtual offset {:#x}",
        kernel.format, kernel.entry, kernel.phys_start, kernel.phys_end, kernel.virt_offset
    );

    let layout = Layout::new(ram_bytes, &kernel, initrd.as_ref().map(|i| i.len() as u64))?;
    if let (Some(bytes), Some(range)) = (&initrd, &layout.initrd) {
        mem.write_slice(bytes, GuestAddress(range.start))
            .context("cannot write the initrd")?;
        info!("initrd: {:#x}..{:#x}", range.start, range.end);
    }
    let tables = write_initial_page_tables(mem, layout.page_tables, ram_bytes, kernel.virt_offset)?;

    let dropping_root = user.is_some_and(|user| !user.uid.is_root());
    if let Some(warning) = memlock::prepare(ram_bytes, dropping_root)? {
        warn!("{warning}");
    }
    let dev = Arc::new(LguestDevice::open(DEFAULT_PATH)?);
    let irq_line = {
        let dev = Arc::clone(&dev);
        Arc::new(move |irq: u32| {
            if let Err(err) = dev.raise_irq(irq) {
                lguest_launcher::guest_warn!("cannot raise IRQ {irq} in the guest: {err}");
            }
        })
    };
    // Opened before the launcher gives up its root directory, which may hold no /proc.
    let stats_file = args.stats.then(|| StatsFile::own(&*dev)).transpose()?;
    let device_names = stats::Devices::from_types(devices.iter().map(|d| d.device_type()));
    let mut devices = DeviceManager::new(GuestAddress(ram_bytes), mem.clone(), irq_line, devices)?;
    // The guest finds its devices the way Linux's virtio_mmio driver does: on its command line.
    let cmdline = [devices.kernel_cmdline(), args.kernel_words.join(" ")]
        .join(" ")
        .trim()
        .to_owned();
    let device_pages = ram_bytes..ram_bytes + devices.page_count() * PAGE_SIZE;
    write_boot_params(
        mem,
        &layout,
        device_pages,
        &cmdline,
        kernel.setup_header.as_ref(),
    )?;
    info!(
        "boot_params at {BOOT_PARAMS_GPA:#x}, command line at {CMDLINE_GPA:#x} ({cmdline:?}), \
         page tables {:#x}..{:#x}",
        tables.cr3, tables.end
    );

    dev.initialize(&Initialize {
        base: ram.base(),
        pfn_limit: ram.ram_pages(),
        start_ip: kernel.entry,
        device_limit: ram.device_limit(),
        cr3: tables.cr3,
        boot_params: BOOT_PARAMS_GPA,
    })
    .with_context(|| format!("{DEFAULT_PATH} refused INITIALIZE"))?;
    if !args.fast_paths {
        dev.set_fast_paths(false)
            .with_context(|| format!("{DEFAULT_PATH} refused to turn the fast paths off"))?;
    }
    let terminal = RawTerminal::enter().context("cannot put the terminal in raw mode")?;
    // Everything is open: what follows only runs the guest, and needs no privilege.
    if let Some(dir) = &args.chroot {
        confine::enter_root(dir)?;
        info!("root directory: {}", dir.display());
    }
    if let Some(user) = user {
        confine::drop_to(user)?;
        info!(
            "running as uid {} gid {}, groups {:?}",
            user.uid, user.gid, user.groups
        );
    }
    if let Some(supervisor) = supervisor {
        confine::end_with_supervisor(supervisor)?;
    }
    devices
        .start_input_threads()
        .context("cannot start the devices' input threads")?;
    if args.seccomp {
        seccomp::install(&seccomp::filter()?)?;
        info!("seccomp filter installed");
    }
    let stop = run_guest(&*dev, &mut devices, &mut std::io::stdout());
    // The table goes to a terminal that is itself again.
    drop(terminal);
    if let Some(mut file) = stats_file {
        match file.read() {
            Ok(counted) => eprint!("{}", stats::summary(&counted, &device_names)),
            Err(err) => warn!("--stats: {err:#}"),
        }
    }
    stop
}

/// The devices the options ask for, in the order they get their pages and IRQs: the console
/// (always: the guest's terminal is the launcher's), then disks, network cards, the entropy
/// source.
fn devices(args: &Request) -> anyhow::Result<Vec<Box<dyn VirtioDevice>>> {
    let stdin = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .context("cannot duplicate stdin for the console")?;
    let mut console = Console::new(Box::new(std::io::stdout()), Some(File::from(stdin)));
    // A person types on a terminal, and needs a key that is not the guest's to quit with; a pipe
    // or a file is handed on as it is (terminal.rs).
    if std::io::stdin().is_terminal() {
        console = console.with_escape_key();
    }
    let mut devices: Vec<Box<dyn VirtioDevice>> = vec![Box::new(console)];
    for disk in &args.disks {
        devices.push(Box::new(Block::open(&disk.path, disk.read_only)?));
    }
    for card in &args.nets {
        let mac = card.mac.context("a network card has no MAC address")?;
        info!("network card {mac} on tap {}", card.tap);
        devices.push(Box::new(Net::new(open_tap(&card.tap)?, mac)));
    }
    if args.rng {
        devices.push(Box::new(Rng));
    }
    Ok(devices)
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {what} '{}'", path.display()))
}
