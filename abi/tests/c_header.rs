//! The Linux guest's copy of the ABI agrees with this crate.
//!
//! The guest patch series (guest-patches/) adds `arch/x86/include/asm/lguest.h`: the hypercall
//! numbers, the selectors and the layout of `lguest_data`, in C, for the Linux guest. This test
//! reads that header out of the patch that adds it and checks every `#define` and every field
//! of `struct lguest_data` against the constants here. A number the header has and this test
//! does not know fails too: the header cannot grow a constant nobody checks.

use std::collections::BTreeMap;
use std::path::Path;

use lguest_abi::{boot, data, hcall};

const HEADER: &str = "arch/x86/include/asm/lguest.h";

/// The lines of `HEADER` as the patch that creates it adds them.
fn header_lines() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-patches");
    let mut lines = None;
    for entry in std::fs::read_dir(&dir).expect("guest-patches/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.extension() != Some(std::ffi::OsStr::new("patch")) {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("a patch is text");
        let mut inside = false;
        let mut found = Vec::new();
        for line in text.lines() {
            if let Some(name) = line.strip_prefix("+++ b/") {
                inside = name == HEADER;
            } else if line.starts_with("diff --git ") {
                inside = false;
            } else if inside {
                if let Some(added) = line.strip_prefix('+') {
                    found.push(added.to_owned());
                }
            }
        }
        if !found.is_empty() {
            assert!(lines.is_none(), "two patches add {HEADER}");
            lines = Some(found);
        }
    }
    lines.unwrap_or_else(|| panic!("no patch in {} adds {HEADER}", dir.display()))
}

/// `#define NAME VALUE` lines with a number for a value.
fn defines(lines: &[String]) -> BTreeMap<String, u64> {
    lines
        .iter()
        .filter_map(|line| {
            let mut words = line.strip_prefix("#define ")?.split_whitespace();
            let name = words.next()?;
            let value = words.next()?;
            let number = match value.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok()?,
                None => value.parse().ok()?,
            };
            Some((name.to_owned(), number))
        })
        .collect()
}

#[test]
fn every_define_matches_the_rust_constant() {
    let expected: BTreeMap<&str, u64> = [
        ("LGUEST_TRAP_ENTRY", u64::from(hcall::VECTOR)),
        ("LHCALL_FLUSH_ASYNC", hcall::FLUSH_ASYNC),
        ("LHCALL_LGUEST_INIT", hcall::LGUEST_INIT),
        ("LHCALL_SHUTDOWN", hcall::SHUTDOWN),
        ("LHCALL_NEW_PGTABLE", hcall::NEW_PGTABLE),
        ("LHCALL_FLUSH_TLB", hcall::FLUSH_TLB),
        ("LHCALL_LOAD_IDT_ENTRY", hcall::LOAD_IDT_ENTRY),
        ("LHCALL_SET_STACK", hcall::SET_STACK),
        ("LHCALL_SET_CLOCKEVENT", hcall::SET_CLOCKEVENT),
        ("LHCALL_HALT", hcall::HALT),
        ("LHCALL_SET_PTE", hcall::SET_PTE),
        ("LHCALL_LOAD_GDT_ENTRY", hcall::LOAD_GDT_ENTRY),
        ("LHCALL_SEND_INTERRUPTS", hcall::SEND_INTERRUPTS),
        ("LHCALL_CONSOLE_WRITE", hcall::CONSOLE_WRITE),
        ("LGUEST_SHUTDOWN_POWEROFF", hcall::SHUTDOWN_POWEROFF),
        ("LGUEST_SHUTDOWN_RESTART", hcall::SHUTDOWN_RESTART),
        ("LGUEST_SHUTDOWN_CRASH", hcall::SHUTDOWN_CRASH),
        ("LGUEST_NEW_PGTABLE_FLUSH", hcall::NEW_PGTABLE_FLUSH),
        ("LGUEST_CONSOLE_WRITE_MAX", hcall::CONSOLE_WRITE_MAX as u64),
        ("LGUEST_FIRST_IRQ_VECTOR", hcall::FIRST_IRQ_VECTOR),
        ("LGUEST_TIMER_IRQ", u64::from(hcall::TIMER_IRQ)),
        ("LGUEST_IRQS", u64::from(hcall::IRQS)),
        ("LGUEST_KERNEL_CS", boot::GUEST_KERNEL_CS),
        ("LGUEST_KERNEL_SS", boot::GUEST_KERNEL_SS),
        ("LGUEST_NOTE_TYPE_ENTRY", u64::from(boot::NOTE_TYPE_ENTRY)),
        ("LGUEST_DATA_IRQ_ENABLED", data::offset::IRQ_ENABLED),
        ("LGUEST_DATA_IRQ_PENDING", data::offset::IRQ_PENDING),
        ("LGUEST_DATA_CR2", data::offset::CR2),
        ("LGUEST_ASYNC_HCALLS", data::ASYNC_HCALLS as u64),
        ("LGUEST_HCALL_DONE", u64::from(data::HCALL_DONE)),
        ("LGUEST_HCALL_PENDING", u64::from(data::HCALL_PENDING)),
    ]
    .into_iter()
    .collect();
    let found = defines(&header_lines());
    for (name, value) in &found {
        match expected.get(name.as_str()) {
            Some(want) => assert_eq!(
                value, want,
                "{HEADER}: {name} is {value:#x}, lguest-abi says {want:#x}"
            ),
            None => panic!("{HEADER} defines {name}, which this test does not check"),
        }
    }
    for name in expected.keys() {
        assert!(found.contains_key(*name), "{HEADER} lacks {name}");
    }
}

