//! The x86-64 descriptor tables the Switcher loads for a guest: GDT, TSS and IDT, as bytes.
//!
//! The guest never writes any of these: the host builds them once per CPU at module load, and
//! the guest sees them read-only. Every segment the guest can load has DPL >= 1 and its
//! accessed bit already set (the CPU would otherwise write it, and the page is read-only in the
//! guest: docs/hazards.md, hazard 8). The only DPL 0 code segment is the Switcher's, at
//! the selector the host kernel uses too (0x10), so the host's IDT stays valid while the
//! guest's GDT is loaded and the other way round.

use crate::abi::boot::{
    GUEST_GDT_ENTRIES, GUEST_KERNEL_CS, GUEST_KERNEL_SS, GUEST_USER32_CS, GUEST_USER_CS,
    GUEST_USER_SS,
};
use crate::abi::hcall;
use crate::layout::{IST_DOUBLE_FAULT, IST_MACHINE_CHECK, IST_NMI};

/// The Switcher's (and the host's) ring-0 code selector.
pub const SWITCHER_CS: u16 = 0x10;
/// The ring-0 data selector, at the host's `__KERNEL_DS`.
const SWITCHER_DS: u16 = 0x18;
/// The TSS selector, at the host's `GDT_ENTRY_TSS`.
pub const TSS_SELECTOR: u16 = 0x40;
/// Size of a 64-bit TSS; also its I/O map base, which puts the I/O bitmap beyond the limit:
/// no I/O port is ever allowed from ring 1 or 3.
pub const TSS_BYTES: usize = 104;

/// A 64-bit code segment of privilege `dpl`, accessed bit set.
const fn code64(dpl: u64) -> u64 {
    // G=1 L=1 limit 0xfffff; P=1 S=1 type 0xb (execute/read, accessed).
    0x00af_9b00_0000_ffff | (dpl << 45)
}

/// A 32-bit code segment of privilege `dpl` (compatibility mode), accessed bit set.
const fn code32(dpl: u64) -> u64 {
    // G=1 D=1 limit 0xfffff; P=1 S=1 type 0xb (execute/read, accessed).
    0x00cf_9b00_0000_ffff | (dpl << 45)
}

/// A writable data segment of privilege `dpl`, accessed bit set.
const fn data(dpl: u64) -> u64 {
    // G=1 D/B=1 limit 0xfffff; P=1 S=1 type 0x3 (read/write, accessed).
    0x00cf_9300_0000_ffff | (dpl << 45)
}

/// The guest GDT for a CPU whose TSS is at `tss` (its address in the window).
pub fn guest_gdt(tss: u64) -> [u64; GUEST_GDT_ENTRIES] {
    let mut gdt = [0u64; GUEST_GDT_ENTRIES];
    let entry = |selector: u64| (selector >> 3) as usize;
    gdt[entry(SWITCHER_CS as u64)] = code64(0);
    gdt[entry(SWITCHER_DS as u64)] = data(0);
    gdt[entry(GUEST_USER_SS)] = data(3);
    gdt[entry(GUEST_USER_CS)] = code64(3);
    gdt[entry(GUEST_USER32_CS)] = code32(3);
    gdt[entry(GUEST_KERNEL_CS)] = code64(1);
    gdt[entry(GUEST_KERNEL_SS)] = data(1);
    let [low, high] = tss_descriptor(tss);
    gdt[entry(TSS_SELECTOR as u64)] = low;
    gdt[entry(TSS_SELECTOR as u64) + 1] = high;
    gdt
}

