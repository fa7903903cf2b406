//! Unpacking a bzImage's payload into the ELF vmlinux it was made from.
//!
//! Second step of a bzImage's journey (bzimage.rs found the payload): `make` compressed
//! vmlinux with whichever CONFIG_KERNEL_* compressor was chosen, and the decompressor stub that
//! would normally unpack it cannot run under lguest, so the launcher unpacks it here, as Xen's
//! PV loader does. This file only turns bytes into bytes; it touches no guest memory.
//!
//! The format is recognised by its magic bytes, exactly as the kernel's own
//! lib/decompress.c does. `make` appends the uncompressed size as 4 more bytes after every
//! stream but gzip's; each decoder below stops at the end of its stream, so that tail is
//! ignored.

use std::borrow::Cow;
use std::fmt;
use std::io::Read;

use anyhow::{anyhow, bail, ensure, Context};
use liblzma::stream::{Action, Status, Stream};

use crate::size::format_size;

/// The most bytes a payload may unpack to. Real kernels are a few tens of MiB; a payload
/// crafted to unpack to gigabytes (a "zip bomb") is refused at this size instead of eating the
/// host's memory.
pub const MAX_UNPACKED_BYTES: u64 = 512 << 20;

/// How a payload was compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Xz,
    Zstd,
    Lz4,
    Bzip2,
    Lzma,
    Lzo,
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Lz4 => "lz4",
            Compression::Bzip2 => "bzip2",
            Compression::Lzma => "lzma",
            Compression::Lzo => "lzo",
        })
    }
}

const ELF_MAGIC: &[u8] = b"\x7fELF";
const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const BZIP2_MAGIC: &[u8] = b"BZh";
/// An lzma-alone header starts with the properties byte 0x5d (lc=3, lp=0, pb=2, the only
/// values the kernel's decompressor accepts) and a little-endian dictionary size whose low
/// bytes are zero.
const LZMA_MAGIC: &[u8] = &[0x5d, 0x00, 0x00];
/// lzop's file magic, which `make` writes for CONFIG_KERNEL_LZO.
const LZOP_MAGIC: &[u8] = &[0x89, b'L', b'Z', b'O', 0x00, 0x0d, 0x0a, 0x1a, 0x0a];
/// lzop writes blocks of 256 KiB; the kernel's lib/decompress_unlzo.c refuses larger ones.
const LZOP_MAX_BLOCK: usize = 256 << 10;
/// The lzop header and block flags this file reads: which checksums follow, and whether the
/// header has a filter word.
const LZOP_ADLER32_D: u32 = 0x1;
const LZOP_ADLER32_C: u32 = 0x2;
const LZOP_FILTER: u32 = 0x800;
const LZOP_CRC32_D: u32 = 0x100;
const LZOP_CRC32_C: u32 = 0x200;
/// The lz4 "legacy" frame format that `lz4 -l` writes and the kernel reads.
const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
/// liblzma allocates the dictionary a stream's header asks for, up to 4 GiB; the kernel's own
/// streams use 64 MiB at most (`lzma -9`), so a header asking for more is refused.
const LZMA_MEMLIMIT: u64 = 256 << 20;
/// Every legacy block unpacks to at most 8 MiB.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;

/// Recognises how `payload` was compressed and unpacks it. An uncompressed payload is returned
/// as it is, without a copy.
pub fn unpack(payload: &[u8]) -> anyhow::Result<(Compression, Cow<'_, [u8]>)> {
    unpack_with_limit(payload, MAX_UNPACKED_BYTES)
}

fn unpack_with_limit(payload: &[u8], limit: u64) -> anyhow::Result<(Compression, Cow<'_, [u8]>)> {
    let compression = detect(payload).context(
        "unknown payload compression (expected gzip, xz, zstd, lz4, lzo, bzip2, lzma or an ELF)",
    )?;
    let unpacked = match compression {
        Compression::None => return Ok((compression, Cow::Borrowed(payload))),
        Compression::Gzip => read_capped(flate2::read::GzDecoder::new(payload), limit),
        Compression::Xz => Stream::new_stream_decoder(LZMA_MEMLIMIT, 0)
            .map_err(anyhow::Error::from)
            .and_then(|stream| unpack_lzma(payload, stream, limit)),
        Compression::Zstd => zstd::stream::read::Decoder::new(payload)
            .map_err(anyhow::Error::from)
            // One frame: the next four bytes are `make`'s size, not another frame.
            .and_then(|decoder| read_capped(decoder.single_frame(), limit)),
        Compression::Bzip2 => read_capped(bzip2::read::BzDecoder::new(payload), limit),
        Compression::Lzma => Stream::new_lzma_decoder(LZMA_MEMLIMIT)
            .map_err(anyhow::Error::from)
            .and_then(|stream| unpack_lzma(payload, stream, limit)),
        Compression::Lz4 => unpack_lz4_legacy(payload, limit),
        Compression::Lzo => unpack_lzop(payload, limit),
    }
    .with_context(|| format!("cannot unpack the {compression} payload"))?;
    Ok((compression, Cow::Owned(unpacked)))
}

