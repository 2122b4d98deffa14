//! VMCOREINFO, Linux's `KEY=value` description of a kernel for tools without debug info.
//!
//! The format, one entry a line, as Linux (`kernel/vmcore_info.c`, formerly
//! `crash_core.c`) and the test kernel write it:
//!
//! | line | value | accessor |
//! |---|---|---|
//! | `OSRELEASE=6.1.0-18-amd64` | text | [`Vmcoreinfo::osrelease`] |
//! | `BUILD-ID=1b2c…` | hex bytes | [`Vmcoreinfo::build_id`] |
//! | `PAGESIZE=4096` | decimal | [`Vmcoreinfo::page_size`] |
//! | `KERNELOFFSET=2a000000` | hex | [`Vmcoreinfo::kerneloffset`] |
//! | `CRASHTIME=1700000000` | decimal (Unix seconds) | [`Vmcoreinfo::crashtime`] |
//! | `SYMBOL(init_task)=ffffffff8a40f940` | hex | [`Vmcoreinfo::symbol`] |
//! | `SIZE(task_struct)=9792` | decimal | [`Vmcoreinfo::size`] |
//! | `OFFSET(task_struct.tasks)=2192` (also `OFFSET(a.b.c)`) | decimal | [`Vmcoreinfo::offset`] |
//! | `LENGTH(mem_section)=1024` | decimal | [`Vmcoreinfo::length`] |
//! | `NUMBER(phys_base)=-123` | signed decimal | [`Vmcoreinfo::number`] |
//! | anything else `KEY=value` | kept as text | [`Vmcoreinfo::get_raw`] |
//!
//! # Addresses
//!
//! `SYMBOL()` values are **runtime** virtual addresses: Linux prints `&symbol` in the
//! running (already relocated) kernel, so under KASLR they include the slide, and
//! `KERNELOFFSET` is that slide (`kaslr_offset()`). drgn, crash and makedumpfile use
//! `SYMBOL(swapper_pg_dir)` as is and use `KERNELOFFSET` only to relocate the addresses of
//! a vmlinux file. So [`Vmcoreinfo::symbol`] returns the value as written, and
//! [`Vmcoreinfo::link_time_symbol`] subtracts `KERNELOFFSET` for comparison with an ELF
//! symbol table.
//!
//! # Hostile text
//!
//! VMCOREINFO comes from guest memory. Parsing is lenient but honest: a line that does
//! not parse is skipped and recorded in [`Vmcoreinfo::problems`] with its line number and
//! the reason. Text with no usable line at all, more than [`MAX_TEXT`] bytes or more than
//! [`MAX_LINES`] lines is refused with [`Error::Vmcoreinfo`].

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use crate::types::{Member, Type, TypeId, TypeKind, TypeSource};
use crate::{Error, Result};

/// Largest VMCOREINFO text accepted (Linux's is one page).
pub const MAX_TEXT: usize = 1 << 20;
/// Most lines accepted.
pub const MAX_LINES: usize = 100_000;
/// Longest line accepted.
const MAX_LINE: usize = 4096;
/// Longest build ID accepted, in bytes.
const MAX_BUILD_ID: usize = 64;

/// Parsed VMCOREINFO text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vmcoreinfo {
    osrelease: Option<String>,
    build_id: Option<Vec<u8>>,
    page_size: Option<u64>,
    kerneloffset: Option<u64>,
    crashtime: Option<i64>,
    symbols: BTreeMap<String, u64>,
    sizes: BTreeMap<String, u64>,
    offsets: BTreeMap<(String, String), u64>,
    lengths: BTreeMap<String, u64>,
    numbers: BTreeMap<String, i64>,
    other: BTreeMap<String, String>,
    problems: Vec<(usize, String)>,
}

/// A name inside `KEY(name)`: non-empty, printable, no parentheses or `=`.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '(' | ')' | '='))
}

