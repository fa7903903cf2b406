//! Hypercalls, decoded and checked: what a guest's `int $0x1f` asks for.
//!
//! The guest puts the call number in RAX and arguments in RBX, RCX, RDX, RSI, RDI (the ABI's
//! `hcall` module). Everything a guest passes is a guest value: guest-physical addresses are
//! checked against RAM (with overflow in mind) and lengths against their limits before the host
//! touches a byte. A call that fails a check kills the guest: a guest that passes wild pointers
//! is broken or hostile, and either way must not run on.

use crate::abi::hcall::{
    self, CONSOLE_WRITE_MAX, NEW_PGTABLE_FLUSH, SHUTDOWN_CRASH, SHUTDOWN_POWEROFF, SHUTDOWN_RESTART,
};
use crate::abi::regs::{Reg, Regs};
use crate::abi::PAGE_SIZE;
use crate::death;
use crate::death::Death;
use crate::descriptors::tls_descriptor;
use crate::interrupts::GuestGate;
use crate::traps::is_canonical;

/// How a guest stops (SHUTDOWN's RCX).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    PowerOff,
    Restart,
    /// The guest crashed: its message says why.
    Crash,
}

/// One decoded hypercall.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Hypercall {
    /// Register the lguest_data page at this guest-physical address.
    LguestInit {
        data_gpa: u64,
    },
    /// Stop: the message's guest-physical address and how.
    Shutdown {
        message_gpa: u64,
        how: Shutdown,
    },
    Halt,
    /// Print `len` bytes at guest-physical `gpa`.
    ConsoleWrite {
        gpa: u64,
        len: usize,
    },
    Nop,
    /// Install (or remove) the guest's handler for `vector`.
    LoadIdtEntry {
        vector: u64,
        gate: Option<GuestGate>,
    },
    /// The guest kernel's stack for traps from user mode.
    SetStack {
        top: u64,
    },
    /// Arm the timer `nanoseconds` from now; 0 disarms it.
    SetClockevent {
        nanoseconds: u64,
    },
    SendInterrupts,
    /// Switch to the page tables at guest-physical `cr3`, dropping any shadow of them first
    /// if `flush`.
    NewPgtable {
        cr3: u64,
        flush: bool,
    },
    /// Forget the shadow of the current page tables, or of all of them.
    FlushTlb {
        all: bool,
    },
    /// The mapping of the page at `va` changed.
    SetPte {
        va: u64,
    },
    /// Carry out the queued asynchronous calls (which every synchronous call does first).
    FlushAsync,
    /// Set TLS entry `index` to the sanitised `descriptor`.
    LoadGdtEntry {
        index: u64,
        descriptor: u64,
    },
}

impl Hypercall {
    /// Whether the guest may queue this call in the asynchronous ring. Not the calls whose
    /// point is their answer or that stop the guest (console output, shutdown, halt).
    pub fn may_be_queued(&self) -> bool {
        !matches!(
            self,
            Hypercall::LguestInit { .. }
                | Hypercall::Shutdown { .. }
                | Hypercall::Halt
                | Hypercall::ConsoleWrite { .. }
        )
    }
}

/// Whether `len` bytes at guest-physical `gpa` lie inside `ram_bytes` of RAM.
pub fn in_ram(gpa: u64, len: u64, ram_bytes: u64) -> bool {
    matches!(gpa.checked_add(len), Some(end) if end <= ram_bytes)
}

