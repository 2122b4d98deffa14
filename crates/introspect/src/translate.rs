//! x86-64 virtual → physical translation through a guest's page tables.
//!
//! A [`Translator`] walks 4- or 5-level tables from a root (the guest's CR3: the low 12
//! bits, which hold PCID or PWT/PCD, and bit 63 are ignored), honouring present bits,
//! 2 MiB and 1 GiB pages (the PS bit at the page-directory and PDPT levels) and the
//! physical-address field (bits 12..51). It reports whether the mapping is writable (R/W
//! set at every level) and non-executable (NX at any level).
//!
//! The walk reads at most one entry per level — five reads at most — so it ends whatever
//! the guest wrote into its tables. Results are kept in a small direct-mapped cache
//! (256 entries for 4 KiB pages, 256 for large pages at 2 MiB granularity), lock-free
//! with a per-entry sequence counter so that a shared [`crate::program::Program`] stays
//! `Sync` and repeated nearby reads do not walk again. The cache assumes the tables do
//! not change: use [`Translator::flush`] after resuming and re-freezing a guest.
//!
//! [`PageTableBuilder`] writes page tables into a RAM buffer, for tests, fuzzers and
//! benchmarks that need a synthetic guest.

use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use crate::memory::PhysicalMemory;
use crate::{Error, Result};

/// Page-table entry: present.
pub const PTE_PRESENT: u64 = 1;
/// Page-table entry: writable.
pub const PTE_WRITABLE: u64 = 1 << 1;
/// Page-table entry: a large page (at the PD and PDPT levels).
pub const PTE_PS: u64 = 1 << 7;
/// Page-table entry: no execute.
pub const PTE_NX: u64 = 1 << 63;
/// The physical-address field of an entry (bits 12..51).
pub const PTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

const PAGE_4K: u64 = 1 << 12;
const PAGE_2M: u64 = 1 << 21;
const PAGE_1G: u64 = 1 << 30;

/// Paging mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Paging {
    /// 4-level paging, 48-bit virtual addresses.
    Four,
    /// 5-level paging (LA57), 57-bit virtual addresses.
    Five,
}

impl Paging {
    /// Number of table levels.
    pub const fn levels(self) -> u8 {
        match self {
            Paging::Four => 4,
            Paging::Five => 5,
        }
    }

    /// Whether `va` is canonical in this mode.
    pub const fn is_canonical(self, va: u64) -> bool {
        match self {
            Paging::Four => ambulance_abi::is_canonical_48(va),
            Paging::Five => ambulance_abi::is_canonical_57(va),
        }
    }
}

/// Where a virtual address leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The guest-physical address.
    pub pa: u64,
    /// Size of the page that maps it (4 KiB, 2 MiB or 1 GiB).
    pub page_size: u64,
    /// Writable at every level.
    pub writable: bool,
    /// Not executable (NX at some level).
    pub nx: bool,
}

// ---------------------------------------------------------------------------------------
// The translation cache.

const SMALL_SLOTS: usize = 256;
const LARGE_SLOTS: usize = 256;

const VAL_WRITABLE: u64 = 1;
const VAL_NX: u64 = 2;
const VAL_SIZE_SHIFT: u32 = 2; // 0 = 4 KiB, 1 = 2 MiB, 2 = 1 GiB

/// One cache entry under a sequence lock: `seq` is odd while a writer fills it.
#[derive(Default)]
struct CacheEntry {
    seq: AtomicU32,
    tag: AtomicU64,
    val: AtomicU64,
}

impl CacheEntry {
    #[inline]
    fn get(&self, tag: u64) -> Option<u64> {
        let s1 = self.seq.load(Ordering::Acquire);
        if s1 & 1 != 0 {
            return None;
        }
        let t = self.tag.load(Ordering::Relaxed);
        let v = self.val.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        let s2 = self.seq.load(Ordering::Relaxed);
        (s1 == s2 && t == tag).then_some(v)
    }

