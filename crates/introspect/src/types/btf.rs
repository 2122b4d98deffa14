//! BTF (BPF Type Format) as a [`TypeSource`].
//!
//! A kernel built with `CONFIG_DEBUG_INFO_BTF` carries a compact description of all its
//! types in the `.BTF` section, which is loaded with the kernel: `__start_BTF` ..
//! `__stop_BTF` in guest memory. So types are available even without a `-dbg` vmlinux.
//!
//! * **Parsing** ([`BtfTypes::parse`]) checks the header and walks the type section
//!   once, recording where each type record starts and the name of every named struct,
//!   union, enum, typedef, int, float and forward declaration. Nothing is converted.
//! * **Converting** a type ([`TypeSource::get`]) decodes one record and caches the
//!   result. Member types are ids, not converted until asked for; `get` never follows
//!   references recursively (sizes of typedefs and arrays are computed by a bounded
//!   loop over the raw records), so a cycle in hostile BTF cannot hang it.
//!
//! # Type ids
//!
//! A [`TypeId`] is the BTF type id: 1 for the first record, 0 for `void`.
//!
//! # Names
//!
//! Types are found by name (`task_struct`, `pid_t`, `u64`) or with a C tag (`struct
//! task_struct`, `union …`, `enum …`), which restricts the kind. When several types share
//! a name, the first struct wins, then the first union, enum, typedef, int or float, and
//! forward declarations last. A forward declaration (or an enum without enumerators)
//! converts to the definition of the same name when there is one.
//!
//! # Mapping
//!
//! `const`, `volatile`, `restrict` and type tags become unnamed [`TypeKind::Typedef`]s;
//! functions and function prototypes [`TypeKind::Function`]; variables, data sections
//! and declaration tags [`TypeKind::Void`]. Pointers, arrays and qualifiers have no name
//! (readers describe them from their target). Arrays of 0 elements are flexible (count
//! `None`). Bitfields are placed as [`super::dwarf`] places them: at the start of the
//! member type's storage unit when they fit in it, else at their byte.
//!
//! # Not supported
//!
//! Big-endian BTF, and split BTF (a module's BTF, whose ids continue the kernel's): its
//! references to kernel types are out of range, and are reported as such.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use super::{Member, Type, TypeId, TypeKind, TypeSource};
use crate::program::Program;
use crate::{Error, Result};

/// `BTF_MAGIC`, little-endian.
const MAGIC: u16 = 0xeb9f;
/// Size of the version 1 header.
const HEADER_LEN: usize = 24;
/// Size of `struct btf_type`.
const RECORD: usize = 12;
/// Largest BTF [`BtfTypes::from_guest`] reads.
pub const MAX_GUEST_BTF: u64 = 64 << 20;
/// Links followed when computing a size through typedefs and arrays.
const MAX_CHAIN: usize = 64;
/// Size of a pointer (x86-64).
const POINTER_SIZE: u64 = 8;
/// Bytes read from guest memory at a time (an error names the chunk).
const READ_CHUNK: usize = 64 << 10;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// `BTF_INT_SIGNED`.
const INT_SIGNED: u32 = 1;
/// `BTF_INT_BOOL`.
const INT_BOOL: u32 = 4;

/// Name lookup categories, in order of preference for a plain name.
const CAT_STRUCT: usize = 0;
const CAT_UNION: usize = 1;
const CAT_ENUM: usize = 2;
const CAT_TYPEDEF: usize = 3;
const CAT_OTHER: usize = 4;
const CAT_FWD_STRUCT: usize = 5;
const CAT_FWD_UNION: usize = 6;
const CAT_FWD_ENUM: usize = 7;
const CATS: usize = 8;

/// The name of a kind, for error messages.
fn kind_name(kind: u32) -> &'static str {
    match kind {
        KIND_INT => "INT",
        KIND_PTR => "PTR",
        KIND_ARRAY => "ARRAY",
        KIND_STRUCT => "STRUCT",
        KIND_UNION => "UNION",
        KIND_ENUM => "ENUM",
        KIND_FWD => "FWD",
        KIND_TYPEDEF => "TYPEDEF",
        KIND_VOLATILE => "VOLATILE",
        KIND_CONST => "CONST",
        KIND_RESTRICT => "RESTRICT",
        KIND_FUNC => "FUNC",
        KIND_FUNC_PROTO => "FUNC_PROTO",
        KIND_VAR => "VAR",
        KIND_DATASEC => "DATASEC",
        KIND_FLOAT => "FLOAT",
        KIND_DECL_TAG => "DECL_TAG",
        KIND_TYPE_TAG => "TYPE_TAG",
        KIND_ENUM64 => "ENUM64",
        _ => "unknown",
    }
}

/// Bytes following `struct btf_type` for a record of `kind` with `vlen` entries
/// (`None`: an unknown kind).
fn extra_len(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
        | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
        KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
        _ => return None,
    })
}

/// The lookup category of a named record, if its name is indexed.
fn category(kind: u32, kflag: bool, vlen: usize) -> Option<usize> {
    Some(match kind {
        KIND_STRUCT => CAT_STRUCT,
        KIND_UNION => CAT_UNION,
        KIND_ENUM | KIND_ENUM64 if vlen == 0 => CAT_FWD_ENUM,
        KIND_ENUM | KIND_ENUM64 => CAT_ENUM,
        KIND_TYPEDEF => CAT_TYPEDEF,
        KIND_INT | KIND_FLOAT => CAT_OTHER,
        KIND_FWD if kflag => CAT_FWD_UNION,
        KIND_FWD => CAT_FWD_STRUCT,
        _ => return None,
    })
}

/// Splits a C tag off a name: `struct task_struct` → (`task_struct`, categories).
fn split_tag(name: &str) -> (&str, &'static [usize]) {
    const PLAIN: &[usize] = &[
        CAT_STRUCT,
        CAT_UNION,
        CAT_ENUM,
        CAT_TYPEDEF,
        CAT_OTHER,
        CAT_FWD_STRUCT,
        CAT_FWD_UNION,
        CAT_FWD_ENUM,
    ];
    for (prefix, cats) in [
        ("struct ", &[CAT_STRUCT, CAT_FWD_STRUCT][..]),
        ("union ", &[CAT_UNION, CAT_FWD_UNION][..]),
        ("enum ", &[CAT_ENUM, CAT_FWD_ENUM][..]),
    ] {
        if let Some(rest) = name.strip_prefix(prefix) {
            return (rest.trim(), cats);
        }
    }
    (name.trim(), PLAIN)
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

/// One `struct btf_type`, decoded.
#[derive(Clone, Copy, Debug)]
struct Record {
    /// Byte offset of the record in the blob.
    at: usize,
    name_off: u32,
    kind: u32,
    kflag: bool,
    vlen: usize,
    /// `size` or `type`, depending on the kind.
    size_or_type: u32,
}

/// Types from one BTF blob.
pub struct BtfTypes {
    source_name: String,
    bytes: Vec<u8>,
    /// Byte range of the type section in `bytes`.
    types: std::ops::Range<usize>,
    /// Byte range of the string section in `bytes`.
    strings: std::ops::Range<usize>,
    /// Offset in `bytes` of each type record; index = type id (index 0, void, unused).
    offsets: Vec<u32>,
    /// Type ids by name, one slot per category (0 = none).
    names: HashMap<Box<str>, [u32; CATS]>,
    /// Converted types, by id.
    cache: Vec<OnceLock<Arc<Type>>>,
}

impl std::fmt::Debug for BtfTypes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BtfTypes")
            .field("source", &self.source_name)
            .field("bytes", &self.bytes.len())
            .field("types", &self.type_count())
            .finish_non_exhaustive()
    }
}

