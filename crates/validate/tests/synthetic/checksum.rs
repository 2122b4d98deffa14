//! checksum, with and without the kernel image, under KASLR.

use ambulance_abi::descriptor::{Hint, Root, RootKind};
use ambulance_report::{FindingKind, Severity};
use ambulance_validate::builtins::Checksums;

use crate::support::*;

/// Where the kernel image is linked.
const LINK: u64 = 0xffff_ffff_8020_0000;
/// The KASLR slide the synthetic kernel runs with.
const SLIDE: i64 = 0x2a0_0000;
/// The read-only range's size.
const LEN: u64 = 0x3000;

/// Text bytes: something that is not all zeros.
fn text() -> Vec<u8> {
    (0..LEN).map(|i| (i * 7 + i / 256) as u8).collect()
}

/// A minimal ELF64 executable with one PT_LOAD of `bytes` at link address `vaddr`.
fn elf(vaddr: u64, bytes: &[u8]) -> Vec<u8> {
    let mut e = vec![0u8; 0x1000];
    e[..4].copy_from_slice(b"\x7fELF");
    e[4] = 2; // 64-bit
    e[5] = 1; // little-endian
    e[6] = 1; // version
    e[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
    e[20..24].copy_from_slice(&1u32.to_le_bytes());
    e[24..32].copy_from_slice(&vaddr.to_le_bytes()); // entry
    e[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
    e[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
    e[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
    e[56..58].copy_from_slice(&1u16.to_le_bytes()); // phnum
    e[58..60].copy_from_slice(&64u16.to_le_bytes()); // shentsize
    let ph = 64;
    e[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    e[ph + 4..ph + 8].copy_from_slice(&5u32.to_le_bytes()); // R+X
    e[ph + 8..ph + 16].copy_from_slice(&0x1000u64.to_le_bytes()); // offset
    e[ph + 16..ph + 24].copy_from_slice(&vaddr.to_le_bytes());
    e[ph + 24..ph + 32].copy_from_slice(&(vaddr & 0xfff_ffff).to_le_bytes());
    e[ph + 32..ph + 40].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
    e[ph + 40..ph + 48].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
    e[ph + 48..ph + 56].copy_from_slice(&0x1000u64.to_le_bytes());
    e.extend_from_slice(bytes);
    e
}

/// The kernel's read-only range at its run-time address (link + slide), registered
/// with its checksum; with the image when `with_elf`.
fn kernel(slide: i64, with_elf: bool) -> (Guest, u64) {
    let mut g = Guest::new();
    let at = LINK.wrapping_add(slide as u64);
    g.mem.map(at, LEN);
    g.put(at, &text());
    g.load_offset = slide;
    if with_elf {
        g.kernel_elf = Some(elf(LINK, &text()));
    }
    g.root(Root {
        name: "kernel_text".into(),
        type_name: "u8".into(),
        kind: RootKind::Object,
        flags: 0,
        address: at,
        element_size: LEN as u32,
        link_offset: 0,
        max_count: 1,
        aux: 0,
        lock: 0,
        hints: vec![Hint::Checksum {
            start: at,
            len: LEN as u32,
            crc32c: crc(&text()),
        }],
    });
    (g, at)
}

#[test]
fn an_unchanged_range_has_no_findings() {
    for (slide, elf) in [(0, false), (SLIDE, true)] {
        let (g, _) = kernel(slide, elf);
        assert!(g.build().run(&Checksums).is_empty());
    }
}

#[test]
fn a_changed_byte_is_found_at_its_run_time_address_under_kaslr() {
    let (mut g, at) = kernel(SLIDE, true);
    let byte = at + 0x1234;
    let was = text()[0x1234];
    g.put(byte, &[!was]);
    let found = g.build().run(&Checksums);
    // The range's checksum, and the one changed byte, exactly.
    assert_eq!(found.len(), 2, "{found:#?}");
    let range = the_one(&found, at);
    corruption(range);
    assert!(range.message.contains("changed since"), "{}", range.message);
    let f = the_one(&found, byte);
    assert_eq!(f.severity, Severity::Critical);
    assert_eq!(f.expected, format!("{was:02x}"));
    assert_eq!(f.found, format!("{:02x}", !was));
    assert!(f.message.contains("differs from the kernel image"));
}

#[test]
fn a_load_offset_ignored_would_compare_with_the_wrong_bytes() {
    // The same change with the descriptor claiming no slide: the image is then compared
    // at the wrong addresses (outside the image) and no byte can be located. This is the
    // bug the load offset fixes; the checksum itself still catches the change.
    let (mut g, at) = kernel(SLIDE, true);
    g.load_offset = 0;
    g.put(at + 0x10, &[!text()[0x10]]);
    let found = g.build().run(&Checksums);
    assert_eq!(found.len(), 1, "{found:#?}");
    the_one(&found, at);
}

#[test]
fn an_unreadable_range_is_an_error_at_the_first_unreadable_byte() {
    let (mut g, at) = kernel(0, false);
    // Declare a range one page longer than what is mapped.
    let r = g.roots.last_mut().unwrap();
    r.hints = vec![Hint::Checksum {
        start: at,
        len: (LEN + 0x1000) as u32,
        crc32c: 0,
    }];
    let found = g.build().run(&Checksums);
    let f = the_one(&found, at + LEN);
    assert_eq!(f.severity, Severity::Error);
    assert_eq!(f.found, "unreadable");
}

/// 1,024 ranges of 64 MiB (the most a descriptor may declare): 64 GiB to read, over
/// one page of RAM mapped again and again. Out of time before it starts, the validator
/// reads nothing and says, range by range, what it did not check.
#[test]
fn giant_ranges_stop_at_the_budget() {
    let mut g = Guest::new();
    let base = 0xffff_c000_0000_0000;
    let page = g.mem.alloc_phys(2 << 20, 2 << 20);
    g.mem.map_alias(base, page, 2 << 20, 32);
    for r in 0..16 {
        g.root(Root {
            name: format!("ro{r}"),
            type_name: "u8".into(),
            kind: RootKind::Object,
            flags: 0,
            address: base,
            element_size: 4096,
            link_offset: 0,
            max_count: 1,
            aux: 0,
            lock: 0,
            hints: (0..64)
                .map(|_| Hint::Checksum {
                    start: base,
                    len: 64 << 20,
                    crc32c: 1,
                })
                .collect(),
        });
    }
    let b = g.build();
    let found = b.run_out_of_time(&Checksums);
    assert_eq!(found.len(), 1024, "one note per range");
    assert!(found
        .iter()
        .all(|f| f.kind == FindingKind::Diagnosis && f.severity == Severity::Warning));
    assert!(
        found[0]
            .message
            .contains("bytes 0xffffc00000000000..0xffffc00004000000"),
        "{}",
        found[0].message
    );
    assert!(found[1]
        .message
        .contains("checksummed range 0xffffc00000000000 (+67108864 bytes) not checked"));
    // With a budget that cannot read 64 GiB, it stops inside a range and says so; what it
    // found before (every range it finished has a wrong checksum) stands.
    let config = ambulance_validate::ValidationConfig {
        enabled: vec!["checksum".into()],
        total_budget_ms: 100,
        ..Default::default()
    };
    let (found, _) = b.run_all(&config);
    let notes = budget_notes(&found, "checksum");
    assert!(!notes.is_empty(), "it stopped");
    let wrong = found
        .iter()
        .filter(|f| f.kind == FindingKind::Analysis)
        .count();
    assert!(wrong < 1024, "it cannot have read every range");
    assert_eq!(
        wrong + notes.len(),
        1024,
        "every range is either checked or said to be not"
    );
}
