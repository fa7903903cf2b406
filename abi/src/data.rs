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
/// it says), fields marked *guest* by the guest; each side only reads the other's. (The struct
/// documents the layout; both sides access the fields one by one, at [`offset`].)
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    /// The asynchronous hypercall ring (lguest's lazy-MMU batching): *both*. The guest queues a
    /// call in slot i by filling `hcalls[i]` and then setting `hcall_status[i]` to
    /// [`HCALL_PENDING`]; the host carries out pending slots in ring order (from where it last
    /// stopped) before every synchronous hypercall, and marks each [`HCALL_DONE`]. FLUSH_ASYNC is
    /// the synchronous call that does nothing else. A queued call the host refuses kills the guest
    /// like a synchronous one.
    pub hcall_status: [u8; ASYNC_HCALLS],
    pub hcalls: [AsyncHcall; ASYNC_HCALLS],
    /// *host*: the wall-clock time at LGUEST_INIT, CLOCK_REALTIME in nanoseconds since the
    /// Unix epoch, written once: a guest takes it as the time at boot and keeps time from there
    /// with the TSC (`tsc_khz`), as Linux does with a `read_persistent_clock64`. Appended after
    /// the ring, so every older offset stays where it was.
    pub wallclock_ns: u64,
    /// *host*: the debug status (DR6) of the last debug exception (#DB) delivered to the guest,
    /// as the CPU left it: why it came (a single step, BS; an `icebp`, none of its bits), which
    /// ring 1 cannot read from DR6 itself. The guest may write it too, as it would clear DR6.
    pub dr6: u64,
}

/// One queued hypercall: the number and the five argument registers' values.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AsyncHcall {
    pub nr: u64,
    pub args: [u64; 5],
}

/// A zeroed page: the state the guest registers (an empty ring, interrupts off).
impl Default for LguestData {
    fn default() -> Self {
        LguestData {
            switcher_window_start: 0,
            switcher_window_end: 0,
            irq_enabled: 0,
            irq_pending: 0,
            blocked_interrupts: 0,
            cr2: 0,
            tsc_khz: 0,
            noirq_iret_start: 0,
            noirq_iret_end: 0,
            syscall_vec: 0,
            hcall_status: [HCALL_DONE; ASYNC_HCALLS],
            hcalls: [AsyncHcall {
                nr: 0,
                args: [0; 5],
            }; ASYNC_HCALLS],
            wallclock_ns: 0,
            dr6: 0,
        }
    }
}

/// Slots in the asynchronous ring.
pub const ASYNC_HCALLS: usize = 64;
/// `hcall_status` of a free slot (carried out, or never used): a zeroed page is an empty ring.
pub const HCALL_DONE: u8 = 0;
/// `hcall_status` of a slot the guest has filled and the host not yet carried out.
pub const HCALL_PENDING: u8 = 1;

/// `irq_enabled` when interrupts are on: the value of RFLAGS.IF, so a guest can store and test
/// its flags word either way.
pub const IRQ_ENABLED: u64 = 1 << 9;

/// Byte offsets of the fields the host reads or writes one at a time. At LGUEST_INIT the host
/// writes only its own fields, so a guest may fill in its own before or after.
pub mod offset {
    pub const SWITCHER_WINDOW_START: u64 = 0;
    pub const SWITCHER_WINDOW_END: u64 = 8;
    pub const IRQ_ENABLED: u64 = 16;
    pub const IRQ_PENDING: u64 = 24;
    pub const BLOCKED_INTERRUPTS: u64 = 32;
    pub const CR2: u64 = 40;
    pub const TSC_KHZ: u64 = 48;
    pub const NOIRQ_IRET_START: u64 = 56;
    pub const NOIRQ_IRET_END: u64 = 64;
    pub const SYSCALL_VEC: u64 = 72;
    pub const HCALL_STATUS: u64 = 80;
    pub const HCALLS: u64 = 144;
    pub const WALLCLOCK_NS: u64 = HCALLS + super::ASYNC_HCALLS as u64 * 48;
    pub const DR6: u64 = WALLCLOCK_NS + 8;
}

impl LguestData {
    /// Its size in guest memory: 3232 bytes, within the one page the guest registers.
    pub const SIZE: usize = offset::DR6 as usize + 8;
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
        use core::mem::offset_of;
        let at = |o: usize| o as u64;
        assert_eq!(
            at(offset_of!(LguestData, switcher_window_start)),
            offset::SWITCHER_WINDOW_START
        );
        assert_eq!(
            at(offset_of!(LguestData, switcher_window_end)),
            offset::SWITCHER_WINDOW_END
        );
        assert_eq!(at(offset_of!(LguestData, irq_enabled)), offset::IRQ_ENABLED);
        assert_eq!(at(offset_of!(LguestData, irq_pending)), offset::IRQ_PENDING);
        assert_eq!(
            at(offset_of!(LguestData, blocked_interrupts)),
            offset::BLOCKED_INTERRUPTS
        );
        assert_eq!(at(offset_of!(LguestData, cr2)), offset::CR2);
        assert_eq!(at(offset_of!(LguestData, tsc_khz)), offset::TSC_KHZ);
        assert_eq!(
            at(offset_of!(LguestData, noirq_iret_start)),
            offset::NOIRQ_IRET_START
        );
        assert_eq!(
            at(offset_of!(LguestData, noirq_iret_end)),
            offset::NOIRQ_IRET_END
        );
        assert_eq!(at(offset_of!(LguestData, syscall_vec)), offset::SYSCALL_VEC);
        assert_eq!(
            at(offset_of!(LguestData, hcall_status)),
            offset::HCALL_STATUS
        );
        assert_eq!(at(offset_of!(LguestData, hcalls)), offset::HCALLS);
        assert_eq!(
            at(offset_of!(LguestData, wallclock_ns)),
            offset::WALLCLOCK_NS
        );
        assert_eq!(at(offset_of!(LguestData, dr6)), offset::DR6);
        assert_eq!(offset::WALLCLOCK_NS, 3216);
        assert_eq!(core::mem::size_of::<AsyncHcall>(), 48);
        const _: () = assert!(LguestData::SIZE <= 4096, "one page");
    }
}