/// The fields of `struct lguest_data`, in order, with their sizes in bytes.
fn lguest_data_fields(lines: &[String]) -> Vec<(String, u64)> {
    let start = lines
        .iter()
        .position(|l| l.starts_with("struct lguest_data {"))
        .expect("the header declares struct lguest_data");
    let mut fields = Vec::new();
    for line in &lines[start + 1..] {
        let line = line.trim();
        if line.starts_with("};") {
            return fields;
        }
        let Some(decl) = line.split(';').next().filter(|_| line.contains(';')) else {
            continue;
        };
        let mut words = decl.split_whitespace();
        let (kind, mut name) = match words.next() {
            Some("struct") => (
                format!("struct {}", words.next().expect("a struct's name")),
                words.next().expect("a field name"),
            ),
            Some(kind) => (kind.to_owned(), words.next().expect("a field name")),
            None => continue,
        };
        let mut count = 1;
        if let Some((base, len)) = name.split_once('[') {
            name = base;
            let len = len.trim_end_matches(']');
            count = match len {
                "LGUEST_ASYNC_HCALLS" => data::ASYNC_HCALLS as u64,
                other => other.parse().expect("an array length"),
            };
        }
        let size = match kind.as_str() {
            "u64" => 8,
            "u8" => 1,
            "struct lguest_async_hcall" => 48,
            other => panic!("struct lguest_data has a field of unknown type {other}"),
        };
        fields.push((name.to_owned(), size * count));
    }
    panic!("struct lguest_data never ends");
}

#[test]
fn lguest_data_has_the_rust_layout() {
    use data::offset;
    let expected = [
        ("switcher_window_start", offset::SWITCHER_WINDOW_START),
        ("switcher_window_end", offset::SWITCHER_WINDOW_END),
        ("irq_enabled", offset::IRQ_ENABLED),
        ("irq_pending", offset::IRQ_PENDING),
        ("blocked_interrupts", offset::BLOCKED_INTERRUPTS),
        ("cr2", offset::CR2),
        ("tsc_khz", offset::TSC_KHZ),
        ("noirq_iret_start", offset::NOIRQ_IRET_START),
        ("noirq_iret_end", offset::NOIRQ_IRET_END),
        ("syscall_vec", offset::SYSCALL_VEC),
        ("hcall_status", offset::HCALL_STATUS),
        ("hcalls", offset::HCALLS),
        ("wallclock_ns", offset::WALLCLOCK_NS),
        ("dr6", offset::DR6),
    ];
    let fields = lguest_data_fields(&header_lines());
    let mut at = 0;
    let mut laid_out = Vec::new();
    for (name, size) in &fields {
        laid_out.push((name.as_str(), at));
        at += size;
    }
    let expected: Vec<(&str, u64)> = expected.to_vec();
    assert_eq!(laid_out, expected, "struct lguest_data in {HEADER}");
    assert_eq!(
        at,
        data::LguestData::SIZE as u64,
        "sizeof(struct lguest_data)"
    );
}