    /// Empties the slot, waiting for a writer that is filling it.
    fn clear(&self) {
        loop {
            let s = self.seq.load(Ordering::Relaxed);
            if s & 1 == 0
                && self
                    .seq
                    .compare_exchange(s, s.wrapping_add(1), Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                fence(Ordering::Release);
                self.tag.store(0, Ordering::Relaxed);
                self.seq.store(s.wrapping_add(2), Ordering::Release);
                return;
            }
            std::hint::spin_loop();
        }
    }

    fn set(&self, tag: u64, val: u64) {
        let s = self.seq.load(Ordering::Relaxed);
        if s & 1 != 0
            || self
                .seq
                .compare_exchange(s, s.wrapping_add(1), Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return; // another writer is filling it: leave it to them
        }
        fence(Ordering::Release);
        self.tag.store(tag, Ordering::Relaxed);
        self.val.store(val, Ordering::Relaxed);
        self.seq.store(s.wrapping_add(2), Ordering::Release);
    }
}

struct Tlb {
    small: Box<[CacheEntry]>,
    large: Box<[CacheEntry]>,
}

#[inline]
fn slot_index(key: u64, slots: usize) -> usize {
    ((key ^ (key >> 27)) as usize) & (slots - 1)
}

impl Tlb {
    fn new() -> Tlb {
        Tlb {
            small: (0..SMALL_SLOTS).map(|_| CacheEntry::default()).collect(),
            large: (0..LARGE_SLOTS).map(|_| CacheEntry::default()).collect(),
        }
    }

    #[inline]
    fn lookup(&self, va: u64) -> Option<Translation> {
        let vpn = va >> 12;
        if let Some(v) = self.small[slot_index(vpn, SMALL_SLOTS)].get(vpn + 1) {
            return Some(decode(v, va, PAGE_4K));
        }
        let key = va >> 21;
        let v = self.large[slot_index(key, LARGE_SLOTS)].get(key + 1)?;
        Some(decode(v, va, PAGE_2M))
    }

    fn insert(&self, va: u64, t: &Translation) {
        let flags = if t.writable { VAL_WRITABLE } else { 0 } | if t.nx { VAL_NX } else { 0 };
        if t.page_size == PAGE_4K {
            let vpn = va >> 12;
            let val = (t.pa & !(PAGE_4K - 1)) | flags;
            self.small[slot_index(vpn, SMALL_SLOTS)].set(vpn + 1, val);
        } else {
            // Large pages are cached at 2 MiB granularity.
            let key = va >> 21;
            let code = if t.page_size == PAGE_1G { 2 } else { 1 };
            let val = (t.pa & !(PAGE_2M - 1)) | flags | (code << VAL_SIZE_SHIFT);
            self.large[slot_index(key, LARGE_SLOTS)].set(key + 1, val);
        }
    }

    fn flush(&self) {
        for s in self.small.iter().chain(self.large.iter()) {
            s.clear();
        }
    }
}

#[inline]
fn decode(v: u64, va: u64, granule: u64) -> Translation {
    let page_size = match (v >> VAL_SIZE_SHIFT) & 3 {
        0 => PAGE_4K,
        1 => PAGE_2M,
        _ => PAGE_1G,
    };
    Translation {
        pa: (v & PTE_ADDR_MASK & !(granule - 1)) | (va & (granule - 1)),
        page_size,
        writable: v & VAL_WRITABLE != 0,
        nx: v & VAL_NX != 0,
    }
}

// ---------------------------------------------------------------------------------------

/// Translates virtual addresses through one set of page tables.
pub struct Translator {
    root: u64,
    paging: Paging,
    tlb: Tlb,
}

impl std::fmt::Debug for Translator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Translator")
            .field("root", &format_args!("{:#x}", self.root))
            .field("paging", &self.paging)
            .finish()
    }
}

impl Translator {
    /// A translator for the tables at `root` (a CR3 value: flag and PCID bits are
    /// ignored).
    pub fn new(root: u64, paging: Paging) -> Translator {
        Translator {
            root: root & PTE_ADDR_MASK,
            paging,
            tlb: Tlb::new(),
        }
    }

    /// The top-level table's guest-physical address.
    pub fn root(&self) -> u64 {
        self.root
    }

