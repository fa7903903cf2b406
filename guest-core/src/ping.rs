//! Just enough Ethernet, ARP, IPv4 and ICMP to ping.
//!
//! `net-ping` (guest/src/devices.rs) asks who has the address it pings with an ARP request,
//! broadcast; the answer names the MAC address to send to. Then it sends ICMP echo requests
//! there, in IPv4 packets, and waits for an echo reply with the same identifier and sequence
//! number. It also answers ARP requests for its own address, as the other side may ask before
//! it replies. Here are the frames, built into a [`Frame`] and read back by [`parse`]; no
//! hardware and no state, so the test reads as the conversation it is. Every multi-byte field
//! on the wire is big-endian (network order), and the checksums are the Internet's (RFC 1071).
//! What arrives is whatever the other side sent: [`parse`] reads any bytes at all without a
//! panic, and calls anything it does not fully understand [`Received::Other`].

use core::fmt;

/// A MAC address, and an IPv4 address, as they are on the wire.
pub type Mac = [u8; 6];
pub type Ipv4 = [u8; 4];

/// An IPv4 address as people write it: `10.0.2.2`.
pub struct DisplayIpv4(pub Ipv4);

impl fmt::Display for DisplayIpv4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d] = self.0;
        write!(f, "{a}.{b}.{c}.{d}")
    }
}

/// A MAC address as people write it: `52:55:0a:00:02:02`.
pub struct DisplayMac(pub Mac);

impl fmt::Display for DisplayMac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// The broadcast MAC address: every card on the link takes the frame.
const BROADCAST: Mac = [0xff; 6];
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
/// IEEE 802's "local experimental" EtherType: frames nobody on the other side understands, so
/// the bench's frames cost the receiver nothing but their arrival.
const ETHERTYPE_EXPERIMENTAL: u16 = 0x88b5;
const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;
const IP_PROTOCOL_ICMP: u8 = 1;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
/// Ethernet's header: destination, source, EtherType.
const ETHERNET_HEADER: usize = 14;
/// The shortest Ethernet frame without its checksum (the card adds that): shorter ones are
/// padded with zeros.
const MIN_FRAME: usize = 60;
/// The longest: the header and 1500 bytes.
pub const MAX_FRAME: usize = ETHERNET_HEADER + 1500;
/// What every echo request carries, and its reply must carry back.
const ECHO_PAYLOAD: &[u8; 32] = b"lguest-rs teaching guest ping!!!";

