//! What the descriptor's tests share: a sample descriptor and proptest strategies for
//! valid ones.

use alloc::string::ToString;
use alloc::vec;
use alloc::vec::Vec;
use proptest::prelude::*;

use super::{root_flags, Descriptor, Hint, Root, RootKind};

pub(super) fn sample() -> Descriptor {
    Descriptor {
        flags: 0,
        build_id: vec![0xab; 20],
        load_offset: 0,
        page_table_root: 0x10_0000,
        heartbeat_gpa: 0x20_0008,
        vmcoreinfo: Some("OSRELEASE=test\nPAGESIZE=4096\n".to_string()),
        roots: vec![
            Root {
                name: "run_queue".to_string(),
                type_name: "Task".to_string(),
                kind: RootKind::List,
                flags: 0,
                address: 0xffff_ffff_8020_1000,
                element_size: 256,
                link_offset: 16,
                max_count: 64,
                aux: 0,
                lock: 0xffff_ffff_8020_2000,
                hints: vec![Hint::Magic {
                    offset: 0,
                    size: 8,
                    value: 0x7461_736b,
                }],
            },
            Root {
                name: "kernel_text".to_string(),
                type_name: "u8".to_string(),
                kind: RootKind::Object,
                flags: 0,
                address: 0xffff_ffff_8020_0000,
                element_size: 4096,
                link_offset: 0,
                max_count: 1,
                aux: 0,
                lock: 0,
                hints: vec![Hint::Checksum {
                    start: 0xffff_ffff_8020_0000,
                    len: 4096,
                    crc32c: 0xdead_beef,
                }],
            },
        ],
    }
}

pub(super) fn canonical_addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        (1u64..(1 << 47)).prop_map(|a| a & !7),
        (0u64..(1 << 47)).prop_map(|a| (a | 0xffff_8000_0000_0000) & !7),
    ]
    .prop_filter("non-null", |a| *a != 0)
}

pub(super) fn hint(element_size: u32) -> impl Strategy<Value = Hint> {
    prop_oneof![
        (
            0..element_size,
            prop_oneof![Just(1u8), Just(2), Just(4), Just(8)],
            any::<u64>()
        )
            .prop_filter("fits", move |(o, s, _)| o + *s as u32 <= element_size)
            .prop_map(|(offset, size, v)| Hint::Magic {
                offset,
                size,
                value: if size == 8 {
                    v
                } else {
                    v & ((1u64 << (size * 8)) - 1)
                },
            }),
        (canonical_addr(), 1u32..4096, any::<u32>())
            .prop_filter("stays canonical", |(start, len, _)| {
                start
                    .checked_add(*len as u64 - 1)
                    .is_some_and(crate::is_canonical_48)
            })
            .prop_map(|(start, len, crc32c)| Hint::Checksum { start, len, crc32c }),
        (
            0..element_size.saturating_sub(7).max(1),
            canonical_addr(),
            1u64..(1 << 20),
            any::<bool>()
        )
            .prop_filter("fits", move |(o, ..)| o + 8 <= element_size)
            .prop_filter("stays canonical", |(_, lo, len, _)| {
                lo.checked_add(len - 1).is_some_and(crate::is_canonical_48)
            })
            .prop_map(|(offset, lo, len, nullable)| Hint::PointerRange {
                offset,
                lo,
                hi: lo + len,
                nullable,
            }),
    ]
}

pub(super) fn root() -> impl Strategy<Value = Root> {
    (
        "[a-z][a-z0-9_.]{0,31}",
        "[A-Za-z][A-Za-z0-9_:]{0,31}",
        prop_oneof![
            Just(RootKind::List),
            Just(RootKind::Array),
            Just(RootKind::Object),
            Just(RootKind::Ring),
            Just(RootKind::Tree)
        ],
        16u32..4096,
        canonical_addr(),
        canonical_addr(),
        prop_oneof![Just(0u64), canonical_addr()],
        1u32..10_000,
        any::<bool>(),
    )
        .prop_flat_map(
            |(name, type_name, kind, element_size, address, aux, lock, count, flag)| {
                let flags = match kind {
                    RootKind::List if flag => root_flags::SINGLY_LINKED,
                    RootKind::Array if flag => root_flags::POINTER_ELEMENTS,
                    _ => 0,
                };
                let max_count = if kind == RootKind::Object { 1 } else { count };
                let aux = if kind == RootKind::Ring { aux } else { 0 };
                (
                    Just((
                        name,
                        type_name,
                        kind,
                        flags,
                        element_size,
                        address,
                        aux,
                        lock,
                        max_count,
                    )),
                    0..element_size - 15,
                    proptest::collection::vec(hint(element_size), 0..4),
                )
            },
        )
        .prop_map(
            |(
                (name, type_name, kind, flags, element_size, address, aux, lock, max_count),
                link_offset,
                hints,
            )| {
                Root {
                    name,
                    type_name,
                    kind,
                    flags,
                    address,
                    element_size,
                    link_offset,
                    max_count,
                    aux,
                    lock,
                    hints,
                }
            },
        )
}

pub(super) fn descriptor() -> impl Strategy<Value = Descriptor> {
    (
        proptest::collection::vec(any::<u8>(), 0..=32),
        any::<i64>(),
        (0u64..(1 << 40)).prop_map(|a| a << 12),
        (0u64..(1 << 49)).prop_map(|a| a << 3),
        proptest::option::of("[A-Z_()a-z.=0-9\n]{1,200}"),
        proptest::collection::vec(root(), 0..8),
    )
        .prop_map(
            |(build_id, load_offset, page_table_root, heartbeat_gpa, vmcoreinfo, mut roots)| {
                let mut seen = Vec::new();
                roots.retain(|r| {
                    let fresh = !seen.contains(&r.name);
                    seen.push(r.name.clone());
                    fresh
                });
                Descriptor {
                    flags: 0,
                    build_id,
                    load_offset,
                    page_table_root,
                    heartbeat_gpa,
                    vmcoreinfo,
                    roots,
                }
            },
        )
}
