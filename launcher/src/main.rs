//! `lguest-launcher [OPTIONS] <MEM> <KERNEL> [CMDLINE]...`: the command a user types.
//!
//! This file walks the steps the library provides, in the order lib.rs tells them, logs what
//! it did, and turns any failure into one line on stderr and exit code 1. It owns the run loop,
//! which will grow as lg.ko learns to run guests.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;
use lguest_abi::dev::{Initialize, Refusal};
use log::info;

use lguest_launcher::boot_params::{
    fixed_reserved, write_boot_params, Layout, BOOT_PARAMS_GPA, CMDLINE_GPA,
};
use lguest_launcher::device::{LguestDevice, DEFAULT_PATH};
use lguest_launcher::kernel::load_kernel;
use lguest_launcher::memory::{Bytes, GuestAddress, GuestRam};
use lguest_launcher::pagetables::write_initial_page_tables;
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
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` prints the whole chain of contexts on one line, joined with ": ".
            eprintln!("lguest-launcher: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn launch(args: &Args) -> anyhow::Result<()> {
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
    run_guest(&dev)
}

/// Runs the guest until it is gone. Each `read()` of /dev/lguest runs it until it needs the
/// launcher; what it needs is answered here, and this loop grows with what lg.ko can do.
fn run_guest(dev: &LguestDevice) -> anyhow::Result<()> {
    // Room for anything lg.ko reports, a guest's last words included.
    let mut report = [0u8; 1024];
    match dev.run(&mut report) {
        Ok(n) => bail!("{DEFAULT_PATH} reported {n} bytes this launcher does not understand"),
        // Before the Switcher (issue #3), lg.ko answers a read() with no GETREG pending so.
        Err(err) if err.raw_os_error() == Some(Refusal::NothingToRead.errno()) => {
            bail!("this lg.ko cannot run guests yet (read {DEFAULT_PATH}: Operation not supported)")
        }
        Err(err) => Err(err).with_context(|| format!("read {DEFAULT_PATH}")),
    }
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {what} '{}'", path.display()))
}
