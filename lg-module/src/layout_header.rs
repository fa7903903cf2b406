//! The Switcher's numbers, written once: `switcher/layout.h`, rendered from the Rust constants.
//!
//! `switcher/switcher.S` is assembly and cannot read Rust, yet it must agree with the host on
//! every offset in the Switcher's pages (`layout.rs`), on the guest's selectors and on the words of
//! lguest_data it reads. Linux's own assembly meets the same problem with asm-offsets.h, a header
//! of `#define`s generated from the C that defines the structures; so does the Switcher here.
//! [`HEADER`] is the header's text, computed from the table [`LINES`] when this file is compiled;
//! `cargo run -p lg-module --bin switcher-layout` writes it to `switcher/layout.h`, which
//! switcher.S includes.
//!
//! The header is committed, so that a reader of switcher.S sees the numbers beside it. A committed
//! file can fall behind the constants, so it is checked where it is used: lg.ko does not compile
//! while `switcher/layout.h` differs from [`HEADER`] by a byte (the assertion at the end of this
//! file), and the unit tests fail (`./lguest-dev check`). Nothing is left to compare at insmod.

use crate::abi::boot::{GUEST_KERNEL_CS, GUEST_KERNEL_SS, GUEST_USER_CS};
use crate::descriptors::TSS_SELECTOR;
use crate::interrupts::ERROR_CODE_VECTORS;
use crate::layout::*;
use crate::traps;