fn detect(payload: &[u8]) -> Option<Compression> {
    let is = |magic: &[u8]| payload.starts_with(magic);
    Some(if is(ELF_MAGIC) {
        Compression::None
    } else if is(GZIP_MAGIC) {
        Compression::Gzip
    } else if is(XZ_MAGIC) {
        Compression::Xz
    } else if is(ZSTD_MAGIC) {
        Compression::Zstd
    } else if is(&LZ4_LEGACY_MAGIC.to_le_bytes()) {
        Compression::Lz4
    } else if is(BZIP2_MAGIC) {
        Compression::Bzip2
    } else if is(LZMA_MAGIC) {
        Compression::Lzma
    } else if is(LZOP_MAGIC) {
        Compression::Lzo
    } else {
        return None;
    })
}

/// Reads a decoder to its end, refusing to produce more than `limit` bytes.
fn read_capped(decoder: impl Read, limit: u64) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    decoder.take(limit + 1).read_to_end(&mut out)?;
    ensure!(out.len() as u64 <= limit, too_big(limit));
    Ok(out)
}

fn too_big(limit: u64) -> String {
    format!("it unpacks to more than {}", format_size(limit))
}

/// Runs liblzma (xz or lzma-alone) over `payload` until its stream ends. The crate's `Read`
/// adapters would go on feeding it the 4 bytes `make` appended, which liblzma rightly calls
/// corrupt, so the stream is driven by hand and stopped at its end.
fn unpack_lzma(payload: &[u8], mut stream: Stream, limit: u64) -> anyhow::Result<Vec<u8>> {
    const CHUNK: usize = 1 << 20;
    let mut out = Vec::new();
    loop {
        ensure!(out.len() as u64 <= limit, too_big(limit));
        if out.len() == out.capacity() {
            out.reserve(CHUNK);
        }
        let progress = (stream.total_in(), stream.total_out());
        let input = &payload[stream.total_in() as usize..];
        if stream.process_vec(input, &mut out, Action::Run)? == Status::StreamEnd {
            break;
        }
        ensure!(
            (stream.total_in(), stream.total_out()) != progress,
            "the payload ends before its compressed stream does"
        );
    }
    ensure!(out.len() as u64 <= limit, too_big(limit));
    Ok(out)
}

/// Unpacks lz4's legacy format: the magic, then blocks, each a little-endian u32 compressed
/// size and that many bytes of one lz4 block. lz4_flex reads only the modern frame format, so
/// the framing is walked here and each block handed to lz4_flex's block decoder.
///
/// As in the kernel's lib/decompress_unlz4.c, the magic may appear again where a block size
/// would be (a new frame begins), and the input ends either at its end or with the 4-byte
/// uncompressed size that `make` appends.
fn unpack_lz4_legacy(payload: &[u8], limit: u64) -> anyhow::Result<Vec<u8>> {
    let mut input = &payload[4..];
    let mut out = Vec::new();
    let mut block_out = vec![0u8; LZ4_LEGACY_BLOCK];
    while input.len() > 4 {
        let (size, rest) = input.split_at(4);
        let size = u32::from_le_bytes([size[0], size[1], size[2], size[3]]);
        if size == LZ4_LEGACY_MAGIC {
            input = rest;
            continue;
        }
        let Some(block) = rest.get(..size as usize) else {
            bail!("lz4 block of {size} bytes runs past the end of the payload");
        };
        let offset = payload.len() - input.len();
        let n = lz4_flex::block::decompress_into(block, &mut block_out)
            .with_context(|| format!("corrupt lz4 block at payload offset {offset:#x}"))?;
        ensure!((out.len() + n) as u64 <= limit, too_big(limit));
        out.extend_from_slice(&block_out[..n]);
        input = &rest[size as usize..];
    }
    // What is left is nothing or the 4-byte size (a shorter tail cannot be either).
    ensure!(
        input.is_empty() || input.len() == 4,
        "lz4 payload ends in a partial block header"
    );
    Ok(out)
}

