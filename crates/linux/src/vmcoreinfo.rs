//! Linux's VMCOREINFO, interpreted: finding the kernel's note in guest RAM (at a registered
//! address or by scanning for it), and what its entries say about translation — where the
//! page tables are, how many levels they have, and the KASLR slide.
//!
//! The text format itself (`KEY=value` lines) is parsed by
//! [`ambulance_introspect::vmcoreinfo::Vmcoreinfo`], which also reads the test kernel's
//! registration; what the entries mean for Linux is here.

use std::sync::Arc;

use ambulance_introspect::memory::PhysicalMemory;
use ambulance_introspect::program::Program;
use ambulance_introspect::translate::Paging;
use ambulance_introspect::vmcoreinfo::Vmcoreinfo;

use crate::{Error, Result};

/// The largest VMCOREINFO note buffer accepted. The kernel's (`VMCOREINFO_NOTE_SIZE`) is
/// a page of text plus the note headers — 0x1024 bytes on x86-64 with 4 KiB pages, as
/// `/sys/kernel/vmcoreinfo` reports it; two pages leave room for larger pages' headers.
pub const VMCOREINFO_NOTE_MAX: usize = 8192;

/// The ELF note name Linux gives VMCOREINFO, NUL-terminated and padded to 4 bytes.
const NOTE_NAME: &[u8; 12] = b"VMCOREINFO\0\0";

/// Linux's `__START_KERNEL_map` on x86-64: kernel-image addresses are this plus the
/// physical address, less `phys_base`.
pub const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;

/// The VMCOREINFO text of the ELF note at guest-physical `pa` (as
/// `/sys/kernel/vmcoreinfo` names it: the note's address and the buffer's size).
pub fn vmcoreinfo_note_at(mem: &dyn PhysicalMemory, pa: u64, size: u64) -> Result<String> {
    let bad = |reason: String| Error::VmcoreinfoNote { pa, reason };
    if size < 12 + NOTE_NAME.len() as u64 || size > VMCOREINFO_NOTE_MAX as u64 {
        return Err(bad(format!(
            "size {size} is not that of a VMCOREINFO note (24..={VMCOREINFO_NOTE_MAX} bytes)"
        )));
    }
    let mut buf = vec![0u8; size as usize];
    mem.read(pa, &mut buf)?;
    note_text(&buf).map_err(bad)
}

