//! Guest RAM as the host hands it to diagnosis: one file, opened read-only, and the
//! guest-physical regions it holds.
//!
//! Whoever runs a guest — Ambulance's own VMM (a memfd per guest) or QEMU (its
//! `memory-backend-file`) — describes the guest's RAM the same way: a [`GuestRam`], that
//! is an `O_RDONLY` file descriptor and the [`RamRegion`]s of guest-physical memory laid
//! out in it. The supervisor passes it to the diagnosis worker (the descriptor over
//! `SCM_RIGHTS`, the regions in the request); the worker maps it read-only. A descriptor
//! opened for writing is refused here, so no diagnosis can ever hold one.

#![forbid(unsafe_code)]

use std::fs::File;
use std::os::fd::AsFd;

use serde::{Deserialize, Serialize};

/// Why a [`GuestRam`] cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum RamError {
    /// The descriptor allows writing; diagnosis only accepts `O_RDONLY`.
    #[error("the guest RAM descriptor is writable; diagnosis only accepts one opened O_RDONLY")]
    Writable,
    /// A region does not fit the file or overlaps another.
    #[error("guest RAM region at guest-physical {gpa:#x} ({size} bytes at file offset {file_offset:#x}): {reason}")]
    Region {
        /// Guest-physical start.
        gpa: u64,
        /// Length.
        size: u64,
        /// Offset in the file.
        file_offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The file could not be inspected or duplicated.
    #[error("guest RAM file: cannot {op}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// One range of guest-physical RAM and where it lies in the RAM file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RamRegion {
    /// Guest-physical start.
    pub gpa: u64,
    /// Length in bytes.
    pub size: u64,
    /// Offset of `gpa` in the RAM file.
    pub file_offset: u64,
}

impl RamRegion {
    /// The region of `size` bytes at guest-physical `gpa`, stored at `file_offset`.
    pub const fn new(gpa: u64, size: u64, file_offset: u64) -> RamRegion {
        RamRegion {
            gpa,
            size,
            file_offset,
        }
    }

    /// The guest-physical address just past the region (saturating).
    pub fn end(&self) -> u64 {
        self.gpa.saturating_add(self.size)
    }

    /// Whether guest-physical `gpa` lies in the region.
    pub fn contains(&self, gpa: u64) -> bool {
        gpa >= self.gpa && gpa - self.gpa < self.size
    }
}

/// A guest's RAM for diagnosis: a read-only file and its regions, checked to be
/// consistent (ascending, disjoint, inside the file).
#[derive(Debug)]
pub struct GuestRam {
    file: File,
    regions: Vec<RamRegion>,
}

impl GuestRam {
    /// Checks that `file` is open read-only and that `regions` (any order; empty ones are
    /// dropped) are disjoint and lie inside it.
    pub fn new(file: File, mut regions: Vec<RamRegion>) -> Result<GuestRam, RamError> {
        let flags =
            nix::fcntl::fcntl(file.as_fd(), nix::fcntl::FcntlArg::F_GETFL).map_err(|e| {
                RamError::Io {
                    op: "read its open flags",
                    source: e.into(),
                }
            })?;
        let mode = nix::fcntl::OFlag::from_bits_truncate(flags) & nix::fcntl::OFlag::O_ACCMODE;
        if mode != nix::fcntl::OFlag::O_RDONLY {
            return Err(RamError::Writable);
        }
        let len = file
            .metadata()
            .map_err(|source| RamError::Io {
                op: "read its size",
                source,
            })?
            .len();
        regions.retain(|r| r.size > 0);
        regions.sort();
        let mut prev_end = 0u64;
        for (i, r) in regions.iter().enumerate() {
            let bad = |reason: String| RamError::Region {
                gpa: r.gpa,
                size: r.size,
                file_offset: r.file_offset,
                reason,
            };
            if r.gpa.checked_add(r.size).is_none() {
                return Err(bad("its guest-physical range overflows".into()));
            }
            if i > 0 && r.gpa < prev_end {
                return Err(bad(format!(
                    "overlaps the region that ends at {prev_end:#x}"
                )));
            }
            if r.file_offset.checked_add(r.size).is_none_or(|e| e > len) {
                return Err(bad(format!(
                    "extends past the end of the file ({len} bytes)"
                )));
            }
            prev_end = r.end();
        }
        Ok(GuestRam { file, regions })
    }

    /// The read-only file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The regions, ascending by guest-physical address.
    pub fn regions(&self) -> &[RamRegion] {
        &self.regions
    }

    /// Total RAM in bytes.
    pub fn size(&self) -> u64 {
        self.regions.iter().map(|r| r.size).sum()
    }

    /// Where guest-physical `gpa` lies in the file, and how many bytes of its region
    /// follow it.
    pub fn file_offset_of(&self, gpa: u64) -> Option<(u64, u64)> {
        self.regions
            .iter()
            .find(|r| r.contains(gpa))
            .map(|r| (r.file_offset + (gpa - r.gpa), r.size - (gpa - r.gpa)))
    }

    /// Another handle on the same RAM (a duplicated descriptor).
    pub fn try_clone(&self) -> Result<GuestRam, RamError> {
        Ok(GuestRam {
            file: self.file.try_clone().map_err(|source| RamError::Io {
                op: "duplicate its descriptor",
                source,
            })?,
            regions: self.regions.clone(),
        })
    }
}

