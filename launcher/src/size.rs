//! The MEM argument: how much RAM the guest gets, as a user types it (`64`, `64m`, `1g`,
//! `65536k`). A bare number is MiB, as in lguest's own launcher, QEMU's `-m` and Firecracker's
//! `mem_size_mib`: nobody means 64 bytes.
//!
//! The very first step of the launcher's journey, before anything is mapped: this file only
//! turns text into a byte count and refuses sizes the rest of the launcher (and lg.ko) would
//! refuse later with a less helpful message.

use anyhow::{bail, Context};
use lguest_abi::dev::MAX_GUEST_PAGES;
use lguest_abi::PAGE_SIZE;

/// Parses a guest memory size: a decimal number of MiB, or of KiB, MiB, GiB or TiB with a `k`,
/// `m`, `g` or `t` suffix (any case). The result is a non-zero multiple of the page size and at
/// most [`MAX_GUEST_PAGES`] pages.
pub fn parse_mem_size(text: &str) -> anyhow::Result<u64> {
    parse(text).with_context(|| format!("invalid memory size '{text}'"))
}

fn parse(text: &str) -> anyhow::Result<u64> {
    let (digits, shift) = match text.as_bytes().last().map(u8::to_ascii_lowercase) {
        Some(b'k') => (&text[..text.len() - 1], 10),
        Some(b'm') => (&text[..text.len() - 1], 20),
        Some(b'g') => (&text[..text.len() - 1], 30),
        Some(b't') => (&text[..text.len() - 1], 40),
        _ => (text, 20),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        bail!("expected MiB, or a number with a k, m, g or t suffix, like 64 or 1g");
    }
    let too_big = || {
        format!(
            "more than the {} one guest may have",
            format_size(max_bytes())
        )
    };
    // Only digits are left, so the one way parsing can fail is a number too large for u64.
    let number: u64 = digits.parse().ok().with_context(too_big)?;
    let bytes = number.checked_mul(1 << shift).with_context(too_big)?;
    if bytes == 0 {
        bail!("must be more than zero");
    }
    if !bytes.is_multiple_of(PAGE_SIZE) {
        bail!("must be a multiple of the {PAGE_SIZE}-byte page size");
    }
    if bytes > max_bytes() {
        bail!(too_big());
    }
    Ok(bytes)
}

/// A byte count the way a user would write it back: `64 MiB`, `1 GiB`, `12 KiB`, or bytes when
/// no unit divides it.
pub fn format_size(bytes: u64) -> String {
    match bytes {
        0 => "0 bytes".to_string(),
        b if b.is_multiple_of(1 << 30) => format!("{} GiB", b >> 30),
        b if b.is_multiple_of(1 << 20) => format!("{} MiB", b >> 20),
        b if b.is_multiple_of(1 << 10) => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

fn max_bytes() -> u64 {
    MAX_GUEST_PAGES * PAGE_SIZE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        format!("{:#}", parse_mem_size(text).unwrap_err())
    }

    #[test]
    fn a_bare_number_is_mib() {
        assert_eq!(parse_mem_size("64").unwrap(), 64 << 20);
        assert_eq!(parse_mem_size("1").unwrap(), 1 << 20);
        assert_eq!(parse_mem_size("65536").unwrap(), 64 << 30);
    }

    #[test]
    fn suffixes_are_powers_of_1024_in_any_case() {
        assert_eq!(parse_mem_size("64m").unwrap(), 64 << 20);
        assert_eq!(parse_mem_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_mem_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_mem_size("65536k").unwrap(), 64 << 20);
        assert_eq!(parse_mem_size("8K").unwrap(), 8192);
        assert_eq!(parse_mem_size("64g").unwrap(), MAX_GUEST_PAGES * PAGE_SIZE);
        assert_eq!(
            parse_mem_size("16T").unwrap_err().to_string(),
            "invalid memory size '16T'"
        );
    }

    #[test]
    fn sizes_print_in_the_largest_exact_unit() {
        assert_eq!(format_size(64 << 20), "64 MiB");
        assert_eq!(format_size(3 << 30), "3 GiB");
        assert_eq!(format_size(1536 << 20), "1536 MiB");
        assert_eq!(format_size(12 << 10), "12 KiB");
        assert_eq!(format_size(4097), "4097 bytes");
        assert_eq!(format_size(0), "0 bytes");
    }

    #[test]
    fn each_bad_size_has_its_own_message() {
        assert_eq!(err("0"), "invalid memory size '0': must be more than zero");
        assert_eq!(
            err("0m"),
            "invalid memory size '0m': must be more than zero"
        );
        assert_eq!(
            err("0t"),
            "invalid memory size '0t': must be more than zero"
        );
        for garbage in [
            "", "m", "abc", "64mb", "64b", "-1m", "1.5g", " 64m", "6 4m", "0x40",
        ] {
            assert!(
                err(garbage).ends_with("like 64 or 1g"),
                "{garbage:?}: {}",
                err(garbage)
            );
        }
        assert!(err("1k").ends_with("multiple of the 4096-byte page size"));
        assert!(err("4098k").ends_with("multiple of the 4096-byte page size"));
        assert!(err("65g").ends_with("more than the 64 GiB one guest may have"));
        assert!(err("65537").ends_with("more than the 64 GiB one guest may have"));
        assert!(err("1t").ends_with("more than the 64 GiB one guest may have"));
        assert!(err("18446744073709551616").ends_with("64 GiB one guest may have"));
        assert!(err("17592186044416").ends_with("64 GiB one guest may have"));
        assert!(err("17179869184g").ends_with("64 GiB one guest may have"));
    }
}
