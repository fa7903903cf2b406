//! Privileged instructions a guest kernel may still execute: the host emulates them.
//!
//! A ring-1 kernel calls hypercalls instead of privileged instructions, but Linux executes a
//! few without any paravirt hook: it reads CR4 (`__read_cr4`), sets XCR0 (`xsetbv` in its FPU
//! set-up), and probes legacy ports (PIT, PIC, RTC, serial). At ring 1 each is #GP(0), and the
//! host, rather than reflecting that #GP, carries the instruction out (or a harmless stand-in
//! for it) and resumes the guest after it, as lguest did for port I/O. Only from the guest
//! *kernel* (CPL 1): from guest user mode they stay the #GP the CPU raised. Only these exact
//! encodings; anything else (a `mov` to or from another control register, `ins`/`outs`, an
//! encoding with other prefixes) is reflected as #GP as before, and kills a guest with no
//! #GP handler.
//!
//! | instruction | encoding | what the host does |
//! |-------------|----------|--------------------|
//! | `mov %cr4, %reg` | optional REX (B for r8-r15, not R), `0f 20`, ModRM with mod 3, reg 4 | the register = [`virtual_cr4`] of the host's CR4 |
//! | `xsetbv` | `0f 01 d1` | checks the value ([`xcr0_refusal`]); an accepted one changes nothing: the host's XCR0, a superset, stays loaded; a refused one kills the guest |
//! | `in` | optional `66`, then `e4 ib`, `e5 ib`, `ec` or `ed` | the destination ([`PORT_IN_VALUE`]: all ones) as hardware writes it: AL or AX keep the rest of RAX, EAX zero-extends |
//! | `out` | optional `66`, then `e6 ib`, `e7 ib`, `ee` or `ef` | nothing: no device is there |

/// CR4.PAE: physical address extension, always on in long mode.
pub const CR4_PAE: u64 = 1 << 5;
/// CR4.OSFXSR: the OS saves SSE state with FXSAVE; always on in an x86-64 Linux host.
pub const CR4_OSFXSR: u64 = 1 << 9;
/// CR4.OSXMMEXCPT: the OS handles SIMD floating-point exceptions; likewise.
pub const CR4_OSXMMEXCPT: u64 = 1 << 10;
/// CR4.FSGSBASE: `rdfsbase`, `wrfsbase`, `rdgsbase`, `wrgsbase` at any ring. lg.ko requires it:
/// a guest kernel sets its FS and GS bases with them.
pub const CR4_FSGSBASE: u64 = 1 << 16;
/// CR4.OSXSAVE: XSAVE and XCR0 are enabled (`xgetbv` works; CPUID shows OSXSAVE).
pub const CR4_OSXSAVE: u64 = 1 << 18;

/// The CR4 bits a guest kernel reads as the host has them: the ones in force while it runs that
/// Linux looks at. Everything else reads as 0, whatever the host runs with: PGE and SMAP are off
/// while a guest runs (docs/world-switch.md), and SMEP, UMIP, PKE and the rest are the host's
/// business, which a guest learns from CPUID where it needs to.
pub const VIRTUAL_CR4_MASK: u64 =
    CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT | CR4_FSGSBASE | CR4_OSXSAVE;

/// What `mov %cr4, %reg` gives a guest kernel on a host whose CR4 is `host_cr4`. On every host
/// lg.ko loads on, that is PAE, OSFXSR, OSXMMEXCPT and FSGSBASE (0x10620), with OSXSAVE
/// (0x50620) when the host has XSAVE on.
pub const fn virtual_cr4(host_cr4: u64) -> u64 {
    host_cr4 & VIRTUAL_CR4_MASK
}

/// XCR0's x87 bit, which must always be set.
pub const XCR0_X87: u64 = 1 << 0;
/// XCR0's SSE bit, which lguest-rs requires too (every x86-64 kernel uses SSE).
pub const XCR0_SSE: u64 = 1 << 1;

/// Why the host refuses an `xsetbv` of `value` to XCR `index` on a host whose XCR0 is
/// `host_xcr0`, or `None` if it accepts it. Accepted: XCR 0 (ECX = 0), a value with x87 and SSE
/// set and nothing the host has not enabled itself. The host keeps its own XCR0 loaded, which
/// then holds every feature the guest asked for, and saves the guest's registers with it; a
/// guest that reads XCR0 back (`xgetbv`, which ring 1 may execute) sees the host's.
pub const fn xcr0_refusal(index: u32, value: u64, host_xcr0: u64) -> Option<&'static str> {
    if index != 0 {
        Some("only XCR0 exists")
    } else if value & (XCR0_X87 | XCR0_SSE) != XCR0_X87 | XCR0_SSE {
        Some("XCR0 must have x87 and SSE (bits 0 and 1)")
    } else if value & !host_xcr0 != 0 {
        Some("XCR0 may only have features the host enabled")
    } else {
        None
    }
}

/// What an `in` reads from any port: all ones, as from a port no device answers on an ISA bus
/// (truncated to the instruction's width).
pub const PORT_IN_VALUE: u64 = u64::MAX;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_cr4_shows_only_what_linux_looks_at() {
        // A Linux host's CR4: PSE, PAE, MCE, PGE, PCE, OSFXSR, OSXMMEXCPT, UMIP, FSGSBASE,
        // PCIDE, OSXSAVE, SMEP, SMAP, PKE.
        let host = 0x770ff0;
        assert_eq!(virtual_cr4(host), 0x50620);
        assert_eq!(virtual_cr4(host & !CR4_OSXSAVE), 0x10620);
        assert_eq!(virtual_cr4(u64::MAX), VIRTUAL_CR4_MASK);
    }

    #[test]
    fn xcr0_must_be_a_subset_of_the_hosts_with_x87_and_sse() {
        let host = 0x2e7; // x87, SSE, AVX, AVX-512 (3 parts), PKRU
        assert_eq!(xcr0_refusal(0, host, host), None);
        assert_eq!(xcr0_refusal(0, 0x3, host), None);
        assert_eq!(xcr0_refusal(0, 0x7, host), None);
        assert!(xcr0_refusal(1, 0x3, host).is_some());
        assert!(xcr0_refusal(0, 0x1, host).is_some());
        assert!(xcr0_refusal(0, 0x6, host).is_some());
        assert!(xcr0_refusal(0, 0x3 | 1 << 17, host).is_some());
        assert!(xcr0_refusal(0, 0x3, 0).is_some());
    }
}
