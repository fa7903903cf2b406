//! virtio-blk: a disk image on the host, seen by the guest as a disk.
//!
//! Each request is a descriptor chain laid out as every driver lays it out: a device-readable
//! header (type, reserved, first sector), data buffers, and a device-writable status byte at the
//! very end. The device reads or writes the image file at the sector the header names, and
//! answers with the status byte.
//!
//! What it may touch: the image file, only inside `0..capacity * 512`, and never for writing if
//! the disk is read-only; the guest's buffers of that request.
//!
//! Two guests writing one image would each cache what the other overwrites, and wreck its
//! file system: so a disk holds a lock on its image while it is open (flock, as QEMU does):
//! exclusive to write, shared to only read. Any number of guests may read an image no one
//! writes. Every check (the chain's shape,
//! the sectors' range, every buffer inside guest memory) is made before the file is touched, so
//! a refused request changes nothing.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Seek, SeekFrom};
use std::path::Path;

use anyhow::{bail, Context};
use log::warn;
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestMemoryMmap};

use super::{buffer_len, in_memory, Chain, VirtioDevice, QUEUE_SIZE};

/// Sectors are 512 bytes, whatever the image's own block size (section 5.2.6).
const SECTOR_SIZE: u64 = 512;
/// `struct virtio_blk_outhdr`: request type (u32), reserved (u32), first sector (u64).
const HEADER_SIZE: usize = 16;

/// The virtio block device, backed by an image file.
pub struct Block {
    disk: File,
    read_only: bool,
    capacity_sectors: u64,
    /// The answer to GET_ID: the image's file name, cut to 20 bytes, NUL-padded.
    serial: [u8; VIRTIO_BLK_ID_BYTES as usize],
    config: Vec<u8>,
}

impl Block {
    /// Opens the disk image at `path`, for reading only if `read_only`, and locks it: refused
    /// if another disk (of any guest) writes it, or if this one is to write it and another
    /// reads it.
    pub fn open(path: &Path, read_only: bool) -> anyhow::Result<Block> {
        let disk = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .with_context(|| format!("cannot open disk image {}", path.display()))?;
        let locked = if read_only {
            disk.try_lock_shared()
        } else {
            disk.try_lock()
        };
        match locked {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) if read_only => bail!(
                "disk image {} is in use: another guest writes it",
                path.display()
            ),
            Err(TryLockError::WouldBlock) => bail!(
                "disk image {} is in use by another guest (with ,ro, guests share an image none \
                 writes)",
                path.display()
            ),
            // Some file systems cannot lock; the image is still the user's to share wisely.
            Err(TryLockError::Error(error)) => warn!(
                "cannot lock disk image {}, so nothing stops another guest writing it: {error}",
                path.display()
            ),
        }
        // Seeking to the end measures a block device as well as a file (whose metadata would
        // say 0 for a device); requests use positioned reads and writes, so the offset stays.
        let len = (&disk)
            .seek(SeekFrom::End(0))
            .with_context(|| format!("cannot find the size of disk image {}", path.display()))?;
        if !len.is_multiple_of(SECTOR_SIZE) {
            warn!(
                "disk image {} is not a whole number of sectors; its last {} bytes are unused",
                path.display(),
                len % SECTOR_SIZE
            );
        }
        let capacity_sectors = len / SECTOR_SIZE;
        let mut serial = [0; VIRTIO_BLK_ID_BYTES as usize];
        let name = path.file_name().unwrap_or_default().as_encoded_bytes();
        let serial_len = name.len().min(serial.len());
        serial[..serial_len].copy_from_slice(&name[..serial_len]);

