//! `lguest_data`: the page a guest shares with the host.
//!
//! The guest registers one page of its RAM with the LGUEST_INIT hypercall; from then on both
//! sides read and write it instead of trapping for every little thing. For now the host only
//! tells the guest where the Switcher lives; the virtual interrupt flag, pending interrupts,
//! the clock and the asynchronous hypercall ring join it with the issues that need them.
//!
//! Fixed layout (`repr(C)`, little-endian, 8-byte fields): the guest may be built by another
//! compiler than the host.

/// The start of the Switcher window: PML4 slot 256, the "guard hole" Linux's x86-64 memory map
/// reserves for a hypervisor. The host maps the Switcher here in every guest page table.
pub const SWITCHER_WINDOW_START: u64 = 0xffff_8000_0000_0000;
/// The end of the Switcher window (exclusive): the whole of PML4 slot 256 (512 GiB) is the
/// host's. A guest page table that maps anything here is refused.
pub const SWITCHER_WINDOW_END: u64 = SWITCHER_WINDOW_START + (1 << 39);

/// The shared page. Fields marked *host* are written by the host at LGUEST_INIT.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LguestData {
    /// *host*: [`SWITCHER_WINDOW_START`], so a guest learns the window at run time.
    pub switcher_window_start: u64,
    /// *host*: [`SWITCHER_WINDOW_END`].
    pub switcher_window_end: u64,
}

impl LguestData {
    /// Its size in guest memory.
    pub const SIZE: usize = 16;

    /// The bytes the host writes into the guest's page.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut bytes = [0u8; Self::SIZE];
        bytes[0..8].copy_from_slice(&self.switcher_window_start.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.switcher_window_end.to_le_bytes());
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_exactly_pml4_slot_256() {
        assert_eq!((SWITCHER_WINDOW_START >> 39) & 0x1ff, 256);
        assert_eq!(((SWITCHER_WINDOW_END - 1) >> 39) & 0x1ff, 256);
        assert_eq!(core::mem::size_of::<LguestData>(), LguestData::SIZE);
    }
}
