//! Magic values: every element of a root with a magic hint holds its magic.
//!
//! A wrong magic in a root whose lock was held is an element being set up or torn down,
//! reported as mid-update ([`Context::structural`]); an element that cannot be read is
//! garbage whatever the lock says.

use ambulance_abi::descriptor::Hint;
use ambulance_report::{Finding, Severity};

use super::hex;
use crate::context::RootFindings;
use crate::{Context, Validator};

/// See the module documentation.
pub struct Magic;

const NAME: &str = "magic";

impl Validator for Magic {
    fn name(&self) -> &str {
        NAME
    }

    fn applies_to(&self) -> &str {
        "roots with magic hints"
    }

    fn applicable(&self, ctx: &Context<'_>) -> bool {
        ctx.roots()
            .iter()
            .any(|r| r.hints.iter().any(|h| matches!(h, Hint::Magic { .. })))
    }

    fn run(&self, ctx: &Context<'_>, out: &mut Vec<Finding>) {
        for root in ctx.roots() {
            let magics: Vec<(u32, u8, u64)> = root
                .hints
                .iter()
                .filter_map(|h| match *h {
                    Hint::Magic {
                        offset,
                        size,
                        value,
                    } => Some((offset, size, value)),
                    _ => None,
                })
                .collect();
            if magics.is_empty() {
                continue;
            }
            let names: Vec<Option<String>> = magics
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
                for (&(offset, size, value), name) in magics.iter().zip(&names) {
                    let at = e.addr.wrapping_add(offset as u64);
                    let value_found = match size {
                        1 => ctx.program.read_u8(at).map(u64::from),
                        2 => ctx.program.read_u16(at).map(u64::from),
                        4 => ctx.program.read_u32(at).map(u64::from),
                        _ => ctx.program.read_u64(at),
                    };
                    match value_found {
                        Ok(v) if v == value => {}
                        Ok(v) => found.push(ctx.structural(
                            &[root],
                            ctx.finding(
                                NAME,
                                Severity::Critical,
                                &root.name,
                                Some(e.index),
                                name.as_deref(),
                                Some(e.addr),
                                hex(value),
                                hex(v),
                                format!(
                                    "{} element {} ({} at {}) has a bad magic value: it was \
                                 overwritten or is not a live {}",
                                    root.name,
                                    e.index,
                                    root.type_name,
                                    hex(e.addr),
                                    root.type_name
                                ),
                            ),
                            false,
                        )),
                        Err(err) => found.push(ctx.finding(
                            NAME,
                            Severity::Error,
                            &root.name,
                            Some(e.index),
                            name.as_deref(),
                            Some(e.addr),
                            hex(value),
                            "unreadable".into(),
                            format!("{} element {} cannot be read: {err}", root.name, e.index),
                        )),
                    }
                }
            }
            found.finish(ctx, NAME, &root.name);
        }
    }
}
