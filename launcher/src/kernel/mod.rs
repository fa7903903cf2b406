//! From a kernel file to a kernel in guest memory.
//!
//! The launcher accepts what a kernel build leaves behind: arch/x86/boot/bzImage or the ELF
//! vmlinux at the top of the tree (docs/design.md, D5). Both end as an ELF loaded by physical
//! address:
//!
//! ```text
//!   bzImage --bzimage.rs--> payload --payload.rs--> vmlinux (ELF) --elf.rs--> guest memory
//!   vmlinux ---------------------------------------------^
//! ```
//!
//! This module decides which path a file takes; it writes guest memory only through elf.rs.

pub mod bzimage;
pub mod elf;
pub mod payload;

use std::fmt;
use std::ops::Range;

use anyhow::{bail, Context};
use linux_loader::bootparam::setup_header;
use vm_memory::GuestMemoryMmap;

pub use payload::Compression;

/// A range of guest-physical memory the launcher keeps for itself, which no kernel segment may
/// overlap; `name` says what it holds, for the error message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reserved {
    pub name: &'static str,
    pub range: Range<u64>,
}

/// What kind of file the kernel came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A bzImage, with its payload compressed so.
    BzImage(Compression),
    /// A bare ELF vmlinux.
    Elf,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Format::BzImage(compression) => write!(f, "bzImage ({compression} payload)"),
            Format::Elf => f.write_str("ELF vmlinux"),
        }
    }
}

/// A kernel loaded into guest memory.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    pub format: Format,
    /// The guest-virtual address of the first instruction, from the lguest ELF note.
    pub entry: u64,
    /// `p_vaddr - p_paddr`: where the kernel expects RAM in its virtual address space.
    pub virt_offset: u64,
    /// Guest-physical `phys_start..phys_end` holds the kernel, `.bss` included.
    pub phys_start: u64,
    pub phys_end: u64,
    /// A bzImage's setup header, for boot_params; `None` for a bare ELF.
    pub setup_header: Option<setup_header>,
}

/// Loads a bzImage or ELF vmlinux `image` into `mem`, keeping clear of `reserved`.
///
/// Errors name no file; the caller adds the path.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    image: &[u8],
    reserved: &[Reserved],
) -> anyhow::Result<LoadedKernel> {
    let (format, elf, setup_header) = if image.starts_with(linux_loader::elf::ELFMAG) {
        (Format::Elf, std::borrow::Cow::Borrowed(image), None)
    } else if bzimage::is_bzimage(image) {
        let bz = bzimage::parse(image)?;
        let (compression, elf) = payload::unpack(bz.payload).context("bzImage")?;
        log::info!(
            "bzImage: {compression} payload of {} bytes unpacked to {} bytes",
            bz.payload.len(),
            elf.len()
        );
        if !elf.starts_with(linux_loader::elf::ELFMAG) {
            bail!("this bzImage's {compression} payload is not an ELF kernel");
        }
        (Format::BzImage(compression), elf, Some(bz.header))
    } else {
        bail!("not a Linux kernel (neither a bzImage nor an ELF vmlinux)");
    };
    let k = elf::load_elf(mem, &elf, reserved)?;
    Ok(LoadedKernel {
        format,
        entry: k.entry,
        virt_offset: k.virt_offset,
        phys_start: k.phys_start,
        phys_end: k.phys_end,
        setup_header,
    })
}

#[cfg(test)]
mod tests {
    use super::bzimage::tests::make_bzimage;
    use super::elf::tests::{lguest_note, linux_like, LINUX_OFFSET};
    use super::payload::tests::{fake_elf, xz};
    use super::*;
    use crate::memory::GuestRam;

    fn load(image: &[u8]) -> anyhow::Result<LoadedKernel> {
        let ram = GuestRam::new(32 << 20, 0)?;
        load_kernel(ram.memory(), image, &[])
    }

    #[test]
    fn a_bzimage_and_its_vmlinux_load_alike() {
        let vmlinux = linux_like(&lguest_note(LINUX_OFFSET + 0x100_0000));
        let bz = make_bzimage(17, &xz(&vmlinux));
        let from_bz = load(&bz).unwrap();
        let from_elf = load(&vmlinux).unwrap();
        assert_eq!(from_bz.format, Format::BzImage(Compression::Xz));
        assert_eq!(from_elf.format, Format::Elf);
        assert_eq!(from_bz.format.to_string(), "bzImage (xz payload)");
        for k in [from_bz, from_elf] {
            assert_eq!(k.entry, LINUX_OFFSET + 0x100_0000);
            assert_eq!((k.phys_start, k.phys_end), (0x100_0000, 0x101_0000));
        }
        assert_eq!(
            { from_bz.setup_header.unwrap().kernel_alignment },
            0x20_0000
        );
        assert!(from_elf.setup_header.is_none());
    }

    #[test]
    fn what_is_not_a_kernel_is_named() {
        let err = |image: &[u8]| format!("{:#}", load(image).unwrap_err());
        assert_eq!(
            err(b"random bytes"),
            "not a Linux kernel (neither a bzImage nor an ELF vmlinux)"
        );
        assert_eq!(
            err(&make_bzimage(1, &xz(b"not an elf"))),
            "this bzImage's xz payload is not an ELF kernel"
        );
        assert!(err(&make_bzimage(1, b"??")).starts_with("bzImage: unknown payload compression"));
        let no_note = make_bzimage(1, &xz(&linux_like(&[])));
        assert!(err(&no_note).starts_with("this kernel was not built to run under lguest"));
        // An ELF-looking payload that is not a valid ELF still says what is wrong with it.
        assert!(err(&make_bzimage(1, &fake_elf(100))).contains("ELF"));
    }
}
