//! How a guest is recognised and how it starts.
//!
//! A kernel built for lguest says so with an ELF note (name [`NOTE_NAME`], type
//! [`NOTE_TYPE_ENTRY`], an 8-byte little-endian guest-virtual entry address): the launcher
//! refuses a kernel without it, because a kernel that expects to be the machine's only master
//! would execute privileged instructions at its first step. This is Xen's approach
//! (`XEN_ELFNOTE_ENTRY`), and for the same reason: the bzImage's own entry assumes CPL 0.

/// The name of the lguest ELF note, as it appears in the note (NUL-terminated).
pub const NOTE_NAME: &[u8] = b"lguest\0";

/// Note type whose descriptor is the guest-virtual entry point (u64, little-endian).
pub const NOTE_TYPE_ENTRY: u32 = 1;

/// The lguest entry note as a guest image carries it: a whole ELF note (the sizes of name and
/// descriptor, the type, the name, the descriptor: the entry point), each part padded to 4
/// bytes. A guest puts one in a `.note` section its linker script gives a PT_NOTE header:
///
/// ```ignore
/// #[used]
/// #[link_section = ".note.lguest"]
/// static NOTE: EntryNote = EntryNote::new(_start);
/// ```
#[repr(C, packed(4))]
pub struct EntryNote {
    namesz: u32,
    descsz: u32,
    kind: u32,
    name: [u8; 8],
    entry: unsafe extern "C" fn() -> !,
}

impl EntryNote {
    /// The note naming `entry`, the guest's first instruction under lguest.
    pub const fn new(entry: unsafe extern "C" fn() -> !) -> EntryNote {
        // NOTE_NAME with its NUL, padded to the 8 bytes the note gives it.
        let mut name = [0u8; 8];
        let mut i = 0;
        while i < NOTE_NAME.len() {
            name[i] = NOTE_NAME[i];
            i += 1;
        }
        EntryNote {
            namesz: NOTE_NAME.len() as u32,
            descsz: 8,
            kind: NOTE_TYPE_ENTRY,
            name,
            entry,
        }
    }
}

/// `boot_params.hdr.hardware_subarch` for an lguest guest, as Linux's `X86_SUBARCH_LGUEST`.
pub const X86_SUBARCH_LGUEST: u32 = 1;

/// The guest's GDT, which the host owns and loads while the guest runs. Entries 2, 3 and 8 are
/// where the host kernel has its own code segment, data segment and TSS, so that host and
/// Switcher agree on those selectors at every instant of the world switch (docs/world-switch.md);
/// the guest's own segments sit elsewhere:
///
/// | entry | selector | what                                   |
/// |-------|----------|----------------------------------------|
/// | 2     | 0x10     | ring-0 code: the Switcher (host only)  |
/// | 3     | 0x18     | ring-0 data (host only)                |
/// | 4     | 0x23     | user 32-bit code, DPL 3                |
/// | 5     | 0x2b     | user data, DPL 3                       |
/// | 6     | 0x33     | user 64-bit code, DPL 3                |
/// | 8-9   | 0x40     | this CPU's TSS                         |
/// | 10    | 0x51     | guest kernel 64-bit code, DPL 1        |
/// | 11    | 0x59     | guest kernel data, DPL 1               |
/// | 12-14 | 0x63...  | the guest's TLS segments (LOAD_GDT_ENTRY) |
/// | 15    | 0x7b     | the CPU-number segment                 |
///
/// Entry 15 is `GDT_ENTRY_CPUNODE`, whose limit Linux reads with `lsl` for the CPU's number: the
/// guest's own (CPU 0) while the guest runs, for its vDSO's getcpu(), and the host's, copied for
/// the CPU the guest runs on, whenever a host handler may run under this GDT (Linux's NMI entry
/// finds its per-CPU data so): the Switcher swaps them while only its own stubs can run.
pub const GUEST_GDT_ENTRIES: usize = 16;

/// The GDT entries a guest may set (LOAD_GDT_ENTRY), as Linux's TLS entries 12-14.
pub const GUEST_TLS_ENTRIES: core::ops::RangeInclusive<u64> = 12..=14;

/// The host's CPU-number segment's GDT entry (Linux's `GDT_ENTRY_CPUNODE`).
pub const CPUNODE_GDT_ENTRY: usize = 15;

/// The guest kernel's code segment selector: GDT entry 10, RPL 1 (the guest kernel's CPL).
pub const GUEST_KERNEL_CS: u64 = (10 << 3) | 1;
/// The guest kernel's stack segment selector: GDT entry 11, RPL 1.
pub const GUEST_KERNEL_SS: u64 = (11 << 3) | 1;
/// Guest user space's code segment selector: GDT entry 6, RPL 3 (as Linux's `__USER_CS`).
pub const GUEST_USER_CS: u64 = (6 << 3) | 3;
/// Guest user space's stack and data segment selector: GDT entry 5, RPL 3 (`__USER_DS`).
pub const GUEST_USER_SS: u64 = (5 << 3) | 3;
/// Guest user space's 32-bit code segment selector: GDT entry 4, RPL 3 (`__USER32_CS`). Every
/// x86-64 Linux has it, compat user space or not, and programs far-jump to it (the kernel's own
/// sigreturn selftest does); ring 3 in compatibility mode can reach nothing of the host's.
pub const GUEST_USER32_CS: u64 = (4 << 3) | 3;

/// RFLAGS the guest starts with: the always-one bit 1 and IF. The real IF stays on while a
/// guest runs so the host's interrupts keep arriving; the guest's own "interrupts enabled"
/// state is virtual.
pub const GUEST_INITIAL_RFLAGS: u64 = 0x202;