        // struct virtio_blk_config begins: capacity (u64), size_max (u32), seg_max (u32). Only
        // SEG_MAX is offered: a request may have as many data buffers as fit in a queue with its
        // header and status.
        let mut config = capacity_sectors.to_le_bytes().to_vec();
        config.extend_from_slice(&0u32.to_le_bytes());
        config.extend_from_slice(&(u32::from(QUEUE_SIZE) - 2).to_le_bytes());
        Ok(Block {
            disk,
            read_only,
            capacity_sectors,
            serial,
            config,
        })
    }

    /// Serves one request; returns how many bytes it wrote into the guest's buffers, status
    /// byte included (the used length).
    fn serve(&mut self, chain: &Chain, mem: &GuestMemoryMmap) -> u32 {
        let Some((status, request)) = chain.descriptors.split_last() else {
            return 0;
        };
        let status_address = status
            .addr()
            .checked_add(u64::from(status.len()))
            .and_then(|end| end.checked_sub(1));
        let Some(status_address) =
            status_address.filter(|_| status.is_write_only() && status.len() > 0)
        else {
            crate::guest_warn!("virtio-blk: request without a device-writable status byte");
            return 0;
        };
        let (status_code, data_written) = self.execute(request, mem).unwrap_or_else(|refusal| {
            crate::guest_warn!("virtio-blk: request failed: {refusal:#}");
            (VIRTIO_BLK_S_IOERR, 0)
        });
        if mem.write_obj(status_code as u8, status_address).is_err() {
            crate::guest_warn!("virtio-blk: the status byte lies outside guest memory");
            return 0;
        }
        data_written + 1
    }

    /// Carries out a request (its descriptors without the status byte); returns its status and
    /// how many data bytes it wrote to the guest. `Err` means IOERR, and says why.
    fn execute(
        &mut self,
        descriptors: &[Descriptor],
        mem: &GuestMemoryMmap,
    ) -> anyhow::Result<(u32, u32)> {
        let Some((header, data)) = descriptors.split_first() else {
            bail!("no header");
        };
        if header.is_write_only() || buffer_len(header) < HEADER_SIZE {
            bail!("the header is not 16 device-readable bytes");
        }
        let header: [u8; HEADER_SIZE] = mem.read_obj(header.addr()).context("header")?;
        let request_type = u32::from_le_bytes(header[..4].try_into()?);
        let sector = u64::from_le_bytes(header[8..].try_into()?);
        match request_type {
            VIRTIO_BLK_T_IN => Ok((VIRTIO_BLK_S_OK, self.transfer(sector, data, true, mem)?)),
            VIRTIO_BLK_T_OUT if self.read_only => bail!("write to a read-only disk"),
            VIRTIO_BLK_T_OUT => {
                self.transfer(sector, data, false, mem)?;
                Ok((VIRTIO_BLK_S_OK, 0))
            }
            VIRTIO_BLK_T_FLUSH => {
                self.disk.sync_data().context("flush")?;
                Ok((VIRTIO_BLK_S_OK, 0))
            }
            VIRTIO_BLK_T_GET_ID => {
                let id_buffers = Chain {
                    head: 0,
                    descriptors: data.to_vec(),
                };
                let written = id_buffers
                    .scatter_writable(mem, &self.serial)
                    .context("the GET_ID buffer lies outside guest memory")?;
                Ok((VIRTIO_BLK_S_OK, written as u32))
            }
            _ => Ok((VIRTIO_BLK_S_UNSUPP, 0)),
        }
    }

    /// Reads sectors from `sector` on into the data buffers (`into_guest`), or writes them from
    /// the buffers, after checking everything first: buffers all of the right direction and
    /// inside guest memory, holding a whole number of sectors (at least one), all inside the
    /// disk. Returns the bytes moved.
    fn transfer(
        &mut self,
        sector: u64,
        data: &[Descriptor],
        into_guest: bool,
        mem: &GuestMemoryMmap,
    ) -> anyhow::Result<u32> {
        if data.iter().any(|d| d.is_write_only() != into_guest) {
            bail!("a data buffer has the wrong direction");
        }
        if !in_memory(data, mem) {
            bail!("a data buffer lies outside guest memory");
        }
        let len: u64 = data.iter().map(|d| u64::from(d.len())).sum();
        let inside_disk = sector
            .checked_mul(SECTOR_SIZE)
            .and_then(|start| start.checked_add(len))
            .is_some_and(|end| end <= self.capacity_sectors * SECTOR_SIZE);
        if len == 0 || !len.is_multiple_of(SECTOR_SIZE) || !inside_disk {
            bail!(
                "{len} bytes at sector {sector} are not whole sectors inside the {}-sector disk",
                self.capacity_sectors
            );
        }
        let moved = u32::try_from(len)?;
        // Straight between the file and guest memory, with no bounce buffer: the data is copied
        // once, by the kernel's read or write (vm-memory's volatile I/O, bounds-checked).
        self.disk
            .seek(SeekFrom::Start(sector * SECTOR_SIZE))
            .context("disk seek")?;
        for descriptor in data {
            if into_guest {
                mem.read_exact_volatile_from(
                    descriptor.addr(),
                    &mut self.disk,
                    buffer_len(descriptor),
                )
                .context("disk read")?;
            } else {
                mem.write_all_volatile_to(
                    descriptor.addr(),
                    &mut self.disk,
                    buffer_len(descriptor),
                )
                .context("disk write")?;
            }
        }
        Ok(moved)
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn features(&self) -> u64 {
        let read_only = if self.read_only {
            1 << VIRTIO_BLK_F_RO
        } else {
            0
        };
        1 << VIRTIO_BLK_F_FLUSH | 1 << VIRTIO_BLK_F_SEG_MAX | read_only
    }

    fn queue_count(&self) -> u16 {
        1
    }

    fn config(&self) -> &[u8] {
        &self.config
    }

    fn process_queue(
        &mut self,
        _index: u16,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<(), virtio_queue::Error> {
        Chain::serve_each(queue, mem, |chain| self.serve(chain, mem))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::TestDriver;
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};
    use vm_memory::GuestAddress;

    /// A disk image in the temporary directory, removed when dropped.
    struct TempDisk(PathBuf);

    impl TempDisk {
        fn new(contents: &[u8]) -> TempDisk {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let name = format!(
                "lguest-blk-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::SeqCst)
            );
            let path = std::env::temp_dir().join(name);
            std::fs::write(&path, contents).unwrap();
            TempDisk(path)
        }

        fn contents(&self) -> Vec<u8> {
            std::fs::read(&self.0).unwrap()
        }
    }

    impl Drop for TempDisk {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// Four sectors: sector n is filled with byte n + 1.
    fn disk_image() -> Vec<u8> {
        (1..=4u8).flat_map(|n| [n; 512]).collect()
    }

    fn header(request_type: u32, sector: u64) -> Vec<u8> {
        [
            &request_type.to_le_bytes()[..],
            &0u32.to_le_bytes(),
            &sector.to_le_bytes(),
        ]
        .concat()
    }

    /// Sends one request with the given data buffers; returns (status, used length).
    fn request(
        driver: &mut TestDriver,
        request_type: u32,
        sector: u64,
        data: &[(GuestAddress, u32, bool)],
    ) -> (u8, u32) {
        let header = driver.alloc_with(&header(request_type, sector));
        let status = driver.alloc_with(&[0xff]);
        let chain = [&[(header, 16, false)], data, &[(status, 1, true)]].concat();
        driver.add_chain(0, &chain);
        driver.notify(0);
        let used = *driver.used(0).last().unwrap();
        (driver.read_bytes(status, 1)[0], used.1)
    }

    #[test]
    fn offers_capacity_flush_and_read_only() {
        let disk = TempDisk::new(&disk_image());
        let mut driver = TestDriver::new(Box::new(Block::open(&disk.0, true).unwrap()));
        let mut capacity = [0; 8];
        driver.transport().read(0x100, &mut capacity);
        assert_eq!(u64::from_le_bytes(capacity), 4);
        let features = driver.device_features();
        assert_ne!(features & 1 << VIRTIO_BLK_F_RO, 0);
        assert_ne!(features & 1 << VIRTIO_BLK_F_FLUSH, 0);
        drop(driver);
        let writable =
            TestDriver::new(Box::new(Block::open(&disk.0, false).unwrap())).device_features();
        assert_eq!(writable & 1 << VIRTIO_BLK_F_RO, 0);
        assert!(Block::open(Path::new("/nonexistent/disk.img"), true).is_err());
    }

    #[test]
    fn one_writer_or_many_readers() {
        let disk = TempDisk::new(&disk_image());
        let error = |read_only| format!("{:#}", Block::open(&disk.0, read_only).err().unwrap());
        let writer = Block::open(&disk.0, false).unwrap();
        let name = disk.0.display();
        assert_eq!(
            error(false),
            format!(
                "disk image {name} is in use by another guest (with ,ro, guests share an image \
                 none writes)"
            )
        );
        assert_eq!(
            error(true),
            format!("disk image {name} is in use: another guest writes it")
        );
        drop(writer);
        let readers = [true, true].map(|ro| Block::open(&disk.0, ro).unwrap());
        assert!(error(false).contains("is in use"));
        drop(readers);
        Block::open(&disk.0, false).unwrap();
    }

    #[test]
    fn read_write_flush_and_get_id_round_trip() {
        let disk = TempDisk::new(&disk_image());
        let mut driver = TestDriver::start(Box::new(Block::open(&disk.0, false).unwrap()));

        // Read sectors 1 and 2 into two buffers.
        let (first, second) = (driver.alloc(512), driver.alloc(512));
        let reply = request(
            &mut driver,
            VIRTIO_BLK_T_IN,
            1,
            &[(first, 512, true), (second, 512, true)],
        );
        assert_eq!(reply, (VIRTIO_BLK_S_OK as u8, 1025));
        assert_eq!(driver.read_bytes(first, 512), vec![2; 512]);
        assert_eq!(driver.read_bytes(second, 512), vec![3; 512]);

        // Write sector 3, then read it back from the file.
        let data = driver.alloc_with(&[0xab; 512]);
        let reply = request(&mut driver, VIRTIO_BLK_T_OUT, 3, &[(data, 512, false)]);
        assert_eq!(reply, (VIRTIO_BLK_S_OK as u8, 1));
        let mut expected = disk_image();
        expected[3 * 512..].fill(0xab);
        assert_eq!(disk.contents(), expected);

        assert_eq!(
            request(&mut driver, VIRTIO_BLK_T_FLUSH, 0, &[]).0,
            VIRTIO_BLK_S_OK as u8
        );

        let id = driver.alloc(20);
        let reply = request(&mut driver, VIRTIO_BLK_T_GET_ID, 0, &[(id, 20, true)]);
        assert_eq!(reply, (VIRTIO_BLK_S_OK as u8, 21));
        let name = disk.0.file_name().unwrap().as_encoded_bytes();
        let mut serial = [0; 20];
        let len = name.len().min(20);
        serial[..len].copy_from_slice(&name[..len]);
        assert_eq!(driver.read_bytes(id, 20), serial);

        assert_eq!(
            request(&mut driver, 99, 0, &[]).0,
            VIRTIO_BLK_S_UNSUPP as u8
        );
        assert_eq!(driver.interrupts(), 5);
    }

    #[test]
    fn refused_requests_leave_the_disk_unchanged() {
        let disk = TempDisk::new(&disk_image());
        let mut driver = TestDriver::start(Box::new(Block::open(&disk.0, false).unwrap()));
        let data = driver.alloc_with(&[0xee; 1024]);
        let ioerr = (VIRTIO_BLK_S_IOERR as u8, 1);
        let beyond_memory = GuestAddress(TestDriver::MEM_SIZE);
        // Past the end, straddling the end, a sector number that overflows.
        for sector in [4, 3, u64::MAX / 256] {
            assert_eq!(
                request(
                    &mut driver,
                    VIRTIO_BLK_T_OUT,
                    sector,
                    &[(data, 1024, false)]
                ),
                ioerr
            );
        }
        // Not a whole sector, a zero-length buffer, a 2 GiB one, one outside memory, a
        // device-writable buffer for a write.
        for buffer in [
            (data, 100, false),
            (data, 0, false),
            (data, 0x8000_0000, false),
            (beyond_memory, 512, false),
            (data, 512, true),
        ] {
            assert_eq!(request(&mut driver, VIRTIO_BLK_T_OUT, 0, &[buffer]), ioerr);
        }
        // A chain of 4 GiB or more is illegal (virtio 1.2, 2.7.5.2): virtio-queue's iterator
        // ends it at the descriptor that crosses the limit, so the status byte is never seen
        // and the chain comes back untouched, with used length 0.
        let untouched = (0xff, 0);
        assert_eq!(
            request(&mut driver, VIRTIO_BLK_T_OUT, 0, &[(data, u32::MAX, false)]),
            untouched
        );
        assert_eq!(
            request(&mut driver, VIRTIO_BLK_T_IN, 0, &[(data, 4096, true)]),
            ioerr
        );
        assert_eq!(disk.contents(), disk_image());

        let read_only = TempDisk::new(&disk_image());
        let mut driver = TestDriver::start(Box::new(Block::open(&read_only.0, true).unwrap()));
        let data = driver.alloc_with(&[0xee; 512]);
        assert_eq!(
            request(&mut driver, VIRTIO_BLK_T_OUT, 0, &[(data, 512, false)]),
            ioerr
        );
        assert_eq!(read_only.contents(), disk_image());
    }

    #[test]
    fn malformed_chains_get_ioerr_or_nothing() {
        let disk = TempDisk::new(&disk_image());
        let mut driver = TestDriver::start(Box::new(Block::open(&disk.0, false).unwrap()));
        let header = driver.alloc_with(&header(VIRTIO_BLK_T_IN, 0));
        let status = driver.alloc_with(&[0xff]);
        let beyond_memory = GuestAddress(TestDriver::MEM_SIZE + 0x100);
        // A status byte alone, a short header, a device-writable header: IOERR.
        for chain in [
            vec![(status, 1, true)],
            vec![(header, 8, false), (status, 1, true)],
            vec![(header, 16, true), (status, 1, true)],
        ] {
            driver.mem.write_obj(0xffu8, status).unwrap();
            driver.add_chain(0, &chain);
            driver.notify(0);
            assert_eq!(driver.used(0).last().unwrap().1, 1);
            assert_eq!(driver.read_bytes(status, 1)[0], VIRTIO_BLK_S_IOERR as u8);
        }
        // No status byte, a read-only "status", a zero-length status, one outside memory:
        // nothing to answer with, so the chain comes back with used length 0.
        for chain in [
            vec![(header, 16, false)],
            vec![(header, 16, false), (status, 1, false)],
            vec![(header, 16, false), (status, 0, true)],
            vec![(header, 16, false), (beyond_memory, 1, true)],
        ] {
            driver.add_chain(0, &chain);
            driver.notify(0);
            assert_eq!(driver.used(0).last().unwrap().1, 0);
        }
        assert_eq!(driver.used(0).len(), 7);
        assert_eq!(disk.contents(), disk_image());
    }
}
