//! What `read()` of `/dev/lguest` returns when the guest stops for the launcher.
//!
//! `read()` runs the guest until something needs the launcher, then returns one exit record:
//! a little-endian `u64` kind, a `u64` length, then that many bytes. Most of what a guest does
//! (hypercalls, page faults, interrupts) the host handles itself without the launcher ever
//! knowing; an exit is the rest.
//!
//! A guest touching a device page (guest-physical pages from `pfn_limit` to `device_limit`, see
//! [`crate::dev::Initialize`]) is the exit devices are built on: [`ExitKind::Mmio`] carries an
//! [`MmioAccess`], and the launcher emulates the instruction, sets the registers it changed
//! (SETREG of the destination and of RIP past the instruction) and reads again.
//!
//! Death is sticky: once a guest is dead every further `read()` returns the same record, as in
//! lguest ("the Guest will never run again").

use super::hcall::CONSOLE_WRITE_MAX;
use super::regs::{Reg, Regs};

/// Why the guest stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum ExitKind {
    /// The guest wrote early console output (CONSOLE_WRITE); the bytes are the output. The
    /// launcher prints them and reads again.
    Console = 1,
    /// The guest powered off (SHUTDOWN); the bytes are its message.
    PowerOff = 2,
    /// The guest asked to restart (SHUTDOWN); the bytes are its message.
    Restart = 3,
    /// The host killed the guest for breaking a rule; the bytes say which.
    Died = 4,
    /// The guest read or wrote a device page; the bytes are an [`MmioAccess`]. The guest stays
    /// stopped at the instruction: reading again without moving RIP runs it (and faults) again.
    Mmio = 5,
}

impl ExitKind {
    fn from_u64(kind: u64) -> Option<ExitKind> {
        [
            ExitKind::Console,
            ExitKind::PowerOff,
            ExitKind::Restart,
            ExitKind::Died,
            ExitKind::Mmio,
        ]
        .into_iter()
        .find(|k| *k as u64 == kind)
    }
}

/// The most bytes an exit carries.
pub const EXIT_DATA_MAX: usize = CONSOLE_WRITE_MAX;
/// The kind and length words before the bytes.
pub const EXIT_HEADER_BYTES: usize = 16;
/// A buffer this big holds any exit record.
pub const EXIT_MAX_BYTES: usize = EXIT_HEADER_BYTES + EXIT_DATA_MAX;

/// One exit, owned (the host keeps it until the launcher reads it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitRecord {
    kind: ExitKind,
    len: usize,
    data: [u8; EXIT_DATA_MAX],
}

/// Why bytes from `read()` are not an exit record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitDecodeError {
    /// Fewer bytes than the header, or than the header's length says.
    Truncated,
    /// A kind this launcher does not know (a newer host?).
    UnknownKind(u64),
    /// A length beyond [`EXIT_DATA_MAX`].
    TooLong(u64),
}

impl ExitRecord {
    /// An exit carrying `data`, cut to [`EXIT_DATA_MAX`] bytes.
    pub fn new(kind: ExitKind, data: &[u8]) -> ExitRecord {
        let len = data.len().min(EXIT_DATA_MAX);
        let mut record = ExitRecord {
            kind,
            len,
            data: [0; EXIT_DATA_MAX],
        };
        record.data[..len].copy_from_slice(&data[..len]);
        record
    }

    pub fn kind(&self) -> ExitKind {
        self.kind
    }

    pub fn data(&self) -> &[u8] {
        &self.data[..self.len]
    }

    /// How many bytes [`ExitRecord::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        EXIT_HEADER_BYTES + self.len
    }

    /// Write the wire form into `out`; `None` if `out` is too small.
    pub fn encode(&self, out: &mut [u8]) -> Option<usize> {
        let total = self.encoded_len();
        let out = out.get_mut(..total)?;
        out[0..8].copy_from_slice(&(self.kind as u64).to_le_bytes());
        out[8..16].copy_from_slice(&(self.len as u64).to_le_bytes());
        out[16..].copy_from_slice(self.data());
        Some(total)
    }

    /// Read the wire form.
    pub fn decode(bytes: &[u8]) -> Result<ExitRecord, ExitDecodeError> {
        let word = |i: usize| -> Result<u64, ExitDecodeError> {
            let b = bytes.get(i..i + 8).ok_or(ExitDecodeError::Truncated)?;
            let mut w = [0u8; 8];
            w.copy_from_slice(b);
            Ok(u64::from_le_bytes(w))
        };
        let kind = word(0)?;
        let kind = ExitKind::from_u64(kind).ok_or(ExitDecodeError::UnknownKind(kind))?;
        let len = word(8)?;
        if len > EXIT_DATA_MAX as u64 {
            return Err(ExitDecodeError::TooLong(len));
        }
        let data = bytes
            .get(EXIT_HEADER_BYTES..EXIT_HEADER_BYTES + len as usize)
            .ok_or(ExitDecodeError::Truncated)?;
        Ok(ExitRecord::new(kind, data))
    }
}

/// The most instruction bytes an [`MmioAccess`] carries: x86's longest instruction.
pub const MMIO_INSN_MAX: usize = 15;

