//! virtio-net: the guest's network card, wired to a tap interface on the host.
//!
//! Every frame on a virtio-net queue starts with a 12-byte `virtio_net_hdr_v1` (offloads, which
//! are not offered here, so it is all zeros but for `num_buffers`). A tap opened with
//! IFF_VNET_HDR and a 12-byte header size puts the same header in front of its frames, so frames
//! pass through unchanged: a transmitq chain is written to the tap as one frame, and a frame read
//! from the tap (by the device's input thread, or when the guest adds receive buffers) fills one
//! receiveq chain. A frame that finds no receive buffer stays in the tap.
//!
//! What it may touch: the tap and the guest's buffers.

use std::ffi::CString;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::mem::{offset_of, size_of};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::str::FromStr;

use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    virtio_net_config, virtio_net_hdr_v1, VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS,
    VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::rng::fill_random;
use super::{Chain, InputState, VirtioDevice, RECEIVE_QUEUE};

const TRANSMIT_QUEUE: u16 = 1;
/// The virtio-net header in front of every frame, in both directions and on the tap.
const VNET_HDR_LEN: usize = size_of::<virtio_net_hdr_v1>();
/// The largest frame handled: a header and 64 KiB, more than any frame without offloads.
const MAX_FRAME: usize = VNET_HDR_LEN + 64 * 1024;

/// A network card's MAC address, written as `52:54:00:12:34:56`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

/// In the first byte: set for a group (multicast) address, which no card may have.
const MAC_GROUP: u8 = 0b01;
/// In the first byte: set for a locally administered address, one no vendor assigned.
const MAC_LOCAL: u8 = 0b10;

impl Mac {
    /// A random locally administered unicast address: no vendor's card has it, and two guests
    /// on one bridge do not collide (one fixed address for every guest would).
    pub fn random() -> io::Result<Mac> {
        let mut bytes = [0; 6];
        fill_random(&mut bytes)?;
        bytes[0] = (bytes[0] & !MAC_GROUP) | MAC_LOCAL;
        Ok(Mac(bytes))
    }
}

impl FromStr for Mac {
    type Err = String;

