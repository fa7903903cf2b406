//! The host's end of the Linux guest's TCP figures (`./lguest-dev bench`, "TCP over the tap"):
//! the server lguest-bench (tests/harness/linux-guest/lguest-bench.c) connects to from the guest.
//!
//! One piece of code serves both sides of the comparison, so that the peer is no difference
//! between them: in the test VM as a thread of `lguest-e2e bench` (src/bench.rs), behind the tap
//! of the guest under lg.ko; and on the machine that runs QEMU as `lguest-e2e tcp-peer ADDRESS`
//! (tests/harness/linux-native.sh --net), behind the tap of the same guest booted natively.
//!
//! It listens on `ADDRESS:PORT`; each connection's first byte says what it is for:
//! - `s`, sink: the guest sends; the peer reads to the end of the stream and answers with the
//!   number of bytes it read (8 bytes, little-endian), so that the guest's clock stops only once
//!   every byte has arrived, and the guest can check that none was lost;
//! - `r`, source: a count follows (4 bytes, little-endian); the peer sends that many bytes and
//!   closes;
//! - `e`, echo: every byte read is written straight back, until the end of the stream.
//!
//! Each connection has a thread, so that one a guest left half-open holds up nothing. The peer
//! reads and writes in large buffers and does no work on the bytes: under lg.ko it runs on the
//! same emulated CPUs as the guest, and must cost as little of them as it can.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::thread;

use anyhow::Context;

/// The port the peer listens on; lguest-bench.c's TCP_PORT.
pub const PORT: u16 = 5001;
/// How much the peer reads or writes at a time.
const BUFFER_BYTES: usize = 256 << 10;

/// `lguest-e2e tcp-peer ADDRESS`: listens on `ADDRESS:PORT`, says `tcp-peer: listening on
/// ADDRESS:PORT` on stdout once it does, and serves until it is killed; or one line on stderr
/// and exit status 1 (2 if ADDRESS is no IPv4 address).
pub fn run(address: &str) -> ExitCode {
    let Ok(ip) = address.parse::<Ipv4Addr>() else {
        eprintln!("lguest-e2e tcp-peer: '{address}' is not an IPv4 address like 10.0.2.2");
        return ExitCode::from(2);
    };
    match listen(ip) {
        Ok(listener) => {
            println!("tcp-peer: listening on {ip}:{PORT}");
            // Whoever started the peer waits for that line: it must not sit in a buffer.
            let _ = io::stdout().flush();
            serve(listener);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lguest-e2e tcp-peer: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A listener on `ip:PORT`.
pub fn listen(ip: Ipv4Addr) -> anyhow::Result<TcpListener> {
    let address = SocketAddr::from((ip, PORT));
    TcpListener::bind(address).with_context(|| format!("bind {address}"))
}

/// Serves every connection `listener` accepts, each in a thread of its own; returns only if
/// accepting fails. What goes wrong on a connection is one line on stderr: the guest, whose
/// figure it spoils, says so too.
pub fn serve(listener: TcpListener) {
    for stream in listener.incoming() {
        let spawned = stream.map(|stream| {
            thread::spawn(move || {
                if let Err(e) = one_connection(stream) {
                    eprintln!("lguest-e2e tcp-peer: a connection: {e:#}");
                }
            })
        });
        if let Err(e) = spawned {
            eprintln!("lguest-e2e tcp-peer: accept: {e}");
            return;
        }
    }
}

fn one_connection(mut stream: TcpStream) -> anyhow::Result<()> {
    // The echo's round trips are single bytes: each must leave at once, not wait for more.
    stream.set_nodelay(true).context("set TCP_NODELAY")?;
    let mut what = [0; 1];
    stream.read_exact(&mut what).context("read the request")?;
    let mut buffer = vec![0; BUFFER_BYTES];
    match what[0] {
        b's' => {
            let mut count: u64 = 0;
            loop {
                match stream.read(&mut buffer).context("read the guest's bytes")? {
                    0 => break,
                    n => count += n as u64,
                }
            }
            stream
                .write_all(&count.to_le_bytes())
                .context("answer with the count")
        }
        b'r' => {
            let mut count = [0; 4];
            stream.read_exact(&mut count).context("read the count")?;
            let mut left = u32::from_le_bytes(count) as usize;
            while left > 0 {
                let now = left.min(BUFFER_BYTES);
                stream
                    .write_all(&buffer[..now])
                    .context("send the guest its bytes")?;
                left -= now;
            }
            Ok(())
        }
        b'e' => loop {
            match stream.read(&mut buffer).context("read for the echo")? {
                0 => return Ok(()),
                n => stream.write_all(&buffer[..n]).context("echo")?,
            }
        },
        other => anyhow::bail!("unknown request byte {other:#04x}"),
    }
}
