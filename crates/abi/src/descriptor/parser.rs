//! The host side: checking the registration address, sizing the copy, and parsing a
//! descriptor (with the `alloc` feature) with every size, count, address and name bounded.

#[cfg(feature = "alloc")]
use alloc::string::ToString;
#[cfg(feature = "alloc")]
use alloc::vec::Vec;

use super::wire::{
    checksum_of, u16_at, u32_at, u64_at, HINT_CHECKSUM, HINT_MAGIC, HINT_POINTER_RANGE, KNOWN_FLAGS,
};
use super::{
    layout, root_flags, DescriptorError, Hint, RootKind, FLAG_LA57, HEADER_SIZE, HINT_ENTRY_SIZE,
    HINT_NULLABLE, MAGIC, MAX_BUILD_ID, MAX_CHECKSUM_LEN, MAX_COUNT, MAX_DESCRIPTOR_SIZE,
    MAX_ELEMENT_SIZE, MAX_HINTS, MAX_HINTS_PER_ROOT, MAX_PHYS_ADDR, MAX_ROOTS, MAX_VMCOREINFO,
    NAME_LEN, ROOT_ENTRY_SIZE,
};
#[cfg(feature = "alloc")]
use super::{Descriptor, Root};
use crate::{is_canonical_48, is_canonical_57};

/// Checks the address a guest wrote to the registration doorbell.
pub fn check_registration_gpa(gpa: u64) -> Result<(), DescriptorError> {
    if !gpa.is_multiple_of(crate::PAGE_SIZE) || gpa >= MAX_PHYS_ADDR || gpa == 0 {
        return Err(DescriptorError::BadAddress { gpa });
    }
    Ok(())
}

/// Reads the `total_size` field from a descriptor's first bytes, so a host can tell how
/// much to copy. Bounded by [`MAX_DESCRIPTOR_SIZE`].
pub fn declared_size(header: &[u8]) -> Result<usize, DescriptorError> {
    if header.len() < HEADER_SIZE {
        return Err(DescriptorError::Truncated {
            needed: HEADER_SIZE,
            available: header.len(),
        });
    }
    let size = u32_at(header, layout::TOTAL_SIZE);
    if (size as usize) < HEADER_SIZE || size as usize > MAX_DESCRIPTOR_SIZE {
        return Err(DescriptorError::BadTotalSize { size });
    }
    Ok(size as usize)
}

/// Decodes a NUL-padded name field.
fn read_name(field: &[u8]) -> Result<&str, &'static str> {
    let len = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    if len == 0 {
        return Err("empty");
    }
    if field[len..].iter().any(|&b| b != 0) {
        return Err("followed by bytes after its NUL padding");
    }
    core::str::from_utf8(&field[..len]).map_err(|_| "not valid UTF-8")
}