/// Check and sanitise a TLS descriptor the guest gave LOAD_GDT_ENTRY for entry `index`
/// (hazard 2 in docs/hazards.md, Xen's check_descriptor in spirit): only code and data
/// segments, never a system descriptor or gate (which could lead into ring 0 or load a TSS);
/// no 64-bit (L) segment, which only the guest kernel's code segment may be; DPL 0 raised to 1,
/// so no guest segment is ever the host's privilege; the accessed bit set, as the GDT is
/// read-only to the guest and the CPU must never need to write it. A not-present descriptor
/// clears the entry.
pub fn tls_descriptor(index: u64, descriptor: u64) -> Result<u64, crate::death::Death> {
    use crate::death;
    if !crate::abi::boot::GUEST_TLS_ENTRIES.contains(&index) {
        return Err(death!(
            "LOAD_GDT_ENTRY for entry {index} (only the TLS entries 12-14)"
        ));
    }
    const PRESENT: u64 = 1 << 47;
    const CODE_OR_DATA: u64 = 1 << 44;
    const LONG: u64 = 1 << 53;
    const ACCESSED: u64 = 1 << 40;
    const DPL: u64 = 3 << 45;
    if descriptor & PRESENT == 0 {
        return Ok(0);
    }
    if descriptor & CODE_OR_DATA == 0 {
        return Err(death!(
            "LOAD_GDT_ENTRY {index}: a system descriptor or gate {descriptor:#x}"
        ));
    }
    if descriptor & LONG != 0 {
        return Err(death!(
            "LOAD_GDT_ENTRY {index}: a 64-bit segment {descriptor:#x}"
        ));
    }
    let raised = if descriptor & DPL == 0 {
        descriptor | 1 << 45
    } else {
        descriptor
    };
    Ok(raised | ACCESSED)
}

/// The guest's own CPU-number segment, GDT entry 15 while it runs, laid out as Linux lays out
/// its own (`setup_getcpu`): a read-only, accessed data segment of DPL 3 whose limit holds the
/// CPU's number and its node's (node << 12 | cpu), here CPU 0 of node 0, the one CPU a guest
/// has. A guest program's vDSO reads it with `lsl` for getcpu(); the host's own, with the host
/// CPU's number in it, is in the entry whenever a host handler may run (docs/world-switch.md).
pub const GUEST_CPUNODE: u64 = 0x0040_f500_0000_0000;

/// Whether a TLS descriptor (as [`tls_descriptor`] left it) may be user mode's SS: a present,
/// writable data segment of DPL 3, which is what `iretq` to ring 3 requires of SS. Linux lets a
/// program load one with `mov` (its selector, RPL 3, is the program's to choose), and a trap
/// from user mode then comes back to the host with it.
pub fn is_user_stack_segment(descriptor: u64) -> bool {
    const PRESENT: u64 = 1 << 47;
    const CODE_OR_DATA: u64 = 1 << 44;
    const EXECUTABLE: u64 = 1 << 43;
    const WRITABLE: u64 = 1 << 41;
    const DPL3: u64 = 3 << 45;
    descriptor & (PRESENT | CODE_OR_DATA | EXECUTABLE | WRITABLE | DPL3)
        == PRESENT | CODE_OR_DATA | WRITABLE | DPL3
}

/// `selector` if the Switcher may load it into DS, ES, FS or GS for the guest, with `gdt` (the
/// guest GDT as the CPU will find it) loaded; else the null selector. The Switcher runs at CPL
/// 0, where a load would succeed that the guest's own could not, and where a load that faults
/// kills the guest: so a selector must be null, or name a GDT entry (there is no LDT) that is a
/// present code or data segment, readable if code, accessed already (the GDT is read-only to the
/// CPU's write of that bit), of a DPL the guest kernel could have loaded it at, at least 1 and
/// at least its RPL. What the guest itself loaded passes; anything else (a descriptor the guest
/// changed since, a value it wrote into its regs page) becomes null, as a failed load in Linux's
/// `loadsegment` leaves it.
pub fn loadable_selector(selector: u16, gdt: &[u64; GUEST_GDT_ENTRIES]) -> u16 {
    const ACCESSED: u64 = 1 << 40;
    const READABLE: u64 = 1 << 41;
    const CODE: u64 = 1 << 43;
    const CODE_OR_DATA: u64 = 1 << 44;
    const PRESENT: u64 = 1 << 47;
    let index = (selector >> 3) as usize;
    let rpl = (selector & 3) as u64;
    if index == 0 && selector & 4 == 0 {
        return selector;
    }
    let loadable = selector & 4 == 0
        && gdt.get(index).is_some_and(|&d| {
            let dpl = (d >> 45) & 3;
            d & (PRESENT | CODE_OR_DATA | ACCESSED) == PRESENT | CODE_OR_DATA | ACCESSED
                && (d & CODE == 0 || d & READABLE != 0)
                && dpl >= rpl.max(1)
        });
    if loadable {
        selector
    } else {
        0
    }
}