fn parse_hex(v: &str) -> std::result::Result<u64, String> {
    let digits = v
        .strip_prefix("0x")
        .or_else(|| v.strip_prefix("0X"))
        .unwrap_or(v);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{v:?} is not a hexadecimal number"));
    }
    u64::from_str_radix(digits, 16).map_err(|_| format!("{v:?} does not fit in 64 bits"))
}

fn parse_dec(v: &str) -> std::result::Result<u64, String> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{v:?} is not a decimal number"));
    }
    v.parse::<u64>()
        .map_err(|_| format!("{v:?} does not fit in 64 bits"))
}

fn parse_signed(v: &str) -> std::result::Result<i64, String> {
    let (neg, digits) = match v.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, v),
    };
    let magnitude = parse_dec(digits)?;
    if neg {
        if magnitude > 1u64 << 63 {
            return Err(format!("{v:?} does not fit in 64 bits"));
        }
        Ok((magnitude as i64).wrapping_neg())
    } else {
        // Linux prints NUMBER() with %ld, but some writers print unsigned values; keep
        // their bits.
        Ok(magnitude as i64)
    }
}

fn parse_build_id(v: &str) -> std::result::Result<Vec<u8>, String> {
    if v.is_empty() || !v.len().is_multiple_of(2) || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "build ID {v:?} is not an even number of hex digits"
        ));
    }
    if v.len() / 2 > MAX_BUILD_ID {
        return Err(format!(
            "build ID of {} bytes (at most {MAX_BUILD_ID})",
            v.len() / 2
        ));
    }
    (0..v.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&v[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

/// `KEY(name)` → `name`, when `key` has that form.
fn bracketed<'a>(key: &'a str, prefix: &str) -> Option<std::result::Result<&'a str, String>> {
    let rest = key.strip_prefix(prefix)?.strip_prefix('(')?;
    Some(match rest.strip_suffix(')') {
        Some(name) if valid_name(name) => Ok(name),
        Some(name) => Err(format!("bad name {name:?} in {prefix}()")),
        None => Err(format!("{prefix}( without a closing parenthesis")),
    })
}

