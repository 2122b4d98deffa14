//! Compilation units and their entries: unit headers read as far as needed, units read
//! on first use, and reading an entry's name, flags and references.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use gimli::{
    constants, AttributeValue, DebuggingInformationEntry, DwAt, Reader as _, UnitOffset, UnitType,
};

use super::sections::R;
use super::DwarfTypes;
use crate::types::TypeId;
use crate::Result;

/// A unit, ready to read entries from.
pub(super) struct UnitCtx {
    pub(super) unit: gimli::Unit<R>,
    /// `.debug_info` offset of the unit header.
    pub(super) start: u64,
    pub(super) rust: bool,
    /// A C unit (`DW_LANG_C*`): its structures, unions and enumerations hold no named
    /// types (C scopes nested definitions to the file, and GCC and Clang put them at the
    /// unit's level).
    pub(super) c: bool,
}

/// The unit headers read so far.
pub(super) struct Units {
    pub(super) slots: Vec<Arc<UnitSlot>>,
    /// Where to read the next header; `None` once all are read (or unreadable).
    pub(super) next: Option<gimli::DebugInfoUnitHeadersIter<R>>,
    /// Type-unit signatures (DWARF 5 type units in `.debug_info`) → entry offset.
    pub(super) signatures: HashMap<u64, u64>,
    /// Why the unit headers stopped early, if they did.
    pub(super) error: Option<String>,
}

impl Units {
    /// Reads one more unit header. `false` when there is none.
    pub(super) fn read_next(&mut self) -> bool {
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
    pub(super) fn slot(&mut self, i: usize) -> Option<Arc<UnitSlot>> {
        while self.slots.len() <= i {
            if !self.read_next() {
                return None;
            }
        }
        Some(self.slots[i].clone())
    }

    /// Reads headers until the unit containing `off` (or a later one) is known; the
    /// slot containing `off`.
    pub(super) fn containing(&mut self, off: u64) -> Option<Arc<UnitSlot>> {
        while self.slots.last().is_none_or(|u| u.end <= off) {
            if !self.read_next() {
                break;
            }
        }
        let i = self.slots.partition_point(|u| u.start <= off);
        (i > 0 && off < self.slots[i - 1].end).then(|| self.slots[i - 1].clone())
    }

    pub(super) fn read_all(&mut self) {
        while self.read_next() {}
    }
}

/// A unit header and, once read, the unit.
pub(super) struct UnitSlot {
    pub(super) header: gimli::UnitHeader<R>,
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) unit: OnceLock<std::result::Result<Arc<UnitCtx>, String>>,
}

impl DwarfTypes {
    /// A unit, read on first use.
    pub(super) fn unit_in(&self, slot: &UnitSlot) -> Result<Arc<UnitCtx>> {
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
        let (mut rust, mut c) = (false, false);
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
                        rust = l == constants::DW_LANG_Rust;
                        c = matches!(
                            l,
                            constants::DW_LANG_C
                                | constants::DW_LANG_C89
                                | constants::DW_LANG_C99
                                | constants::DW_LANG_C11
                                | constants::DW_LANG_C17
                        );
                    }
                    _ => {}
                }
            }
        }
        Ok(UnitCtx {
            unit,
            start: slot.start,
            rust,
            c,
        })
    }

    /// The unit containing `.debug_info` offset `off`.
    fn unit_of(&self, off: u64) -> Result<Arc<UnitCtx>> {
        let slot = self.units.lock().containing(off);
        match slot {
            Some(slot) => self.unit_in(&slot),
            None => Err(self.err(off, "offset is in no compilation unit")),
        }
    }

    /// The entry at `.debug_info` offset `off`, with its unit.
    pub(super) fn die(&self, off: u64) -> Result<(Arc<UnitCtx>, DebuggingInformationEntry<R>)> {
        let u = self.unit_of(off)?;
        let entry = u
            .unit
            .entry(UnitOffset((off - u.start) as usize))
            .map_err(|e| self.gerr(off, e))?;
        Ok((u, entry))
    }

    pub(super) fn string(&self, u: &UnitCtx, v: AttributeValue<R>) -> Option<String> {
        let r = self.dwarf.attr_string(&u.unit, v).ok()?;
        Some(r.to_string_lossy().ok()?.into_owned())
    }

    pub(super) fn name(&self, u: &UnitCtx, e: &DebuggingInformationEntry<R>) -> Option<String> {
        self.string(u, e.attr_value(constants::DW_AT_name)?)
    }

    pub(super) fn flag(e: &DebuggingInformationEntry<R>, at: DwAt) -> bool {
        matches!(e.attr_value(at), Some(AttributeValue::Flag(true)))
    }

    /// The `.debug_info` offset a reference attribute points to.
    pub(super) fn reference(&self, u: &UnitCtx, v: AttributeValue<R>, from: u64) -> Result<u64> {
        match v {
            AttributeValue::UnitRef(o) => Ok(u.start + o.0 as u64),
            AttributeValue::DebugInfoRef(o) => Ok(o.0 as u64),
            AttributeValue::DebugTypesRef(sig) => {
                let found = {
                    let mut units = self.units.lock();
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
    pub(super) fn type_attr(
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
}
