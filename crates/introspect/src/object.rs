//! Typed values at guest addresses, in the spirit of drgn's `Object`.
//!
//! An [`Object`] is an address and a type (from some [`TypeSource`]) borrowing the
//! [`Program`] it reads through. Member access searches anonymous members and looks
//! through typedefs; on a pointer to a struct it dereferences first, like C's `->`.
//! Reads happen only when a value is asked for, and every read goes through the bounded,
//! checked [`Program`] accessors.
//!
//! Reading the same member of many objects (a list's elements, the task list) looks the
//! member up once, as a [`MemberLayout`] ([`Program::member_layout`]), and then only adds
//! its offset to each object's address ([`Object::member_at`], [`MemberLayout::object`]).
//! Type sources that do not know a member's width — VMCOREINFO's layouts give every member
//! the placeholder type `u64` — are read with explicit widths ([`Object::read_u32`] and
//! friends) and [`Object::reinterpret`].

use std::sync::Arc;

use crate::program::Program;
use crate::types::{Member, Type, TypeId, TypeKind, TypeSource};
use crate::{Error, Result};

/// Longest typedef chain followed (a loop in the debug info would otherwise hang).
const MAX_TYPEDEF_CHAIN: usize = 64;
/// Deepest nesting of anonymous members searched.
const MAX_ANON_DEPTH: usize = 16;
/// Largest object [`Object::read_bytes`] reads.
pub const MAX_READ_BYTES: u64 = 64 << 20;

/// A typed value in guest memory.
#[derive(Clone)]
pub struct Object<'p> {
    prog: &'p Program,
    types: Types<'p>,
    addr: u64,
    ty: TypeId,
    /// For bitfield members: bit offset from `addr` (LSB first) and width.
    bitfield: Option<(u32, u32)>,
    /// What is known of the type without looking it up (objects made from a
    /// [`MemberLayout`]).
    known: Option<Known>,
}

/// An object's type source: shared, or borrowed from the [`MemberLayout`] it was made
/// from, so that reading a member of many objects does not touch the reference count.
#[derive(Clone)]
enum Types<'p> {
    Shared(Arc<dyn TypeSource>),
    Borrowed(&'p Arc<dyn TypeSource>),
}

impl Types<'_> {
    fn arc(&self) -> &Arc<dyn TypeSource> {
        match self {
            Types::Shared(t) => t,
            Types::Borrowed(t) => t,
        }
    }
}

impl std::ops::Deref for Types<'_> {
    type Target = dyn TypeSource;

    fn deref(&self) -> &(dyn TypeSource + 'static) {
        &**self.arc()
    }
}

/// What a [`MemberLayout`] learned of its member's type when it was resolved, so that
/// reading the member of many objects does not look the type up again.
#[derive(Clone, Copy, Debug)]
struct Known {
    /// Its size, typedefs followed (`None`: it has none).
    size: Option<u64>,
    /// Whether it is a pointer, typedefs followed.
    pointer: bool,
}

impl std::fmt::Debug for Object<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({}) {:#x}", self.type_name(), self.addr)
    }
}

/// Follows typedefs (and qualifiers) to the underlying type.
fn resolve(types: &dyn TypeSource, mut id: TypeId) -> Result<(TypeId, Arc<Type>)> {
    for _ in 0..MAX_TYPEDEF_CHAIN {
        let t = types.get(id)?;
        match t.kind {
            TypeKind::Typedef { target } => id = target,
            _ => return Ok((id, t)),
        }
    }
    Err(Error::WrongType {
        op: "follow a typedef chain longer than 64 links in",
        ty: describe(types, id, 0),
    })
}

/// A readable name for a type, whether or not it has one.
fn describe(types: &dyn TypeSource, id: TypeId, depth: usize) -> String {
    let Ok(t) = types.get(id) else {
        return format!("<type {}>", id.0);
    };
    if let Some(n) = &t.name {
        return n.clone();
    }
    if depth > 8 {
        return "...".into();
    }
    match &t.kind {
        TypeKind::Void => "void".into(),
        TypeKind::Int { signed } => format!(
            "<{}-byte {}int>",
            t.size.unwrap_or(0),
            if *signed { "" } else { "unsigned " }
        ),
        TypeKind::Float => "<float>".into(),
        TypeKind::Bool => "bool".into(),
        TypeKind::Struct => "struct <anonymous>".into(),
        TypeKind::Union => "union <anonymous>".into(),
        TypeKind::Enum { .. } => "enum <anonymous>".into(),
        TypeKind::Pointer { target: None } => "void *".into(),
        TypeKind::Pointer { target: Some(t) } => format!("{} *", describe(types, *t, depth + 1)),
        TypeKind::Array { element, count } => match count {
            Some(n) => format!("{}[{n}]", describe(types, *element, depth + 1)),
            None => format!("{}[]", describe(types, *element, depth + 1)),
        },
        TypeKind::Typedef { target } => describe(types, *target, depth + 1),
        TypeKind::Function => "<function>".into(),
    }
}

/// Size of a type in bytes, through typedefs; arrays without a size are count × element.
fn size_of(types: &dyn TypeSource, id: TypeId) -> Result<u64> {
    size_of_at(types, id, 0)
}

fn size_of_at(types: &dyn TypeSource, id: TypeId, depth: usize) -> Result<u64> {
    let (rid, t) = resolve(types, id)?;
    if let Some(s) = t.size {
        return Ok(s);
    }
    let wrong = |op| Error::WrongType {
        op,
        ty: describe(types, rid, 0),
    };
    match t.kind {
        TypeKind::Pointer { .. } => Ok(8),
        TypeKind::Array {
            element,
            count: Some(n),
        } if depth < MAX_ANON_DEPTH => size_of_at(types, element, depth + 1)?
            .checked_mul(n)
            .ok_or_else(|| wrong("take the size of (it overflows)")),
        _ => Err(wrong("take the size of")),
    }
}