/// Decode the hypercall in `regs`. `initialized` says whether LGUEST_INIT has been made:
/// lguest's rule, kept here, is that it must come first, so the host always knows where the
/// shared page is.
pub fn decode(regs: &Regs, initialized: bool, ram_bytes: u64) -> Result<Hypercall, Death> {
    let number = regs.get(Reg::Rax);
    let (a1, a2) = (regs.get(Reg::Rbx), regs.get(Reg::Rcx));
    if !initialized && number != hcall::LGUEST_INIT {
        return Err(death!("hypercall {number} before LGUEST_INIT"));
    }
    let call = match number {
        hcall::LGUEST_INIT => {
            if initialized {
                return Err(death!("LGUEST_INIT made twice"));
            }
            if a1 % PAGE_SIZE != 0 || !in_ram(a1, PAGE_SIZE, ram_bytes) {
                return Err(death!("LGUEST_INIT with a bad lguest_data address {a1:#x}"));
            }
            Hypercall::LguestInit { data_gpa: a1 }
        }
        hcall::SHUTDOWN => {
            let how = match a2 {
                SHUTDOWN_POWEROFF => Shutdown::PowerOff,
                SHUTDOWN_RESTART => Shutdown::Restart,
                SHUTDOWN_CRASH => Shutdown::Crash,
                other => return Err(death!("SHUTDOWN with an unknown kind {other}")),
            };
            if a1 >= ram_bytes {
                return Err(death!("SHUTDOWN with a message outside RAM at {a1:#x}"));
            }
            Hypercall::Shutdown {
                message_gpa: a1,
                how,
            }
        }
        hcall::HALT => Hypercall::Halt,
        hcall::CONSOLE_WRITE => {
            if a2 > CONSOLE_WRITE_MAX as u64 {
                return Err(death!(
                    "CONSOLE_WRITE of {a2} bytes (at most {CONSOLE_WRITE_MAX})"
                ));
            }
            if !in_ram(a1, a2, ram_bytes) {
                return Err(death!(
                    "CONSOLE_WRITE from outside RAM: {a2} bytes at {a1:#x}"
                ));
            }
            Hypercall::ConsoleWrite {
                gpa: a1,
                len: a2 as usize,
            }
        }
        hcall::NOP => Hypercall::Nop,
        hcall::LOAD_IDT_ENTRY => Hypercall::LoadIdtEntry {
            vector: a1,
            gate: GuestGate::decode(a1, a2, regs.get(Reg::Rdx))?,
        },
        hcall::SET_STACK => {
            if !is_canonical(a1) {
                return Err(death!("SET_STACK with a non-canonical stack {a1:#x}"));
            }
            Hypercall::SetStack { top: a1 }
        }
        hcall::SET_CLOCKEVENT => Hypercall::SetClockevent { nanoseconds: a1 },
        hcall::SEND_INTERRUPTS => Hypercall::SendInterrupts,
        hcall::FLUSH_ASYNC => Hypercall::FlushAsync,
        hcall::LOAD_GDT_ENTRY => Hypercall::LoadGdtEntry {
            index: a1,
            descriptor: tls_descriptor(a1, a2)?,
        },
        hcall::NEW_PGTABLE => {
            if a1 % PAGE_SIZE != 0 || !in_ram(a1, PAGE_SIZE, ram_bytes) {
                return Err(death!("NEW_PGTABLE with page tables at {a1:#x}"));
            }
            if a2 & !NEW_PGTABLE_FLUSH != 0 {
                return Err(death!(
                    "NEW_PGTABLE with flags {a2:#x} (only NEW_PGTABLE_FLUSH, 1)"
                ));
            }
            Hypercall::NewPgtable {
                cr3: a1,
                flush: a2 == NEW_PGTABLE_FLUSH,
            }
        }
        hcall::FLUSH_TLB => match a1 {
            0 | 1 => Hypercall::FlushTlb { all: a1 == 1 },
            other => return Err(death!("FLUSH_TLB with {other} (0 or 1)")),
        },
        hcall::SET_PTE => {
            if !is_canonical(a1) {
                return Err(death!("SET_PTE for a non-canonical address {a1:#x}"));
            }
            Hypercall::SetPte { va: a1 }
        }
        other => return Err(death!("unknown hypercall {other}")),
    };
    Ok(call)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM: u64 = 64 << 20;

    fn call(number: u64, a1: u64, a2: u64) -> Regs {
        let mut regs = Regs::default();
        regs.set(Reg::Rax, number);
        regs.set(Reg::Rbx, a1);
        regs.set(Reg::Rcx, a2);
        regs
    }

    fn reason(r: Result<Hypercall, Death>) -> std::string::String {
        std::string::String::from_utf8(r.unwrap_err().as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn lguest_init_must_come_first_and_once() {
        let init = call(hcall::LGUEST_INIT, 0x5000, 0);
        assert_eq!(
            decode(&init, false, RAM),
            Ok(Hypercall::LguestInit { data_gpa: 0x5000 })
        );
        assert!(reason(decode(&init, true, RAM)).contains("twice"));
        assert!(reason(decode(&call(hcall::NOP, 0, 0), false, RAM)).contains("before LGUEST_INIT"));
        assert!(decode(&call(hcall::LGUEST_INIT, 0x5008, 0), false, RAM).is_err());
        assert!(decode(&call(hcall::LGUEST_INIT, RAM, 0), false, RAM).is_err());
    }

    #[test]
    fn console_write_is_bounded() {
        let ok = call(hcall::CONSOLE_WRITE, 0x1000, 18);
        assert_eq!(
            decode(&ok, true, RAM),
            Ok(Hypercall::ConsoleWrite {
                gpa: 0x1000,
                len: 18
            })
        );
        for (gpa, len) in [
            (1 << 40, 8),
            (0, u64::MAX),
            (u64::MAX - 3, 8),
            (RAM - 4, 8),
            (0, 1025),
        ] {
            assert!(
                decode(&call(hcall::CONSOLE_WRITE, gpa, len), true, RAM).is_err(),
                "{gpa:#x}+{len}"
            );
        }
        assert!(decode(&call(hcall::CONSOLE_WRITE, RAM - 8, 8), true, RAM).is_ok());
    }

    #[test]
    fn interrupt_calls_decode() {
        let stack = call(hcall::SET_STACK, 0xffff_8880_0000_1000, 0);
        assert_eq!(
            decode(&stack, true, RAM),
            Ok(Hypercall::SetStack {
                top: 0xffff_8880_0000_1000
            })
        );
        assert!(decode(&call(hcall::SET_STACK, 1 << 50, 0), true, RAM).is_err());
        let clock = call(hcall::SET_CLOCKEVENT, 1_000_000, 0);
        assert_eq!(
            decode(&clock, true, RAM),
            Ok(Hypercall::SetClockevent {
                nanoseconds: 1_000_000
            })
        );
        let remove = call(hcall::LOAD_IDT_ENTRY, 14, 0);
        assert_eq!(
            decode(&remove, true, RAM),
            Ok(Hypercall::LoadIdtEntry {
                vector: 14,
                gate: None
            })
        );
        let task_gate = call(hcall::LOAD_IDT_ENTRY, 14, 0x85 << 40);
        assert!(decode(&task_gate, true, RAM).is_err());
    }

    #[test]
    fn page_table_calls_are_checked() {
        let new = call(hcall::NEW_PGTABLE, 0x10_0000, 0);
        assert_eq!(
            decode(&new, true, RAM),
            Ok(Hypercall::NewPgtable {
                cr3: 0x10_0000,
                flush: false
            })
        );
        let flushed = call(hcall::NEW_PGTABLE, 0x10_0000, NEW_PGTABLE_FLUSH);
        assert_eq!(
            decode(&flushed, true, RAM),
            Ok(Hypercall::NewPgtable {
                cr3: 0x10_0000,
                flush: true
            })
        );
        for flags in [2, 3, 1 << 63] {
            let bad = call(hcall::NEW_PGTABLE, 0x10_0000, flags);
            assert!(
                reason(decode(&bad, true, RAM)).contains("flags"),
                "{flags:#x}"
            );
        }
        assert!(decode(&call(hcall::NEW_PGTABLE, 0x10_0008, 0), true, RAM).is_err());
        assert!(decode(&call(hcall::NEW_PGTABLE, RAM, 0), true, RAM).is_err());
        assert_eq!(
            decode(&call(hcall::FLUSH_TLB, 1, 0), true, RAM),
            Ok(Hypercall::FlushTlb { all: true })
        );
        assert!(decode(&call(hcall::FLUSH_TLB, 2, 0), true, RAM).is_err());
        assert!(decode(&call(hcall::SET_PTE, 1 << 60, 0), true, RAM).is_err());
    }

    #[test]
    fn only_quiet_calls_may_be_queued() {
        assert!(Hypercall::SetPte { va: 0 }.may_be_queued());
        assert!(Hypercall::FlushTlb { all: true }.may_be_queued());
        assert!(!Hypercall::Halt.may_be_queued());
        assert!(!Hypercall::ConsoleWrite { gpa: 0, len: 1 }.may_be_queued());
        assert_eq!(
            decode(&call(hcall::FLUSH_ASYNC, 0, 0), true, RAM),
            Ok(Hypercall::FlushAsync)
        );
    }

    #[test]
    fn shutdown_kinds_and_unknown_calls() {
        let off = call(hcall::SHUTDOWN, 0x100, SHUTDOWN_POWEROFF);
        assert_eq!(
            decode(&off, true, RAM),
            Ok(Hypercall::Shutdown {
                message_gpa: 0x100,
                how: Shutdown::PowerOff
            })
        );
        let crash = call(hcall::SHUTDOWN, 0x200, SHUTDOWN_CRASH);
        assert_eq!(
            decode(&crash, true, RAM),
            Ok(Hypercall::Shutdown {
                message_gpa: 0x200,
                how: Shutdown::Crash
            })
        );
        assert!(reason(decode(&call(hcall::SHUTDOWN, 0x100, 7), true, RAM)).contains("kind 7"));
        assert!(reason(decode(&call(999, 0, 0), true, RAM)).contains("unknown hypercall 999"));
    }
}
