//! A [`Program`]: one guest kernel as diagnosis sees it — physical memory, the page tables
//! to translate its virtual addresses, and, when available, its symbols (ELF), types
//! (DWARF) and VMCOREINFO.
//!
//! A `Program` is `Send + Sync`: walkers and validators may share one across threads.

use std::sync::Arc;

use crate::memory::PhysicalMemory;
use crate::object::{MemberLayout, Object};
use crate::symbols::Symbols;
use crate::translate::{Paging, Translation, Translator};
use crate::types::{TypeId, TypeSource};
use crate::vmcoreinfo::Vmcoreinfo;
use crate::{Error, Result};

/// A guest kernel to read.
pub struct Program {
    mem: Arc<dyn PhysicalMemory>,
    translator: Translator,
    symbols: Option<Arc<Symbols>>,
    types: Option<Arc<dyn TypeSource>>,
    vmcoreinfo: Option<Vmcoreinfo>,
    vmcoreinfo_types: Option<Arc<dyn TypeSource>>,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program")
            .field("memory", &self.mem.describe())
            .field("translator", &self.translator)
            .field("symbols", &self.symbols.is_some())
            .field("types", &self.types.as_ref().map(|t| t.describe()))
            .field("vmcoreinfo", &self.vmcoreinfo.is_some())
            .finish()
    }
}

impl Program {
    /// A program over `mem`, translating through the page tables at `page_table_root`
    /// (a CR3 value).
    pub fn new(mem: Arc<dyn PhysicalMemory>, page_table_root: u64, paging: Paging) -> Program {
        Program {
            mem,
            translator: Translator::new(page_table_root, paging),
            symbols: None,
            types: None,
            vmcoreinfo: None,
            vmcoreinfo_types: None,
        }
    }

    /// Adds the kernel's ELF symbols (looked up first by [`symbol`](Self::symbol)).
    pub fn with_symbols(mut self, symbols: impl Into<Arc<Symbols>>) -> Program {
        self.symbols = Some(symbols.into());
        self
    }

    /// Adds a type source such as DWARF (looked up first by [`find_type`](Self::find_type)).
    pub fn with_types(mut self, types: Arc<dyn TypeSource>) -> Program {
        self.types = Some(types);
        self
    }

    /// Adds VMCOREINFO: its symbols and structure layouts back up the ELF symbols and DWARF.
    pub fn with_vmcoreinfo(mut self, vmcoreinfo: Vmcoreinfo) -> Program {
        self.vmcoreinfo_types = Some(vmcoreinfo.types());
        self.vmcoreinfo = Some(vmcoreinfo);
        self
    }

    /// The physical memory.
    pub fn memory(&self) -> &Arc<dyn PhysicalMemory> {
        &self.mem
    }

    /// The translator (for its cache and root).
    pub fn translator(&self) -> &Translator {
        &self.translator
    }

    /// The ELF symbols, if given.
    pub fn symbols(&self) -> Option<&Symbols> {
        self.symbols.as_deref()
    }

    /// The primary type source, if given.
    pub fn types(&self) -> Option<&Arc<dyn TypeSource>> {
        self.types.as_ref()
    }

    /// The VMCOREINFO, if given.
    pub fn vmcoreinfo(&self) -> Option<&Vmcoreinfo> {
        self.vmcoreinfo.as_ref()
    }

    // ---- memory ----

    /// Full translation of `va`.
    #[inline]
    pub fn translation(&self, va: u64) -> Result<Translation> {
        self.translator.translate(&*self.mem, va)
    }

    /// The guest-physical address of `va`.
    #[inline]
    pub fn translate(&self, va: u64) -> Result<u64> {
        Ok(self.translation(va)?.pa)
    }

    /// Whether `va` is mapped to memory this program can read.
    pub fn is_mapped(&self, va: u64) -> bool {
        match self.translation(va) {
            Ok(t) => self.mem.slice(t.pa, 1).is_some() || self.mem.read(t.pa, &mut [0]).is_ok(),
            Err(_) => false,
        }
    }