/// The guest's DS, ES, FS and GS selectors and its FS and GS bases, as the Switcher loads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segments {
    pub selectors: [u16; 4],
    pub fs_base: u64,
    pub gs_base: u64,
}

/// `guest`'s segments as the Switcher will load them with `gdt`: each selector that still loads
/// ([`loadable_selector`]), and null for one that no longer does (its TLS descriptor changed
/// since the guest loaded it: on hardware the loaded segment would live on until reloaded, but
/// the Switcher must reload it), as Linux's own reload of it would leave it. An FS or GS nulled
/// so loses its base as well, as a null load clears it on Intel's CPUs (and QEMU's).
pub fn segments_to_load(guest: Segments, gdt: &[u64; GUEST_GDT_ENTRIES]) -> Segments {
    let selectors = guest.selectors.map(|s| loadable_selector(s, gdt));
    let base = |i: usize, base: u64| {
        if selectors[i] == guest.selectors[i] {
            base
        } else {
            0
        }
    };
    Segments {
        selectors,
        fs_base: base(2, guest.fs_base),
        gs_base: base(3, guest.gs_base),
    }
}

/// A 16-byte available 64-bit TSS descriptor for a TSS at `base`.
fn tss_descriptor(base: u64) -> [u64; 2] {
    let limit = TSS_BYTES as u64 - 1;
    let low = limit
        | (base & 0xff_ffff) << 16
        | 0x89 << 40 // P=1, DPL 0, type 9: available 64-bit TSS
        | ((base >> 24) & 0xff) << 56;
    [low, base >> 32]
}

/// Where RSP1 lies in the TSS: the stack a direct trap from ring 3 to the guest kernel (ring 1)
/// pushes its frame on. The host writes the guest's SET_STACK value there before each entry.
pub const TSS_RSP1: u64 = 12;

/// The guest TSS: `rsp0` is where traps from ring 1 and 3 push their frame (the top of the
/// regs page), `ist[n - 1]` the stack of IST n.
pub fn tss(rsp0: u64, ist: [u64; 7]) -> [u8; TSS_BYTES] {
    let mut tss = [0u8; TSS_BYTES];
    tss[4..12].copy_from_slice(&rsp0.to_le_bytes());
    for (n, top) in ist.iter().enumerate() {
        let at = 36 + n * 8;
        tss[at..at + 8].copy_from_slice(&top.to_le_bytes());
    }
    tss[102..104].copy_from_slice(&(TSS_BYTES as u16).to_le_bytes());
    tss
}

/// An interrupt gate to `handler`, entered at ring 0 (with interrupts off), usable by `int`
/// from rings <= `dpl`, on IST `ist` (0 for none).
fn interrupt_gate(handler: u64, dpl: u64, ist: u8) -> [u64; 2] {
    let low = (handler & 0xffff)
        | (SWITCHER_CS as u64) << 16
        | (ist as u64) << 32
        | (0x8e | dpl << 5) << 40 // P=1, type 0xe: 64-bit interrupt gate
        | ((handler >> 16) & 0xffff) << 48;
    [low, handler >> 32]
}

/// The IDT every CPU loads while a guest runs: gate `n` leads to `stubs + 16 * n`.
///
/// Every gate has DPL 0, so `int n` from the guest faults (#GP) instead of entering a stub as
/// if vector n had happened; the one exception is the hypercall vector, DPL 1, for the guest
/// kernel alone. NMI, double fault and machine check run on IST stacks, so that they have a
/// good stack at every instant of a switch.
pub fn guest_idt(stubs: u64) -> [[u64; 2]; 256] {
    core::array::from_fn(|vector| stub_gate(stubs, vector))
}

