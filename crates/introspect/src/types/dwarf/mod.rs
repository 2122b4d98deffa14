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
//! [`TypeKind::Union`]: super::TypeKind::Union
//!
//! # Not supported
//!
//! DWARF 4 type units in `.debug_types` (`-fdebug-types-section`), supplementary files
//! (`dwz`'s `.gnu_debugaltlink`), split DWARF (`.dwo`), relocatable objects (kernel
//! modules: their DWARF needs relocating), zstd-compressed sections. Each gives a clear
//! error rather than a wrong answer.

mod convert;
mod index;
mod lines;
mod location;
mod sections;
#[cfg(test)]
mod test_support;
mod units;

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

use gimli::{constants, AttributeValue, Expression};
use parking_lot::Mutex;

use super::{Type, TypeId, TypeSource};
use crate::{Error, Result};
use index::{split_tag, Index};
pub use lines::{SourceFrame, SourceLines};
pub use sections::ElfBytes;
use sections::R;
use units::Units;

/// The id of `void`.
pub const VOID: TypeId = TypeId(u64::MAX);
/// Ids with this bit set are synthesised inner dimensions of arrays.
const DIM_BIT: u64 = 1 << 63;

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
            .field("units", &self.units.lock().slots.len())
            .finish_non_exhaustive()
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
        let dwarf = sections::load(&bytes, &elf, path, sections::for_types)?;
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
        let scanned = self.index.lock().next_unit;
        (scanned, self.units.lock().slots.len())
    }

    /// The number of units in the file (reads every unit header: a page per unit).
    pub fn unit_count(&self) -> usize {
        let mut units = self.units.lock();
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

    /// A global variable by name (plain or qualified), scanning as needed.
    pub fn variable(&self, name: &str) -> Result<Variable> {
        let off = {
            let mut idx = self.index.lock();
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
    use super::test_support::{kernel, member, open_owned, section};
    use super::*;
    use crate::types::TypeKind;
    use ambulance_test_kernel::ELF;

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
