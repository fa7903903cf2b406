//! The /dev/lguest ABI, request by request, as abi/src/dev.rs defines it: first INITIALIZE, the
//! request that makes a guest, and every way a write can be malformed (abi_regs.rs and
//! abi_owner.rs go on from there, once a guest exists).
//!
//! The launcher is one well-behaved client; the host must also survive every other one. So each
//! rule of the ABI gets a request that breaks exactly that rule, on a fresh file, and must be
//! answered with the errno [`Refusal`] gives it. Then, on the same file, a valid INITIALIZE must
//! still succeed: "a request that is refused changes nothing" is a promise about state, and this
//! is how a test can see state.

use std::num::NonZeroUsize;

use anyhow::Context;
use lguest_abi::dev::{Initialize, Refusal, Request, MAX_GUEST_PAGES};
use lguest_abi::paging::PTE_ADDR_MASK;
use lguest_abi::regs::Reg;
use lguest_abi::PAGE_SIZE;
use lguest_launcher::memory::{Bytes, GuestAddress};
use nix::errno::Errno;
use nix::sys::mman::{mmap_anonymous, munmap, MapFlags, ProtFlags};

use crate::check::Checks;
use crate::kmod;
use crate::lguest::{Lguest, TestGuest, ENTRY, INITIALIZE_LEN, RAM_BYTES};

/// The end of x86-64 user space with 4-level paging (TASK_SIZE_MAX): guest memory must lie
/// below it, or the host would be reading its own memory on the launcher's behalf.
const TASK_SIZE: u64 = 0x7fff_ffff_f000;
/// The highest page-aligned address: anything page-sized that starts here wraps around.
const LAST_PAGE: u64 = !(PAGE_SIZE - 1);

/// `abi-initialize`: one valid INITIALIZE per file, and every malformed one refused with its
/// own errno, leaving the file as it was.
pub fn initialize() -> anyhow::Result<()> {
    kmod::ensure_loaded()?;
    let guest = TestGuest::new()?;
    let valid = guest.valid();
    let mut c = Checks::new();

    let dev = Lguest::open()?;
    c.returned("valid INITIALIZE", dev.initialize(valid), INITIALIZE_LEN);
    c.refused(
        "second INITIALIZE",
        dev.initialize(valid),
        Refusal::AlreadyInitialized,
    );
    c.equal(
        "RIP after the refused second INITIALIZE",
        dev.get_reg(Reg::Rip),
        ENTRY,
    );
    drop(dev);

    for (what, bad, want) in bad_fields(valid) {
        let dev = Lguest::open()?;
        refused_and_unchanged(&mut c, what, dev.initialize(bad), want, &dev, valid);
    }
    entry_walks_out_of_ram(&mut c, &guest)?;
    unreadable_memory(&mut c, valid)?;
    for (what, bytes, want) in bad_framing(valid) {
        let dev = Lguest::open()?;
        refused_and_unchanged(&mut c, what, dev.write(&bytes), want, &dev, valid);
    }

    let dev = Lguest::open()?;
    let getreg = Request::GetReg {
        offset: Reg::Rip.offset(),
    };
    let setreg = Request::SetReg {
        offset: Reg::Rax.offset(),
        value: 1,
    };
    c.refused(
        "GETREG before INITIALIZE",
        dev.request(getreg),
        Refusal::NotInitialized,
    );
    c.refused(
        "SETREG before INITIALIZE",
        dev.request(setreg),
        Refusal::NotInitialized,
    );
    c.refused(
        "read before INITIALIZE",
        dev.read_len(8),
        Refusal::NotInitialized,
    );
    c.returned(
        "valid INITIALIZE after those",
        dev.initialize(valid),
        INITIALIZE_LEN,
    );
    c.equal("RAX after the refused SETREG", dev.get_reg(Reg::Rax), 0);
    c.finish()
}

/// Checks `got`, the answer to one bad request on `dev`, and then that the refusal changed
/// nothing: a valid INITIALIZE on the same file succeeds.
fn refused_and_unchanged(
    c: &mut Checks,
    what: &str,
    got: Result<usize, Errno>,
    want: Refusal,
    dev: &Lguest,
    valid: Initialize,
) {
    c.refused(what, got, want);
    let again = dev.initialize(valid);
    c.returned(
        &format!("valid INITIALIZE after '{what}'"),
        again,
        INITIALIZE_LEN,
    );
}