/// Gate `vector` of [`guest_idt`]: into its stub, 16 bytes per vector from `stubs`.
pub fn stub_gate(stubs: u64, vector: usize) -> [u64; 2] {
    let ist = match vector {
        2 => IST_NMI,
        8 => IST_DOUBLE_FAULT,
        18 => IST_MACHINE_CHECK,
        _ => 0,
    };
    let dpl = if vector == hcall::VECTOR as usize {
        1
    } else {
        0
    };
    interrupt_gate(stubs + 16 * vector as u64, dpl, ist)
}

/// Whether a host IDT gate (its low quadword) is a present gate user code may `int` through:
/// a system gate, like the host's `int $0x80` entry. Linux reserves the vector of every such
/// gate from its device-interrupt allocator (`system_vectors`), so no device interrupt ever
/// arrives there: the guest may have that vector while it runs.
pub fn is_user_system_gate(low: u64) -> bool {
    let access = (low >> 40) & 0xff;
    access & 0x80 != 0 && access >> 5 & 3 == 3 && matches!(access & 0xf, 0xe | 0xf)
}

/// The vector of a guest's direct trap: the system-call vector, `int $0x80`.
pub const DIRECT_TRAP_VECTOR: usize = 0x80;

/// The gate a direct trap takes: `int $0x80` from ring 3 straight into the guest kernel's
/// `handler` at ring 1, on TSS.RSP1, without leaving the guest.
///
/// A trap gate, never an interrupt gate: an interrupt gate would clear the real IF at ring 1,
/// and the real IF is the host's (chapter 5). DPL 3, so user code may `int` through it; the
/// guest's kernel code segment (DPL 1) is the target, so the CPU enters ring 1 and never ring 0.
pub fn direct_trap_gate(handler: u64) -> [u64; 2] {
    // The same encoding a guest gives LOAD_IDT_ENTRY: type 0xf (trap gate), DPL 3, no IST.
    hcall::idt_gate(handler, GUEST_KERNEL_CS & !3, 0xf, 3)
}

