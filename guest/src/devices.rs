//! 22. Devices mode: a self-test for each virtio device, and what the devices cost.
//!
//! With `devices` on its command line the kernel probes the devices the command line names
//! (virtio/mod.rs), runs one self-test for each one it drives, in this order (the console's only
//! with the word `echo` after `devices`, as it waits for someone to type), each printing
//! `selftest <name>: PASS` or `selftest <name>: FAIL: <why>` and, before it, a line of what it
//! saw; then `devices: N passed, M failed`, and powers off, as failed unless every test passed
//! and there was at least one:
//!
//! | name | device | what passes |
//! |------|--------|-------------|
//! | `rng-entropy` | entropy source | two reads of 64 bytes differ, and neither is all zeros |
//! | `console-echo` | console | (with `echo`) a prompt goes out, a non-empty line comes in within 20 s (the driver sleeps between interrupts), `echo: <line>` goes out |
//! | `block-write-read-verify` | block | a pattern written over the whole disk reads back intact, and a write past its end fails with an error status |
//! | `block-reread-verify` | block | (`devices-verify` instead of `devices`) the pattern an earlier boot wrote reads back intact |
//! | `net-ping` | network | ARP finds the address to ping, and an ICMP echo request gets its reply within 10 s |
//!
//! The pattern is a function of the byte offset alone (guest-core/src/disk_pattern.rs), so a
//! fresh boot with `devices-verify` can check a disk the last `devices` run wrote, with nothing
//! remembered in between. `net-ping` pings `ping=A.B.C.D` from `ip=A.B.C.D` (by default 10.0.2.2
//! from 10.0.2.15, QEMU's user network's gateway and its guest's usual address); under lguest a
//! tap device with the pinged address answers. The frames it sends and reads are guest-core's
//! too (guest-core/src/ping.rs), unit-tested on the host.
//!
//! Bench mode ends, when there are devices, with their figures, in megabytes (10^6 bytes) per
//! second rather than cycles (bench.rs has the rest):
//!
//! | name | what |
//! |------|------|
//! | `blk-read-mbps` | 16 MiB read in 64 KiB requests, one at a time, sequentially (wrapping around a smaller disk) |
//! | `blk-write-mbps` | the same written (the pattern, so a `devices-verify` after it still passes) |
//! | `net-tx-mbps` | 2048 frames of 1514 bytes sent, up to 8 in flight, until the card has taken the last |
//!
//! The block figures count only the time from each request to its completion, not the filling
//! of the buffer in between. Natively they are what QEMU's emulation costs (a disk image in the
//! host's page cache, a thread doing the copying); under lguest, the launcher's, a world switch
//! or two per request.

use guest_core::cmdline::{CommandLine, Plan};
use guest_core::disk_pattern::{fill, mismatch, pattern, requests};
use guest_core::ping::{self, DisplayIpv4, DisplayMac, Ipv4, Received, MAX_FRAME};
use paravirt_ops::{irq, platform, time};

use crate::selftest::{self, fail, Outcome};
use crate::virtio::block::{Block, CHUNK, SECTOR};
use crate::virtio::console::Console;
use crate::virtio::net::Net;
use crate::virtio::rng::Rng;
use crate::virtio::{self, Device, Devices, Error};
use crate::{println, timer};

const MS: u64 = 1_000_000;
const SECOND: u64 = 1000 * MS;
/// The tick that ends every sleep a device does not end: 100 Hz.
const TICK_NS: u64 = 10 * MS;

/// Devices mode: the self-tests, the summary, power-off.
pub fn run(devices: &mut Devices, cmdline: &CommandLine, plan: Plan) -> ! {
    timer::start(TICK_NS);
    let (mut passed, mut failed) = (0u32, 0u32);
    let mut count = |name: &str, outcome: Outcome| {
        if selftest::report(name, outcome) {
            passed += 1;
        } else {
            failed += 1;
        }
        irq::irq_disable();
    };
    if let Some(rng) = &mut devices.rng {
        count("rng-entropy", rng_entropy(rng));
    }
    match &mut devices.console {
        Some(console) if plan.echo => count("console-echo", console_echo(console)),
        Some(_) => println!("console-echo: not run (no `echo` on the command line)"),
        None => {}
    }
    if let Some(block) = &mut devices.block {
        if plan.reread {
            count("block-reread-verify", block_reread_verify(block));
        } else {
            count("block-write-read-verify", block_write_read_verify(block));
        }
    }
    if let Some(net) = &mut devices.net {
        count("net-ping", net_ping(net, cmdline));
    }
    timer::stop();
    println!("devices: {passed} passed, {failed} failed");
    if passed == 0 && failed == 0 {
        platform::power_off("teaching-guest: devices mode, but no device", true)
    } else if failed == 0 {
        platform::power_off("teaching-guest: every device passed", false)
    } else {
        platform::power_off("teaching-guest: device self-tests failed", true)
    }
}

