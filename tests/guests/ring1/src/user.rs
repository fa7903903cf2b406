//! Ring 3: the guest's own page tables, a user program, and its system calls.
//!
//! Scenario `user`: the guest switches to tables of its own (NEW_PGTABLE) in which one 2 MiB page
//! is open to ring 3, copies a small program there and `iretq`s to it. The program's calls reach
//! the guest kernel's handlers (traps.rs) on the stack it gave SET_STACK: `int $0x80`, the direct
//! trap, and `syscall`, a #UD that the Switcher's fast path or the host turns into a call through
//! `lguest_data.syscall_vec` (docs/traps.md). The calls are chosen to meet each case of the fast
//! path:
//!
//! 1. `int $0x80`;
//! 2. a `syscall` right after syscall_vec was set without a hypercall: the host did not know the
//!    vector before this trip, so it cannot have armed the fast path;
//! 3. a `syscall` after that exit: armed, unless the launcher said `--no-fast-paths`;
//! 4. a `syscall` whose handler moves syscall_vec to 0x81 behind the host's back;
//! 5. a `syscall` that must now arrive through 0x81 (the Switcher reads the vector at the trap);
//!    its handler moves it back, and makes a hypercall so that the next trip is armed again;
//! 6. where the CPU has protection keys, a `syscall` made with every access to key 0 denied
//!    (PKRU 3), which the Switcher must read the instruction through, and which must arrive with
//!    PKRU as the program left it;
//! 7. the exit call, `int $0x80` with RAX 60.
//!
//! Each call is checked in `call` as SYSCALL would leave it (RCX the return address, R11 the
//! flags); the run passes if every one arrived, in order, through its vector.

use core::arch::global_asm;
use core::ptr;
use core::sync::atomic::{AtomicU64, Ordering};

use lguest_abi::boot::{GUEST_KERNEL_CS, GUEST_KERNEL_SS, GUEST_USER_CS, GUEST_USER_SS};
use lguest_abi::data::offset;
use lguest_abi::hcall::{NEW_PGTABLE, NOP, SET_STACK};

use crate::hcall::{data_word, hcall, poweroff};
use crate::page_tables::{HUGE, HUGE_PAGE, P, PD, PDPT, PML4, U, W};
use crate::println;
use crate::traps::{install, TrapState};

const USER_REGION: u64 = 0x60_0000;
const USER_STACK_TOP: u64 = 0x70_0000;

/// The kernel stack for traps from ring 3 (SET_STACK).
#[repr(C, align(16))]
struct Stack([u8; 16384]);
static mut USER_TRAP_STACK: Stack = Stack([0; 16384]);

/// The calls that arrived, one bit each (1 << RAX), and the calls in the order they came.
static USER_SEEN: AtomicU64 = AtomicU64::new(0);
/// The PKRU value call 6 is made with, or 0 where there are no protection keys (no call 6).
static PKRU_DENY: AtomicU64 = AtomicU64::new(0);
/// Where `enter_user` left the kernel: its stack pointer, for the exit call to come back to.
#[no_mangle]
static mut KERNEL_RSP: u64 = 0;

/// The second system-call vector, which call 4 moves syscall_vec to.
const OTHER_VEC: u64 = 0x81;
/// Every call but the exit: bits 1 to 5, and 6 where PKRU_DENY is not 0.
const CALLS: u64 = 0b111_1110;

// The ring-3 program, copied to USER_REGION; position-independent. R12 holds PKRU_DENY.
global_asm!(
    ".global user_program, user_program_end",
    "user_program:",
    "mov eax, 1",
    "int 0x80",
    "mov eax, 2",
    "syscall",
    "mov eax, 3",
    "syscall",
    "mov eax, 4",
    "syscall",
    "mov eax, 5",
    "syscall",
    "test r12, r12",
    "jz 2f",
    "mov eax, r12d",
    "xor ecx, ecx",
    "xor edx, edx",
    "wrpkru",
    "mov eax, 6",
    "syscall",
    "xor eax, eax",
    "xor ecx, ecx",
    "xor edx, edx",
    "wrpkru",
    "2:",
    "mov eax, 60",
    "int 0x80",
    "ud2",
    "user_program_end:",
    // enter_user(pkru_deny): save what the C ABI wants kept, remember the stack, iretq to ring 3.
    ".global enter_user",
    "enter_user:",
    "push rbx", "push rbp", "push r12", "push r13", "push r14", "push r15",
    "mov [rip + KERNEL_RSP], rsp",
    "mov r12, rdi",
    "push {user_ss}",
    "push {user_stack}",
    "push 0x202",
    "push {user_cs}",
    "push {user_code}",
    "iretq",
    // The exit call resumes here, in ring 1, on KERNEL_RSP.
    ".global user_exited",
    "user_exited:",
    "pop r15", "pop r14", "pop r13", "pop r12", "pop rbp", "pop rbx",
    "ret",
    user_ss = const GUEST_USER_SS,
    user_cs = const GUEST_USER_CS,
    user_stack = const USER_STACK_TOP,
    user_code = const USER_REGION,
);

extern "C" {
    static user_program: u8;
    static user_program_end: u8;
    fn enter_user(pkru_deny: u64);
    fn user_exited();
}