    /// The paging mode.
    pub fn paging(&self) -> Paging {
        self.paging
    }

    /// Forgets every cached translation.
    pub fn flush(&self) {
        self.tlb.flush();
    }

    /// Translates `va`, from the cache when possible.
    #[inline]
    pub fn translate(&self, mem: &dyn PhysicalMemory, va: u64) -> Result<Translation> {
        if !self.paging.is_canonical(va) {
            return Err(self.non_canonical(va));
        }
        if let Some(t) = self.tlb.lookup(va) {
            return Ok(t);
        }
        let t = self.walk(mem, va)?;
        self.tlb.insert(va, &t);
        Ok(t)
    }

    /// Translates `va` by walking the tables, without looking at or filling the cache.
    pub fn translate_uncached(&self, mem: &dyn PhysicalMemory, va: u64) -> Result<Translation> {
        if !self.paging.is_canonical(va) {
            return Err(self.non_canonical(va));
        }
        self.walk(mem, va)
    }

    #[cold]
    fn non_canonical(&self, va: u64) -> Error {
        Error::NonCanonical {
            va,
            levels: self.paging.levels(),
        }
    }

    fn walk(&self, mem: &dyn PhysicalMemory, va: u64) -> Result<Translation> {
        let levels = self.paging.levels();
        let mut table = self.root;
        // The entry that pointed at `table` (none for the root).
        let mut parent: Option<(u8, u64, u64)> = None;
        let mut writable = true;
        let mut nx = false;
        // One read per level, top to bottom: at most five, whatever the tables hold.
        for level in (1..=levels).rev() {
            let shift = 12 + 9 * (level as u32 - 1);
            let entry_pa = table + ((va >> shift) & 511) * 8;
            let entry = read_entry(mem, entry_pa).map_err(|e| match parent {
                None => e,
                Some((plevel, pentry, ppa)) => Error::BadPageTable {
                    va,
                    level: plevel,
                    entry: pentry,
                    entry_pa: ppa,
                    reason: "points at a page table outside guest memory",
                },
            })?;
            if entry & PTE_PRESENT == 0 {
                return Err(Error::NotPresent {
                    va,
                    level,
                    entry,
                    entry_pa,
                });
            }
            writable &= entry & PTE_WRITABLE != 0;
            nx |= entry & PTE_NX != 0;
            let leaf_size = match level {
                1 => Some(PAGE_4K),
                2 | 3 if entry & PTE_PS != 0 => Some(1u64 << shift),
                _ if entry & PTE_PS != 0 => {
                    return Err(Error::BadPageTable {
                        va,
                        level,
                        entry,
                        entry_pa,
                        reason: "large-page (PS) bit set above the PDPT level",
                    })
                }
                _ => None,
            };
            if let Some(size) = leaf_size {
                if size > PAGE_4K {
                    // Bits 13..shift-1 of a large-page entry are reserved (bit 12 is PAT).
                    let reserved = (size - 1) & !(2 * PAGE_4K - 1);
                    if entry & reserved != 0 {
                        return Err(Error::BadPageTable {
                            va,
                            level,
                            entry,
                            entry_pa,
                            reason: "reserved address bits set in a large-page entry",
                        });
                    }
                }
                return Ok(Translation {
                    pa: (entry & PTE_ADDR_MASK & !(size - 1)) | (va & (size - 1)),
                    page_size: size,
                    writable,
                    nx,
                });
            }
            parent = Some((level, entry, entry_pa));
            table = entry & PTE_ADDR_MASK;
        }
        // Level 1 always returns above; kept for completeness rather than a panic.
        Err(Error::BadPageTable {
            va,
            level: 1,
            entry: 0,
            entry_pa: table,
            reason: "page walk did not reach a leaf",
        })
    }
}

#[inline]
fn read_entry(mem: &dyn PhysicalMemory, pa: u64) -> Result<u64> {
    if let Some(b) = mem.slice(pa, 8).and_then(|s| <[u8; 8]>::try_from(s).ok()) {
        return Ok(u64::from_le_bytes(b));
    }
    let mut b = [0u8; 8];
    mem.read(pa, &mut b)?;
    Ok(u64::from_le_bytes(b))
}