/// How many interrupts a device's line has brought: its driver sleeps until one comes.
fn interrupts(device: &Device) -> DisplayInterrupts {
    DisplayInterrupts {
        irq: device.location().irq,
        count: device.interrupts(),
    }
}

struct DisplayInterrupts {
    irq: u32,
    count: u64,
}

impl core::fmt::Display for DisplayInterrupts {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let plural = if self.count == 1 { "" } else { "s" };
        write!(
            f,
            "IRQ {}: {} interrupt{plural} so far",
            self.irq, self.count
        )
    }
}

// ---- rng-entropy ------------------------------------------------------------------------------

/// Two reads of 64 bytes: different, and neither all zeros (the chance that a working source
/// fails this is 2^-512).
fn rng_entropy(rng: &mut Rng) -> Outcome {
    let (mut first, mut second) = ([0u8; 64], [0u8; 64]);
    for bytes in [&mut first, &mut second] {
        if let Err(error) = rng.read(bytes) {
            fail!("reading 64 bytes: {error}");
        }
    }
    println!(
        "rng-entropy: {:02x?}... ({})",
        &first[..8],
        interrupts(rng.device())
    );
    if first.iter().all(|&b| b == 0) || second.iter().all(|&b| b == 0) {
        fail!("a read of 64 bytes brought nothing but zeros");
    }
    if first == second {
        fail!("two reads of 64 bytes brought the same bytes");
    }
    Outcome::Pass
}

// ---- console-echo -----------------------------------------------------------------------------

/// The longest line read; more is cut off.
const LINE_MAX: usize = 128;
const PREFIX: &[u8] = b"echo: ";

/// A prompt out, a line in (within 20 s, sleeping between interrupts), the line echoed.
fn console_echo(console: &mut Console) -> Outcome {
    if let Err(error) = console.write(b"console-echo: type a line\n") {
        fail!("writing the prompt: {error}");
    }
    let mut line = [0u8; LINE_MAX];
    let len = match console.read_line(&mut line, 20 * SECOND) {
        Ok(Some(len)) => len,
        Ok(None) => fail!("no line came in 20 s"),
        Err(error) => fail!("reading a line: {error}"),
    };
    let text = core::str::from_utf8(&line[..len]).unwrap_or("(not UTF-8)");
    println!(
        "console-echo: read {text:?} ({})",
        interrupts(console.device())
    );
    if len == 0 {
        fail!("the line was empty");
    }
    let mut echo = [0u8; PREFIX.len() + LINE_MAX + 1];
    echo[..PREFIX.len()].copy_from_slice(PREFIX);
    echo[PREFIX.len()..PREFIX.len() + len].copy_from_slice(&line[..len]);
    echo[PREFIX.len() + len] = b'\n';
    if let Err(error) = console.write(&echo[..PREFIX.len() + len + 1]) {
        fail!("writing the echo: {error}");
    }
    Outcome::Pass
}

// ---- block-write-read-verify, block-reread-verify ---------------------------------------------

const CHUNK_SECTORS: u64 = (CHUNK / SECTOR) as u64;

/// The requests that cover a disk of `capacity` sectors, a [`CHUNK`] at most each: (first
/// sector, sectors).
fn chunks(capacity: u64) -> impl Iterator<Item = (u64, usize)> {
    requests(capacity, CHUNK_SECTORS).map(|(sector, sectors)| (sector, sectors as usize))
}

