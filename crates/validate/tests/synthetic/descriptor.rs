//! descriptor: the in-guest descriptor is still what the host copied.

use ambulance_abi::descriptor::{layout, HEADER_SIZE, ROOT_ENTRY_SIZE};
use ambulance_report::{Hex, Severity};
use ambulance_validate::builtins::DescriptorIntegrity;
use ambulance_validate::Validator;

use crate::support::*;

fn guest() -> Built {
    let mut g = Guest::new();
    let table = g.tasks(2);
    g.tasks_root(table, 2);
    g.build()
}

/// The built guest with its in-RAM descriptor changed at `offset`.
fn changed(b: &Built, offset: usize) -> ambulance_introspect::program::Program {
    let mut ram = vec![0u8; 16 << 20];
    b.program.read_phys(0, &mut ram).unwrap();
    ram[b.gpa as usize + offset] ^= 0x5a;
    ambulance_introspect::program::Program::new(
        std::sync::Arc::new(ambulance_introspect::memory::RawImage::from_bytes(ram, 0)),
        b.program.translator().root(),
        ambulance_introspect::translate::Paging::Four,
    )
}

#[test]
fn an_unchanged_descriptor_has_no_findings() {
    assert!(guest().run(&DescriptorIntegrity).is_empty());
}

#[test]
fn a_changed_byte_is_found_at_its_physical_address_and_part() {
    let b = guest();
    let at = HEADER_SIZE + layout::root::ADDRESS + 2;
    let program = changed(&b, at);
    let mut ctx = b.context(limits());
    ctx.program = &program;
    let mut found = Vec::new();
    DescriptorIntegrity.run(&ctx, &mut found);
    assert_eq!(found.len(), 1, "{found:#?}");
    let f = &found[0];
    assert_eq!(f.severity, Severity::Error);
    assert_eq!(f.address.phys, Some(Hex(b.gpa + at as u64)));
    assert_eq!(f.structure.path.as_deref(), Some("root 0"));
    assert!(f.message.contains("no longer parses"), "{}", f.message);
    let _ = ROOT_ENTRY_SIZE;
}

#[test]
fn an_unreadable_descriptor_is_an_error() {
    let b = guest();
    let mut ctx = b.context(limits());
    ctx.descriptor_gpa = Some(1 << 40);
    let mut found = Vec::new();
    DescriptorIntegrity.run(&ctx, &mut found);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].found, "unreadable");
    assert_eq!(found[0].address.phys, Some(Hex(1 << 40)));
}

/// A host copy that does not even parse (garbage counts and offsets) is compared
/// without overflow.
#[test]
fn a_garbage_copy_is_compared_without_overflow() {
    let b = guest();
    let mut copy = b.bytes.clone();
    for f in [
        layout::ROOTS_OFFSET,
        layout::ROOT_COUNT,
        layout::HINTS_OFFSET,
        layout::HINT_COUNT,
    ] {
        layout::set_u32(&mut copy, f, u32::MAX);
    }
    let mut ctx = b.context(limits());
    ctx.descriptor_bytes = Some(&copy);
    let mut found = Vec::new();
    DescriptorIntegrity.run(&ctx, &mut found);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].structure.path.as_deref(), Some("header"));
}