fn hex_string(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

impl Vmcoreinfo {
    /// Parses VMCOREINFO text (see the module documentation).
    pub fn parse(text: &str) -> Result<Vmcoreinfo> {
        if text.len() > MAX_TEXT {
            return Err(Error::Vmcoreinfo {
                line: 0,
                reason: format!("{} bytes of text (at most {MAX_TEXT})", text.len()),
            });
        }
        // An ELF note's descriptor is NUL-padded.
        let text = text.trim_end_matches('\0');
        if text.trim().is_empty() {
            return Err(Error::Vmcoreinfo {
                line: 0,
                reason: "empty".to_string(),
            });
        }
        let mut v = Vmcoreinfo::default();
        let mut good = 0usize;
        for (i, line) in text.split('\n').enumerate() {
            let line_no = i + 1;
            if line_no > MAX_LINES {
                return Err(Error::Vmcoreinfo {
                    line: line_no,
                    reason: format!("more than {MAX_LINES} lines"),
                });
            }
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().is_empty() {
                continue;
            }
            match v.parse_line(line) {
                Ok(None) => good += 1,
                Ok(Some(note)) => {
                    good += 1;
                    v.problems.push((line_no, note));
                }
                Err(reason) => v.problems.push((line_no, reason)),
            }
        }
        if good == 0 {
            let first = v
                .problems
                .first()
                .map(|(l, r)| format!(" (line {l}: {r})"))
                .unwrap_or_default();
            return Err(Error::Vmcoreinfo {
                line: 0,
                reason: format!("no usable line in {} bytes{first}", text.len()),
            });
        }
        Ok(v)
    }

    /// Parses VMCOREINFO bytes (e.g. an ELF note's descriptor): they must be UTF-8 text,
    /// trailing NULs are ignored.
    pub fn parse_bytes(bytes: &[u8]) -> Result<Vmcoreinfo> {
        if bytes.len() > MAX_TEXT {
            return Err(Error::Vmcoreinfo {
                line: 0,
                reason: format!("{} bytes of text (at most {MAX_TEXT})", bytes.len()),
            });
        }
        match std::str::from_utf8(bytes) {
            Ok(text) => Self::parse(text),
            Err(e) => Err(Error::Vmcoreinfo {
                line: 1 + bytes[..e.valid_up_to()]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count(),
                reason: format!("not text: invalid UTF-8 at byte {}", e.valid_up_to()),
            }),
        }
    }

    /// One non-empty line. `Ok(None)`: taken; `Ok(Some(note))`: taken, with a remark;
    /// `Err(reason)`: skipped.
    fn parse_line(&mut self, line: &str) -> std::result::Result<Option<String>, String> {
        if line.len() > MAX_LINE {
            return Err(format!("line of {} bytes (at most {MAX_LINE})", line.len()));
        }
        if let Some(c) = line.chars().find(|&c| c.is_control() && c != '\t') {
            return Err(format!("not text: control character {:#04x}", c as u32));
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err("no '=' in line".to_string());
        };
        let key = key.trim();
        let value = value.trim();
        if key.is_empty() {
            return Err("empty key".to_string());
        }
        fn put<K: Ord, V>(map: &mut BTreeMap<K, V>, k: K, v: V, what: &str) -> Option<String> {
            map.insert(k, v)
                .map(|_| format!("{what} given again; the later value is used"))
        }
        fn put_opt<V>(slot: &mut Option<V>, v: V, what: &str) -> Option<String> {
            let again = slot.is_some();
            *slot = Some(v);
            again.then(|| format!("{what} given again; the later value is used"))
        }
        let note = match key {
            "OSRELEASE" => put_opt(&mut self.osrelease, value.to_string(), key),
            "BUILD-ID" => put_opt(&mut self.build_id, parse_build_id(value)?, key),
            "PAGESIZE" => {
                let size = parse_dec(value)?;
                if !size.is_power_of_two() {
                    return Err(format!("PAGESIZE {size} is not a power of two"));
                }
                put_opt(&mut self.page_size, size, key)
            }
            "KERNELOFFSET" => put_opt(&mut self.kerneloffset, parse_hex(value)?, key),
            "CRASHTIME" => put_opt(&mut self.crashtime, parse_signed(value)?, key),
            _ => {
                if let Some(name) = bracketed(key, "SYMBOL") {
                    let name = name?;
                    put(&mut self.symbols, name.to_string(), parse_hex(value)?, key)
                } else if let Some(name) = bracketed(key, "SIZE") {
                    let name = name?;
                    put(&mut self.sizes, name.to_string(), parse_dec(value)?, key)
                } else if let Some(name) = bracketed(key, "OFFSET") {
                    let name = name?;
                    let Some((ty, member)) = name.split_once('.') else {
                        return Err(format!("OFFSET({name}) is not OFFSET(type.member)"));
                    };
                    if ty.is_empty() || member.is_empty() {
                        return Err(format!("OFFSET({name}) is not OFFSET(type.member)"));
                    }
                    let k = (ty.to_string(), member.to_string());
                    put(&mut self.offsets, k, parse_dec(value)?, key)
                } else if let Some(name) = bracketed(key, "LENGTH") {
                    let name = name?;
                    put(&mut self.lengths, name.to_string(), parse_dec(value)?, key)
                } else if let Some(name) = bracketed(key, "NUMBER") {
                    let name = name?;
                    put(
                        &mut self.numbers,
                        name.to_string(),
                        parse_signed(value)?,
                        key,
                    )
                } else {
                    if !key
                        .chars()
                        .all(|c| c.is_ascii_graphic() && c != '=' && c != '\t')
                        || key.len() > 256
                    {
                        return Err(format!("bad key {key:?}"));
                    }
                    put(&mut self.other, key.to_string(), value.to_string(), key)
                }
            }
        };
        Ok(note)
    }

    /// Lines that were skipped or taken with a remark: (1-based line number, reason).
    pub fn problems(&self) -> &[(usize, String)] {
        &self.problems
    }

    /// `OSRELEASE`.
    pub fn osrelease(&self) -> Option<&str> {
        self.osrelease.as_deref()
    }

    /// `BUILD-ID`.
    pub fn build_id(&self) -> Option<&[u8]> {
        self.build_id.as_deref()
    }

    /// `PAGESIZE`.
    pub fn page_size(&self) -> Option<u64> {
        self.page_size
    }

    /// `KERNELOFFSET`: the KASLR slide of the kernel's virtual addresses.
    pub fn kerneloffset(&self) -> Option<u64> {
        self.kerneloffset
    }

    /// `CRASHTIME` (Unix seconds).
    pub fn crashtime(&self) -> Option<i64> {
        self.crashtime
    }

    /// `SYMBOL(name)` **as written**: Linux writes runtime addresses, which already
    /// include the KASLR slide (`KERNELOFFSET`), so this is the address to read in the
    /// guest. See [`Vmcoreinfo::link_time_symbol`] for the address in the vmlinux file.
    pub fn symbol(&self, name: &str) -> Option<u64> {
        self.symbols.get(name).copied()
    }

    /// `SYMBOL(name)` minus `KERNELOFFSET` (0 when absent): the link-time address, as in
    /// the kernel's ELF symbol table.
    pub fn link_time_symbol(&self, name: &str) -> Option<u64> {
        let slide = self.kerneloffset.unwrap_or(0);
        self.symbol(name).map(|a| a.wrapping_sub(slide))
    }

    /// `OFFSET(ty.member)`; `member` may be a dotted path (`OFFSET(a.b.c)` is
    /// `offset("a", "b.c")`).
    pub fn offset(&self, ty: &str, member: &str) -> Option<u64> {
        // Avoids allocating a key: the map is small and ordered by type then member.
        self.offsets
            .range((ty.to_string(), member.to_string())..)
            .next()
            .filter(|((t, m), _)| t == ty && m == member)
            .map(|(_, &v)| v)
    }

    /// `SIZE(ty)`.
    pub fn size(&self, ty: &str) -> Option<u64> {
        self.sizes.get(ty).copied()
    }

    /// `LENGTH(name)`.
    pub fn length(&self, name: &str) -> Option<u64> {
        self.lengths.get(name).copied()
    }

    /// `NUMBER(name)` (signed; a value written unsigned above `i64::MAX` keeps its bits).
    pub fn number(&self, name: &str) -> Option<i64> {
        self.numbers.get(name).copied()
    }

    /// Any other `KEY=value` line's value, by its key as written (e.g. `NUMBER(x)` is not
    /// here, `KERNELVERSION` would be).
    pub fn get_raw(&self, key: &str) -> Option<&str> {
        self.other.get(key).map(String::as_str)
    }

    /// All `SYMBOL()` entries.
    pub fn symbols(&self) -> impl Iterator<Item = (&str, u64)> {
        self.symbols.iter().map(|(k, &v)| (k.as_str(), v))
    }

    /// The text in Linux's format (a canonical order; unknown keys last). Parsing it gives
    /// back an equal value, without problems.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        if let Some(r) = &self.osrelease {
            let _ = writeln!(s, "OSRELEASE={r}");
        }
        if let Some(b) = &self.build_id {
            let _ = writeln!(s, "BUILD-ID={}", hex_string(b));
        }
        if let Some(p) = self.page_size {
            let _ = writeln!(s, "PAGESIZE={p}");
        }
        if let Some(k) = self.kerneloffset {
            let _ = writeln!(s, "KERNELOFFSET={k:x}");
        }
        for (k, v) in &self.symbols {
            let _ = writeln!(s, "SYMBOL({k})={v:x}");
        }
        for (k, v) in &self.sizes {
            let _ = writeln!(s, "SIZE({k})={v}");
        }
        for ((t, m), v) in &self.offsets {
            let _ = writeln!(s, "OFFSET({t}.{m})={v}");
        }
        for (k, v) in &self.lengths {
            let _ = writeln!(s, "LENGTH({k})={v}");
        }
        for (k, v) in &self.numbers {
            let _ = writeln!(s, "NUMBER({k})={v}");
        }
        if let Some(t) = self.crashtime {
            let _ = writeln!(s, "CRASHTIME={t}");
        }
        for (k, v) in &self.other {
            let _ = writeln!(s, "{k}={v}");
        }
        s
    }

    /// The structure layouts (`SIZE`/`OFFSET` lines) as a type source.
    ///
    /// Every type named in a `SIZE()` or `OFFSET()` line is a [`TypeKind::Struct`] with
    /// its `SIZE` (if given) and one member per `OFFSET` line, at that offset. VMCOREINFO
    /// does not say what the members are: each has the placeholder type `u64` (an 8-byte
    /// unsigned integer, also found by name), so readers must read members with explicit
    /// widths; arrays and pointers cannot be told. Dotted members (`OFFSET(a.b.c)`) are
    /// members named `b.c`.
    pub fn types(&self) -> Arc<dyn TypeSource> {
        Arc::new(VmcoreinfoTypes::new(self))
    }
}

