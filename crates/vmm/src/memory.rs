//! Guest RAM: one sealed memfd per guest generation, mapped into the VMM and into KVM, and
//! exported read-only for diagnosis.
//!
//! The memfd is sealed in two steps. At creation, against growing and shrinking (so a
//! mapping of it never faults with `SIGBUS`). Once the VMM's own shared, writable mapping
//! exists, against *future* writes (`F_SEAL_FUTURE_WRITE`, Linux 5.1): from then on no
//! new writable shared mapping of it can be made and `write(2)` on it fails, through any
//! descriptor — even one reopened `O_RDWR` through `/proc/<pid>/fd` — while the mapping
//! made before the seal (the VMM's, which KVM also runs the guest on) keeps writing. So
//! the only writer of guest RAM is the VMM's mapping, and a diagnosis worker holding a
//! descriptor of it cannot become another, whatever it does with that descriptor.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::Ordering;

use ambulance_abi::boot::ram_layout;
use ambulance_ram::{GuestRam, RamRegion};
use memfd::{FileSeal, MemfdOptions};
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use crate::error::{Error, Result};

/// The RAM of one guest generation.
pub(crate) struct Ram {
    memfd: memfd::Memfd,
    pub(crate) mem: GuestMemoryMmap,
    pub(crate) regions: Vec<RamRegion>,
}

impl Ram {
    /// Creates and maps `size` bytes of zeroed RAM laid out as `abi::boot::ram_layout` says.
    pub(crate) fn new(guest: &str, size: u64) -> Result<Ram> {
        let fail = |detail: String| Error::Memory {
            guest: guest.to_string(),
            size,
            detail,
        };
        let memfd = MemfdOptions::new()
            .allow_sealing(true)
            .close_on_exec(true)
            .create(format!("ambulance-ram-{guest}"))
            .map_err(|e| fail(format!("memfd_create: {e}")))?;
        memfd
            .as_file()
            .set_len(size)
            .map_err(|e| fail(format!("sizing the memfd: {e}")))?;
        memfd
            .add_seals(&[FileSeal::SealShrink, FileSeal::SealGrow])
            .map_err(|e| fail(format!("sealing the memfd: {e}")))?;

        let (layout, count) = ram_layout(size);
        let mut regions = Vec::with_capacity(count as usize);
        let mut ranges = Vec::with_capacity(count as usize);
        let mut offset = 0u64;
        for r in &layout[..count as usize] {
            regions.push(RamRegion {
                gpa: r.gpa,
                size: r.size,
                file_offset: offset,
            });
            let file = memfd
                .as_file()
                .try_clone()
                .map_err(|e| fail(format!("duplicating the memfd: {e}")))?;
            ranges.push((
                GuestAddress(r.gpa),
                r.size as usize,
                Some(FileOffset::new(file, offset)),
            ));
            offset += r.size;
        }
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files(ranges)
            .map_err(|e| fail(format!("mapping guest RAM: {e}")))?;
        // Our mapping exists (shared, writable): seal the memfd against every later
        // writable mapping and write, and the seals themselves against change.
        memfd
            .add_seals(&[FileSeal::SealFutureWrite, FileSeal::SealSeal])
            .map_err(|e| fail(format!("sealing the memfd against future writes: {e}")))?;
        Ok(Ram {
            memfd,
            mem,
            regions,
        })
    }

    /// Total size in bytes.
    pub(crate) fn size(&self) -> u64 {
        self.regions.iter().map(|r| r.size).sum()
    }

