//! The four kinds of address the host handles, each a type of its own.
//!
//! A page fault's handling holds four addresses at once: where the guest touched
//! ([`GuestVirt`]), the guest-physical page its tables name ([`GuestPhys`]), where the launcher
//! mapped that page ([`LauncherAddr`]), and the host page behind it ([`HostPhys`]), which goes
//! in the shadow entry. All four are u64s to the CPU, and one passed for another maps the wrong
//! page, silently. So where they meet, at the shadow tables (src/exit/mod.rs's `Shadow`,
//! lg-module/shadow_tables.rs), each has its own type, and crossing from one to another is
//! spelled out: `Guest::launcher_addr` for guest-physical to launcher, a pin for launcher to
//! host-physical. The arithmetic on guest memory inside exit handling keeps plain u64s, named
//! by what they are (`gpa`, `va`).

/// A guest-virtual address: what the guest's page tables translate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GuestVirt(pub u64);

/// A guest-physical address: an offset into guest RAM (or, past it, a device page).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GuestPhys(pub u64);

/// An address in the launcher's (user) address space, where it mapped guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LauncherAddr(pub u64);

/// A host-physical address: what a shadow page-table entry holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostPhys(pub u64);