#[cfg(feature = "alloc")]
/// Parses and validates a descriptor. `bytes` may be longer than the descriptor; only
/// `total_size` bytes are read.
pub fn parse(bytes: &[u8]) -> Result<Descriptor, DescriptorError> {
    let total = declared_size(bytes)?;
    let magic = u64_at(bytes, layout::MAGIC);
    if magic != MAGIC {
        return Err(DescriptorError::BadMagic { found: magic });
    }
    let version = u16_at(bytes, layout::VERSION);
    if version != crate::ABI_VERSION {
        return Err(DescriptorError::UnsupportedVersion { found: version });
    }
    let header_size = u16_at(bytes, layout::HEADER_SIZE_FIELD);
    if header_size as usize != HEADER_SIZE {
        return Err(DescriptorError::BadHeaderSize { found: header_size });
    }
    if bytes.len() < total {
        return Err(DescriptorError::Truncated {
            needed: total,
            available: bytes.len(),
        });
    }
    let b = &bytes[..total];
    let stored = u32_at(b, layout::CHECKSUM);
    let computed = checksum_of(b);
    if stored != computed {
        return Err(DescriptorError::ChecksumMismatch { stored, computed });
    }
    let flags = u32_at(b, layout::FLAGS);
    if flags & !KNOWN_FLAGS != 0 {
        return Err(DescriptorError::UnknownFlags { flags });
    }
    let canonical = if flags & FLAG_LA57 != 0 {
        is_canonical_57
    } else {
        is_canonical_48
    };
    let build_id_len = b[layout::BUILD_ID_LEN];
    if build_id_len as usize > MAX_BUILD_ID {
        return Err(DescriptorError::BuildIdTooLong { len: build_id_len });
    }
    let build_id = b[layout::BUILD_ID..layout::BUILD_ID + build_id_len as usize].to_vec();
    let load_offset = u64_at(b, layout::LOAD_OFFSET) as i64;
    let page_table_root = u64_at(b, layout::PAGE_TABLE_ROOT);
    check_phys("page_table_root", page_table_root, crate::PAGE_SIZE)?;
    let heartbeat_gpa = u64_at(b, layout::HEARTBEAT_GPA);
    check_phys("heartbeat_gpa", heartbeat_gpa, 8)?;

    let root_count = u32_at(b, layout::ROOT_COUNT);
    let hint_count = u32_at(b, layout::HINT_COUNT);
    if root_count as usize > MAX_ROOTS {
        return Err(DescriptorError::TooMany {
            what: "roots",
            count: root_count as u64,
            max: MAX_ROOTS as u64,
        });
    }
    if hint_count as usize > MAX_HINTS {
        return Err(DescriptorError::TooMany {
            what: "hints",
            count: hint_count as u64,
            max: MAX_HINTS as u64,
        });
    }
    let roots_at = table(
        b,
        "root table",
        layout::ROOTS_OFFSET,
        root_count,
        ROOT_ENTRY_SIZE,
        8,
    )?;
    let hints_at = table(
        b,
        "hint table",
        layout::HINTS_OFFSET,
        hint_count,
        HINT_ENTRY_SIZE,
        8,
    )?;
    let vmcoreinfo_len = u32_at(b, layout::VMCOREINFO_LEN);
    if vmcoreinfo_len as usize > MAX_VMCOREINFO {
        return Err(DescriptorError::TooMany {
            what: "VMCOREINFO bytes",
            count: vmcoreinfo_len as u64,
            max: MAX_VMCOREINFO as u64,
        });
    }
    let vmcoreinfo = if vmcoreinfo_len == 0 {
        None
    } else {
        let at = table(
            b,
            "VMCOREINFO text",
            layout::VMCOREINFO_OFFSET,
            vmcoreinfo_len,
            1,
            1,
        )?;
        let text = &b[at..at + vmcoreinfo_len as usize];
        let text = core::str::from_utf8(text).map_err(|e| DescriptorError::VmcoreinfoNotText {
            valid_up_to: e.valid_up_to(),
            len: text.len(),
        })?;
        Some(text.to_string())
    };

    let mut roots: Vec<Root> = Vec::with_capacity(root_count as usize);
    for i in 0..root_count {
        let e = &b[roots_at + i as usize * ROOT_ENTRY_SIZE..][..ROOT_ENTRY_SIZE];
        let root = parse_root(i, e, b, hints_at, hint_count, canonical)?;
        if let Some(first) = roots.iter().position(|r| r.name == root.name) {
            return Err(DescriptorError::DuplicateName {
                first: first as u32,
                second: i,
            });
        }
        roots.push(root);
    }
    Ok(Descriptor {
        flags,
        build_id,
        load_offset,
        page_table_root,
        heartbeat_gpa,
        vmcoreinfo,
        roots,
    })
}

#[cfg(feature = "alloc")]
fn check_phys(field: &'static str, addr: u64, align: u64) -> Result<(), DescriptorError> {
    if !addr.is_multiple_of(align) || addr >= MAX_PHYS_ADDR {
        return Err(DescriptorError::BadPhysicalAddress { field, addr, align });
    }
    Ok(())
}

#[cfg(feature = "alloc")]
/// Checks a table's bounds; returns its offset.
fn table(
    b: &[u8],
    what: &'static str,
    offset_field: usize,
    count: u32,
    entry: usize,
    align: u32,
) -> Result<usize, DescriptorError> {
    let offset = u32_at(b, offset_field);
    let len = count as u64 * entry as u64;
    let end = offset as u64 + len;
    let in_bounds = len == 0 || (offset as usize >= HEADER_SIZE && end <= b.len() as u64);
    if !in_bounds || !offset.is_multiple_of(align) {
        return Err(DescriptorError::OutOfBounds {
            what,
            offset,
            len,
            total_size: b.len() as u32,
        });
    }
    Ok(offset as usize)
}