/// The 10-byte operand of `lgdt`/`lidt`, padded to 16 bytes: limit, then base.
pub fn pseudo_descriptor(base: u64, bytes: usize) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[0..2].copy_from_slice(&((bytes - 1) as u16).to_le_bytes());
    d[2..10].copy_from_slice(&base.to_le_bytes());
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dpl(descriptor: u64) -> u64 {
        (descriptor >> 45) & 3
    }

    #[test]
    fn segments_match_the_manual() {
        // Linux's own __KERNEL_CS and __KERNEL_DS descriptors, with the accessed bit set.
        assert_eq!(code64(0), 0x00af_9b00_0000_ffff);
        assert_eq!(data(0), 0x00cf_9300_0000_ffff);
        assert_eq!(code64(3), 0x00af_fb00_0000_ffff);
        // Linux's __USER32_CS.
        assert_eq!(code32(3), 0x00cf_fb00_0000_ffff);
    }

    #[test]
    fn the_guest_can_load_only_its_own_segments() {
        let gdt = guest_gdt(0xffff_8000_0000_6100);
        assert_eq!(dpl(gdt[(GUEST_KERNEL_CS >> 3) as usize]), 1);
        assert_eq!(dpl(gdt[(GUEST_KERNEL_SS >> 3) as usize]), 1);
        assert_eq!(dpl(gdt[(GUEST_USER_CS >> 3) as usize]), 3);
        assert_eq!(dpl(gdt[(GUEST_USER32_CS >> 3) as usize]), 3);
        for (i, d) in gdt.iter().enumerate() {
            let present = d & (1 << 47) != 0;
            let system = d & (1 << 44) == 0;
            if present && !system {
                assert!(d & (1 << 40) != 0, "entry {i}: accessed bit must be preset");
                if dpl(*d) == 0 {
                    assert!(
                        [2, 3].contains(&i),
                        "entry {i}: only the Switcher's segments are DPL 0"
                    );
                }
            }
        }
        // The selectors' RPLs match the DPLs.
        assert_eq!(GUEST_KERNEL_CS & 3, 1);
        assert_eq!(GUEST_USER_SS & 3, 3);
    }

    #[test]
    fn tss_descriptor_splits_its_base() {
        let gdt = guest_gdt(0xffff_8000_1234_5678);
        let [low, high] = [gdt[8], gdt[9]];
        assert_eq!(low & 0xffff, 103);
        assert_eq!((low >> 16) & 0xff_ffff, 0x34_5678);
        assert_eq!((low >> 56) & 0xff, 0x12);
        assert_eq!((low >> 40) & 0xff, 0x89);
        assert_eq!(high, 0xffff_8000);
    }

    #[test]
    fn tss_fields_are_where_the_cpu_reads_them() {
        let t = tss(
            0x1111,
            [0x2222, 0x3333, 0x4444, 0x5555, 0x6666, 0x7777, 0x8888],
        );
        assert_eq!(u64::from_le_bytes(t[4..12].try_into().unwrap()), 0x1111);
        assert_eq!(u64::from_le_bytes(t[36..44].try_into().unwrap()), 0x2222);
        assert_eq!(u64::from_le_bytes(t[84..92].try_into().unwrap()), 0x8888);
        assert_eq!(u16::from_le_bytes([t[102], t[103]]), 104, "no I/O bitmap");
    }

    #[test]
    fn tls_descriptors_are_sanitised_or_refused() {
        let data3 = data(3) & !(1 << 40) & !0xff_0000 | 0x34_0000; // base 0x34, accessed clear
        assert_eq!(
            tls_descriptor(12, data3),
            Ok(data3 | 1 << 40),
            "accessed bit set"
        );
        assert_eq!(
            dpl(tls_descriptor(13, data(0)).unwrap()),
            1,
            "DPL 0 raised to 1"
        );
        assert_eq!(tls_descriptor(14, 0), Ok(0), "not present: cleared");
        assert!(
            tls_descriptor(10, data(3)).is_err(),
            "the kernel's code segment"
        );
        assert!(
            tls_descriptor(15, data(3)).is_err(),
            "the host's CPU-number segment"
        );
        assert!(tls_descriptor(12, code64(3)).is_err(), "64-bit code");
        assert!(
            tls_descriptor(12, 0x0000_8900_0000_0067).is_err(),
            "a TSS descriptor"
        );
        assert!(
            tls_descriptor(12, 0x0000_ec00_0050_0000).is_err(),
            "a call gate"
        );
    }

    #[test]
    fn only_writable_user_data_is_a_user_stack_segment() {
        assert!(is_user_stack_segment(data(3)));
        let data16 = data(3) & !(1 << 54); // D/B clear: a 16-bit stack, as sigreturn's test makes
        assert!(is_user_stack_segment(data16));
        assert!(!is_user_stack_segment(data(1)), "DPL 1");
        assert!(!is_user_stack_segment(data(3) & !(1 << 41)), "read-only");
        assert!(!is_user_stack_segment(code32(3)), "code");
        assert!(!is_user_stack_segment(data(3) & !(1 << 47)), "not present");
        assert!(!is_user_stack_segment(0), "empty");
    }

    #[test]
    fn only_selectors_the_guest_could_load_are_loaded_for_it() {
        let mut gdt = guest_gdt(0xffff_8000_0000_6100);
        gdt[12] = tls_descriptor(12, data(3)).unwrap();
        gdt[13] = tls_descriptor(13, data(3) & !(1 << 47)).unwrap();
        for selector in [0, 3, 0x23, 0x2b, 0x33, 0x51, 0x59, 0x63] {
            assert_eq!(loadable_selector(selector, &gdt), selector, "{selector:#x}");
        }
        for (selector, why) in [
            (0x10, "the Switcher's code segment"),
            (0x18, "the host's data segment"),
            (0x40, "the TSS"),
            (0x2f, "an LDT selector"),
            (0x5b, "ring-1 data at RPL 3"),
            (0x6b, "an empty TLS entry"),
            (0x83, "past the GDT"),
        ] {
            assert_eq!(loadable_selector(selector, &gdt), 0, "{why}");
        }
        gdt[14] = tls_descriptor(14, data(3)).unwrap() & !(1 << 40);
        assert_eq!(
            loadable_selector(0x73, &gdt),
            0,
            "not accessed: the CPU would write the GDT"
        );
        gdt[14] = tls_descriptor(14, code32(3) & !(1 << 41)).unwrap();
        assert_eq!(loadable_selector(0x73, &gdt), 0, "execute-only code");
    }

    #[test]
    fn the_guests_cpu_number_segment_says_cpu_0() {
        assert_eq!(dpl(GUEST_CPUNODE), 3, "user code reads it");
        assert_eq!(
            GUEST_CPUNODE & 0xffff | (GUEST_CPUNODE >> 48 & 0xf) << 16,
            0,
            "limit 0"
        );
        assert_eq!(
            (GUEST_CPUNODE >> 40) & 0x9f,
            0x95,
            "present, read-only data, accessed"
        );
        let mut gdt = guest_gdt(0xffff_8000_0000_6100);
        gdt[15] = GUEST_CPUNODE;
        assert_eq!(loadable_selector(0x7b, &gdt), 0x7b);
    }

    #[test]
    fn a_segment_whose_descriptor_went_is_nulled_with_its_base() {
        let mut gdt = guest_gdt(0xffff_8000_0000_6100);
        gdt[12] = tls_descriptor(12, data(3)).unwrap();
        let guest = Segments {
            selectors: [0x2b, 0, 0x63, 0x6b],
            fs_base: 0x4000_5000,
            gs_base: 0x7000,
        };
        assert_eq!(
            segments_to_load(guest, &gdt),
            Segments {
                selectors: [0x2b, 0, 0x63, 0],
                fs_base: 0x4000_5000,
                gs_base: 0,
            },
            "GS named the empty entry 13"
        );
        let null = Segments {
            selectors: [0; 4],
            ..guest
        };
        assert_eq!(
            segments_to_load(null, &gdt),
            null,
            "bases with null selectors stay"
        );
    }

    #[test]
    fn only_the_hypercall_gate_is_open_to_the_guest() {
        let idt = guest_idt(0xffff_8000_0000_0800);
        for (vector, [low, high]) in idt.iter().enumerate() {
            let handler = (low & 0xffff) | ((low >> 48) & 0xffff) << 16 | high << 32;
            assert_eq!(handler, 0xffff_8000_0000_0800 + 16 * vector as u64);
            assert_eq!((low >> 16) & 0xffff, SWITCHER_CS as u64);
            let gate_dpl = (low >> 45) & 3;
            assert_eq!(
                gate_dpl,
                if vector == 0x1f { 1 } else { 0 },
                "vector {vector}"
            );
            assert_eq!((low >> 40) & 0x9f, 0x8e, "present interrupt gate");
        }
        assert_eq!((idt[2][0] >> 32) & 7, IST_NMI as u64);
        assert_eq!((idt[8][0] >> 32) & 7, IST_DOUBLE_FAULT as u64);
        assert_eq!((idt[14][0] >> 32) & 7, 0);
    }

    #[test]
    fn the_direct_trap_gate_enters_ring_1_with_interrupts_left_on() {
        let [low, high] = direct_trap_gate(0xffff_ffff_8123_4567);
        assert_eq!(low & 0xffff, 0x4567);
        assert_eq!(low >> 48, 0x8123);
        assert_eq!(high, 0xffff_ffff);
        assert_eq!(
            (low >> 16) & 0xffff,
            0x50,
            "the guest kernel's code segment"
        );
        assert_eq!((low >> 32) & 7, 0, "no IST");
        let access = (low >> 40) & 0xff;
        assert_eq!(access & 0x0f, 0xf, "a trap gate: IF stays as it was");
        assert_eq!(access >> 5 & 3, 3, "reachable from ring 3");
        assert_eq!(access & 0x80, 0x80, "present");
    }

    #[test]
    fn a_host_int80_gate_is_recognised_and_a_device_gate_is_not() {
        // Linux's int80 gate: present, DPL 3, interrupt gate.
        assert!(is_user_system_gate(0x8100_ee00_0010_0000));
        // A device interrupt's gate: DPL 0.
        assert!(!is_user_system_gate(0x8100_8e00_0010_0000));
        // Not present.
        assert!(!is_user_system_gate(0x8100_6e00_0010_0000));
        assert_eq!(stub_gate(0x1000, 0x80), guest_idt(0x1000)[0x80]);
    }
}
