//! Loading an ELF vmlinux into guest memory, and finding where it starts.
//!
//! The last step of a kernel image's journey: whether it came as a bzImage (and was unpacked by
//! payload.rs) or as a bare vmlinux, it is now an ELF executable. This file copies its
//! loadable segments to the guest-physical addresses they ask for, and reads the lguest note
//! that says where the guest starts. It writes guest memory only inside those segments.
//!
//! linux-loader has an ELF loader, but it does not fit here: it never zeroes a segment's tail
//! (`.bss`), so it relies on fresh memory; it skips segments with no file bytes; it does not
//! check the machine or type, or segments against ranges the launcher keeps for itself; and it
//! looks only for Xen's PVH note. What is left is small, so it is written out below; its
//! header structs come from linux-loader.

use std::mem::size_of;

use anyhow::{anyhow, bail, ensure, Context};
use lguest_abi::boot::{NOTE_NAME, NOTE_TYPE_ENTRY};
use linux_loader::elf::{
    Elf64_Ehdr, Elf64_Nhdr, Elf64_Phdr, EI_CLASS, EI_DATA, ELFCLASS64, ELFDATA2LSB, ELFMAG,
    EM_X86_64, ET_EXEC, PT_LOAD, PT_NOTE,
};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::Reserved;
use crate::size::format_size;

/// The error for a kernel without the lguest note; the end-to-end tests look for its words.
pub const NO_NOTE: &str =
    "this kernel was not built to run under lguest (it has no lguest ELF note)";

/// What loading an ELF kernel found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElfKernel {
    /// The guest-virtual address of the first instruction, from the lguest note.
    pub entry: u64,
    /// `p_vaddr - p_paddr` of the segments: where the kernel expects to see physical memory.
    pub virt_offset: u64,
    /// The lowest guest-physical address a segment occupies.
    pub phys_start: u64,
    /// The first guest-physical address past the highest segment (its `.bss` included).
    pub phys_end: u64,
}

/// Loads the ELF executable `elf` into `mem`, refusing segments outside RAM or in `reserved`.
pub fn load_elf(
    mem: &GuestMemoryMmap,
    elf: &[u8],
    reserved: &[Reserved],
) -> anyhow::Result<ElfKernel> {
    let ehdr = header(elf)?;
    let phdrs = program_headers(elf, &ehdr)?;
    // The note first: a kernel not built for lguest is the likeliest mistake, and saying so
    // is more useful than any complaint about its layout.
    let entry = entry_from_note(elf, &phdrs)?.ok_or_else(|| anyhow!(NO_NOTE))?;

    let segments: Vec<&Elf64_Phdr> = phdrs
        .iter()
        .filter(|p| p.p_type == PT_LOAD && p.p_memsz != 0)
        .collect();
    // The offset comes from the first segment linked at a real address (see `per_cpu` below).
    let Some(first) = segments
        .iter()
        .find(|p| p.p_vaddr != 0)
        .or(segments.first())
    else {
        bail!("the ELF kernel has no loadable segments");
    };
    let virt_offset = first.p_vaddr.wrapping_sub(first.p_paddr);
    let ram_end = mem.last_addr().0 + 1;
    let mut phys_start = u64::MAX;
    let mut phys_end = 0;
    let mut entry_is_loaded = false;
    for seg in &segments {
        let (paddr, memsz) = (seg.p_paddr, seg.p_memsz);
        let seg_offset = seg.p_vaddr.wrapping_sub(paddr);
        // Linux before 6.15 links its per-CPU area at virtual 0 and reaches it only through a
        // per-CPU base register, never at that link address; it has no say in the offset.
        let per_cpu = seg.p_vaddr == 0 && virt_offset != 0;
        ensure!(
            seg_offset == virt_offset || per_cpu,
            "the ELF kernel's segments disagree on its virtual offset ({virt_offset:#x} for the \
             first, {seg_offset:#x} for the one at physical {paddr:#x})"
        );
        ensure!(
            seg.p_filesz <= memsz,
            "ELF segment at {paddr:#x} has more file bytes than memory"
        );
        let in_file = seg
            .p_offset
            .checked_add(seg.p_filesz)
            .is_some_and(|e| e <= elf.len() as u64);
        ensure!(
            in_file,
            "truncated ELF: the segment at physical {paddr:#x} lies past its end"
        );
        let end = match paddr.checked_add(memsz) {
            Some(end) if end <= ram_end => end,
            _ => bail!(
                "kernel does not fit in {} of guest RAM (its segment at {paddr:#x} is {memsz:#x} \
                 bytes long)",
                format_size(ram_end)
            ),
        };
        if let Some(r) = reserved
            .iter()
            .find(|r| paddr < r.range.end && r.range.start < end)
        {
            bail!(
                "kernel segment {paddr:#x}..{end:#x} overlaps the {} at {:#x}..{:#x}",
                r.name,
                r.range.start,
                r.range.end
            );
        }
        entry_is_loaded |= !per_cpu && (paddr..end).contains(&entry.wrapping_sub(virt_offset));
        phys_start = phys_start.min(paddr);
        phys_end = phys_end.max(end);
    }
    ensure!(
        entry_is_loaded,
        "the lguest note's entry point {entry:#x} is not inside the kernel's loaded segments"
    );

    // Everything checked: now copy.
    for seg in segments {
        let file = &elf[seg.p_offset as usize..(seg.p_offset + seg.p_filesz) as usize];
        mem.write_slice(file, GuestAddress(seg.p_paddr))?;
        zero(mem, seg.p_paddr + seg.p_filesz, seg.p_memsz - seg.p_filesz)?;
    }
    Ok(ElfKernel {
        entry,
        virt_offset,
        phys_start,
        phys_end,
    })
}