/// INITIALIZEs that each break one rule about their fields, and the errno for it.
fn bad_fields(v: Initialize) -> Vec<(&'static str, Initialize, Refusal)> {
    use Refusal::{Misaligned, OutsideRam, Overflow};
    let size = v.device_limit * PAGE_SIZE;
    vec![
        (
            "base not page-aligned",
            Initialize {
                base: v.base + 8,
                ..v
            },
            Misaligned,
        ),
        ("pfn_limit 0", Initialize { pfn_limit: 0, ..v }, Misaligned),
        (
            "cr3 not page-aligned",
            Initialize {
                cr3: v.cr3 + 8,
                ..v
            },
            Misaligned,
        ),
        (
            "boot_params not page-aligned",
            Initialize {
                boot_params: v.boot_params + 8,
                ..v
            },
            Misaligned,
        ),
        // device_limit * 4096 is exactly 2^64: a host computing the end with wrapping
        // arithmetic would see a zero-sized guest ending at base, and accept it.
        (
            "device_limit 2^52 (size wraps to 0)",
            Initialize {
                device_limit: 1 << 52,
                ..v
            },
            Overflow,
        ),
        (
            "base + size wraps past 2^64",
            Initialize {
                base: LAST_PAGE,
                ..v
            },
            Overflow,
        ),
        (
            "memory ends one page beyond user space",
            Initialize {
                base: TASK_SIZE - size + PAGE_SIZE,
                ..v
            },
            Overflow,
        ),
        // The kernel's direct map: a host that only checked for wrap-around would read its
        // own memory as the guest's.
        (
            "base in kernel space",
            Initialize {
                base: 0xffff_8880_0000_0000,
                ..v
            },
            Overflow,
        ),
        (
            "device_limit < pfn_limit",
            Initialize {
                device_limit: v.pfn_limit - 1,
                ..v
            },
            Overflow,
        ),
        (
            "pfn_limit > MAX_GUEST_PAGES",
            Initialize {
                pfn_limit: MAX_GUEST_PAGES + 1,
                device_limit: MAX_GUEST_PAGES + 1,
                ..v
            },
            Overflow,
        ),
        (
            "device_limit > MAX_GUEST_PAGES",
            Initialize {
                device_limit: MAX_GUEST_PAGES + 1,
                ..v
            },
            Overflow,
        ),
        (
            "entry unmapped",
            Initialize {
                start_ip: 0x4000_0000_0000,
                ..v
            },
            OutsideRam,
        ),
        (
            "entry just past RAM",
            Initialize {
                start_ip: RAM_BYTES,
                ..v
            },
            OutsideRam,
        ),
        // Bits 39..47 of this address are zero, so a walker that ignores the upper bits finds
        // the identity map; but it is not canonical, and the guest could never run there.
        (
            "entry non-canonical (aliases RAM)",
            Initialize {
                start_ip: (1 << 48) | ENTRY,
                ..v
            },
            OutsideRam,
        ),
        // The Switcher's window: mapped into every guest by the host, but not by these tables.
        (
            "entry in the Switcher window",
            Initialize {
                start_ip: 0xffff_8000_0000_0000,
                ..v
            },
            OutsideRam,
        ),
        // The first device page: inside guest memory, but not RAM.
        (
            "cr3 in a device page",
            Initialize {
                cr3: RAM_BYTES,
                ..v
            },
            OutsideRam,
        ),
        (
            "cr3 far outside RAM",
            Initialize { cr3: 1 << 40, ..v },
            OutsideRam,
        ),
        (
            "cr3 in the last page of 2^64",
            Initialize {
                cr3: LAST_PAGE,
                ..v
            },
            OutsideRam,
        ),
        (
            "boot_params in a device page",
            Initialize {
                boot_params: RAM_BYTES,
                ..v
            },
            OutsideRam,
        ),
        (
            "boot_params in the last page of 2^64",
            Initialize {
                boot_params: LAST_PAGE,
                ..v
            },
            OutsideRam,
        ),
    ]
}

