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
//! same emulated CPUs as the guest, and must cost as little of them as it can. What it cost is
//! said on stderr as each connection ends (`tcp-peer: sink: 8388608 bytes in 2.14 s, 1.34 s of
//! CPU`), so that a bench log shows whether the peer kept up: the CPU is its thread's, nearly
//! all of it the host kernel's TCP receiving and sending on its behalf.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::thread;
use std::time::Instant;

use anyhow::Context;
use nix::sys::resource::{getrusage, UsageWho};
use nix::sys::time::TimeVal;

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
                let start = Instant::now();
                let line = match one_connection(stream) {
                    Ok((what, bytes)) => format!(
                        "tcp-peer: {what}: {bytes} bytes in {:.2} s, {} of CPU\n",
                        start.elapsed().as_secs_f64(),
                        thread_cpu()
                    ),
                    Err(e) => format!("lguest-e2e tcp-peer: a connection: {e:#}\n"),
                };
                // In one write, so that it cannot split a line the bench reads its figures
                // from, which another thread may be printing on the same console.
                let _ = io::stderr().write_all(line.as_bytes());
            })
        });
        if let Err(e) = spawned {
            eprintln!("lguest-e2e tcp-peer: accept: {e}");
            return;
        }
    }
}

/// The CPU time the calling thread has used, user and system, as "S.SS s".
fn thread_cpu() -> String {
    match getrusage(UsageWho::RUSAGE_THREAD) {
        Ok(usage) => {
            let seconds = |t: TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            format!(
                "{:.2} s",
                seconds(usage.user_time()) + seconds(usage.system_time())
            )
        }
        Err(e) => format!("(getrusage: {e})"),
    }
}

/// Serves one connection to its end: what it was for, and how many bytes it carried (read, or
/// for the source sent).
fn one_connection(mut stream: TcpStream) -> anyhow::Result<(&'static str, u64)> {
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
                .context("answer with the count")?;
            Ok(("sink", count))
        }
        b'r' => {
            let mut count = [0; 4];
            stream.read_exact(&mut count).context("read the count")?;
            let asked = u32::from_le_bytes(count) as usize;
            let mut left = asked;
            while left > 0 {
                let now = left.min(BUFFER_BYTES);
                stream
                    .write_all(&buffer[..now])
                    .context("send the guest its bytes")?;
                left -= now;
            }
            Ok(("source", asked as u64))
        }
        b'e' => {
            let mut echoed: u64 = 0;
            loop {
                match stream.read(&mut buffer).context("read for the echo")? {
                    0 => return Ok(("echo", echoed)),
                    n => {
                        stream.write_all(&buffer[..n]).context("echo")?;
                        echoed += n as u64;
                    }
                }
            }
        }
        other => anyhow::bail!("unknown request byte {other:#04x}"),
    }
}
