//! Where the virtio devices are: the `virtio_mmio.device=` words of the command line.
//!
//! Each word is Linux's syntax, `<size>@<base>:<irq>`: natively QEMU's `microvm` machine
//! appends one per device it has (`virtio_mmio.device=512@0xfeb00e00:12`), under lguest the
//! launcher does (`virtio_mmio.device=4K@0x4000000:1`). The kernel believes a word only as far
//! as it can use it safely: at most a page of registers, an IRQ line it has a vector for, at
//! most [`MAX_DEVICES`] devices (guest/src/virtio/mod.rs then maps and probes them).

use core::fmt;
use core::ops::Range;

use lguest_abi::PAGE_SIZE;

use crate::cmdline::CommandLine;

/// The IRQs a device may raise: the PIC's lines but the timer's. Natively there are no others;
/// under lguest the launcher numbers its devices from 1.
pub const DEVICE_IRQS: Range<u32> = 1..16;

/// The most devices the kernel looks at (QEMU's `microvm` has eight transports).
pub const MAX_DEVICES: usize = 8;
/// The most registers a device may claim: one page is what any virtio device needs.
const MAX_REGISTERS: u64 = PAGE_SIZE;

/// Where a device's registers are, and its interrupt line: one `virtio_mmio.device=` word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub base: u64,
    pub size: u64,
    pub irq: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}, IRQ {}", self.base, self.irq)
    }
}

/// The devices a command line names.
pub struct Locations {
    list: [Location; MAX_DEVICES],
    len: usize,
}

impl Locations {
    pub fn iter(&self) -> impl Iterator<Item = &Location> {
        self.list[..self.len].iter()
    }
}

/// Every `virtio_mmio.device=` word of the command line, or the value of the first that is
/// not one the kernel can use (malformed, an IRQ outside [`DEVICE_IRQS`], more than a page of
/// registers, more than [`MAX_DEVICES`] devices).
pub fn locations(cmdline: &CommandLine) -> Result<Locations, &str> {
    let mut found = Locations {
        list: [Location {
            base: 0,
            size: 0,
            irq: 0,
        }; MAX_DEVICES],
        len: 0,
    };
    for value in cmdline.values("virtio_mmio.device") {
        let location = parse_location(value).ok_or(value)?;
        *found.list.get_mut(found.len).ok_or(value)? = location;
        found.len += 1;
    }
    Ok(found)
}

/// `<size>@<base>:<irq>`, as Linux's virtio_mmio reads it (less its optional `:<id>`): a size
/// with an optional K, M or G, a base address, an IRQ number in decimal.
fn parse_location(value: &str) -> Option<Location> {
    let (size, rest) = value.split_once('@')?;
    let (base, irq) = rest.split_once(':')?;
    let location = Location {
        base: parse_number(base)?,
        size: parse_size(size)?,
        irq: irq.parse().ok()?,
    };
    let fits = location.size > 0 && location.size <= MAX_REGISTERS;
    let addressable = location.base.checked_add(location.size).is_some();
    (fits && addressable && DEVICE_IRQS.contains(&location.irq)).then_some(location)
}

/// A number with an optional K, M or G after it (binary multiples): Linux's `memparse`.
fn parse_size(text: &str) -> Option<u64> {
    let (digits, shift) = match text.as_bytes().last()? {
        b'K' | b'k' => (&text[..text.len() - 1], 10),
        b'M' | b'm' => (&text[..text.len() - 1], 20),
        b'G' | b'g' => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    parse_number(digits)?.checked_mul(1 << shift)
}

/// A number in hexadecimal after `0x`, else in decimal.
fn parse_number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::format;
    use std::string::String;
    use std::vec::Vec;

    use super::*;

    fn found(text: &str) -> Result<Vec<Location>, String> {
        let cmdline = CommandLine::from_bytes(text.bytes());
        match locations(&cmdline) {
            Ok(list) => Ok(list.iter().copied().collect()),
            Err(word) => Err(String::from(word)),
        }
    }

    #[test]
    fn the_words_qemu_and_the_launcher_append() {
        let text = "bench virtio_mmio.device=512@0xfeb00e00:12 virtio_mmio.device=4K@0x4000000:1";
        assert_eq!(
            found(text),
            Ok(std::vec![
                Location {
                    base: 0xfeb0_0e00,
                    size: 512,
                    irq: 12
                },
                Location {
                    base: 0x400_0000,
                    size: 4096,
                    irq: 1
                },
            ])
        );
        assert_eq!(found("count"), Ok(Vec::new()));
    }

    #[test]
    fn sizes_and_bases_in_every_notation() {
        let location = |word| found(&format!("virtio_mmio.device={word}")).map(|l| l[0]);
        assert_eq!(
            location("4k@4096:3").map(|l| (l.size, l.base)),
            Ok((4096, 4096))
        );
        assert_eq!(
            location("0x200@0XABC000:3").map(|l| (l.size, l.base)),
            Ok((512, 0xabc000))
        );
    }

    #[test]
    fn a_malformed_word_is_named() {
        for word in [
            "4K0x1000:1",
            "4K@0x1000",
            "@0x1000:1",
            "4K@:1",
            "4K@0x1000:",
            "4Q@0x1000:1",
            "4K@0xfoo:1",
            "4K@0x1000:one",
            "K@0x1000:1",
        ] {
            assert_eq!(
                found(&format!("virtio_mmio.device={word}")),
                Err(String::from(word)),
                "{word}"
            );
        }
    }

    #[test]
    fn what_the_kernel_cannot_use_is_refused() {
        for word in [
            "0@0x1000:1",              // no registers
            "8K@0x1000:1",             // more than a page
            "1G@0x1000:1",             // far more
            "99999999999G@0x0:1",      // a size past 2^64
            "4K@0xfffffffffffff800:1", // registers past the top of the address space
            "4K@0x1000:0",             // the timer's line
            "4K@0x1000:16",            // no vector for it
        ] {
            assert_eq!(
                found(&format!("virtio_mmio.device={word}")),
                Err(String::from(word)),
                "{word}"
            );
        }
    }

    #[test]
    fn more_devices_than_the_kernel_looks_at_are_refused() {
        let word = |i: usize| format!("virtio_mmio.device=4K@{:#x}:{}", 0x1000 * (i + 1), i + 1);
        let eight: Vec<String> = (0..MAX_DEVICES).map(word).collect();
        assert_eq!(found(&eight.join(" ")).map(|l| l.len()), Ok(MAX_DEVICES));
        let nine: Vec<String> = (0..=MAX_DEVICES).map(word).collect();
        assert_eq!(found(&nine.join(" ")), Err(String::from("4K@0x9000:9")));
    }

    #[test]
    fn a_location_says_where_and_which_line() {
        let location = Location {
            base: 0xfeb0_0e00,
            size: 512,
            irq: 12,
        };
        assert_eq!(format!("{location}"), "0xfeb00e00, IRQ 12");
    }
}