/// Page tables that lead the entry point out of RAM, each made by redirecting one entry of the
/// launcher's tables (and put back after): the host must check where the walk goes at every
/// step, not just that it ends somewhere.
fn entry_walks_out_of_ram(c: &mut Checks, guest: &TestGuest) -> anyhow::Result<()> {
    // The second 2 MiB page of the identity map.
    const VA: u64 = 0x20_0000;
    let valid = guest.valid();
    let cases = [
        // A leaf that maps a device page: inside guest memory, but not RAM.
        (
            "entry mapped to a device page",
            guest.pde_address(VA)?,
            RAM_BYTES,
            VA,
        ),
        // PML4[0] sending the walk to a "page directory pointer table" 1 TiB up: a host that
        // followed it would read launcher memory that is not the guest's.
        ("page table outside RAM", valid.cr3, 1 << 40, ENTRY),
    ];
    for (what, slot, target, start_ip) in cases {
        let dev = Lguest::open()?;
        let slot = GuestAddress(slot);
        let original: u64 = guest.memory().read_obj(slot)?;
        // Keep the entry's flags (present, writable, huge for the leaf); change its address.
        guest
            .memory()
            .write_obj(target | (original & !PTE_ADDR_MASK), slot)?;
        let outcome = dev.initialize(Initialize { start_ip, ..valid });
        guest.memory().write_obj(original, slot)?;
        refused_and_unchanged(c, what, outcome, Refusal::OutsideRam, &dev, valid);
    }
    Ok(())
}

/// `base` pointing at memory the launcher cannot read: a PROT_NONE reservation, then the same
/// range with nothing mapped at all.
fn unreadable_memory(c: &mut Checks, valid: Initialize) -> anyhow::Result<()> {
    let len = NonZeroUsize::new(usize::try_from(valid.device_limit * PAGE_SIZE)?)
        .context("empty guest")?;
    // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing cannot overlap
    // anything we own; it is only ever handed to the host as an address, never dereferenced.
    let hole = unsafe {
        mmap_anonymous(
            None,
            len,
            ProtFlags::PROT_NONE,
            MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE,
        )
    }?;
    let bad = Initialize {
        base: hole.as_ptr() as u64,
        ..valid
    };

    let dev = Lguest::open()?;
    let what = "base at PROT_NONE memory";
    refused_and_unchanged(c, what, dev.initialize(bad), Refusal::Fault, &dev, valid);

    let dev = Lguest::open()?;
    // SAFETY: `hole` is the mapping created above, of `len` bytes, and nothing refers to it.
    unsafe { munmap(hole, len.get()) }?;
    // Nothing runs between the munmap and this write that could map something there again.
    let got = dev.initialize(bad);
    refused_and_unchanged(
        c,
        "base at unmapped memory",
        got,
        Refusal::Fault,
        &dev,
        valid,
    );
    Ok(())
}

/// Writes whose framing is wrong: too short, too long, or a request code nobody knows.
fn bad_framing(valid: Initialize) -> Vec<(&'static str, Vec<u8>, Refusal)> {
    let init = Request::Initialize(valid).encode().as_bytes().to_vec();
    let with_code = |code: u64| [&code.to_le_bytes()[..], &init[8..]].concat();
    let padded = |len: usize| {
        let mut bytes = init.clone();
        bytes.resize(len, 0);
        bytes
    };
    vec![
        ("empty write", Vec::new(), Refusal::ShortWrite),
        ("7-byte write", init[..7].to_vec(), Refusal::ShortWrite),
        (
            "55-byte INITIALIZE",
            init[..55].to_vec(),
            Refusal::ShortWrite,
        ),
        ("64-byte INITIALIZE", padded(64), Refusal::LongWrite),
        // The host must refuse a large write without copying it all in.
        ("one-page INITIALIZE", padded(4096), Refusal::LongWrite),
        (
            "request code 3",
            3u64.to_le_bytes().to_vec(),
            Refusal::UnknownRequest,
        ),
        (
            "request code 0xdead",
            with_code(0xdead),
            Refusal::UnknownRequest,
        ),
        (
            "request code u64::MAX",
            with_code(u64::MAX),
            Refusal::UnknownRequest,
        ),
        // Its low 32 bits are INITIALIZE's code: a host reading the code as u32 would obey.
        (
            "request code 2^32",
            with_code(1 << 32),
            Refusal::UnknownRequest,
        ),
    ]
}