/// Unpacks an lzop file, as the kernel's lib/decompress_unlzo.c does: a header (read only for
/// its flags and to find its end), then blocks, each a big-endian uncompressed and compressed
/// size, the checksums the flags ask for, and that many bytes of one LZO1X block (or the bytes
/// themselves, when they did not compress). A block of size 0 ends the file; `make`'s size
/// comes after it. Checksums are skipped, as the kernel skips them: a corrupt block still fails
/// to decode, and the ELF behind it is checked on its own.
fn unpack_lzop(payload: &[u8], limit: u64) -> anyhow::Result<Vec<u8>> {
    let mut input = Input(&payload[LZOP_MAGIC.len()..]);
    let version = input.u16()?;
    input.skip(4)?; // the library version and the version needed to extract
    input.skip(1)?; // the method: every LZO1X variant decodes alike
    if version >= 0x0940 {
        input.skip(1)?; // the level
    }
    let flags = input.u32()?;
    if flags & LZOP_FILTER != 0 {
        input.skip(4)?;
    }
    input.skip(8)?; // the file's mode and modification time
    if version >= 0x0940 {
        input.skip(4)?; // the modification time's high half
    }
    let name_len = input.u8()?;
    input.skip(usize::from(name_len) + 4)?; // the file name and the header checksum

    let checksums = |mask: u32| usize::from(flags & mask != 0);
    let mut out = Vec::new();
    loop {
        let unpacked_len = input.u32()? as usize;
        if unpacked_len == 0 {
            return Ok(out);
        }
        ensure!(
            unpacked_len <= LZOP_MAX_BLOCK,
            "an lzo block of {unpacked_len} bytes is larger than lzop writes"
        );
        let packed_len = input.u32()? as usize;
        ensure!(
            packed_len > 0 && packed_len <= unpacked_len,
            "an lzo block is packed to {packed_len} bytes of {unpacked_len}"
        );
        let stored = packed_len == unpacked_len;
        let mut sums = checksums(LZOP_ADLER32_D) + checksums(LZOP_CRC32_D);
        if !stored {
            sums += checksums(LZOP_ADLER32_C) + checksums(LZOP_CRC32_C);
        }
        input.skip(4 * sums)?;
        ensure!((out.len() + unpacked_len) as u64 <= limit, too_big(limit));
        let offset = payload.len() - input.0.len();
        let block = input.take(packed_len)?;
        let start = out.len();
        out.resize(start + unpacked_len, 0);
        if stored {
            out[start..].copy_from_slice(block);
        } else {
            lzo1x::decompress(block, &mut out[start..])
                .map_err(|_| anyhow!("corrupt lzo block at payload offset {offset:#x}"))?;
        }
    }
}