#[cfg(feature = "alloc")]
fn parse_root(
    i: u32,
    e: &[u8],
    b: &[u8],
    hints_at: usize,
    hint_count: u32,
    canonical: fn(u64) -> bool,
) -> Result<Root, DescriptorError> {
    let name = read_name(&e[layout::root::NAME..][..NAME_LEN]).map_err(|problem| {
        DescriptorError::BadName {
            root: i,
            field: "name",
            problem,
        }
    })?;
    let type_name = read_name(&e[layout::root::TYPE_NAME..][..NAME_LEN]).map_err(|problem| {
        DescriptorError::BadName {
            root: i,
            field: "type_name",
            problem,
        }
    })?;
    let kind_raw = u16_at(e, layout::root::KIND);
    let kind = RootKind::from_u16(kind_raw).ok_or(DescriptorError::UnknownKind {
        root: i,
        kind: kind_raw,
    })?;
    let flags = u16_at(e, layout::root::FLAGS);
    let allowed = root_flags::LOCK_BYTE
        | match kind {
            RootKind::List => root_flags::SINGLY_LINKED,
            RootKind::Array => root_flags::POINTER_ELEMENTS,
            _ => 0,
        };
    if flags & !allowed != 0 {
        return Err(DescriptorError::BadRootFlags {
            root: i,
            flags,
            kind: kind.name(),
        });
    }
    let element_size = u32_at(e, layout::root::ELEMENT_SIZE);
    if element_size == 0 || element_size > MAX_ELEMENT_SIZE {
        return Err(DescriptorError::BadElementSize {
            root: i,
            size: element_size,
        });
    }
    let address = u64_at(e, layout::root::ADDRESS);
    if address == 0 || !canonical(address) {
        return Err(DescriptorError::NonCanonical {
            root: i,
            field: "address",
            addr: address,
        });
    }
    let max_count = u32_at(e, layout::root::MAX_COUNT);
    if max_count == 0 || max_count > MAX_COUNT || (kind == RootKind::Object && max_count != 1) {
        return Err(DescriptorError::BadCount {
            root: i,
            count: max_count,
        });
    }
    let link_offset = u32_at(e, layout::root::LINK_OFFSET);
    let link_len = match kind {
        RootKind::List if flags & root_flags::SINGLY_LINKED != 0 => 8,
        RootKind::List | RootKind::Tree => 16,
        _ => 0,
    };
    if link_len > 0 && link_offset as u64 + link_len as u64 > element_size as u64 {
        return Err(DescriptorError::BadLinkOffset {
            root: i,
            offset: link_offset,
            len: link_len,
            element_size,
        });
    }
    let aux = u64_at(e, layout::root::AUX);
    if (kind == RootKind::Ring && (aux == 0 || !canonical(aux))) || !canonical(aux) {
        return Err(DescriptorError::NonCanonical {
            root: i,
            field: "aux",
            addr: aux,
        });
    }
    let lock = u64_at(e, layout::root::LOCK);
    if !canonical(lock) {
        return Err(DescriptorError::NonCanonical {
            root: i,
            field: "lock",
            addr: lock,
        });
    }
    let first = u32_at(e, layout::root::HINT_FIRST);
    let count = u32_at(e, layout::root::HINT_COUNT);
    if count as usize > MAX_HINTS_PER_ROOT || first as u64 + count as u64 > hint_count as u64 {
        return Err(DescriptorError::BadHintSlice {
            root: i,
            first,
            count,
            hint_count,
        });
    }
    let mut hints = Vec::with_capacity(count as usize);
    for h in first..first + count {
        let he = &b[hints_at + h as usize * HINT_ENTRY_SIZE..][..HINT_ENTRY_SIZE];
        hints.push(parse_hint(h, i, he, element_size, canonical)?);
    }
    Ok(Root {
        name: name.to_string(),
        type_name: type_name.to_string(),
        kind,
        flags,
        address,
        element_size,
        link_offset,
        max_count,
        aux,
        lock,
        hints,
    })
}