/// Checks the ELF header: a little-endian 64-bit x86-64 executable.
fn header(elf: &[u8]) -> anyhow::Result<Elf64_Ehdr> {
    let mut ehdr = Elf64_Ehdr::default();
    let bytes = elf
        .get(..size_of::<Elf64_Ehdr>())
        .context("truncated ELF header")?;
    ehdr.as_mut_slice().copy_from_slice(bytes);
    ensure!(ehdr.e_ident.starts_with(ELFMAG), "not an ELF file");
    ensure!(
        ehdr.e_ident[EI_CLASS] == ELFCLASS64 && ehdr.e_ident[EI_DATA] == ELFDATA2LSB,
        "not a 64-bit little-endian ELF"
    );
    ensure!(
        ehdr.e_machine == EM_X86_64,
        "ELF for machine {}, not x86-64 ({EM_X86_64})",
        ehdr.e_machine
    );
    ensure!(
        ehdr.e_type == ET_EXEC,
        "ELF of type {}, not an executable ({ET_EXEC})",
        ehdr.e_type
    );
    ensure!(
        usize::from(ehdr.e_phentsize) == size_of::<Elf64_Phdr>(),
        "ELF program headers of {} bytes, not {}",
        ehdr.e_phentsize,
        size_of::<Elf64_Phdr>()
    );
    Ok(ehdr)
}

fn program_headers(elf: &[u8], ehdr: &Elf64_Ehdr) -> anyhow::Result<Vec<Elf64_Phdr>> {
    let len = usize::from(ehdr.e_phnum) * size_of::<Elf64_Phdr>();
    let table = usize::try_from(ehdr.e_phoff)
        .ok()
        .and_then(|start| elf.get(start..start.checked_add(len)?))
        .context("truncated ELF: its program headers lie past its end")?;
    Ok(table
        .chunks_exact(size_of::<Elf64_Phdr>())
        .map(|bytes| {
            let mut phdr = Elf64_Phdr::default();
            phdr.as_mut_slice().copy_from_slice(bytes);
            phdr
        })
        .collect())
}

/// The entry point from the lguest note, if a PT_NOTE segment has one.
///
/// A note is a 12-byte header (name size, descriptor size, type), then the name and the
/// descriptor, each padded to the segment's alignment (4 bytes, or 8 in 8-aligned segments).
fn entry_from_note(elf: &[u8], phdrs: &[Elf64_Phdr]) -> anyhow::Result<Option<u64>> {
    for seg in phdrs.iter().filter(|p| p.p_type == PT_NOTE) {
        let notes = usize::try_from(seg.p_offset)
            .ok()
            .zip(usize::try_from(seg.p_filesz).ok())
            .and_then(|(start, len)| elf.get(start..start.checked_add(len)?))
            .context("truncated ELF: a note segment lies past its end")?;
        let align = if seg.p_align == 8 { 8 } else { 4 };
        let mut rest = notes;
        while rest.len() >= size_of::<Elf64_Nhdr>() {
            let mut nhdr = Elf64_Nhdr::default();
            nhdr.as_mut_slice()
                .copy_from_slice(&rest[..size_of::<Elf64_Nhdr>()]);
            let name_start = size_of::<Elf64_Nhdr>();
            let desc_start = name_start + pad(nhdr.n_namesz as usize, align);
            let next = desc_start + pad(nhdr.n_descsz as usize, align);
            let (Some(name), Some(desc)) = (
                rest.get(name_start..name_start + nhdr.n_namesz as usize),
                rest.get(desc_start..desc_start + nhdr.n_descsz as usize),
            ) else {
                bail!("malformed ELF note segment");
            };
            if name == NOTE_NAME && nhdr.n_type == NOTE_TYPE_ENTRY {
                let entry: [u8; 8] = desc.try_into().map_err(|_| {
                    anyhow!("the lguest entry note holds {} bytes, not 8", desc.len())
                })?;
                return Ok(Some(u64::from_le_bytes(entry)));
            }
            rest = rest.get(next..).unwrap_or_default();
        }
    }
    Ok(None)
}

