//! Guest RAM, as the host reaches it.
//!
//! A guest's RAM is the launcher's own memory: the launcher mapped it at `base`, so
//! guest-physical `gpa` is the launcher's address `base + gpa`, and RAM ends at `ram_bytes`.
//! Every access the host makes goes through [`LauncherRam`], which refuses anything outside RAM
//! before it touches a byte, and then copies with the launcher's [`UserMemory`] (in lg.ko, the
//! kernel's fault-checked user copies: the launcher may unmap or protect its memory at any
//! time, and a copy that faults is refused, never a crash). INITIALIZE's checks walk the first
//! page tables through it (src/session.rs), and so does exit handling (src/exit/).

use crate::abi::dev::Refusal;
use crate::hypercall::in_ram;
use crate::pagewalk::GuestPhysRead;

/// The caller's own (user-space) memory, where the launcher mapped guest RAM.
pub trait UserMemory {
    /// Copy from user address `addr` into `out`; [`Refusal::Fault`] where it is not mapped.
    fn read(&self, addr: u64, out: &mut [u8]) -> Result<(), Refusal>;
    /// Copy `bytes` to user address `addr`; [`Refusal::Fault`] where it is not mapped writable.
    fn write(&self, addr: u64, bytes: &[u8]) -> Result<(), Refusal>;
}

/// Guest RAM, guest-physical 0 up to `ram_bytes`, as exit handling reads and writes it.
pub trait GuestRam {
    /// Bytes of guest RAM.
    fn ram_bytes(&self) -> u64;
    /// Read guest-physical `gpa..gpa + out.len()`; refused outside RAM or where the launcher's
    /// memory is gone.
    fn read(&self, gpa: u64, out: &mut [u8]) -> Result<(), Refusal>;
    /// Write guest-physical `gpa..gpa + bytes.len()`, refused as `read` is.
    fn write(&self, gpa: u64, bytes: &[u8]) -> Result<(), Refusal>;
}

/// Guest RAM through the launcher's mapping of it.
pub struct LauncherRam<'a, M> {
    pub user: &'a M,
    /// The launcher's address of guest-physical 0.
    pub base: u64,
    pub ram_bytes: u64,
}

impl<M: UserMemory> GuestRam for LauncherRam<'_, M> {
    fn ram_bytes(&self) -> u64 {
        self.ram_bytes
    }

    fn read(&self, gpa: u64, out: &mut [u8]) -> Result<(), Refusal> {
        if !in_ram(gpa, out.len() as u64, self.ram_bytes) {
            return Err(Refusal::OutsideRam);
        }
        self.user.read(self.base + gpa, out)
    }

    fn write(&self, gpa: u64, bytes: &[u8]) -> Result<(), Refusal> {
        if !in_ram(gpa, bytes.len() as u64, self.ram_bytes) {
            return Err(Refusal::OutsideRam);
        }
        self.user.write(self.base + gpa, bytes)
    }
}

/// Any guest RAM as the page-table walker (src/pagewalk.rs) reads it: a u64 at a time.
pub struct Phys<'a, R>(pub &'a R);

impl<R: GuestRam> GuestPhysRead for Phys<'_, R> {
    fn read_u64(&self, gpa: u64) -> Result<u64, Refusal> {
        let mut bytes = [0u8; 8];
        self.0.read(gpa, &mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::RefCell;
    use std::vec::Vec;

    /// A launcher whose memory is `bytes` at address 0x1000, and nothing else.
    struct FakeLauncher(RefCell<Vec<u8>>);

    impl UserMemory for FakeLauncher {
        fn read(&self, addr: u64, out: &mut [u8]) -> Result<(), Refusal> {
            let at = addr.checked_sub(0x1000).ok_or(Refusal::Fault)? as usize;
            let memory = self.0.borrow();
            out.copy_from_slice(memory.get(at..at + out.len()).ok_or(Refusal::Fault)?);
            Ok(())
        }
        fn write(&self, addr: u64, bytes: &[u8]) -> Result<(), Refusal> {
            let at = addr.checked_sub(0x1000).ok_or(Refusal::Fault)? as usize;
            let mut memory = self.0.borrow_mut();
            let to = memory.get_mut(at..at + bytes.len()).ok_or(Refusal::Fault)?;
            to.copy_from_slice(bytes);
            Ok(())
        }
    }

    #[test]
    fn guest_physical_is_the_launchers_base_plus_and_ends_with_ram() {
        // 64 bytes of the launcher's memory, of which the guest's RAM is the first 32.
        let launcher = FakeLauncher(RefCell::new((0..64).collect()));
        let ram = LauncherRam {
            user: &launcher,
            base: 0x1000,
            ram_bytes: 32,
        };
        assert_eq!(
            Phys(&ram).read_u64(8),
            Ok(u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]))
        );
        assert_eq!(ram.write(24, &[0xaa; 8]), Ok(()));
        assert_eq!(launcher.0.borrow()[24..32], [0xaa; 8]);
        let mut out = [0u8; 8];
        assert_eq!(
            ram.read(25, &mut out),
            Err(Refusal::OutsideRam),
            "ends past RAM"
        );
        assert_eq!(
            ram.write(32, &[1]),
            Err(Refusal::OutsideRam),
            "the launcher's, not RAM"
        );
        assert_eq!(
            ram.read(u64::MAX, &mut out),
            Err(Refusal::OutsideRam),
            "wraps"
        );
        assert_eq!(launcher.0.borrow()[32], 32, "nothing written outside RAM");
        let short = LauncherRam {
            user: &launcher,
            base: 0x1000 + 60,
            ram_bytes: 32,
        };
        assert_eq!(
            short.read(0, &mut out),
            Err(Refusal::Fault),
            "the launcher's is gone"
        );
    }
}
