//! Hypercalls: the guest's only way to ask the host for anything.
//!
//! A ring-1 kernel may not touch the hardware, so everything it needs from outside (output, a
//! clean shutdown, a nap) it asks for with `int $0x1f`: the call number in RAX, arguments in RBX,
//! RCX, RDX, RSI, RDI, the answer in RAX (lguest-abi's `hcall` module). Every wrapper here is a
//! thin shell around [`hcall`]; the attacks in attacks.rs call [`hcall`] itself with arguments
//! no well-behaved guest would pass.

use core::cell::UnsafeCell;
use core::ptr;

use lguest_abi::data::LguestData;
use lguest_abi::hcall::{
    CONSOLE_WRITE, CONSOLE_WRITE_MAX, HALT, LGUEST_INIT, NOP, SHUTDOWN, SHUTDOWN_MESSAGE_MAX,
    SHUTDOWN_POWEROFF, SHUTDOWN_RESTART,
};
use lguest_abi::PAGE_SIZE;

/// The hypercall instruction itself: `int $0x1f` with the call in RAX and the arguments in RBX,
/// RCX, RDX, RSI, RDI, as the paravirt-ops crate's lguest backend makes it.
pub use paravirt_ops::lguest::hcall;

/// The page this guest shares with the host (lguest-abi's `data` module). A whole page of its
/// own: the host is told its guest-physical address and may write anywhere in it.
#[repr(C, align(4096))]
pub(crate) struct SharedPage(UnsafeCell<[u8; PAGE_SIZE as usize]>);

// SAFETY: the guest has one CPU and no interrupts; the page is only touched through raw
// pointers, by LGUEST_INIT (the host) and `lguest_init` below.
unsafe impl Sync for SharedPage {}

pub(crate) static LGUEST_DATA: SharedPage = SharedPage(UnsafeCell::new([0; PAGE_SIZE as usize]));

/// The address of one of lguest_data's words (`lguest_abi::data::offset`), for the trap code
/// that reads and writes the virtual interrupt flag.
pub fn data_word(offset: u64) -> *mut u64 {
    // SAFETY: the offsets are inside the page.
    unsafe { LGUEST_DATA.0.get().cast::<u8>().add(offset as usize).cast() }
}

/// LGUEST_INIT: tells the host where `lguest_data` is, and returns what the host wrote there.
/// It must be the guest's first hypercall; the host kills a guest that makes any other first.
pub fn lguest_init() -> LguestData {
    let page = LGUEST_DATA.0.get();
    // The launcher maps RAM with virtual == physical, so the page's address is its
    // guest-physical address.
    // SAFETY: the page is ours, page-aligned and exactly one page long, as LGUEST_INIT requires.
    unsafe { hcall(LGUEST_INIT, [page as u64, 0, 0, 0, 0]) };
    // SAFETY: the page is at least LguestData::SIZE bytes, and aligned for it. A volatile read,
    // as the compiler never saw anybody write the page.
    unsafe { ptr::read_volatile(page.cast::<LguestData>()) }
}

/// CONSOLE_WRITE: `bytes` go to the launcher, which prints them, in pieces the host accepts.
pub fn console_write(bytes: &[u8]) {
    for piece in bytes.chunks(CONSOLE_WRITE_MAX) {
        // SAFETY: the host reads `piece`, which is ours and identity-mapped.
        unsafe {
            hcall(
                CONSOLE_WRITE,
                [piece.as_ptr() as u64, piece.len() as u64, 0, 0, 0],
            )
        };
    }
}

/// NOP: the cheapest round trip through the host.
pub fn nop() {
    // SAFETY: NOP touches no memory.
    unsafe { hcall(NOP, [0; 5]) };
}

/// HALT: sleep until the host has something for us (for now, only a signal to the launcher).
pub fn halt() {
    // SAFETY: HALT touches no memory.
    unsafe { hcall(HALT, [0; 5]) };
}

/// SHUTDOWN with "power off": the launcher exits with status 0 (and shows `message` with -v).
pub fn poweroff(message: &str) -> ! {
    shutdown(message, SHUTDOWN_POWEROFF)
}

/// SHUTDOWN with "restart": the launcher starts the guest afresh (or, under `--no-reboot`,
/// exits with status 4).
pub fn restart(message: &str) -> ! {
    shutdown(message, SHUTDOWN_RESTART)
}

/// SHUTDOWN, `how` being SHUTDOWN_POWEROFF or SHUTDOWN_RESTART.
fn shutdown(message: &str, how: u64) -> ! {
    // The host wants a NUL-terminated string and reads at most SHUTDOWN_MESSAGE_MAX bytes.
    let mut buf = [0u8; SHUTDOWN_MESSAGE_MAX];
    let len = message.len().min(SHUTDOWN_MESSAGE_MAX - 1);
    buf[..len].copy_from_slice(&message.as_bytes()[..len]);
    // SAFETY: the host reads `buf`, which is ours; the call does not return.
    unsafe { hcall(SHUTDOWN, [buf.as_ptr() as u64, how, 0, 0, 0]) };
    // A host that let us go on has broken the ABI; all we can do is wait.
    loop {
        halt();
    }
}