impl BtfTypes {
    /// Checks the header of a BTF blob and indexes its type records and names. Converts
    /// nothing: that happens in [`TypeSource::get`].
    pub fn parse(bytes: Vec<u8>, source_name: &str) -> Result<BtfTypes> {
        let bad = |offset: usize, reason: String| Error::Btf {
            source_name: source_name.to_string(),
            offset: offset as u64,
            reason,
        };
        if bytes.len() < HEADER_LEN {
            return Err(bad(
                0,
                format!(
                    "{} bytes is too short for a BTF header ({HEADER_LEN} bytes)",
                    bytes.len()
                ),
            ));
        }
        let word = |at: usize| u32_at(&bytes, at).unwrap_or(0);
        let magic = u16::from_le_bytes([bytes[0], bytes[1]]);
        if magic != MAGIC {
            return Err(bad(
                0,
                if magic == MAGIC.swap_bytes() {
                    "big-endian BTF is not supported".to_string()
                } else {
                    format!("bad magic {magic:#06x} (BTF has {MAGIC:#06x}): not BTF")
                },
            ));
        }
        if bytes[2] != 1 {
            return Err(bad(
                2,
                format!("unsupported BTF version {} (only 1 is known)", bytes[2]),
            ));
        }
        let hdr_len = word(4) as usize;
        if hdr_len < HEADER_LEN || hdr_len > bytes.len() {
            return Err(bad(
                4,
                format!(
                    "header length {hdr_len} is not between {HEADER_LEN} and the blob's {} bytes",
                    bytes.len()
                ),
            ));
        }
        let section = |what: &str, field: usize| -> Result<std::ops::Range<usize>> {
            let (off, len) = (word(field) as usize, word(field + 4) as usize);
            let start = hdr_len.checked_add(off);
            let end = start.and_then(|s| s.checked_add(len));
            match (start, end) {
                (Some(start), Some(end)) if end <= bytes.len() => Ok(start..end),
                _ => Err(bad(
                    field,
                    format!(
                        "{what} section ({len} bytes at offset {off:#x} after the \
                         {hdr_len}-byte header) extends past the end of the blob ({} bytes)",
                        bytes.len()
                    ),
                )),
            }
        };
        let types = section("type", 8)?;
        let strings = section("string", 16)?;

        let mut btf = BtfTypes {
            source_name: source_name.to_string(),
            types: types.clone(),
            strings,
            offsets: vec![0],
            names: HashMap::new(),
            cache: Vec::new(),
            bytes,
        };
        let mut names: HashMap<Box<str>, [u32; CATS]> = HashMap::new();
        let mut pos = types.start;
        while pos < types.end {
            let id = btf.offsets.len();
            if types.end - pos < RECORD {
                return Err(bad(
                    pos,
                    format!(
                        "type {id}: {} bytes left in the type section, too few for a record",
                        types.end - pos
                    ),
                ));
            }
            let r = btf.record_at(pos)?;
            let extra = extra_len(r.kind, r.vlen)
                .ok_or_else(|| bad(pos, format!("type {id}: unknown kind {}", r.kind)))?;
            let end = pos + RECORD + extra;
            if end > types.end {
                return Err(bad(
                    pos,
                    format!(
                        "type {id} ({} with {} entries) extends past the end of the type \
                         section",
                        kind_name(r.kind),
                        r.vlen
                    ),
                ));
            }
            let at = u32::try_from(pos).map_err(|_| bad(pos, "blob too large".to_string()))?;
            btf.offsets.push(at);
            if r.name_off != 0 {
                if let Some(cat) = category(r.kind, r.kflag, r.vlen) {
                    let name = btf.string(r.name_off, pos)?;
                    if let Ok(name) = std::str::from_utf8(name) {
                        let id = id as u32;
                        let slots = match names.get_mut(name) {
                            Some(s) => s,
                            None => names.entry(name.into()).or_default(),
                        };
                        if slots[cat] == 0 {
                            slots[cat] = id;
                        }
                    }
                }
            }
            pos = end;
        }
        btf.names = names;
        btf.cache = std::iter::repeat_with(OnceLock::new)
            .take(btf.offsets.len())
            .collect();
        Ok(btf)
    }

    /// Reads the kernel's BTF from guest memory: the virtual range `[start, stop)`, i.e.
    /// `__start_BTF` .. `__stop_BTF` (at most [`MAX_GUEST_BTF`] bytes).
    pub fn from_guest(program: &Program, start: u64, stop: u64) -> Result<BtfTypes> {
        let len = stop.wrapping_sub(start);
        if stop <= start || len > MAX_GUEST_BTF {
            return Err(Error::Btf {
                source_name: format!(
                    "guest memory __start_BTF..__stop_BTF ({start:#x}..{stop:#x})"
                ),
                offset: 0,
                reason: if stop <= start {
                    "the range is empty or reversed".to_string()
                } else {
                    format!(
                        "the range is {len:#x} bytes, more than the {MAX_GUEST_BTF:#x} accepted"
                    )
                },
            });
        }
        let source_name =
            format!("guest memory __start_BTF..__stop_BTF ({len:#x} bytes at {start:#x})");
        let mut bytes = vec![0u8; len as usize];
        for (i, chunk) in bytes.chunks_mut(READ_CHUNK).enumerate() {
            let off = (i * READ_CHUNK) as u64;
            program
                .read_virt(start + off, chunk)
                .map_err(|e| Error::Btf {
                    source_name: source_name.clone(),
                    offset: off,
                    reason: format!("cannot read guest memory at {:#x}: {e}", start + off),
                })?;
        }
        BtfTypes::parse(bytes, &source_name)
    }

    /// Where the BTF came from.
    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// The number of types (ids `1..=type_count()`; 0 is `void`).
    pub fn type_count(&self) -> usize {
        self.offsets.len() - 1
    }

    fn err(&self, offset: usize, reason: impl Into<String>) -> Error {
        Error::Btf {
            source_name: self.source_name.clone(),
            offset: offset as u64,
            reason: reason.into(),
        }
    }