/// Most holes [`GuestRam::holes`] reports; past them, the rest of the file counts as data.
const MAX_HOLES: usize = 1 << 20;

impl GuestRam {
    /// The guest-physical ranges that lie in holes of the RAM file (`SEEK_HOLE` /
    /// `SEEK_DATA`): never written, so they read as zeros. Reading a tmpfs or memfd hole
    /// through a mapping allocates it, so a pass over all of a sparse guest's RAM (a
    /// core) must skip these. Ascending. A file system that cannot say reports no holes
    /// (everything counts as data), and so does an error: the answer is only ever an
    /// optimisation, never needed for correctness.
    pub fn holes(&self) -> Vec<std::ops::Range<u64>> {
        use nix::unistd::{lseek, Whence};
        let fd = self.file.as_fd();
        let mut out = Vec::new();
        for r in &self.regions {
            let (start, end) = (r.file_offset, r.file_offset + r.size);
            let mut at = start;
            while at < end && out.len() < MAX_HOLES {
                // The next hole at or after `at`; ENXIO or an error: none.
                let Ok(hole) = lseek(fd, at as i64, Whence::SeekHole) else {
                    break;
                };
                let hole = (hole as u64).min(end);
                if hole >= end {
                    break;
                }
                // Where data starts again (ENXIO: the hole runs to the end of the file).
                let data =
                    lseek(fd, hole as i64, Whence::SeekData).map_or(end, |d| (d as u64).min(end));
                if data > hole {
                    out.push(r.gpa + (hole - start)..r.gpa + (data - start));
                }
                at = data;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    fn file(len: u64) -> (tempfile::NamedTempFile, File) {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(len).unwrap();
        let ro = File::open(f.path()).unwrap();
        (f, ro)
    }

    #[test]
    fn regions_are_sorted_and_checked() {
        let (_keep, ro) = file(8192);
        let ram = GuestRam::new(
            ro,
            vec![
                RamRegion::new(1 << 32, 4096, 4096),
                RamRegion::new(0, 4096, 0),
                RamRegion::new(0x9000, 0, 0),
            ],
        )
        .unwrap();
        assert_eq!(
            ram.regions(),
            &[
                RamRegion::new(0, 4096, 0),
                RamRegion::new(1 << 32, 4096, 4096)
            ]
        );
        assert_eq!(ram.size(), 8192);
        assert_eq!(ram.file_offset_of((1 << 32) + 10), Some((4106, 4086)));
        assert_eq!(ram.file_offset_of(4096), None);
        assert_eq!(ram.try_clone().unwrap().regions(), ram.regions());
    }

    #[test]
    fn bad_layouts_are_refused_with_the_region_named() {
        let (_keep, ro) = file(4096);
        let e = GuestRam::new(ro, vec![RamRegion::new(0x1000, 8192, 0)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("0x1000") && e.contains("past the end of the file (4096 bytes)"),
            "{e}"
        );
        let (_keep, ro) = file(8192);
        let e = GuestRam::new(
            ro,
            vec![
                RamRegion::new(0, 4096, 0),
                RamRegion::new(0x800, 4096, 4096),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("overlaps"), "{e}");
        let (_keep, ro) = file(8192);
        let e = GuestRam::new(ro, vec![RamRegion::new(u64::MAX - 10, 4096, 0)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("overflows"), "{e}");
    }

    #[test]
    fn a_writable_descriptor_is_refused() {
        let mfd = memfd::MemfdOptions::new().create("ram-test").unwrap();
        mfd.as_file().set_len(4096).unwrap();
        let e = GuestRam::new(mfd.into_file(), vec![RamRegion::new(0, 4096, 0)]).unwrap_err();
        assert!(matches!(e, RamError::Writable), "{e}");
    }

    #[test]
    fn holes_are_found_per_region_in_guest_physical_addresses() {
        use std::io::{Seek, SeekFrom, Write};
        const P: u64 = 4096;
        let mfd = memfd::MemfdOptions::default().create("ram").unwrap();
        let mut f = mfd.into_file();
        f.set_len(64 * P).unwrap();
        for page in [0, 10, 11, 40] {
            f.seek(SeekFrom::Start(page * P)).unwrap();
            f.write_all(&[1; P as usize]).unwrap();
        }
        let ro = File::open(format!("/proc/self/fd/{}", f.as_raw_fd())).unwrap();
        let high = 1u64 << 32;
        let ram = GuestRam::new(
            ro,
            vec![
                RamRegion::new(0, 32 * P, 0),
                RamRegion::new(high, 32 * P, 32 * P),
            ],
        )
        .unwrap();
        assert_eq!(
            ram.holes(),
            vec![
                P..10 * P,
                12 * P..32 * P,
                high..high + 8 * P,
                high + 9 * P..high + 32 * P,
            ]
        );
        // A file without holes has none.
        let (_keep, ro) = file(8192);
        std::fs::write(_keep.path(), [7u8; 8192]).unwrap();
        let full = GuestRam::new(ro, vec![RamRegion::new(0, 8192, 0)]).unwrap();
        assert!(full.holes().is_empty());
    }
}