/// Finds member `name` in struct/union `t`, searching anonymous members; returns the
/// offset from the start of `t` and the member.
fn find_member(
    types: &dyn TypeSource,
    t: &Type,
    name: &str,
    depth: usize,
) -> Result<Option<(u64, Member)>> {
    for m in &t.members {
        if m.name.as_deref() == Some(name) {
            return Ok(Some((m.offset, m.clone())));
        }
    }
    if depth >= MAX_ANON_DEPTH {
        return Ok(None);
    }
    for m in t.members.iter().filter(|m| m.name.is_none()) {
        let (_, inner) = resolve(types, m.ty)?;
        if matches!(inner.kind, TypeKind::Struct | TypeKind::Union) {
            if let Some((off, found)) = find_member(types, &inner, name, depth + 1)? {
                return Ok(Some((m.offset.wrapping_add(off), found)));
            }
        }
    }
    Ok(None)
}

/// Splits `a.b[2].c` (also `a->b`) into names with optional indices.
fn parse_path(path: &str) -> Result<Vec<(&str, Vec<u64>)>> {
    let bad = || Error::NoMember {
        ty: "<path>".into(),
        member: path.to_string(),
    };
    let mut out = Vec::new();
    for part in path.split("->").flat_map(|p| p.split('.')) {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if name.is_empty() {
            return Err(bad());
        }
        let mut idx = Vec::new();
        while !rest.is_empty() {
            let close = rest.find(']').ok_or_else(bad)?;
            if !rest.starts_with('[') {
                return Err(bad());
            }
            let n = rest[1..close].trim();
            let n = if let Some(h) = n.strip_prefix("0x") {
                u64::from_str_radix(h, 16)
            } else {
                n.parse()
            };
            idx.push(n.map_err(|_| bad())?);
            rest = &rest[close + 1..];
        }
        out.push((name, idx));
    }
    Ok(out)
}

/// Finds `path` (`a.b[2].c`) inside type `ty`, through nested (and anonymous) members and
/// array indices but not through pointers: the offset from the start of `ty`, the type of
/// what it names and, for a bitfield member, its placement.
///
/// VMCOREINFO's layouts name a nested member by its whole path (`OFFSET(a.b.c)` is a
/// member `b.c` of `a`), so a member spelt exactly like a dotted path is taken first.
fn find_path(types: &dyn TypeSource, ty: TypeId, path: &str) -> Result<Found> {
    if let Some(found) = find_dotted(types, ty, path) {
        return Ok(found);
    }
    let mut cur = ty;
    let mut off = 0u64;
    let mut bitfield = None;
    for (name, indices) in parse_path(path)? {
        let (rid, t) = resolve(types, cur)?;
        if !matches!(t.kind, TypeKind::Struct | TypeKind::Union) {
            return Err(Error::WrongType {
                op: "take a member offset in",
                ty: describe(types, rid, 0),
            });
        }
        let (o, m) = find_member(types, &t, name, 0)?.ok_or_else(|| Error::NoMember {
            ty: describe(types, rid, 0),
            member: name.to_string(),
        })?;
        off = off.wrapping_add(o);
        cur = m.ty;
        bitfield = m.bitfield;
        for i in indices {
            let (rid, t) = resolve(types, cur)?;
            let TypeKind::Array { element, .. } = t.kind else {
                return Err(Error::WrongType {
                    op: "index (in an offset) a value of type",
                    ty: describe(types, rid, 0),
                });
            };
            off = off.wrapping_add(i.wrapping_mul(size_of(types, element)?));
            cur = element;
            bitfield = None;
        }
    }
    Ok(Found {
        offset: off,
        ty: cur,
        bitfield,
    })
}

/// A member of struct or union `ty` named exactly `path`, when `path` is dotted (and has
/// no index or `->`): how VMCOREINFO's layouts name nested members.
fn find_dotted(types: &dyn TypeSource, ty: TypeId, path: &str) -> Option<Found> {
    if !path.contains('.') || path.contains('[') || path.contains("->") {
        return None;
    }
    let (_, t) = resolve(types, ty).ok()?;
    if !matches!(t.kind, TypeKind::Struct | TypeKind::Union) {
        return None;
    }
    let (offset, m) = find_member(types, &t, path, 0).ok()??;
    Some(Found {
        offset,
        ty: m.ty,
        bitfield: m.bitfield,
    })
}

/// What a member path names: its offset from the start of the containing type, its type,
/// and its bitfield placement.
struct Found {
    offset: u64,
    ty: TypeId,
    bitfield: Option<(u32, u32)>,
}

/// Offset of `path` inside type `ty`, through nested (and anonymous) members and array
/// indices, but not through pointers.
pub(crate) fn offset_of(types: &dyn TypeSource, ty: TypeId, path: &str) -> Result<u64> {
    Ok(find_path(types, ty, path)?.offset)
}

/// A member of a type, found once: where it is in its container, what type it has and,
/// for a bitfield, its placement.
///
/// Looking a member up by name searches the container's members (and anonymous ones);
/// code that reads the same member of many objects — a list's elements, the task list —
/// resolves it once and then reads each object's member with
/// [`Object::member_at`] or [`MemberLayout::object`], which only add an offset, as drgn
/// resolves `offsetof` once.
#[derive(Clone)]
pub struct MemberLayout {
    types: Arc<dyn TypeSource>,
    /// The container type, typedefs followed.
    container: TypeId,
    path: String,
    offset: u64,
    ty: TypeId,
    bitfield: Option<(u32, u32)>,
    known: Known,
}

impl std::fmt::Debug for MemberLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "({}) {}.{} at +{:#x}",
            self.type_name(),
            describe(&*self.types, self.container, 0),
            self.path,
            self.offset
        )
    }
}

impl MemberLayout {
    /// Finds `path` (`a.b`, `comm[3]`, through anonymous members and typedefs, not
    /// through pointers) in type `container` of `types`.
    pub fn resolve(
        types: Arc<dyn TypeSource>,
        container: TypeId,
        path: &str,
    ) -> Result<MemberLayout> {
        let (container_resolved, _) = resolve(&*types, container)?;
        let found = find_path(&*types, container, path)?;
        let known = Known {
            size: size_of(&*types, found.ty).ok(),
            pointer: resolve(&*types, found.ty)
                .is_ok_and(|(_, t)| matches!(t.kind, TypeKind::Pointer { .. })),
        };
        Ok(MemberLayout {
            types,
            container: container_resolved,
            path: path.to_string(),
            offset: found.offset,
            ty: found.ty,
            bitfield: found.bitfield,
            known,
        })
    }

