//! The smallest kernel the launcher will accept: an ELF64 file with the lguest entry note.
//!
//! Until a real guest kernel exists, this is how the tests get the launcher past "is this an
//! lguest kernel?" and on to /dev/lguest: one PT_LOAD with three bytes of code (`hlt; jmp` back
//! to it) at physical and virtual 1 MiB, and one PT_NOTE whose `lguest` note of type
//! [`NOTE_TYPE_ENTRY`] names that code as the entry point (abi/src/boot.rs). Nothing else: no
//! sections, no symbols. Layout of the file:
//!
//! ```text
//!   0x000  ELF header           (64 bytes)
//!   0x040  program header LOAD  (56 bytes)
//!   0x078  program header NOTE  (56 bytes)
//!   0x0b0  the note             (12-byte header, "lguest\0" padded to 8, 8-byte entry)
//!   0x1000 the code             (page-aligned, as p_offset must match p_vaddr modulo p_align)
//! ```

use lguest_abi::boot::{NOTE_NAME, NOTE_TYPE_ENTRY};

/// Where the code is loaded and where the note says the guest starts (virtual = physical).
pub const ENTRY: u64 = 0x10_0000;

const EHDR_SIZE: u16 = 64;
const PHDR_SIZE: u16 = 56;
const NOTE_OFFSET: u64 = EHDR_SIZE as u64 + 2 * PHDR_SIZE as u64;
const CODE_OFFSET: u64 = 0x1000;
/// `hlt` then `jmp rel8 -3`, back to the `hlt`: a guest that ever ran this would idle forever.
const CODE: [u8; 3] = [0xf4, 0xeb, 0xfd];

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PF_X: u32 = 1;
const PF_R: u32 = 4;

/// The bytes of the file.
pub fn lguest_kernel() -> Vec<u8> {
    let note = note();
    let mut f = Vec::new();

    // ELF header: 64-bit, little-endian, version 1, System V ABI; an x86-64 executable.
    f.extend_from_slice(b"\x7fELF");
    f.extend_from_slice(&[2, 1, 1, 0]);
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    f.extend_from_slice(&62u16.to_le_bytes()); // e_machine: EM_X86_64
    f.extend_from_slice(&1u32.to_le_bytes()); // e_version
    f.extend_from_slice(&ENTRY.to_le_bytes()); // e_entry
    f.extend_from_slice(&u64::from(EHDR_SIZE).to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff: no sections
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    f.extend_from_slice(&EHDR_SIZE.to_le_bytes()); // e_ehsize
    f.extend_from_slice(&PHDR_SIZE.to_le_bytes()); // e_phentsize
    f.extend_from_slice(&2u16.to_le_bytes()); // e_phnum
    f.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    f.extend_from_slice(&[0; 4]); // e_shnum, e_shstrndx
    debug_assert_eq!(f.len(), usize::from(EHDR_SIZE));

    let code_len = CODE.len() as u64;
    phdr(
        &mut f,
        PT_LOAD,
        PF_R | PF_X,
        CODE_OFFSET,
        ENTRY,
        code_len,
        0x1000,
    );
    phdr(&mut f, PT_NOTE, PF_R, NOTE_OFFSET, 0, note.len() as u64, 4);

    f.extend_from_slice(&note);
    f.resize(CODE_OFFSET as usize, 0);
    f.extend_from_slice(&CODE);
    f
}

/// Appends one program header; a segment's virtual and physical addresses are the same.
fn phdr(f: &mut Vec<u8>, kind: u32, flags: u32, offset: u64, addr: u64, size: u64, align: u64) {
    f.extend_from_slice(&kind.to_le_bytes());
    f.extend_from_slice(&flags.to_le_bytes());
    for word in [offset, addr, addr, size, size, align] {
        f.extend_from_slice(&word.to_le_bytes());
    }
}

/// The lguest entry note: namesz, descsz, type, then name and descriptor, each padded to 4.
fn note() -> Vec<u8> {
    let mut n = Vec::new();
    n.extend_from_slice(&(NOTE_NAME.len() as u32).to_le_bytes());
    n.extend_from_slice(&8u32.to_le_bytes());
    n.extend_from_slice(&NOTE_TYPE_ENTRY.to_le_bytes());
    n.extend_from_slice(NOTE_NAME);
    n.resize(n.len().next_multiple_of(4), 0);
    n.extend_from_slice(&ENTRY.to_le_bytes());
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(f: &[u8], at: usize) -> u16 {
        u16::from_le_bytes(f[at..at + 2].try_into().unwrap())
    }
    fn u32_at(f: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(f[at..at + 4].try_into().unwrap())
    }
    fn u64_at(f: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(f[at..at + 8].try_into().unwrap())
    }

    /// Reads the file back the way an ELF loader does: header, program headers, note, code.
    #[test]
    fn the_file_reads_back_as_an_lguest_kernel() {
        let f = lguest_kernel();
        assert_eq!(&f[..4], b"\x7fELF");
        assert_eq!((f[4], f[5]), (2, 1), "ELFCLASS64, little-endian");
        assert_eq!(u16_at(&f, 18), 62, "EM_X86_64");
        assert_eq!(u64_at(&f, 24), ENTRY);
        let phoff = u64_at(&f, 32) as usize;
        assert_eq!(usize::from(u16_at(&f, 54)), 56);
        assert_eq!(u16_at(&f, 56), 2);

        let load = phoff;
        assert_eq!(u32_at(&f, load), PT_LOAD);
        let (offset, vaddr, paddr) = (
            u64_at(&f, load + 8),
            u64_at(&f, load + 16),
            u64_at(&f, load + 24),
        );
        assert_eq!((vaddr, paddr), (ENTRY, ENTRY));
        assert_eq!(
            offset % 0x1000,
            vaddr % 0x1000,
            "p_offset and p_vaddr congruent"
        );
        let filesz = u64_at(&f, load + 32) as usize;
        assert_eq!(&f[offset as usize..offset as usize + filesz], &CODE);

        let note_ph = phoff + 56;
        assert_eq!(u32_at(&f, note_ph), PT_NOTE);
        let at = u64_at(&f, note_ph + 8) as usize;
        assert_eq!(u64_at(&f, note_ph + 32), 28, "one note: 12 + 8 + 8 bytes");
        let (namesz, descsz, kind) = (u32_at(&f, at), u32_at(&f, at + 4), u32_at(&f, at + 8));
        assert_eq!((namesz, descsz, kind), (7, 8, NOTE_TYPE_ENTRY));
        assert_eq!(&f[at + 12..at + 19], NOTE_NAME);
        assert_eq!(u64_at(&f, at + 20), ENTRY);
    }
}
