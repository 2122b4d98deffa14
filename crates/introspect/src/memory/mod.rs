//! Where guest-physical bytes come from.
//!
//! Every source implements [`PhysicalMemory`]: a set of guest-physical ranges that can be
//! read with bounds checks, and sliced without copying where the bytes are contiguous in
//! the backing file. The sources:
//!
//! * [`LiveMemory`]: a frozen guest's RAM, mapped `PROT_READ`/`MAP_SHARED` from the
//!   read-only file descriptor the VMM exports. Never a writable mapping.
//! * [`ElfCore`]: an ELF core file (QEMU `dump-guest-memory`, kdump's `/proc/vmcore`,
//!   Ambulance's own), `PT_LOAD` segments addressed by `p_paddr`, plus its notes
//!   (`NT_PRSTATUS` per CPU, `VMCOREINFO`, anything else).
//! * [`RawImage`]: a flat file (or buffer) holding RAM from one base address.
//!
//! Files are memory-mapped, never read into RAM. A read that touches a hole is
//! [`Error::Unmapped`]; nothing here panics on any input.
//!
//! A mapped file that another process truncates while it is mapped would fault
//! (`SIGBUS`) on access, as with every mmap-based reader. The VMM's export is a memfd
//! sealed against shrinking, so live guests cannot trigger that; core files and raw
//! images should not be truncated while a diagnosis reads them.

mod elfcore;

use std::fs::File;
use std::path::Path;

use ambulance_ram::{GuestRam, RamRegion};
use memmap2::{Mmap, MmapOptions};

pub use ambulance_elfcore::{CoreNote, PrStatus, UserRegs};
pub use elfcore::ElfCore;

use crate::{Error, Result};

/// One range of guest-physical addresses a source holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PhysRange {
    /// First address.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
}

impl PhysRange {
    /// One past the last address (saturating).
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.size)
    }

    /// Whether `pa` lies in the range.
    pub fn contains(&self, pa: u64) -> bool {
        pa >= self.start && pa - self.start < self.size
    }
}

/// Guest-physical memory, from whatever source.
pub trait PhysicalMemory: Send + Sync {
    /// Copies `buf.len()` bytes starting at guest-physical `pa`. Fails with
    /// [`Error::Unmapped`] when any byte of the range is not held by the source.
    fn read(&self, pa: u64, buf: &mut [u8]) -> Result<()>;

    /// The bytes `[pa, pa + len)` without copying, when the source holds them
    /// contiguously; `None` otherwise (including when only [`read`](Self::read) could
    /// assemble them).
    fn slice(&self, pa: u64, len: usize) -> Option<&[u8]>;

    /// The ranges held, ascending and merged where adjacent.
    fn ranges(&self) -> Vec<PhysRange>;

    /// What this source is, for messages ("live guest RAM (64 MiB)", "core file x").
    fn describe(&self) -> String;

    /// Ranges the source should hold but does not — a dump cut short — ascending. Reads
    /// there fail; a diagnosis says they are missing. Empty by default.
    fn missing(&self) -> Vec<PhysRange> {
        Vec::new()
    }

    /// Ranges the source holds that are known to read as zeros without reading them —
    /// the holes of a sparse RAM file — ascending. A pass over all of memory skips them:
    /// reading a tmpfs or memfd hole through a mapping allocates it. Empty by default.
    fn holes(&self) -> Vec<PhysRange> {
        Vec::new()
    }

    /// What is wrong with a source that is read anyway (a core cut short: how much is
    /// missing, which notes were lost), for the report. Empty by default.
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }
}

// ---------------------------------------------------------------------------------------
// The segment map shared by all sources.

/// Zeros for slices of zero-filled tails (`p_filesz < p_memsz`).
static ZEROS: [u8; 4096] = [0; 4096];