/// The pattern over the whole disk, request by request; it read back intact; a write one
/// sector past the end comes back with an error status (and the device goes on answering).
fn block_write_read_verify(block: &mut Block) -> Outcome {
    let capacity = block.capacity();
    if block.read_only() || capacity == 0 {
        fail!("the disk is read-only or empty ({capacity} sectors)");
    }
    for (sector, sectors) in chunks(capacity) {
        fill(
            &mut block.buffer()[..sectors * SECTOR],
            sector * SECTOR as u64,
        );
        if let Err(error) = block.write(sector, sectors) {
            fail!("writing {sectors} sectors at sector {sector}: {error}");
        }
    }
    if let Outcome::Fail(why) = verify_disk(block) {
        return Outcome::Fail(why);
    }
    fill(&mut block.buffer()[..SECTOR], capacity * SECTOR as u64);
    match block.write(capacity, 1) {
        Ok(()) => fail!("a write past the end, at sector {capacity}, succeeded"),
        Err(Error::Virtio(error)) => println!("block: a write past the end: {error}, as due"),
        Err(error) => fail!("a write past the end, at sector {capacity}: {error}"),
    }
    if let Err(error) = block.read(0, 1) {
        fail!("after the write past the end, reading sector 0: {error}");
    }
    Outcome::Pass
}

/// The pattern an earlier `devices` boot wrote reads back intact.
fn block_reread_verify(block: &mut Block) -> Outcome {
    verify_disk(block)
}

/// Reads the whole disk back, request by request, and compares it with the pattern.
fn verify_disk(block: &mut Block) -> Outcome {
    let capacity = block.capacity();
    let mut requests = 0;
    for (sector, sectors) in chunks(capacity) {
        if let Err(error) = block.read(sector, sectors) {
            fail!("reading {sectors} sectors at sector {sector}: {error}");
        }
        let offset = sector * SECTOR as u64;
        if let Some((at, word)) = mismatch(&block.buffer()[..sectors * SECTOR], offset) {
            fail!(
                "the word at byte {at:#x} reads {word:#018x}, not {:#018x}",
                pattern(at)
            );
        }
        requests += 1;
    }
    println!(
        "block: {} KiB ({capacity} sectors) read back intact in {requests} requests ({})",
        capacity * SECTOR as u64 / 1024,
        interrupts(block.device())
    );
    Outcome::Pass
}

// ---- net-ping ---------------------------------------------------------------------------------

const DEFAULT_IP: Ipv4 = [10, 0, 2, 15];
const DEFAULT_PING: Ipv4 = [10, 0, 2, 2];
/// The echo requests' identifier: "lg".
const ECHO_ID: u16 = 0x6c67;

/// The address parameter `key` gives (the last, if several), or `default`; the value, if it is
/// not an address.
fn address<'a>(cmdline: &'a CommandLine, key: &'a str, default: Ipv4) -> Result<Ipv4, &'a str> {
    match cmdline.values(key).last() {
        None => Ok(default),
        Some(value) => ping::parse_ipv4(value).ok_or(value),
    }
}

/// ARP for the pinged address, then an echo request to it, each sent again every second until
/// its answer comes, for at most 10 s; the reply must match the request's identifier and
/// sequence number. ARP requests for our own address are answered on the way.
fn net_ping(net: &mut Net, cmdline: &CommandLine) -> Outcome {
    let (ip, target) = match (
        address(cmdline, "ip", DEFAULT_IP),
        address(cmdline, "ping", DEFAULT_PING),
    ) {
        (Ok(ip), Ok(target)) => (ip, target),
        (Err(bad), _) | (_, Err(bad)) => fail!("{bad:?} is not an IPv4 address"),
    };
    let mac = net.mac();
    let start = time::sched_clock();
    let deadline = start + 10 * SECOND;
    let mut target_mac = None;
    let mut seq = 0u16;
    let mut next_send = start;
    let mut frame = [0u8; MAX_FRAME];
    loop {
        let now = time::sched_clock();
        if now >= deadline {
            let target = DisplayIpv4(target);
            match target_mac {
                None => fail!("no ARP reply from {target} in 10 s"),
                Some(_) => fail!("no echo reply from {target} in 10 s ({seq} requests)"),
            }
        }
        if now >= next_send {
            let request = match target_mac {
                None => ping::arp_request(mac, ip, target),
                Some(to) => {
                    seq += 1;
                    ping::echo_request(mac, ip, (to, target), ECHO_ID, seq)
                }
            };
            if let Err(error) = net.send(request.as_bytes()) {
                fail!("sending: {error}");
            }
            next_send = now + SECOND;
        }
        let len = match virtio::wait_for(next_send.min(deadline) - now, |ack| {
            net.poll_receive(&mut frame, ack)
        }) {
            None => continue,
            Some(Ok(len)) => len,
            Some(Err(error)) => fail!("receiving: {error}"),
        };
        match ping::parse(&frame[..len]) {
            Received::ArpReply {
                mac: theirs,
                ip: from,
            } if from == target && target_mac.is_none() => {
                target_mac = Some(theirs);
                next_send = now;
            }
            Received::ArpRequest {
                mac: asker,
                ip: asker_ip,
                target: asked,
            } if asked == ip => {
                if let Err(error) = net.send(ping::arp_reply(mac, ip, (asker, asker_ip)).as_bytes())
                {
                    fail!("answering an ARP request: {error}");
                }
            }
            Received::EchoReply {
                from,
                id,
                seq: answered,
            } if from == target && id == ECHO_ID && answered == seq => {
                println!(
                    "net-ping: {} is at {}, answered echo request {seq} after {} ms ({})",
                    DisplayIpv4(target),
                    DisplayMac(target_mac.unwrap_or_default()),
                    (time::sched_clock() - start) / MS,
                    interrupts(net.device())
                );
                return Outcome::Pass;
            }
            _ => {}
        }
    }
}

