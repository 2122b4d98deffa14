//! Types from DWARF (gimli), indexed lazily.
//!
//! A distribution vmlinux carries hundreds of megabytes of `.debug_info`; reading all of
//! it before the first lookup would cost seconds and a lot of memory. So:
//!
//! * **Opening** parses the ELF section headers and the DWARF unit headers (a few bytes
//!   per compilation unit), nothing else. Compressed sections (`SHF_COMPRESSED` zlib, or
//!   GNU `.zdebug_*`) are the exception: they are inflated when opened.
//! * **Looking up a name** ([`TypeSource::find`]) scans compilation units in order until
//!   the name is defined, remembering the name of every type-defining entry it passed
//!   (structure, class, union, enumeration, typedef, base and named pointer types; also
//!   global variables). The next lookup resumes where the last one stopped; a name that
//!   was passed already is answered at once. A name that does not exist costs one scan of
//!   the rest of the file, once. Function bodies are skipped with `DW_AT_sibling` where
//!   the producer emits it (GCC does).
//! * **Converting** a type ([`TypeSource::get`]) reads one entry (and its children for
//!   structs, unions and enums) and caches the result. Member types are references, not
//!   converted until asked for.
//!
//! # Names
//!
//! A type is found by its plain name (`Task`, `task_struct`, `u64`), by its qualified
//! Rust path (`test_kernel::sched::Task` — DWARF namespaces and enclosing types joined
//! with `::`), or with a C tag (`struct task_struct`, `union …`, `enum …`), which restricts
//! the kind. For a plain name, the first compilation unit that defines the name wins, and
//! within it a struct or class definition is preferred to a union, an enum, a typedef and
//! a base type, in that order; declarations (`DW_AT_declaration`) are answered only when
//! no definition exists anywhere. A declaration met through a reference (a pointer to
//! `struct foo` declared in one unit and defined in another) converts to the definition
//! found by name.
//!
//! # Type ids
//!
//! A [`TypeId`] is the `.debug_info` offset of the type's entry, except for two kinds of
//! types DWARF has no entry for: `void` ([`VOID`]), and the inner dimensions of a
//! multi-dimensional array (`int a[2][3]` is an array of 2 arrays of 3 ints; the inner
//! array's id has the top bit set and names the array entry and the dimension).
//!
//! # Rust quirks
//!
//! rustc names pointer types (`*mut test_kernel::list::ListHead`, `&str`), names tuple
//! fields `__0`, `__1`…, and describes enums with data as a struct holding a
//! `DW_TAG_variant_part`: such a struct converts to a [`TypeKind::Union`] whose members
//! are the unnamed discriminant (at its offset) and one member per variant (`None`,
//! `Some`) whose type is the variant's struct. Generic types keep their arguments in the
//! name (`Option<u64>`); statics are `DW_TAG_variable`s in namespaces
//! (`test_kernel::sched::TASKS`).
//!
//! # Not supported
//!
//! DWARF 4 type units in `.debug_types` (`-fdebug-types-section`), supplementary files
//! (`dwz`'s `.gnu_debugaltlink`), split DWARF (`.dwo`), relocatable objects (kernel
//! modules: their DWARF needs relocating), zstd-compressed sections. Each gives a clear
//! error rather than a wrong answer.

use std::collections::HashMap;
use std::fmt::Debug;
use std::io::Read as _;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use gimli::{
    constants, AttributeValue, DebuggingInformationEntry, DwAt, DwTag, Expression, Operation,
    Reader as _, RunTimeEndian, SectionId, UnitOffset, UnitType,
};
use goblin::elf::Elf;

use super::{Member, Type, TypeId, TypeKind, TypeSource};
use crate::{Error, Result};

/// The bytes of an ELF file, however they are held. DWARF sections borrow from it
/// without copying (except compressed sections, which are inflated).
pub enum ElfBytes {
    /// Bytes that live for the whole program (e.g. `include_bytes!`).
    Static(&'static [u8]),
    /// A read-only memory mapping of a file.
    Mapped(memmap2::Mmap),
    /// Bytes on the heap.
    Owned(Vec<u8>),
}

impl Deref for ElfBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ElfBytes::Static(b) => b,
            ElfBytes::Mapped(m) => m,
            ElfBytes::Owned(v) => v,
        }
    }
}

impl Debug for ElfBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            ElfBytes::Static(_) => "static",
            ElfBytes::Mapped(_) => "mapped",
            ElfBytes::Owned(_) => "owned",
        };
        write!(f, "ElfBytes({kind}, {} bytes)", self.len())
    }
}

/// One DWARF section: a range of bytes kept alive by an `Arc`.
#[derive(Clone)]
struct Sect {
    owner: Arc<ElfBytes>,
    start: usize,
    len: usize,
}

impl Deref for Sect {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // The range was checked against the owner's length when the Sect was made.
        &self.owner[self.start..self.start + self.len]
    }
}

impl Debug for Sect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sect({:#x}+{:#x})", self.start, self.len)
    }
}

// SAFETY: `Sect` derefs to a range of the bytes owned by an `ElfBytes` behind an `Arc`.
// Those bytes never move or change while the `Arc` lives: a `'static` slice, a read-only
// mapping that is unmapped only on drop, or a `Vec` that is never touched after creation.
// Moving a `Sect` moves the `Arc` pointer, not the bytes, so the slice stays put.
unsafe impl gimli::StableDeref for Sect {}
// SAFETY: cloning a `Sect` clones the `Arc` and the range: the clone derefs to the very
// same bytes, which stay put as argued above.
unsafe impl gimli::CloneStableDeref for Sect {}

/// The gimli reader over a [`Sect`].
type R = gimli::EndianReader<RunTimeEndian, Sect>;

/// The id of `void`.
pub const VOID: TypeId = TypeId(u64::MAX);
/// Ids with this bit set are synthesised inner dimensions of arrays.
const DIM_BIT: u64 = 1 << 63;
/// Nesting of type references followed when computing sizes and names.
const MAX_DEPTH: u32 = 32;
/// Dimensions of an array handled.
const MAX_DIMS: usize = 64;
/// Largest inflated debug section.
const MAX_INFLATED: u64 = 4 << 30;

/// Lookup categories for names, in order of preference.
const CAT_STRUCT: usize = 0;
const CAT_UNION: usize = 1;
const CAT_ENUM: usize = 2;
const CAT_TYPEDEF: usize = 3;
const CAT_OTHER: usize = 4;
const CATS: usize = 5;

fn category(tag: DwTag) -> Option<usize> {
    Some(match tag {
        constants::DW_TAG_structure_type | constants::DW_TAG_class_type => CAT_STRUCT,
        constants::DW_TAG_union_type => CAT_UNION,
        constants::DW_TAG_enumeration_type => CAT_ENUM,
        constants::DW_TAG_typedef => CAT_TYPEDEF,
        constants::DW_TAG_base_type
        | constants::DW_TAG_pointer_type
        | constants::DW_TAG_unspecified_type => CAT_OTHER,
        _ => return None,
    })
}

/// What the index knows about one name: the first definition per category and the
/// first declaration (0 = none; no entry lives at offset 0).
#[derive(Clone, Copy, Default, Debug)]
struct NameSlots {
    def: [u64; CATS],
    decl: u64,
}

/// What the index knows about a variable name.
#[derive(Clone, Copy, Default, Debug)]
struct VarSlots {
    /// First entry with an address.
    def: u64,
    /// First entry without one.
    decl: u64,
}

/// The incremental name index.
#[derive(Default)]
struct Index {
    /// Units `0..next_unit` have been scanned.
    next_unit: usize,
    types: HashMap<Box<str>, NameSlots>,
    vars: HashMap<Box<str>, VarSlots>,
    /// Units that could not be scanned (offset, reason), the first few.
    errors: Vec<(u64, String)>,
    error_count: usize,
}

impl Index {
    fn add_type(&mut self, key: &str, cat: usize, decl: bool, off: u64) {
        let slots = match self.types.get_mut(key) {
            Some(s) => s,
            None => self.types.entry(key.into()).or_default(),
        };
        if decl {
            if slots.decl == 0 {
                slots.decl = off;
            }
        } else if slots.def[cat] == 0 {
            slots.def[cat] = off;
        }
    }

    fn add_var(&mut self, key: &str, has_addr: bool, off: u64) {
        let slots = match self.vars.get_mut(key) {
            Some(s) => s,
            None => self.vars.entry(key.into()).or_default(),
        };
        let slot = if has_addr {
            &mut slots.def
        } else {
            &mut slots.decl
        };
        if *slot == 0 {
            *slot = off;
        }
    }

    fn type_def(&self, name: &str, cat: Option<usize>) -> Option<u64> {
        let slots = self.types.get(name)?;
        match cat {
            Some(c) => Some(slots.def[c]).filter(|&o| o != 0),
            None => slots.def.iter().copied().find(|&o| o != 0),
        }
    }
}

/// A unit, ready to read entries from.
struct UnitCtx {
    unit: gimli::Unit<R>,
    /// `.debug_info` offset of the unit header.
    start: u64,
    rust: bool,
}

/// The unit headers read so far.
struct Units {
    slots: Vec<Arc<UnitSlot>>,
    /// Where to read the next header; `None` once all are read (or unreadable).
    next: Option<gimli::DebugInfoUnitHeadersIter<R>>,
    /// Type-unit signatures (DWARF 5 type units in `.debug_info`) → entry offset.
    signatures: HashMap<u64, u64>,
    /// Why the unit headers stopped early, if they did.
    error: Option<String>,
}