/// Parses a VMCOREINFO ELF note (header, name, text) out of `buf`.
fn note_text(buf: &[u8]) -> std::result::Result<String, String> {
    let word = |i: usize| {
        buf.get(i..i + 4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if buf.len() < 24 {
        return Err("shorter than a note header".into());
    }
    let (namesz, descsz, n_type) = (word(0), word(4), word(8));
    if namesz != 11 || &buf[12..24] != NOTE_NAME {
        return Err("no \"VMCOREINFO\" note header".into());
    }
    if n_type != 0 {
        return Err(format!("note type {n_type}, expected 0"));
    }
    let desc = buf
        .get(24..24usize.saturating_add(descsz as usize))
        .ok_or_else(|| format!("text of {descsz} bytes runs past the note buffer"))?;
    // The kernel NUL-terminates nothing here, but tolerate padding.
    let end = desc.iter().position(|&b| b == 0).unwrap_or(desc.len());
    let text = std::str::from_utf8(&desc[..end]).map_err(|e| format!("text is not UTF-8: {e}"))?;
    if !text.starts_with("OSRELEASE=") {
        return Err("text does not start with OSRELEASE=".into());
    }
    Ok(text.to_string())
}

/// Finds the VMCOREINFO note by scanning guest RAM page by page: the kernel allocates it
/// page-aligned, with the `VMCOREINFO` note header at the page's start and text that
/// begins `OSRELEASE=`. Returns its guest-physical address and text.
///
/// This is the fallback when neither a core note nor a registration gives the address;
/// it reads at most 24 bytes of each page that is held contiguously, so a 512 MiB guest
/// is scanned in milliseconds.
pub fn scan_vmcoreinfo(mem: &dyn PhysicalMemory) -> Option<(u64, String)> {
    let mut header = [0u8; 24];
    let holes = mem.holes();
    // Pages in a hole read as zeros: no note there, and reading would allocate them.
    let hole_end = |pa: u64| {
        let i = holes.partition_point(|h| h.end() <= pa);
        holes.get(i).filter(|h| h.contains(pa)).map(|h| h.end())
    };
    for range in mem.ranges() {
        let mut pa = range.start.next_multiple_of(4096);
        while pa.saturating_add(24) <= range.end() {
            if let Some(end) = hole_end(pa) {
                pa = end.next_multiple_of(4096).max(pa + 4096);
                continue;
            }
            let head = match mem.slice(pa, 24) {
                Some(s) => s,
                None => match mem.read(pa, &mut header) {
                    Ok(()) => &header[..],
                    Err(_) => {
                        pa += 4096;
                        continue;
                    }
                },
            };
            if head[0] == 11 && &head[12..24] == NOTE_NAME {
                let len = VMCOREINFO_NOTE_MAX.min((range.end() - pa) as usize);
                let mut page = vec![0u8; len];
                if mem.read(pa, &mut page).is_ok() {
                    if let Ok(text) = note_text(&page) {
                        return Some((pa, text));
                    }
                }
            }
            pa += 4096;
        }
    }
    None
}

/// The physical address of the kernel's page tables: `swapper_pg_dir`'s kernel-image
/// address minus `__START_KERNEL_map`, plus `phys_base` (signed: negative when the kernel
/// runs below where it was linked). `None` without both entries, or when
/// `swapper_pg_dir` is not a kernel-image address.
pub fn page_table_root(vmcoreinfo: &Vmcoreinfo) -> Option<u64> {
    let pgd = vmcoreinfo.symbol("swapper_pg_dir")?;
    let phys_base = vmcoreinfo.number("phys_base")?;
    pgd.checked_sub(START_KERNEL_MAP)
        .map(|p| p.wrapping_add(phys_base as u64))
}

/// The paging mode: 5 levels when `NUMBER(pgtable_l5_enabled)` is 1, else 4.
pub fn paging(vmcoreinfo: &Vmcoreinfo) -> Paging {
    if vmcoreinfo.number("pgtable_l5_enabled") == Some(1) {
        Paging::Five
    } else {
        Paging::Four
    }
}

/// The KASLR slide of the kernel's virtual addresses (`KERNELOFFSET`, 0 when absent):
/// what to add to a vmlinux file's addresses to get the running kernel's.
pub fn kaslr_offset(vmcoreinfo: &Vmcoreinfo) -> u64 {
    vmcoreinfo.kerneloffset().unwrap_or(0)
}

/// A [`Program`] over a Linux guest's memory from its VMCOREINFO alone: translation through
/// `swapper_pg_dir` with as many levels as [`paging`] says, and VMCOREINFO's symbols and
/// layouts. No other symbols or types yet: [`crate::sources::load`] adds them.
pub fn program(memory: Arc<dyn PhysicalMemory>, vmcoreinfo: &Vmcoreinfo) -> Result<Program> {
    let root = page_table_root(vmcoreinfo).ok_or(Error::NoPageTables {
        missing: if vmcoreinfo.symbol("swapper_pg_dir").is_none() {
            "SYMBOL(swapper_pg_dir)"
        } else if vmcoreinfo.number("phys_base").is_none() {
            "NUMBER(phys_base)"
        } else {
            "SYMBOL(swapper_pg_dir) in the kernel image"
        },
    })?;
    Ok(Program::new(memory, root, paging(vmcoreinfo)).with_vmcoreinfo(vmcoreinfo.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ambulance_introspect::memory::RawImage;

    fn note(text: &str) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&11u32.to_le_bytes());
        n.extend_from_slice(&(text.len() as u32).to_le_bytes());
        n.extend_from_slice(&0u32.to_le_bytes());
        n.extend_from_slice(NOTE_NAME);
        n.extend_from_slice(text.as_bytes());
        n
    }

    #[test]
    fn finds_the_note_by_address_and_by_scan() {
        let text = "OSRELEASE=6.1.0-test\nPAGESIZE=4096\n";
        let mut ram = vec![0u8; 64 << 10];
        // A decoy: the header without OSRELEASE= text, then the real one.
        let decoy = note("NOTREALLY=1\n");
        ram[0x3000..0x3000 + decoy.len()].copy_from_slice(&decoy);
        let n = note(text);
        ram[0x9000..0x9000 + n.len()].copy_from_slice(&n);
        let mem = RawImage::from_bytes(ram, 0x10_0000);
        assert_eq!(scan_vmcoreinfo(&mem), Some((0x10_9000, text.to_string())));
        assert_eq!(vmcoreinfo_note_at(&mem, 0x10_9000, 4096).unwrap(), text);
        let e = vmcoreinfo_note_at(&mem, 0x10_3000, 4096).unwrap_err();
        assert!(e.to_string().contains("OSRELEASE"), "{e}");
        let e = vmcoreinfo_note_at(&mem, 0x10_4000, 4096).unwrap_err();
        assert!(
            e.to_string().contains("no \"VMCOREINFO\" note header"),
            "{e}"
        );
        // The size /sys/kernel/vmcoreinfo gives on x86-64.
        assert_eq!(vmcoreinfo_note_at(&mem, 0x10_9000, 0x1024).unwrap(), text);
        let e = vmcoreinfo_note_at(&mem, 0x10_9000, 1 << 30).unwrap_err();
        assert!(e.to_string().contains("size"), "{e}");
        let e = vmcoreinfo_note_at(&mem, 0x1_0000_0000, 4096).unwrap_err();
        assert!(e.to_string().contains("not in"), "{e}");
    }

    #[test]
    fn a_lying_descsz_is_an_error_not_a_panic() {
        let mut n = note("OSRELEASE=x\n");
        n[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(note_text(&n).unwrap_err().contains("runs past"));
        assert!(note_text(&n[..10]).is_err());
    }

    #[test]
    fn scan_of_memory_without_a_note_finds_nothing() {
        let mem = RawImage::from_bytes(vec![0xab; 1 << 20], 0);
        assert_eq!(scan_vmcoreinfo(&mem), None);
    }

    #[test]
    fn translation_entries() {
        let v = |text: &str| Vmcoreinfo::parse(text).unwrap();
        let linked = v("SYMBOL(swapper_pg_dir)=ffffffff8260a000\nNUMBER(phys_base)=0\n");
        assert_eq!(page_table_root(&linked), Some(0x260_a000));
        assert_eq!(paging(&linked), Paging::Four);
        assert_eq!(kaslr_offset(&linked), 0);
        // Loaded 16 MiB below where it was linked, five levels, slid by KASLR.
        let moved = v(
            "SYMBOL(swapper_pg_dir)=ffffffff9a60a000\nNUMBER(phys_base)=-16777216\n\
             NUMBER(pgtable_l5_enabled)=1\nKERNELOFFSET=19000000\n",
        );
        assert_eq!(page_table_root(&moved), Some(0x1a60_a000 - 0x100_0000));
        assert_eq!(paging(&moved), Paging::Five);
        assert_eq!(kaslr_offset(&moved), 0x1900_0000);
        // Not a kernel-image address; entries missing.
        let low = v("SYMBOL(swapper_pg_dir)=1000\nNUMBER(phys_base)=0\n");
        assert_eq!(page_table_root(&low), None);
        let mem: Arc<dyn PhysicalMemory> = Arc::new(RawImage::from_bytes(vec![0; 4096], 0));
        for (text, missing) in [
            ("NUMBER(phys_base)=0\n", "SYMBOL(swapper_pg_dir)"),
            (
                "SYMBOL(swapper_pg_dir)=ffffffff8260a000\n",
                "NUMBER(phys_base)",
            ),
        ] {
            let e = program(mem.clone(), &v(text)).unwrap_err();
            assert!(e.to_string().contains(missing), "{e}");
        }
        let p = program(mem, &linked).unwrap();
        assert_eq!(p.translator().root(), 0x260_a000);
        assert!(p.vmcoreinfo().is_some());
    }
}