    fn word(&self, at: usize) -> Result<u32> {
        u32_at(&self.bytes, at)
            .filter(|_| at >= self.types.start && at + 4 <= self.types.end)
            .ok_or_else(|| self.err(at, "read past the end of the type section"))
    }

    fn record_at(&self, at: usize) -> Result<Record> {
        let info = self.word(at + 4)?;
        Ok(Record {
            at,
            name_off: self.word(at)?,
            kind: (info >> 24) & 0x1f,
            kflag: info >> 31 != 0,
            vlen: (info & 0xffff) as usize,
            size_or_type: self.word(at + 8)?,
        })
    }

    /// The record of type `id` (not 0).
    fn record(&self, id: usize) -> Result<Record> {
        match self.offsets.get(id) {
            Some(&at) if id != 0 => self.record_at(at as usize),
            _ => Err(self.no_id(id as u64)),
        }
    }

    fn no_id(&self, id: u64) -> Error {
        Error::NoType {
            name: format!("#{id}"),
            searched: format!("{} ({} types)", self.describe(), self.type_count()),
        }
    }

    /// The NUL-terminated string at `off` in the string section; `at` names the record
    /// that refers to it.
    fn string(&self, off: u32, at: usize) -> Result<&[u8]> {
        let strings = &self.bytes[self.strings.clone()];
        let rest = strings.get(off as usize..).filter(|r| !r.is_empty());
        let Some(rest) = rest else {
            return Err(self.err(
                at,
                format!(
                    "name offset {off:#x} is outside the string section ({} bytes)",
                    strings.len()
                ),
            ));
        };
        match rest.iter().position(|&c| c == 0) {
            Some(n) => Ok(&rest[..n]),
            None => Err(self.err(
                at,
                format!("the string at offset {off:#x} runs off the end of the string section"),
            )),
        }
    }

    /// A name (`None` for offset 0 and the empty string).
    fn name(&self, off: u32, at: usize) -> Result<Option<String>> {
        if off == 0 {
            return Ok(None);
        }
        let s = self.string(off, at)?;
        Ok((!s.is_empty()).then(|| String::from_utf8_lossy(s).into_owned()))
    }

    /// A type id referred to by the record at `at`, checked.
    fn type_ref(&self, id: u32, at: usize) -> Result<TypeId> {
        if (id as usize) < self.offsets.len() {
            Ok(TypeId(u64::from(id)))
        } else {
            Err(self.err(
                at,
                format!(
                    "refers to type {id}, but there are only {} types",
                    self.type_count()
                ),
            ))
        }
    }

    /// The id of a named type in one of `cats`.
    fn lookup(&self, name: &str, cats: &[usize]) -> Option<u32> {
        let slots = self.names.get(name)?;
        cats.iter().map(|&c| slots[c]).find(|&id| id != 0)
    }

    /// For a forward declaration (or an enum without enumerators): the definition of the
    /// same name, if there is one.
    fn definition(&self, r: &Record) -> Option<usize> {
        let cat = match r.kind {
            KIND_FWD if r.kflag => CAT_UNION,
            KIND_FWD => CAT_STRUCT,
            KIND_ENUM | KIND_ENUM64 if r.vlen == 0 => CAT_ENUM,
            _ => return None,
        };
        if r.name_off == 0 {
            return None;
        }
        let name = std::str::from_utf8(self.string(r.name_off, r.at).ok()?).ok()?;
        self.lookup(name, &[cat]).map(|id| id as usize)
    }

