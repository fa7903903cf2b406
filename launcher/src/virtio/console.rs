//! virtio-console: the guest's terminal (Linux's `hvc0`), wired to the launcher's stdin and
//! stdout.
//!
//! One port, two queues: the guest's output arrives in transmitq buffers and goes to the output
//! (stdout); input read from the host (stdin, by the console's input thread) goes into the
//! buffers the guest left in receiveq. Input that finds no buffer waits here until the guest adds
//! some. Input typed on a terminal goes through the escape key first (terminal.rs's
//! [`Escape`]): Ctrl-A x is not for the guest but ends the launcher. What it may touch: its
//! output, its input, the guest's buffers.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};

use log::warn;
use virtio_bindings::virtio_ids::VIRTIO_ID_CONSOLE;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{Chain, InputState, VirtioDevice, RECEIVE_QUEUE};
use crate::terminal::{Escape, Typed};

const TRANSMIT_QUEUE: u16 = 1;
/// The most output one buffer may carry: Linux's hvc driver sends at most a page at a time.
const MAX_OUTPUT_PER_BUFFER: usize = 64 * 1024;
/// How much input is read from the host at a time; it waits here until the guest takes it.
const INPUT_CHUNK: usize = 4096;
/// The most typed input (a terminal's, read whether or not the guest takes it) held for the
/// guest: a page of typing, or a paste.
const MAX_HELD_INPUT: usize = 64 * 1024;
/// `struct virtio_console_config` (cols, rows, max_nr_ports, emerg_wr): none of the features
/// that give its fields a meaning is offered, so it reads as zeros.
const CONFIG: [u8; 12] = [0; 12];

/// The virtio console device.
pub struct Console {
    output: Box<dyn Write + Send>,
    input: Option<File>,
    /// The escape key, when the input is a terminal; `None` passes every byte on.
    escape: Option<Escape>,
    pending_input: VecDeque<u8>,
}

impl Console {
    /// A console writing the guest's output to `output` and reading its input from `input`
    /// (the launcher passes stdout and a duplicate of stdin; `None` for no input).
    pub fn new(output: Box<dyn Write + Send>, input: Option<File>) -> Console {
        Console {
            output,
            input,
            escape: None,
            pending_input: VecDeque::new(),
        }
    }

    /// Watches the input for the escape key: for a terminal, where a person types.
    pub fn with_escape_key(self) -> Console {
        Console {
            escape: Some(Escape::default()),
            ..self
        }
    }