/// The type source behind [`Vmcoreinfo::types`]. `TypeId(0)` is the placeholder `u64`;
/// structs follow in name order.
#[derive(Debug)]
struct VmcoreinfoTypes {
    types: Vec<Arc<Type>>,
    by_name: HashMap<String, usize>,
}

impl VmcoreinfoTypes {
    fn new(v: &Vmcoreinfo) -> Self {
        let placeholder = Type {
            name: Some("u64".to_string()),
            size: Some(8),
            kind: TypeKind::Int { signed: false },
            members: Vec::new(),
        };
        let mut structs: BTreeMap<String, Type> = BTreeMap::new();
        fn entry<'a>(structs: &'a mut BTreeMap<String, Type>, name: &str) -> &'a mut Type {
            structs.entry(name.to_string()).or_insert_with(|| Type {
                name: Some(name.to_string()),
                size: None,
                kind: TypeKind::Struct,
                members: Vec::new(),
            })
        }
        for (name, &size) in &v.sizes {
            entry(&mut structs, name).size = Some(size);
        }
        for ((ty, member), &offset) in &v.offsets {
            entry(&mut structs, ty).members.push(Member {
                name: Some(member.clone()),
                offset,
                bitfield: None,
                ty: TypeId(0),
            });
        }
        let mut types = vec![Arc::new(placeholder)];
        let mut by_name = HashMap::new();
        by_name.insert("u64".to_string(), 0);
        for (name, mut t) in structs {
            t.members
                .sort_by(|a, b| a.offset.cmp(&b.offset).then(a.name.cmp(&b.name)));
            by_name.insert(name, types.len());
            types.push(Arc::new(t));
        }
        VmcoreinfoTypes { types, by_name }
    }
}