fn set_syscall_vec(vector: u64) {
    // SAFETY: our lguest_data word; the host and the Switcher read it.
    unsafe { ptr::write_volatile(data_word(offset::SYSCALL_VEC), vector) };
}

/// The protection-key rights register.
fn rdpkru() -> u64 {
    let pkru: u32;
    // SAFETY: only called where CR4.PKE is on (PKRU_DENY is not 0); reads a register.
    unsafe { core::arch::asm!("rdpkru", in("ecx") 0, out("eax") pkru, out("edx") _) };
    pkru.into()
}

/// Whether the host runs us with protection keys on (CPUID.7.0:ECX.OSPKE mirrors CR4.PKE).
fn has_protection_keys() -> bool {
    core::arch::x86_64::__cpuid_count(7, 0).ecx & (1 << 4) != 0
}

/// A call from ring 3, through vector 0x80 (`int` or `syscall`) or OTHER_VEC: RAX says which.
pub(crate) fn call(state: &mut TrapState) {
    const RAX: usize = 14;
    const RCX: usize = 12;
    const R11: usize = 4;
    let number = state.regs[RAX];
    let through = state.vector;
    let expected = if number == 5 { OTHER_VEC } else { 0x80 };
    if number != 60 && through != expected {
        panic!("user call {number} came through vector {through:#x}, not {expected:#x}");
    }
    // SYSCALL puts the return address in RCX and the flags in R11: so does the host.
    let by_syscall = number != 1 && number != 60;
    if by_syscall && (state.regs[RCX] != state.rip || state.regs[R11] & 0x200 == 0) {
        panic!(
            "user call {number}: rcx {:#x} r11 {:#x}, rip {:#x}",
            state.regs[RCX], state.regs[R11], state.rip
        );
    }
    let seen = USER_SEEN.load(Ordering::SeqCst);
    if number != 60 && seen != (1 << number) - 2 {
        panic!("user call {number} came after calls {seen:#b}");
    }
    match number {
        // Behind the host's back: no hypercall, so the Switcher still has 0x80 armed.
        4 => set_syscall_vec(OTHER_VEC),
        5 => {
            set_syscall_vec(0x80);
            // SAFETY: the host only reads the registers.
            unsafe { hcall(NOP, [0; 5]) };
        }
        6 if rdpkru() != PKRU_DENY.load(Ordering::SeqCst) => {
            panic!("user call 6 arrived with PKRU {:#x}", rdpkru())
        }
        60 => {
            // Back to the kernel: return from enter_user, in ring 1, on the kernel's stack.
            state.rip = user_exited as *const () as u64;
            state.cs = GUEST_KERNEL_CS & !3;
            state.ss = GUEST_KERNEL_SS & !3;
            // SAFETY: written by enter_user before it left for ring 3.
            state.rsp = unsafe { ptr::read_volatile(ptr::addr_of!(KERNEL_RSP)) };
            return;
        }
        _ => {}
    }
    USER_SEEN.fetch_or(1 << number, Ordering::SeqCst);
}

/// `user`: the guest switches to page tables of its own, runs the ring-3 program, and comes
/// back.
pub fn user() -> ! {
    install();
    let pkru_deny = if has_protection_keys() { 3 } else { 0 };
    PKRU_DENY.store(pkru_deny, Ordering::SeqCst);
    // SAFETY: single CPU; the tables are ours and not yet in use; the copy writes RAM the
    // launcher's tables map writable, and nothing else uses USER_REGION.
    unsafe {
        let len = ptr::addr_of!(user_program_end) as usize - ptr::addr_of!(user_program) as usize;
        ptr::copy_nonoverlapping(ptr::addr_of!(user_program), USER_REGION as *mut u8, len);
        for (i, entry) in (*ptr::addr_of_mut!(PD)).0.iter_mut().take(32).enumerate() {
            let at = i as u64 * HUGE_PAGE;
            *entry = at | P | W | HUGE | if at == USER_REGION { U } else { 0 };
        }
        (*ptr::addr_of_mut!(PDPT)).0[0] = ptr::addr_of!(PD) as u64 | P | W | U;
        (*ptr::addr_of_mut!(PML4)).0[0] = ptr::addr_of!(PDPT) as u64 | P | W | U;
        let stack_top = ptr::addr_of!(USER_TRAP_STACK) as u64 + 16384;
        hcall(SET_STACK, [stack_top, 0, 0, 0, 0]);
        // RCX 0: no NEW_PGTABLE_FLUSH (the host has no shadow of these tables yet anyway).
        hcall(NEW_PGTABLE, [ptr::addr_of!(PML4) as u64, 0, 0, 0, 0]);
        set_syscall_vec(0x80);
        enter_user(pkru_deny);
    }
    let seen = USER_SEEN.load(Ordering::SeqCst);
    let expected = if pkru_deny == 0 {
        CALLS & !(1 << 6)
    } else {
        CALLS
    };
    if seen != expected {
        panic!("user: ring 3's calls seen {seen:#b}, expected {expected:#b}");
    }
    println!(
        "user: int 0x80 and syscall from ring 3 reached the kernel ({} calls); back in ring 1",
        expected.count_ones()
    );
    poweroff("user done")
}