fn pad(len: usize, align: usize) -> usize {
    len.div_ceil(align) * align
}

/// Zeroes `len` bytes of guest memory at `gpa`, a chunk at a time: a segment's `.bss` is
/// bounded by RAM, not by anything the launcher should allocate at once.
fn zero(mem: &GuestMemoryMmap, gpa: u64, len: u64) -> anyhow::Result<()> {
    const CHUNK: u64 = 64 * 1024;
    let zeros = [0u8; CHUNK as usize];
    let mut done = 0;
    while done < len {
        let n = CHUNK.min(len - done);
        mem.write_slice(&zeros[..n as usize], GuestAddress(gpa + done))?;
        done += n;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::memory::GuestRam;

    pub(crate) const LINUX_OFFSET: u64 = 0xffff_ffff_8000_0000;

    /// One loadable segment for [`make_elf`].
    pub(crate) struct Seg {
        pub vaddr: u64,
        pub paddr: u64,
        pub data: Vec<u8>,
        pub memsz: u64,
    }

    pub(crate) fn note(name: &[u8], n_type: u32, desc: &[u8]) -> Vec<u8> {
        let nhdr = Elf64_Nhdr {
            n_namesz: name.len() as u32,
            n_descsz: desc.len() as u32,
            n_type,
        };
        let mut out = nhdr.as_slice().to_vec();
        for part in [name, desc] {
            out.extend_from_slice(part);
            out.resize(pad(out.len(), 4), 0);
        }
        out
    }

    pub(crate) fn lguest_note(entry: u64) -> Vec<u8> {
        note(NOTE_NAME, NOTE_TYPE_ENTRY, &entry.to_le_bytes())
    }

    /// A small x86-64 ELF executable with `segs` and one PT_NOTE holding `notes`.
    pub(crate) fn make_elf(segs: &[Seg], notes: &[u8]) -> Vec<u8> {
        let phnum = segs.len() + 1;
        let mut data_at = (size_of::<Elf64_Ehdr>() + phnum * size_of::<Elf64_Phdr>()) as u64;
        let mut phdrs = vec![Elf64_Phdr {
            p_type: PT_NOTE,
            p_offset: data_at,
            p_filesz: notes.len() as u64,
            p_align: 4,
            ..Default::default()
        }];
        data_at += notes.len() as u64;
        for seg in segs {
            phdrs.push(Elf64_Phdr {
                p_type: PT_LOAD,
                p_offset: data_at,
                p_vaddr: seg.vaddr,
                p_paddr: seg.paddr,
                p_filesz: seg.data.len() as u64,
                p_memsz: seg.memsz,
                p_align: 4096,
                ..Default::default()
            });
            data_at += seg.data.len() as u64;
        }
        let mut ident = [0u8; 16];
        ident[..4].copy_from_slice(ELFMAG);
        ident[EI_CLASS] = ELFCLASS64;
        ident[EI_DATA] = ELFDATA2LSB;
        ident[6] = 1;
        let ehdr = Elf64_Ehdr {
            e_ident: ident,
            e_type: ET_EXEC,
            e_machine: EM_X86_64,
            e_version: 1,
            e_phoff: size_of::<Elf64_Ehdr>() as u64,
            e_ehsize: size_of::<Elf64_Ehdr>() as u16,
            e_phentsize: size_of::<Elf64_Phdr>() as u16,
            e_phnum: phnum as u16,
            ..Default::default()
        };
        let mut out = ehdr.as_slice().to_vec();
        for phdr in &phdrs {
            out.extend_from_slice(phdr.as_slice());
        }
        out.extend_from_slice(notes);
        for seg in segs {
            out.extend_from_slice(&seg.data);
        }
        out
    }

    /// A Linux-like kernel: text at 16 MiB linked at -2 GiB + 16 MiB, with a `.bss` tail.
    pub(crate) fn linux_like(notes: &[u8]) -> Vec<u8> {
        make_elf(
            &[Seg {
                vaddr: LINUX_OFFSET + 0x100_0000,
                paddr: 0x100_0000,
                data: vec![0xcc; 0x2345],
                memsz: 0x10000,
            }],
            notes,
        )
    }

    fn ram() -> GuestRam {
        GuestRam::new(32 << 20, 0).unwrap()
    }

    fn load_err(elf: &[u8]) -> String {
        format!("{:#}", load_elf(ram().memory(), elf, &[]).unwrap_err())
    }

    #[test]
    fn segments_land_at_their_physical_addresses() {
        let ram = ram();
        let mem = ram.memory();
        // Dirty the .bss first to see it zeroed.
        mem.write_slice(&[0xff; 16], GuestAddress(0x100_2345))
            .unwrap();
        let notes = [
            note(b"GNU\0", 3, &[1, 2, 3, 4, 5]),
            lguest_note(LINUX_OFFSET + 0x100_0010),
        ]
        .concat();
        let k = load_elf(mem, &linux_like(&notes), &[]).unwrap();
        assert_eq!(
            k,
            ElfKernel {
                entry: LINUX_OFFSET + 0x100_0010,
                virt_offset: LINUX_OFFSET,
                phys_start: 0x100_0000,
                phys_end: 0x101_0000,
            }
        );
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x100_2344)).unwrap(), 0xcc);
        assert_eq!(mem.read_obj::<u64>(GuestAddress(0x100_2345)).unwrap(), 0);
    }

    #[test]
    fn no_note_is_the_first_complaint() {
        let elf = make_elf(
            &[Seg {
                vaddr: 0,
                paddr: 64 << 20,
                data: vec![1],
                memsz: 1,
            }],
            &note(b"Xen\0", 18, &[0; 4]),
        );
        assert_eq!(load_err(&elf), NO_NOTE);
    }

    #[test]
    fn the_per_cpu_segment_is_loaded_but_has_no_offset() {
        let ram = ram();
        let elf = make_elf(
            &[
                Seg {
                    vaddr: LINUX_OFFSET + 0x100_0000,
                    paddr: 0x100_0000,
                    data: vec![1],
                    memsz: 1,
                },
                Seg {
                    vaddr: 0,
                    paddr: 0x120_0000,
                    data: vec![2],
                    memsz: 0x1000,
                },
            ],
            &lguest_note(LINUX_OFFSET + 0x100_0000),
        );
        let k = load_elf(ram.memory(), &elf, &[]).unwrap();
        assert_eq!(k.virt_offset, LINUX_OFFSET);
        assert_eq!(k.phys_end, 0x120_1000);
        assert_eq!(
            ram.memory()
                .read_obj::<u8>(GuestAddress(0x120_0000))
                .unwrap(),
            2
        );
    }

    #[test]
    fn bad_layouts_are_refused_before_anything_is_written() {
        let entry = lguest_note(0x100_0000);
        let seg = |vaddr, paddr, memsz| Seg {
            vaddr,
            paddr,
            data: vec![9; 16],
            memsz,
        };
        let elf = make_elf(&[seg(0x100_0000, 0x100_0000, (16 << 20) + 1)], &entry);
        assert!(load_err(&elf).starts_with("kernel does not fit in 32 MiB of guest RAM"));

        let elf = make_elf(
            &[
                seg(0x100_0000, 0x100_0000, 16),
                seg(0x200_0000, 0x180_0000, 16),
            ],
            &entry,
        );
        assert!(
            load_err(&elf).contains("disagree on its virtual offset"),
            "{}",
            load_err(&elf)
        );

        let outside = lguest_note(0x50_0000);
        let elf = make_elf(&[seg(0x100_0000, 0x100_0000, 16)], &outside);
        assert!(load_err(&elf).contains("entry point 0x500000 is not inside"));

        let ram = ram();
        let reserved = [Reserved {
            name: "boot_params",
            range: 0x100_0000..0x100_1000,
        }];
        let elf = make_elf(
            &[seg(0xff_f000, 0xff_f000, 0x1008)],
            &lguest_note(0xff_f000),
        );
        let err = load_elf(ram.memory(), &elf, &reserved)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "kernel segment 0xfff000..0x1000008 overlaps the boot_params at 0x1000000..0x1001000"
        );
        assert_eq!(
            ram.memory()
                .read_obj::<u8>(GuestAddress(0xff_f000))
                .unwrap(),
            0
        );

        let short_note = note(NOTE_NAME, NOTE_TYPE_ENTRY, &[1, 2, 3, 4]);
        let elf = make_elf(&[seg(0x100_0000, 0x100_0000, 16)], &short_note);
        assert!(load_err(&elf).contains("holds 4 bytes, not 8"));
    }

    #[test]
    fn foreign_and_broken_elves_are_refused() {
        let good = linux_like(&lguest_note(LINUX_OFFSET + 0x100_0000));
        assert!(load_err(&good[..40]).contains("truncated ELF header"));
        assert!(load_err(&good[..100]).contains("program headers lie past its end"));
        assert!(load_err(&good[..good.len() - 1]).contains("lies past its end"));
        let mut arm = good.clone();
        arm[18] = 183;
        assert!(load_err(&arm).contains("ELF for machine 183, not x86-64"));
        let mut dyn_ = good.clone();
        dyn_[16] = 3;
        assert!(load_err(&dyn_).contains("not an executable"));
        let mut elf32 = good;
        elf32[EI_CLASS] = 1;
        assert!(load_err(&elf32).contains("not a 64-bit"));
    }
}
