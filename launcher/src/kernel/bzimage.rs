//! Opening a bzImage: find the compressed kernel inside it.
//!
//! A bzImage is what `make` leaves in arch/x86/boot/: a 16-bit real-mode setup program, then a
//! 32/64-bit decompressor stub with the compressed kernel (the "payload") embedded in it. Neither
//! the setup program nor the stub can run under lguest (they start in real mode or at CPL 0), so
//! the launcher does what the stub would do: it takes the payload out, and payload.rs unpacks
//! it. This file only reads the image; it writes nothing.
//!
//! The Linux boot protocol (Documentation/arch/x86/boot.rst) describes the header at offset
//! 0x1f1; since version 2.08 it says where the payload is (`payload_offset`, counted from the
//! start of the protected-mode code, and `payload_length`).

use std::mem::size_of;

use anyhow::{bail, ensure};
use linux_loader::bootparam::setup_header;
use vm_memory::ByteValued;

/// Where the setup header starts in the image (and in boot_params).
const HEADER_OFFSET: usize = 0x1f1;
/// `boot_flag` (0xaa55, the old boot-sector signature) sits at 0x1fe...
const BOOT_FLAG_OFFSET: usize = 0x1fe;
pub(crate) const BOOT_FLAG: u16 = 0xaa55;
/// ...and the "HdrS" magic that says a setup header follows at 0x202.
const MAGIC_OFFSET: usize = 0x202;
/// "HdrS" read as a little-endian u32.
pub(crate) const HDRS_MAGIC: u32 = 0x5372_6448;
/// Boot protocol 2.08 introduced `payload_offset` and `payload_length`.
const MIN_VERSION: u16 = 0x0208;
/// A setup sector is 512 bytes; `setup_sects == 0` means 4, for very old images.
const SECTOR: usize = 512;
const DEFAULT_SETUP_SECTS: usize = 4;

/// A bzImage's setup header and the compressed kernel inside it.
pub struct BzImage<'a> {
    /// The header as the image carries it; boot_params.rs copies it into the zero page, as a
    /// bootloader would, so the kernel finds its own values (`kernel_alignment`, `xloadflags`,
    /// `cmdline_size`...) where it expects them.
    pub header: setup_header,
    pub payload: &'a [u8],
}

/// Whether `image` carries a setup header at all (the boot flag and "HdrS"): the one test that
/// tells a bzImage from everything else.
pub fn is_bzimage(image: &[u8]) -> bool {
    let u16_at = |off: usize| {
        image
            .get(off..off + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |off: usize| {
        image
            .get(off..off + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    u16_at(BOOT_FLAG_OFFSET) == Some(BOOT_FLAG) && u32_at(MAGIC_OFFSET) == Some(HDRS_MAGIC)
}

/// Reads the setup header of a bzImage (`is_bzimage(image)` must hold) and finds its payload.
pub fn parse(image: &[u8]) -> anyhow::Result<BzImage<'_>> {
    let header_end = HEADER_OFFSET + size_of::<setup_header>();
    let Some(header_bytes) = image.get(HEADER_OFFSET..header_end) else {
        bail!(
            "truncated bzImage: {} bytes, too short for its setup header",
            image.len()
        );
    };
    let mut header = setup_header::default();
    header.as_mut_slice().copy_from_slice(header_bytes);

    let version = header.version;
    ensure!(
        version >= MIN_VERSION,
        "bzImage boot protocol {}.{:02} is too old (2.08 or later is needed to find the kernel)",
        version >> 8,
        version & 0xff
    );
    let setup_sects = match header.setup_sects {
        0 => DEFAULT_SETUP_SECTS,
        n => usize::from(n),
    };
    // The protected-mode code follows the boot sector and the setup sectors.
    let pm_start = (setup_sects + 1) * SECTOR;
    let (offset, length) = (header.payload_offset, header.payload_length);
    let start = pm_start.checked_add(offset as usize);
    let end = start.and_then(|start| start.checked_add(length as usize));
    match (start, end) {
        (Some(start), Some(end)) if length != 0 && end <= image.len() => Ok(BzImage {
            header,
            payload: &image[start..end],
        }),
        _ => bail!(
            "truncated bzImage: its payload of {length} bytes at offset {:#x} lies beyond its \
             {} bytes",
            pm_start as u64 + u64::from(offset),
            image.len()
        ),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal bzImage around `payload`: boot sector, `setup_sects` setup sectors, then a
    /// 0x40-byte "decompressor" followed by the payload.
    pub(crate) fn make_bzimage(setup_sects: u8, payload: &[u8]) -> Vec<u8> {
        let sects = if setup_sects == 0 {
            DEFAULT_SETUP_SECTS
        } else {
            usize::from(setup_sects)
        };
        let pm_start = (sects + 1) * SECTOR;
        let mut image = vec![0u8; pm_start + 0x40];
        let header = setup_header {
            setup_sects,
            boot_flag: BOOT_FLAG,
            header: HDRS_MAGIC,
            version: 0x020f,
            payload_offset: 0x40,
            payload_length: payload.len() as u32,
            cmdline_size: 2047,
            kernel_alignment: 0x20_0000,
            ..Default::default()
        };
        image[HEADER_OFFSET..HEADER_OFFSET + size_of::<setup_header>()]
            .copy_from_slice(header.as_slice());
        image.extend_from_slice(payload);
        image
    }

    #[test]
    fn the_payload_is_found_after_the_setup_sectors() {
        for sects in [0, 1, 27] {
            let image = make_bzimage(sects, b"PAYLOAD!");
            assert!(is_bzimage(&image));
            let bz = parse(&image).unwrap();
            assert_eq!(bz.payload, b"PAYLOAD!", "setup_sects {sects}");
            assert_eq!({ bz.header.kernel_alignment }, 0x20_0000);
        }
    }

    #[test]
    fn other_files_are_not_bzimages() {
        assert!(!is_bzimage(b""));
        assert!(!is_bzimage(&[0u8; 4096]));
        assert!(!is_bzimage(b"\x7fELF\x02\x01\x01"));
    }

    #[test]
    fn truncation_and_old_protocols_are_explained() {
        let image = make_bzimage(1, &[7u8; 100]);
        let err = parse(&image[..image.len() - 1]).err().unwrap().to_string();
        assert!(
            err.starts_with("truncated bzImage: its payload of 100 bytes"),
            "{err}"
        );
        let err = parse(&image[..0x210]).err().unwrap().to_string();
        assert!(err.contains("too short for its setup header"), "{err}");

        let mut old = image.clone();
        old[0x206..0x208].copy_from_slice(&0x0207u16.to_le_bytes());
        let err = parse(&old).err().unwrap().to_string();
        assert!(err.contains("boot protocol 2.07 is too old"), "{err}");

        let mut huge = image;
        huge[0x248..0x24c].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse(&huge)
            .err()
            .unwrap()
            .to_string()
            .starts_with("truncated bzImage"));
    }
}
