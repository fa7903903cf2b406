// SPDX-License-Identifier: GPL-2.0
//! A guest's FPU, SSE and AVX registers, kept apart from everyone else's.
//!
//! Ring 1 may use every vector register the host has enabled, so between two runs a guest's
//! registers must be put away, and while it runs nobody else's may be in the registers: they
//! would be the guest's to read. `run_once` calls `kernel_fpu_begin` (which saves the launcher's
//! registers for it to get back on its return to user space), then `load`s the guest's, and
//! `save`s them again before `kernel_fpu_end`. The area is XSAVE's, sized by CPUID for the
//! features the host has enabled in XCR0, or FXSAVE's on a CPU without XSAVE.

use kernel::prelude::*;

/// XSAVE needs its area 64-byte aligned.
const ALIGN: usize = 64;
/// FXSAVE's area, the legacy part of XSAVE's.
const FXSAVE_BYTES: usize = 512;
/// Where MXCSR sits in the legacy area, and the value a fresh guest starts with (every
/// floating-point exception masked, as after a reset).
const MXCSR_OFFSET: usize = 24;
const MXCSR_DEFAULT: u32 = 0x1f80;

pub(crate) struct GuestFpu {
    area: KVec<u8>,
    /// Features to save and restore (XCR0), or `None` to use FXSAVE.
    xsave_mask: Option<u64>,
}

impl GuestFpu {
    /// A guest's registers in their initial state.
    pub(crate) fn new() -> Result<GuestFpu> {
        let xsave = core::arch::x86_64::__cpuid(1).ecx & (1 << 26) != 0
            // SAFETY: reading CR4 has no side effects.
            && unsafe { crate::lg_bindings::lg_read_cr4() } & (1 << 18) != 0;
        let (bytes, xsave_mask) = if xsave {
            // SAFETY: XSAVE is enabled (CR4.OSXSAVE), so xgetbv 0 is defined.
            let xcr0 = unsafe { core::arch::x86_64::_xgetbv(0) };
            // CPUID 0xd, sub-leaf 0, EBX: the area's size for the features enabled in XCR0.
            let size = core::arch::x86_64::__cpuid_count(0xd, 0).ebx as usize;
            (size, Some(xcr0))
        } else {
            (FXSAVE_BYTES, None)
        };
        let mut area = KVec::from_elem(0u8, bytes + ALIGN, GFP_KERNEL)?;
        // An all-zero XSAVE header (XSTATE_BV 0) restores every component to its initial state;
        // MXCSR is always taken from the legacy area, so it gets its reset value.
        let mxcsr = Self::aligned_offset(&area) + MXCSR_OFFSET;
        area[mxcsr..mxcsr + 4].copy_from_slice(&MXCSR_DEFAULT.to_le_bytes());
        Ok(GuestFpu { area, xsave_mask })
    }

    /// The features the guest's registers are kept with: the host's XCR0, which stays loaded
    /// while the guest runs (0 on a CPU without XSAVE).
    pub(crate) fn xcr0(&self) -> u64 {
        self.xsave_mask.unwrap_or(0)
    }

    fn aligned_offset(area: &KVec<u8>) -> usize {
        area.as_ptr().align_offset(ALIGN)
    }

    fn aligned_ptr(&mut self) -> *mut u8 {
        let offset = Self::aligned_offset(&self.area);
        // SAFETY: the area has ALIGN spare bytes, so the aligned start is inside it.
        unsafe { self.area.as_mut_ptr().add(offset) }
    }

    /// Put the guest's registers in the CPU. Between `kernel_fpu_begin` and `kernel_fpu_end`.
    pub(crate) fn load(&mut self) {
        let area = self.aligned_ptr();
        // SAFETY: `area` is 64-byte aligned and as large as CPUID says the enabled features
        // need; it holds what `save` stored (or the initial state), so xrstor cannot fault. The
        // FPU is ours: the caller is inside kernel_fpu_begin.
        unsafe {
            match self.xsave_mask {
                Some(mask) => core::arch::asm!("xrstor64 [{}]", in(reg) area,
                    in("eax") mask as u32, in("edx") (mask >> 32) as u32, options(nostack)),
                None => core::arch::asm!("fxrstor64 [{}]", in(reg) area, options(nostack)),
            }
        }
    }

    /// Take the guest's registers out of the CPU. Before `kernel_fpu_end`.
    pub(crate) fn save(&mut self) {
        let area = self.aligned_ptr();
        // SAFETY: As for `load`: an aligned area of the right size, inside kernel_fpu_begin.
        unsafe {
            match self.xsave_mask {
                Some(mask) => core::arch::asm!("xsave64 [{}]", in(reg) area,
                    in("eax") mask as u32, in("edx") (mask >> 32) as u32, options(nostack)),
                None => core::arch::asm!("fxsave64 [{}]", in(reg) area, options(nostack)),
            }
        }
    }
}
