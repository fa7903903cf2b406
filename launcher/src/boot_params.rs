//! Where everything goes in guest memory, and the boot_params ("zero page") that tells the
//! guest.
//!
//! After the kernel is loaded (kernel/), the launcher places the rest around it and describes
//! the result in boot_params, the structure Linux's 64-bit boot protocol hands a kernel in RSI
//! (Documentation/arch/x86/boot.rst, zero-page.rst). This file decides the layout, writes
//! boot_params and the command line, and refuses layouts that overlap. The initrd's bytes and
//! the page tables are written by their owners (main.rs, pagetables.rs) where [`Layout`] says.
//!
//! The guest-physical memory map, from the bottom:
//!
//! ```text
//!   0x0000_7000  boot_params, one page: low and out of the kernel's way, as lguest put it
//!   0x0002_0000  command line, one page (up to 4095 bytes and a NUL)
//!   ...          the kernel, wherever its ELF segments ask (Linux: 16 MiB)
//!   ...          free RAM
//!   initrd       page-aligned, just below the page tables
//!   page tables  at the top of RAM, marked reserved in the e820 map so the kernel keeps them
//!                until it has built its own
//!   devices      one page per virtio device right above RAM, reserved in the e820 map too:
//!                not RAM, registers (the command line says which device is where)
//! ```
//!
//! Everything but the page tables is ordinary RAM to the kernel: it copies boot_params and the
//! command line early, and boot_params tells it where the initrd is so it does not reuse it.

use std::ops::Range;

use anyhow::{bail, ensure, Context};
use lguest_abi::boot::X86_SUBARCH_LGUEST;
use lguest_abi::PAGE_SIZE;
use linux_loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::kernel::bzimage::{BOOT_FLAG, HDRS_MAGIC};
use crate::kernel::{LoadedKernel, Reserved};
use crate::pagetables::page_table_bytes;
use crate::size::format_size;

/// Guest-physical address of boot_params; the guest starts with RSI pointing here.
pub const BOOT_PARAMS_GPA: u64 = 0x7000;
/// Guest-physical address of the NUL-terminated kernel command line.
pub const CMDLINE_GPA: u64 = 0x2_0000;
/// The longest command line the launcher passes, NUL not included: one page.
pub const CMDLINE_MAX: usize = PAGE_SIZE as usize - 1;

/// `type_of_loader` 0xff: "undefined" in the boot protocol's list of loaders.
const LOADER_UNDEFINED: u8 = 0xff;
/// The boot protocol version claimed when the kernel brought no setup header of its own.
const PROTOCOL_VERSION: u16 = 0x020f;
/// Protocol 2.06 added `cmdline_size`, the kernel's limit on the command line.
const CMDLINE_SIZE_VERSION: u16 = 0x0206;
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;

/// The ranges the launcher fills before it knows anything about the kernel: no kernel segment
/// may overlap them.
pub fn fixed_reserved() -> [Reserved; 2] {
    [
        Reserved {
            name: "boot_params",
            range: BOOT_PARAMS_GPA..BOOT_PARAMS_GPA + PAGE_SIZE,
        },
        Reserved {
            name: "command line",
            range: CMDLINE_GPA..CMDLINE_GPA + PAGE_SIZE,
        },
    ]
}

/// Where the parts that depend on the kernel and the initrd go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub ram_bytes: u64,
    /// The page-table area: from here to the end of RAM.
    pub page_tables: u64,
    /// Where the initrd goes, if there is one.
    pub initrd: Option<Range<u64>>,
}

impl Layout {
    /// Places the page tables and the initrd above a loaded kernel, refusing what does not fit.
    pub fn new(
        ram_bytes: u64,
        kernel: &LoadedKernel,
        initrd_bytes: Option<u64>,
    ) -> anyhow::Result<Layout> {
        let ram = format_size(ram_bytes);
        // Nothing may go below the kernel's end or the fixed pages, whichever is higher.
        let floor = kernel.phys_end.max(CMDLINE_GPA + PAGE_SIZE);
        let tables = page_table_bytes(ram_bytes, kernel.virt_offset);
        let page_tables = ram_bytes.saturating_sub(tables);
        ensure!(
            page_tables >= floor,
            "kernel does not fit in {ram} of guest RAM (it ends at {:#x}, and the page tables \
             need {tables:#x} bytes at the top)",
            kernel.phys_end
        );
        let initrd = match initrd_bytes {
            None => None,
            Some(len) => {
                let start = page_tables.checked_sub(len).map(|s| s & !(PAGE_SIZE - 1));
                match start {
                    Some(start) if start >= floor => Some(start..start + len),
                    _ => bail!(
                        "initrd of {len} bytes does not fit in {ram} of guest RAM (it has \
                         {:#x} bytes between the kernel and the page tables)",
                        page_tables - floor
                    ),
                }
            }
        };
        Ok(Layout {
            ram_bytes,
            page_tables,
            initrd,
        })
    }
}