impl TypeSource for VmcoreinfoTypes {
    fn find(&self, name: &str) -> Result<TypeId> {
        self.by_name
            .get(name)
            .map(|&i| TypeId(i as u64))
            .ok_or_else(|| Error::NoType {
                name: name.to_string(),
                searched: self.describe(),
            })
    }

    fn get(&self, id: TypeId) -> Result<Arc<Type>> {
        usize::try_from(id.0)
            .ok()
            .and_then(|i| self.types.get(i))
            .cloned()
            .ok_or_else(|| Error::NoType {
                name: format!("#{}", id.0),
                searched: self.describe(),
            })
    }

    fn describe(&self) -> String {
        format!(
            "VMCOREINFO layouts ({} structures)",
            self.types.len().saturating_sub(1)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SAMPLE: &str = "OSRELEASE=6.1.0-18-amd64
BUILD-ID=1b2c3d4e5f60718293a4b5c6d7e8f90011223344
PAGESIZE=4096
SYMBOL(init_uts_ns)=ffffffff9a613ec0
SYMBOL(swapper_pg_dir)=ffffffff9a60a000
SIZE(list_head)=16
OFFSET(list_head.next)=0
OFFSET(list_head.prev)=8
SIZE(task_struct)=9792
OFFSET(task_struct.tasks)=2192
OFFSET(printk_ringbuffer.desc_ring.count_bits)=0
LENGTH(mem_section)=1024
NUMBER(phys_base)=-123456
NUMBER(pgtable_l5_enabled)=0
KERNELOFFSET=19000000
KERNELVERSION=#1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1
CRASHTIME=1700000000
";

    #[test]
    fn parses_linux_text() {
        let v = Vmcoreinfo::parse(SAMPLE).unwrap();
        assert!(v.problems().is_empty(), "{:?}", v.problems());
        assert_eq!(v.osrelease(), Some("6.1.0-18-amd64"));
        assert_eq!(v.build_id().unwrap()[..3], [0x1b, 0x2c, 0x3d]);
        assert_eq!(v.build_id().unwrap().len(), 20);
        assert_eq!(v.page_size(), Some(4096));
        assert_eq!(v.kerneloffset(), Some(0x1900_0000));
        assert_eq!(v.symbol("swapper_pg_dir"), Some(0xffff_ffff_9a60_a000));
        assert_eq!(
            v.link_time_symbol("swapper_pg_dir"),
            Some(0xffff_ffff_8160_a000)
        );
        assert_eq!(v.symbol("nope"), None);
        assert_eq!(v.offset("task_struct", "tasks"), Some(2192));
        assert_eq!(v.offset("task_struct", "pid"), None);
        assert_eq!(
            v.offset("printk_ringbuffer", "desc_ring.count_bits"),
            Some(0)
        );
        assert_eq!(v.size("task_struct"), Some(9792));
        assert_eq!(v.length("mem_section"), Some(1024));
        assert_eq!(v.number("phys_base"), Some(-123456));
        assert_eq!(v.number("pgtable_l5_enabled"), Some(0));
        assert_eq!(v.crashtime(), Some(1_700_000_000));
        assert_eq!(
            v.get_raw("KERNELVERSION"),
            Some("#1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1")
        );
    }

    #[test]
    fn bad_lines_are_recorded_and_skipped() {
        let text = "PAGESIZE=4096\nSYMBOL(x)=zz\nOFFSET(nodot)=1\nSIZE(a=3\nhello\n\
                    NUMBER(big)=99999999999999999999\nPAGESIZE=4095\nSYMBOL(x)=10\n\
                    SYMBOL(x)=20\nbell\x07=1\n";
        let v = Vmcoreinfo::parse(text).unwrap();
        let lines: Vec<usize> = v.problems().iter().map(|p| p.0).collect();
        assert_eq!(lines, vec![2, 3, 4, 5, 6, 7, 9, 10], "{:?}", v.problems());
        assert_eq!(v.page_size(), Some(4096));
        assert_eq!(v.symbol("x"), Some(0x20));
        assert!(v.problems()[0].1.contains("hexadecimal"));
        assert!(v.problems()[6].1.contains("again"));
    }

    #[test]
    fn garbage_is_refused() {
        for text in [
            "",
            "\n\n  \n",
            "\0\0\0",
            "hello world",
            "\u{1}\u{2}\u{3}=\u{4}",
        ] {
            match Vmcoreinfo::parse(text) {
                Err(Error::Vmcoreinfo { line: 0, .. }) => {}
                other => panic!("{text:?}: {other:?}"),
            }
        }
        assert!(matches!(
            Vmcoreinfo::parse_bytes(&[0xff, 0xfe, b'=', b'1']),
            Err(Error::Vmcoreinfo { .. })
        ));
        let huge = "A=1\n".repeat(MAX_TEXT / 4 + 1);
        assert!(Vmcoreinfo::parse(&huge).is_err());
        let many = "\n".repeat(MAX_LINES) + "A=1\n";
        assert!(Vmcoreinfo::parse(&many).is_err());
        // NUL padding of an ELF note is fine.
        let v = Vmcoreinfo::parse_bytes(b"PAGESIZE=4096\n\0\0\0\0").unwrap();
        assert_eq!(v.page_size(), Some(4096));
    }

    #[test]
    fn layouts_as_types() {
        let v = Vmcoreinfo::parse(SAMPLE).unwrap();
        let types = v.types();
        let id = types.find("task_struct").unwrap();
        let t = types.get(id).unwrap();
        assert_eq!(t.kind, TypeKind::Struct);
        assert_eq!(t.size, Some(9792));
        assert_eq!(t.members.len(), 1);
        assert_eq!(t.members[0].name.as_deref(), Some("tasks"));
        assert_eq!(t.members[0].offset, 2192);
        let m = types.get(t.members[0].ty).unwrap();
        assert_eq!(m.name.as_deref(), Some("u64"));
        assert_eq!(m.size, Some(8));
        let lh = types.get(types.find("list_head").unwrap()).unwrap();
        let names: Vec<_> = lh.members.iter().map(|m| m.name.clone().unwrap()).collect();
        assert_eq!(names, ["next", "prev"]);
        let prb = types.get(types.find("printk_ringbuffer").unwrap()).unwrap();
        assert_eq!(prb.size, None);
        assert_eq!(prb.members[0].name.as_deref(), Some("desc_ring.count_bits"));
        assert!(matches!(types.find("inode"), Err(Error::NoType { .. })));
        assert!(types.get(TypeId(10_000)).is_err());
        assert!(types.describe().contains("VMCOREINFO"));
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-z_][a-z0-9_]{0,20}"
    }

    fn entries() -> impl Strategy<Value = Vmcoreinfo> {
        (
            (
                proptest::option::of("[ -~]{0,40}"),
                proptest::option::of(proptest::collection::vec(any::<u8>(), 1..=32)),
                proptest::option::of((0u32..20).prop_map(|s| 1u64 << s)),
                proptest::option::of(any::<u64>()),
                proptest::option::of(any::<i64>()),
            ),
            (
                proptest::collection::btree_map(name(), any::<u64>(), 0..10),
                proptest::collection::btree_map(name(), any::<u64>(), 0..10),
                proptest::collection::btree_map(
                    (name(), "[a-z_][a-z0-9_.]{0,20}"),
                    any::<u64>(),
                    0..10,
                ),
                proptest::collection::btree_map(name(), any::<u64>(), 0..10),
                proptest::collection::btree_map(name(), any::<i64>(), 0..10),
                proptest::collection::btree_map("X[A-Z_]{0,10}", "[!-~][ -~]{0,30}[!-~]", 0..5),
            ),
        )
            .prop_map(
                |(
                    (osrelease, build_id, page_size, kerneloffset, crashtime),
                    (symbols, sizes, offsets, lengths, numbers, other),
                )| {
                    Vmcoreinfo {
                        // Values are trimmed when parsed.
                        osrelease: osrelease.map(|s| s.trim().to_string()),
                        build_id,
                        page_size,
                        kerneloffset,
                        crashtime,
                        symbols,
                        sizes,
                        offsets,
                        lengths,
                        numbers,
                        other,
                        problems: Vec::new(),
                    }
                },
            )
            .prop_filter("needs at least one entry", |v| !v.to_text().is_empty())
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "(?s).{0,2000}") {
            let _ = Vmcoreinfo::parse(&text);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            if let Ok(v) = Vmcoreinfo::parse_bytes(&bytes) {
                let _ = v.types();
            }
        }

        #[test]
        fn keyish_text_never_panics(lines in proptest::collection::vec(
            "(SYMBOL|OFFSET|SIZE|NUMBER|LENGTH|PAGESIZE|BUILD-ID|KERNELOFFSET)?[()=.a-z0-9x-]{0,12}", 0..30)) {
            let text = lines.join("\n");
            if let Ok(v) = Vmcoreinfo::parse(&text) {
                let t = v.types();
                let _ = t.find("a");
            }
        }

        #[test]
        fn format_parse_round_trip(v in entries()) {
            let text = v.to_text();
            let back = Vmcoreinfo::parse(&text).unwrap();
            prop_assert_eq!(back, v);
        }
    }
}
