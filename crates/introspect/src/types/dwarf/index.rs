//! The lazy name index: compilation units are scanned in order, only as far as a lookup
//! needs, remembering every type and variable name passed.

use std::collections::HashMap;

use gimli::{constants, AttributeValue, DwAt, DwTag};

use super::sections::R;
use super::units::{UnitCtx, UnitSlot};
use super::DwarfTypes;
use crate::types::TypeSource;
use crate::{Error, Result};

/// Lookup categories for names, in order of preference.
const CAT_STRUCT: usize = 0;
const CAT_UNION: usize = 1;
const CAT_ENUM: usize = 2;
const CAT_TYPEDEF: usize = 3;
const CAT_OTHER: usize = 4;
const CATS: usize = 5;

pub(super) fn category(tag: DwTag) -> Option<usize> {
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
pub(super) struct VarSlots {
    /// First entry with an address.
    pub(super) def: u64,
    /// First entry without one.
    pub(super) decl: u64,
}

/// The incremental name index.
#[derive(Default)]
pub(super) struct Index {
    /// Units `0..next_unit` have been scanned.
    pub(super) next_unit: usize,
    types: HashMap<Box<str>, NameSlots>,
    pub(super) vars: HashMap<Box<str>, VarSlots>,
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

impl DwarfTypes {
    /// Scans the next unscanned unit into the index. `false` when all are scanned.
    pub(super) fn scan_next(&self, idx: &mut Index) -> bool {
        let i = idx.next_unit;
        let Some(slot) = self.units.lock().slot(i) else {
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
                    if let Some(sib) = later_sibling(abbrev, &attrs, uoff) {
                        raw = unit.entries_raw(Some(sib)).map_err(|e| gerr(sib.0, e))?;
                        base = depth;
                        continue;
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
                    // A C aggregate's children are its members or enumerators: skip them
                    // when the producer says where they end (most of a kernel's DIEs).
                    if u.c && matches!(cat, CAT_STRUCT | CAT_UNION | CAT_ENUM) {
                        if let Some(sib) = later_sibling(abbrev, &attrs, uoff) {
                            raw = unit.entries_raw(Some(sib)).map_err(|e| gerr(sib.0, e))?;
                            base = depth;
                            continue;
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
        /// Where an entry's children end, when it has some and says so (`DW_AT_sibling`,
        /// forward only: a hostile backward one would loop).
        fn later_sibling(
            abbrev: &gimli::Abbreviation,
            attrs: &[gimli::Attribute<R>],
            at: gimli::UnitOffset,
        ) -> Option<gimli::UnitOffset> {
            match find_attr(attrs, constants::DW_AT_sibling) {
                Some(AttributeValue::UnitRef(sib)) if abbrev.has_children() && sib.0 > at.0 => {
                    Some(sib)
                }
                _ => None,
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
    pub(super) fn lookup(&self, name: &str, cat: Option<usize>) -> Option<u64> {
        let mut idx = self.index.lock();
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

    pub(super) fn no_type(&self, name: &str) -> Error {
        let idx = self.index.lock();
        let mut searched = self.describe();
        if idx.error_count > 0 {
            let (off, e) = &idx.errors[0];
            searched.push_str(&format!(
                "; {} units unreadable, the first at {off:#x}: {e}",
                idx.error_count
            ));
        }
        if let Some(e) = &self.units.lock().error {
            searched.push_str(&format!("; {e}"));
        }
        Error::NoType {
            name: name.to_string(),
            searched,
        }
    }
}

/// The (normalised) value of attribute `at` among `attrs`.
fn find_attr(attrs: &[gimli::Attribute<R>], at: DwAt) -> Option<AttributeValue<R>> {
    attrs.iter().find(|a| a.name() == at).map(|a| a.value())
}

/// Splits a C tag off a name: `struct task_struct` → (`task_struct`, struct).
pub(super) fn split_tag(name: &str) -> (&str, Option<usize>) {
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

#[cfg(test)]
mod tests {
    use super::super::test_support::kernel;
    use super::super::{DIM_BIT, VOID};
    use super::*;
    use crate::types::{TypeId, TypeKind};

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
}
