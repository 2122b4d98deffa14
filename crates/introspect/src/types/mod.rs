//! The type model: what a guest value's bytes mean.
//!
//! Types come from a [`TypeSource`]: DWARF ([`dwarf::DwarfTypes`]), or the layouts a
//! guest exported in VMCOREINFO ([`crate::vmcoreinfo::Vmcoreinfo::types`]). Types are
//! stored in an arena and referred to by [`TypeId`]; sources resolve them lazily.

pub mod btf;
pub mod dwarf;

use std::sync::Arc;

use crate::Result;

/// Identifies a type within its source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TypeId(pub u64);

/// What kind of type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TypeKind {
    /// `void` (or an unknown/opaque type).
    Void,
    /// An integer (including `char`/`bool`-like base types).
    Int {
        /// Whether it is signed.
        signed: bool,
    },
    /// A floating-point base type (read as raw bits only).
    Float,
    /// A `bool`.
    Bool,
    /// A struct (Rust structs and tuples, C structs).
    Struct,
    /// A union (and Rust enums with data, seen as variant parts: members at offset 0).
    Union,
    /// A C-like enum.
    Enum {
        /// Its enumerators.
        enumerators: Vec<(String, i64)>,
        /// Whether the underlying integer is signed.
        signed: bool,
    },
    /// A pointer (or reference) to `target` (`None` = `void *`).
    Pointer {
        /// The pointee.
        target: Option<TypeId>,
    },
    /// An array of `count` elements (`None` = flexible/unknown length).
    Array {
        /// Element type.
        element: TypeId,
        /// Number of elements.
        count: Option<u64>,
    },
    /// A typedef (or `const`/`volatile` qualifier) of `target`.
    Typedef {
        /// The aliased type.
        target: TypeId,
    },
    /// A function (only its name matters here).
    Function,
}

/// A member of a struct or union.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its name (`None` for anonymous members, which lookups search through).
    pub name: Option<String>,
    /// Offset in bytes from the start of the containing type.
    pub offset: u64,
    /// For bitfields: bit offset from `offset` (LSB first) and width in bits.
    pub bitfield: Option<(u32, u32)>,
    /// Its type.
    pub ty: TypeId,
}

/// One type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Type {
    /// The name as the source spells it (e.g. `Task`, `task_struct`, `*mut ListHead`).
    pub name: Option<String>,
    /// Size in bytes when known.
    pub size: Option<u64>,
    /// What it is.
    pub kind: TypeKind,
    /// Members of structs and unions, by offset.
    pub members: Vec<Member>,
}

/// A provider of types.
pub trait TypeSource: Send + Sync {
    /// A type by name. Struct, union, enum and typedef names are looked up as written
    /// (`Task`, `task_struct`); a source may also accept qualified Rust paths
    /// (`test_kernel::sched::Task`).
    fn find(&self, name: &str) -> Result<TypeId>;
    /// The type with this id.
    fn get(&self, id: TypeId) -> Result<Arc<Type>>;
    /// What this source is, for error messages ("DWARF of /x/vmlinux").
    fn describe(&self) -> String;
}