    /// The member path, as asked for.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Byte offset from the start of the container.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The member's type's id.
    pub fn type_id(&self) -> TypeId {
        self.ty
    }

    /// The type source of the container and the member.
    pub fn type_source(&self) -> &Arc<dyn TypeSource> {
        &self.types
    }

    /// The member's type's name (a description for anonymous types).
    pub fn type_name(&self) -> String {
        describe(&*self.types, self.ty, 0)
    }

    /// The member's size in bytes.
    pub fn size(&self) -> Result<u64> {
        match self.known.size {
            Some(size) => Ok(size),
            None => size_of(&*self.types, self.ty),
        }
    }

    /// For a bitfield: bit offset from the member's byte offset, and width.
    pub fn bitfield(&self) -> Option<(u32, u32)> {
        self.bitfield
    }

    /// This member of the container object at `container`, read through `prog`.
    pub fn object<'p>(&'p self, prog: &'p Program, container: u64) -> Object<'p> {
        Object {
            prog,
            types: Types::Borrowed(&self.types),
            addr: container.wrapping_add(self.offset),
            ty: self.ty,
            bitfield: self.bitfield,
            known: Some(self.known),
        }
    }

    /// The container object whose member this is at `member_addr`: Linux's
    /// `container_of`.
    pub fn container_of<'p>(&self, prog: &'p Program, member_addr: u64) -> Object<'p> {
        Object::new(
            prog,
            self.types.clone(),
            member_addr.wrapping_sub(self.offset),
            self.container,
        )
    }
}

impl<'p> Object<'p> {
    /// The object of type `ty` (from `types`) at `addr`.
    pub fn new(prog: &'p Program, types: Arc<dyn TypeSource>, addr: u64, ty: TypeId) -> Object<'p> {
        Object {
            prog,
            types: Types::Shared(types),
            addr,
            ty,
            bitfield: None,
            known: None,
        }
    }

    /// The object of type `ty` (from `types`) at `addr`, borrowing the type source: what
    /// code that makes an object of the same type for every element of a list uses, so
    /// that neither it nor the members read from it touch a reference count.
    pub fn new_borrowed(
        prog: &'p Program,
        types: &'p Arc<dyn TypeSource>,
        addr: u64,
        ty: TypeId,
    ) -> Object<'p> {
        Object {
            prog,
            types: Types::Borrowed(types),
            addr,
            ty,
            bitfield: None,
            known: None,
        }
    }

