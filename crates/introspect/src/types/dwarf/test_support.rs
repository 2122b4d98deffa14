//! What the tests of the DWARF modules share: the test kernel's and the C fixtures'
//! DWARF, and helpers to look into types and damage files.

use std::sync::Arc;

use ambulance_test_kernel::ELF;
use goblin::elf::Elf;

use super::{DwarfTypes, ElfBytes};
use crate::types::{Member, Type, TypeId, TypeKind, TypeSource};
use crate::Result;

pub(super) fn kernel() -> DwarfTypes {
    DwarfTypes::from_static(ELF, "test-kernel").unwrap()
}

pub(super) fn member<'a>(t: &'a Type, name: &str) -> &'a Member {
    t.members
        .iter()
        .find(|m| m.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("{:?} has no member {name}", t.name))
}

/// Follows typedefs and qualifiers.
pub(super) fn strip(d: &dyn TypeSource, mut id: TypeId) -> Arc<Type> {
    for _ in 0..16 {
        let t = d.get(id).unwrap();
        match t.kind {
            TypeKind::Typedef { target } => id = target,
            _ => return t,
        }
    }
    panic!("typedef chain too long");
}

pub(super) fn c_fixture(bytes: &'static [u8], name: &str) {
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

/// (file offset, size) of a section of an ELF image.
pub(super) fn section(bytes: &[u8], name: &str) -> (usize, usize) {
    let elf = Elf::parse(bytes).unwrap();
    let sh = elf
        .section_headers
        .iter()
        .find(|sh| elf.shdr_strtab.get_at(sh.sh_name) == Some(name))
        .unwrap();
    (sh.sh_offset as usize, sh.sh_size as usize)
}

pub(super) fn open_owned(bytes: Vec<u8>, name: &str) -> Result<DwarfTypes> {
    DwarfTypes::new(Arc::new(ElfBytes::Owned(bytes)), name)
}