    /// Writes every transmitq buffer to the output.
    fn transmit(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<(), virtio_queue::Error> {
        Chain::serve_each(queue, mem, |chain| {
            match chain.gather_readable(mem, MAX_OUTPUT_PER_BUFFER) {
                Some(bytes) => {
                    if let Err(error) = self
                        .output
                        .write_all(&bytes)
                        .and_then(|()| self.output.flush())
                    {
                        crate::guest_warn!(
                            "virtio-console: cannot write the guest's output: {error}"
                        );
                    }
                }
                None => {
                    crate::guest_warn!(
                        "virtio-console: an output buffer is too large or outside guest memory"
                    )
                }
            }
            0
        })
    }

    /// One read of the input into the pending input, through the escape key if it is watched:
    /// `Drained`, or `Quit` for the escape key, or `Closed` at the input's end. Typed input the
    /// guest does not take piles up to [`MAX_HELD_INPUT`]; more is dropped, as a serial port
    /// drops what overruns its FIFO.
    fn read_input(&mut self) -> InputState {
        let Some(input) = &mut self.input else {
            return InputState::Closed;
        };
        let mut bytes = [0; INPUT_CHUNK];
        let len = match input.read(&mut bytes) {
            Ok(0) => return InputState::Closed,
            Ok(len) => len,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => return InputState::Drained,
            Err(error) => {
                warn!("virtio-console: cannot read input: {error}");
                return InputState::Closed;
            }
        };
        match &mut self.escape {
            Some(escape) => {
                if escape.filter(&bytes[..len], &mut self.pending_input) == Typed::Quit {
                    return InputState::Quit;
                }
                self.pending_input.truncate(MAX_HELD_INPUT);
            }
            None => self.pending_input.extend(&bytes[..len]),
        }
        InputState::Drained
    }

    /// Moves pending input into receiveq buffers, as far as there are buffers.
    fn deliver_pending(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<(), virtio_queue::Error> {
        for _ in 0..queue.size() {
            if self.pending_input.is_empty() {
                break;
            }
            let Some(chain) = Chain::pop(queue, mem)? else {
                break;
            };
            let written = chain
                .scatter_writable(mem, self.pending_input.make_contiguous())
                .unwrap_or_else(|| {
                    crate::guest_warn!("virtio-console: an input buffer lies outside guest memory");
                    0
                });
            self.pending_input.drain(..written);
            queue.add_used(mem, chain.head, written as u32)?;
        }
        Ok(())
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_CONSOLE
    }

    fn features(&self) -> u64 {
        0
    }

    fn queue_count(&self) -> u16 {
        2
    }

    fn config(&self) -> &[u8] {
        &CONFIG
    }

    fn process_queue(
        &mut self,
        index: u16,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<(), virtio_queue::Error> {
        match index {
            RECEIVE_QUEUE => self.deliver_pending(queue, mem),
            TRANSMIT_QUEUE => self.transmit(queue, mem),
            _ => Ok(()),
        }
    }

    fn input_fd(&self) -> Option<RawFd> {
        self.input.as_ref().map(AsRawFd::as_raw_fd)
    }

    fn receive_input(
        &mut self,
        receive_queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<InputState, virtio_queue::Error> {
        self.deliver_pending(receive_queue, mem)?;
        // Without the escape key, read more only once what was read before is delivered: the
        // host's input then waits in its own buffer (the pipe, the file) rather than piling up
        // here. A terminal is always read, or the escape key would go unseen while the guest
        // takes no input.
        if self.escape.is_none() && !self.pending_input.is_empty() {
            return Ok(InputState::GuestFull);
        }
        let state = self.read_input();
        if state != InputState::Drained {
            return Ok(state);
        }
        self.deliver_pending(receive_queue, mem)?;
        Ok(if self.pending_input.is_empty() || self.escape.is_some() {
            InputState::Drained
        } else {
            InputState::GuestFull
        })
    }

    fn read_ahead(&mut self) -> InputState {
        match self.escape {
            Some(_) => self.read_input(),
            None => InputState::GuestFull,
        }
    }

    fn reset(&mut self) {
        self.pending_input.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::super::spawn_input_thread;
    use super::super::testing::TestDriver;
    use super::*;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_DRIVER_OK;

    /// An output that tests can read back.
    #[derive(Clone, Default)]
    struct SharedOutput(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedOutput {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A console whose input is fed through the returned socket.
    fn console() -> (Console, SharedOutput, UnixStream) {
        let output = SharedOutput::default();
        let (host_side, console_side) = UnixStream::pair().unwrap();
        let input = File::from(OwnedFd::from(console_side));
        let console = Console::new(Box::new(output.clone()), Some(input));
        (console, output, host_side)
    }

    fn started_console() -> (TestDriver, SharedOutput, UnixStream) {
        let (console, output, input) = console();
        (TestDriver::start(Box::new(console)), output, input)
    }

    #[test]
    fn output_goes_to_the_writer() {
        let (mut driver, output, _input) = started_console();
        let hello = driver.alloc_with(b"hello, ");
        let world = driver.alloc_with(b"world\n");
        driver.add_chain(1, &[(hello, 7, false), (world, 6, false)]);
        driver.notify(1);
        assert_eq!(driver.used(1), vec![(0, 0)]);
        assert_eq!(*output.0.lock().unwrap(), b"hello, world\n");
    }

    #[test]
    fn input_waits_for_buffers() {
        let (mut driver, _output, mut input) = started_console();
        let small = driver.alloc(4);
        driver.add_chain(0, &[(small, 4, true)]);
        input.write_all(b"ls -l\n").unwrap();
        // The guest has room for 4 bytes; the rest waits.
        assert_eq!(driver.transport().receive_input(), InputState::GuestFull);
        assert_eq!(driver.used(0), vec![(0, 4)]);
        assert_eq!(driver.read_bytes(small, 4), b"ls -");
        assert_eq!(driver.interrupts(), 1);
        // A new buffer and a notify deliver it.
        let more = driver.alloc(16);
        driver.add_chain(0, &[(more, 16, true)]);
        driver.notify(0);
        assert_eq!(driver.used(0), vec![(0, 4), (1, 2)]);
        assert_eq!(driver.read_bytes(more, 2), b"l\n");
        drop(input);
        assert_eq!(driver.transport().receive_input(), InputState::Closed);
    }

    #[test]
    fn the_escape_key_is_watched_only_when_asked() {
        for (escape, typed, state, delivered) in [
            (false, &b"a\x01xb"[..], InputState::Drained, &b"a\x01xb"[..]),
            (true, b"a\x01\x01\x03", InputState::Drained, b"a\x01\x03"),
            (true, b"a\x01xb", InputState::Quit, b""),
        ] {
            let (console, _output, mut input) = console();
            let console = if escape {
                console.with_escape_key()
            } else {
                console
            };
            let mut driver = TestDriver::start(Box::new(console));
            let buffer = driver.alloc(16);
            driver.add_chain(0, &[(buffer, 16, true)]);
            input.write_all(typed).unwrap();
            assert_eq!(driver.transport().receive_input(), state, "{typed:?}");
            assert_eq!(
                driver.read_bytes(buffer, delivered.len()),
                delivered,
                "{typed:?}"
            );
        }
    }

    #[test]
    fn a_terminal_is_read_before_the_driver_is_ready() {
        let (console, _output, mut input) = console();
        let driver = TestDriver::new(Box::new(console.with_escape_key()));
        input.write_all(b"ab").unwrap();
        assert_eq!(driver.transport().receive_input(), InputState::Drained);
        input.write_all(b"\x01x").unwrap();
        assert_eq!(driver.transport().receive_input(), InputState::Quit);
    }

    #[test]
    fn input_waits_until_the_driver_is_ready() {
        let (console, _output, mut input) = console();
        let mut driver = TestDriver::new(Box::new(console));
        input.write_all(b"x").unwrap();
        assert_eq!(driver.transport().receive_input(), InputState::GuestFull);
        assert!(driver.negotiate(None));
        driver.set_up_queue(0);
        driver.set_up_queue(1);
        let buffer = driver.alloc(1);
        driver.add_chain(0, &[(buffer, 1, true)]);
        driver.add_status(VIRTIO_CONFIG_S_DRIVER_OK);
        assert_eq!(driver.transport().receive_input(), InputState::Drained);
        assert_eq!(driver.read_bytes(buffer, 1), b"x");
    }

    #[test]
    fn the_input_thread_delivers_and_ends_with_its_input() {
        let (mut driver, _output, mut input) = started_console();
        let thread = spawn_input_thread(Arc::clone(&driver.transport))
            .unwrap()
            .unwrap();
        input.write_all(b"hi").unwrap();
        let wait_for_used = |driver: &TestDriver, count: usize| {
            let start = Instant::now();
            while driver.used(0).len() < count {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "input never arrived"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        // No buffer yet: the thread waits for the guest's kick.
        std::thread::sleep(Duration::from_millis(50));
        assert!(driver.used(0).is_empty());
        let buffer = driver.alloc(8);
        driver.add_chain(0, &[(buffer, 8, true)]);
        driver.notify(0);
        wait_for_used(&driver, 1);
        assert_eq!(driver.read_bytes(buffer, 2), b"hi");
        // Later input goes straight to a waiting buffer.
        let buffer = driver.alloc(8);
        driver.add_chain(0, &[(buffer, 8, true)]);
        driver.notify(0);
        input.write_all(b"!").unwrap();
        wait_for_used(&driver, 2);
        assert_eq!(driver.read_bytes(buffer, 1), b"!");
        drop(input);
        thread.join().unwrap();
    }
}