    /// Reads guest-physical memory.
    pub fn read_phys(&self, pa: u64, buf: &mut [u8]) -> Result<()> {
        self.mem.read(pa, buf)
    }

    /// Reads `buf.len()` bytes of guest-virtual memory at `va`, across pages.
    pub fn read_virt(&self, va: u64, buf: &mut [u8]) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let cur = va
                .checked_add(done as u64)
                .ok_or_else(|| self.past_the_end(va))?;
            let t = self.translation(cur)?;
            let left_in_page = t.page_size - (cur & (t.page_size - 1));
            let n = (left_in_page.min((buf.len() - done) as u64)) as usize;
            self.mem.read(t.pa, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    #[cold]
    fn past_the_end(&self, va: u64) -> Error {
        Error::NonCanonical {
            va: va.wrapping_add(u64::MAX),
            levels: self.translator.paging().levels(),
        }
    }

    /// Reads `N` bytes at `va`: without copying through a buffer when they lie in one
    /// page and the source holds them contiguously (the common case).
    #[inline]
    pub fn read_array<const N: usize>(&self, va: u64) -> Result<[u8; N]> {
        if N <= 4096 && (va & 0xfff) as usize <= 4096 - N {
            let t = self.translation(va)?;
            if let Some(a) = self
                .mem
                .slice(t.pa, N)
                .and_then(|s| <[u8; N]>::try_from(s).ok())
            {
                return Ok(a);
            }
        }
        let mut b = [0u8; N];
        self.read_virt(va, &mut b)?;
        Ok(b)
    }

    /// The whole page containing `va` as one zero-copy slice, with the page's virtual
    /// base address — when `va` is mapped and the source holds the page contiguously.
    /// Walkers use it to read many nearby words with one translation.
    #[inline]
    pub fn page_window(&self, va: u64) -> Option<PageWindow<'_>> {
        let t = self.translation(va).ok()?;
        let offset = va & (t.page_size - 1);
        let bytes = self.mem.slice(t.pa - offset, t.page_size as usize)?;
        Some(PageWindow {
            base: va - offset,
            bytes,
        })
    }

    /// Reads a `u8`.
    #[inline]
    pub fn read_u8(&self, va: u64) -> Result<u8> {
        Ok(self.read_array::<1>(va)?[0])
    }

    /// Reads a little-endian `u16`.
    #[inline]
    pub fn read_u16(&self, va: u64) -> Result<u16> {
        Ok(u16::from_le_bytes(self.read_array(va)?))
    }

    /// Reads a little-endian `u32`.
    #[inline]
    pub fn read_u32(&self, va: u64) -> Result<u32> {
        Ok(u32::from_le_bytes(self.read_array(va)?))
    }

    /// Reads a little-endian `u64`.
    #[inline]
    pub fn read_u64(&self, va: u64) -> Result<u64> {
        Ok(u64::from_le_bytes(self.read_array(va)?))
    }

    // ---- symbols and types ----

    /// The address of symbol `name`: ELF symbols first, then VMCOREINFO's `SYMBOL()`.
    pub fn symbol(&self, name: &str) -> Result<u64> {
        if let Some(a) = self.symbols.as_ref().and_then(|s| s.get(name)) {
            return Ok(a);
        }
        if let Some(a) = self.vmcoreinfo.as_ref().and_then(|v| v.symbol(name)) {
            return Ok(a);
        }
        let mut searched = Vec::new();
        if let Some(s) = &self.symbols {
            searched.push(s.describe());
        }
        if self.vmcoreinfo.is_some() {
            searched.push("VMCOREINFO".to_string());
        }
        Err(Error::NoSymbol {
            name: name.to_string(),
            searched: if searched.is_empty() {
                "no symbol table or VMCOREINFO loaded".to_string()
            } else {
                searched.join(", ")
            },
        })
    }