/// The rest of an lzop file, read from the front.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn take(&mut self, len: usize) -> anyhow::Result<&'a [u8]> {
        ensure!(len <= self.0.len(), "the lzo payload is cut short");
        let (taken, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(taken)
    }

    fn skip(&mut self, len: usize) -> anyhow::Result<()> {
        self.take(len).map(drop)
    }

    fn u8(&mut self) -> anyhow::Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> anyhow::Result<u16> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into()?))
    }

    fn u32(&mut self) -> anyhow::Result<u32> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into()?))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// Something that starts like an ELF and compresses a little, but not to nothing.
    pub(crate) fn fake_elf(len: usize) -> Vec<u8> {
        let mut data = b"\x7fELF\x02\x01\x01".to_vec();
        let mut x: u32 = 12345;
        while data.len() < len {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            data.push(if x.is_multiple_of(3) {
                (x >> 16) as u8
            } else {
                b'k'
            });
        }
        data
    }

    /// The way `make` packs a payload: the stream, then (but for gzip) the size as 4 bytes.
    fn with_size(mut stream: Vec<u8>, data: &[u8]) -> Vec<u8> {
        stream.extend_from_slice(&(data.len() as u32).to_le_bytes());
        stream
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    pub(crate) fn xz(data: &[u8]) -> Vec<u8> {
        // The kernel's xz_wrap.sh asks for a CRC32 check.
        let stream =
            liblzma::stream::Stream::new_easy_encoder(6, liblzma::stream::Check::Crc32).unwrap();
        let mut out = Vec::new();
        liblzma::read::XzEncoder::new_stream(data, stream)
            .read_to_end(&mut out)
            .unwrap();
        with_size(out, data)
    }

    fn lzma(data: &[u8]) -> Vec<u8> {
        let options = liblzma::stream::LzmaOptions::new_preset(6).unwrap();
        let stream = liblzma::stream::Stream::new_lzma_encoder(&options).unwrap();
        let mut out = Vec::new();
        liblzma::read::XzEncoder::new_stream(data, stream)
            .read_to_end(&mut out)
            .unwrap();
        with_size(out, data)
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        with_size(zstd::stream::encode_all(data, 19).unwrap(), data)
    }

    fn bzip2(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        bzip2::read::BzEncoder::new(data, bzip2::Compression::best())
            .read_to_end(&mut out)
            .unwrap();
        with_size(out, data)
    }

    /// An lzop file as `lzop -9` writes it (version 1.04 headers, a name, an Adler-32 of each
    /// block's data), with `chunk`-byte blocks; a block that does not compress is stored.
    fn lzop(data: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = LZOP_MAGIC.to_vec();
        out.extend_from_slice(&[0x10, 0x40, 0x20, 0xa0, 0x09, 0x40, 3, 9]);
        out.extend_from_slice(&(0x0300_0000 | LZOP_ADLER32_D).to_be_bytes());
        out.extend_from_slice(&[0; 12]); // mode, mtime
        out.push(7);
        out.extend_from_slice(b"vmlinux");
        out.extend_from_slice(&[0; 4]); // header checksum
        for part in data.chunks(chunk) {
            let packed = lzo1x::compress(part, lzo1x::CompressLevel::new(12));
            let block = if packed.len() < part.len() {
                &packed[..]
            } else {
                part
            };
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(&(block.len() as u32).to_be_bytes());
            out.extend_from_slice(&[0; 4]); // data checksum
            out.extend_from_slice(block);
        }
        out.extend_from_slice(&[0; 4]);
        with_size(out, data)
    }

    /// A legacy lz4 payload of `chunk`-byte blocks, with a second frame magic in the middle.
    fn lz4_legacy(data: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        for (i, part) in data.chunks(chunk).enumerate() {
            if i == 1 {
                out.extend_from_slice(&LZ4_LEGACY_MAGIC.to_le_bytes());
            }
            let block = lz4_flex::block::compress(part);
            out.extend_from_slice(&(block.len() as u32).to_le_bytes());
            out.extend_from_slice(&block);
        }
        with_size(out, data)
    }

    #[test]
    fn every_compressor_round_trips() {
        let elf = fake_elf(200_000);
        let cases = [
            (Compression::Gzip, gzip(&elf)),
            (Compression::Xz, xz(&elf)),
            (Compression::Lzma, lzma(&elf)),
            (Compression::Zstd, zstd(&elf)),
            (Compression::Bzip2, bzip2(&elf)),
            (Compression::Lz4, lz4_legacy(&elf, 64 * 1024)),
            (Compression::Lzo, lzop(&elf, LZOP_MAX_BLOCK)),
        ];
        for (expected, packed) in cases {
            assert!(packed.len() < elf.len(), "{expected} did not compress");
            let (found, unpacked) = unpack(&packed).unwrap();
            assert_eq!(found, expected);
            assert!(unpacked == elf, "{expected} changed the data");
        }
    }

    #[test]
    fn an_uncompressed_elf_is_borrowed() {
        let elf = fake_elf(1000);
        let (found, unpacked) = unpack(&elf).unwrap();
        assert_eq!(found, Compression::None);
        assert!(matches!(unpacked, Cow::Borrowed(_)));
    }

    #[test]
    fn unknown_and_corrupt_payloads_are_refused() {
        let err = unpack(b"\x00\x01\x02\x03garbage").unwrap_err().to_string();
        assert!(err.starts_with("unknown payload compression"), "{err}");
        let mut corrupt = xz(&fake_elf(10_000));
        corrupt.truncate(corrupt.len() / 2);
        let err = format!("{:#}", unpack(&corrupt).unwrap_err());
        assert!(err.starts_with("cannot unpack the xz payload"), "{err}");

        let mut lz4 = lz4_legacy(&fake_elf(10_000), 4096);
        lz4.truncate(lz4.len() - 10);
        assert!(format!("{:#}", unpack(&lz4).unwrap_err()).contains("past the end"));

        let mut lzo = lzop(&fake_elf(10_000), 4096);
        lzo.truncate(lzo.len() - 100);
        let err = format!("{:#}", unpack(&lzo).unwrap_err());
        assert!(err.ends_with("the lzo payload is cut short"), "{err}");
        // The first block's packed bytes begin after a 45-byte header and 12 bytes of sizes
        // and checksum.
        let mut lzo = lzop(&fake_elf(10_000), 4096);
        lzo[57..57 + 64].fill(0xff);
        let err = format!("{:#}", unpack(&lzo).unwrap_err());
        assert!(
            err.ends_with("corrupt lzo block at payload offset 0x39"),
            "{err}"
        );
    }

    #[test]
    fn a_zip_bomb_is_capped() {
        // The cap is 512 MiB for real; a smaller one shows the same path in every decoder.
        let zeros = vec![0u8; 100_000];
        for bomb in [
            gzip(&zeros),
            xz(&zeros),
            zstd(&zeros),
            bzip2(&zeros),
            lz4_legacy(&zeros, 4096),
            lzop(&zeros, 4096),
        ] {
            let err = format!("{:#}", unpack_with_limit(&bomb, 99_999).unwrap_err());
            assert!(
                err.ends_with("it unpacks to more than 99999 bytes"),
                "{err}"
            );
            assert!(unpack_with_limit(&bomb, 100_000).is_ok());
        }
    }
}