/// Bytes a segment map indexes into.
pub(crate) enum Backing {
    /// A read-only mapping of a file.
    Map(Mmap),
    /// Bytes in our own memory (tests, fuzzers, small images).
    Owned(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Map(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// One disjoint range of guest-physical memory: `[start, file_end)` comes from a backing
/// buffer, `[file_end, end)` reads as zeros.
#[derive(Clone, Copy, Debug)]
struct Seg {
    start: u64,
    end: u64,
    file_end: u64,
    backing: usize,
    offset: usize,
}

/// A physical segment before normalization.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SegSpec {
    pub start: u64,
    pub mem_size: u64,
    pub file_size: u64,
    pub backing: usize,
    pub offset: usize,
}

/// Sorted, disjoint physical segments over one or more backings.
pub(crate) struct SegmentMap {
    backings: Vec<Backing>,
    segs: Vec<Seg>,
    name: String,
}

impl SegmentMap {
    /// Builds the map. Specs must already be checked against their backings (offset +
    /// file size inside the buffer, no address overflow); this re-checks and drops what
    /// does not fit rather than panic. Overlapping specs are resolved in favour of the
    /// one that starts first (kdump cores map the kernel image twice: both copies hold
    /// the same bytes).
    pub(crate) fn new(backings: Vec<Backing>, mut specs: Vec<SegSpec>, name: String) -> Self {
        specs.retain(|s| {
            s.mem_size > 0
                && s.file_size <= s.mem_size
                && s.start.checked_add(s.mem_size).is_some()
                && backings.get(s.backing).is_some_and(|b| {
                    (s.offset as u64)
                        .checked_add(s.file_size)
                        .is_some_and(|e| e <= b.bytes().len() as u64)
                })
        });
        specs.sort_by(|a, b| a.start.cmp(&b.start).then(b.mem_size.cmp(&a.mem_size)));
        let mut segs: Vec<Seg> = Vec::with_capacity(specs.len());
        let mut covered = 0u64;
        for s in specs {
            let end = s.start + s.mem_size;
            let first = segs.is_empty();
            if !first && end <= covered {
                continue;
            }
            let start = if first { s.start } else { s.start.max(covered) };
            let skip = start - s.start;
            let file_end = s.start + s.file_size;
            let (file_end, offset) = if skip < s.file_size {
                (file_end, s.offset + skip as usize)
            } else {
                (start, s.offset)
            };
            segs.push(Seg {
                start,
                end,
                file_end: file_end.max(start),
                backing: s.backing,
                offset,
            });
            covered = end;
        }
        SegmentMap {
            backings,
            segs,
            name,
        }
    }

    #[inline]
    fn find(&self, pa: u64) -> Option<&Seg> {
        let i = self.segs.partition_point(|s| s.end <= pa);
        self.segs.get(i).filter(|s| s.start <= pa)
    }

    /// Where guest-physical `pa` lies in its backing: (backing, byte offset), when the
    /// backing holds it (not in a zero tail).
    pub(crate) fn backing_offset(&self, pa: u64) -> Option<(usize, u64)> {
        let s = self.find(pa)?;
        (pa < s.file_end).then(|| (s.backing, s.offset as u64 + (pa - s.start)))
    }

    #[inline]
    pub(crate) fn slice(&self, pa: u64, len: usize) -> Option<&[u8]> {
        let s = self.find(pa)?;
        let last = pa.checked_add(len as u64)?;
        if last <= s.file_end {
            let at = s.offset + (pa - s.start) as usize;
            self.backings[s.backing].bytes().get(at..at + len)
        } else if pa >= s.file_end && last <= s.end {
            ZEROS.get(..len)
        } else {
            None
        }
    }

    pub(crate) fn read(&self, pa: u64, buf: &mut [u8]) -> Result<()> {
        let len = buf.len();
        let unmapped = || Error::Unmapped {
            addr: pa,
            len,
            source_name: self.name.clone(),
        };
        let mut done = 0usize;
        while done < buf.len() {
            let cur = pa.checked_add(done as u64).ok_or_else(unmapped)?;
            let s = self.find(cur).ok_or_else(unmapped)?;
            let n = ((s.end - cur).min((buf.len() - done) as u64)) as usize;
            let out = &mut buf[done..done + n];
            let from_file = if cur < s.file_end {
                ((s.file_end - cur) as usize).min(n)
            } else {
                0
            };
            if from_file > 0 {
                let at = s.offset + (cur - s.start) as usize;
                let src = self.backings[s.backing]
                    .bytes()
                    .get(at..at + from_file)
                    .ok_or_else(unmapped)?;
                out[..from_file].copy_from_slice(src);
            }
            out[from_file..].fill(0);
            done += n;
        }
        Ok(())
    }

    /// The parts of `[start, start + len)` no segment holds.
    pub(crate) fn holes_in(&self, start: u64, len: u64) -> Vec<PhysRange> {
        let end = start.saturating_add(len);
        let mut out = Vec::new();
        let mut at = start;
        let i = self.segs.partition_point(|s| s.end <= start);
        for s in &self.segs[i..] {
            if s.start >= end {
                break;
            }
            if s.start > at {
                out.push(PhysRange {
                    start: at,
                    size: s.start - at,
                });
            }
            at = at.max(s.end);
        }
        if at < end {
            out.push(PhysRange {
                start: at,
                size: end - at,
            });
        }
        out
    }

    pub(crate) fn ranges(&self) -> Vec<PhysRange> {
        let mut out: Vec<PhysRange> = Vec::with_capacity(self.segs.len());
        for s in &self.segs {
            match out.last_mut() {
                Some(last) if last.end() == s.start => last.size += s.end - s.start,
                _ => out.push(PhysRange {
                    start: s.start,
                    size: s.end - s.start,
                }),
            }
        }
        out
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}

fn total(ranges: &[PhysRange]) -> u64 {
    ranges.iter().map(|r| r.size).sum()
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

/// Maps `len` bytes of `file` at `offset` read-only (`PROT_READ`, `MAP_SHARED`).
fn map_readonly(file: &File, offset: u64, len: u64) -> std::io::Result<Mmap> {
    let len = usize::try_from(len).map_err(|_| std::io::Error::other("mapping too large"))?;
    // SAFETY: the mapping is read-only (`Mmap` is PROT_READ, MAP_SHARED) and callers check
    // that `offset + len` lies within the file, so no access faults while the file keeps
    // its size (guaranteed by the seals on the VMM's memfd; documented for files). The
    // bytes may change underneath only if someone writes the file; guests are frozen
    // while diagnosed, and every reader treats the bytes as untrusted data anyway.
    unsafe { MmapOptions::new().offset(offset).len(len).map(file) }
}

// ---------------------------------------------------------------------------------------
// Live guest RAM.

/// A frozen guest's RAM, mapped read-only from the file the VMM exports.
pub struct LiveMemory {
    map: SegmentMap,
    holes: Vec<PhysRange>,
}

impl LiveMemory {
    /// Maps every region of `ram` read-only. `GuestRam` has already checked that its
    /// descriptor is `O_RDONLY` and that the regions are disjoint and inside the file.
    pub fn map(ram: &GuestRam) -> Result<LiveMemory> {
        let file = ram.file();
        let sorted = ram.regions();
        let mut backings = Vec::with_capacity(sorted.len());
        let mut specs = Vec::with_capacity(sorted.len());
        for &RamRegion {
            gpa,
            size,
            file_offset: off,
        } in sorted
        {
            let m = map_readonly(file, off, size).map_err(|e| Error::Map {
                size,
                offset: off,
                source: e,
            })?;
            specs.push(SegSpec {
                start: gpa,
                mem_size: size,
                file_size: size,
                backing: backings.len(),
                offset: 0,
            });
            backings.push(Backing::Map(m));
        }
        let size = ram.size();
        let holes = ram
            .holes()
            .into_iter()
            .map(|r| PhysRange {
                start: r.start,
                size: r.end - r.start,
            })
            .collect();
        Ok(LiveMemory {
            map: SegmentMap::new(backings, specs, format!("live guest RAM ({})", human(size))),
            holes,
        })
    }
}

impl PhysicalMemory for LiveMemory {
    fn read(&self, pa: u64, buf: &mut [u8]) -> Result<()> {
        self.map.read(pa, buf)
    }
    #[inline]
    fn slice(&self, pa: u64, len: usize) -> Option<&[u8]> {
        self.map.slice(pa, len)
    }
    fn ranges(&self) -> Vec<PhysRange> {
        self.map.ranges()
    }
    fn describe(&self) -> String {
        self.map.name().to_string()
    }
    fn holes(&self) -> Vec<PhysRange> {
        self.holes.clone()
    }
}

// ---------------------------------------------------------------------------------------
// Raw images.

/// A flat image of RAM: byte `i` of the file (or buffer) is guest-physical
/// `base_gpa + i`.
pub struct RawImage {
    map: SegmentMap,
}

impl RawImage {
    /// Maps the file at `path` read-only as RAM starting at `base_gpa`.
    pub fn open(path: impl AsRef<Path>, base_gpa: u64) -> Result<RawImage> {
        let path = path.as_ref();
        let io = |what, e| Error::Io {
            what,
            path: path.to_path_buf(),
            source: e,
        };
        let file = File::open(path).map_err(|e| io("cannot open raw image", e))?;
        let len = file
            .metadata()
            .map_err(|e| io("cannot stat raw image", e))?
            .len();
        if base_gpa.checked_add(len).is_none() {
            return Err(io(
                "raw image does not fit above its base address",
                std::io::Error::from(std::io::ErrorKind::InvalidInput),
            ));
        }
        let name = format!("raw image {} at {base_gpa:#x}", path.display());
        if len == 0 {
            return Ok(RawImage {
                map: SegmentMap::new(vec![], vec![], name),
            });
        }
        let m = map_readonly(&file, 0, len).map_err(|e| io("cannot map raw image", e))?;
        Ok(RawImage::whole(Backing::Map(m), base_gpa, len, name))
    }

    /// All `len` bytes of `backing` as guest RAM from `base_gpa`.
    fn whole(backing: Backing, base_gpa: u64, len: u64, name: String) -> RawImage {
        let seg = SegSpec {
            start: base_gpa,
            mem_size: len,
            file_size: len,
            backing: 0,
            offset: 0,
        };
        RawImage {
            map: SegmentMap::new(vec![backing], vec![seg], name),
        }
    }

    /// RAM held in a buffer, starting at `base_gpa` (tests, fuzzers, synthetic guests).
    pub fn from_bytes(bytes: Vec<u8>, base_gpa: u64) -> RawImage {
        let len = bytes.len() as u64;
        let name = format!("in-memory image at {base_gpa:#x} ({})", human(len));
        RawImage::whole(Backing::Owned(bytes), base_gpa, len, name)
    }
}

impl PhysicalMemory for RawImage {
    fn read(&self, pa: u64, buf: &mut [u8]) -> Result<()> {
        self.map.read(pa, buf)
    }
    #[inline]
    fn slice(&self, pa: u64, len: usize) -> Option<&[u8]> {
        self.map.slice(pa, len)
    }
    fn ranges(&self) -> Vec<PhysRange> {
        self.map.ranges()
    }
    fn describe(&self) -> String {
        let r = self.map.ranges();
        format!("{} ({})", self.map.name(), human(total(&r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn spec(start: u64, mem: u64, file: u64, backing: usize, offset: usize) -> SegSpec {
        SegSpec {
            start,
            mem_size: mem,
            file_size: file,
            backing,
            offset,
        }
    }

    #[test]
    fn segment_map_reads_across_segments_zero_tails_and_holes() {
        let a: Vec<u8> = (0..64).collect();
        let map = SegmentMap::new(
            vec![Backing::Owned(a)],
            vec![
                spec(0x1000, 16, 16, 0, 0),
                spec(0x1010, 32, 8, 0, 16), // 8 bytes from file, 24 zeros
                spec(0x2000, 8, 8, 0, 56),
            ],
            "test".into(),
        );
        let mut b = [0xffu8; 48];
        map.read(0x1000, &mut b).unwrap();
        assert_eq!(&b[..24], &(0..24).collect::<Vec<u8>>()[..]);
        assert!(b[24..].iter().all(|&x| x == 0));
        assert_eq!(map.slice(0x1004, 4), Some(&[4u8, 5, 6, 7][..]));
        assert_eq!(map.slice(0x1020, 8), Some(&[0u8; 8][..]));
        assert_eq!(map.slice(0x100c, 8), None, "straddles two segments");
        assert_eq!(map.slice(0x1016, 4), None, "straddles file bytes and zeros");
        let err = map.read(0x1028, &mut [0u8; 16]).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Unmapped {
                    addr: 0x1028,
                    len: 16,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("0x1028"));
        assert_eq!(
            map.ranges(),
            vec![
                PhysRange {
                    start: 0x1000,
                    size: 48
                },
                PhysRange {
                    start: 0x2000,
                    size: 8
                }
            ]
        );
        assert!(map.read(u64::MAX - 2, &mut [0u8; 8]).is_err());
        assert!(map.slice(u64::MAX - 2, 8).is_none());
    }

    #[test]
    fn overlapping_segments_keep_the_first_and_drop_garbage() {
        let a = vec![1u8; 32];
        let b = vec![2u8; 32];
        let map = SegmentMap::new(
            vec![Backing::Owned(a), Backing::Owned(b)],
            vec![
                spec(0x100, 32, 32, 0, 0),
                spec(0x110, 32, 32, 1, 0),
                spec(0x108, 4, 4, 1, 0),         // entirely covered
                spec(0x400, 64, 64, 1, 0),       // file part past the backing: dropped
                spec(u64::MAX - 4, 16, 0, 0, 0), // overflows: dropped
            ],
            "t".into(),
        );
        let mut buf = [0u8; 48];
        map.read(0x100, &mut buf).unwrap();
        assert!(buf[..32].iter().all(|&x| x == 1));
        assert!(buf[32..].iter().all(|&x| x == 2));
        assert_eq!(map.ranges().len(), 1);
        assert!(map.read(0x400, &mut [0u8; 1]).is_err());
    }

    #[test]
    fn raw_image_from_file_and_bytes() {
        let dir = std::env::temp_dir().join(format!("ambulance-raw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ram.img");
        let mut f = File::create(&path).unwrap();
        f.write_all(&(0..=255u8).collect::<Vec<_>>()).unwrap();
        drop(f);
        let img = RawImage::open(&path, 0x10_0000).unwrap();
        assert_eq!(img.slice(0x10_0010, 2), Some(&[16u8, 17][..]));
        assert!(img.read(0x0f_ffff, &mut [0u8; 2]).is_err());
        assert!(img.describe().contains("ram.img"));
        let mem = RawImage::from_bytes(vec![7; 100], 0);
        assert_eq!(
            mem.ranges(),
            vec![PhysRange {
                start: 0,
                size: 100
            }]
        );
        std::fs::write(&path, b"").unwrap();
        let empty = RawImage::open(&path, 0).unwrap();
        assert!(empty.ranges().is_empty());
        assert!(empty.read(0, &mut [0u8; 1]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn live_memory_maps_regions_read_only() {
        let dir = std::env::temp_dir().join(format!("ambulance-live-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ram");
        let mut bytes = vec![0u8; 3 * 4096];
        bytes[4096] = 0xaa;
        bytes[2 * 4096 + 5] = 0xbb;
        std::fs::write(&path, &bytes).unwrap();
        let ram = |regions: &[(u64, u64, u64)]| {
            let file = File::open(&path).unwrap(); // O_RDONLY
            let regions = regions
                .iter()
                .map(|&(gpa, size, off)| RamRegion::new(gpa, size, off))
                .collect();
            GuestRam::new(file, regions)
        };
        let live = LiveMemory::map(&ram(&[(0, 8192, 0), (1 << 32, 4096, 8192)]).unwrap()).unwrap();
        assert_eq!(live.slice(4096, 1), Some(&[0xaa][..]));
        assert_eq!(live.slice((1 << 32) + 5, 1), Some(&[0xbb][..]));
        assert!(live.read(8192, &mut [0u8; 1]).is_err());
        assert_eq!(live.ranges().len(), 2);
        // Past the end of the file, overlapping, overflowing: refused.
        assert!(ram(&[(0, 4 * 4096, 0)]).is_err());
        assert!(ram(&[(0, 4096, 0), (2048, 4096, 4096)]).is_err());
        assert!(ram(&[(u64::MAX, 4096, 0)]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