/// Writes the command line and boot_params for `layout`, with `devices` (the device pages'
/// guest-physical range, empty if there are none) reserved in the memory map. `kernel_header`
/// is the bzImage's setup header, copied in so the kernel finds its own values; without one a
/// minimal header is made.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    layout: &Layout,
    devices: Range<u64>,
    cmdline: &str,
    kernel_header: Option<&setup_header>,
) -> anyhow::Result<()> {
    ensure!(
        cmdline.len() <= CMDLINE_MAX,
        "command line of {} bytes is longer than the {CMDLINE_MAX} bytes allowed",
        cmdline.len()
    );
    let mut hdr = match kernel_header {
        Some(&hdr) => {
            let (version, limit) = (hdr.version, hdr.cmdline_size);
            if version >= CMDLINE_SIZE_VERSION && (cmdline.len() as u64) > u64::from(limit) {
                bail!(
                    "command line of {} bytes is longer than this kernel's limit of {limit}",
                    cmdline.len()
                );
            }
            hdr
        }
        None => setup_header {
            boot_flag: BOOT_FLAG,
            header: HDRS_MAGIC,
            version: PROTOCOL_VERSION,
            cmdline_size: CMDLINE_MAX as u32,
            ..Default::default()
        },
    };
    hdr.type_of_loader = LOADER_UNDEFINED;
    hdr.cmd_line_ptr = CMDLINE_GPA as u32;
    hdr.hardware_subarch = X86_SUBARCH_LGUEST;
    let mut params = boot_params::default();
    if let Some(initrd) = &layout.initrd {
        // RAM may reach past 4 GiB; the upper halves go in the ext_ fields.
        let (start, len) = (initrd.start, initrd.end - initrd.start);
        hdr.ramdisk_image = start as u32;
        hdr.ramdisk_size = len as u32;
        params.ext_ramdisk_image = (start >> 32) as u32;
        params.ext_ramdisk_size = (len >> 32) as u32;
    }
    params.hdr = hdr;
    params.e820_table[0] = boot_e820_entry {
        addr: 0,
        size: layout.page_tables,
        r#type: E820_RAM,
    };
    params.e820_table[1] = boot_e820_entry {
        addr: layout.page_tables,
        size: layout.ram_bytes - layout.page_tables,
        r#type: E820_RESERVED,
    };
    params.e820_entries = 2;
    if !devices.is_empty() {
        params.e820_table[2] = boot_e820_entry {
            addr: devices.start,
            size: devices.end - devices.start,
            r#type: E820_RESERVED,
        };
        params.e820_entries = 3;
    }

    let mut line = cmdline.as_bytes().to_vec();
    line.push(0);
    mem.write_slice(&line, GuestAddress(CMDLINE_GPA))
        .context("cannot write the command line")?;
    mem.write_obj(params, GuestAddress(BOOT_PARAMS_GPA))
        .context("cannot write boot_params")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::Format;
    use crate::memory::GuestRam;

    const MIB: u64 = 1 << 20;

    fn kernel(phys_end: u64, header: Option<setup_header>) -> LoadedKernel {
        LoadedKernel {
            format: Format::Elf,
            entry: 0xffff_ffff_8100_0000,
            virt_offset: 0xffff_ffff_8000_0000,
            phys_start: 16 * MIB,
            phys_end,
            setup_header: header,
        }
    }

    /// Reads `N` bytes of the zero page at `offset`.
    fn at<const N: usize>(mem: &GuestMemoryMmap, offset: u64) -> [u8; N] {
        let mut out = [0u8; N];
        mem.read_slice(&mut out, GuestAddress(BOOT_PARAMS_GPA + offset))
            .unwrap();
        out
    }

    fn u32_at(mem: &GuestMemoryMmap, offset: u64) -> u32 {
        u32::from_le_bytes(at(mem, offset))
    }

    fn u64_at(mem: &GuestMemoryMmap, offset: u64) -> u64 {
        u64::from_le_bytes(at(mem, offset))
    }

    #[test]
    fn the_zero_page_has_every_field_where_linux_reads_it() {
        let ram = GuestRam::new(64 * MIB, 0).unwrap();
        let mem = ram.memory();
        let layout = Layout::new(64 * MIB, &kernel(20 * MIB, None), Some(5000)).unwrap();
        let devices = 64 * MIB..64 * MIB + 2 * PAGE_SIZE;
        write_boot_params(mem, &layout, devices, "console=hvc0 quiet", None).unwrap();

        assert_eq!(std::mem::size_of::<boot_params>(), PAGE_SIZE as usize);
        let initrd = layout.initrd.clone().unwrap();
        assert_eq!(initrd.start % PAGE_SIZE, 0);
        assert!(initrd.end <= layout.page_tables);

        assert_eq!(at::<1>(mem, 0x1e8), [3], "e820_entries");
        assert_eq!(u16::from_le_bytes(at(mem, 0x1fe)), 0xaa55, "boot_flag");
        assert_eq!(&at::<4>(mem, 0x202), b"HdrS", "header");
        assert_eq!(u16::from_le_bytes(at(mem, 0x206)), 0x020f, "version");
        assert_eq!(at::<1>(mem, 0x210), [0xff], "type_of_loader");
        assert_eq!(u32_at(mem, 0x218), initrd.start as u32, "ramdisk_image");
        assert_eq!(u32_at(mem, 0x21c), 5000, "ramdisk_size");
        assert_eq!(u32_at(mem, 0x228), 0x2_0000, "cmd_line_ptr");
        assert_eq!(u32_at(mem, 0x238), 4095, "cmdline_size");
        assert_eq!(u32_at(mem, 0x23c), 1, "hardware_subarch");
        assert_eq!(u32_at(mem, 0x0c0), 0, "ext_ramdisk_image");
        // e820_table at 0x2d0, 20 bytes per entry: RAM up to the tables, then the tables.
        assert_eq!(u64_at(mem, 0x2d0), 0);
        assert_eq!(u64_at(mem, 0x2d8), layout.page_tables);
        assert_eq!(u32_at(mem, 0x2e0), 1);
        assert_eq!(u64_at(mem, 0x2e4), layout.page_tables);
        assert_eq!(u64_at(mem, 0x2ec), 64 * MIB - layout.page_tables);
        assert_eq!(u32_at(mem, 0x2f4), 2);
        // And the two device pages above RAM, reserved.
        assert_eq!(u64_at(mem, 0x2f8), 64 * MIB);
        assert_eq!(u64_at(mem, 0x300), 2 * PAGE_SIZE);
        assert_eq!(u32_at(mem, 0x308), 2);

        let mut line = [0u8; 19];
        mem.read_slice(&mut line, GuestAddress(CMDLINE_GPA))
            .unwrap();
        assert_eq!(&line, b"console=hvc0 quiet\0");
    }

    #[test]
    fn a_bzimage_header_is_kept_and_its_limit_honoured() {
        let ram = GuestRam::new(64 * MIB, 0).unwrap();
        let mem = ram.memory();
        let theirs = setup_header {
            boot_flag: BOOT_FLAG,
            header: HDRS_MAGIC,
            version: 0x020f,
            kernel_alignment: 0x20_0000,
            cmdline_size: 10,
            type_of_loader: 0x71,
            ..Default::default()
        };
        let layout = Layout::new(64 * MIB, &kernel(20 * MIB, Some(theirs)), None).unwrap();
        write_boot_params(mem, &layout, 0..0, "root=/dev/x", Some(&theirs))
            .map(|()| panic!("11 bytes accepted under a limit of 10"))
            .unwrap_err();
        write_boot_params(mem, &layout, 0..0, "root=/dev", Some(&theirs)).unwrap();
        assert_eq!(u32_at(mem, 0x230), 0x20_0000, "kernel_alignment kept");
        assert_eq!(at::<1>(mem, 0x210), [0xff], "type_of_loader ours");
        assert_eq!(u32_at(mem, 0x218), 0, "no initrd");
    }

    #[test]
    fn what_does_not_fit_is_refused() {
        let err = |ram, phys_end, initrd| {
            Layout::new(ram, &kernel(phys_end, None), initrd)
                .unwrap_err()
                .to_string()
        };
        assert!(err(64 * MIB, 64 * MIB, None).starts_with("kernel does not fit in 64 MiB"));
        let e = err(64 * MIB, 20 * MIB, Some(60 * MIB));
        assert!(
            e.starts_with("initrd of 62914560 bytes does not fit in 64 MiB"),
            "{e}"
        );
        assert!(err(64 * MIB, 20 * MIB, Some(u64::MAX)).starts_with("initrd of"));
        let layout = Layout::new(64 * MIB, &kernel(20 * MIB, None), None).unwrap();
        let ram = GuestRam::new(64 * MIB, 0).unwrap();
        let long = "x".repeat(CMDLINE_MAX + 1);
        let e = write_boot_params(ram.memory(), &layout, 0..0, &long, None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "command line of 4096 bytes is longer than the 4095 bytes allowed"
        );
    }
}
