//! `lguest-launcher [OPTIONS] <MEM> <KERNEL> [CMDLINE]...`: the command a user types.
//!
//! This file walks the steps the library provides, in the order lib.rs tells them, logs what
//! it did, and turns any failure into one line on stderr and exit code 1. How the guest ends
//! decides how the launcher ends: power off is exit 0, a restart starts the launcher afresh, and
//! death is the host's reason on stderr and exit 1.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::Context;
use clap::Parser;
use lguest_abi::dev::Initialize;
use log::info;

use lguest_launcher::boot_params::{
    fixed_reserved, write_boot_params, Layout, BOOT_PARAMS_GPA, CMDLINE_GPA,
};
use lguest_launcher::device::{LguestDevice, DEFAULT_PATH};
use lguest_launcher::kernel::load_kernel;
use lguest_launcher::memory::{Bytes, GuestAddress, GuestRam};
use lguest_launcher::pagetables::write_initial_page_tables;
use lguest_launcher::run::{run_guest, Stop};
use lguest_launcher::size::{format_size, parse_mem_size};

/// Run a Linux-style kernel built for lguest as a guest, through /dev/lguest (lg.ko).
#[derive(Parser)]
#[command(name = "lguest-launcher", version)]
struct Args {
    /// Guest RAM: bytes, or a number with a k, m or g suffix (64m, 1g)
    #[arg(value_name = "MEM")]
    mem: String,
    /// The guest kernel: a bzImage or an ELF vmlinux built for lguest
    #[arg(value_name = "KERNEL")]
    kernel: PathBuf,
    /// The kernel command line; its words are joined with spaces
    #[arg(
        value_name = "CMDLINE",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    cmdline: Vec<String>,
    /// Load FILE as the guest's initial RAM disk
    #[arg(long, value_name = "FILE")]
    initrd: Option<PathBuf>,
    /// Say more: -v what was loaded and where, -vv debugging detail (RUST_LOG overrides)
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let level = match args.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    match launch(&args) {
        Ok(Stop::PowerOff(message)) => {
            info!("the guest powered off: {message}");
            ExitCode::SUCCESS
        }
        Ok(Stop::Restart(message)) => {
            info!("the guest asked to restart: {message}");
            restart()
        }
        Ok(Stop::Died(reason)) => {
            eprintln!("lguest-launcher: guest died: {reason}");
            ExitCode::FAILURE
        }
        Err(err) => {
            // `{:#}` prints the whole chain of contexts on one line, joined with ": ".
            eprintln!("lguest-launcher: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the launcher again with the same arguments, as lguest's launcher did on a restart:
/// the simplest way to give the guest fresh memory and a fresh /dev/lguest file. Both go away
/// at the exec (Rust opens files close-on-exec), so the old guest is gone before the new one
/// is set up.
fn restart() -> ExitCode {
    let mut args = std::env::args_os();
    let mut command = Command::new("/proc/self/exe");
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    // exec returns only if it failed.
    let err = command.args(args).exec();
    eprintln!("lguest-launcher: cannot restart the guest: exec /proc/self/exe: {err}");
    ExitCode::FAILURE
}

fn launch(args: &Args) -> anyhow::Result<Stop> {
    let ram_bytes = parse_mem_size(&args.mem)?;
    let image = read(&args.kernel, "kernel")?;
    let initrd = args
        .initrd
        .as_deref()
        .map(|path| read(path, "initrd"))
        .transpose()?;
    let cmdline = args.cmdline.join(" ");

    let ram = GuestRam::new(ram_bytes, 0)?;
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
    write_boot_params(mem, &layout, &cmdline, kernel.setup_header.as_ref())?;
    info!(
        "boot_params at {BOOT_PARAMS_GPA:#x}, command line at {CMDLINE_GPA:#x} ({cmdline:?}), \
         page tables {:#x}..{:#x}",
        tables.cr3, tables.end
    );

    let dev = LguestDevice::open(DEFAULT_PATH)?;
    dev.initialize(&Initialize {
        base: ram.base(),
        pfn_limit: ram.ram_pages(),
        start_ip: kernel.entry,
        device_limit: ram.device_limit(),
        cr3: tables.cr3,
        boot_params: BOOT_PARAMS_GPA,
    })
    .with_context(|| format!("{DEFAULT_PATH} refused INITIALIZE"))?;
    run_guest(&dev, &mut NoDevices, &mut std::io::stdout().lock())
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {what} '{}'", path.display()))
}

struct NoDevices;

impl lguest_launcher::run::MmioBus for NoDevices {
    fn mmio_read(&mut self, _gpa: u64, _data: &mut [u8]) -> bool {
        false
    }
    fn mmio_write(&mut self, _gpa: u64, _data: &[u8]) -> bool {
        false
    }
}