/// `a.b.c.d`.
pub fn parse_ipv4(text: &str) -> Option<Ipv4> {
    let mut address = [0u8; 4];
    let mut parts = text.split('.');
    for byte in &mut address {
        *byte = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(address)
}

/// An Ethernet frame being built, or built.
pub struct Frame {
    bytes: [u8; MAX_FRAME],
    len: usize,
}

impl Frame {
    /// A frame from `from` to `to` of type `ethertype`, its payload still to come.
    fn new(to: Mac, from: Mac, ethertype: u16) -> Frame {
        let mut frame = Frame {
            bytes: [0; MAX_FRAME],
            len: 0,
        };
        frame.put(&to);
        frame.put(&from);
        frame.put(&ethertype.to_be_bytes());
        frame
    }

    fn put(&mut self, bytes: &[u8]) {
        self.bytes[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    /// The frame, padded to the shortest Ethernet allows.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len.max(MIN_FRAME)]
    }
}

/// ARP (RFC 826) for IPv4 over Ethernet: `operation`, the sender's addresses, the target's.
fn arp(operation: u16, sender: (Mac, Ipv4), target: (Mac, Ipv4), to: Mac) -> Frame {
    let mut frame = Frame::new(to, sender.0, ETHERTYPE_ARP);
    frame.put(&1u16.to_be_bytes()); // hardware: Ethernet
    frame.put(&ETHERTYPE_IPV4.to_be_bytes()); // protocol: IPv4
    frame.put(&[6, 4]); // their address lengths
    frame.put(&operation.to_be_bytes());
    frame.put(&sender.0);
    frame.put(&sender.1);
    frame.put(&target.0);
    frame.put(&target.1);
    frame
}

/// "Who has `target`? Tell `ip`", broadcast.
pub fn arp_request(mac: Mac, ip: Ipv4, target: Ipv4) -> Frame {
    arp(ARP_REQUEST, (mac, ip), ([0; 6], target), BROADCAST)
}

/// "`ip` is at `mac`", to whoever asked.
pub fn arp_reply(mac: Mac, ip: Ipv4, asker: (Mac, Ipv4)) -> Frame {
    arp(ARP_REPLY, (mac, ip), asker, asker.0)
}

/// An ICMP echo request (RFC 792) from `ip` to `target`, at MAC `to`, in an IPv4 packet.
pub fn echo_request(mac: Mac, ip: Ipv4, to: (Mac, Ipv4), id: u16, seq: u16) -> Frame {
    let mut frame = Frame::new(to.0, mac, ETHERTYPE_IPV4);
    let icmp_len = 8 + ECHO_PAYLOAD.len();
    let ip_header = ETHERNET_HEADER;
    frame.put(&[0x45, 0]); // version 4, 5 words of header; no type of service
    frame.put(&((20 + icmp_len) as u16).to_be_bytes());
    frame.put(&seq.to_be_bytes()); // identification: any
    frame.put(&0x4000u16.to_be_bytes()); // don't fragment
    frame.put(&[64, IP_PROTOCOL_ICMP]); // time to live; protocol
    frame.put(&[0, 0]); // the checksum, below
    frame.put(&ip);
    frame.put(&to.1);
    let ip_checksum = checksum(&frame.bytes[ip_header..ip_header + 20]);
    frame.bytes[ip_header + 10..ip_header + 12].copy_from_slice(&ip_checksum.to_be_bytes());
    let icmp = frame.len;
    frame.put(&[ICMP_ECHO_REQUEST, 0, 0, 0]); // type, code, the checksum below
    frame.put(&id.to_be_bytes());
    frame.put(&seq.to_be_bytes());
    frame.put(ECHO_PAYLOAD);
    let icmp_checksum = checksum(&frame.bytes[icmp..icmp + icmp_len]);
    frame.bytes[icmp + 2..icmp + 4].copy_from_slice(&icmp_checksum.to_be_bytes());
    frame
}

/// A broadcast frame of `len` bytes (at most [`MAX_FRAME`]) of the experimental EtherType,
/// for the bench.
pub fn filler(mac: Mac, len: usize) -> Frame {
    let mut frame = Frame::new(BROADCAST, mac, ETHERTYPE_EXPERIMENTAL);
    frame.len = len.clamp(ETHERNET_HEADER, MAX_FRAME);
    frame
}

/// The Internet checksum: the ones' complement of the ones' complement sum of the 16-bit
/// big-endian words (an odd last byte padded with zero). A packet with its checksum in place
/// sums to 0 again.
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(pair[0]) << 8 | u32::from(*pair.get(1).unwrap_or(&0)))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// What a frame says, as far as pinging cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// An ARP reply: `ip` is at `mac`.
    ArpReply { mac: Mac, ip: Ipv4 },
    /// An ARP request from `mac`, `ip`, for `target`.
    ArpRequest { mac: Mac, ip: Ipv4, target: Ipv4 },
    /// An ICMP echo reply from `from`, intact (its checksum sums to 0, its payload is ours).
    EchoReply { from: Ipv4, id: u16, seq: u16 },
    /// Anything else.
    Other,
}

/// Reads `frame`. Short or malformed frames are [`Received::Other`], never a panic.
pub fn parse(frame: &[u8]) -> Received {
    match be16(frame, 12) {
        Some(ETHERTYPE_ARP) => parse_arp(frame),
        Some(ETHERTYPE_IPV4) => parse_echo_reply(frame),
        _ => None,
    }
    .unwrap_or(Received::Other)
}

/// The `N` bytes at `at`, if the frame is that long.
fn field<const N: usize>(frame: &[u8], at: usize) -> Option<[u8; N]> {
    frame.get(at..at + N)?.try_into().ok()
}

/// The big-endian 16-bit word at `at`.
fn be16(frame: &[u8], at: usize) -> Option<u16> {
    field(frame, at).map(u16::from_be_bytes)
}

/// An ARP packet for IPv4 over Ethernet: after the header, the operation, then the sender's
/// MAC and IPv4 addresses, then the target's.
fn parse_arp(frame: &[u8]) -> Option<Received> {
    let arp = ETHERNET_HEADER;
    let ethernet_ipv4 = be16(frame, arp)? == 1
        && be16(frame, arp + 2)? == ETHERTYPE_IPV4
        && field(frame, arp + 4)? == [6, 4];
    if !ethernet_ipv4 {
        return None;
    }
    let (mac, ip) = (field(frame, arp + 8)?, field(frame, arp + 14)?);
    match be16(frame, arp + 6)? {
        ARP_REPLY => Some(Received::ArpReply { mac, ip }),
        ARP_REQUEST => Some(Received::ArpRequest {
            mac,
            ip,
            target: field(frame, arp + 24)?,
        }),
        _ => None,
    }
}