#[cfg(feature = "alloc")]
fn parse_hint(
    h: u32,
    root: u32,
    e: &[u8],
    element_size: u32,
    canonical: fn(u64) -> bool,
) -> Result<Hint, DescriptorError> {
    let bad = |problem| DescriptorError::BadHint {
        hint: h,
        root,
        problem,
    };
    let kind = u16_at(e, layout::hint::KIND);
    let flags = u16_at(e, layout::hint::FLAGS);
    let size = u32_at(e, layout::hint::SIZE);
    let offset = u32_at(e, layout::hint::OFFSET);
    let a = u64_at(e, layout::hint::A);
    let b = u64_at(e, layout::hint::B);
    let field_fits = |len: u32| offset as u64 + len as u64 <= element_size as u64;
    match kind {
        HINT_MAGIC => {
            if !matches!(size, 1 | 2 | 4 | 8) {
                return Err(bad("magic field size must be 1, 2, 4 or 8 bytes"));
            }
            if !field_fits(size) {
                return Err(bad("magic field lies outside the element"));
            }
            if size < 8 && a >> (size * 8) != 0 {
                return Err(bad("magic value is wider than its field"));
            }
            if flags != 0 {
                return Err(bad("magic hints take no flags"));
            }
            Ok(Hint::Magic {
                offset,
                size: size as u8,
                value: a,
            })
        }
        HINT_CHECKSUM => {
            if size == 0 || size > MAX_CHECKSUM_LEN {
                return Err(bad("checksummed range is empty or longer than 64 MiB"));
            }
            let last = a.checked_add(size as u64 - 1);
            if a == 0 || !canonical(a) || !last.is_some_and(canonical) {
                return Err(bad("checksummed range is not canonical"));
            }
            if b > u32::MAX as u64 || flags != 0 {
                return Err(bad("checksum value wider than 32 bits, or flags set"));
            }
            Ok(Hint::Checksum {
                start: a,
                len: size,
                crc32c: b as u32,
            })
        }
        HINT_POINTER_RANGE => {
            if !field_fits(8) {
                return Err(bad("pointer field lies outside the element"));
            }
            if a >= b {
                return Err(bad("pointer range is empty (lo >= hi)"));
            }
            if !canonical(a) || !canonical(b - 1) {
                return Err(bad("pointer range is not canonical"));
            }
            if flags & !HINT_NULLABLE != 0 {
                return Err(bad("unknown pointer-range flags"));
            }
            Ok(Hint::PointerRange {
                offset,
                lo: a,
                hi: b,
                nullable: flags & HINT_NULLABLE != 0,
            })
        }
        _ => Err(DescriptorError::UnknownHintKind { hint: h, kind }),
    }
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::super::test_support::{descriptor, sample};
    use super::super::wire::put;
    use super::super::{reseal, root_flags};
    use super::*;
    use alloc::string::ToString;
    use proptest::prelude::*;

    #[test]
    fn bad_checksum_is_refused() {
        let mut bytes = sample().encode().unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(matches!(
            parse(&bytes),
            Err(DescriptorError::ChecksumMismatch { .. })
        ));
    }

    #[test]
    fn oversize_counts_are_refused() {
        let mut bytes = sample().encode().unwrap();
        put(&mut bytes, layout::ROOT_COUNT, &100_000u32.to_le_bytes());
        reseal(&mut bytes);
        let err = parse(&bytes).unwrap_err();
        assert!(
            matches!(err, DescriptorError::TooMany { what: "roots", .. }),
            "{err}"
        );
        assert!(err.to_string().contains("100000"));
    }

    #[test]
    fn non_canonical_root_address_is_refused() {
        let mut bytes = sample().encode().unwrap();
        put(
            &mut bytes,
            HEADER_SIZE + layout::root::ADDRESS,
            &0x0000_8000_0000_0000u64.to_le_bytes(),
        );
        reseal(&mut bytes);
        let err = parse(&bytes).unwrap_err();
        assert_eq!(
            err,
            DescriptorError::NonCanonical {
                root: 0,
                field: "address",
                addr: 0x0000_8000_0000_0000
            }
        );
    }

    #[test]
    fn root_flags_are_checked_per_kind() {
        // A lock-byte lock on any kind, singly linked on lists only, nothing unknown.
        let mut d = sample();
        d.roots[0].flags = root_flags::SINGLY_LINKED | root_flags::LOCK_BYTE;
        d.roots[1].flags = root_flags::LOCK_BYTE;
        assert_eq!(parse(&d.encode().unwrap()).unwrap(), d);
        for (root, flags) in [(1u32, root_flags::SINGLY_LINKED), (0, 8)] {
            let mut bad = sample();
            bad.roots[root as usize].flags = flags;
            let err = parse(&bad.encode().unwrap()).unwrap_err();
            assert!(
                matches!(err, DescriptorError::BadRootFlags { root: r, .. } if r == root),
                "{err}"
            );
        }
    }

    #[test]
    fn truncated_and_foreign_bytes_are_refused() {
        let bytes = sample().encode().unwrap();
        assert!(matches!(
            parse(&bytes[..100]),
            Err(DescriptorError::Truncated { .. })
        ));
        assert!(matches!(
            parse(&bytes[..bytes.len() - 1]),
            Err(DescriptorError::Truncated { .. })
        ));
        let mut foreign = bytes.clone();
        foreign[0] = b'X';
        assert!(matches!(
            parse(&foreign),
            Err(DescriptorError::BadMagic { .. })
        ));
    }

    #[test]
    fn bad_names_are_refused() {
        let mut bytes = sample().encode().unwrap();
        bytes[HEADER_SIZE] = 0xff;
        reseal(&mut bytes);
        assert!(matches!(
            parse(&bytes),
            Err(DescriptorError::BadName {
                root: 0,
                field: "name",
                ..
            })
        ));
    }

    #[test]
    fn registration_address_must_be_page_aligned() {
        assert!(check_registration_gpa(0x1000).is_ok());
        assert!(check_registration_gpa(0x1008).is_err());
        assert!(check_registration_gpa(0).is_err());
        assert!(check_registration_gpa(1 << 60).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn corrupted_valid_descriptors_never_panic(
            d in descriptor(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..16),
            reseal_after in any::<bool>(),
        ) {
            let mut bytes = d.encode().unwrap();
            for (at, v) in flips {
                let at = at % bytes.len();
                bytes[at] = v;
            }
            if reseal_after && declared_size(&bytes).map(|s| s <= bytes.len()).unwrap_or(false) {
                reseal(&mut bytes);
            }
            let _ = parse(&bytes);
        }
    }
}
