//! A network of one tap device, in a network namespace of its own, for `devices-net-ping`.
//!
//! The guest's virtio-net device is backed by a tap device (`lguest-launcher --net tap=NAME`).
//! The test makes that tap itself before starting the launcher: persistent, with the address the
//! guest pings, and up. It does so in a fresh network namespace, so nothing of the test machine's
//! own networking is touched and everything goes when the namespace's last process ends. Setting
//! an address takes an ioctl on any socket of the namespace (SIOCSIFADDR), as ifconfig does.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::Context;
use nix::errno::Errno;

/// Moves the calling process into a new, empty network namespace. Only for a process of its
/// own (a child from `scenarios::in_child`): a namespace cannot be left again.
pub fn enter_new() -> anyhow::Result<()> {
    // SAFETY: unshare changes only this process's namespaces; it is single-threaded here.
    Errno::result(unsafe { libc::unshare(libc::CLONE_NEWNET) }).context("unshare(CLONE_NEWNET)")?;
    Ok(())
}

/// An `ifreq` with a name and room for the union the requests below use.
fn ifreq(name: &str) -> anyhow::Result<libc::ifreq> {
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    anyhow::ensure!(
        name.len() < req.ifr_name.len(),
        "interface name {name:?} is too long"
    );
    for (slot, byte) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    Ok(req)
}

/// Creates tap device `name` (persistent, so it outlives this file and waits for the launcher),
/// gives it `address`/24 and brings it up.
pub fn create_tap(name: &str, address: [u8; 4]) -> anyhow::Result<()> {
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("open /dev/net/tun")?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes the ifreq we pass; TUNSETPERSIST takes an integer.
    unsafe {
        Errno::result(libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req))
            .context("TUNSETIFF")?;
        Errno::result(libc::ioctl(tun.as_raw_fd(), libc::TUNSETPERSIST, 1))
            .context("TUNSETPERSIST")?;
    }
    // SAFETY: socket() has no memory effects; the descriptor is owned by `socket` below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    Errno::result(raw).context("socket(AF_INET)")?;
    // SAFETY: `raw` is a new descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    let sockaddr = |octets: [u8; 4]| {
        // SAFETY: sockaddr_in is plain old data; all zeroes is a valid value.
        let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_addr.s_addr = u32::from_ne_bytes(octets);
        // SAFETY: sockaddr_in fits in sockaddr (16 bytes each), as the ioctls expect.
        unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
    };
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr(address);
    // SAFETY: each ioctl reads (and SIOCGIFFLAGS writes) the ifreq we pass.
    unsafe {
        Errno::result(libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFADDR, &req))
            .context("SIOCSIFADDR")?;
        req.ifr_ifru.ifru_netmask = sockaddr([255, 255, 255, 0]);
        Errno::result(libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFNETMASK, &req))
            .context("SIOCSIFNETMASK")?;
        Errno::result(libc::ioctl(
            socket.as_raw_fd(),
            libc::SIOCGIFFLAGS,
            &mut req,
        ))
        .context("SIOCGIFFLAGS")?;
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        Errno::result(libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &req))
            .context("SIOCSIFFLAGS")?;
    }
    Ok(())
}
