//! End-of-stack magic: the lowest word of every task's stack still holds
//! `STACK_END_MAGIC`, as Linux checks in `schedule()`. A task type is any root element
//! type with a `stack_base` member, or Linux's `task_struct` (its `stack` member); the
//! magic comes from `NUMBER(STACK_END_MAGIC)`, else Linux's value.

use std::collections::HashSet;

use ambulance_abi::descriptor::RootKind;
use ambulance_introspect::object::MemberLayout;
use ambulance_linux::tasks::{read_task, TaskLayout};
use ambulance_report::{Finding, Severity};

use super::hex;
use crate::context::RootFindings;
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

/// The member holding the lowest address of an element's stack: its name and where it is.
fn stack_member(
    ctx: &Context<'_>,
    root: &ambulance_abi::descriptor::Root,
) -> Option<(&'static str, MemberLayout)> {
    if let Some(m) = ctx.member(&root.type_name, "stack_base") {
        return Some(("stack_base", m));
    }
    if root.type_name == "task_struct" {
        return ctx.member("task_struct", "stack").map(|m| ("stack", m));
    }
    None
}

/// The element in words: a Linux task by pid and command, anything else by type, index
/// and address.
fn who(ctx: &Context<'_>, root: &ambulance_abi::descriptor::Root, e: &crate::Element) -> String {
    if root.type_name == "task_struct" {
        if let Ok(t) = TaskLayout::of(ctx.program).and_then(|l| read_task(ctx.program, &l, e.addr))
        {
            return format!("task {} ({}) at {}", t.pid, t.comm, hex(e.addr));
        }
    }
    format!("{} {} ({})", root.type_name, e.index, hex(e.addr))
}

impl Validator for StackEnd {
    fn name(&self) -> &str {
        NAME
    }

    fn applies_to(&self) -> &str {
        "roots of tasks (element types with a stack_base member)"
    }

    fn applicable(&self, ctx: &Context<'_>) -> bool {
        ctx.roots().iter().any(|r| stack_member(ctx, r).is_some())
    }

    fn run(&self, ctx: &Context<'_>, out: &mut Vec<Finding>) {
        let magic = Self::magic(ctx);
        let mut seen = HashSet::new();
        // Arrays first: every task once, by its index in the task table.
        let mut roots: Vec<_> = ctx
            .roots()
            .iter()
            .filter_map(|r| stack_member(ctx, r).map(|m| (r, m)))
            .collect();
        roots.sort_by_key(|(r, _)| r.kind != RootKind::Array);
        for (root, (member, stack)) in roots {
            let elements = ctx.elements(root);
            let mut found = RootFindings::new(out);
            let mut pace = ctx.pace();
            for e in elements.elements.iter() {
                if pace.stop() {
                    found.push(ctx.budget_note(
                        NAME,
                        &root.name,
                        &format!("the stacks of {}", elements.rest_from(e.index)),
                    ));
                    break;
                }
                if !seen.insert(e.addr) {
                    continue;
                }
                let Ok(base) = stack.object(ctx.program, e.addr).read_u64() else {
                    continue;
                };
                // A Linux task that has exited keeps its task_struct but not its stack.
                if base == 0 && member == "stack" {
                    continue;
                }
                match ctx.program.read_u64(base) {
                    Ok(v) if v == magic => {}
                    Ok(v) => found.push(ctx.finding(
                        NAME,
                        Severity::Critical,
                        &root.name,
                        Some(e.index),
                        Some(member),
                        Some(base),
                        hex(magic),
                        hex(v),
                        format!(
                            "the stack of {} overflowed: the end-of-stack magic at its lowest \
                             address {} was overwritten",
                            who(ctx, root, e),
                            hex(base)
                        ),
                    )),
                    Err(err) => found.push(ctx.finding(
                        NAME,
                        Severity::Error,
                        &root.name,
                        Some(e.index),
                        Some(member),
                        Some(base),
                        hex(magic),
                        "unreadable".into(),
                        format!("the stack of {} cannot be read: {err}", who(ctx, root, e)),
                    )),
                }
            }
            found.finish(ctx, NAME, &root.name);
        }
    }
}