/// An IPv4 packet carrying an ICMP echo reply whose checksum holds and whose payload is
/// [`ECHO_PAYLOAD`].
fn parse_echo_reply(frame: &[u8]) -> Option<Received> {
    let ip = ETHERNET_HEADER;
    let [version_and_length] = field(frame, ip)?;
    let header_len = usize::from(version_and_length & 0xf) * 4;
    let total_len = usize::from(be16(frame, ip + 2)?);
    let [protocol] = field(frame, ip + 9)?;
    if version_and_length >> 4 != 4 || header_len < 20 || protocol != IP_PROTOCOL_ICMP {
        return None;
    }
    let icmp = frame.get(ip + header_len..ip + total_len.max(header_len))?;
    let intact = icmp.len() == 8 + ECHO_PAYLOAD.len() && checksum(icmp) == 0;
    if !intact || icmp[0] != ICMP_ECHO_REPLY || icmp[8..] != ECHO_PAYLOAD[..] {
        return None;
    }
    Some(Received::EchoReply {
        from: field(frame, ip + 12)?,
        id: be16(icmp, 4)?,
        seq: be16(icmp, 6)?,
    })
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::format;
    use std::vec::Vec;

    use super::*;

    const OURS: (Mac, Ipv4) = ([0x52, 0x54, 0, 0x12, 0x34, 0x56], [10, 0, 2, 15]);
    const THEIRS: (Mac, Ipv4) = ([0x52, 0x55, 10, 0, 2, 2], [10, 0, 2, 2]);
    const IP: usize = ETHERNET_HEADER;
    const ICMP: usize = ETHERNET_HEADER + 20;

    /// What a host that answers pings sends back for `request`: the addresses swapped, the type
    /// an echo reply, the ICMP checksum made again (the IP header's still holds: its words are
    /// the same, the addresses swapped).
    fn reply_to(request: &Frame) -> Vec<u8> {
        let mut reply = request.as_bytes().to_vec();
        reply.copy_within(6..12, 0);
        reply[6..12].copy_from_slice(&THEIRS.0);
        reply.copy_within(IP + 12..IP + 16, IP + 16);
        reply[IP + 12..IP + 16].copy_from_slice(&THEIRS.1);
        reply[ICMP] = ICMP_ECHO_REPLY;
        seal(&mut reply);
        reply
    }

    /// Puts the right ICMP checksum back into `frame`.
    fn seal(frame: &mut [u8]) {
        frame[ICMP + 2..ICMP + 4].fill(0);
        let sum = checksum(&frame[ICMP..]);
        frame[ICMP + 2..ICMP + 4].copy_from_slice(&sum.to_be_bytes());
    }

    fn request() -> Frame {
        echo_request(OURS.0, OURS.1, THEIRS, 0x6c67, 7)
    }

    #[test]
    fn addresses_as_people_write_them() {
        assert_eq!(parse_ipv4("10.0.2.2"), Some([10, 0, 2, 2]));
        assert_eq!(parse_ipv4("255.255.255.255"), Some([255; 4]));
        for bad in [
            "",
            "10.0.2",
            "10.0.2.2.2",
            "10.0.2.256",
            "10.0..2",
            "a.b.c.d",
            "10.0.2.2 ",
        ] {
            assert_eq!(parse_ipv4(bad), None, "{bad:?}");
        }
        assert_eq!(format!("{}", DisplayIpv4([10, 0, 2, 15])), "10.0.2.15");
        assert_eq!(format!("{}", DisplayMac(THEIRS.0)), "52:55:0a:00:02:02");
    }

    #[test]
    fn the_internet_checksum() {
        // RFC 1071's example: the words sum to 0xddf2.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
        assert_eq!(
            checksum(&[0x01]),
            !0x0100,
            "an odd byte is padded with zero"
        );
        assert_eq!(
            checksum(&[0xff, 0xff, 0x00, 0x01]),
            !0x0001,
            "the carry goes around"
        );
    }

    #[test]
    fn an_arp_request_reads_back_as_one() {
        let frame = arp_request(OURS.0, OURS.1, THEIRS.1);
        assert_eq!(
            frame.as_bytes().len(),
            MIN_FRAME,
            "padded to the shortest frame"
        );
        assert_eq!(frame.as_bytes()[..6], BROADCAST);
        assert_eq!(
            parse(frame.as_bytes()),
            Received::ArpRequest {
                mac: OURS.0,
                ip: OURS.1,
                target: THEIRS.1
            }
        );
    }

    #[test]
    fn an_arp_reply_names_who_is_where() {
        let frame = arp_reply(THEIRS.0, THEIRS.1, OURS);
        assert_eq!(frame.as_bytes()[..6], OURS.0, "sent to whoever asked");
        assert_eq!(
            parse(frame.as_bytes()),
            Received::ArpReply {
                mac: THEIRS.0,
                ip: THEIRS.1
            }
        );
    }

    #[test]
    fn arp_that_is_not_ipv4_over_ethernet_is_other() {
        let good = arp_reply(THEIRS.0, THEIRS.1, OURS).as_bytes().to_vec();
        for (at, value) in [(IP + 1, 6), (IP + 2, 0x86), (IP + 5, 16), (IP + 7, 3)] {
            let mut frame = good.clone();
            frame[at] = value;
            assert_eq!(parse(&frame), Received::Other, "byte {at} = {value}");
        }
    }

    #[test]
    fn an_echo_request_carries_both_checksums() {
        let frame = request();
        let bytes = frame.as_bytes();
        assert_eq!(bytes.len(), ICMP + 8 + ECHO_PAYLOAD.len());
        assert_eq!(checksum(&bytes[IP..ICMP]), 0, "the IP header sums to 0");
        assert_eq!(checksum(&bytes[ICMP..]), 0, "the ICMP message sums to 0");
        assert_eq!(parse(bytes), Received::Other, "a request is not a reply");
    }

    #[test]
    fn the_reply_to_our_request_is_recognised() {
        assert_eq!(
            parse(&reply_to(&request())),
            Received::EchoReply {
                from: THEIRS.1,
                id: 0x6c67,
                seq: 7
            }
        );
    }

    #[test]
    fn a_reply_padded_past_its_packet_is_still_read() {
        let mut reply = reply_to(&request());
        reply.extend_from_slice(&[0; 20]);
        assert!(matches!(parse(&reply), Received::EchoReply { seq: 7, .. }));
    }

    #[test]
    fn a_damaged_reply_is_other() {
        let good = reply_to(&request());
        // A bit of the sequence number flipped in transit: the checksum no longer holds.
        let mut flipped = good.clone();
        flipped[ICMP + 7] ^= 1;
        assert_eq!(parse(&flipped), Received::Other);
        // Another payload, with a checksum that holds: not the reply to ours.
        let mut foreign = good.clone();
        foreign[ICMP + 8] ^= 1;
        seal(&mut foreign);
        assert_eq!(parse(&foreign), Received::Other);
    }

    #[test]
    fn a_malformed_ip_header_is_other() {
        let good = reply_to(&request());
        let cases: [(usize, u8); 7] = [
            (IP, 0x65),     // version 6
            (IP, 0x44),     // a header shorter than 20 bytes
            (IP, 0x4f),     // a header of 60 bytes, longer than the packet
            (IP, 0x40),     // a header of no length at all
            (IP + 2, 0xff), // a total length past the frame's end
            (IP + 3, 10),   // a total length shorter than the header
            (IP + 9, 17),   // UDP, not ICMP
        ];
        for (at, value) in cases {
            let mut frame = good.clone();
            frame[at] = value;
            assert_eq!(parse(&frame), Received::Other, "byte {at} = {value:#x}");
        }
    }

    #[test]
    fn a_header_shorter_than_ipv4_allows_is_other() {
        // IHL 4: a 16-byte "header", the ICMP message whole right after it. Read with that
        // length, the packet would be our reply; but no IPv4 header is shorter than 20 bytes.
        let good = reply_to(&request());
        let mut frame = good[..IP + 16].to_vec();
        frame.extend_from_slice(&good[ICMP..]);
        frame[IP] = 0x44;
        frame[IP + 2..IP + 4].copy_from_slice(&56u16.to_be_bytes());
        assert_eq!(parse(&frame), Received::Other);
    }

    #[test]
    fn every_truncated_frame_is_other() {
        let asking = arp_request(THEIRS.0, THEIRS.1, OURS.1);
        // An ARP request is whole from 42 bytes on (the rest is the padding to 60).
        for (frame, whole) in [
            (reply_to(&request()), ICMP + 40),
            (asking.as_bytes().to_vec(), 42),
        ] {
            assert_ne!(parse(&frame[..whole]), Received::Other);
            for len in 0..whole {
                assert_eq!(parse(&frame[..len]), Received::Other, "{len} bytes");
            }
        }
    }

    #[test]
    fn any_bytes_at_all_parse_without_a_panic() {
        // A fixed pseudo-random sequence (a 64-bit LCG), so a failure can be replayed.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut byte = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            (state >> 56) as u8
        };
        let reply = reply_to(&request());
        for len in 0..200 {
            let mut frame: Vec<u8> = (0..len).map(|_| byte()).collect();
            // Half of them with a real EtherType and IP header start, to reach the deep checks.
            if len > 16 && len % 2 == 0 {
                frame[12..16].copy_from_slice(&reply[12..16]);
            }
            let _ = parse(&frame);
        }
    }

    #[test]
    fn filler_frames_are_clamped_to_what_ethernet_carries() {
        assert_eq!(filler(OURS.0, 0).as_bytes().len(), MIN_FRAME);
        assert_eq!(filler(OURS.0, 1000).as_bytes().len(), 1000);
        assert_eq!(filler(OURS.0, 100_000).as_bytes().len(), MAX_FRAME);
        assert_eq!(
            filler(OURS.0, 1000).as_bytes()[12..14],
            ETHERTYPE_EXPERIMENTAL.to_be_bytes()
        );
    }
}