// ---- Bench ------------------------------------------------------------------------------------

/// Bytes each block figure moves, and frames the network figure sends.
const BENCH_BYTES: u64 = 16 << 20;
const BENCH_FRAMES: usize = 2048;

/// The devices' bench lines, `bench <name> <MB/s>`, for the devices there are; a figure that
/// could not be had prints `bench <name> FAIL: <why>` instead. Whether every figure was had.
pub fn bench(devices: &mut Devices) -> bool {
    timer::start(TICK_NS);
    let mut all = true;
    let mut print = |name: &str, figure: Result<u64, Error>| match figure {
        Ok(mbps) => println!("bench {name} {mbps}"),
        Err(error) => {
            println!("bench {name} FAIL: {error}");
            all = false;
        }
    };
    if let Some(block) = &mut devices.block {
        print("blk-read-mbps", block_mbps(block, false));
        print("blk-write-mbps", block_mbps(block, true));
    }
    if let Some(net) = &mut devices.net {
        print("net-tx-mbps", net_tx_mbps(net));
    }
    timer::stop();
    irq::irq_disable();
    all
}

/// Megabytes per second for `bytes` in `cycles` of the TSC.
fn mbps(bytes: u64, cycles: u64) -> u64 {
    (u128::from(bytes) * u128::from(time::tsc_khz()) / (u128::from(cycles.max(1)) * 1000)) as u64
}

/// [`BENCH_BYTES`] read (or written) in requests of a [`CHUNK`], sequentially, wrapping around
/// the disk; the time from each request to its completion counted.
fn block_mbps(block: &mut Block, write: bool) -> Result<u64, Error> {
    let chunks_on_disk = block.capacity() / CHUNK_SECTORS;
    if chunks_on_disk == 0 {
        return Err(Error::Misbehaved("the disk is smaller than one request"));
    }
    let mut cycles = 0;
    for i in 0..BENCH_BYTES / CHUNK as u64 {
        let sector = i % chunks_on_disk * CHUNK_SECTORS;
        if write {
            fill(block.buffer(), sector * SECTOR as u64);
        }
        let start = time::rdtsc();
        if write {
            block.write(sector, CHUNK_SECTORS as usize)?;
        } else {
            block.read(sector, CHUNK_SECTORS as usize)?;
        }
        cycles += time::rdtsc() - start;
    }
    Ok(mbps(BENCH_BYTES, cycles))
}

/// [`BENCH_FRAMES`] frames of the longest size, from the first send to the last completion.
fn net_tx_mbps(net: &mut Net) -> Result<u64, Error> {
    let frame = ping::filler(net.mac(), MAX_FRAME);
    let start = time::rdtsc();
    net.send_many(frame.as_bytes(), BENCH_FRAMES)?;
    let cycles = time::rdtsc() - start;
    Ok(mbps(BENCH_FRAMES as u64 * MAX_FRAME as u64, cycles))
}