    /// The type called `name`: the primary source (DWARF) first, then VMCOREINFO's layouts.
    pub fn find_type(&self, name: &str) -> Result<(Arc<dyn TypeSource>, TypeId)> {
        let mut searched = Vec::new();
        let mut other_error = None;
        for src in [&self.types, &self.vmcoreinfo_types].into_iter().flatten() {
            match src.find(name) {
                Ok(id) => return Ok((src.clone(), id)),
                Err(Error::NoType { .. }) => {}
                Err(e) => {
                    other_error.get_or_insert(e);
                }
            }
            searched.push(src.describe());
        }
        if let Some(e) = other_error {
            return Err(e);
        }
        Err(Error::NoType {
            name: name.to_string(),
            searched: if searched.is_empty() {
                "no debug info or VMCOREINFO loaded".to_string()
            } else {
                searched.join(", ")
            },
        })
    }

    /// The object of type `type_name` at `addr`.
    pub fn object(&self, addr: u64, type_name: &str) -> Result<Object<'_>> {
        let (src, ty) = self.find_type(type_name)?;
        Ok(Object::new(self, src, addr, ty))
    }

    /// Where `member_path` (`a.b.c`, `comm[3]`, through anonymous members, not through
    /// pointers) is in the type `type_name`, found once to read it in many objects (see
    /// [`MemberLayout`]).
    ///
    /// Every type source that has the type is asked in turn — the primary one (DWARF,
    /// BTF) first, then VMCOREINFO's layouts — so a member only VMCOREINFO describes, as
    /// a registration's inline layouts do, is found as well. VMCOREINFO's `OFFSET(a.b.c)`
    /// is found as the path `b.c` of `a`.
    pub fn member_layout(&self, type_name: &str, member_path: &str) -> Result<MemberLayout> {
        let mut first_error = None;
        for src in [&self.types, &self.vmcoreinfo_types].into_iter().flatten() {
            let found = src
                .find(type_name)
                .and_then(|ty| MemberLayout::resolve(src.clone(), ty, member_path));
            match found {
                Ok(m) => return Ok(m),
                // This source does not have the type.
                Err(Error::NoType { .. }) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(match first_error {
            Some(e) => e,
            None => match self.find_type(type_name) {
                Err(e) => e,
                Ok(_) => Error::NoMember {
                    ty: type_name.to_string(),
                    member: member_path.to_string(),
                },
            },
        })
    }

    /// Byte offset of `member_path` (`a.b.c`, through anonymous members, not through
    /// pointers) inside type `type_name`, from the first type source that has it (see
    /// [`member_layout`](Self::member_layout)).
    pub fn offset_of(&self, type_name: &str, member_path: &str) -> Result<u64> {
        Ok(self.member_layout(type_name, member_path)?.offset())
    }

    /// The size in bytes of the type called `type_name` ([`find_type`](Self::find_type));
    /// `None` when no type source has it, or has it without a size (a declaration).
    pub fn size_of(&self, type_name: &str) -> Option<u64> {
        let (types, id) = self.find_type(type_name).ok()?;
        types.get(id).ok()?.size
    }
}

/// One mapped page of guest-virtual memory, readable without translation.
#[derive(Clone, Copy, Debug)]
pub struct PageWindow<'a> {
    /// Virtual address of the page's first byte.
    pub base: u64,
    /// The page's bytes.
    pub bytes: &'a [u8],
}