/// One line of the header.
enum Line {
    /// A comment that heads a group of definitions.
    Heading(&'static str),
    /// `#define NAME value`, the value in decimal.
    Decimal(&'static str, u64),
    /// The same in hexadecimal, for bits and selectors.
    Hex(&'static str, u64),
}
use Line::{Decimal, Heading, Hex};

/// Everything switcher.S takes from Rust, in the header's order.
const LINES: &[Line] = &[
    Heading("A CPU's block of pages in the window (layout.rs)"),
    Decimal("PAGE", PAGE),
    Hex("BLOCK_DATA", BLOCK_DATA),
    Hex("BLOCK_REGS", BLOCK_REGS),
    Hex("BLOCK_STATE", BLOCK_STATE),
    Hex("BLOCK_HOST", BLOCK_HOST),
    Heading("The regs page: words at its bottom, the trap frame at its top"),
    Decimal("REGS_FS_BASE", REGS_FS_BASE),
    Decimal("REGS_GS_BASE", REGS_GS_BASE),
    Decimal("REGS_CR2", REGS_CR2),
    Decimal("REGS_SWITCHER_FAULT", REGS_SWITCHER_FAULT),
    Decimal("REGS_SELECTORS", REGS_SELECTORS),
    Decimal("REGS_FRAME", REGS_FRAME),
    Heading("Words of the frame, from its lowest address (FrameWord)"),
    Decimal("F_VECTOR", FrameWord::Vector as u64 * 8),
    Decimal("F_CS", FrameWord::Cs as u64 * 8),
    Heading("The state page, and the TSS's selector in its GDT (descriptors.rs)"),
    Decimal("STATE_GDT", STATE_GDT),
    Decimal("STATE_GDTR", STATE_GDTR),
    Decimal("STATE_IDTR", STATE_IDTR),
    Decimal("STATE_FAST_VECTOR", STATE_FAST_VECTOR),
    Decimal("STATE_FAST_HANDLER", STATE_FAST_HANDLER),
    Decimal("STATE_FAST_FRAME", STATE_FAST_FRAME),
    Decimal("STATE_FAST_CLEARS_IF", STATE_FAST_CLEARS_IF),
    Decimal("GDT_CPUNODE", GDT_CPUNODE),
    Hex("TSS_SELECTOR", TSS_SELECTOR as u64),
    Heading("The host page"),
    Decimal("HOST_RSP", HOST_RSP),
    Decimal("HOST_GDTR", HOST_GDTR),
    Decimal("HOST_IDTR", HOST_IDTR),
    Decimal("HOST_GDTR_RW", HOST_GDTR_RW),
    Decimal("HOST_FS_BASE", HOST_FS_BASE),
    Decimal("HOST_GS_BASE", HOST_GS_BASE),
    Decimal("HOST_KERNEL_GS_BASE", HOST_KERNEL_GS_BASE),
    Decimal("HOST_DS", HOST_DS),
    Decimal("HOST_ES", HOST_ES),
    Decimal("HOST_CR4", HOST_CR4),
    Decimal("HOST_GUEST_FS_BASE", HOST_GUEST_FS_BASE),
    Decimal("HOST_GUEST_GS_BASE", HOST_GUEST_GS_BASE),
    Decimal("HOST_GUEST_CR3", HOST_GUEST_CR3),
    Decimal("HOST_GUEST_CR4", HOST_GUEST_CR4),
    Decimal("HOST_GUEST_SELECTORS", HOST_GUEST_SELECTORS),
    Decimal("HOST_CPUNODE", HOST_CPUNODE),
    Decimal("HOST_GUEST_CPUNODE", HOST_GUEST_CPUNODE),
    Heading("The guest's lguest_data page, at BLOCK_DATA in its view (abi/src/data.rs)"),
    Decimal("DATA_IRQ_ENABLED", DATA_IRQ_ENABLED),
    Decimal("DATA_SYSCALL_VEC", DATA_SYSCALL_VEC),
    Heading("The guest kernel's selectors (ring 1), and 64-bit user mode's code selector"),
    Hex("GUEST_KERNEL_CS", GUEST_KERNEL_CS),
    Hex("GUEST_KERNEL_SS", GUEST_KERNEL_SS),
    Hex("GUEST_USER_CS", GUEST_USER_CS),
    Heading("MSR_TSC_AUX's bits for an NMI or machine check inside the Switcher"),
    Hex("AUX_NMI_PENDING", AUX_NMI_PENDING),
    Hex("AUX_MC_PENDING", AUX_MC_PENDING),
    Heading("Vectors (traps.rs), and the exceptions with an error code (interrupts.rs)"),
    Decimal("VECTOR_NMI", traps::NMI),
    Decimal("VECTOR_INVALID_OPCODE", traps::INVALID_OPCODE),
    Decimal("VECTOR_DOUBLE_FAULT", traps::DOUBLE_FAULT),
    Decimal("VECTOR_PAGE_FAULT", traps::PAGE_FAULT),
    Decimal("VECTOR_MACHINE_CHECK", traps::MACHINE_CHECK),
    Hex("ERROR_CODE_VECTORS", ERROR_CODE_VECTORS as u64),
];

/// What opens the header: its licence, where it comes from, and what to do after a change.
const PREAMBLE: &str = "\
/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The Switcher's numbers, generated from lg-module/src/layout.rs and the constants it names by
 * lg-module/src/layout_header.rs. Do not edit: after changing any of them, run
 *   cargo run -p lg-module --bin switcher-layout
 * lg.ko does not build while this file is out of date.
 */
#ifndef LG_SWITCHER_LAYOUT_H
#define LG_SWITCHER_LAYOUT_H
";

/// The column where every definition's value starts.
const VALUE_COLUMN: usize = 32;

/// Room for the header's text; rendering a longer one is a compile error.
const CAPACITY: usize = 8192;

/// Text built in a `const fn`, which has no allocator: a fixed buffer and how much of it is used.
pub struct Text {
    bytes: [u8; CAPACITY],
    len: usize,
}

impl Text {
    const fn new() -> Text {
        Text {
            bytes: [0; CAPACITY],
            len: 0,
        }
    }

    /// The text so far.
    pub const fn as_bytes(&self) -> &[u8] {
        self.bytes.split_at(self.len).0
    }

    // `const fn`s cannot take `&mut self` at lg.ko's oldest Rust (1.78), so each step consumes
    // the text and returns it longer.
    const fn byte(mut self, byte: u8) -> Text {
        assert!(self.len < CAPACITY, "switcher/layout.h outgrew CAPACITY");
        self.bytes[self.len] = byte;
        self.len += 1;
        self
    }

    const fn str(mut self, s: &str) -> Text {
        let s = s.as_bytes();
        let mut i = 0;
        while i < s.len() {
            self = self.byte(s[i]);
            i += 1;
        }
        self
    }

    const fn number(mut self, value: u64, hex: bool) -> Text {
        let radix = if hex { 16 } else { 10 };
        if hex {
            self = self.str("0x");
        }
        let mut digits = [0u8; 20];
        let (mut count, mut rest) = (0, value);
        loop {
            digits[count] = b"0123456789abcdef"[(rest % radix) as usize];
            count += 1;
            rest /= radix;
            if rest == 0 {
                break;
            }
        }
        while count > 0 {
            count -= 1;
            self = self.byte(digits[count]);
        }
        self
    }

    const fn define(mut self, name: &str, value: u64, hex: bool) -> Text {
        const DEFINE: &str = "#define ";
        self = self.str(DEFINE).str(name).byte(b' ');
        let mut column = DEFINE.len() + name.len() + 1;
        while column < VALUE_COLUMN {
            self = self.byte(b' ');
            column += 1;
        }
        self.number(value, hex).byte(b'\n')
    }
}

/// The header's text: [`PREAMBLE`], then each of [`LINES`], a blank line before each heading.
pub const HEADER: Text = {
    let mut text = Text::new().str(PREAMBLE);
    let mut i = 0;
    while i < LINES.len() {
        text = match LINES[i] {
            Heading(heading) => text.str("\n/* ").str(heading).str(" */\n"),
            Decimal(name, value) => text.define(name, value, false),
            Hex(name, value) => text.define(name, value, true),
        };
        i += 1;
    }
    text.str("\n#endif\n")
};

/// The header as committed, which switcher.S includes.
const COMMITTED: &[u8] = include_bytes!("../../switcher/layout.h");

/// Whether the committed header is exactly [`HEADER`].
pub const fn is_current() -> bool {
    let header = HEADER;
    let header = header.as_bytes();
    if COMMITTED.len() != header.len() {
        return false;
    }
    let mut i = 0;
    while i < header.len() {
        if COMMITTED[i] != header[i] {
            return false;
        }
        i += 1;
    }
    true
}

// In lg.ko, a stale header is a build error: the Switcher would read and write its words where
// the host does not look. The workspace crate only tests it (below), so that the generator,
// which is built from this crate, still builds to bring the header up to date.
#[cfg(MODULE)]
const _: () = assert!(
    is_current(),
    "switcher/layout.h is stale: run `cargo run -p lg-module --bin switcher-layout`"
);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::vec::Vec;

    const SWITCHER: &str = include_str!("../../switcher/switcher.S");

    fn names() -> impl Iterator<Item = &'static str> {
        LINES.iter().filter_map(|line| match line {
            Heading(_) => None,
            Decimal(name, _) | Hex(name, _) => Some(*name),
        })
    }

    #[test]
    fn the_committed_header_is_current() {
        assert!(
            is_current(),
            "switcher/layout.h is stale: run `cargo run -p lg-module --bin switcher-layout`"
        );
    }

    #[test]
    fn switcher_s_uses_every_definition_and_defines_none_of_them() {
        let words: HashSet<&str> = SWITCHER
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .collect();
        for name in names() {
            assert!(words.contains(name), "switcher.S never uses {name}");
            assert!(
                !SWITCHER.contains(&std::format!("#define {name}")),
                "switcher.S defines {name} itself"
            );
        }
        assert!(SWITCHER.contains("#include \"layout.h\""));
    }

    #[test]
    fn every_name_is_defined_once() {
        let names: Vec<&str> = names().collect();
        let unique: HashSet<&str> = names.iter().copied().collect();
        assert_eq!(unique.len(), names.len());
    }

    #[test]
    fn values_are_rendered_as_the_assembler_reads_them() {
        let text = Text::new()
            .define("A", 0, false)
            .define("LONGER_NAME", 0xc000, true);
        assert_eq!(
            core::str::from_utf8(text.as_bytes()).unwrap(),
            "#define A                       0\n#define LONGER_NAME             0xc000\n"
        );
    }
}
