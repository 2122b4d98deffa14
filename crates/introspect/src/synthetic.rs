//! Synthetic guests for tests and fuzzers: RAM in a buffer with real x86-64 page tables,
//! virtual ranges mapped onto it, and bytes written through those mappings — what a
//! kernel would have left in memory, without a kernel or KVM.
//!
//! ```
//! use ambulance_introspect::synthetic::SyntheticGuest;
//!
//! let mut g = SyntheticGuest::new(4 << 20);
//! let va = 0xffff_8880_0010_0000;
//! g.map(va, 0x2000);
//! g.write_u64(va + 8, 0xdead_beef);
//! let program = g.program();
//! assert_eq!(program.read_u64(va + 8).unwrap(), 0xdead_beef);
//! assert!(program.read_u64(va + 0x2000).is_err());
//! ```
//!
//! Page tables take the first MiB of RAM (after page 0); data pages are handed out above
//! it. Mappings are 4 KiB pages unless [`map_alias`](SyntheticGuest::map_alias) asks
//! for large ones. Everything here panics on misuse (an unaligned address, RAM or table
//! pages exhausted): it builds test fixtures, it never reads guest input.

use std::sync::Arc;

use crate::memory::RawImage;
use crate::program::Program;
use crate::translate::{PageTableBuilder, Paging};

const PAGE: u64 = 4096;
/// Where data pages start (page tables live below).
const DATA_START: u64 = 0x10_0000;

/// A guest under construction. See the module documentation.
pub struct SyntheticGuest {
    tables: PageTableBuilder,
    /// Physical bump pointer for data pages.
    next_data: u64,
    /// `(va, len, pa, period)` of every mapping made, to write through: `va + off` is at
    /// `pa + off % period` (an alias repeats one page; others have `period == len`).
    mappings: Vec<(u64, u64, u64, u64)>,
}

impl SyntheticGuest {
    /// A guest of `ram_bytes` of RAM (at least 2 MiB, a multiple of 4 KiB) at
    /// guest-physical 0, with empty 4-level page tables.
    pub fn new(ram_bytes: u64) -> SyntheticGuest {
        assert!(ram_bytes >= 2 * DATA_START && ram_bytes.is_multiple_of(PAGE));
        let tables = PageTableBuilder::new(
            vec![0u8; ram_bytes as usize],
            PAGE,
            DATA_START,
            Paging::Four,
        )
        .expect("the table area fits");
        SyntheticGuest {
            tables,
            next_data: DATA_START,
            mappings: Vec::new(),
        }
    }

    /// The page-table root (CR3).
    pub fn page_table_root(&self) -> u64 {
        self.tables.root()
    }

    /// Allocates `len` bytes (rounded up to pages, zeroed) of physical memory, aligned
    /// to `align` (a power of two, at least a page); returns its address.
    pub fn alloc_phys(&mut self, len: u64, align: u64) -> u64 {
        let align = align.max(PAGE);
        let pa = self.next_data.next_multiple_of(align);
        let end = pa + len.next_multiple_of(PAGE);
        assert!(
            end <= self.tables.ram().len() as u64,
            "synthetic guest out of RAM: {len:#x} bytes more at {pa:#x}"
        );
        self.next_data = end;
        pa
    }

    /// Maps `[va, va + len)` (page-aligned start) onto fresh zeroed physical pages;
    /// returns their physical address.
    pub fn map(&mut self, va: u64, len: u64) -> u64 {
        let len = len.next_multiple_of(PAGE);
        let pa = self.alloc_phys(len, PAGE);
        self.map_to(va, pa, len);
        pa
    }

    /// Maps `[va, va + len)` onto the existing physical range at `pa`, with 4 KiB pages.
    pub fn map_to(&mut self, va: u64, pa: u64, len: u64) {
        let len = len.next_multiple_of(PAGE);
        self.tables
            .map_range(va, pa, len, PAGE, true, true)
            .unwrap_or_else(|e| panic!("cannot map {va:#x}: {e}"));
        self.mappings.push((va, len, pa, len));
    }