impl Units {
    /// Reads one more unit header. `false` when there is none.
    fn read_next(&mut self) -> bool {
        let Some(iter) = self.next.as_mut() else {
            return false;
        };
        loop {
            match iter.next() {
                Ok(Some(header)) => {
                    let Some(start) = header.debug_info_offset() else {
                        continue;
                    };
                    let start = start.0 as u64;
                    let end = start + header.length_including_self() as u64;
                    if let UnitType::Type {
                        type_signature,
                        type_offset,
                    } = header.type_()
                    {
                        self.signatures
                            .insert(type_signature.0, start + type_offset.0 as u64);
                    }
                    self.slots.push(Arc::new(UnitSlot {
                        header,
                        start,
                        end,
                        unit: OnceLock::new(),
                    }));
                    return true;
                }
                Ok(None) => {
                    self.next = None;
                    return false;
                }
                Err(e) => {
                    self.error = Some(format!(
                        "unit headers unreadable after {} units: {e}",
                        self.slots.len()
                    ));
                    self.next = None;
                    return false;
                }
            }
        }
    }

    /// Reads headers until unit `i` is known.
    fn slot(&mut self, i: usize) -> Option<Arc<UnitSlot>> {
        while self.slots.len() <= i {
            if !self.read_next() {
                return None;
            }
        }
        Some(self.slots[i].clone())
    }

    /// Reads headers until the unit containing `off` (or a later one) is known; the
    /// slot containing `off`.
    fn containing(&mut self, off: u64) -> Option<Arc<UnitSlot>> {
        while self.slots.last().is_none_or(|u| u.end <= off) {
            if !self.read_next() {
                break;
            }
        }
        let i = self.slots.partition_point(|u| u.start <= off);
        (i > 0 && off < self.slots[i - 1].end).then(|| self.slots[i - 1].clone())
    }

    fn read_all(&mut self) {
        while self.read_next() {}
    }
}

/// A unit header and, once read, the unit.
struct UnitSlot {
    header: gimli::UnitHeader<R>,
    start: u64,
    end: u64,
    unit: OnceLock<std::result::Result<Arc<UnitCtx>, String>>,
}

/// A global variable found in DWARF.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Variable {
    /// Its name as looked up.
    pub name: String,
    /// Its link-time address (`DW_OP_addr`), when it has one.
    pub address: Option<u64>,
    /// Its type.
    pub ty: TypeId,
}

/// Types from the DWARF of one ELF file.
pub struct DwarfTypes {
    path: String,
    dwarf: gimli::Dwarf<R>,
    /// Unit headers, read as far as needed: most lookups never touch the end of a big
    /// `.debug_info` (reading every header would fault in a page per unit).
    units: Mutex<Units>,
    index: Mutex<Index>,
    cache: Mutex<HashMap<TypeId, Arc<Type>>>,
}

impl Debug for DwarfTypes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DwarfTypes")
            .field("path", &self.path)
            .field("units", &lock(&self.units).slots.len())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave these maps inconsistent in a way that
    // matters (entries are inserted whole); keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads an ELF section's bytes, inflating compressed sections.
fn section_bytes(owner: &Arc<ElfBytes>, elf: &Elf<'_>, id: SectionId, path: &str) -> Result<Sect> {
    let bad = |reason: String| Error::BadElf {
        path: path.to_string(),
        reason,
    };
    let name = id.name();
    let zname = format!(".z{}", &name[1..]);
    let empty = Sect {
        owner: owner.clone(),
        start: 0,
        len: 0,
    };
    let found = elf.section_headers.iter().find_map(|sh| {
        let n = elf.shdr_strtab.get_at(sh.sh_name)?;
        if n == name {
            Some((sh, false))
        } else if n == zname {
            Some((sh, true))
        } else {
            None
        }
    });
    let Some((sh, gnu_z)) = found else {
        return Ok(empty);
    };
    if sh.sh_type == goblin::elf::section_header::SHT_NOBITS || sh.sh_size == 0 {
        return Ok(empty);
    }
    let start = usize::try_from(sh.sh_offset).map_err(|_| bad(format!("{name}: bad offset")))?;
    let len = usize::try_from(sh.sh_size).map_err(|_| bad(format!("{name}: bad size")))?;
    if start.checked_add(len).is_none_or(|end| end > owner.len()) {
        return Err(bad(format!(
            "section {} ({len} bytes at file offset {start:#x}) extends past the end of the \
             file ({} bytes): truncated?",
            if gnu_z { &zname } else { name },
            owner.len()
        )));
    }
    let raw = &owner[start..start + len];
    let compressed = sh.sh_flags & u64::from(goblin::elf::section_header::SHF_COMPRESSED) != 0;
    if !compressed && !gnu_z {
        return Ok(Sect {
            owner: owner.clone(),
            start,
            len,
        });
    }
    let (size, stream) = if gnu_z {
        // "ZLIB", 8-byte big-endian size, zlib stream.
        if raw.len() < 12 || &raw[..4] != b"ZLIB" {
            return Err(bad(format!("{zname}: no ZLIB header")));
        }
        let size = u64::from_be_bytes(raw[4..12].try_into().expect("8 bytes"));
        (size, &raw[12..])
    } else {
        // Elf32_Chdr / Elf64_Chdr.
        let le = elf.little_endian;
        let rd32 = |b: &[u8]| {
            let a: [u8; 4] = b.try_into().expect("4 bytes");
            if le {
                u32::from_le_bytes(a)
            } else {
                u32::from_be_bytes(a)
            }
        };
        let rd64 = |b: &[u8]| {
            let a: [u8; 8] = b.try_into().expect("8 bytes");
            if le {
                u64::from_le_bytes(a)
            } else {
                u64::from_be_bytes(a)
            }
        };
        let (ch_type, size, header) = if elf.is_64 {
            if raw.len() < 24 {
                return Err(bad(format!("{name}: truncated compression header")));
            }
            (rd32(&raw[0..4]), rd64(&raw[8..16]), 24)
        } else {
            if raw.len() < 12 {
                return Err(bad(format!("{name}: truncated compression header")));
            }
            (rd32(&raw[0..4]), u64::from(rd32(&raw[4..8])), 12)
        };
        match ch_type {
            1 => {}
            2 => {
                return Err(bad(format!(
                    "{name} is zstd-compressed, which is not supported; decompress it with \
                     `objcopy --decompress-debug-sections`"
                )))
            }
            t => return Err(bad(format!("{name}: unknown compression type {t}"))),
        }
        (size, &raw[header..])
    };
    // zlib cannot expand more than ~1032:1; anything claiming more is lying.
    let limit = (stream.len() as u64).saturating_mul(1100).min(MAX_INFLATED);
    if size > limit {
        return Err(bad(format!(
            "{name}: claims {size} bytes inflated from {} compressed",
            stream.len()
        )));
    }
    let mut out = Vec::with_capacity(size as usize);
    flate2::read::ZlibDecoder::new(stream)
        .take(size + 1)
        .read_to_end(&mut out)
        .map_err(|e| bad(format!("{name}: cannot inflate: {e}")))?;
    if out.len() as u64 != size {
        return Err(bad(format!(
            "{name}: inflated to {} bytes, header says {size}",
            out.len()
        )));
    }
    let len = out.len();
    Ok(Sect {
        owner: Arc::new(ElfBytes::Owned(out)),
        start: 0,
        len,
    })
}

/// How a DWARF expression for a member location or a variable is read.
fn eval_simple(expr: Expression<R>, encoding: gimli::Encoding) -> Option<SimpleLoc> {
    let mut ops = expr.operations(encoding);
    let mut stack: Vec<u64> = vec![0];
    let mut addr = None;
    for _ in 0..16 {
        let op = match ops.next() {
            Ok(Some(op)) => op,
            Ok(None) => {
                return Some(match addr {
                    Some(a) if stack.len() == 1 => SimpleLoc::Addr(a),
                    Some(_) => return None,
                    None => SimpleLoc::Offset(*stack.last()?),
                })
            }
            Err(_) => return None,
        };
        match op {
            Operation::PlusConstant { value } => {
                let top = stack.last_mut()?;
                *top = top.wrapping_add(value);
            }
            Operation::UnsignedConstant { value } => stack.push(value),
            Operation::SignedConstant { value } => stack.push(value as u64),
            Operation::Plus => {
                let a = stack.pop()?;
                let b = stack.last_mut()?;
                *b = b.wrapping_add(a);
            }
            Operation::Address { address } if addr.is_none() && stack.len() == 1 => {
                addr = Some(Ok(address));
            }
            Operation::AddressIndex { index } if addr.is_none() && stack.len() == 1 => {
                addr = Some(Err(index));
            }
            _ => return None,
        }
        if stack.len() > 8 {
            return None;
        }
    }
    None
}

enum SimpleLoc {
    /// An offset from the containing object.
    Offset(u64),
    /// An address (`DW_OP_addr`) or an index into `.debug_addr` (`DW_OP_addrx`).
    Addr(std::result::Result<u64, gimli::DebugAddrIndex<usize>>),
}

/// A constant attribute value as an integer: `signed` says how to extend `DW_FORM_dataN`.
fn constant(v: &AttributeValue<R>, signed: bool) -> Option<i128> {
    Some(match *v {
        AttributeValue::Sdata(x) => i128::from(x),
        AttributeValue::Udata(x) => i128::from(x),
        AttributeValue::Data1(x) if signed => i128::from(x as i8),
        AttributeValue::Data2(x) if signed => i128::from(x as i16),
        AttributeValue::Data4(x) if signed => i128::from(x as i32),
        AttributeValue::Data8(x) if signed => i128::from(x as i64),
        AttributeValue::Data1(x) => i128::from(x),
        AttributeValue::Data2(x) => i128::from(x),
        AttributeValue::Data4(x) => i128::from(x),
        AttributeValue::Data8(x) => i128::from(x),
        _ => return None,
    })
}