    /// Six two-digit hex numbers joined by colons; a card's, so not a group address nor zero.
    fn from_str(text: &str) -> Result<Mac, String> {
        let mut bytes = [0; 6];
        let mut parts = text.split(':');
        for byte in &mut bytes {
            *byte = parts
                .next()
                .filter(|part| part.len() == 2 && part.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|part| u8::from_str_radix(part, 16).ok())
                .ok_or_else(|| format!("'{text}' is not a MAC address like 52:54:00:12:34:56"))?;
        }
        if parts.next().is_some() {
            return Err(format!(
                "'{text}' is not a MAC address like 52:54:00:12:34:56"
            ));
        }
        if bytes[0] & MAC_GROUP != 0 {
            return Err(format!(
                "{text} is a multicast address, which no card may have"
            ));
        }
        if bytes == [0; 6] {
            return Err(format!("{text} is no card's address"));
        }
        Ok(Mac(bytes))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// The virtio network device, backed by a tap.
pub struct Net {
    tap: File,
    config: Vec<u8>,
    /// Where a frame read from the tap lands before it is copied to the guest.
    frame: Vec<u8>,
}

impl Net {
    /// A network device with address `mac` on `tap`, which must be non-blocking ([`open_tap`]
    /// makes it so) and must give and take one frame, with its 12-byte virtio-net header, per
    /// read and write.
    pub fn new(tap: File, mac: Mac) -> Net {
        let mut config = vec![0; size_of::<virtio_net_config>()];
        let at = offset_of!(virtio_net_config, mac);
        config[at..at + 6].copy_from_slice(&mac.0);
        let status = offset_of!(virtio_net_config, status);
        config[status..status + 2].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        Net {
            tap,
            config,
            frame: vec![0; MAX_FRAME],
        }
    }

    /// Writes each transmitq chain to the tap as one frame.
    fn transmit(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<(), virtio_queue::Error> {
        Chain::serve_each(queue, mem, |chain| {
            match chain.gather_readable(mem, MAX_FRAME) {
                Some(frame) if frame.len() > VNET_HDR_LEN => {
                    if let Err(error) = self.tap.write(&frame) {
                        crate::guest_warn!("virtio-net: a frame from the guest was lost: {error}");
                    }
                }
                _ => crate::guest_warn!(
                    "virtio-net: a transmit chain is too short, too long or outside guest memory"
                ),
            }
            0
        })
    }

    /// Moves frames from the tap into receiveq chains while there are both.
    fn receive_frames(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<InputState, virtio_queue::Error> {
        for _ in 0..queue.size() {
            // A buffer first, then a frame: without a buffer the frame stays in the tap.
            let Some(chain) = Chain::pop(queue, mem)? else {
                return Ok(InputState::GuestFull);
            };
            let len = match self.tap.read(&mut self.frame) {
                Ok(len) => len,
                Err(error) => {
                    queue.go_to_previous_position();
                    return Ok(match error.kind() {
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => {
                            InputState::Drained
                        }
                        _ => {
                            crate::guest_warn!("virtio-net: cannot read from the tap: {error}");
                            InputState::Closed
                        }
                    });
                }
            };
            let written = if len < VNET_HDR_LEN || len as u64 > chain.writable_len() {
                crate::guest_warn!(
                    "virtio-net: dropped a {len}-byte frame that does not fit the guest's buffer"
                );
                0
            } else {
                // Without VIRTIO_NET_F_MRG_RXBUF a frame always fills exactly one chain.
                let num_buffers = offset_of!(virtio_net_hdr_v1, num_buffers);
                self.frame[num_buffers..num_buffers + 2].copy_from_slice(&1u16.to_le_bytes());
                chain
                    .scatter_writable(mem, &self.frame[..len])
                    .unwrap_or_else(|| {
                        crate::guest_warn!(
                            "virtio-net: a receive buffer lies outside guest memory"
                        );
                        0
                    })
            };
            queue.add_used(mem, chain.head, written as u32)?;
        }
        Ok(InputState::Drained)
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_STATUS
    }

    fn queue_count(&self) -> u16 {
        2
    }

    fn config(&self) -> &[u8] {
        &self.config
    }

    fn process_queue(
        &mut self,
        index: u16,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<(), virtio_queue::Error> {
        match index {
            RECEIVE_QUEUE => self.receive_frames(queue, mem).map(drop),
            TRANSMIT_QUEUE => self.transmit(queue, mem),
            _ => Ok(()),
        }
    }

    fn input_fd(&self) -> Option<RawFd> {
        Some(self.tap.as_raw_fd())
    }

    fn receive_input(
        &mut self,
        receive_queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<InputState, virtio_queue::Error> {
        self.receive_frames(receive_queue, mem)
    }
}

/// Opens the existing tap interface `name` (created beforehand, e.g. with `ip tuntap add`),
/// non-blocking, with 12-byte virtio-net headers on its frames.
///
/// TUNSETIFF would create a missing tap rather than fail, and that tap would vanish with the
/// launcher, attached to no bridge: a guest on a network no one can reach, and no word why. So
/// the interface must exist first, as the kernel knows it in the launcher's network namespace
/// (if_nametoindex asks it through a socket; /sys/class/net shows the namespace sysfs was
/// mounted in, which may be another).
pub fn open_tap(name: &str) -> io::Result<File> {
    let failed = |step: &str, error: io::Error| {
        io::Error::new(error.kind(), format!("cannot {step} tap {name}: {error}"))
    };
    let c_name = CString::new(name)
        .ok()
        .filter(|_| !name.is_empty() && name.len() < libc::IFNAMSIZ)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name:?} is not a network interface name"),
            )
        })?;
    // SAFETY: `c_name` is a NUL-terminated string that lives across the call, which only reads
    // it.
    if unsafe { libc::if_nametoindex(c_name.as_ptr()) } == 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "there is no network interface {name}: create the tap first (ip tuntap add \
                 {name} mode tap)"
            ),
        ));
    }
    let tap = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/net/tun")
        .map_err(|error| failed("open /dev/net/tun for", error))?;

    // SAFETY: ifreq is plain C data (a name array and a union of integers and addresses), for
    // which all-zero bytes are a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (to, &from) in request.ifr_name.iter_mut().zip(name.as_bytes()) {
        *to = from as libc::c_char;
    }
    request.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: `tap` is an open tun device; TUNSETIFF reads and writes one struct ifreq, and
    // `request` is a valid ifreq, exclusively borrowed for the duration of the call.
    if unsafe { libc::ioctl(tap.as_raw_fd(), libc::TUNSETIFF, &mut request) } < 0 {
        return Err(failed("attach to", io::Error::last_os_error()));
    }
    let header_len = VNET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which points to `header_len`,
    // alive for the duration of the call.
    if unsafe { libc::ioctl(tap.as_raw_fd(), libc::TUNSETVNETHDRSZ, &header_len) } < 0 {
        return Err(failed(
            "set the virtio-net header size of",
            io::Error::last_os_error(),
        ));
    }
    Ok(tap)
}

#[cfg(test)]
mod tests {
    use super::super::testing::TestDriver;
    use super::*;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixDatagram;

    /// A started net device whose "tap" is one end of a datagram socket pair, which keeps frame
    /// boundaries as a tap does; the other end is returned, as the host network.
    fn net() -> (TestDriver, UnixDatagram) {
        let (network, tap) = UnixDatagram::pair().unwrap();
        tap.set_nonblocking(true).unwrap();
        network.set_nonblocking(true).unwrap();
        let device = Net::new(File::from(OwnedFd::from(tap)), MAC);
        (TestDriver::start(Box::new(device)), network)
    }

