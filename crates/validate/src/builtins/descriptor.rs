//! Descriptor integrity: the descriptor in guest memory is still byte for byte what the
//! host copied at registration. A changed descriptor means the guest (or a stray write)
//! modified memory it promised to keep.

use ambulance_abi::descriptor::{layout, parse, HEADER_SIZE, HINT_ENTRY_SIZE, ROOT_ENTRY_SIZE};
use ambulance_report::{Address, Finding, FindingKind, Hex, Severity, StructureRef};

use crate::{Context, Validator};

/// See the module documentation.
pub struct DescriptorIntegrity;

const NAME: &str = "descriptor";

impl Validator for DescriptorIntegrity {
    fn name(&self) -> &str {
        NAME
    }

    fn applies_to(&self) -> &str {
        "registered guests"
    }

    fn applicable(&self, ctx: &Context<'_>) -> bool {
        ctx.descriptor_bytes.is_some() && ctx.descriptor_gpa.is_some()
    }

    fn run(&self, ctx: &Context<'_>, out: &mut Vec<Finding>) {
        let (Some(copy), Some(gpa)) = (ctx.descriptor_bytes, ctx.descriptor_gpa) else {
            return;
        };
        let mut now = vec![0u8; copy.len()];
        let finding =
            |severity, offset: usize, expected: String, found: String, message: String| Finding {
                validator: NAME.into(),
                severity,
                kind: FindingKind::Analysis,
                structure: StructureRef {
                    root: "descriptor".into(),
                    index: None,
                    path: Some(region(copy, offset)),
                },
                address: Address {
                    virt: None,
                    phys: Some(Hex(gpa.wrapping_add(offset as u64))),
                },
                expected,
                found,
                message,
            };
        if let Err(e) = ctx.program.memory().read(gpa, &mut now) {
            out.push(finding(
                Severity::Error,
                0,
                "the registered descriptor".into(),
                "unreadable".into(),
                format!("the descriptor at guest-physical {gpa:#x} cannot be read: {e}"),
            ));
            return;
        }
        let Some(offset) = copy.iter().zip(&now).position(|(a, b)| a != b) else {
            return;
        };
        let changed = copy.iter().zip(&now).filter(|(a, b)| a != b).count();
        let parse_note = match parse(&now) {
            Ok(_) => "it still parses".to_string(),
            Err(e) => format!("it no longer parses: {e}"),
        };
        out.push(finding(
            Severity::Error,
            offset,
            format!("{:#04x}", copy[offset]),
            format!("{:#04x}", now[offset]),
            format!(
                "the in-guest descriptor changed since registration ({changed} bytes, first at \
                 offset {offset} in {}); {parse_note}. Diagnosis uses the host's copy.",
                region(copy, offset)
            ),
        ));
    }
}

/// Which part of the descriptor `offset` falls in.
fn region(d: &[u8], offset: usize) -> String {
    let u32_at = |at: usize| {
        d.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize)
            .unwrap_or(0)
    };
    let (roots, nroots) = (u32_at(layout::ROOTS_OFFSET), u32_at(layout::ROOT_COUNT));
    let (hints, nhints) = (u32_at(layout::HINTS_OFFSET), u32_at(layout::HINT_COUNT));
    let vmci = u32_at(layout::VMCOREINFO_OFFSET);
    // The host's copy may not even parse: every count and offset is unchecked here.
    let within = |start: usize, n: usize, size: usize| {
        offset >= start && offset - start < n.saturating_mul(size)
    };
    if offset < HEADER_SIZE {
        "header".into()
    } else if within(roots, nroots, ROOT_ENTRY_SIZE) {
        format!("root {}", (offset - roots) / ROOT_ENTRY_SIZE)
    } else if within(hints, nhints, HINT_ENTRY_SIZE) {
        format!("hint {}", (offset - hints) / HINT_ENTRY_SIZE)
    } else if vmci != 0 && offset >= vmci {
        "VMCOREINFO text".into()
    } else {
        "padding".into()
    }
}
