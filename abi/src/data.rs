//! `lguest_data`: the page a guest shares with the host.
//!
//! The guest registers one page of its RAM with the LGUEST_INIT hypercall; from then on both
//! sides read and write it instead of trapping for every little thing. The most important
//! field is the guest's *virtual interrupt flag*: a ring-1 guest may not run `cli` or `sti`, so
//! "interrupts off" is a store of 0 to `irq_enabled`, and the host delivers an interrupt only
//! while it reads non-zero (lguest's way, and Xen's "event channel mask" idea).
//!
//! Fixed layout (`repr(C)`, little-endian, 8-byte fields): the guest may be built by another
//! compiler than the host.

/// The start of the Switcher window: PML4 slot 256, the "guard hole" Linux's x86-64 memory map
/// reserves for a hypervisor. The host maps the Switcher here in every guest page table.
pub const SWITCHER_WINDOW_START: u64 = 0xffff_8000_0000_0000;
/// The end of the Switcher window (exclusive): the whole of PML4 slot 256 (512 GiB) is the
/// host's. A guest page table that maps anything here is refused.
pub const SWITCHER_WINDOW_END: u64 = SWITCHER_WINDOW_START + (1 << 39);

/// The shared page. Fields marked *host* are written by the host (at LGUEST_INIT, or whenever
/// it says), fields marked *guest* by the guest; each side only reads the other's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LguestData {
    /// *host*: [`SWITCHER_WINDOW_START`], so a guest learns the window at run time.
    pub switcher_window_start: u64,
    /// *host*: [`SWITCHER_WINDOW_END`].
    pub switcher_window_end: u64,
    /// *guest*: the virtual interrupt flag: [`IRQ_ENABLED`] when interrupts may be delivered,
    /// 0 when not. Starts at 0. Delivering through an interrupt gate clears it, as the CPU
    /// clears IF.
    pub irq_enabled: u64,
    /// *host*: non-zero when an interrupt is waiting for `irq_enabled`. A guest that turns
    /// interrupts back on and finds it set makes the SEND_INTERRUPTS hypercall, so the interrupt
    /// comes now instead of at the next exit.
    pub irq_pending: u64,
    /// *guest*: bit n set masks IRQ n (it stays pending until unmasked).
    pub blocked_interrupts: u64,
    /// *host*: the faulting address of the last page fault delivered to the guest (its CR2,
    /// which ring 1 cannot read).
    pub cr2: u64,
    /// *host*: the TSC's frequency in kHz, for the guest's clock.
    pub tsc_khz: u64,
    /// *guest*: interrupts are never delivered while RIP is in
    /// `noirq_iret_start..noirq_iret_end`: the few instructions of the guest's return-from-trap
    /// path between restoring its virtual flag and its `iretq`, which must not be interrupted.
    pub noirq_iret_start: u64,
    pub noirq_iret_end: u64,
    /// *guest*: the vector a `syscall` instruction in guest user mode is delivered as (through
    /// the guest's gate for it, resuming after the instruction, with RCX and R11 set as SYSCALL
    /// sets them); 0 leaves `syscall` an invalid opcode (#UD).
    pub syscall_vec: u64,
}

/// `irq_enabled` when interrupts are on: the value of RFLAGS.IF, so a guest can store and test
/// its flags word either way.
pub const IRQ_ENABLED: u64 = 1 << 9;

/// Byte offsets of the fields the host reads or writes one at a time.
pub mod offset {
    pub const IRQ_ENABLED: u64 = 16;
    pub const IRQ_PENDING: u64 = 24;
    pub const BLOCKED_INTERRUPTS: u64 = 32;
    pub const CR2: u64 = 40;
    pub const TSC_KHZ: u64 = 48;
    pub const NOIRQ_IRET_START: u64 = 56;
    pub const NOIRQ_IRET_END: u64 = 64;
    pub const SYSCALL_VEC: u64 = 72;
}

impl LguestData {
    /// Its size in guest memory.
    pub const SIZE: usize = 80;

    /// The bytes the host writes into the guest's page at LGUEST_INIT.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let words = [
            self.switcher_window_start,
            self.switcher_window_end,
            self.irq_enabled,
            self.irq_pending,
            self.blocked_interrupts,
            self.cr2,
            self.tsc_khz,
            self.noirq_iret_start,
            self.noirq_iret_end,
            self.syscall_vec,
        ];
        let mut bytes = [0u8; Self::SIZE];
        for (chunk, word) in bytes.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
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

    #[test]
    fn offsets_match_the_struct() {
        let data = LguestData {
            irq_enabled: 1,
            irq_pending: 2,
            blocked_interrupts: 3,
            cr2: 4,
            noirq_iret_start: 5,
            noirq_iret_end: 6,
            tsc_khz: 7,
            syscall_vec: 8,
            ..Default::default()
        };
        let bytes = data.to_bytes();
        let at = |o: u64| u64::from_le_bytes(bytes[o as usize..o as usize + 8].try_into().unwrap());
        assert_eq!(at(offset::IRQ_ENABLED), 1);
        assert_eq!(at(offset::IRQ_PENDING), 2);
        assert_eq!(at(offset::BLOCKED_INTERRUPTS), 3);
        assert_eq!(at(offset::CR2), 4);
        assert_eq!(at(offset::TSC_KHZ), 7);
        assert_eq!(at(offset::NOIRQ_IRET_START), 5);
        assert_eq!(at(offset::NOIRQ_IRET_END), 6);
        assert_eq!(at(offset::SYSCALL_VEC), 8);
    }
}
