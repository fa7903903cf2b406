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

/// `boot_params.hdr.hardware_subarch` for an lguest guest, as Linux's `X86_SUBARCH_LGUEST`.
pub const X86_SUBARCH_LGUEST: u32 = 1;

/// The guest kernel's code segment selector: GDT entry 2, as Linux's `__KERNEL_CS`, with
/// RPL 1 because the guest kernel runs at CPL 1.
pub const GUEST_KERNEL_CS: u64 = (2 << 3) | 1;

/// The guest kernel's stack segment selector: GDT entry 3 (`__KERNEL_DS`), RPL 1.
pub const GUEST_KERNEL_SS: u64 = (3 << 3) | 1;

/// RFLAGS the guest starts with: the always-one bit 1 and IF. The real IF stays on while a
/// guest runs so the host's interrupts keep arriving; the guest's own "interrupts enabled"
/// state is virtual.
pub const GUEST_INITIAL_RFLAGS: u64 = 0x202;