    /// The size of type `id` through qualifiers, typedefs, arrays and forward
    /// declarations: a bounded loop, never recursion. `None` when unknown (void,
    /// functions, flexible arrays, cycles, overflow).
    fn size_of(&self, mut id: u32) -> Option<u64> {
        let mut factor = 1u64;
        for _ in 0..MAX_CHAIN {
            let r = self.record(id as usize).ok()?;
            match r.kind {
                KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT => {
                    return factor.checked_mul(u64::from(r.size_or_type))
                }
                KIND_PTR => return factor.checked_mul(POINTER_SIZE),
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = r.size_or_type
                }
                KIND_ARRAY => {
                    let count = self.word(r.at + RECORD + 8).ok()?;
                    if count == 0 {
                        return None;
                    }
                    factor = factor.checked_mul(u64::from(count))?;
                    id = self.word(r.at + RECORD).ok()?;
                }
                KIND_FWD => id = self.definition(&r)? as u32,
                _ => return None,
            }
        }
        None
    }

    /// Converts the record of type `id`.
    fn decode(&self, id: usize) -> Result<Type> {
        if id == 0 {
            return Ok(Type {
                name: Some("void".to_string()),
                size: None,
                kind: TypeKind::Void,
                members: Vec::new(),
            });
        }
        let r = self.record(id)?;
        let at = r.at;
        let extra = at + RECORD;
        let name = self.name(r.name_off, at)?;
        let simple = |name: Option<String>, kind: TypeKind, size: Option<u64>| Type {
            name,
            size,
            kind,
            members: Vec::new(),
        };
        Ok(match r.kind {
            KIND_INT => {
                let encoding = self.word(extra)? >> 24;
                let kind = if encoding & INT_BOOL != 0 {
                    TypeKind::Bool
                } else {
                    TypeKind::Int {
                        signed: encoding & INT_SIGNED != 0,
                    }
                };
                simple(name, kind, Some(u64::from(r.size_or_type)))
            }
            KIND_FLOAT => simple(name, TypeKind::Float, Some(u64::from(r.size_or_type))),
            KIND_PTR => {
                let target = match r.size_or_type {
                    0 => None,
                    t => Some(self.type_ref(t, at)?),
                };
                simple(None, TypeKind::Pointer { target }, Some(POINTER_SIZE))
            }
            KIND_ARRAY => {
                let element = self.type_ref(self.word(extra)?, at)?;
                let count = self.word(extra + 8)?;
                let count = (count != 0).then_some(u64::from(count));
                simple(
                    None,
                    TypeKind::Array { element, count },
                    self.size_of(id as u32),
                )
            }
            KIND_STRUCT | KIND_UNION => self.decode_struct(&r, name)?,
            KIND_ENUM | KIND_ENUM64 => {
                let wide = r.kind == KIND_ENUM64;
                let entry = if wide { 12 } else { 8 };
                let mut enumerators = Vec::with_capacity(r.vlen);
                for i in 0..r.vlen {
                    let e = extra + i * entry;
                    let n = self.name(self.word(e)?, at)?.unwrap_or_default();
                    let lo = self.word(e + 4)?;
                    let value = if wide {
                        (u64::from(self.word(e + 8)?) << 32 | u64::from(lo)) as i64
                    } else if r.kflag {
                        i64::from(lo as i32)
                    } else {
                        i64::from(lo)
                    };
                    enumerators.push((n, value));
                }
                simple(
                    name,
                    TypeKind::Enum {
                        enumerators,
                        signed: r.kflag,
                    },
                    Some(u64::from(r.size_or_type)),
                )
            }
            KIND_FWD => simple(
                name,
                if r.kflag {
                    TypeKind::Union
                } else {
                    TypeKind::Struct
                },
                None,
            ),
            KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                let target = self.type_ref(r.size_or_type, at)?;
                let name = if r.kind == KIND_TYPEDEF { name } else { None };
                simple(name, TypeKind::Typedef { target }, self.size_of(id as u32))
            }
            KIND_FUNC => simple(name, TypeKind::Function, None),
            KIND_FUNC_PROTO => simple(None, TypeKind::Function, None),
            KIND_VAR | KIND_DATASEC => simple(name, TypeKind::Void, None),
            KIND_DECL_TAG => simple(None, TypeKind::Void, None),
            other => return Err(self.err(at, format!("type {id}: unknown kind {other}"))),
        })
    }

    fn decode_struct(&self, r: &Record, name: Option<String>) -> Result<Type> {
        let mut members = Vec::with_capacity(r.vlen);
        for i in 0..r.vlen {
            let e = r.at + RECORD + i * 12;
            let member_name = self.name(self.word(e)?, r.at)?;
            let ty_raw = self.word(e + 4)?;
            let ty = self.type_ref(ty_raw, r.at)?;
            let raw = self.word(e + 8)?;
            let (bit_offset, mut width) = if r.kflag {
                (u64::from(raw & 0x00ff_ffff), raw >> 24)
            } else {
                (u64::from(raw), 0)
            };
            let mut total = bit_offset;
            if !r.kflag {
                // Old encoding: a bitfield is a member whose type is an INT narrower than
                // its size, or with a bit offset of its own.
                if let Ok(t) = self.record(ty_raw as usize) {
                    if t.kind == KIND_INT {
                        let enc = self.word(t.at + RECORD)?;
                        let (int_off, bits) = ((enc >> 16) & 0xff, enc & 0xff);
                        if int_off != 0 || u64::from(bits) != u64::from(t.size_or_type) * 8 {
                            total += u64::from(int_off);
                            width = bits;
                        }
                    }
                }
            }
            let size = || self.size_of(ty_raw);
            if width == 0 && total % 8 != 0 {
                // Not byte-aligned, yet not declared a bitfield: read it as one.
                width = size()
                    .filter(|&s| s > 0 && s <= 8)
                    .map_or(8 - (total % 8) as u32, |s| s as u32 * 8);
            }
            let (offset, bitfield) = if width == 0 {
                (total / 8, None)
            } else {
                // As in dwarf.rs: align to the member type's storage unit when the field
                // fits in it, so that reading the type at `offset` yields the field.
                let unit = size().filter(|&s| s > 0 && s <= 16).unwrap_or(1);
                let aligned = total / (unit * 8) * unit;
                let bit = total - aligned * 8;
                if bit + u64::from(width) <= unit * 8 {
                    (aligned, Some((bit as u32, width)))
                } else {
                    (total / 8, Some(((total % 8) as u32, width)))
                }
            };
            members.push(Member {
                name: member_name,
                offset,
                bitfield,
                ty,
            });
        }
        members.sort_by_key(|m| m.offset);
        Ok(Type {
            name,
            size: Some(u64::from(r.size_or_type)),
            kind: if r.kind == KIND_UNION {
                TypeKind::Union
            } else {
                TypeKind::Struct
            },
            members,
        })
    }

    /// The converted type `id`, from the cache or decoded now.
    fn cached(&self, id: usize) -> Result<Arc<Type>> {
        let cell = self.cache.get(id).ok_or_else(|| self.no_id(id as u64))?;
        if let Some(t) = cell.get() {
            return Ok(t.clone());
        }
        let t = Arc::new(self.decode(id)?);
        Ok(cell.get_or_init(|| t).clone())
    }
}

impl TypeSource for BtfTypes {
    fn find(&self, name: &str) -> Result<TypeId> {
        let (plain, cats) = split_tag(name);
        if plain == "void" && cats.len() == CATS {
            return Ok(TypeId(0));
        }
        self.lookup(plain, cats)
            .map(|id| TypeId(u64::from(id)))
            .ok_or_else(|| Error::NoType {
                name: name.to_string(),
                searched: self.describe(),
            })
    }

    fn get(&self, id: TypeId) -> Result<Arc<Type>> {
        let idx = usize::try_from(id.0)
            .ok()
            .filter(|&i| i < self.cache.len())
            .ok_or_else(|| self.no_id(id.0))?;
        if let Some(t) = self.cache[idx].get() {
            return Ok(t.clone());
        }
        if idx != 0 {
            let r = self.record(idx)?;
            if let Some(def) = self.definition(&r).filter(|&d| d != idx) {
                // A declaration: share the definition's conversion (which is not itself
                // a declaration, so this does not chain).
                let t = self.cached(def)?;
                return Ok(self.cache[idx].get_or_init(|| t).clone());
            }
        }
        self.cached(idx)
    }

