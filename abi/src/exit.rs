//! What `read()` of `/dev/lguest` returns when the guest stops for the launcher.
//!
//! `read()` runs the guest until something needs the launcher, then returns one exit record:
//! a little-endian `u64` kind, a `u64` length, then that many bytes. Most of what a guest does
//! (hypercalls, page faults, interrupts) the host handles itself without the launcher ever
//! knowing; an exit is the rest.
//!
//! Death is sticky: once a guest is dead every further `read()` returns the same record, as in
//! lguest ("the Guest will never run again").

use super::hcall::CONSOLE_WRITE_MAX;

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
}

impl ExitKind {
    fn from_u64(kind: u64) -> Option<ExitKind> {
        [
            ExitKind::Console,
            ExitKind::PowerOff,
            ExitKind::Restart,
            ExitKind::Died,
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

#[cfg(test)]
mod tests {
    use super::*;

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