/// What kind of array bound an attribute is.
fn bound(v: &AttributeValue<R>) -> Option<i128> {
    // Bounds are signed in principle; GCC writes -1 (all ones) as the upper bound of a
    // zero-length array.
    match *v {
        AttributeValue::Data1(0xff)
        | AttributeValue::Data2(0xffff)
        | AttributeValue::Data4(0xffff_ffff)
        | AttributeValue::Data8(u64::MAX) => Some(-1),
        _ => constant(v, false),
    }
}

impl DwarfTypes {
    /// Opens the DWARF of an ELF image held in memory for the whole program.
    pub fn from_static(bytes: &'static [u8], path: &str) -> Result<DwarfTypes> {
        Self::new(Arc::new(ElfBytes::Static(bytes)), path)
    }

    /// Opens the DWARF of an ELF image. Reads section and unit headers only.
    pub fn new(bytes: Arc<ElfBytes>, path: &str) -> Result<DwarfTypes> {
        let elf = crate::symbols::parse_elf(&bytes, path)?;
        if elf.header.e_type == goblin::elf::header::ET_REL {
            return Err(Error::BadElf {
                path: path.to_string(),
                reason: "a relocatable object (e.g. a kernel module): its DWARF needs \
                         relocating, which is not supported"
                    .to_string(),
            });
        }
        let endian = if elf.little_endian {
            RunTimeEndian::Little
        } else {
            RunTimeEndian::Big
        };
        let wanted = |id: SectionId| {
            matches!(
                id,
                SectionId::DebugInfo
                    | SectionId::DebugAbbrev
                    | SectionId::DebugStr
                    | SectionId::DebugStrOffsets
                    | SectionId::DebugLineStr
                    | SectionId::DebugAddr
            )
        };
        let dwarf = gimli::Dwarf::load(|id| -> Result<R> {
            let sect = if wanted(id) {
                section_bytes(&bytes, &elf, id, path)?
            } else {
                Sect {
                    owner: bytes.clone(),
                    start: 0,
                    len: 0,
                }
            };
            Ok(gimli::EndianReader::new(sect, endian))
        })?;
        if gimli::Section::reader(&dwarf.debug_info).is_empty() {
            return Err(Error::Dwarf {
                path: path.to_string(),
                offset: 0,
                reason: "no .debug_info section (stripped, or debug info in another file)"
                    .to_string(),
            });
        }
        let mut units = Units {
            slots: Vec::new(),
            next: Some(dwarf.units()),
            signatures: HashMap::new(),
            error: None,
        };
        if !units.read_next() {
            return Err(Error::Dwarf {
                path: path.to_string(),
                offset: 0,
                reason: units
                    .error
                    .unwrap_or_else(|| "no compilation units".to_string()),
            });
        }
        Ok(DwarfTypes {
            path: path.to_string(),
            dwarf,
            units: Mutex::new(units),
            index: Mutex::new(Index::default()),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The file this DWARF is from.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// (units scanned by name lookups so far, units whose headers were read so far): how
    /// lazy it has been. See [`DwarfTypes::unit_count`] for the total.
    pub fn index_progress(&self) -> (usize, usize) {
        let scanned = lock(&self.index).next_unit;
        (scanned, lock(&self.units).slots.len())
    }

    /// The number of units in the file (reads every unit header: a page per unit).
    pub fn unit_count(&self) -> usize {
        let mut units = lock(&self.units);
        units.read_all();
        units.slots.len()
    }

    fn err(&self, offset: u64, reason: impl Into<String>) -> Error {
        Error::Dwarf {
            path: self.path.clone(),
            offset,
            reason: reason.into(),
        }
    }

    fn gerr(&self, offset: u64, e: gimli::Error) -> Error {
        self.err(offset, e.to_string())
    }

    /// A unit, read on first use.
    fn unit_in(&self, slot: &UnitSlot) -> Result<Arc<UnitCtx>> {
        slot.unit
            .get_or_init(|| self.read_unit(slot).map(Arc::new))
            .clone()
            .map_err(|reason| self.err(slot.start, reason))
    }

    fn read_unit(&self, slot: &UnitSlot) -> std::result::Result<UnitCtx, String> {
        let header = slot.header.clone();
        let abbreviations = self
            .dwarf
            .abbreviations(&header)
            .map_err(|e| format!("abbreviations: {e}"))?;
        let encoding = header.encoding();
        let file = gimli::DwarfFileType::Main;
        let mut unit = gimli::Unit {
            abbreviations,
            name: None,
            comp_dir: None,
            low_pc: 0,
            str_offsets_base: gimli::DebugStrOffsetsBase::default_for_encoding_and_file(
                encoding, file,
            ),
            addr_base: gimli::DebugAddrBase(0),
            loclists_base: gimli::DebugLocListsBase::default_for_encoding_and_file(encoding, file),
            rnglists_base: gimli::DebugRngListsBase::default_for_encoding_and_file(encoding, file),
            line_program: None,
            dwo_id: match header.type_() {
                UnitType::Skeleton(id) | UnitType::SplitCompilation(id) => Some(id),
                _ => None,
            },
            header,
        };
        let mut rust = false;
        {
            let mut cursor = unit.header.entries(&unit.abbreviations);
            let root = cursor
                .next_dfs()
                .map_err(|e| e.to_string())?
                .ok_or("no unit entry")?;
            for attr in root.attrs() {
                match (attr.name(), attr.value()) {
                    (constants::DW_AT_str_offsets_base, AttributeValue::DebugStrOffsetsBase(b)) => {
                        unit.str_offsets_base = b
                    }
                    (
                        constants::DW_AT_addr_base | constants::DW_AT_GNU_addr_base,
                        AttributeValue::DebugAddrBase(b),
                    ) => unit.addr_base = b,
                    (constants::DW_AT_language, AttributeValue::Language(l)) => {
                        rust = l == constants::DW_LANG_Rust
                    }
                    _ => {}
                }
            }
        }
        Ok(UnitCtx {
            unit,
            start: slot.start,
            rust,
        })
    }

    /// The unit containing `.debug_info` offset `off`.
    fn unit_of(&self, off: u64) -> Result<Arc<UnitCtx>> {
        let slot = lock(&self.units).containing(off);
        match slot {
            Some(slot) => self.unit_in(&slot),
            None => Err(self.err(off, "offset is in no compilation unit")),
        }
    }

    /// The entry at `.debug_info` offset `off`, with its unit.
    fn die(&self, off: u64) -> Result<(Arc<UnitCtx>, DebuggingInformationEntry<R>)> {
        let u = self.unit_of(off)?;
        let entry = u
            .unit
            .entry(UnitOffset((off - u.start) as usize))
            .map_err(|e| self.gerr(off, e))?;
        Ok((u, entry))
    }

    fn string(&self, u: &UnitCtx, v: AttributeValue<R>) -> Option<String> {
        let r = self.dwarf.attr_string(&u.unit, v).ok()?;
        Some(r.to_string_lossy().ok()?.into_owned())
    }

    fn name(&self, u: &UnitCtx, e: &DebuggingInformationEntry<R>) -> Option<String> {
        self.string(u, e.attr_value(constants::DW_AT_name)?)
    }

    fn flag(e: &DebuggingInformationEntry<R>, at: DwAt) -> bool {
        matches!(e.attr_value(at), Some(AttributeValue::Flag(true)))
    }

    /// The `.debug_info` offset a reference attribute points to.
    fn reference(&self, u: &UnitCtx, v: AttributeValue<R>, from: u64) -> Result<u64> {
        match v {
            AttributeValue::UnitRef(o) => Ok(u.start + o.0 as u64),
            AttributeValue::DebugInfoRef(o) => Ok(o.0 as u64),
            AttributeValue::DebugTypesRef(sig) => {
                let found = {
                    let mut units = lock(&self.units);
                    if !units.signatures.contains_key(&sig.0) {
                        units.read_all();
                    }
                    units.signatures.get(&sig.0).copied()
                };
                found.ok_or_else(|| {
                    self.err(
                        from,
                        format!(
                            "reference to type signature {:#x}, which is in no type unit of \
                             .debug_info (.debug_types is not supported)",
                            sig.0
                        ),
                    )
                })
            }
            AttributeValue::DebugInfoRefSup(_) => Err(self.err(
                from,
                "reference into a supplementary file (dwz) is not supported",
            )),
            other => Err(self.err(from, format!("not a reference: {other:?}"))),
        }
    }

    /// `DW_AT_type` of an entry as a type id (`None` if absent).
    fn type_attr(
        &self,
        u: &UnitCtx,
        e: &DebuggingInformationEntry<R>,
        off: u64,
    ) -> Result<Option<TypeId>> {
        match e.attr_value(constants::DW_AT_type) {
            Some(v) => Ok(Some(TypeId(self.reference(u, v, off)?))),
            None => Ok(None),
        }
    }

    // ---------------------------------------------------------------- index

    /// Scans the next unscanned unit into the index. `false` when all are scanned.
    fn scan_next(&self, idx: &mut Index) -> bool {
        let i = idx.next_unit;
        let Some(slot) = lock(&self.units).slot(i) else {
            return false;
        };
        idx.next_unit += 1;
        if let Err(e) = self.scan_unit(&slot, idx) {
            idx.error_count += 1;
            if idx.errors.len() < 4 {
                idx.errors.push((slot.start, e.to_string()));
            }
        }
        true
    }

    fn scan_unit(&self, slot: &UnitSlot, idx: &mut Index) -> Result<()> {
        struct Scope {
            child_depth: isize,
            component: Option<String>,
            function: bool,
        }
        let u = self.unit_in(slot)?;
        let unit = &u.unit;
        let gerr = |off: usize, e: gimli::Error| self.gerr(u.start + off as u64, e);
        let mut raw = unit.entries_raw(None).map_err(|e| gerr(0, e))?;
        let mut base = 0isize;
        let mut scopes: Vec<Scope> = Vec::new();
        let mut attrs = Vec::new();
        let mut qualified = String::new();
        while !raw.is_empty() {
            let depth = base + raw.next_depth();
            while scopes.last().is_some_and(|s| s.child_depth > depth) {
                scopes.pop();
            }
            let uoff = raw.next_offset();
            let off = u.start + uoff.0 as u64;
            let Some(abbrev) = raw.read_abbreviation().map_err(|e| gerr(uoff.0, e))? else {
                continue;
            };
            let tag = abbrev.tag();
            let in_function = scopes.last().is_some_and(|s| s.function);
            let interesting = !in_function
                && (category(tag).is_some()
                    || matches!(
                        tag,
                        constants::DW_TAG_namespace
                            | constants::DW_TAG_variable
                            | constants::DW_TAG_subprogram
                    ));
            if !interesting {
                raw.skip_attributes(abbrev.attributes())
                    .map_err(|e| gerr(uoff.0, e))?;
                if abbrev.has_children() {
                    scopes.push(Scope {
                        child_depth: depth + 1,
                        component: None,
                        function: in_function
                            || matches!(
                                tag,
                                constants::DW_TAG_lexical_block
                                    | constants::DW_TAG_inlined_subroutine
                            ),
                    });
                }
                continue;
            }
            raw.read_attributes(abbrev.attributes(), &mut attrs)
                .map_err(|e| gerr(uoff.0, e))?;
            let mut component = None;
            match tag {
                constants::DW_TAG_subprogram => {
                    // Skip the body when the producer says where it ends.
                    if abbrev.has_children() {
                        if let Some(AttributeValue::UnitRef(sib)) =
                            find_attr(&attrs, constants::DW_AT_sibling)
                        {
                            if sib.0 > uoff.0 {
                                raw = unit.entries_raw(Some(sib)).map_err(|e| gerr(sib.0, e))?;
                                base = depth;
                                continue;
                            }
                        }
                    }
                }
                constants::DW_TAG_namespace => {
                    component = Some(
                        find_attr(&attrs, constants::DW_AT_name)
                            .and_then(|v| self.string(&u, v))
                            .unwrap_or_else(|| "{anon}".into()),
                    );
                }
                constants::DW_TAG_variable => {
                    let prefix = scopes_path(&scopes);
                    self.index_variable(&u, &attrs, off, &prefix, idx);
                }
                _ => {
                    let cat = category(tag).expect("interesting");
                    if let Some(name) =
                        find_attr(&attrs, constants::DW_AT_name).and_then(|v| self.string(&u, v))
                    {
                        let decl = matches!(
                            find_attr(&attrs, constants::DW_AT_declaration),
                            Some(AttributeValue::Flag(true))
                        );
                        idx.add_type(&name, cat, decl, off);
                        if scopes.iter().any(|s| s.component.is_some()) {
                            qualified.clear();
                            for c in scopes.iter().filter_map(|s| s.component.as_deref()) {
                                qualified.push_str(c);
                                qualified.push_str("::");
                            }
                            qualified.push_str(&name);
                            idx.add_type(&qualified, cat, decl, off);
                        }
                        if cat != CAT_OTHER {
                            component = Some(name);
                        }
                    }
                }
            }
            if abbrev.has_children() {
                scopes.push(Scope {
                    child_depth: depth + 1,
                    component,
                    function: tag == constants::DW_TAG_subprogram,
                });
            }
        }
        fn scopes_path(scopes: &[Scope]) -> String {
            let mut s = String::new();
            for c in scopes.iter().filter_map(|s| s.component.as_deref()) {
                s.push_str(c);
                s.push_str("::");
            }
            s
        }
        Ok(())
    }

    fn index_variable(
        &self,
        u: &UnitCtx,
        attrs: &[gimli::Attribute<R>],
        off: u64,
        prefix: &str,
        idx: &mut Index,
    ) {
        let name = match find_attr(attrs, constants::DW_AT_name).and_then(|v| self.string(u, v)) {
            Some(n) => Some(n),
            // A definition that completes a declaration: the name is on the declaration.
            None => match find_attr(attrs, constants::DW_AT_specification) {
                Some(v) => self
                    .reference(u, v, off)
                    .ok()
                    .and_then(|spec| self.die(spec).ok())
                    .and_then(|(su, se)| self.name(&su, &se)),
                None => None,
            },
        };
        let Some(name) = name else { return };
        let has_addr = find_attr(attrs, constants::DW_AT_location).is_some();
        idx.add_var(&name, has_addr, off);
        if !prefix.is_empty() {
            idx.add_var(&format!("{prefix}{name}"), has_addr, off);
        }
    }

    /// Finds a type definition by name, scanning as needed; falls back to a declaration.
    fn lookup(&self, name: &str, cat: Option<usize>) -> Option<u64> {
        let mut idx = lock(&self.index);
        loop {
            if let Some(off) = idx.type_def(name, cat) {
                return Some(off);
            }
            if !self.scan_next(&mut idx) {
                break;
            }
        }
        idx.types.get(name).map(|s| s.decl).filter(|&d| d != 0)
    }

    fn no_type(&self, name: &str) -> Error {
        let idx = lock(&self.index);
        let mut searched = self.describe();
        if idx.error_count > 0 {
            let (off, e) = &idx.errors[0];
            searched.push_str(&format!(
                "; {} units unreadable, the first at {off:#x}: {e}",
                idx.error_count
            ));
        }
        if let Some(e) = &lock(&self.units).error {
            searched.push_str(&format!("; {e}"));
        }
        Error::NoType {
            name: name.to_string(),
            searched,
        }
    }

    /// A global variable by name (plain or qualified), scanning as needed.
    pub fn variable(&self, name: &str) -> Result<Variable> {
        let off = {
            let mut idx = lock(&self.index);
            loop {
                if let Some(v) = idx.vars.get(name).filter(|v| v.def != 0) {
                    break Some(v.def);
                }
                if !self.scan_next(&mut idx) {
                    break idx.vars.get(name).map(|v| v.decl).filter(|&d| d != 0);
                }
            }
        };
        let Some(off) = off else {
            return Err(Error::NoSymbol {
                name: name.to_string(),
                searched: format!("variables in {}", self.describe()),
            });
        };
        let (u, e) = self.die(off)?;
        let mut ty = self.type_attr(&u, &e, off)?;
        if ty.is_none() {
            if let Some(v) = e.attr_value(constants::DW_AT_specification) {
                let spec = self.reference(&u, v, off)?;
                let (su, se) = self.die(spec)?;
                ty = self.type_attr(&su, &se, spec)?;
            }
        }
        let address = match e.attr_value(constants::DW_AT_location) {
            Some(AttributeValue::Exprloc(expr)) => self.location_address(&u, expr),
            Some(AttributeValue::Block(b)) => self.location_address(&u, Expression(b)),
            _ => None,
        };
        Ok(Variable {
            name: name.to_string(),
            address,
            ty: ty.unwrap_or(VOID),
        })
    }

    fn location_address(&self, u: &UnitCtx, expr: Expression<R>) -> Option<u64> {
        match eval_simple(expr, u.unit.encoding())? {
            SimpleLoc::Addr(Ok(a)) => Some(a),
            SimpleLoc::Addr(Err(index)) => self.dwarf.address(&u.unit, index).ok(),
            SimpleLoc::Offset(_) => None,
        }
    }

    /// The type of a global variable (`TASKS` → `[Task; 64]`).
    pub fn variable_type(&self, name: &str) -> Result<TypeId> {
        Ok(self.variable(name)?.ty)
    }

    /// The link-time address of a global variable (`DW_OP_addr`); add the load offset.
    pub fn variable_address(&self, name: &str) -> Result<u64> {
        let v = self.variable(name)?;
        v.address.ok_or_else(|| Error::NoSymbol {
            name: name.to_string(),
            searched: format!(
                "{} (the variable has no static address in its DWARF)",
                self.describe()
            ),
        })
    }

    // ----------------------------------------------------------- conversion

    fn get_depth(&self, id: TypeId, depth: u32) -> Result<Arc<Type>> {
        if let Some(t) = lock(&self.cache).get(&id) {
            return Ok(t.clone());
        }
        if depth > MAX_DEPTH {
            return Err(self.err(
                id.0 & !DIM_BIT,
                format!("type references nested deeper than {MAX_DEPTH} (a cycle?)"),
            ));
        }
        let t = Arc::new(self.convert(id, depth)?);
        Ok(lock(&self.cache).entry(id).or_insert(t).clone())
    }

    fn size_of(&self, id: TypeId, depth: u32) -> Option<u64> {
        self.get_depth(id, depth + 1).ok()?.size
    }

    /// A display name for the type at `id`, reading entries but converting nothing.
    fn display_name(&self, id: Option<TypeId>, depth: u32) -> String {
        let Some(id) = id else {
            return "void".to_string();
        };
        if id == VOID {
            return "void".to_string();
        }
        if depth > 8 {
            return "…".to_string();
        }
        if id.0 & DIM_BIT != 0 {
            return self
                .get_depth(id, depth + 1)
                .ok()
                .and_then(|t| t.name.clone())
                .unwrap_or_else(|| "?".to_string());
        }
        let Ok((u, e)) = self.die(id.0) else {
            return "?".to_string();
        };
        if let Some(n) = self.name(&u, &e) {
            return n;
        }
        let target = self.type_attr(&u, &e, id.0).ok().flatten();
        match e.tag() {
            constants::DW_TAG_pointer_type
            | constants::DW_TAG_reference_type
            | constants::DW_TAG_rvalue_reference_type => {
                let t = self.display_name(target, depth + 1);
                if u.rust {
                    format!("*const {t}")
                } else {
                    format!("{t} *")
                }
            }
            constants::DW_TAG_const_type => {
                format!("const {}", self.display_name(target, depth + 1))
            }
            constants::DW_TAG_volatile_type => {
                format!("volatile {}", self.display_name(target, depth + 1))
            }
            constants::DW_TAG_array_type => self
                .get_depth(id, depth + 1)
                .ok()
                .and_then(|t| t.name.clone())
                .unwrap_or_else(|| "?".to_string()),
            constants::DW_TAG_subroutine_type => "fn".to_string(),
            constants::DW_TAG_structure_type => "struct {anon}".to_string(),
            constants::DW_TAG_union_type => "union {anon}".to_string(),
            constants::DW_TAG_enumeration_type => "enum {anon}".to_string(),
            _ => "?".to_string(),
        }
    }

    fn convert(&self, id: TypeId, depth: u32) -> Result<Type> {
        if id == VOID {
            return Ok(Type {
                name: Some("void".to_string()),
                size: None,
                kind: TypeKind::Void,
                members: Vec::new(),
            });
        }
        if id.0 & DIM_BIT != 0 {
            let off = (id.0 & !DIM_BIT) >> 8;
            let dim = (id.0 & 0xff) as usize;
            return self.convert_array(off, dim, depth);
        }
        let off = id.0;
        let (u, e) = self.die(off)?;
        let name = self.name(&u, &e);
        let byte_size = e
            .attr(constants::DW_AT_byte_size)
            .and_then(|a| a.udata_value());
        let target = self.type_attr(&u, &e, off)?;
        let simple = |kind: TypeKind, size: Option<u64>| Type {
            name: name.clone(),
            size,
            kind,
            members: Vec::new(),
        };
        let tag = e.tag();
        Ok(match tag {
            constants::DW_TAG_base_type => {
                let enc = match e.attr_value(constants::DW_AT_encoding) {
                    Some(AttributeValue::Encoding(enc)) => enc,
                    _ => constants::DW_ATE_unsigned,
                };
                let kind = match enc {
                    constants::DW_ATE_signed | constants::DW_ATE_signed_char => {
                        TypeKind::Int { signed: true }
                    }
                    constants::DW_ATE_boolean => TypeKind::Bool,
                    constants::DW_ATE_float
                    | constants::DW_ATE_complex_float
                    | constants::DW_ATE_decimal_float => TypeKind::Float,
                    _ => TypeKind::Int { signed: false },
                };
                simple(kind, byte_size)
            }
            constants::DW_TAG_unspecified_type => simple(TypeKind::Void, byte_size),
            constants::DW_TAG_pointer_type
            | constants::DW_TAG_reference_type
            | constants::DW_TAG_rvalue_reference_type => {
                let size = byte_size.or(Some(u64::from(u.unit.encoding().address_size)));
                let mut t = simple(TypeKind::Pointer { target }, size);
                if t.name.is_none() {
                    t.name = Some(self.display_name(Some(id), depth));
                }
                t
            }
            constants::DW_TAG_typedef
            | constants::DW_TAG_const_type
            | constants::DW_TAG_volatile_type
            | constants::DW_TAG_restrict_type
            | constants::DW_TAG_atomic_type
            | constants::DW_TAG_immutable_type
            | constants::DW_TAG_packed_type
            | constants::DW_TAG_shared_type => {
                let target = target.unwrap_or(VOID);
                let size = self.size_of(target, depth);
                let mut t = simple(TypeKind::Typedef { target }, size);
                if t.name.is_none() {
                    t.name = Some(self.display_name(Some(id), depth));
                }
                t
            }
            constants::DW_TAG_subroutine_type | constants::DW_TAG_subprogram => {
                simple(TypeKind::Function, None)
            }
            constants::DW_TAG_array_type => return self.convert_array(off, 0, depth),
            constants::DW_TAG_structure_type
            | constants::DW_TAG_class_type
            | constants::DW_TAG_union_type
            | constants::DW_TAG_enumeration_type => {
                if Self::flag(&e, constants::DW_AT_declaration) {
                    if let Some(n) = &name {
                        let cat = category(tag);
                        if let Some(def) = self.lookup(n, cat).filter(|&d| d != off) {
                            let (_, de) = self.die(def)?;
                            if !Self::flag(&de, constants::DW_AT_declaration) {
                                return Ok((*self.get_depth(TypeId(def), depth + 1)?).clone());
                            }
                        }
                    }
                    let kind = match tag {
                        constants::DW_TAG_union_type => TypeKind::Union,
                        constants::DW_TAG_enumeration_type => TypeKind::Enum {
                            enumerators: Vec::new(),
                            signed: false,
                        },
                        _ => TypeKind::Struct,
                    };
                    return Ok(simple(kind, None));
                }
                if tag == constants::DW_TAG_enumeration_type {
                    self.convert_enum(&u, off, name, byte_size, target, depth)?
                } else {
                    self.convert_struct(&u, off, tag, name, byte_size, depth)?
                }
            }
            other => return Err(self.err(off, format!("the entry is a {other}, not a type"))),
        })
    }

    fn convert_struct(
        &self,
        u: &UnitCtx,
        off: u64,
        tag: DwTag,
        name: Option<String>,
        size: Option<u64>,
        depth: u32,
    ) -> Result<Type> {
        let mut cursor = u
            .unit
            .entries_at_offset(UnitOffset((off - u.start) as usize))
            .map_err(|e| self.gerr(off, e))?;
        cursor.next_entry().map_err(|e| self.gerr(off, e))?;
        let mut members = Vec::new();
        let mut variant = false;
        // Tags of the enclosing entries at depths 1..=3.
        let mut path = [constants::DW_TAG_null; 4];
        while let Some(e) = cursor.next_dfs().map_err(|e| self.gerr(off, e))? {
            let d = e.depth();
            if d <= 0 {
                break;
            }
            let d = d as usize;
            if d < path.len() {
                path[d] = e.tag();
            }
            let eoff = u.start + e.offset().0 as u64;
            let is_member = match (d, e.tag()) {
                (1, constants::DW_TAG_member | constants::DW_TAG_inheritance) => true,
                (1, constants::DW_TAG_variant_part) => {
                    variant = true;
                    false
                }
                // The discriminant of a variant part, and the members of its variants.
                (2, constants::DW_TAG_member) => path[1] == constants::DW_TAG_variant_part,
                (3, constants::DW_TAG_member) => {
                    path[1] == constants::DW_TAG_variant_part
                        && path[2] == constants::DW_TAG_variant
                }
                _ => false,
            };
            if !is_member
                || Self::flag(e, constants::DW_AT_external)
                || Self::flag(e, constants::DW_AT_declaration)
            {
                continue;
            }
            members.push(self.member(u, e, eoff, depth)?);
        }
        members.sort_by_key(|m| m.offset);
        let kind = if tag == constants::DW_TAG_union_type || variant {
            TypeKind::Union
        } else {
            TypeKind::Struct
        };
        Ok(Type {
            name,
            size,
            kind,
            members,
        })
    }

    fn member(
        &self,
        u: &UnitCtx,
        e: &DebuggingInformationEntry<R>,
        off: u64,
        depth: u32,
    ) -> Result<Member> {
        let name = self.name(u, e);
        let ty = self.type_attr(u, e, off)?.unwrap_or(VOID);
        let what = || name.clone().unwrap_or_else(|| "<anonymous>".to_string());
        let mut offset = match e.attr(constants::DW_AT_data_member_location) {
            None => 0,
            Some(a) => match a.raw_value() {
                AttributeValue::Exprloc(expr) => self.member_offset(u, expr, off, &what)?,
                AttributeValue::Block(b) => self.member_offset(u, Expression(b), off, &what)?,
                v => match constant(&v, false) {
                    Some(c) => u64::try_from(c).map_err(|_| {
                        self.err(off, format!("member {}: negative offset", what()))
                    })?,
                    None => {
                        return Err(self.err(
                            off,
                            format!("member {}: unsupported location {v:?}", what()),
                        ))
                    }
                },
            },
        };
        let udata = |at| e.attr(at).and_then(|a| a.udata_value());
        let mut bitfield = None;
        if let Some(bits) = udata(constants::DW_AT_bit_size) {
            let bits = u32::try_from(bits).unwrap_or(u32::MAX);
            if let Some(data_bit) = udata(constants::DW_AT_data_bit_offset) {
                // DWARF 4+: bit offset from the start of the containing object.
                let total = offset.saturating_mul(8).saturating_add(data_bit);
                let unit = self
                    .size_of(ty, depth)
                    .filter(|&s| s > 0 && s <= 16)
                    .unwrap_or(1);
                // Align to the member type's storage unit when the field fits in it,
                // so that reading the type at `offset` yields the field; else to bytes.
                let aligned = total / (unit * 8) * unit;
                let bit = total - aligned * 8;
                if bit + u64::from(bits) <= unit * 8 {
                    offset = aligned;
                    bitfield = Some((bit as u32, bits));
                } else {
                    offset = total / 8;
                    bitfield = Some(((total % 8) as u32, bits));
                }
            } else if let Some(bit_offset) = udata(constants::DW_AT_bit_offset) {
                // DWARF 2/3: bit offset from the most significant bit of a storage unit of
                // `DW_AT_byte_size` bytes at `offset`.
                let storage = udata(constants::DW_AT_byte_size)
                    .or_else(|| self.size_of(ty, depth))
                    .unwrap_or(0);
                let lsb = (storage * 8)
                    .checked_sub(bit_offset)
                    .and_then(|x| x.checked_sub(u64::from(bits)))
                    .ok_or_else(|| {
                        self.err(
                            off,
                            format!(
                                "member {}: bit offset {bit_offset} + size {bits} outside its \
                                 {storage}-byte storage unit",
                                what()
                            ),
                        )
                    })?;
                bitfield = Some((lsb as u32, bits));
            } else {
                bitfield = Some((0, bits));
            }
        }
        Ok(Member {
            name,
            offset,
            bitfield,
            ty,
        })
    }

    fn member_offset(
        &self,
        u: &UnitCtx,
        expr: Expression<R>,
        off: u64,
        what: &dyn Fn() -> String,
    ) -> Result<u64> {
        match eval_simple(expr, u.unit.encoding()) {
            Some(SimpleLoc::Offset(o)) => Ok(o),
            _ => Err(self.err(
                off,
                format!(
                    "member {}: location expression is not a constant offset",
                    what()
                ),
            )),
        }
    }

    fn convert_enum(
        &self,
        u: &UnitCtx,
        off: u64,
        name: Option<String>,
        size: Option<u64>,
        underlying: Option<TypeId>,
        depth: u32,
    ) -> Result<Type> {
        // Signedness from the underlying type, through typedefs.
        let mut signed = None;
        let mut next = underlying;
        for _ in 0..8 {
            let Some(id) = next else { break };
            let Ok(t) = self.get_depth(id, depth + 1) else {
                break;
            };
            match t.kind {
                TypeKind::Int { signed: s } => {
                    signed = Some(s);
                    break;
                }
                TypeKind::Typedef { target } => next = Some(target),
                _ => break,
            }
        }
        let mut cursor = u
            .unit
            .entries_at_offset(UnitOffset((off - u.start) as usize))
            .map_err(|e| self.gerr(off, e))?;
        cursor.next_entry().map_err(|e| self.gerr(off, e))?;
        let mut raw = Vec::new();
        while let Some(e) = cursor.next_dfs().map_err(|e| self.gerr(off, e))? {
            if e.depth() <= 0 {
                break;
            }
            if e.depth() != 1 || e.tag() != constants::DW_TAG_enumerator {
                continue;
            }
            let Some(n) = self.name(u, e) else { continue };
            let Some(v) = e.attr(constants::DW_AT_const_value).map(|a| a.raw_value()) else {
                continue;
            };
            raw.push((n, v));
        }
        // Without an underlying type, the enum is signed if any value is negative.
        let signed = signed.unwrap_or_else(|| {
            raw.iter()
                .any(|(_, v)| matches!(v, AttributeValue::Sdata(x) if *x < 0))
        });
        let enumerators = raw
            .into_iter()
            .filter_map(|(n, v)| Some((n, constant(&v, signed)? as i64)))
            .collect();
        Ok(Type {
            name,
            size: size.or_else(|| underlying.and_then(|t| self.size_of(t, depth))),
            kind: TypeKind::Enum {
                enumerators,
                signed,
            },
            members: Vec::new(),
        })
    }

    /// Array entry at `off`, from dimension `dim` on.
    fn convert_array(&self, off: u64, dim: usize, depth: u32) -> Result<Type> {
        let (u, e) = self.die(off)?;
        if e.tag() != constants::DW_TAG_array_type {
            return Err(self.err(off, format!("the entry is a {}, not an array", e.tag())));
        }
        let element = self.type_attr(&u, &e, off)?.unwrap_or(VOID);
        let mut cursor = u
            .unit
            .entries_at_offset(UnitOffset((off - u.start) as usize))
            .map_err(|e| self.gerr(off, e))?;
        cursor.next_entry().map_err(|e| self.gerr(off, e))?;
        let mut counts: Vec<Option<u64>> = Vec::new();
        while let Some(c) = cursor.next_dfs().map_err(|e| self.gerr(off, e))? {
            if c.depth() <= 0 {
                break;
            }
            if c.depth() != 1
                || !matches!(
                    c.tag(),
                    constants::DW_TAG_subrange_type | constants::DW_TAG_enumeration_type
                )
            {
                continue;
            }
            if counts.len() >= MAX_DIMS {
                return Err(self.err(off, format!("array of more than {MAX_DIMS} dimensions")));
            }
            let count = if let Some(n) = c.attr(constants::DW_AT_count) {
                constant(&n.raw_value(), false).and_then(|n| u64::try_from(n).ok())
            } else if let Some(ub) = c.attr(constants::DW_AT_upper_bound) {
                let lb = c
                    .attr(constants::DW_AT_lower_bound)
                    .and_then(|a| bound(&a.raw_value()))
                    .unwrap_or(0);
                bound(&ub.raw_value())
                    .map(|ub| (ub - lb + 1).max(0))
                    .and_then(|n| u64::try_from(n).ok())
            } else {
                None
            };
            counts.push(count);
        }
        if counts.is_empty() {
            // No subrange: an array of unknown length.
            counts.push(None);
        }
        if dim >= counts.len() {
            return Err(self.err(off, format!("array has no dimension {dim}")));
        }
        if off >= 1 << 55 {
            return Err(self.err(off, "array entry offset too large for a dimension id"));
        }
        let inner = if dim + 1 < counts.len() {
            TypeId(DIM_BIT | off << 8 | (dim as u64 + 1))
        } else {
            element
        };
        let count = counts[dim];
        let elem_size = self.size_of(inner, depth);
        let size = match (
            dim,
            e.attr(constants::DW_AT_byte_size)
                .and_then(|a| a.udata_value()),
        ) {
            (0, Some(s)) => Some(s),
            _ => count.zip(elem_size).and_then(|(n, s)| n.checked_mul(s)),
        };
        let elem_name = self.display_name(Some(element), depth + 1);
        let dims: String = counts[dim..]
            .iter()
            .map(|c| c.map_or("[]".to_string(), |n| format!("[{n}]")))
            .collect();
        let name = if u.rust {
            let mut s = elem_name;
            for c in counts[dim..].iter().rev() {
                s = match c {
                    Some(n) => format!("[{s}; {n}]"),
                    None => format!("[{s}]"),
                };
            }
            s
        } else {
            format!("{elem_name}{dims}")
        };
        Ok(Type {
            name: Some(name),
            size,
            kind: TypeKind::Array {
                element: inner,
                count,
            },
            members: Vec::new(),
        })
    }
}

/// The (normalised) value of attribute `at` among `attrs`.
fn find_attr(attrs: &[gimli::Attribute<R>], at: DwAt) -> Option<AttributeValue<R>> {
    attrs.iter().find(|a| a.name() == at).map(|a| a.value())
}

/// Splits a C tag off a name: `struct task_struct` → (`task_struct`, struct).
fn split_tag(name: &str) -> (&str, Option<usize>) {
    for (prefix, cat) in [
        ("struct ", CAT_STRUCT),
        ("class ", CAT_STRUCT),
        ("union ", CAT_UNION),
        ("enum ", CAT_ENUM),
    ] {
        if let Some(rest) = name.strip_prefix(prefix) {
            return (rest.trim(), Some(cat));
        }
    }
    (name.trim(), None)
}

impl TypeSource for DwarfTypes {
    fn find(&self, name: &str) -> Result<TypeId> {
        let (plain, cat) = split_tag(name);
        if plain == "void" {
            return Ok(VOID);
        }
        if plain.is_empty() {
            return Err(self.no_type(name));
        }
        self.lookup(plain, cat)
            .map(TypeId)
            .ok_or_else(|| self.no_type(name))
    }

    fn get(&self, id: TypeId) -> Result<Arc<Type>> {
        self.get_depth(id, 0)
    }

    fn describe(&self) -> String {
        format!("DWARF of {}", self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ambulance_test_kernel::ELF;

    fn kernel() -> DwarfTypes {
        DwarfTypes::from_static(ELF, "test-kernel").unwrap()
    }

    fn member<'a>(t: &'a Type, name: &str) -> &'a Member {
        t.members
            .iter()
            .find(|m| m.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("{:?} has no member {name}", t.name))
    }

    /// Follows typedefs and qualifiers.
    fn strip(d: &dyn TypeSource, mut id: TypeId) -> Arc<Type> {
        for _ in 0..16 {
            let t = d.get(id).unwrap();
            match t.kind {
                TypeKind::Typedef { target } => id = target,
                _ => return t,
            }
        }
        panic!("typedef chain too long");
    }

    #[test]
    fn task_layout_matches_the_kernel() {
        let d = kernel();
        let id = d.find("Task").unwrap();
        // Lazy: finding Task did not read every unit.
        let (scanned, known) = d.index_progress();
        assert_eq!((scanned, known), (1, 1));
        assert!(d.unit_count() > 1);
        assert_eq!(d.find("test_kernel::sched::Task").unwrap(), id);
        assert_eq!(d.find("struct Task").unwrap(), id);
        let task = d.get(id).unwrap();
        assert_eq!(task.name.as_deref(), Some("Task"));
        assert_eq!(task.kind, TypeKind::Struct);
        assert_eq!(task.size, Some(104));
        // The #[repr(C)] layout of guest-agent/test-kernel/src/sched.rs, which the kernel
        // also exports as OFFSET(Task.*) in its VMCOREINFO.
        let expected = [
            ("magic", 0, "u64", 8),
            ("pid", 8, "u32", 4),
            ("state", 12, "u32", 4),
            ("comm", 16, "[u8; 16]", 16),
            ("run_list", 32, "ListHead", 16),
            ("stack_base", 48, "u64", 8),
            ("stack_size", 56, "u64", 8),
            ("saved_rsp", 64, "u64", 8),
            ("cpu", 72, "u32", 4),
            ("prio", 76, "u32", 4),
            ("switches", 80, "u64", 8),
            ("work_steps", 88, "u64", 8),
            ("rng", 96, "u64", 8),
        ];
        assert_eq!(task.members.len(), expected.len());
        for (m, (name, offset, ty, size)) in task.members.iter().zip(expected) {
            assert_eq!(m.name.as_deref(), Some(name));
            assert_eq!(m.offset, offset, "{name}");
            assert_eq!(m.bitfield, None);
            let t = d.get(m.ty).unwrap();
            assert_eq!(t.name.as_deref(), Some(ty), "{name}");
            assert_eq!(t.size, Some(size), "{name}");
        }
        let comm = d.get(member(&task, "comm").ty).unwrap();
        let TypeKind::Array { element, count } = comm.kind else {
            panic!("comm is {comm:?}")
        };
        assert_eq!(count, Some(16));
        let byte = d.get(element).unwrap();
        assert_eq!(byte.kind, TypeKind::Int { signed: false });
        assert_eq!((byte.name.as_deref(), byte.size), (Some("u8"), Some(1)));

        let list = d.get(member(&task, "run_list").ty).unwrap();
        assert_eq!(d.find("ListHead").unwrap(), member(&task, "run_list").ty);
        for (name, offset) in [("next", 0), ("prev", 8)] {
            let m = member(&list, name);
            assert_eq!(m.offset, offset);
            let p = d.get(m.ty).unwrap();
            assert_eq!(p.size, Some(8));
            assert_eq!(p.name.as_deref(), Some("*mut test_kernel::list::ListHead"));
            assert_eq!(
                p.kind,
                TypeKind::Pointer {
                    target: Some(member(&task, "run_list").ty)
                }
            );
        }
    }

    #[test]
    fn the_task_table_variable() {
        let d = kernel();
        let v = d.variable("TASKS").unwrap();
        assert_eq!(d.variable("test_kernel::sched::TASKS").unwrap().ty, v.ty);
        let sym = crate::symbols::Symbols::from_elf(ELF, "k", 0).unwrap();
        assert_eq!(v.address, sym.get("TASKS"));
        assert_eq!(
            d.variable_address("TASKS").unwrap(),
            sym.get("TASKS").unwrap()
        );
        let t = d.get(d.variable_type("TASKS").unwrap()).unwrap();
        assert_eq!(t.size, Some(64 * 104));
        assert_eq!(t.name.as_deref(), Some("[Task; 64]"));
        let TypeKind::Array { element, count } = t.kind else {
            panic!("{t:?}")
        };
        assert_eq!(count, Some(64));
        assert_eq!(element, d.find("Task").unwrap());
        let rq = d.get(d.variable_type("RUN_QUEUE").unwrap()).unwrap();
        assert_eq!(rq.name.as_deref(), Some("ListHead"));
        assert!(matches!(
            d.variable("NO_SUCH_STATIC"),
            Err(Error::NoSymbol { .. })
        ));
    }

    #[test]
    fn rust_enums_are_unions_of_variants() {
        let d = kernel();
        let t = d.get(d.find("Option<usize>").unwrap()).unwrap();
        assert_eq!(t.kind, TypeKind::Union);
        assert_eq!(t.size, Some(16));
        let some = d.get(member(&t, "Some").ty).unwrap();
        assert_eq!(member(&some, "__0").offset, 8);
        assert!(member(&t, "None").offset == 0);
        // The discriminant: unnamed, artificial.
        assert!(t.members.iter().any(|m| m.name.is_none()));
        assert_eq!(
            d.find("core::option::Option<usize>").unwrap(),
            d.find("Option<usize>").unwrap()
        );
    }

    #[test]
    fn every_member_type_of_every_kernel_struct_converts() {
        let d = kernel();
        for name in [
            "Task",
            "PerCpu",
            "Spinlock",
            "SlabCache",
            "LogRecord",
            "ListHead",
        ] {
            let t = d
                .get(d.find(name).unwrap_or_else(|e| panic!("{name}: {e}")))
                .unwrap();
            assert!(!t.members.is_empty(), "{name}");
            for m in &t.members {
                let mt = d.get(m.ty).unwrap();
                assert!(mt.size.is_some(), "{name}.{:?} has no size: {mt:?}", m.name);
                assert!(
                    m.offset + mt.size.unwrap() <= t.size.unwrap(),
                    "{name}.{:?}",
                    m.name
                );
            }
        }
    }

    #[test]
    fn unknown_names_and_bad_ids_are_errors() {
        let d = kernel();
        match d.find("NoSuchType") {
            Err(Error::NoType { name, searched }) => {
                assert_eq!(name, "NoSuchType");
                assert!(searched.contains("test-kernel"), "{searched}");
            }
            other => panic!("{other:?}"),
        }
        // The failed lookup scanned everything; later misses are immediate.
        let (scanned, known) = d.index_progress();
        assert_eq!((scanned, known), (d.unit_count(), d.unit_count()));
        assert!(d.find("").is_err());
        assert_eq!(d.find("void").unwrap(), VOID);
        assert_eq!(d.get(VOID).unwrap().kind, TypeKind::Void);
        for bad in [
            0,
            1,
            5,
            0x7fff_ffff,
            DIM_BIT | 3,
            DIM_BIT | (12345 << 8) | 7,
        ] {
            assert!(d.get(TypeId(bad)).is_err(), "{bad:#x}");
        }
    }

    #[test]
    fn shared_between_threads() {
        let d: Arc<dyn TypeSource> = Arc::new(kernel());
        let handles: Vec<_> = ["Task", "PerCpu", "test_kernel::sched::Task", "Spinlock"]
            .into_iter()
            .map(|name| {
                let d = d.clone();
                std::thread::spawn(move || {
                    let t = d.get(d.find(name).unwrap()).unwrap();
                    for m in &t.members {
                        d.get(m.ty).unwrap();
                    }
                    t.size
                })
            })
            .collect();
        let sizes: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(sizes[0], sizes[2]);
        assert!(sizes.iter().all(Option::is_some));
    }

    fn c_fixture(bytes: &'static [u8], name: &str) {
        let dt = DwarfTypes::from_static(bytes, name).unwrap();
        let d: &dyn TypeSource = &dt;
        let holder = d.get(d.find("holder").unwrap()).unwrap();
        assert_eq!(holder.size, Some(88), "{name}");
        let offsets: Vec<(&str, u64)> = holder
            .members
            .iter()
            .map(|m| (m.name.as_deref().unwrap(), m.offset))
            .collect();
        assert_eq!(
            offsets,
            [
                ("cv", 0),
                ("grid", 4),
                ("where", 28),
                ("later", 40),
                ("callback", 48),
                ("u", 56),
                ("sign", 64),
                ("f", 72),
                ("count", 80),
                ("flex", 88)
            ],
            "{name}"
        );
        // const volatile int: qualifiers are typedefs down to int.
        let cv = d.get(member(&holder, "cv").ty).unwrap();
        assert!(
            matches!(cv.kind, TypeKind::Typedef { .. }),
            "{name}: {cv:?}"
        );
        assert_eq!(cv.size, Some(4));
        assert!(cv.name.as_deref().unwrap().contains("int"), "{cv:?}");
        assert_eq!(
            strip(d, member(&holder, "cv").ty).kind,
            TypeKind::Int { signed: true }
        );
        // int grid[2][3]: array of 2 arrays of 3 ints.
        let grid = d.get(member(&holder, "grid").ty).unwrap();
        assert_eq!(grid.size, Some(24), "{name}");
        assert_eq!(grid.name.as_deref(), Some("int[2][3]"));
        let TypeKind::Array {
            element,
            count: Some(2),
        } = grid.kind
        else {
            panic!("{name}: {grid:?}")
        };
        let row = d.get(element).unwrap();
        assert_eq!((row.size, row.name.as_deref()), (Some(12), Some("int[3]")));
        let TypeKind::Array {
            element,
            count: Some(3),
        } = row.kind
        else {
            panic!("{name}: {row:?}")
        };
        assert_eq!(d.get(element).unwrap().name.as_deref(), Some("int"));
        // Flexible array member.
        let flex = d.get(member(&holder, "flex").ty).unwrap();
        assert!(
            matches!(flex.kind, TypeKind::Array { count: None, .. }),
            "{name}: {flex:?}"
        );
        assert_eq!(flex.size, None);
        // point_t: a typedef of an anonymous struct.
        let point = d.get(d.find("point_t").unwrap()).unwrap();
        assert!(matches!(point.kind, TypeKind::Typedef { .. }));
        assert_eq!(point.size, Some(8));
        let anon = strip(d, d.find("point_t").unwrap());
        assert_eq!(anon.kind, TypeKind::Struct);
        assert_eq!(anon.name, None);
        assert_eq!(member(&anon, "y").offset, 4);
        // A pointer to a struct declared in this unit and defined in another.
        let later = d.get(member(&holder, "later").ty).unwrap();
        assert_eq!(later.name.as_deref(), Some("opaque *"));
        let TypeKind::Pointer {
            target: Some(target),
        } = later.kind
        else {
            panic!("{name}: {later:?}")
        };
        let opaque = d.get(target).unwrap();
        assert_eq!(opaque.size, Some(16), "{name}: {opaque:?}");
        assert_eq!(member(&opaque, "next").offset, 8);
        // Function pointer.
        let cb = d.get(member(&holder, "callback").ty).unwrap();
        let TypeKind::Pointer { target: Some(f) } = cb.kind else {
            panic!("{name}: {cb:?}")
        };
        assert_eq!(d.get(f).unwrap().kind, TypeKind::Function);
        // Union, with an anonymous struct member.
        let u = d.get(member(&holder, "u").ty).unwrap();
        assert_eq!((u.kind.clone(), u.size), (TypeKind::Union, Some(8)));
        assert!(u.members.iter().all(|m| m.offset == 0));
        assert_eq!(d.get(member(&u, "halves").ty).unwrap().name, None);
        // Enums: signed with a negative value; unsigned.
        let sign = d.get(member(&holder, "sign").ty).unwrap();
        let TypeKind::Enum {
            enumerators,
            signed,
        } = &sign.kind
        else {
            panic!("{name}: {sign:?}")
        };
        assert!(*signed, "{name}");
        assert_eq!(
            enumerators,
            &[
                ("NEG".to_string(), -2),
                ("ZERO".to_string(), 0),
                ("BIG".to_string(), 100_000)
            ]
        );
        let small = d.get(d.find("enum small").unwrap()).unwrap();
        let TypeKind::Enum {
            enumerators,
            signed,
        } = &small.kind
        else {
            panic!("{name}: {small:?}")
        };
        assert!(!signed, "{name}");
        assert_eq!(enumerators[1], ("SMALL_B".to_string(), 255));
        // Bitfields, DWARF 2/4 (bit_offset) and 5 (data_bit_offset) alike.
        let flags = d.get(d.find("struct flags").unwrap()).unwrap();
        assert_eq!(flags.size, Some(8));
        let bf = |n: &str| {
            let m = member(&flags, n);
            (m.offset, m.bitfield)
        };
        assert_eq!(bf("a"), (0, Some((0, 3))), "{name}");
        assert_eq!(bf("b"), (0, Some((3, 5))), "{name}");
        assert_eq!(bf("c"), (0, Some((8, 7))), "{name}");
        assert_eq!(bf("wide"), (0, Some((15, 40))), "{name}");
        assert_eq!(bf("tail"), (7, None), "{name}");
        // Arrays of arrays of arrays; zero-length arrays.
        let matrix = d.get(dt.variable_type("matrix").unwrap()).unwrap();
        assert_eq!(matrix.size, Some(4 * 5 * 6 * 4));
        assert_eq!(matrix.name.as_deref(), Some("int[4][5][6]"));
        let zero = d.get(dt.variable_type("zero_len").unwrap()).unwrap();
        assert!(
            matches!(zero.kind, TypeKind::Array { count: Some(0), .. }) && zero.size == Some(0),
            "{name}: {zero:?}"
        );
        // Variables, one completing an extern declaration (DW_AT_specification).
        let sym = crate::symbols::Symbols::from_elf(bytes, name, 0).unwrap();
        for v in [
            "counter",
            "the_holder",
            "the_opaque",
            "matrix",
            "some_flags",
        ] {
            assert_eq!(dt.variable_address(v).ok(), sym.get(v), "{name}: {v}");
        }
        assert_eq!(
            d.get(dt.variable_type("counter").unwrap())
                .unwrap()
                .name
                .as_deref(),
            Some("int")
        );
        // Function-local statics are not globals.
        assert!(dt.variable("local_static").is_err());
    }

    #[test]
    fn c_dwarf5() {
        c_fixture(
            include_bytes!("../../testdata/c-dwarf5.elf"),
            "c-dwarf5.elf",
        );
    }

    #[test]
    fn c_dwarf4() {
        c_fixture(
            include_bytes!("../../testdata/c-dwarf4.elf"),
            "c-dwarf4.elf",
        );
    }

    #[test]
    fn c_dwarf2() {
        c_fixture(
            include_bytes!("../../testdata/c-dwarf2.elf"),
            "c-dwarf2.elf",
        );
    }

    #[test]
    fn compressed_sections() {
        c_fixture(
            include_bytes!("../../testdata/c-dwarf4-zlib.elf"),
            "c-dwarf4-zlib.elf",
        );
        c_fixture(
            include_bytes!("../../testdata/c-dwarf4-zlib-gnu.elf"),
            "c-dwarf4-zlib-gnu.elf",
        );
    }

    /// (file offset, size) of a section of an ELF image.
    fn section(bytes: &[u8], name: &str) -> (usize, usize) {
        let elf = Elf::parse(bytes).unwrap();
        let sh = elf
            .section_headers
            .iter()
            .find(|sh| elf.shdr_strtab.get_at(sh.sh_name) == Some(name))
            .unwrap();
        (sh.sh_offset as usize, sh.sh_size as usize)
    }

    fn open_owned(bytes: Vec<u8>, name: &str) -> Result<DwarfTypes> {
        DwarfTypes::new(Arc::new(ElfBytes::Owned(bytes)), name)
    }

    #[test]
    fn hostile_files_give_clear_errors() {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        png.resize(2000, 0);
        let random: Vec<u8> = (0..100_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        for (what, bytes) in [
            ("empty", Vec::new()),
            ("first 1000 bytes", ELF[..1000].to_vec()),
            ("png", png),
            ("random", random),
        ] {
            match open_owned(bytes, what) {
                Err(Error::BadElf { path, reason }) => {
                    assert_eq!(path, what);
                    assert!(!reason.is_empty());
                }
                other => panic!("{what}: {other:?}"),
            }
        }
        // No DWARF: rename .debug_info.
        let mut stripped = ELF.to_vec();
        let (shstr, len) = section(ELF, ".shstrtab");
        let at = stripped[shstr..shstr + len]
            .windows(11)
            .position(|w| w == b".debug_info")
            .unwrap();
        stripped[shstr + at + 1] = b'x';
        match open_owned(stripped, "stripped") {
            Err(Error::Dwarf { reason, .. }) => assert!(reason.contains(".debug_info"), "{reason}"),
            other => panic!("{other:?}"),
        }
        // A section claiming to extend past the end of the file.
        let mut short = ELF.to_vec();
        let elf = Elf::parse(ELF).unwrap();
        let idx = elf
            .section_headers
            .iter()
            .position(|sh| elf.shdr_strtab.get_at(sh.sh_name) == Some(".debug_info"))
            .unwrap();
        let shdr = elf.header.e_shoff as usize + idx * 64;
        short[shdr + 32..shdr + 40].copy_from_slice(&(ELF.len() as u64).to_le_bytes());
        match open_owned(short, "short") {
            Err(Error::BadElf { reason, .. }) => assert!(reason.contains("truncated"), "{reason}"),
            other => panic!("{other:?}"),
        }
        // A relocatable object.
        let mut rel = include_bytes!("../../testdata/c-dwarf5.elf").to_vec();
        rel[16] = 1; // e_type = ET_REL
        match open_owned(rel, "module.ko") {
            Err(Error::BadElf { reason, .. }) => assert!(reason.contains("relocat"), "{reason}"),
            other => panic!("{other:?}"),
        }
        // Abbreviations wiped: units unreadable, lookups say so.
        let mut wiped = ELF.to_vec();
        let (abbrev, len) = section(ELF, ".debug_abbrev");
        wiped[abbrev..abbrev + len].fill(0xff);
        let d = open_owned(wiped, "wiped").unwrap();
        match d.find("Task") {
            Err(Error::NoType { searched, .. }) => {
                assert!(searched.contains("unreadable"), "{searched}")
            }
            other => panic!("{other:?}"),
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        #[test]
        fn damaged_dwarf_never_panics(
            flips in proptest::collection::vec((0usize..1 << 20, proptest::prelude::any::<u8>()), 1..64),
            abbrev_flips in proptest::collection::vec((0usize..1 << 16, proptest::prelude::any::<u8>()), 0..8),
        ) {
            let mut bytes = ELF.to_vec();
            let (info, info_len) = section(ELF, ".debug_info");
            // Damage near Task's definition, where the lookups go.
            for (at, v) in flips {
                bytes[info + (0x7000 + at) % info_len] = v;
            }
            let (abbrev, abbrev_len) = section(ELF, ".debug_abbrev");
            for (at, v) in abbrev_flips {
                bytes[abbrev + at % abbrev_len] = v;
            }
            if let Ok(d) = open_owned(bytes, "damaged") {
                for name in ["Task", "ListHead", "PerCpu", "NoSuch"] {
                    if let Ok(id) = d.find(name) {
                        if let Ok(t) = d.get(id) {
                            for m in &t.members {
                                if let Ok(mt) = d.get(m.ty) {
                                    if let TypeKind::Pointer { target: Some(p) } | TypeKind::Array { element: p, .. } | TypeKind::Typedef { target: p } = mt.kind {
                                        let _ = d.get(p);
                                    }
                                }
                            }
                        }
                    }
                }
                let _ = d.variable("TASKS");
            }
        }
    }
}