    const MAC: Mac = Mac([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);

    fn frame(payload: &[u8]) -> Vec<u8> {
        [&[0; VNET_HDR_LEN][..], payload].concat()
    }

    #[test]
    fn offers_a_mac_and_link_up() {
        let (driver, _network) = net();
        let mut config = [0; 8];
        driver.transport().read(0x100, &mut config);
        assert_eq!(config, [0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 1, 0]);
    }

    #[test]
    fn transmitted_chains_become_one_frame_each() {
        let (mut driver, network) = net();
        let header = driver.alloc_with(&[0; VNET_HDR_LEN]);
        let payload = driver.alloc_with(b"an ethernet frame");
        driver.add_chain(1, &[(header, 12, false), (payload, 17, false)]);
        // A header alone is not a frame; nor is a buffer outside guest memory.
        driver.add_chain(1, &[(header, 12, false)]);
        driver.add_chain(
            1,
            &[
                (header, 12, false),
                (vm_memory::GuestAddress(1 << 40), 64, false),
            ],
        );
        driver.notify(1);
        assert_eq!(driver.used(1), vec![(0, 0), (2, 0), (3, 0)]);
        let mut received = [0; 64];
        let len = network.recv(&mut received).unwrap();
        assert_eq!(received[..len], frame(b"an ethernet frame"));
        assert!(
            network.recv(&mut received).is_err(),
            "only one frame was sent"
        );
    }

    #[test]
    fn received_frames_fill_receive_buffers() {
        let (mut driver, network) = net();
        let buffer = driver.alloc(1526);
        driver.add_chain(0, &[(buffer, 1526, true)]);
        network.send(&frame(b"hello guest")).unwrap();
        // The guest's one buffer is used up, so the input thread would stop watching the tap
        // until the guest adds more.
        assert_eq!(driver.transport().receive_input(), InputState::GuestFull);
        assert_eq!(driver.used(0), vec![(0, 23)]);
        let mut expected = frame(b"hello guest");
        expected[10] = 1; // num_buffers
        assert_eq!(driver.read_bytes(buffer, 23), expected);
        assert_eq!(driver.interrupts(), 1);
    }

    #[test]
    fn frames_wait_in_the_tap_for_buffers() {
        let (mut driver, network) = net();
        network.send(&frame(b"first")).unwrap();
        assert_eq!(driver.transport().receive_input(), InputState::GuestFull);
        assert!(driver.used(0).is_empty());
        // A buffer too small for the frame: the frame is dropped, the buffer returned empty.
        let small = driver.alloc(8);
        driver.add_chain(0, &[(small, 8, true)]);
        let buffer = driver.alloc(64);
        driver.add_chain(0, &[(buffer, 64, true)]);
        network.send(&frame(b"second")).unwrap();
        driver.notify(0);
        assert_eq!(driver.used(0), vec![(0, 0), (1, 18)]);
        assert_eq!(driver.read_bytes(buffer, 18)[12..], *b"second");
    }

    #[test]
    fn bad_tap_names_are_refused() {
        for name in ["a-name-far-too-long", "", "nul\0"] {
            let error = open_tap(name).unwrap_err();
            assert!(
                error.to_string().contains("not a network interface name"),
                "{error}"
            );
        }
    }

    #[test]
    fn a_missing_tap_is_not_created() {
        let error = open_tap("lgnosuchtap9").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
        assert_eq!(
            error.to_string(),
            "there is no network interface lgnosuchtap9: create the tap first (ip tuntap add \
             lgnosuchtap9 mode tap)"
        );
    }

    #[test]
    fn macs_are_written_and_read_as_people_do() {
        let mac: Mac = "52:54:00:AB:cd:0f".parse().unwrap();
        assert_eq!(mac, Mac([0x52, 0x54, 0x00, 0xab, 0xcd, 0x0f]));
        assert_eq!(mac.to_string(), "52:54:00:ab:cd:0f");
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52-54-00-12-34-56",
            "52:54:00:12:34:5",
            "52:54:00:12:34:+5",
            "52:54:00:12:34:5g",
            "525400123456",
        ] {
            let error = bad.parse::<Mac>().unwrap_err();
            assert!(
                error.ends_with("like 52:54:00:12:34:56"),
                "{bad:?}: {error}"
            );
        }
        assert_eq!(
            "01:00:5e:00:00:01".parse::<Mac>().unwrap_err(),
            "01:00:5e:00:00:01 is a multicast address, which no card may have"
        );
        assert!("00:00:00:00:00:00".parse::<Mac>().is_err());
    }

    #[test]
    fn random_macs_are_local_unicast_and_differ() {
        let macs: Vec<Mac> = (0..8).map(|_| Mac::random().unwrap()).collect();
        for mac in &macs {
            assert_eq!(mac.0[0] & (MAC_GROUP | MAC_LOCAL), MAC_LOCAL, "{mac}");
            assert_eq!(mac.to_string().parse::<Mac>(), Ok(*mac));
        }
        assert!(macs.windows(2).any(|pair| pair[0] != pair[1]), "{macs:?}");
    }
}
