//! Which hosts lg.ko runs guests on, judged by the host's CR4.
//!
//! The first step of the journey: before the module allocates a page, `Switcher::new` looks at
//! the CR4 Linux runs with and refuses to load (one line in the kernel log, insmod fails) on a
//! host it could not protect itself on or that lacks what its guests need. The other refusals
//! (PTI, memory encryption, LAM, no RDTSCP) need the kernel's view of the CPU and stay there.

use crate::abi::privileged::CR4_FSGSBASE;

const CR4_LA57: u64 = 1 << 12;
const CR4_CET: u64 = 1 << 23;
const CR4_FRED: u64 = 1 << 32;

/// Why lg.ko cannot run guests on a host whose CR4 is `cr4`, or `None` if it can: the end of
/// the sentence "cannot run guests on a host ...".
pub fn cr4_refusal(cr4: u64) -> Option<&'static str> {
    let refused = [
        (
            CR4_LA57,
            "with 5-level paging enabled (the Switcher window is PGD slot 256 of 4-level paging)",
        ),
        (
            CR4_CET,
            "with CET enabled (supervisor shadow stacks would bind ring 1 too)",
        ),
        (
            CR4_FRED,
            "with FRED enabled (the Switcher delivers traps through the IDT)",
        ),
    ];
    if let Some((_, why)) = refused.into_iter().find(|(bit, _)| cr4 & bit != 0) {
        return Some(why);
    }
    // A guest kernel sets its FS and GS bases with wrfsbase and wrgsbase at ring 1 (Linux does,
    // on every context switch), which are #UD without it. Linux turns it on wherever the CPU has
    // it, unless booted with nofsgsbase.
    if cr4 & CR4_FSGSBASE == 0 {
        return Some("without FSGSBASE enabled (its guests set their FS and GS bases with wrfsbase and wrgsbase; was it booted with nofsgsbase?)");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_need_fsgsbase_and_none_of_la57_cet_fred() {
        // PAE, PGE, OSFXSR, OSXMMEXCPT, FSGSBASE, OSXSAVE, SMEP, SMAP.
        let linux = 0x350_6a0;
        assert_eq!(cr4_refusal(linux), None);
        assert!(cr4_refusal(linux & !CR4_FSGSBASE)
            .unwrap()
            .contains("FSGSBASE"));
        for (bit, what) in [(CR4_LA57, "5-level"), (CR4_CET, "CET"), (CR4_FRED, "FRED")] {
            assert!(cr4_refusal(linux | bit).unwrap().contains(what), "{what}");
        }
    }
}
