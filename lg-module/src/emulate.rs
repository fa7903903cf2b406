//! The instruction at a trap's RIP: what the host makes of its bytes.
//!
//! Part of the way back from the guest. A #GP or #UD is sometimes not the guest's fault but an
//! instruction the host carries out on its behalf: an `int n` the real IDT refused (docs/traps.md),
//! or a `syscall` with EFER.SCE off. `exception` in run.rs fetches the bytes at RIP once, through the guest's page tables, and
//! every decision here is made on that one copy: the launcher shares guest memory and could
//! change a byte between two reads.
//!
//! Only exact encodings are recognised. What is not is the guest's #GP or #UD, as before.

/// The length of the `int n` at the start of `bytes` (`cd n`, or `cc` for n = 3), if that is
/// what is there. A software interrupt resumes after its instruction, and the error code of
/// the #GP it raised is no proof of what is at RIP.
pub fn int_length(bytes: &[u8], n: u64) -> Option<u64> {
    match bytes {
        [0xcd, v, ..] if u64::from(*v) == n => Some(2),
        [0xcc, ..] if n == 3 => Some(1),
        _ => None,
    }
}

/// Whether `bytes` start with `syscall` (`0f 05`).
pub fn is_syscall(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x0f, 0x05])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_and_syscall_are_recognised_by_their_bytes() {
        assert_eq!(int_length(&[0xcd, 0x80], 0x80), Some(2));
        assert_eq!(int_length(&[0xcd, 0x81], 0x80), None);
        assert_eq!(int_length(&[0xcc], 3), Some(1));
        assert_eq!(int_length(&[0xcc], 4), None);
        assert_eq!(int_length(&[0xcd], 0), None);
        assert!(is_syscall(&[0x0f, 0x05, 0x90]));
        assert!(!is_syscall(&[0x0f]));
    }
}
