//! Pointer ranges: pointer fields with a range hint are canonical, mapped, and inside the
//! declared region (or null where allowed).
//!
//! A null or out-of-region pointer in a root whose lock was held may be a slot being
//! filled or emptied, reported as mid-update ([`Context::structural`]); a non-canonical
//! pointer or one into unmapped memory is garbage no update writes, lock or not.

use ambulance_abi::descriptor::Hint;
use ambulance_abi::{is_canonical_48, is_canonical_57};
use ambulance_report::{Finding, Severity};

use super::hex;
use crate::context::RootFindings;
use crate::{Context, Validator};

/// See the module documentation.
pub struct PointerRanges;

const NAME: &str = "pointer-range";

impl Validator for PointerRanges {
    fn name(&self) -> &str {
        NAME
    }

    fn applies_to(&self) -> &str {
        "roots with pointer-range hints"
    }

    fn applicable(&self, ctx: &Context<'_>) -> bool {
        ctx.roots().iter().any(|r| {
            r.hints
                .iter()
                .any(|h| matches!(h, Hint::PointerRange { .. }))
        })
    }

    fn run(&self, ctx: &Context<'_>, out: &mut Vec<Finding>) {
        let la57 = ctx
            .descriptor
            .is_some_and(|d| d.flags & ambulance_abi::descriptor::FLAG_LA57 != 0);
        for root in ctx.roots() {
            let ranges: Vec<(u32, u64, u64, bool)> = root
                .hints
                .iter()
                .filter_map(|h| match *h {
                    Hint::PointerRange {
                        offset,
                        lo,
                        hi,
                        nullable,
                    } => Some((offset, lo, hi, nullable)),
                    _ => None,
                })
                .collect();
            if ranges.is_empty() {
                continue;
            }
            let paths: Vec<Option<String>> = ranges
                .iter()
                .map(|&(offset, ..)| {
                    crate::rules::member_name_at(ctx, &root.type_name, offset as u64)
                })
                .collect();
            let elements = ctx.elements(root);
            let mut found = RootFindings::new(out);
            let mut pace = ctx.pace();
            for e in elements.elements.iter() {
                if pace.stop() {
                    found.push(ctx.budget_note(NAME, &root.name, &elements.rest_from(e.index)));
                    break;
                }
                for (&(offset, lo, hi, nullable), path) in ranges.iter().zip(&paths) {
                    let at = e.addr.wrapping_add(offset as u64);
                    let Ok(p) = ctx.program.read_u64(at) else {
                        continue;
                    };
                    let expected = format!(
                        "a pointer into [{}, {}){}",
                        hex(lo),
                        hex(hi),
                        if nullable { " or null" } else { "" }
                    );
                    // (what is wrong, whether it is garbage no update writes)
                    let problem = if p == 0 {
                        (!nullable).then(|| ("is null".to_string(), false))
                    } else if !(if la57 {
                        is_canonical_57(p)
                    } else {
                        is_canonical_48(p)
                    }) {
                        Some((
                            "is not even a canonical address: a wild pointer".to_string(),
                            true,
                        ))
                    } else if !ctx.program.is_mapped(p) {
                        Some((
                            format!(
                                "points to memory that is not mapped{}",
                                if p < lo || p >= hi {
                                    format!(", outside its region [{}, {})", hex(lo), hex(hi))
                                } else {
                                    String::new()
                                }
                            ),
                            true,
                        ))
                    } else if p < lo || p >= hi {
                        Some((
                            format!("points outside its region [{}, {})", hex(lo), hex(hi)),
                            false,
                        ))
                    } else {
                        None
                    };
                    if let Some((problem, garbage)) = problem {
                        let f = ctx.finding(
                            NAME,
                            Severity::Critical,
                            &root.name,
                            Some(e.index),
                            path.as_deref(),
                            Some(at),
                            expected,
                            hex(p),
                            format!(
                                "{} element {}: the pointer at {} {problem}; dereferencing it faults",
                                root.name,
                                e.index,
                                hex(at)
                            ),
                        );
                        found.push(ctx.structural(&[root], f, garbage));
                    }
                }
            }
            found.finish(ctx, NAME, &root.name);
        }
    }
}