// ---------------------------------------------------------------------------------------

/// Builds x86-64 page tables inside a RAM buffer (RAM starting at guest-physical 0), the
/// way a kernel would: tables come from a reserved physical range, intermediate entries
/// are present and writable, leaves carry the requested permissions.
pub struct PageTableBuilder {
    ram: Vec<u8>,
    paging: Paging,
    root: u64,
    next_table: u64,
    tables_end: u64,
}

impl PageTableBuilder {
    /// Tables are allocated from `[tables_start, tables_end)` of `ram` (page-aligned);
    /// the root table is the first.
    pub fn new(
        ram: Vec<u8>,
        tables_start: u64,
        tables_end: u64,
        paging: Paging,
    ) -> std::result::Result<PageTableBuilder, String> {
        if !tables_start.is_multiple_of(PAGE_4K) || tables_end > ram.len() as u64 {
            return Err(format!(
                "table area {tables_start:#x}..{tables_end:#x} is unaligned or outside {} bytes of RAM",
                ram.len()
            ));
        }
        let mut b = PageTableBuilder {
            ram,
            paging,
            root: 0,
            next_table: tables_start,
            tables_end,
        };
        b.root = b.alloc_table()?;
        Ok(b)
    }

    fn alloc_table(&mut self) -> std::result::Result<u64, String> {
        let t = self.next_table;
        if t + PAGE_4K > self.tables_end {
            return Err("out of page-table pages".into());
        }
        self.next_table += PAGE_4K;
        self.ram[t as usize..(t + PAGE_4K) as usize].fill(0);
        Ok(t)
    }

    fn entry(&self, pa: u64) -> u64 {
        let at = pa as usize;
        u64::from_le_bytes(self.ram[at..at + 8].try_into().expect("8 bytes"))
    }

