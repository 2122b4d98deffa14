//! End-of-stack magic: the lowest word of every task's stack still holds
//! `STACK_END_MAGIC`, as Linux checks in `schedule()`. A task type is any root element
//! type with a `stack_base` member; the magic comes from `NUMBER(STACK_END_MAGIC)`.

use std::collections::HashSet;

use ambulance_abi::descriptor::RootKind;
use ambulance_report::{Finding, Severity};

use super::hex;
use crate::{Context, Validator};

/// See the module documentation.
pub struct StackEnd;

const NAME: &str = "stack-end";

/// Linux's value, used when the guest did not export one.
const LINUX_STACK_END_MAGIC: u64 = 0x57ac_6e9d;

impl StackEnd {
    fn magic(ctx: &Context<'_>) -> u64 {
        ctx.vmcoreinfo
            .and_then(|v| v.number("STACK_END_MAGIC"))
            .map(|n| n as u64)
            .unwrap_or(LINUX_STACK_END_MAGIC)
    }
}

impl Validator for StackEnd {
    fn name(&self) -> &str {
        NAME
    }

    fn applies_to(&self) -> &str {
        "roots of tasks (element types with a stack_base member)"
    }

    fn applicable(&self, ctx: &Context<'_>) -> bool {
        ctx.roots()
            .iter()
            .any(|r| ctx.member_offset(&r.type_name, "stack_base").is_some())
    }

    fn run(&self, ctx: &Context<'_>, out: &mut Vec<Finding>) {
        let magic = Self::magic(ctx);
        let mut seen = HashSet::new();
        // Arrays first: every task once, by its index in the task table.
        let mut roots: Vec<_> = ctx
            .roots()
            .iter()
            .filter_map(|r| {
                ctx.member_offset(&r.type_name, "stack_base")
                    .map(|o| (r, o))
            })
            .collect();
        roots.sort_by_key(|(r, _)| r.kind != RootKind::Array);
        for (root, off) in roots {
            for e in ctx.elements(root).elements.iter() {
                if !seen.insert(e.addr) {
                    continue;
                }
                let Ok(base) = ctx.program.read_u64(e.addr + off) else {
                    continue;
                };
                match ctx.program.read_u64(base) {
                    Ok(v) if v == magic => {}
                    Ok(v) => out.push(ctx.finding(
                        NAME,
                        Severity::Critical,
                        &root.name,
                        Some(e.index),
                        Some("stack_base"),
                        Some(base),
                        hex(magic),
                        hex(v),
                        format!(
                            "the stack of {} {} ({}) overflowed: the end-of-stack magic at its \
                             lowest address {} was overwritten",
                            root.type_name,
                            e.index,
                            hex(e.addr),
                            hex(base)
                        ),
                    )),
                    Err(err) => out.push(ctx.finding(
                        NAME,
                        Severity::Error,
                        &root.name,
                        Some(e.index),
                        Some("stack_base"),
                        Some(base),
                        hex(magic),
                        "unreadable".into(),
                        format!(
                            "the stack of {} {} cannot be read: {err}",
                            root.type_name, e.index
                        ),
                    )),
                }
            }
        }
    }
}
