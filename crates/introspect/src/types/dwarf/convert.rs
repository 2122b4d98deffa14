//! Converting entries to [`Type`]s: base, pointer, qualifier and typedef types, structs
//! and unions (Rust enums included), C enums, and arrays with their synthesised inner
//! dimensions.

use std::sync::Arc;

use gimli::{constants, AttributeValue, DebuggingInformationEntry, DwTag, Expression, UnitOffset};

use super::index::category;
use super::sections::R;
use super::units::UnitCtx;
use super::{DwarfTypes, DIM_BIT, VOID};
use crate::types::{Member, Type, TypeId, TypeKind};
use crate::Result;

/// Nesting of type references followed when computing sizes and names.
const MAX_DEPTH: u32 = 32;
/// Dimensions of an array handled.
const MAX_DIMS: usize = 64;

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
    pub(super) fn get_depth(&self, id: TypeId, depth: u32) -> Result<Arc<Type>> {
        if let Some(t) = self.cache.lock().get(&id) {
            return Ok(t.clone());
        }
        if depth > MAX_DEPTH {
            return Err(self.err(
                id.0 & !DIM_BIT,
                format!("type references nested deeper than {MAX_DEPTH} (a cycle?)"),
            ));
        }
        let t = Arc::new(self.convert(id, depth)?);
        Ok(self.cache.lock().entry(id).or_insert(t).clone())
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

#[cfg(test)]
mod tests {
    use super::super::test_support::{c_fixture, kernel, member};
    use super::*;
    use crate::types::TypeSource;

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
    fn c_dwarf5() {
        c_fixture(
            include_bytes!("../../../testdata/c-dwarf5.elf"),
            "c-dwarf5.elf",
        );
    }

    #[test]
    fn c_dwarf4() {
        c_fixture(
            include_bytes!("../../../testdata/c-dwarf4.elf"),
            "c-dwarf4.elf",
        );
    }

    #[test]
    fn c_dwarf2() {
        c_fixture(
            include_bytes!("../../../testdata/c-dwarf2.elf"),
            "c-dwarf2.elf",
        );
    }
}
