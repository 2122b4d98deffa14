//! A synthetic guest from fuzz input: VMCOREINFO text and a few pages of kernel memory
//! at the virtual addresses it names, behind real 4-level page tables.
//!
//! The kallsyms and printk readers find their tables through VMCOREINFO's `SYMBOL()`
//! lines and read them through the kernel's page tables; the fuzz input carries both, in
//! this encoding (little-endian):
//!
//! ```text
//! u16            length of the VMCOREINFO text (cut to what the input has)
//! [u8; length]   the text
//! then, until the input ends, regions:
//!   u64          guest-virtual address
//!   u32          length (cut to what the input still has)
//!   [u8; length] the bytes there
//! ```
//!
//! Every 4 KiB page a region touches is mapped (present, writable, NX) to its own
//! guest-physical page; pages not covered read as unmapped. Regions may share pages (the
//! later bytes win). At most [`MAX_PAGES`] pages are mapped; regions at non-canonical
//! addresses are left out. The seeds are made with [`GuestImage::encode`].

use std::collections::BTreeMap;
use std::sync::Arc;

use ambulance_introspect::memory::RawImage;
use ambulance_introspect::program::Program;
use ambulance_introspect::translate::{PageTableBuilder, Paging};

const PAGE: u64 = 4096;
/// The most data pages one input maps (16 MiB).
pub const MAX_PAGES: usize = 4096;

/// The decoded input.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestImage {
    /// VMCOREINFO text (as bytes: the parser decides what to make of non-UTF-8).
    pub vmcoreinfo: Vec<u8>,
    /// `(guest-virtual address, bytes)`.
    pub regions: Vec<(u64, Vec<u8>)>,
}

fn take<'a>(data: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if data.len() < n {
        return None;
    }
    let (head, rest) = data.split_at(n);
    *data = rest;
    Some(head)
}

impl GuestImage {
    /// Decodes fuzz input; `None` when it is shorter than the text's length field.
    pub fn decode(mut data: &[u8]) -> Option<GuestImage> {
        let len = u16::from_le_bytes(take(&mut data, 2)?.try_into().ok()?) as usize;
        let len = len.min(data.len());
        let vmcoreinfo = take(&mut data, len)?.to_vec();
        let mut regions = Vec::new();
        while data.len() >= 12 {
            let va = u64::from_le_bytes(take(&mut data, 8)?.try_into().ok()?);
            let len = u32::from_le_bytes(take(&mut data, 4)?.try_into().ok()?) as usize;
            let len = len.min(data.len());
            let bytes = take(&mut data, len)?.to_vec();
            regions.push((va, bytes));
        }
        Some(GuestImage {
            vmcoreinfo,
            regions,
        })
    }

    /// The input that decodes to this image.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let len = self.vmcoreinfo.len().min(u16::MAX as usize);
        out.extend_from_slice(&(len as u16).to_le_bytes());
        out.extend_from_slice(&self.vmcoreinfo[..len]);
        for (va, bytes) in &self.regions {
            out.extend_from_slice(&va.to_le_bytes());
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(bytes);
        }
        out
    }

    /// The VMCOREINFO text, lossily decoded.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.vmcoreinfo).into_owned()
    }

    /// The guest: RAM holding the page tables and the regions' pages, read through them.
    pub fn program(&self) -> Program {
        let mut pages: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        'regions: for (va, bytes) in &self.regions {
            let mut off = 0usize;
            while off < bytes.len() {
                let Some(at) = va.checked_add(off as u64) else {
                    continue 'regions;
                };
                if !Paging::Four.is_canonical(at) {
                    continue 'regions;
                }
                let page = at & !(PAGE - 1);
                if !pages.contains_key(&page) && pages.len() >= MAX_PAGES {
                    break 'regions;
                }
                let buf = pages
                    .entry(page)
                    .or_insert_with(|| vec![0u8; PAGE as usize]);
                let in_page = (at - page) as usize;
                let n = (PAGE as usize - in_page).min(bytes.len() - off);
                buf[in_page..in_page + n].copy_from_slice(&bytes[off..off + n]);
                off += n;
            }
        }
        // Tables: the root, and at most three more per data page.
        let table_pages = 1 + 3 * pages.len() as u64;
        let tables_start = PAGE;
        let data_start = tables_start + table_pages * PAGE;
        let ram_len = data_start + pages.len() as u64 * PAGE;
        let mut b = PageTableBuilder::new(
            vec![0u8; ram_len as usize],
            tables_start,
            data_start,
            Paging::Four,
        )
        .expect("the table area lies inside RAM");
        for (i, (va, bytes)) in pages.iter().enumerate() {
            let pa = data_start + i as u64 * PAGE;
            b.map(*va, pa, PAGE, true, true)
                .expect("canonical, aligned, and tables enough");
            b.ram_mut()[pa as usize..(pa + PAGE) as usize].copy_from_slice(bytes);
        }
        let root = b.root();
        Program::new(
            Arc::new(RawImage::from_bytes(b.into_ram(), 0)),
            root,
            Paging::Four,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_maps_what_it_says() {
        let image = GuestImage {
            vmcoreinfo: b"OSRELEASE=6.1.0\n".to_vec(),
            regions: vec![
                (0xffff_ffff_8200_0ff8, (0u8..16).collect()),
                (0xffff_c900_0000_0000, vec![0xaa; 5000]),
                (0x0000_8000_0000_0000, vec![1; 8]),
            ],
        };
        let bytes = image.encode();
        assert_eq!(GuestImage::decode(&bytes).unwrap(), image);
        let p = image.program();
        assert_eq!(
            p.read_u64(0xffff_ffff_8200_0ff8).unwrap(),
            u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7])
        );
        assert_eq!(
            p.read_u64(0xffff_ffff_8200_1000).unwrap(),
            u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15])
        );
        assert_eq!(
            p.read_u64(0xffff_c900_0000_1380).unwrap(),
            0xaaaa_aaaa_aaaa_aaaa
        );
        assert!(p.read_u64(0xffff_c900_0000_2000).is_err());
    }

    #[test]
    fn short_and_empty_inputs() {
        assert_eq!(GuestImage::decode(&[]), None);
        assert_eq!(GuestImage::decode(&[5]), None);
        let image = GuestImage::decode(&[5, 0, b'a']).unwrap();
        assert_eq!(image.vmcoreinfo, b"a");
        assert!(image.regions.is_empty());
        let _ = image.program();
    }
}