    /// Host addresses of the regions for KVM: `(slot, gpa, size, host address)`.
    pub(crate) fn kvm_slots(&self) -> Vec<(u32, u64, u64, u64)> {
        self.mem
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let host = r
                    .get_host_address(vm_memory::MemoryRegionAddress(0))
                    .expect("offset 0 is inside every region") as u64;
                (i as u32, r.start_addr().0, r.len(), host)
            })
            .collect()
    }

    /// Whether `[gpa, gpa + len)` lies entirely inside one RAM region.
    pub(crate) fn contains(&self, gpa: u64, len: u64) -> bool {
        self.regions
            .iter()
            .any(|r| gpa >= r.gpa && gpa - r.gpa <= r.size && len <= r.size - (gpa - r.gpa))
    }

    /// Copies guest RAM into `buf`; `None` when the range is not entirely RAM.
    pub(crate) fn read(&self, gpa: u64, buf: &mut [u8]) -> Option<()> {
        if !self.contains(gpa, buf.len() as u64) {
            return None;
        }
        self.mem.read_slice(buf, GuestAddress(gpa)).ok()
    }

    /// Writes guest RAM (boot-time setup only).
    pub(crate) fn write(&self, gpa: u64, bytes: &[u8]) -> Option<()> {
        if !self.contains(gpa, bytes.len() as u64) {
            return None;
        }
        self.mem.write_slice(bytes, GuestAddress(gpa)).ok()
    }

    /// An atomic load of the naturally aligned `u64` at `gpa`.
    pub(crate) fn load_u64(&self, gpa: u64) -> Option<u64> {
        if !gpa.is_multiple_of(8) || !self.contains(gpa, 8) {
            return None;
        }
        self.mem
            .load::<u64>(GuestAddress(gpa), Ordering::Relaxed)
            .ok()
    }

    /// Guest-virtual → guest-physical through the `levels`-level (4 or 5) page tables at
    /// guest-physical `root`, honouring present bits and 1 GiB / 2 MiB pages; `None` when
    /// `va` is not mapped or a table lies outside RAM. One read per level at most, so the
    /// walk ends whatever the guest wrote into its tables.
    pub(crate) fn translate(&self, root: u64, va: u64, levels: u32) -> Option<u64> {
        const ADDR: u64 = 0x000f_ffff_ffff_f000;
        const PRESENT: u64 = 1;
        const LARGE: u64 = 1 << 7;
        let mut table = root & ADDR;
        for level in (0..levels).rev() {
            let shift = 12 + 9 * level;
            let entry = self.load_u64(table + ((va >> shift) & 0x1ff) * 8)?;
            if entry & PRESENT == 0 {
                return None;
            }
            // A leaf: a page table entry, or a large page at the PD (2 MiB) or PDPT
            // (1 GiB) level.
            if level == 0 || ((1..=2).contains(&level) && entry & LARGE != 0) {
                let offset = (1u64 << shift) - 1;
                return Some((entry & ADDR & !offset) | (va & offset));
            }
            table = entry & ADDR;
        }
        None
    }

    /// A new `O_RDONLY` descriptor of the memfd and the layout.
    ///
    /// The descriptor is the memfd reopened through `/proc/self/fd`; the memfd is sealed
    /// against growing and shrinking, so a mapping of it never faults with `SIGBUS`, and
    /// against future writes, so no descriptor of it can map it writable. It
    /// keeps the memory alive after the guest is destroyed or restarted (it then shows
    /// the RAM of the generation it was exported from).
    pub(crate) fn export(&self, guest: &str) -> Result<GuestRam> {
        let path = format!("/proc/self/fd/{}", self.memfd.as_file().as_raw_fd());
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|source| Error::Io {
                guest: guest.to_string(),
                op: "reopening guest RAM read-only",
                source,
            })?;
        GuestRam::new(file, self.regions.clone()).map_err(|e| Error::Memory {
            guest: guest.to_string(),
            size: self.size(),
            detail: format!("exporting guest RAM read-only: {e}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    /// After the seal, no descriptor of the memfd — the exported one, nor one reopened
    /// `O_RDWR` through `/proc/self/fd` as a worker might try — can write it or map it
    /// writable; the VMM's own mapping still writes, and the export sees what it wrote.
    #[test]
    fn ram_is_sealed_against_every_writer_but_our_mapping() {
        let ram = Ram::new("seal", 4 << 20).unwrap();
        let seals = ram.memfd.seals().unwrap();
        assert!(seals.contains(&FileSeal::SealFutureWrite), "{seals:?}");
        assert!(seals.contains(&FileSeal::SealSeal), "{seals:?}");

        ram.write(0x1000, b"guest").unwrap();
        let exported = ram.export("seal").unwrap();
        let mut buf = [0u8; 5];
        exported.file().read_exact_at(&mut buf, 0x1000).unwrap();
        assert_eq!(&buf, b"guest");

        let path = format!("/proc/self/fd/{}", exported.file().as_raw_fd());
        let rw = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let err = rw.write_at(b"evil!", 0x1000).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
        // SAFETY: a fresh mapping request the kernel refuses; on success it would be a
        // mapping we own and unmap below without touching it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                rw.as_raw_fd(),
                0,
            )
        };
        let err = std::io::Error::last_os_error();
        if p != libc::MAP_FAILED {
            // SAFETY: `p` is the 4 KiB mapping just made, not referenced anywhere else.
            unsafe { libc::munmap(p, 4096) };
            panic!("the sealed memfd was mapped shared and writable");
        }
        assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");

        ram.write(0x1000, b"again").unwrap();
        exported.file().read_exact_at(&mut buf, 0x1000).unwrap();
        assert_eq!(&buf, b"again");
    }
}