    /// Maps `count` consecutive pages of `page_size` (4 KiB, 2 MiB or 1 GiB) from `va`
    /// all onto the same physical page at `pa`: a huge virtual range over little RAM,
    /// as a crafted guest would declare to make a reader work hard.
    pub fn map_alias(&mut self, va: u64, pa: u64, page_size: u64, count: u64) {
        for i in 0..count {
            self.tables
                .map(va + i * page_size, pa, page_size, false, true)
                .unwrap_or_else(|e| panic!("cannot map {va:#x} page {i}: {e}"));
        }
        self.mappings.push((va, page_size * count, pa, page_size));
    }

    /// The physical address of `va` through the mappings made here.
    pub fn phys(&self, va: u64) -> u64 {
        self.mappings
            .iter()
            .rev()
            .find(|&&(start, len, ..)| va >= start && va - start < len)
            .map(|&(start, _, pa, period)| pa + (va - start) % period)
            .unwrap_or_else(|| panic!("{va:#x} is not mapped in the synthetic guest"))
    }

    /// Writes `bytes` at guest-virtual `va` (which must be mapped here).
    pub fn write(&mut self, va: u64, bytes: &[u8]) {
        for (i, &b) in bytes.iter().enumerate() {
            let pa = self.phys(va + i as u64) as usize;
            self.tables.ram_mut()[pa] = b;
        }
    }

    /// Writes `bytes` at guest-physical `pa`.
    pub fn write_phys(&mut self, pa: u64, bytes: &[u8]) {
        let pa = pa as usize;
        self.tables.ram_mut()[pa..pa + bytes.len()].copy_from_slice(bytes);
    }

    /// Writes a little-endian `u64` at `va`.
    pub fn write_u64(&mut self, va: u64, v: u64) {
        self.write(va, &v.to_le_bytes());
    }

    /// Writes a little-endian `u32` at `va`.
    pub fn write_u32(&mut self, va: u64, v: u32) {
        self.write(va, &v.to_le_bytes());
    }

    /// Writes a byte at `va`.
    pub fn write_u8(&mut self, va: u64, v: u8) {
        self.write(va, &[v]);
    }

    /// The RAM as it stands.
    pub fn ram(&self) -> &[u8] {
        self.tables.ram()
    }

    /// The RAM as physical memory, and the page-table root.
    pub fn into_memory(self) -> (Arc<RawImage>, u64) {
        let root = self.tables.root();
        (
            Arc::new(RawImage::from_bytes(self.tables.into_ram(), 0)),
            root,
        )
    }

    /// A [`Program`] over the RAM as it stands (the guest stays buildable).
    pub fn program(&self) -> Program {
        Program::new(
            Arc::new(RawImage::from_bytes(self.tables.ram().to_vec(), 0)),
            self.tables.root(),
            Paging::Four,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_writes_and_aliases() {
        let mut g = SyntheticGuest::new(4 << 20);
        let va = 0xffff_8880_0020_0000;
        let pa = g.map(va, 3 * PAGE);
        g.write(va + PAGE - 2, &[1, 2, 3, 4]);
        assert_eq!(&g.ram()[(pa + PAGE - 2) as usize..][..4], &[1, 2, 3, 4]);
        let alias = 0xffff_c900_0000_0000;
        g.map_alias(alias, pa, PAGE, 1000);
        let p = g.program();
        let mut b = [0u8; 4];
        p.read_virt(alias + 999 * PAGE + PAGE - 2, &mut b[..2])
            .unwrap();
        assert_eq!(&b[..2], &[1, 2]);
        assert!(p.read_u8(alias + 1000 * PAGE).is_err());
        assert!(p.read_u8(va + 3 * PAGE).is_err());
        assert_eq!(p.read_u32(va + PAGE - 2).unwrap(), 0x0403_0201);
    }
}