    fn set_entry(&mut self, pa: u64, v: u64) {
        let at = pa as usize;
        self.ram[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// Maps one page of `page_size` (4 KiB, 2 MiB or 1 GiB) at `va` to `pa`.
    pub fn map(
        &mut self,
        va: u64,
        pa: u64,
        page_size: u64,
        writable: bool,
        nx: bool,
    ) -> std::result::Result<(), String> {
        let leaf_level = match page_size {
            PAGE_4K => 1,
            PAGE_2M => 2,
            PAGE_1G => 3,
            _ => {
                return Err(format!(
                    "page size {page_size:#x} is not 4 KiB, 2 MiB or 1 GiB"
                ))
            }
        };
        if !va.is_multiple_of(page_size)
            || !pa.is_multiple_of(page_size)
            || !self.paging.is_canonical(va)
        {
            return Err(format!("{va:#x} -> {pa:#x} is unaligned or not canonical"));
        }
        let mut table = self.root;
        for level in (leaf_level + 1..=self.paging.levels() as u32).rev() {
            let e_pa = table + ((va >> (12 + 9 * (level - 1))) & 511) * 8;
            let e = self.entry(e_pa);
            table = if e & PTE_PRESENT == 0 {
                let t = self.alloc_table()?;
                self.set_entry(e_pa, t | PTE_PRESENT | PTE_WRITABLE);
                t
            } else if e & PTE_PS != 0 {
                return Err(format!("{va:#x} is already inside a large page"));
            } else {
                e & PTE_ADDR_MASK
            };
        }
        let e_pa = table + ((va >> (12 + 9 * (leaf_level - 1))) & 511) * 8;
        let mut v = pa | PTE_PRESENT;
        if writable {
            v |= PTE_WRITABLE;
        }
        if nx {
            v |= PTE_NX;
        }
        if leaf_level > 1 {
            v |= PTE_PS;
        }
        self.set_entry(e_pa, v);
        Ok(())
    }

    /// Maps `[va, va + len)` to `[pa, pa + len)` with pages of `page_size`.
    pub fn map_range(
        &mut self,
        va: u64,
        pa: u64,
        len: u64,
        page_size: u64,
        writable: bool,
        nx: bool,
    ) -> std::result::Result<(), String> {
        let mut off = 0;
        while off < len {
            self.map(va + off, pa + off, page_size, writable, nx)?;
            off += page_size;
        }
        Ok(())
    }

    /// Guest-physical address of the root table (the CR3 to use).
    pub fn root(&self) -> u64 {
        self.root
    }

    /// The RAM.
    pub fn ram(&self) -> &[u8] {
        &self.ram
    }

    /// The RAM, for filling in data.
    pub fn ram_mut(&mut self) -> &mut [u8] {
        &mut self.ram
    }

    /// The RAM with the tables in it.
    pub fn into_ram(self) -> Vec<u8> {
        self.ram
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::RawImage;
    use proptest::prelude::*;

    const DIRECT: u64 = 0xffff_8880_0000_0000;
    const KERNEL: u64 = 0xffff_ffff_8000_0000;
    const VMALLOC: u64 = 0xffff_c900_0000_0000;

    fn guest(paging: Paging) -> (RawImage, u64) {
        let mut b =
            PageTableBuilder::new(vec![0u8; 8 << 20], 0x10_0000, 0x20_0000, paging).unwrap();
        b.map_range(DIRECT, 0, 8 << 20, PAGE_2M, true, true)
            .unwrap();
        b.map_range(KERNEL + 0x20_0000, 0x20_0000, 0x4000, PAGE_4K, false, false)
            .unwrap();
        b.map(VMALLOC + PAGE_4K, 0x30_0000, PAGE_4K, true, true)
            .unwrap();
        let root = b.root();
        (RawImage::from_bytes(b.into_ram(), 0), root)
    }

    #[test]
    fn four_level_walks_with_all_page_sizes() {
        let mut b =
            PageTableBuilder::new(vec![0u8; 4 << 20], 0x1000, 0x10_0000, Paging::Four).unwrap();
        b.map(DIRECT, 0, PAGE_1G, true, true).unwrap();
        b.map(KERNEL + 0x20_0000, 0x20_0000, PAGE_2M, false, false)
            .unwrap();
        b.map(VMALLOC + 0x5000, 0x3000, PAGE_4K, true, true)
            .unwrap();
        let root = b.root();
        let mem = RawImage::from_bytes(b.into_ram(), 0);
        // CR3 with PCID bits and the no-flush bit.
        let t = Translator::new(root | 0x123 | 1 << 63, Paging::Four);
        for cached in [false, true, true] {
            let tr = |va| {
                if cached {
                    t.translate(&mem, va)
                } else {
                    t.translate_uncached(&mem, va)
                }
            };
            assert_eq!(
                tr(DIRECT + 0x12345).unwrap(),
                Translation {
                    pa: 0x12345,
                    page_size: PAGE_1G,
                    writable: true,
                    nx: true
                }
            );
            assert_eq!(
                tr(KERNEL + 0x20_0000 + 0x1_2345).unwrap(),
                Translation {
                    pa: 0x21_2345,
                    page_size: PAGE_2M,
                    writable: false,
                    nx: false
                }
            );
            assert_eq!(
                tr(VMALLOC + 0x5abc).unwrap(),
                Translation {
                    pa: 0x3abc,
                    page_size: PAGE_4K,
                    writable: true,
                    nx: true
                }
            );
            let e = tr(VMALLOC + 0x4abc).unwrap_err();
            assert!(matches!(e, Error::NotPresent { level: 1, .. }), "{e}");
            let e = tr(0x1000).unwrap_err();
            assert!(matches!(e, Error::NotPresent { level: 4, .. }), "{e}");
            let e = tr(0x0000_8000_0000_0000).unwrap_err();
            assert!(matches!(e, Error::NonCanonical { levels: 4, .. }), "{e}");
        }
        t.flush();
        assert_eq!(t.translate(&mem, DIRECT + 5).unwrap().pa, 5);
    }

    #[test]
    fn five_level_walks() {
        let (mem, root) = guest(Paging::Five);
        let t = Translator::new(root, Paging::Five);
        assert_eq!(t.translate(&mem, DIRECT + 0x7f_0001).unwrap().pa, 0x7f_0001);
        assert_eq!(t.translate(&mem, VMALLOC + 0x1008).unwrap().pa, 0x30_0008);
        // 57-bit canonical but not 48-bit canonical.
        let va = 0x00ff_0000_0000_0000;
        assert!(matches!(
            t.translate(&mem, va).unwrap_err(),
            Error::NotPresent { level: 5, .. }
        ));
        let t4 = Translator::new(root, Paging::Four);
        assert!(matches!(
            t4.translate(&mem, va).unwrap_err(),
            Error::NonCanonical { .. }
        ));
    }

    #[test]
    fn malformed_tables_are_reported() {
        let (mem, root) = guest(Paging::Four);
        let mut ram = vec![0u8; 8 << 20];
        mem.read(0, &mut ram).unwrap();
        let pml4_index = (DIRECT >> 39) & 511;
        let at = (root + pml4_index * 8) as usize;
        // A PML4 entry with PS set.
        let orig = u64::from_le_bytes(ram[at..at + 8].try_into().unwrap());
        ram[at..at + 8].copy_from_slice(&(orig | PTE_PS).to_le_bytes());
        let m = RawImage::from_bytes(ram.clone(), 0);
        let e = Translator::new(root, Paging::Four)
            .translate(&m, DIRECT)
            .unwrap_err();
        assert!(matches!(e, Error::BadPageTable { level: 4, .. }), "{e}");
        // A PML4 entry pointing outside RAM.
        ram[at..at + 8].copy_from_slice(&(0x7_0000_0000u64 | PTE_PRESENT).to_le_bytes());
        let m = RawImage::from_bytes(ram.clone(), 0);
        let e = Translator::new(root, Paging::Four)
            .translate(&m, DIRECT)
            .unwrap_err();
        assert!(matches!(e, Error::BadPageTable { level: 4, .. }), "{e}");
        assert!(e.to_string().contains("outside guest memory"), "{e}");
        // A root outside RAM.
        let e = Translator::new(1 << 40, Paging::Four)
            .translate(&m, DIRECT)
            .unwrap_err();
        assert!(matches!(e, Error::Unmapped { .. }), "{e}");
        // Reserved bits in a 2 MiB entry.
        ram[at..at + 8].copy_from_slice(&orig.to_le_bytes());
        let pdpt = orig & PTE_ADDR_MASK;
        let pd = u64::from_le_bytes(ram[pdpt as usize..pdpt as usize + 8].try_into().unwrap())
            & PTE_ADDR_MASK;
        let pde = u64::from_le_bytes(ram[pd as usize..pd as usize + 8].try_into().unwrap());
        ram[pd as usize..pd as usize + 8].copy_from_slice(&(pde | 1 << 14).to_le_bytes());
        let m = RawImage::from_bytes(ram, 0);
        let e = Translator::new(root, Paging::Four)
            .translate(&m, DIRECT)
            .unwrap_err();
        assert!(matches!(e, Error::BadPageTable { level: 2, .. }), "{e}");
    }

    #[test]
    fn cache_is_shared_across_threads() {
        let (mem, root) = guest(Paging::Four);
        let t = Translator::new(root, Paging::Four);
        std::thread::scope(|s| {
            for k in 0..4u64 {
                let (t, mem) = (&t, &mem);
                s.spawn(move || {
                    for i in 0..20_000u64 {
                        let off = ((i * 7919 + k * 104_729) % (8 << 20)) & !7;
                        assert_eq!(t.translate(mem, DIRECT + off).unwrap().pa, off);
                        let k_off = (i * 64) % 0x4000;
                        assert_eq!(
                            t.translate(mem, KERNEL + 0x20_0000 + k_off).unwrap().pa,
                            0x20_0000 + k_off
                        );
                    }
                });
            }
        });
    }

    /// A brute-force reference walk (no cache, no shortcuts).
    fn reference(mem: &RawImage, root: u64, paging: Paging, va: u64) -> Option<u64> {
        if !paging.is_canonical(va) {
            return None;
        }
        let mut table = root & PTE_ADDR_MASK;
        let mut level = paging.levels() as u32;
        loop {
            let idx = (va >> (12 + 9 * (level - 1))) & 511;
            let mut b = [0u8; 8];
            mem.read(table + idx * 8, &mut b).ok()?;
            let e = u64::from_le_bytes(b);
            if e & 1 == 0 {
                return None;
            }
            if level == 1 {
                return Some((e & PTE_ADDR_MASK) | (va & 0xfff));
            }
            if e & PTE_PS != 0 {
                if level > 3 {
                    return None;
                }
                let size = 1u64 << (12 + 9 * (level - 1));
                if e & (size - 1) & !0x1fff != 0 {
                    return None;
                }
                return Some((e & PTE_ADDR_MASK & !(size - 1)) | (va & (size - 1)));
            }
            table = e & PTE_ADDR_MASK;
            level -= 1;
        }
    }

    fn arb_va() -> impl Strategy<Value = u64> {
        prop_oneof![
            any::<u64>(),
            (0u64..1 << 47).prop_map(|a| a | 0xffff_8000_0000_0000),
            0u64..1 << 47,
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Random page tables (RAM full of entries pointing back into the same small RAM,
        /// with random flags), random roots, random addresses: the walk never panics, never
        /// loops, and agrees with the reference walk, cached or not.
        #[test]
        fn random_tables_never_panic_and_match_the_reference(
            seed_entries in proptest::collection::vec(any::<u64>(), 64),
            ram_pages in 1u64..8,
            root in any::<u64>(),
            five in any::<bool>(),
            vas in proptest::collection::vec(arb_va(), 1..64),
        ) {
            let len = (ram_pages * PAGE_4K) as usize;
            let mut ram = vec![0u8; len];
            for (i, chunk) in ram.chunks_mut(8).enumerate() {
                let e = seed_entries[i % seed_entries.len()];
                // Mostly point inside RAM so that walks go deep.
                let e = if e & 0x100 != 0 {
                    (e & !PTE_ADDR_MASK) | ((e >> 12) % ram_pages) << 12
                } else {
                    e
                };
                chunk.copy_from_slice(&e.rotate_left(i as u32 % 7).to_le_bytes()[..chunk.len()]);
            }
            let mem = RawImage::from_bytes(ram, 0);
            let paging = if five { Paging::Five } else { Paging::Four };
            let root = if root & 1 == 0 { (root % ram_pages) << 12 } else { root };
            let t = Translator::new(root, paging);
            for &va in vas.iter().chain(vas.iter()) {
                let want = reference(&mem, root, paging, va);
                let got = t.translate(&mem, va).ok().map(|x| x.pa);
                prop_assert_eq!(got, want);
                prop_assert_eq!(t.translate_uncached(&mem, va).ok().map(|x| x.pa), want);
            }
        }

        /// Mappings made with the builder translate back exactly.
        #[test]
        fn built_mappings_translate_back(
            pages in proptest::collection::vec((0u64..1 << 35, 0u64..1024, 0u8..3), 1..32),
        ) {
            let mut b = PageTableBuilder::new(vec![0u8; 2 << 20], 0, 2 << 20, Paging::Four).unwrap();
            let mut expect = Vec::new();
            for (vpn, ppn, kind) in pages {
                let size = [PAGE_4K, PAGE_2M, PAGE_1G][kind as usize];
                let va = 0xffff_8000_0000_0000 | ((vpn << 12) & !(size - 1) & ((1 << 47) - 1));
                let pa = (ppn << 30) & !(size - 1);
                if b.map(va, pa, size, true, false).is_ok() {
                    expect.push((va, pa, size));
                }
            }
            let root = b.root();
            let mem = RawImage::from_bytes(b.into_ram(), 0);
            let t = Translator::new(root, Paging::Four);
            // Later mappings may replace earlier ones at the same entry: check the last.
            for &(va, pa, size) in expect.iter().rev().take(1) {
                let x = t.translate(&mem, va + size / 2).unwrap();
                prop_assert_eq!(x.pa, pa + size / 2);
                prop_assert_eq!(x.page_size, size);
            }
        }
    }
}