/// A guest access to a device page, as an [`ExitKind::Mmio`] record carries it.
///
/// The host knows the address and whether it was a write (the page fault told it), but not the
/// access's width or which register holds or wants the value: that is in the instruction, which
/// the launcher decodes. The host copies the instruction bytes from the guest's RIP (fewer than
/// [`MMIO_INSN_MAX`] where the next page is not mapped) and the registers, so the launcher needs
/// no GETREG to emulate it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioAccess {
    /// The guest-physical address accessed.
    pub gpa: u64,
    /// A write (else a read).
    pub write: bool,
    /// The instruction bytes at RIP: `insn[..insn_len]`.
    pub insn: [u8; MMIO_INSN_MAX],
    pub insn_len: usize,
    /// The guest's registers at the access.
    pub regs: Regs,
}

impl MmioAccess {
    /// Bytes in the wire form: gpa, flags, insn_len, 16 instruction bytes, the registers.
    pub const WIRE_BYTES: usize = 3 * 8 + 16 + Reg::COUNT * 8;

    /// The exit record that carries this access.
    pub fn to_record(self) -> ExitRecord {
        let mut bytes = [0u8; Self::WIRE_BYTES];
        bytes[0..8].copy_from_slice(&self.gpa.to_le_bytes());
        bytes[8..16].copy_from_slice(&u64::from(self.write).to_le_bytes());
        bytes[16..24].copy_from_slice(&(self.insn_len as u64).to_le_bytes());
        bytes[24..24 + MMIO_INSN_MAX].copy_from_slice(&self.insn);
        for (i, value) in self.regs.0.iter().enumerate() {
            bytes[40 + i * 8..48 + i * 8].copy_from_slice(&value.to_le_bytes());
        }
        ExitRecord::new(ExitKind::Mmio, &bytes)
    }

    /// Read an [`ExitKind::Mmio`] record's bytes; `None` if they are not one.
    pub fn from_bytes(bytes: &[u8]) -> Option<MmioAccess> {
        if bytes.len() != Self::WIRE_BYTES {
            return None;
        }
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(w)
        };
        let insn_len = usize::try_from(word(16))
            .ok()
            .filter(|n| *n <= MMIO_INSN_MAX)?;
        let mut insn = [0u8; MMIO_INSN_MAX];
        insn.copy_from_slice(&bytes[24..24 + MMIO_INSN_MAX]);
        let mut regs = Regs::default();
        for (i, value) in regs.0.iter_mut().enumerate() {
            *value = word(40 + i * 8);
        }
        Some(MmioAccess {
            gpa: word(0),
            write: word(8) & 1 != 0,
            insn,
            insn_len,
            regs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mmio_accesses_round_trip_through_a_record() {
        let mut regs = Regs::default();
        regs.set(Reg::Rip, 0xffff_ffff_8100_1234);
        regs.set(Reg::Rax, 0x1122_3344);
        let access = MmioAccess {
            gpa: 0x400_0070,
            write: true,
            insn: [0x89, 0x07, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            insn_len: 2,
            regs,
        };
        let record = access.to_record();
        assert_eq!(record.kind(), ExitKind::Mmio);
        let mut buf = [0u8; EXIT_MAX_BYTES];
        let n = record.encode(&mut buf).unwrap();
        let back = ExitRecord::decode(&buf[..n]).unwrap();
        assert_eq!(MmioAccess::from_bytes(back.data()), Some(access));
        assert_eq!(MmioAccess::from_bytes(&back.data()[1..]), None);
    }

    #[test]
    fn records_round_trip() {
        let mut buf = [0u8; EXIT_MAX_BYTES];
        for (kind, data) in [
            (ExitKind::Console, &b"hello from ring 1\n"[..]),
            (ExitKind::PowerOff, b"bye"),
            (ExitKind::Died, b""),
        ] {
            let record = ExitRecord::new(kind, data);
            let n = record.encode(&mut buf).unwrap();
            assert_eq!(n, 16 + data.len());
            assert_eq!(ExitRecord::decode(&buf[..n]), Ok(record));
            assert_eq!(record.data(), data);
        }
    }

    #[test]
    fn long_data_is_cut_and_small_buffers_refused() {
        let record = ExitRecord::new(ExitKind::Console, &[7u8; EXIT_DATA_MAX + 5]);
        assert_eq!(record.data().len(), EXIT_DATA_MAX);
        assert_eq!(record.encode(&mut [0u8; 100]), None);
    }

    #[test]
    fn bad_wire_forms_are_refused() {
        assert_eq!(
            ExitRecord::decode(&[1, 0, 0]),
            Err(ExitDecodeError::Truncated)
        );
        let mut buf = [0u8; 32];
        buf[0] = 9;
        assert_eq!(
            ExitRecord::decode(&buf),
            Err(ExitDecodeError::UnknownKind(9))
        );
        buf[0] = 1;
        buf[8..16].copy_from_slice(&5000u64.to_le_bytes());
        assert_eq!(
            ExitRecord::decode(&buf),
            Err(ExitDecodeError::TooLong(5000))
        );
        buf[8] = 20;
        buf[9] = 0;
        assert_eq!(ExitRecord::decode(&buf), Err(ExitDecodeError::Truncated));
    }
}