    /// The object that contains the member `member_name` (a path such as `a.b`) at
    /// `member_addr`: Linux's `container_of`.
    pub fn container_of(
        prog: &'p Program,
        member_addr: u64,
        type_name: &str,
        member_name: &str,
    ) -> Result<Object<'p>> {
        let (types, ty) = prog.find_type(type_name)?;
        let off = offset_of(&*types, ty, member_name)?;
        Ok(Object::new(prog, types, member_addr.wrapping_sub(off), ty))
    }

    /// The program it reads through.
    pub fn program(&self) -> &'p Program {
        self.prog
    }

    /// The type source its type comes from.
    pub fn type_source(&self) -> &Arc<dyn TypeSource> {
        self.types.arc()
    }

    /// Its address.
    pub fn address(&self) -> u64 {
        self.addr
    }

    /// Its type's id.
    pub fn type_id(&self) -> TypeId {
        self.ty
    }

    /// Its type (as declared, typedefs not followed).
    pub fn type_info(&self) -> Result<Arc<Type>> {
        self.types.get(self.ty)
    }

    /// Its type's name (a description for anonymous types: `Task *`, `u8[16]`).
    pub fn type_name(&self) -> String {
        describe(&*self.types, self.ty, 0)
    }

    /// For a bitfield member: bit offset from [`address`](Self::address) and width.
    pub fn bitfield(&self) -> Option<(u32, u32)> {
        self.bitfield
    }

    /// Its size in bytes.
    pub fn size(&self) -> Result<u64> {
        match self.known.and_then(|k| k.size) {
            Some(size) => Ok(size),
            None => size_of(&*self.types, self.ty),
        }
    }

    fn with(&self, addr: u64, ty: TypeId, bitfield: Option<(u32, u32)>) -> Object<'p> {
        Object {
            prog: self.prog,
            types: self.types.clone(),
            addr,
            ty,
            bitfield,
            known: None,
        }
    }

    fn wrong(&self, op: &'static str) -> Error {
        Error::WrongType {
            op,
            ty: self.type_name(),
        }
    }

    /// Member `name` of a struct or union (searching anonymous members, through
    /// typedefs). On a pointer to a struct or union, dereferences first (C's `->`).
    pub fn member(&self, name: &str) -> Result<Object<'p>> {
        let (_, t) = resolve(&*self.types, self.ty)?;
        let (base, container) = match t.kind {
            TypeKind::Struct | TypeKind::Union => (self.addr, t),
            TypeKind::Pointer {
                target: Some(target),
            } => {
                let (_, inner) = resolve(&*self.types, target)?;
                if !matches!(inner.kind, TypeKind::Struct | TypeKind::Union) {
                    return Err(self.wrong("get a member of"));
                }
                (self.read_pointer()?, inner)
            }
            _ => return Err(self.wrong("get a member of")),
        };
        let (off, m) =
            find_member(&*self.types, &container, name, 0)?.ok_or_else(|| Error::NoMember {
                ty: self.type_name(),
                member: name.to_string(),
            })?;
        Ok(self.with(base.wrapping_add(off), m.ty, m.bitfield))
    }

    /// A chain of members and indices: `a.b.c`, `run_list.next`, `comm[3]`, `a->b`.
    pub fn member_path(&self, path: &str) -> Result<Object<'p>> {
        if let Some(f) = find_dotted(&*self.types, self.ty, path) {
            return Ok(self.with(self.addr.wrapping_add(f.offset), f.ty, f.bitfield));
        }
        let mut cur = self.clone();
        for (name, indices) in parse_path(path)? {
            cur = cur.member(name)?;
            for i in indices {
                cur = cur.index(i)?;
            }
        }
        Ok(cur)
    }

    /// The member `m` (found once, in this object's type) of this object; on a pointer to
    /// an object of that type, of the object it points at (C's `->`). Costs an addition,
    /// not a lookup: the way to read the same member of many objects.
    pub fn member_at(&self, m: &MemberLayout) -> Result<Object<'p>> {
        if Arc::ptr_eq(self.types.arc(), &m.types) {
            if self.ty == m.container {
                return Ok(self.member_of(self.addr, m));
            }
            let (rid, t) = resolve(&*self.types, self.ty)?;
            if rid == m.container {
                return Ok(self.member_of(self.addr, m));
            }
            if let TypeKind::Pointer {
                target: Some(target),
            } = t.kind
            {
                if resolve(&*self.types, target)?.0 == m.container {
                    return Ok(self.member_of(self.read_pointer()?, m));
                }
            }
        }
        Err(self.wrong("take a member found in another type from"))
    }

    /// Member `m` of the object (of `m`'s container type, in this object's type source)
    /// at `container`.
    fn member_of(&self, container: u64, m: &MemberLayout) -> Object<'p> {
        Object {
            prog: self.prog,
            types: self.types.clone(),
            addr: container.wrapping_add(m.offset),
            ty: m.ty,
            bitfield: m.bitfield,
            known: Some(m.known),
        }
    }

    /// The same bytes seen as the type `type_name` of the same type source (drgn's
    /// `reinterpret`). VMCOREINFO's layouts give every member the placeholder type
    /// `u64`: a member that is a structure is read by reinterpreting it.
    pub fn reinterpret(&self, type_name: &str) -> Result<Object<'p>> {
        let ty = self.types.find(type_name)?;
        Ok(self.with(self.addr, ty, None))
    }

    /// The object a pointer points at.
    pub fn deref(&self) -> Result<Object<'p>> {
        let (_, t) = resolve(&*self.types, self.ty)?;
        match t.kind {
            TypeKind::Pointer {
                target: Some(target),
            } => {
                let addr = self.read_pointer()?;
                Ok(self.with(addr, target, None))
            }
            _ => Err(self.wrong("dereference")),
        }
    }

    /// Element `i` of an array, or of the array a pointer points into. As in C, the
    /// index is not checked against the array's length.
    pub fn index(&self, i: u64) -> Result<Object<'p>> {
        let (_, t) = resolve(&*self.types, self.ty)?;
        let (base, element) = match t.kind {
            TypeKind::Array { element, .. } => (self.addr, element),
            TypeKind::Pointer {
                target: Some(target),
            } => (self.read_pointer()?, target),
            _ => return Err(self.wrong("index")),
        };
        let size = size_of(&*self.types, element)?;
        Ok(self.with(base.wrapping_add(i.wrapping_mul(size)), element, None))
    }

    fn read_pointer(&self) -> Result<u64> {
        self.prog.read_u64(self.addr)
    }

    /// The value as an integer: raw bits zero- or sign-extended as the type says (ints,
    /// bools, enums, pointers, floats as raw bits; bitfields), then converted to `u64`
    /// as C would (a signed -1 is `u64::MAX`).
    pub fn as_u64(&self) -> Result<u64> {
        Ok(self.read_int()? as u64)
    }

    /// The value as a signed integer (sign-extended only if the type is signed).
    pub fn as_i64(&self) -> Result<i64> {
        self.read_int()
    }

    /// The value as a truth value (non-zero).
    pub fn as_bool(&self) -> Result<bool> {
        Ok(self.read_int()? != 0)
    }

    fn read_int(&self) -> Result<i64> {
        let (_, t) = resolve(&*self.types, self.ty)?;
        let signed = match t.kind {
            TypeKind::Int { signed } | TypeKind::Enum { signed, .. } => signed,
            TypeKind::Bool | TypeKind::Pointer { .. } | TypeKind::Float => false,
            _ => return Err(self.wrong("read as an integer")),
        };
        let (raw, bits) = match self.bitfield {
            Some((bit_off, width)) => {
                if width == 0 || width > 64 || bit_off as u64 + width as u64 > 128 {
                    return Err(self.wrong("read a bitfield wider than 64 bits (or past 128) of"));
                }
                let nbytes = (bit_off as usize + width as usize).div_ceil(8);
                let mut b = [0u8; 16];
                self.prog.read_virt(self.addr, &mut b[..nbytes])?;
                let v = u128::from_le_bytes(b) >> bit_off;
                let mask = if width == 64 {
                    u64::MAX
                } else {
                    (1u64 << width) - 1
                };
                (v as u64 & mask, width)
            }
            None => {
                let size = match (t.size, &t.kind) {
                    (Some(s), _) => s,
                    (None, TypeKind::Pointer { .. }) => 8,
                    _ => return Err(self.wrong("read (it has no size) as an integer")),
                };
                let v = match size {
                    1 => self.prog.read_u8(self.addr)? as u64,
                    2 => self.prog.read_u16(self.addr)? as u64,
                    4 => self.prog.read_u32(self.addr)? as u64,
                    8 => self.prog.read_u64(self.addr)?,
                    _ => return Err(self.wrong("read (not 1, 2, 4 or 8 bytes) as an integer")),
                };
                (v, size as u32 * 8)
            }
        };
        Ok(if signed && bits < 64 {
            let shift = 64 - bits;
            ((raw << shift) as i64) >> shift
        } else {
            raw as i64
        })
    }

    /// The `N` bytes at the object's address, whatever its type says: for type sources
    /// that do not know a member's width (VMCOREINFO's placeholder `u64`) and for
    /// integers wrapped in structures (Rust's atomics). Fails on a bitfield, and on an
    /// object whose type is known to be smaller than `N` bytes.
    fn read_exact<const N: usize>(&self) -> Result<[u8; N]> {
        if self.bitfield.is_some() {
            return Err(self.wrong("read with an explicit width a bitfield of"));
        }
        if self.size().is_ok_and(|size| size < N as u64) {
            return Err(self.wrong("read more bytes than the size of"));
        }
        self.prog.read_array::<N>(self.addr)
    }

    /// The byte at the object's address (see [`read_uint`](Self::read_uint)).
    pub fn read_u8(&self) -> Result<u8> {
        Ok(self.read_exact::<1>()?[0])
    }

    /// The little-endian `u16` at the object's address (see
    /// [`read_uint`](Self::read_uint)).
    pub fn read_u16(&self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.read_exact()?))
    }

    /// The little-endian `u32` at the object's address (see
    /// [`read_uint`](Self::read_uint)).
    pub fn read_u32(&self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.read_exact()?))
    }

    /// The little-endian `u64` at the object's address (see
    /// [`read_uint`](Self::read_uint)).
    pub fn read_u64(&self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.read_exact()?))
    }

    /// The little-endian unsigned integer of `width` bytes (1, 2, 4 or 8) at the object's
    /// address, whatever its type says — for type sources that do not know a member's
    /// width (VMCOREINFO's layouts give every member the placeholder type `u64`) and for
    /// integers wrapped in structures (Rust's atomics). Fails on a bitfield, and on an
    /// object whose type is known to be smaller than `width`.
    pub fn read_uint(&self, width: u64) -> Result<u64> {
        match width {
            1 => self.read_u8().map(u64::from),
            2 => self.read_u16().map(u64::from),
            4 => self.read_u32().map(u64::from),
            8 => self.read_u64(),
            _ => Err(self.wrong("read (not 1, 2, 4 or 8 bytes) as an integer")),
        }
    }

    /// The object's bytes (at most [`MAX_READ_BYTES`]).
    pub fn read_bytes(&self) -> Result<Vec<u8>> {
        let size = self.size()?;
        if size > MAX_READ_BYTES {
            return Err(self.wrong("read more than 64 MiB of"));
        }
        let mut buf = vec![0u8; size as usize];
        self.prog.read_virt(self.addr, &mut buf)?;
        Ok(buf)
    }

    /// A C string: at the address a pointer holds, or in place for anything else (a
    /// `char` array). Stops at the first NUL or after `max_len` bytes; invalid UTF-8 is
    /// replaced. Fails if a byte before the end cannot be read.
    pub fn read_cstr(&self, max_len: usize) -> Result<String> {
        let pointer = match self.known {
            Some(k) => k.pointer,
            None => matches!(
                resolve(&*self.types, self.ty)?.1.kind,
                TypeKind::Pointer { .. }
            ),
        };
        let start = if pointer {
            self.read_pointer()?
        } else {
            self.addr
        };
        let mut out = Vec::new();
        let mut chunk = [0u8; 256];
        while out.len() < max_len {
            let va = start.wrapping_add(out.len() as u64);
            // Never read past a page boundary in one go: the next page may be unmapped
            // although the string ends before it.
            let to_page_end = 4096 - (va & 0xfff) as usize;
            let n = chunk.len().min(to_page_end).min(max_len - out.len());
            self.prog.read_virt(va, &mut chunk[..n])?;
            if let Some(nul) = chunk[..n].iter().position(|&c| c == 0) {
                out.extend_from_slice(&chunk[..nul]);
                break;
            }
            out.extend_from_slice(&chunk[..n]);
        }
        Ok(match String::from_utf8(out) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::memory::RawImage;
    use crate::translate::{PageTableBuilder, Paging};
    use std::collections::HashMap;

    /// A hand-built, in-memory type source.
    #[derive(Default)]
    pub(crate) struct MapTypes {
        types: Vec<Arc<Type>>,
        names: HashMap<String, TypeId>,
    }

    impl MapTypes {
        pub fn add(&mut self, t: Type) -> TypeId {
            let id = TypeId(self.types.len() as u64);
            if let Some(n) = &t.name {
                self.names.entry(n.clone()).or_insert(id);
            }
            self.types.push(Arc::new(t));
            id
        }
        pub fn int(&mut self, name: &str, size: u64, signed: bool) -> TypeId {
            self.add(Type {
                name: Some(name.into()),
                size: Some(size),
                kind: TypeKind::Int { signed },
                members: vec![],
            })
        }
        pub fn ptr(&mut self, target: Option<TypeId>) -> TypeId {
            self.add(Type {
                name: None,
                size: Some(8),
                kind: TypeKind::Pointer { target },
                members: vec![],
            })
        }
        pub fn array(&mut self, element: TypeId, count: Option<u64>) -> TypeId {
            self.add(Type {
                name: None,
                size: None,
                kind: TypeKind::Array { element, count },
                members: vec![],
            })
        }
        /// Replaces a placeholder (for self-referencing structs).
        pub fn set(&mut self, id: TypeId, t: Type) {
            if let Some(n) = &t.name {
                self.names.insert(n.clone(), id);
            }
            self.types[id.0 as usize] = Arc::new(t);
        }
    }

    impl TypeSource for MapTypes {
        fn find(&self, name: &str) -> Result<TypeId> {
            self.names.get(name).copied().ok_or_else(|| Error::NoType {
                name: name.into(),
                searched: self.describe(),
            })
        }
        fn get(&self, id: TypeId) -> Result<Arc<Type>> {
            self.types
                .get(id.0 as usize)
                .cloned()
                .ok_or_else(|| Error::NoType {
                    name: format!("#{}", id.0),
                    searched: self.describe(),
                })
        }
        fn describe(&self) -> String {
            "test types".into()
        }
    }

    pub(crate) fn member(name: Option<&str>, offset: u64, ty: TypeId) -> Member {
        Member {
            name: name.map(Into::into),
            offset,
            bitfield: None,
            ty,
        }
    }

    pub(crate) const DIRECT: u64 = 0xffff_8880_0000_0000;

    /// Types modelled on the test kernel's `Task` plus oddities: an anonymous union, a
    /// typedef chain, bitfields, a signed field, a C string pointer.
    fn types() -> MapTypes {
        let mut t = MapTypes::default();
        let u8_ = t.int("u8", 1, false);
        let u32_ = t.int("u32", 4, false);
        let i16_ = t.int("i16", 2, true);
        let u64_ = t.int("u64", 8, false);
        let list = t.add(Type {
            name: Some("ListHead".into()),
            size: Some(16),
            kind: TypeKind::Struct,
            members: vec![],
        });
        let list_ptr = t.ptr(Some(list));
        t.set(
            list,
            Type {
                name: Some("ListHead".into()),
                size: Some(16),
                kind: TypeKind::Struct,
                members: vec![
                    member(Some("next"), 0, list_ptr),
                    member(Some("prev"), 8, list_ptr),
                ],
            },
        );
        let comm = t.array(u8_, Some(16));
        let anon = t.add(Type {
            name: None,
            size: Some(8),
            kind: TypeKind::Union,
            members: vec![member(Some("word"), 0, u64_), member(Some("half"), 0, u32_)],
        });
        let flags = Member {
            name: Some("flag_lo".into()),
            offset: 72,
            bitfield: Some((3, 5)),
            ty: u32_,
        };
        let sflags = Member {
            name: Some("flag_hi".into()),
            offset: 72,
            bitfield: Some((8, 4)),
            ty: t.int("int", 4, true),
        };
        let pid_t = t.add(Type {
            name: Some("pid_t".into()),
            size: None,
            kind: TypeKind::Typedef { target: u32_ },
            members: vec![],
        });
        let pid_tt = t.add(Type {
            name: Some("kpid_t".into()),
            size: None,
            kind: TypeKind::Typedef { target: pid_t },
            members: vec![],
        });
        let char_ptr = t.ptr(Some(u8_));
        let void_ptr = t.ptr(None);
        let task = t.add(Type {
            name: Some("Task".into()),
            size: Some(96),
            kind: TypeKind::Struct,
            members: vec![
                member(Some("magic"), 0, u64_),
                member(Some("pid"), 8, pid_tt),
                member(Some("delta"), 12, i16_),
                member(Some("comm"), 16, comm),
                member(Some("run_list"), 32, list),
                member(None, 48, anon),
                member(Some("name"), 56, char_ptr),
                member(Some("void_ptr"), 64, void_ptr),
                flags,
                sflags,
            ],
        });
        let task_ptr = t.ptr(Some(task));
        t.add(Type {
            name: Some("TaskRef".into()),
            size: None,
            kind: TypeKind::Typedef { target: task_ptr },
            members: vec![],
        });
        let tasks = t.array(task, Some(4));
        t.add(Type {
            name: Some("Tasks".into()),
            size: None,
            kind: TypeKind::Typedef { target: tasks },
            members: vec![],
        });
        // A typedef loop: must not hang.
        let a = t.add(Type {
            name: Some("LoopA".into()),
            size: None,
            kind: TypeKind::Void,
            members: vec![],
        });
        let b = t.add(Type {
            name: Some("LoopB".into()),
            size: None,
            kind: TypeKind::Typedef { target: a },
            members: vec![],
        });
        t.set(
            a,
            Type {
                name: Some("LoopA".into()),
                size: None,
                kind: TypeKind::Typedef { target: b },
                members: vec![],
            },
        );
        t
    }

    pub(crate) const TASK0: u64 = 0x10_0000;
    pub(crate) const STR: u64 = 0x10_0ffa; // a string crossing into the next page

    /// A small guest for type sources' tests: four 96-byte tasks at [`TASK0`] on a
    /// circular list (link at +32), a string at [`STR`], `extra` bytes where asked, all
    /// in a 2 MiB direct map at `DIRECT`. No types.
    pub(crate) fn task_guest(extra: &[(u64, &[u8])]) -> Program {
        let mut b =
            PageTableBuilder::new(vec![0u8; 4 << 20], 0x1000, 0x8_0000, Paging::Four).unwrap();
        b.map_range(DIRECT, 0, 2 << 20, 2 << 20, true, true)
            .unwrap();
        let ram = b.ram_mut();
        let put = |ram: &mut [u8], at: u64, v: &[u8]| {
            ram[at as usize..at as usize + v.len()].copy_from_slice(v)
        };
        for i in 0..4u64 {
            let at = TASK0 + i * 96;
            put(ram, at, &0x6b73_6174_7562_6d61u64.to_le_bytes());
            put(ram, at + 8, &(i as u32 + 1).to_le_bytes());
            put(ram, at + 12, &(-5i16).to_le_bytes());
            put(ram, at + 16, format!("task{i}\0").as_bytes());
            let next = if i == 3 { TASK0 } else { TASK0 + (i + 1) * 96 };
            put(ram, at + 32, &(DIRECT + next + 32).to_le_bytes());
            put(ram, at + 48, &0x1122_3344_5566_7788u64.to_le_bytes());
            put(ram, at + 56, &(DIRECT + STR).to_le_bytes());
            // flag_lo = bits 3..8 = 0b10110, flag_hi = bits 8..12 = 0b1010 (-6 signed)
            put(
                ram,
                at + 72,
                &((0b10110u32 << 3) | (0b1010 << 8)).to_le_bytes(),
            );
            put(ram, at + 80, &(-(i as i32 % 2)).to_le_bytes());
            put(ram, at + 88, &(1u64 << 40).to_le_bytes());
        }
        put(ram, STR, b"hello, world\0");
        for (at, bytes) in extra {
            put(ram, *at, bytes);
        }
        let root = b.root();
        Program::new(
            Arc::new(RawImage::from_bytes(b.into_ram(), 0)),
            root,
            Paging::Four,
        )
    }

    fn program() -> Program {
        task_guest(&[]).with_types(Arc::new(types()))
    }

    #[test]
    fn members_paths_and_integers() {
        let p = program();
        let t = p.object(DIRECT + TASK0, "Task").unwrap();
        assert_eq!(t.type_name(), "Task");
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
        assert_eq!(t.member("delta").unwrap().as_u64().unwrap(), (-5i64) as u64);
        // Anonymous union members.
        assert_eq!(
            t.member("word").unwrap().as_u64().unwrap(),
            0x1122_3344_5566_7788
        );
        assert_eq!(t.member("half").unwrap().as_u64().unwrap(), 0x5566_7788);
        assert_eq!(t.member("half").unwrap().address(), DIRECT + TASK0 + 48);
        // Bitfields.
        assert_eq!(t.member("flag_lo").unwrap().as_u64().unwrap(), 0b10110);
        assert_eq!(t.member("flag_hi").unwrap().as_i64().unwrap(), -6);
        assert!(t.member("flag_hi").unwrap().as_bool().unwrap());
        // Paths through pointers (auto-deref), indices.
        let next = t.member_path("run_list.next.next").unwrap();
        assert_eq!(next.address(), DIRECT + TASK0 + 96 + 32);
        assert_eq!(next.as_u64().unwrap(), DIRECT + TASK0 + 2 * 96 + 32);
        assert_eq!(
            t.member_path("run_list.next->next").unwrap().address(),
            next.address()
        );
        assert_eq!(
            t.member_path("comm[4]").unwrap().as_u64().unwrap(),
            b'0' as u64
        );
        assert_eq!(t.member("comm").unwrap().read_cstr(64).unwrap(), "task0");
        assert_eq!(t.member("comm").unwrap().read_cstr(3).unwrap(), "tas");
        assert_eq!(t.member("comm").unwrap().type_name(), "u8[16]");
        assert_eq!(t.member("comm").unwrap().size().unwrap(), 16);
        assert_eq!(
            t.member("comm").unwrap().read_bytes().unwrap()[..6],
            *b"task0\0"
        );
        // A char * crossing a page boundary.
        assert_eq!(
            t.member("name").unwrap().read_cstr(100).unwrap(),
            "hello, world"
        );
        assert_eq!(t.member("name").unwrap().type_name(), "u8 *");
        // deref, index through pointers.
        let l = t
            .member("run_list")
            .unwrap()
            .member("next")
            .unwrap()
            .deref()
            .unwrap();
        assert_eq!(l.type_name(), "ListHead");
        assert_eq!(l.address(), DIRECT + TASK0 + 96 + 32);
        assert_eq!(
            t.member("name")
                .unwrap()
                .index(7)
                .unwrap()
                .as_u64()
                .unwrap(),
            b'w' as u64
        );
        // Arrays through typedefs.
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
        // A typedef'd pointer to a struct: member access dereferences.
        let r = p.object(DIRECT + TASK0 + 32, "TaskRef").unwrap();
        assert_eq!(r.type_name(), "TaskRef");
    }

    #[test]
    fn container_of_and_offsets() {
        let p = program();
        let link = DIRECT + TASK0 + 2 * 96 + 32;
        let t = Object::container_of(&p, link, "Task", "run_list").unwrap();
        assert_eq!(t.address(), DIRECT + TASK0 + 2 * 96);
        assert_eq!(t.member("pid").unwrap().as_u64().unwrap(), 3);
        let t = Object::container_of(&p, link + 8, "Task", "run_list.prev").unwrap();
        assert_eq!(t.address(), DIRECT + TASK0 + 2 * 96);
        assert_eq!(p.offset_of("Task", "half").unwrap(), 48);
        assert_eq!(p.offset_of("Task", "comm[3]").unwrap(), 19);
        assert_eq!(
            p.offset_of("Tasks", "x")
                .err()
                .map(|e| e.to_string())
                .unwrap(),
            "cannot take a member offset in a value of type Task[4]"
        );
    }

    #[test]
    fn member_layouts_are_found_once_and_read_many_objects() {
        let p = program();
        let pid = p.member_layout("Task", "pid").unwrap();
        assert_eq!((pid.offset(), pid.path()), (8, "pid"));
        assert_eq!(pid.type_name(), "kpid_t");
        assert_eq!(pid.size().unwrap(), 4);
        assert_eq!(
            format!("{pid:?}"),
            "(kpid_t) Task.pid at +0x8",
            "Debug says what it is"
        );
        let prev = p.member_layout("Task", "run_list.prev").unwrap();
        assert_eq!(prev.offset(), 40);
        assert_eq!(p.member_layout("Task", "half").unwrap().offset(), 48);
        assert_eq!(p.member_layout("Task", "comm[3]").unwrap().offset(), 19);
        assert_eq!(
            p.member_layout("Task", "flag_hi").unwrap().bitfield(),
            Some((8, 4))
        );
        // Many objects, one lookup: by address, or from the container object.
        for i in 0..4u64 {
            let at = DIRECT + TASK0 + i * 96;
            assert_eq!(pid.object(&p, at).as_u64().unwrap(), i + 1);
            let t = p.object(at, "Task").unwrap();
            assert_eq!(t.member_at(&pid).unwrap().as_u64().unwrap(), i + 1);
            assert_eq!(pid.container_of(&p, at + 8).address(), at, "container_of");
        }
        let flag = p.member_layout("Task", "flag_hi").unwrap();
        let t = p.object(DIRECT + TASK0, "Task").unwrap();
        assert_eq!(t.member_at(&flag).unwrap().as_i64().unwrap(), -6);
        // What the layout learned of the member's type serves every object made from it.
        let at = DIRECT + TASK0 + 96;
        assert_eq!(pid.object(&p, at).size().unwrap(), 4);
        assert!(
            pid.object(&p, at).read_u64().is_err(),
            "wider than the member"
        );
        let name = p.member_layout("Task", "name").unwrap();
        let comm = p.member_layout("Task", "comm").unwrap();
        assert_eq!(name.object(&p, at).read_cstr(64).unwrap(), "hello, world");
        assert_eq!(comm.object(&p, at).read_cstr(64).unwrap(), "task1");
        // A container made in a loop borrows its type source.
        let (types, task) = p.find_type("Task").unwrap();
        let t = Object::new_borrowed(&p, &types, at, task);
        assert_eq!(t.member_at(&comm).unwrap().read_cstr(3).unwrap(), "tas");
        assert_eq!(t.member_at(&pid).unwrap().read_u32().unwrap(), 2);
        assert!(Arc::ptr_eq(t.type_source(), pid.type_source()));
        // Through a typedef'd pointer to the container (C's `->`): task 0's
        // run_list.next, read as a TaskRef, points at task 1's run_list.
        let r = p.object(DIRECT + TASK0 + 32, "TaskRef").unwrap();
        let via = r.member_at(&pid).unwrap();
        assert_eq!(via.address(), DIRECT + TASK0 + 96 + 32 + 8);
        // Not on another type.
        let l = p.object(DIRECT + TASK0 + 32, "ListHead").unwrap();
        let e = l.member_at(&pid).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot take a member found in another type from a value of type ListHead"
        );
        // Errors are those of offset_of.
        assert!(matches!(
            p.member_layout("Task", "nope").unwrap_err(),
            Error::NoMember { .. }
        ));
        assert!(matches!(
            p.member_layout("Nope", "pid").unwrap_err(),
            Error::NoType { .. }
        ));
    }

    #[test]
    fn explicit_widths_and_reinterpretation() {
        let p = program();
        let t = p.object(DIRECT + TASK0, "Task").unwrap();
        let pid = t.member("pid").unwrap();
        assert_eq!(pid.read_u32().unwrap(), 1);
        assert_eq!(pid.read_u16().unwrap(), 1);
        assert_eq!(pid.read_u8().unwrap(), 1);
        assert_eq!(pid.read_uint(4).unwrap(), 1);
        let e = pid.read_u64().unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot read more bytes than the size of a value of type kpid_t"
        );
        assert!(pid.read_uint(3).is_err());
        assert!(t.member("flag_lo").unwrap().read_u32().is_err(), "bitfield");
        // A structure read as a word (Rust's atomics are structures).
        let run_list = t.member("run_list").unwrap();
        assert_eq!(run_list.read_u64().unwrap(), DIRECT + TASK0 + 96 + 32);
        assert_eq!(
            t.member("magic").unwrap().read_u64().unwrap(),
            0x6b73_6174_7562_6d61
        );
        // The same bytes as another type of the same source.
        let as_list = t.member("word").unwrap().reinterpret("ListHead").unwrap();
        assert_eq!(as_list.type_name(), "ListHead");
        assert_eq!(as_list.address(), DIRECT + TASK0 + 48);
        assert_eq!(
            as_list.member("next").unwrap().as_u64().unwrap(),
            0x1122_3344_5566_7788
        );
        assert!(matches!(
            t.reinterpret("Nope").unwrap_err(),
            Error::NoType { .. }
        ));
        let far = p.object(DIRECT + (3 << 20), "Task").unwrap();
        assert!(far.member("pid").unwrap().read_u32().is_err());
    }

    #[test]
    fn vmcoreinfo_layouts_back_up_the_primary_types() {
        use crate::vmcoreinfo::Vmcoreinfo;
        // What a registration's inline layouts say: a member the debug info lacks, and
        // a nested member spelt as its path.
        let v = Vmcoreinfo::parse(
            "SIZE(Task)=96\nOFFSET(Task.pid)=8\nOFFSET(Task.stack_base)=88\n\
             OFFSET(Ring.desc_ring)=16\nOFFSET(Ring.desc_ring.count_bits)=24\n\
             OFFSET(DescRing.count_bits)=8\n",
        )
        .unwrap();
        let p = program().with_vmcoreinfo(v.clone());
        let pid = p.member_layout("Task", "pid").unwrap();
        assert_eq!(pid.type_name(), "kpid_t", "the primary source first");
        let stack = p.member_layout("Task", "stack_base").unwrap();
        assert_eq!(stack.offset(), 88);
        assert_eq!(stack.type_name(), "u64", "VMCOREINFO's placeholder");
        assert_eq!(p.offset_of("Task", "stack_base").unwrap(), 88);
        assert_eq!(
            stack.object(&p, DIRECT + TASK0).read_u64().unwrap(),
            1 << 40
        );
        assert_eq!(
            p.offset_of("Ring", "desc_ring.count_bits").unwrap(),
            24,
            "OFFSET(a.b.c) is the path b.c of a"
        );
        // Objects over VMCOREINFO's types alone.
        let p = task_guest(&[]).with_vmcoreinfo(v);
        let t = p.object(DIRECT + TASK0 + 96, "Task").unwrap();
        assert_eq!(t.member("pid").unwrap().read_u32().unwrap(), 2);
        let ring = p.object(DIRECT + TASK0, "Ring").unwrap();
        assert_eq!(
            ring.member_path("desc_ring.count_bits").unwrap().address(),
            DIRECT + TASK0 + 24
        );
        let desc_ring = ring
            .member("desc_ring")
            .unwrap()
            .reinterpret("DescRing")
            .unwrap();
        let count_bits = p.member_layout("DescRing", "count_bits").unwrap();
        assert_eq!(
            desc_ring.member_at(&count_bits).unwrap().address(),
            DIRECT + TASK0 + 16 + 8
        );
        assert!(matches!(
            p.member_layout("Task", "comm").unwrap_err(),
            Error::NoMember { .. }
        ));
        let e = p.member_layout("Nope", "x").unwrap_err();
        assert!(e.to_string().contains("VMCOREINFO layouts"), "{e}");
    }

    #[test]
    fn errors_are_clear() {
        let p = program();
        let t = p.object(DIRECT + TASK0, "Task").unwrap();
        let e = t.member("nope").unwrap_err();
        assert!(matches!(e, Error::NoMember { .. }));
        assert_eq!(e.to_string(), "type Task has no member \"nope\"");
        let e = t.member("pid").unwrap().member("x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot get a member of a value of type kpid_t"
        );
        let e = t.deref().unwrap_err();
        assert_eq!(e.to_string(), "cannot dereference a value of type Task");
        let e = t.member("void_ptr").unwrap().deref().unwrap_err();
        assert!(matches!(e, Error::WrongType { .. }), "{e}");
        assert!(t.index(1).is_err());
        assert!(t.as_u64().is_err());
        assert!(t.member("comm").unwrap().as_u64().is_err());
        assert!(matches!(
            p.object(0, "NoSuchType").err().unwrap(),
            Error::NoType { .. }
        ));
        assert!(t.member_path("comm[x]").is_err());
        assert!(t.member_path("").is_err());
        assert!(t.member_path("comm]").is_err());
        // Typedef loops end with an error.
        let l = p.object(DIRECT, "LoopA").unwrap();
        assert!(l.size().is_err());
        assert!(l.as_u64().is_err());
        // Reading through a garbage pointer is a translation error, not a panic.
        let bad = p.object(DIRECT + TASK0 + 16, "TaskRef").unwrap(); // points at "task0..."
        assert!(bad.member("pid").and_then(|o| o.as_u64()).is_err());
        // Unmapped objects.
        let far = p.object(DIRECT + (3 << 20), "Task").unwrap();
        assert!(far.member("pid").unwrap().as_u64().is_err());
        assert!(far.read_bytes().is_err());
        assert!(far.member("comm").unwrap().read_cstr(10).is_err());
    }
}