impl PageWindow<'_> {
    /// The little-endian `u64` at `va`, if all 8 bytes lie in this page.
    #[inline]
    pub fn read_u64(&self, va: u64) -> Option<u64> {
        let off = usize::try_from(va.wrapping_sub(self.base)).ok()?;
        let b = self.bytes.get(off..off.checked_add(8)?)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::RawImage;
    use crate::translate::PageTableBuilder;

    const DIRECT: u64 = 0xffff_8880_0000_0000;
    const VMALLOC: u64 = 0xffff_c900_0000_0000;

    fn program() -> Program {
        let mut b =
            PageTableBuilder::new(vec![0u8; 4 << 20], 0x1000, 0x10_0000, Paging::Four).unwrap();
        b.map_range(DIRECT, 0, 4 << 20, 2 << 20, true, true)
            .unwrap();
        // Two virtually adjacent pages backed by physically distant frames.
        b.map(VMALLOC, 0x30_0000, 4096, true, true).unwrap();
        b.map(VMALLOC + 4096, 0x20_0000, 4096, true, true).unwrap();
        let ram = b.ram_mut();
        for i in 0..4096 {
            ram[0x30_0000 + i] = 0x11;
            ram[0x20_0000 + i] = 0x22;
        }
        ram[0x28_0000..0x28_0008].copy_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
        let root = b.root();
        Program::new(
            Arc::new(RawImage::from_bytes(b.into_ram(), 0)),
            root,
            Paging::Four,
        )
    }

    #[test]
    fn reads_cross_pages_and_widths() {
        let p = program();
        assert_eq!(
            p.read_u64(DIRECT + 0x28_0000).unwrap(),
            0x0102_0304_0506_0708
        );
        assert_eq!(p.read_u32(DIRECT + 0x28_0000).unwrap(), 0x0506_0708);
        assert_eq!(p.read_u16(DIRECT + 0x28_0006).unwrap(), 0x0102);
        assert_eq!(p.read_u8(DIRECT + 0x28_0007).unwrap(), 0x01);
        // Crossing from one 4 KiB page into a physically unrelated one.
        assert_eq!(p.read_u64(VMALLOC + 4092).unwrap(), 0x2222_2222_1111_1111);
        let mut buf = vec![0u8; 8192];
        p.read_virt(VMALLOC, &mut buf).unwrap();
        assert!(buf[..4096].iter().all(|&b| b == 0x11));
        assert!(buf[4096..].iter().all(|&b| b == 0x22));
        // Running into the unmapped page after.
        let e = p.read_u64(VMALLOC + 8188).unwrap_err();
        assert!(matches!(e, Error::NotPresent { .. }), "{e}");
        assert!(p.read_virt(u64::MAX - 3, &mut [0u8; 8]).is_err());
        assert_eq!(p.translate(VMALLOC + 5).unwrap(), 0x30_0005);
        assert!(p.is_mapped(VMALLOC));
        assert!(!p.is_mapped(VMALLOC + 8192));
        assert!(!p.is_mapped(0x1234));
        assert!(!p.is_mapped(1 << 63));
        let w = p.page_window(VMALLOC + 100).unwrap();
        assert_eq!(w.base, VMALLOC);
        assert_eq!(w.bytes.len(), 4096);
        assert_eq!(w.read_u64(VMALLOC + 4088), Some(0x1111_1111_1111_1111));
        assert_eq!(w.read_u64(VMALLOC + 4089), None);
        assert_eq!(w.read_u64(VMALLOC - 1), None);
        let w = p.page_window(DIRECT + 0x28_0000).unwrap();
        assert_eq!(w.bytes.len(), 2 << 20);
        assert_eq!(w.read_u64(DIRECT + 0x28_0000), Some(0x0102_0304_0506_0708));
        assert!(p.page_window(VMALLOC + 8192).is_none());
        p.read_virt(0, &mut []).unwrap();
    }

    #[test]
    fn symbols_and_types_without_sources_say_what_was_searched() {
        let p = program();
        let e = p.symbol("run_queue").unwrap_err();
        assert!(e.to_string().contains("no symbol table"), "{e}");
        let e = p.find_type("Task").err().unwrap();
        assert!(e.to_string().contains("no debug info"), "{e}");
    }

    #[test]
    fn program_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Program>();
    }
}