    fn describe(&self) -> String {
        format!("BTF of {}", self.source_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::{offset_of, Object};

    /// Builds BTF blobs, one record at a time; returns ids in order.
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        count: u32,
    }

    impl Builder {
        fn new() -> Builder {
            Builder {
                types: Vec::new(),
                strings: vec![0],
                count: 0,
            }
        }

        fn string(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        fn word(&mut self, v: u32) {
            self.types.extend_from_slice(&v.to_le_bytes());
        }

        fn record(&mut self, name: &str, kind: u32, kflag: bool, vlen: u32, st: u32) -> u32 {
            let n = self.string(name);
            self.word(n);
            self.word(kind << 24 | u32::from(kflag) << 31 | vlen);
            self.word(st);
            self.count += 1;
            self.count
        }

        fn int(&mut self, name: &str, size: u32, enc: u32, off: u32, bits: u32) -> u32 {
            let id = self.record(name, KIND_INT, false, 0, size);
            self.word(enc << 24 | off << 16 | bits);
            id
        }

        fn simple(&mut self, name: &str, kind: u32, target: u32) -> u32 {
            self.record(name, kind, false, 0, target)
        }

        fn array(&mut self, element: u32, count: u32) -> u32 {
            let id = self.record("", KIND_ARRAY, false, 0, 0);
            self.word(element);
            self.word(1);
            self.word(count);
            id
        }

        /// Members: (name, type, raw offset word).
        fn composite(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            kflag: bool,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let id = self.record(name, kind, kflag, members.len() as u32, size);
            for &(n, t, off) in members {
                let n = self.string(n);
                self.word(n);
                self.word(t);
                self.word(off);
            }
            id
        }

        fn enumeration(
            &mut self,
            name: &str,
            size: u32,
            signed: bool,
            values: &[(&str, i64)],
        ) -> u32 {
            let id = self.record(name, KIND_ENUM, signed, values.len() as u32, size);
            for &(n, v) in values {
                let n = self.string(n);
                self.word(n);
                self.word(v as u32);
            }
            id
        }

        fn finish(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_le_bytes());
            out.extend_from_slice(&[1, 0]);
            for v in [
                HEADER_LEN as u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// Bit offset word of a bitfield member (kind_flag encoding).
    fn bits(offset: u32, width: u32) -> u32 {
        width << 24 | offset
    }

    /// The test blob: a `task` modelled on object.rs's `Task`, plus every kind.
    fn sample() -> Vec<u8> {
        let mut b = Builder::new();
        let int = b.int("int", 4, INT_SIGNED, 0, 32); // 1
        let uint = b.int("unsigned int", 4, 0, 0, 32); // 2
        let char_ = b.int("char", 1, INT_SIGNED | 2, 0, 8); // 3
        let bool_ = b.int("_Bool", 1, INT_BOOL, 0, 8); // 4
        let u64_ = b.int("long long unsigned int", 8, 0, 0, 64); // 5
        let short = b.int("short int", 2, INT_SIGNED, 0, 16); // 6
        let char_ptr = b.simple("", KIND_PTR, char_); // 7
        let comm = b.array(char_, 16); // 8
        let u32_ = b.simple("u32", KIND_TYPEDEF, uint); // 9
        let pid_t = b.simple("pid_t", KIND_TYPEDEF, u32_); // 10
        let kpid_t = b.simple("kpid_t", KIND_TYPEDEF, pid_t); // 11
        let const_kpid = b.simple("", KIND_CONST, kpid_t); // 12
        let list_fwd = b.simple("list_head", KIND_FWD, 0); // 13
        let list_ptr = b.simple("", KIND_PTR, list_fwd); // 14
        let list = b.composite(
            KIND_STRUCT,
            "list_head",
            16,
            false,
            &[("next", list_ptr, 0), ("prev", list_ptr, 64)],
        ); // 15
        let anon = b.composite(
            KIND_UNION,
            "",
            8,
            false,
            &[("word", u64_, 0), ("half", uint, 0)],
        ); // 16
        let state = b.enumeration("state", 4, true, &[("RUNNING", 0), ("DEAD", -1)]); // 17
        let big = b.record("big", KIND_ENUM64, false, 2, 8); // 18
        for (n, v) in [("HUGE", 1u64 << 40), ("ALL", u64::MAX)] {
            let n = b.string(n);
            b.word(n);
            b.word(v as u32);
            b.word((v >> 32) as u32);
        }
        let vol_u64 = b.simple("", KIND_VOLATILE, u64_); // 19
        let _restrict = b.simple("", KIND_RESTRICT, char_ptr); // 20
        let user_ptr = b.simple("user", KIND_TYPE_TAG, char_ptr); // 21
        let void_ptr = b.simple("", KIND_PTR, 0); // 22
        let task = b.composite(
            KIND_STRUCT,
            "task",
            96,
            true,
            &[
                ("magic", vol_u64, 0),
                ("pid", const_kpid, 64),
                ("delta", short, 96),
                ("comm", comm, 128),
                ("tasks", list, 256),
                ("", anon, 384),
                ("name", user_ptr, 448),
                ("void_ptr", void_ptr, 512),
                ("flag_lo", uint, bits(72 * 8 + 3, 5)),
                ("flag_hi", int, bits(72 * 8 + 8, 4)),
                ("state", state, 640),
                ("big", big, 704),
            ],
        ); // 23
        b.simple("task_t", KIND_TYPEDEF, task); // 24
        let task_ptr = b.simple("", KIND_PTR, task); // 25
        b.simple("TaskRef", KIND_TYPEDEF, task_ptr); // 26
        let tasks = b.array(task, 4); // 27
        b.simple("Tasks", KIND_TYPEDEF, tasks); // 28
        b.simple("LoopA", KIND_TYPEDEF, 30); // 29
        b.simple("LoopB", KIND_TYPEDEF, 29); // 30
        let lo = b.int("unsigned int", 4, 0, 0, 5); // 31
        let hi = b.int("unsigned int", 4, 0, 0, 3); // 32
        let mid = b.int("unsigned int", 4, 0, 8, 4); // 33
        b.composite(
            KIND_STRUCT,
            "old_bits",
            4,
            false,
            &[("lo", lo, 0), ("hi", hi, 5), ("mid", mid, 0)],
        ); // 34
        let proto = b.record("", KIND_FUNC_PROTO, false, 2, int); // 35
        for (n, t) in [("a", int), ("", char_ptr)] {
            let n = b.string(n);
            b.word(n);
            b.word(t);
        }
        b.record("do_it", KIND_FUNC, false, 1, proto); // 36
        let var = b.simple("jiffies", KIND_VAR, u64_); // 37
        b.word(1);
        b.record(".data", KIND_DATASEC, false, 1, 8); // 38
        for v in [var, 0, 8] {
            b.word(v);
        }
        b.record("double", KIND_FLOAT, false, 0, 8); // 39
        b.simple("tag", KIND_DECL_TAG, task); // 40
        b.word(u32::MAX);
        b.simple("dup", KIND_TYPEDEF, int); // 41
        b.composite(KIND_STRUCT, "dup", 4, false, &[("x", int, 0)]); // 42
        b.record("lonely", KIND_FWD, true, 0, 0); // 43
        b.record("state", KIND_ENUM, false, 0, 4); // 44
        b.composite(
            KIND_STRUCT,
            "holder",
            24,
            false,
            &[("b", bool_, 0), ("f", 39, 64), ("w", int, 131)],
        ); // 45
        assert_eq!(b.count, 45);
        b.finish()
    }

    fn btf() -> BtfTypes {
        BtfTypes::parse(sample(), "test blob").unwrap()
    }

    fn get(b: &BtfTypes, id: u64) -> Arc<Type> {
        b.get(TypeId(id)).unwrap()
    }

    fn member<'a>(t: &'a Type, name: &str) -> &'a Member {
        t.members
            .iter()
            .find(|m| m.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no member {name} in {t:?}"))
    }

    #[test]
    fn finds_and_converts_every_kind() {
        let b = btf();
        assert_eq!(b.type_count(), 45);
        assert_eq!(b.describe(), "BTF of test blob");
        let find = |n: &str| b.find(n).unwrap().0;
        assert_eq!(find("void"), 0);
        assert_eq!(get(&b, 0).kind, TypeKind::Void);
        assert_eq!(find("int"), 1);
        assert_eq!(find("unsigned int"), 2, "the first of several");
        assert_eq!(find("list_head"), 15, "the definition, not the fwd");
        assert_eq!(find("struct list_head"), 15);
        assert_eq!(find("dup"), 42, "a struct before a typedef");
        assert_eq!(find("state"), 17, "an enum before its declaration");
        assert_eq!(find("enum state"), 17);
        assert_eq!(find("union lonely"), 43);
        assert_eq!(find("lonely"), 43);
        assert!(b.find("struct lonely").is_err());
        assert!(b.find("union list_head").is_err());
        assert!(b.find("jiffies").is_err(), "variables are not types");
        assert!(b.find("do_it").is_err());
        match b.find("no_such_type") {
            Err(Error::NoType { name, searched }) => {
                assert_eq!(name, "no_such_type");
                assert_eq!(searched, "BTF of test blob");
            }
            other => panic!("{other:?}"),
        }
        assert!(b.find("").is_err());

        let t = get(&b, 1);
        assert_eq!(
            (t.name.as_deref(), t.size, &t.kind),
            (Some("int"), Some(4), &TypeKind::Int { signed: true })
        );
        assert_eq!(get(&b, 2).kind, TypeKind::Int { signed: false });
        assert_eq!(get(&b, 4).kind, TypeKind::Bool);
        assert_eq!(
            *get(&b, 7),
            Type {
                name: None,
                size: Some(8),
                kind: TypeKind::Pointer {
                    target: Some(TypeId(3))
                },
                members: vec![],
            }
        );
        assert_eq!(get(&b, 22).kind, TypeKind::Pointer { target: None });
        let a = get(&b, 8);
        assert_eq!(
            (a.size, &a.kind),
            (
                Some(16),
                &TypeKind::Array {
                    element: TypeId(3),
                    count: Some(16)
                }
            )
        );
        assert_eq!(get(&b, 27).size, Some(4 * 96));
        // Typedef chains and qualifiers: sizes through the chain, no name on qualifiers.
        let c = get(&b, 12);
        assert_eq!(
            (c.name.as_deref(), c.size, &c.kind),
            (None, Some(4), &TypeKind::Typedef { target: TypeId(11) })
        );
        assert_eq!(get(&b, 11).name.as_deref(), Some("kpid_t"));
        assert_eq!(get(&b, 11).size, Some(4));
        assert_eq!(get(&b, 19).size, Some(8));
        assert_eq!(get(&b, 20).kind, TypeKind::Typedef { target: TypeId(7) });
        assert_eq!(get(&b, 21).name, None);
        assert_eq!(get(&b, 21).size, Some(8));
        // A typedef loop converts (without hanging) and has no size.
        let l = get(&b, 29);
        assert_eq!(
            (l.size, &l.kind),
            (None, &TypeKind::Typedef { target: TypeId(30) })
        );
        // The forward declaration converts to the definition.
        assert_eq!(get(&b, 13), get(&b, 15));
        assert_eq!(get(&b, 15).members.len(), 2);
        let lonely = get(&b, 43);
        assert_eq!(
            (lonely.size, &lonely.kind, lonely.members.len()),
            (None, &TypeKind::Union, 0)
        );
        // Enums, signed and 64-bit, and an enum declaration.
        assert_eq!(
            get(&b, 17).kind,
            TypeKind::Enum {
                enumerators: vec![("RUNNING".into(), 0), ("DEAD".into(), -1)],
                signed: true
            }
        );
        assert_eq!(
            get(&b, 18).kind,
            TypeKind::Enum {
                enumerators: vec![("HUGE".into(), 1 << 40), ("ALL".into(), -1)],
                signed: false
            }
        );
        assert_eq!(get(&b, 18).size, Some(8));
        assert_eq!(get(&b, 44), get(&b, 17));
        // Members, an anonymous union, bitfields placed as DWARF places them.
        let task = get(&b, 23);
        assert_eq!((task.size, &task.kind), (Some(96), &TypeKind::Struct));
        assert_eq!(member(&task, "pid").offset, 8);
        assert_eq!(member(&task, "comm").offset, 16);
        let anon = task.members.iter().find(|m| m.name.is_none()).unwrap();
        assert_eq!((anon.offset, anon.ty), (48, TypeId(16)));
        assert_eq!(get(&b, 16).kind, TypeKind::Union);
        let lo = member(&task, "flag_lo");
        assert_eq!((lo.offset, lo.bitfield), (72, Some((3, 5))));
        let hi = member(&task, "flag_hi");
        assert_eq!((hi.offset, hi.bitfield), (72, Some((8, 4))));
        assert_eq!(member(&task, "big").offset, 88);
        assert!(task.members.windows(2).all(|w| w[0].offset <= w[1].offset));
        // The old bitfield encoding: INT types narrower than their size.
        let old = get(&b, 34);
        assert_eq!(member(&old, "lo").bitfield, Some((0, 5)));
        assert_eq!(member(&old, "hi").bitfield, Some((5, 3)));
        assert_eq!(member(&old, "mid").bitfield, Some((8, 4)));
        assert!(old.members.iter().all(|m| m.offset == 0));
        // A member at an odd bit offset without a width is read as a bitfield.
        let holder = get(&b, 45);
        assert_eq!(member(&holder, "f").offset, 8);
        assert_eq!(member(&holder, "w").offset, 16);
        assert_eq!(member(&holder, "w").bitfield, Some((3, 32)));
        // Functions, variables, sections, tags.
        assert_eq!(get(&b, 35).kind, TypeKind::Function);
        assert_eq!(get(&b, 36).kind, TypeKind::Function);
        assert_eq!(get(&b, 36).name.as_deref(), Some("do_it"));
        assert_eq!(get(&b, 37).kind, TypeKind::Void);
        assert_eq!(get(&b, 38).kind, TypeKind::Void);
        assert_eq!(get(&b, 39).kind, TypeKind::Float);
        assert_eq!(get(&b, 40).kind, TypeKind::Void);
        // Bad ids.
        for bad in [46, 1000, u64::MAX] {
            assert!(
                matches!(b.get(TypeId(bad)), Err(Error::NoType { .. })),
                "{bad}"
            );
        }
        // Cached: the same Arc.
        assert!(Arc::ptr_eq(&get(&b, 23), &get(&b, 23)));
    }

    use crate::object::tests::{DIRECT, TASK0};
    const BLOB: u64 = 0x18_0ff0;

    fn program(blob: &[u8]) -> Program {
        crate::object::tests::task_guest(&[(BLOB, blob)])
    }

    #[test]
    fn objects_read_through_btf_types() {
        let p = program(&[]).with_types(Arc::new(btf()));
        let t = p.object(DIRECT + TASK0, "task").unwrap();
        assert_eq!(t.type_name(), "task");
        assert_eq!(t.size().unwrap(), 96);
        assert_eq!(
            t.member("magic").unwrap().as_u64().unwrap(),
            0x6b73_6174_7562_6d61
        );
        let pid = t.member("pid").unwrap();
        assert_eq!(pid.type_name(), "kpid_t");
        assert_eq!(pid.size().unwrap(), 4);
        assert_eq!(pid.as_u64().unwrap(), 1);
        assert_eq!(t.member("delta").unwrap().as_i64().unwrap(), -5);
        assert_eq!(
            t.member("word").unwrap().as_u64().unwrap(),
            0x1122_3344_5566_7788
        );
        assert_eq!(t.member("half").unwrap().as_u64().unwrap(), 0x5566_7788);
        assert_eq!(t.member("flag_lo").unwrap().as_u64().unwrap(), 0b10110);
        assert_eq!(t.member("flag_hi").unwrap().as_i64().unwrap(), -6);
        assert_eq!(t.member("state").unwrap().as_i64().unwrap(), 0);
        assert_eq!(t.member("big").unwrap().as_u64().unwrap(), 1 << 40);
        assert_eq!(t.member("comm").unwrap().read_cstr(64).unwrap(), "task0");
        assert_eq!(t.member("comm").unwrap().type_name(), "char[16]");
        assert_eq!(
            t.member("name").unwrap().read_cstr(100).unwrap(),
            "hello, world"
        );
        // Through pointers to a forward declaration of list_head.
        let next = t.member_path("tasks.next.next").unwrap();
        assert_eq!(next.address(), DIRECT + TASK0 + 96 + 32);
        assert_eq!(next.as_u64().unwrap(), DIRECT + TASK0 + 2 * 96 + 32);
        let l = t.member("tasks").unwrap().member("next").unwrap();
        assert_eq!(l.type_name(), "list_head *");
        assert_eq!(l.deref().unwrap().type_name(), "list_head");
        let t1 = Object::container_of(&p, next.as_u64().unwrap(), "task_t", "tasks").unwrap();
        assert_eq!(t1.address(), DIRECT + TASK0 + 2 * 96);
        assert_eq!(t1.member("pid").unwrap().as_u64().unwrap(), 3);
        assert_eq!(
            p.object(DIRECT + TASK0 + 96, "task")
                .unwrap()
                .member("state")
                .unwrap()
                .as_i64()
                .unwrap(),
            -1
        );
        let tasks = p.object(DIRECT + TASK0, "Tasks").unwrap();
        assert_eq!(tasks.size().unwrap(), 4 * 96);
        assert_eq!(
            tasks
                .index(3)
                .unwrap()
                .member("pid")
                .unwrap()
                .as_u64()
                .unwrap(),
            4
        );
        assert_eq!(p.offset_of("task", "half").unwrap(), 48);
        assert_eq!(p.offset_of("task", "comm[3]").unwrap(), 19);
        assert_eq!(p.offset_of("task", "tasks.prev").unwrap(), 40);
        // Typedef loops end with an error.
        let l = p.object(DIRECT, "LoopA").unwrap();
        assert!(l.size().is_err());
        assert!(l.as_u64().is_err());
    }

    #[test]
    fn loads_from_guest_memory() {
        let blob = sample();
        let p = program(&blob);
        let start = DIRECT + BLOB;
        let b = BtfTypes::from_guest(&p, start, start + blob.len() as u64).unwrap();
        assert_eq!(b.type_count(), 45);
        assert_eq!(
            b.source_name(),
            format!(
                "guest memory __start_BTF..__stop_BTF ({:#x} bytes at {start:#x})",
                blob.len()
            )
        );
        assert_eq!(get(&b, 23), get(&btf(), 23));
        for (from, to, what) in [
            (start, start, "empty"),
            (start + 8, start, "reversed"),
            (start, start + (64 << 20) + 1, "more than"),
        ] {
            match BtfTypes::from_guest(&p, from, to) {
                Err(Error::Btf {
                    source_name,
                    reason,
                    ..
                }) => {
                    assert!(reason.contains(what), "{reason}");
                    assert!(source_name.contains(&format!("{from:#x}")), "{source_name}");
                }
                other => panic!("{other:?}"),
            }
        }
        // Running off the mapping: the error names the address.
        let end = DIRECT + (2 << 20);
        match BtfTypes::from_guest(&p, end - 4096, end + 4096) {
            Err(Error::Btf { reason, .. }) => {
                assert!(reason.contains(&format!("{:#x}", end - 4096)), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        // Zeroes are not BTF.
        match BtfTypes::from_guest(&p, DIRECT + 0x1f_0000, DIRECT + 0x1f_1000) {
            Err(Error::Btf { reason, .. }) => assert!(reason.contains("magic"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_headers_and_records_are_clear_errors() {
        let good = sample();
        let reason = |bytes: Vec<u8>| match BtfTypes::parse(bytes, "bad") {
            Err(Error::Btf {
                source_name,
                reason,
                offset,
            }) => {
                assert_eq!(source_name, "bad");
                (reason, offset)
            }
            other => panic!("{other:?}"),
        };
        assert!(reason(Vec::new()).0.contains("too short"));
        assert!(reason(good[..20].to_vec()).0.contains("too short"));
        let mut b = good.clone();
        b[0] = 0;
        assert!(reason(b).0.contains("magic"));
        let mut b = good.clone();
        b.swap(0, 1);
        assert!(reason(b).0.contains("big-endian"));
        let mut b = good.clone();
        b[2] = 2;
        assert!(reason(b).0.contains("version"));
        let mut b = good.clone();
        b[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(reason(b).0.contains("header length"));
        let mut b = good.clone();
        b[12..16].copy_from_slice(&(good.len() as u32).to_le_bytes());
        assert!(reason(b).0.contains("type section"));
        let mut b = good.clone();
        b[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(reason(b).0.contains("string section"));
        // An unknown kind in the second record.
        let mut b = good.clone();
        b[HEADER_LEN + 16 + 7] = 25;
        let (r, off) = reason(b);
        assert!(r.contains("type 2: unknown kind 25"), "{r}");
        assert_eq!(off, (HEADER_LEN + 16) as u64);
        // A struct whose members run past the section.
        let mut b = good.clone();
        let task = BtfTypes::parse(good.clone(), "x").unwrap().offsets[23] as usize;
        b[task + 4..task + 6].copy_from_slice(&0xffffu16.to_le_bytes());
        let (r, off) = reason(b);
        assert!(r.contains("type 23 (STRUCT with 65535 entries)"), "{r}");
        assert_eq!(off, task as u64);
        // A name outside the string section.
        let mut b = good.clone();
        b[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&0xfff0u32.to_le_bytes());
        assert!(reason(b).0.contains("outside the string section"));
        // A reference to a type that does not exist: found when converting.
        let mut b = good.clone();
        let ptr = BtfTypes::parse(good.clone(), "x").unwrap().offsets[7] as usize;
        b[ptr + 8..ptr + 12].copy_from_slice(&46u32.to_le_bytes());
        let btf = BtfTypes::parse(b, "bad").unwrap();
        match btf.get(TypeId(7)) {
            Err(Error::Btf { reason, offset, .. }) => {
                assert!(reason.contains("type 46"), "{reason}");
                assert_eq!(offset, ptr as u64);
            }
            other => panic!("{other:?}"),
        }
        // Just a header: no types.
        let b = BtfTypes::parse(Builder::new().finish(), "empty").unwrap();
        assert_eq!(b.type_count(), 0);
        assert_eq!(b.get(TypeId(0)).unwrap().kind, TypeKind::Void);
    }

    /// Parses and converts everything it can; must not panic or hang.
    fn exercise(bytes: Vec<u8>) {
        let Ok(b) = BtfTypes::parse(bytes, "fuzz") else {
            return;
        };
        for id in 0..b.type_count() as u64 + 2 {
            if let Ok(t) = b.get(TypeId(id)) {
                for m in &t.members {
                    let _ = b.get(m.ty);
                    if let Some(n) = &m.name {
                        let _ = offset_of(&b, TypeId(id), n);
                    }
                }
            }
        }
        for n in ["task", "list_head", "state", "struct a", "b", "void"] {
            let _ = b.find(n);
        }
    }

    /// A record of any kind with small fields, for structured fuzzing.
    fn record_strategy() -> impl proptest::strategy::Strategy<Value = Vec<u32>> {
        use proptest::prelude::*;
        (
            0u32..24,
            any::<bool>(),
            0u32..4,
            0u32..40,
            prop_oneof![0u32..24, any::<u32>()],
            proptest::collection::vec(prop_oneof![0u32..40, any::<u32>()], 12),
        )
            .prop_map(|(kind, kflag, vlen, name, st, words)| {
                let mut out = vec![name, kind << 24 | u32::from(kflag) << 31 | vlen, st];
                let extra = extra_len(kind, vlen as usize).unwrap_or(4) / 4;
                out.extend((0..extra).map(|i| words[i % words.len()]));
                out
            })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            exercise(bytes);
        }

        #[test]
        fn arbitrary_records_never_panic(
            records in proptest::collection::vec(record_strategy(), 0..40),
            strings in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..48),
        ) {
            let types: Vec<u8> = records.iter().flatten().flat_map(|w| w.to_le_bytes()).collect();
            let mut bytes = Vec::new();
            bytes.extend_from_slice(&MAGIC.to_le_bytes());
            bytes.extend_from_slice(&[1, 0]);
            for v in [24, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
            bytes.extend_from_slice(&types);
            bytes.extend_from_slice(&strings);
            exercise(bytes);
        }

        #[test]
        fn mutated_blobs_never_panic(
            flips in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 1..16),
            cut in proptest::prelude::any::<usize>(),
        ) {
            let mut bytes = sample();
            let len = bytes.len();
            for (at, v) in flips {
                bytes[at % len] = v;
            }
            if cut % 4 == 0 {
                bytes.truncate(cut / 4 % len);
            }
            exercise(bytes);
        }
    }

    /// The Debian kernel's BTF against its DWARF (the `-dbg` vmlinux of the Linux guest
    /// fixture, built on first use).
    #[test]
    fn debian_vmlinux_btf_matches_dwarf() {
        let path = ambulance_testkit::linux_fixture(true).join("vmlinux");
        let di = crate::debuginfo::DebugInfo::open(&path).unwrap();
        let bytes = di.elf_bytes();
        let elf = crate::symbols::parse_elf(bytes, "vmlinux").unwrap();
        let sh = elf
            .section_headers
            .iter()
            .find(|sh| elf.shdr_strtab.get_at(sh.sh_name) == Some(".BTF"))
            .expect("a .BTF section");
        let blob = bytes[sh.sh_offset as usize..(sh.sh_offset + sh.sh_size) as usize].to_vec();
        let started = std::time::Instant::now();
        let btf = BtfTypes::parse(blob, &path.display().to_string()).unwrap();
        let parse_time = started.elapsed();
        println!(
            "parsed {} bytes of BTF ({} types) in {parse_time:?}",
            sh.sh_size,
            btf.type_count()
        );
        let started = std::time::Instant::now();
        for id in 0..=btf.type_count() as u64 {
            btf.get(TypeId(id)).unwrap();
        }
        println!("converted every type in {:?}", started.elapsed());
        let dwarf = di.types().unwrap();
        let cases: &[(&str, &[&str])] = &[
            (
                "task_struct",
                &[
                    "thread_info",
                    "__state",
                    "stack",
                    "usage",
                    "flags",
                    "on_cpu",
                    "prio",
                    "se",
                    "se.vruntime",
                    "cpus_mask",
                    "tasks",
                    "mm",
                    "active_mm",
                    "exit_state",
                    "exit_code",
                    "pid",
                    "tgid",
                    "stack_canary",
                    "real_parent",
                    "parent",
                    "children",
                    "sibling",
                    "group_leader",
                    "thread_pid",
                    "pid_links",
                    "start_time",
                    "real_cred",
                    "cred",
                    "comm",
                    "fs",
                    "files",
                    "signal",
                    "thread",
                    "thread.sp",
                ],
            ),
            ("list_head", &["next", "prev"]),
            (
                "printk_info",
                &[
                    "seq",
                    "ts_nsec",
                    "text_len",
                    "facility",
                    "flags",
                    "level",
                    "caller_id",
                    "dev_info",
                ],
            ),
            (
                "mm_struct",
                &[
                    "mm_mt",
                    "mmap_base",
                    "task_size",
                    "pgd",
                    "mm_users",
                    "mm_count",
                    "map_count",
                    "total_vm",
                    "start_code",
                    "end_code",
                    "start_brk",
                    "brk",
                    "start_stack",
                    "arg_start",
                    "env_end",
                    "owner",
                    "exe_file",
                    "cpu_bitmap",
                ],
            ),
            ("pid", &["count", "level", "tasks", "rcu", "numbers"]),
            ("upid", &["nr", "ns"]),
        ];
        for &(name, members) in cases {
            let b = btf.find(name).unwrap();
            let d = dwarf.find(name).unwrap();
            let (bt, dt) = (btf.get(b).unwrap(), dwarf.get(d).unwrap());
            assert_eq!(bt.size, dt.size, "size of {name}");
            assert!(bt.size.is_some_and(|s| s > 0), "{name}");
            for m in members {
                assert_eq!(
                    offset_of(&btf, b, m).unwrap(),
                    offset_of(&*dwarf, d, m).unwrap(),
                    "offset of {name}.{m}"
                );
            }
            // Every direct member: same names, offsets and bitfields.
            let shape = |t: &Type| {
                t.members
                    .iter()
                    .map(|m| (m.name.clone(), m.offset, m.bitfield))
                    .collect::<Vec<_>>()
            };
            assert_eq!(shape(&bt), shape(&dt), "members of {name}");
        }
    }
}
