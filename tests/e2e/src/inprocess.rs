//! Running a guest inside this process, with the launcher's own library, instead of spawning
//! /bin/lguest-launcher.
//!
//! lg.ko runs a guest on its launcher's own task, so some holes are in what that task has while
//! the guest runs (an LDT, which exec drops: a spawned launcher never has one) or keeps
//! afterwards (PKRU). A scenario for such a hole sets the state up in this process, runs the
//! guest here with [`run`], and looks at the state again. [`run`] walks the steps
//! launcher/src/main.rs walks, short of the options: no initrd, no devices (an empty device
//! manager, which answers every device access "no device", as the launcher's does past its
//! last device), no terminal; the guest's early console comes back as text.
//!
//! It is meant for a child process (`scenarios::in_child`): the state it is run for is the
//! child's to keep or lose, and a guest that hangs is ended by SIGALRM, which ends the child.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lguest_abi::dev::Initialize;
use lguest_launcher::boot_params::{fixed_reserved, write_boot_params, Layout, BOOT_PARAMS_GPA};
use lguest_launcher::device::{LguestDevice, DEFAULT_PATH};
use lguest_launcher::kernel::load_kernel;
use lguest_launcher::memory::{GuestAddress, GuestRam};
use lguest_launcher::pagetables::write_initial_page_tables;
use lguest_launcher::run::{run_guest, Stop};
use lguest_launcher::size::parse_mem_size;
use lguest_launcher::virtio::DeviceManager;
use nix::unistd::alarm;

/// How a guest run in this process ended.
pub struct InProcessRun {
    /// Power off, restart, or the host's reason for killing it.
    pub stop: Stop,
    /// What it wrote to its early console.
    pub console: String,
}

impl InProcessRun {
    /// The console for a FAIL line.
    pub fn shown_console(&self) -> String {
        crate::launch::shorten(&self.console)
    }
}

/// Runs `kernel` with `mem` of RAM and `cmdline` until it stops; after `patience` SIGALRM ends
/// the process (see above).
pub fn run(
    mem: &str,
    kernel: &str,
    cmdline: &[&str],
    patience: Duration,
) -> anyhow::Result<InProcessRun> {
    let ram_bytes = parse_mem_size(mem)?;
    let image = std::fs::read(kernel).with_context(|| format!("cannot read {kernel}"))?;
    let ram = GuestRam::new(ram_bytes, 0)?;
    let memory = ram.memory();
    let loaded = load_kernel(memory, &image, &fixed_reserved()).context(kernel.to_owned())?;
    let layout = Layout::new(ram_bytes, &loaded, None)?;
    let tables =
        write_initial_page_tables(memory, layout.page_tables, ram_bytes, loaded.virt_offset)?;
    write_boot_params(
        memory,
        &layout,
        ram_bytes..ram_bytes,
        &cmdline.join(" "),
        loaded.setup_header.as_ref(),
    )?;
    let dev = LguestDevice::open(DEFAULT_PATH)?;
    dev.initialize(&Initialize {
        base: ram.base(),
        pfn_limit: ram.ram_pages(),
        start_ip: loaded.entry,
        device_limit: ram.device_limit(),
        cr3: tables.cr3,
        boot_params: BOOT_PARAMS_GPA,
    })
    .with_context(|| format!("{DEFAULT_PATH} refused INITIALIZE"))?;
    // No device, so nothing ever raises an IRQ through this line.
    let no_irqs = Arc::new(|_: u32| {});
    let mut devices = DeviceManager::new(GuestAddress(ram_bytes), memory.clone(), no_irqs, vec![])?;
    let mut console = Vec::new();
    alarm::set(patience.as_secs().try_into().unwrap_or(u32::MAX));
    let stop = run_guest(&dev, &mut devices, &mut console);
    alarm::cancel();
    Ok(InProcessRun {
        stop: stop?,
        console: String::from_utf8_lossy(&console).into_owned(),
    })
}
